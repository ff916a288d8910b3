//! Tasks from a workspace's `.sandlink.toml`: `[tasks]` maps a name to a command line, offered in editor menus.

use std::path::Path;

use crate::error::{Error, Result};

/// The workspace configuration file, meant to be committed.
pub const WORKSPACE_FILE: &str = ".sandlink.toml";

/// One named command line from `[tasks]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    pub command: String,
}

/// Reads the tasks of a workspace; a missing file means no tasks.
pub fn load(workspace: &Path) -> Result<Vec<Task>> {
    let path = workspace.join(WORKSPACE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io(format!("Could not read {}", path.display()), error)),
    };
    parse(&text).map_err(|message| Error::InvalidParams(format!("{}: {message}", path.display())))
}

/// Parses the `[tasks]` table of a `.sandlink.toml`, keeping the file's order.
pub fn parse(text: &str) -> std::result::Result<Vec<Task>, String> {
    let document: toml::Table = text.parse().map_err(|error: toml::de::Error| error.message().to_string())?;
    let Some(tasks) = document.get("tasks") else { return Ok(Vec::new()) };
    let table = tasks.as_table().ok_or("`tasks` must be a table of name = \"command line\"")?;
    table
        .iter()
        .map(|(name, command)| match command.as_str() {
            Some(command) => Ok(Task { name: name.clone(), command: command.to_string() }),
            None => Err(format!("task `{name}` must be a command line in quotes")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_should_read_tasks_and_ignore_other_tables() {
        let tasks = parse("[profiles.dev]\ndriver = \"local\"\n[tasks]\ntest = \"npm test\"\nbuild = \"make -j4\"\n").unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(tasks.contains(&Task { name: "test".into(), command: "npm test".into() }));
    }

    #[test]
    fn parse_should_name_a_task_that_is_not_a_string() {
        let error = parse("[tasks]\ntest = 5\n").unwrap_err();
        assert!(error.contains("test"), "{error}");
    }
}
