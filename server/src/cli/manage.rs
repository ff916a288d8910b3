//! The command line's session management: `status`, `stop`, `extend`, `snapshot` and `keepalive`, each with
//! `--json` for scripts, on the same engine as the editors. A kept session is reached by re-attaching it without a
//! sync (as `sandlink sessions rm` does) and kept again afterwards; one an editor holds is managed from that editor.

use clap::Subcommand;
use serde_json::{json, Value};

use super::quiet_engine;
use crate::engine::audit::Who;
use crate::engine::Engine;
use crate::error::Error;
use crate::progress::NoProgress;
use crate::protocol::{ConnectParams, DisconnectParams, SessionInfo, SessionState};

/// The management subcommands, flattened into the top-level command list.
#[derive(Subcommand)]
pub enum ManageCommand {
    /// Show one session: driver, state, age, cost so far and when its sandbox expires.
    Status {
        /// The session id, as `sandlink sessions` lists it.
        session: String,
        /// Print JSON (the session as `sandlink/status` reports it).
        #[arg(long)]
        json: bool,
    },
    /// End sessions: their runs are stopped and their sandboxes removed (like `sandlink sessions rm`).
    Stop {
        /// The session id, as `sandlink sessions` lists it.
        #[arg(value_name = "SESSION", required_unless_present = "all")]
        session: Option<String>,
        /// Stop every kept session.
        #[arg(long, conflicts_with = "session")]
        all: bool,
        /// Print JSON: `{ stopped: [...], failed: [{ sessionId, error }] }`.
        #[arg(long)]
        json: bool,
    },
    /// Extend a session's sandbox lifetime by SECONDS (cloud sandboxes that expire).
    Extend {
        session: String,
        seconds: u64,
        /// Print JSON: `{ sessionId, expiresAt }`.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot a session's sandbox, for `sandlink/restore` later.
    Snapshot {
        session: String,
        /// The snapshot's name, where the driver names snapshots.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON: `{ sessionId, snapshotId, note? }`.
        #[arg(long)]
        json: bool,
    },
    /// Tell sandlink the session is in use, so its sandbox is kept alive (Daytona's idle auto-stop, E2B's end).
    Keepalive {
        session: String,
        /// Print JSON: `{ sessionId, expiresAt? }`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one management command; errors are printed as JSON on stdout under `--json`, as a sentence otherwise.
pub async fn run(command: ManageCommand) -> std::process::ExitCode {
    let json_output = match &command {
        ManageCommand::Status { json, .. }
        | ManageCommand::Stop { json, .. }
        | ManageCommand::Extend { json, .. }
        | ManageCommand::Snapshot { json, .. }
        | ManageCommand::Keepalive { json, .. } => *json,
    };
    let outcome = match command {
        ManageCommand::Status { session, json } => status(&session, json).await,
        ManageCommand::Stop { session, all, json } => stop(session, all, json).await,
        ManageCommand::Extend { session, seconds, json } => extend(&session, seconds, json).await,
        ManageCommand::Snapshot { session, name, json } => snapshot(&session, name, json).await,
        ManageCommand::Keepalive { session, json } => keepalive(&session, json).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if json_output => {
            print_json(&json!({ "error": { "kind": error.kind().as_str(), "message": error.to_string() } }));
            std::process::ExitCode::from(super::EXIT_SANDLINK_ERROR)
        }
        Err(error) => super::report(Err(error)),
    }
}

fn engine() -> Engine {
    quiet_engine().with_front_door(Who::Cli)
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// The session as `sandlink sessions` lists it (kept ones checked with their driver, cost included).
async fn find(engine: &Engine, session_id: &str) -> Result<SessionInfo, Error> {
    engine
        .sessions()
        .await
        .into_iter()
        .find(|session| session.session_id == session_id)
        .ok_or_else(|| Error::UnknownSession(session_id.to_string()))
}

/// Re-attaches a kept session without syncing, does `work` on it, and keeps it again whatever happened.
async fn with_attached<T>(
    engine: &Engine,
    session_id: &str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let params = ConnectParams { reuse: Some(session_id.to_string()), sync: Some(false), ..ConnectParams::default() };
    engine.connect(params, None, &NoProgress).await?;
    let outcome = work.await;
    let kept = engine.disconnect(DisconnectParams { session_id: session_id.to_string(), keep: true }).await;
    let value = outcome?;
    kept?;
    Ok(value)
}

async fn status(session_id: &str, json: bool) -> Result<(), Error> {
    let engine = engine();
    let info = find(&engine, session_id).await?;
    if json {
        print_json(&serde_json::to_value(&info).unwrap_or_default());
        return Ok(());
    }
    println!("session     {}", info.session_id);
    println!("driver      {}{}", info.driver, info.profile.as_deref().map(|profile| format!(" (profile {profile})")).unwrap_or_default());
    println!("state       {}", info.state.as_str());
    println!("started     {}", info.started_at);
    println!("last active {}", info.last_activity);
    if let Some(expires_at) = &info.expires_at {
        println!("expires     {expires_at}");
    }
    if let Some(cost) = &info.cost {
        println!("cost        ${:.4} so far (${:.4} an hour)", cost.usd, cost.usd_per_hour);
    }
    if let Some(workspace) = &info.workspace_folder {
        println!("workspace   {workspace}");
    }
    if let Some(message) = &info.message {
        println!("{message}");
    }
    Ok(())
}

async fn stop(session: Option<String>, all: bool, json: bool) -> Result<(), Error> {
    let engine = engine();
    let targets: Vec<String> = if all {
        engine
            .sessions()
            .await
            .into_iter()
            .filter(|session| session.state == SessionState::Disconnected)
            .map(|session| session.session_id)
            .collect()
    } else {
        session.into_iter().collect()
    };
    let mut stopped = Vec::new();
    let mut failed = Vec::new();
    for id in targets {
        match engine.disconnect(DisconnectParams { session_id: id.clone(), keep: false }).await {
            Ok(()) => stopped.push(id),
            Err(error) => failed.push((id, error)),
        }
    }
    if json {
        let failures: Vec<Value> = failed
            .iter()
            .map(|(id, error)| json!({ "sessionId": id, "kind": error.kind().as_str(), "error": error.to_string() }))
            .collect();
        print_json(&json!({ "stopped": stopped, "failed": failures }));
    } else {
        for id in &stopped {
            println!("stopped {id}");
        }
        for (id, error) in &failed {
            eprintln!("sandlink: {id}: {error}");
        }
        if stopped.is_empty() && failed.is_empty() {
            println!("no sessions to stop");
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 if !all => Err(failed.remove(0).1),
        count => Err(Error::InvalidParams(format!("{count} session(s) could not be stopped."))),
    }
}

async fn extend(session_id: &str, seconds: u64, json: bool) -> Result<(), Error> {
    let engine = engine();
    let expires_at = with_attached(&engine, session_id, engine.extend(session_id, seconds)).await?;
    if json {
        print_json(&json!({ "sessionId": session_id, "expiresAt": expires_at }));
    } else {
        println!("{session_id} now expires at {expires_at}");
    }
    Ok(())
}

async fn snapshot(session_id: &str, name: Option<String>, json: bool) -> Result<(), Error> {
    let engine = engine();
    let work = async {
        let snapshot_id = engine.snapshot(session_id, name).await?;
        Ok((snapshot_id, engine.snapshot_note(session_id)))
    };
    let (snapshot_id, note) = with_attached(&engine, session_id, work).await?;
    if json {
        print_json(&json!({ "sessionId": session_id, "snapshotId": snapshot_id, "note": note }));
    } else {
        println!("snapshot {snapshot_id}");
        if let Some(note) = note {
            println!("{note}");
        }
    }
    Ok(())
}

async fn keepalive(session_id: &str, json: bool) -> Result<(), Error> {
    let engine = engine();
    let work = async {
        engine.keepalive(session_id)?;
        // This process ends at once, so the provider hears of the activity now rather than at the manager's next look.
        engine.refresh_lease(session_id).await
    };
    let expires_at = with_attached(&engine, session_id, work).await?;
    if json {
        print_json(&json!({ "sessionId": session_id, "expiresAt": expires_at }));
    } else {
        match expires_at {
            Some(expires_at) => println!("{session_id} is kept alive until at least {expires_at}"),
            None => println!("{session_id} does not expire on its own; nothing to keep alive"),
        }
    }
    Ok(())
}

