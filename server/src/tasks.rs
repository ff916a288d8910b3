//! Tasks from a workspace's `.sandlink.toml`: `[tasks]` maps a name to a command line, offered in editor menus.
//! A task runs only in a workspace the user trusts (its command comes from the repository), and it is always shown
//! as what it runs, so padding cannot hide part of a command past the end of a menu entry.

use std::path::Path;

use crate::error::{Error, Result};
use crate::profiles::trust::Fingerprint;

/// The most characters of a command a title shows; longer ones end in an ellipsis.
pub const TITLE_COMMAND_CHARS: usize = 60;

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
    load_with_fingerprint(workspace).map(|(tasks, _)| tasks)
}

/// Reads the tasks of a workspace and, from the same text, the fingerprint trust in it is bound to.
pub fn load_with_fingerprint(workspace: &Path) -> Result<(Vec<Task>, Fingerprint)> {
    let path = workspace.join(WORKSPACE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // The same fingerprint `trust::current_fingerprint` gives a missing file, so the two always compare equal.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Fingerprint::of(&toml::Table::new())))
        }
        Err(error) => return Err(Error::io(format!("Could not read {}", path.display()), error)),
    };
    let tasks = parse(&text).map_err(|message| Error::InvalidParams(format!("{}: {message}", path.display())))?;
    Ok((tasks, Fingerprint::of_text(&text).unwrap_or_default()))
}

/// A command as a one-line title shows it: every run of whitespace (spaces, tabs, line breaks) is one space, and a
/// command longer than `TITLE_COMMAND_CHARS` is cut with an ellipsis, so what is shown is what runs, from its start.
pub fn shown_command(command: &str) -> String {
    let collapsed = command.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= TITLE_COMMAND_CHARS {
        return collapsed;
    }
    let cut: String = collapsed.chars().take(TITLE_COMMAND_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
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
    fn shown_commands_should_collapse_whitespace_and_cut_long_ones() {
        let padded = format!("npm test{}; echo INJECTED", " ".repeat(200));
        assert_eq!(shown_command(&padded), "npm test ; echo INJECTED");
        assert_eq!(shown_command("make\t-j4\n\tall"), "make -j4 all");
        let long = format!("cargo test {}", "--features a ".repeat(20));
        let shown = shown_command(&long);
        assert!(shown.ends_with('…') && shown.chars().count() <= TITLE_COMMAND_CHARS, "{shown}");
        assert!(shown.starts_with("cargo test --features a"), "{shown}");
    }

    #[test]
    fn parse_should_name_a_task_that_is_not_a_string() {
        let error = parse("[tasks]\ntest = 5\n").unwrap_err();
        assert!(error.contains("test"), "{error}");
    }
}
