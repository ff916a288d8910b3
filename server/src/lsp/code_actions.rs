//! Code actions and a code lens that carry `sandlink.*` commands, so editors without a plugin (Zed, Helix, Emacs)
//! reach the whole workflow through their standard code-action menu.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tower_lsp_server::ls_types::{
    CodeAction, CodeActionKind, CodeActionOrCommand, CodeLens, Command, Position, Range,
};

use crate::engine::Engine;
use crate::protocol::{commands, DriverInfo, SessionInfo};
use crate::tasks;

/// The kind of every sandlink action, so clients that filter by kind can ask for them.
pub fn action_kind() -> CodeActionKind {
    CodeActionKind::new("source.sandlink")
}

/// Whether a `context.only` filter admits sandlink's actions.
pub fn kind_is_wanted(only: Option<&[CodeActionKind]>) -> bool {
    let ours = action_kind();
    only.is_none_or(|kinds| kinds.iter().any(|kind| ours.as_str().starts_with(kind.as_str())))
}

/// What the menu offers for a document: connect when nothing is connected, the session's actions otherwise.
pub fn actions_for(engine: &Engine, drivers: &[DriverInfo], document: &Path, workspace_root: Option<&Path>) -> Vec<CodeActionOrCommand> {
    let workspace = workspace_for(document, workspace_root);
    let commands = match engine.session_for_path(document) {
        Some(session) => session_commands(engine, &session.info(), session.workspace.as_deref()),
        None => connect_commands(drivers, &workspace),
    };
    commands
        .into_iter()
        .map(|command| {
            CodeActionOrCommand::CodeAction(CodeAction {
                title: command.title.clone(),
                kind: Some(action_kind()),
                command: Some(command),
                ..CodeAction::default()
            })
        })
        .collect()
}

/// One lens at the top of a file, saying the session state and offering the next natural step.
pub fn lens_for(engine: &Engine, drivers: &[DriverInfo], document: &Path, workspace_root: Option<&Path>) -> CodeLens {
    let command = match engine.session_for_path(document) {
        Some(session) => {
            let info = session.info();
            command(
                format!("sandlink: {} on {} · sync now", info.state.as_str(), info.driver),
                commands::SYNC,
                json!({ "sessionId": info.session_id }),
            )
        }
        None => {
            let workspace = workspace_for(document, workspace_root);
            let mut connects = connect_commands(drivers, &workspace);
            let mut first = connects.drain(..).next().unwrap_or_else(|| {
                command("sandlink: no driver available".into(), commands::STATUS, json!({}))
            });
            first.title = format!("sandlink: not connected · {}", first.title.trim_start_matches("sandlink: "));
            first
        }
    };
    CodeLens { range: Range::new(Position::new(0, 0), Position::new(0, 0)), command: Some(command), data: None }
}

fn workspace_for(document: &Path, workspace_root: Option<&Path>) -> PathBuf {
    match workspace_root {
        Some(root) if document.starts_with(root) => root.to_path_buf(),
        _ => document.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")),
    }
}

fn command(title: String, name: &str, argument: Value) -> Command {
    Command { title, command: name.to_string(), arguments: Some(vec![argument]) }
}

fn connect_commands(drivers: &[DriverInfo], workspace: &Path) -> Vec<Command> {
    let folder = url::Url::from_file_path(workspace).map(|url| url.to_string()).unwrap_or_default();
    drivers
        .iter()
        .filter(|driver| driver.available)
        .map(|driver| {
            command(
                format!("sandlink: Connect ({})", driver.id),
                commands::CONNECT,
                json!({ "driver": driver.id, "workspaceFolder": folder }),
            )
        })
        .collect()
}

fn session_commands(engine: &Engine, session: &SessionInfo, workspace: Option<&Path>) -> Vec<Command> {
    let session_id = session.session_id.clone();
    let mut offered = Vec::new();
    if let Some(workspace) = workspace {
        match tasks::load(workspace) {
            Ok(tasks) => {
                for task in tasks {
                    // The task goes by name: the server reads its command again and checks the workspace's trust
                    // when it runs, so what runs is what the file says then, and only with the user's consent.
                    offered.push(command(
                        format!("sandlink: Run task {} ({})", tasks::shown_command(&task.name), tasks::shown_command(&task.command)),
                        commands::RUN,
                        json!({ "sessionId": session_id, "task": task.name }),
                    ));
                }
            }
            Err(error) => tracing::warn!(%error, "could not read the workspace's tasks"),
        }
    }
    offered.push(command(
        "sandlink: Sync now".into(),
        commands::SYNC,
        json!({ "sessionId": session_id, "direction": "up" }),
    ));
    offered.push(command(
        "sandlink: Sync both ways".into(),
        commands::SYNC,
        json!({ "sessionId": session_id, "direction": "both" }),
    ));
    for run in engine.runs_of(&session_id) {
        offered.push(command(
            format!("sandlink: Cancel {}", run.command),
            commands::CANCEL,
            json!({ "runId": run.run_id }),
        ));
    }
    for preview in &session.previews {
        offered.push(command(
            format!("sandlink: Open preview of port {}", preview.port),
            commands::PREVIEW,
            json!({ "sessionId": session_id, "port": preview.port }),
        ));
    }
    if session.expires_at.is_some() {
        offered.push(command(
            "sandlink: Extend by 30 minutes".into(),
            commands::EXTEND,
            json!({ "sessionId": session_id, "seconds": 1800 }),
        ));
    }
    offered.push(command(
        format!("sandlink: Disconnect ({})", session.driver),
        commands::DISCONNECT,
        json!({ "sessionId": session_id }),
    ));
    offered
}
