//! The command line's detached-run commands: `runs`, `logs`, `attach` (and the answer of `run --detach`), on the
//! same engine as the editors. A local run's files are read on this machine; any other run's session is re-attached
//! for the command and kept again afterwards.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::engine::detached::read_record;
use crate::engine::{Engine, Events};
use crate::error::Error;
use crate::progress::NoProgress;
use crate::protocol::{
    AttachParams, ConnectParams, DisconnectParams, ExitParams, OutputParams, OutputStream, PreviewReadyParams,
    SessionStateParams, SyncStateParams, TimeoutWarningParams,
};

/// `sandlink runs [SESSION]`: the detached runs on record, newest first.
pub async fn list(session: Option<String>, json: bool) -> Result<(), Error> {
    let engine = Engine::new(Arc::new(Printer::new(false).0));
    let runs = engine.list_runs(session.as_deref()).runs;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": runs })).unwrap_or_default());
        return Ok(());
    }
    if runs.is_empty() {
        println!("no detached runs are recorded");
        return Ok(());
    }
    println!("{:<12} {:<14} {:<9} {:<20} COMMAND", "RUN", "SESSION", "STATE", "STARTED");
    for run in &runs {
        let state = match &run.exit {
            None => "running".to_string(),
            Some(exit) => match (exit.exit_code, &exit.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => signal.clone(),
                (None, None) => "lost".to_string(),
            },
        };
        println!(
            "{:<12} {:<14} {:<9} {:<20} {}",
            run.run_id,
            run.session_id,
            state,
            run.started_at.get(..19).unwrap_or(&run.started_at),
            run.command
        );
    }
    Ok(())
}

/// What `logs` and `attach` do with a run's output.
pub struct Follow {
    pub run_id: String,
    pub from_offset: Option<u64>,
    pub from_stderr_offset: Option<u64>,
    /// Until the run ends; otherwise only what it wrote so far.
    pub to_end: bool,
    /// JSON lines (`{"stream","offset","text"}`, then `{"exit": …}`) instead of raw output.
    pub json: bool,
}

/// `sandlink logs` and `sandlink attach`: prints the run's output from the offsets; answers its exit when it came.
pub async fn follow(options: Follow) -> Result<Option<ExitParams>, Error> {
    let (printer, mut received) = Printer::new(options.json);
    let engine = Engine::new(Arc::new(printer));
    let record = read_record(engine.state_dir(), &options.run_id).ok_or_else(|| Error::UnknownRun(options.run_id.clone()))?;
    // A local run is read on this machine; any other is followed through its session, re-attached for the while.
    let reattached = if record.host_folder.is_none() {
        let params = ConnectParams { reuse: Some(record.session_id.clone()), ..ConnectParams::default() };
        Some(engine.connect(params, None, &NoProgress).await?.session_id)
    } else {
        None
    };
    let outcome = follow_in(&engine, &options, &mut received).await;
    if let Some(session_id) = reattached {
        engine.disconnect(DisconnectParams { session_id, keep: true }).await?;
    }
    outcome
}

async fn follow_in(
    engine: &Engine,
    options: &Follow,
    received: &mut mpsc::UnboundedReceiver<Received>,
) -> Result<Option<ExitParams>, Error> {
    let params = AttachParams {
        run_id: options.run_id.clone(),
        from_offset: options.from_offset,
        from_stderr_offset: options.from_stderr_offset,
    };
    let (standing, answered) = engine.attach(params).await?;
    let _ = answered.send(());
    let (mut stdout_at, mut stderr_at) = (options.from_offset.unwrap_or(0), options.from_stderr_offset.unwrap_or(0));
    loop {
        if !options.to_end && stdout_at >= standing.stdout_bytes && stderr_at >= standing.stderr_bytes {
            return Ok(None);
        }
        match received.recv().await {
            Some(Received::Output { stream: OutputStream::Stdout, end }) => stdout_at = end,
            Some(Received::Output { stream: OutputStream::Stderr, end }) => stderr_at = end,
            Some(Received::Exit(exit)) => return Ok(Some(exit)),
            None => return Ok(None),
        }
    }
}

/// `sandlink logs`: its exit code is sandlink's own, not the run's.
pub async fn logs(options: Follow) -> ExitCode {
    match follow(options).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sandlink: {error}");
            ExitCode::from(super::EXIT_SANDLINK_ERROR)
        }
    }
}

/// `sandlink attach`: follows the run to its end and exits with its exit code.
pub async fn attach(options: Follow) -> ExitCode {
    match follow(options).await {
        Ok(Some(exit)) => super::exit_code_for(&exit),
        Ok(None) => {
            eprintln!("sandlink: the run's output ended without its exit");
            ExitCode::from(super::EXIT_SANDLINK_ERROR)
        }
        Err(error) => {
            eprintln!("sandlink: {error}");
            ExitCode::from(super::EXIT_SANDLINK_ERROR)
        }
    }
}

/// What the printer tells the waiting command.
enum Received {
    /// Output up to `end` (the stream's offset after it) was printed.
    Output { stream: OutputStream, end: u64 },
    Exit(ExitParams),
}

/// Prints a run's output as it comes (raw, or as JSON lines) and reports how far it got.
struct Printer {
    json: bool,
    received: mpsc::UnboundedSender<Received>,
}

impl Printer {
    fn new(json: bool) -> (Self, mpsc::UnboundedReceiver<Received>) {
        let (received, receiver) = mpsc::unbounded_channel();
        (Printer { json, received }, receiver)
    }
}

#[async_trait]
impl Events for Printer {
    async fn output(&self, params: OutputParams) {
        let offset = params.offset.unwrap_or_default();
        // A closed pipe (`| head`) is not an error worth reporting.
        let _ = if self.json {
            let line = serde_json::json!({ "stream": params.stream, "offset": offset, "text": params.text });
            writeln!(std::io::stdout().lock(), "{line}")
        } else {
            match params.stream {
                OutputStream::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(params.text.as_bytes()).and_then(|()| stdout.flush())
                }
                OutputStream::Stderr => std::io::stderr().lock().write_all(params.text.as_bytes()),
            }
        };
        let end = offset + params.text.len() as u64;
        let _ = self.received.send(Received::Output { stream: params.stream, end });
    }

    async fn exit(&self, params: ExitParams) {
        if self.json {
            let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::json!({ "exit": params }));
        }
        let _ = self.received.send(Received::Exit(params));
    }

    async fn session_state(&self, _params: SessionStateParams) {}

    async fn sync_state(&self, _params: SyncStateParams) {}

    async fn preview_ready(&self, _params: PreviewReadyParams) {}

    async fn timeout_warning(&self, params: TimeoutWarningParams) {
        eprintln!("sandlink: the sandbox expires in {} s", params.seconds_left);
    }
}
