//! `sandlink shell`: an interactive terminal into a sandbox from the user's own terminal. The user's terminal goes
//! raw (every key, Ctrl-C included, goes to the sandbox), its size follows SIGWINCH, and sandlink exits with the
//! shell's exit code. Without a terminal on stdin (a script piping commands), the input is passed on as typed and
//! its end is a Ctrl-D, so `printf 'make\n' | sandlink shell` runs and ends.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::{exit_code_for, TerminalEvents, EXIT_SANDLINK_ERROR};
use crate::engine::Engine;
use crate::error::Error;
use crate::progress::NoProgress;
use crate::protocol::{ConnectParams, DisconnectParams, PtySize, RunParams};

/// What `sandlink shell` was asked for.
pub struct ShellOptions {
    /// A kept session to open the terminal in; it stays kept afterwards.
    pub session: Option<String>,
    pub driver: Option<String>,
    pub profile: Option<String>,
    pub workspace: Option<PathBuf>,
    pub cwd: Option<String>,
    /// Keep a sandbox this command created, instead of removing it when the shell ends.
    pub keep: bool,
    /// A command to run in the terminal instead of the login shell.
    pub command: Vec<String>,
}

/// The size used when stdout is not a terminal.
const FALLBACK_SIZE: PtySize = PtySize { cols: 80, rows: 24 };
/// Ctrl-D: the end of input, as a terminal says it.
const END_OF_INPUT: &str = "\u{4}";

pub async fn shell(options: ShellOptions) -> ExitCode {
    match shell_inner(options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sandlink: {error}");
            ExitCode::from(EXIT_SANDLINK_ERROR)
        }
    }
}

async fn shell_inner(options: ShellOptions) -> Result<ExitCode, Error> {
    let (events, mut exits) = TerminalEvents::new();
    let engine = Arc::new(Engine::for_one_command(Arc::new(events)).with_lossless_output());
    let reused = options.session.is_some();
    let connect = match options.session {
        Some(session) => ConnectParams { reuse: Some(session), ..ConnectParams::default() },
        None => {
            let workspace = match options.workspace {
                Some(workspace) => workspace,
                None => std::env::current_dir().map_err(|error| Error::io("Could not read the current directory", error))?,
            };
            let workspace = std::fs::canonicalize(&workspace)
                .map_err(|error| Error::io(format!("The workspace {} cannot be used", workspace.display()), error))?;
            ConnectParams {
                driver: options.driver,
                profile: options.profile,
                workspace_folder: Some(workspace.to_string_lossy().into_owned()),
                ..ConnectParams::default()
            }
        }
    };
    let session = engine.connect(connect, None, &NoProgress).await?;
    // A session this command re-attached stays kept, as it was; one it made goes unless `--keep`.
    let keep = reused || options.keep;
    let (command, args) = match options.command.as_slice() {
        [] => (String::new(), None),
        [line] => (line.clone(), None),
        [program, rest @ ..] => (program.clone(), Some(rest.to_vec())),
    };
    let started = engine
        .run(RunParams {
            session_id: session.session_id.clone(),
            command,
            task: None,
            args,
            cwd: options.cwd,
            env: None,
            stdin: true,
            timeout_ms: None,
            detach: false,
            max_duration_seconds: None,
            warn_at_seconds: None,
            pty: Some(terminal_size().unwrap_or(FALLBACK_SIZE)),
        })
        .await;
    let run_id = match started {
        Ok((run_id, answered)) => {
            let _ = answered.send(());
            run_id
        }
        Err(error) => {
            let _ = engine.disconnect(DisconnectParams { session_id: session.session_id, keep }).await;
            return Err(error);
        }
    };
    let raw = RawMode::enter();
    let (keys, mut typed) = tokio::sync::mpsc::channel::<Option<String>>(64);
    let interactive = raw.is_some();
    std::thread::spawn(move || read_keys(keys, interactive));
    let mut resizes = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|error| Error::io("Could not watch the terminal's size", error))?;
    let mut input_open = true;
    let exit = loop {
        tokio::select! {
            exit = exits.recv() => break exit,
            key = typed.recv(), if input_open => match key {
                Some(Some(text)) => { let _ = engine.input(&run_id, &text, false).await; }
                Some(None) => { let _ = engine.input(&run_id, END_OF_INPUT, false).await; }
                None => input_open = false,
            },
            _ = resizes.recv() => {
                if let Some(size) = terminal_size() {
                    let _ = engine.resize(&run_id, size).await;
                }
            }
        }
    };
    drop(raw);
    if keep && !reused {
        eprintln!("sandlink: kept the sandbox as session {}", session.session_id);
    }
    engine.disconnect(DisconnectParams { session_id: session.session_id, keep }).await?;
    let Some(exit) = exit else {
        return Err(Error::Internal("The terminal ended without reporting its exit.".into()));
    };
    Ok(exit_code_for(&exit))
}

/// Reads stdin on a thread of its own (the runtime's reads would hold a worker) and hands on whole characters;
/// `None` says stdin ended. A terminal's stdin never ends while the shell runs; a pipe's end becomes Ctrl-D.
fn read_keys(keys: tokio::sync::mpsc::Sender<Option<String>>, interactive: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buffer = [0u8; 4096];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let count = match stdin.read(&mut buffer) {
            Ok(0) | Err(_) => {
                if !interactive {
                    let _ = keys.blocking_send(None);
                }
                return;
            }
            Ok(count) => count,
        };
        pending.extend_from_slice(&buffer[..count]);
        let text = take_whole_characters(&mut pending);
        if !text.is_empty() && keys.blocking_send(Some(text)).is_err() {
            return;
        }
    }
}

/// The text of `pending` up to a character cut by the read's end, which stays in `pending` for the next read.
/// Bytes that are no UTF-8 at all are passed on as U+FFFD, since the protocol's input is text.
fn take_whole_characters(pending: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => pending.len(),
    };
    let text = String::from_utf8_lossy(&pending[..cut]).into_owned();
    pending.drain(..cut);
    text
}

/// The size of the user's terminal (stdout's, else stdin's), when there is one.
fn terminal_size() -> Option<PtySize> {
    for descriptor in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: TIOCGWINSZ fills a winsize we own, or fails without writing.
        let mut window: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(descriptor, libc::TIOCGWINSZ, &mut window) } == 0 && window.ws_col > 0 && window.ws_row > 0 {
            return Some(PtySize { cols: window.ws_col, rows: window.ws_row });
        }
    }
    None
}

/// The user's terminal in raw mode (no echo, no line editing, no signals from keys) until dropped.
struct RawMode {
    original: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin; `None` when stdin is not a terminal.
    fn enter() -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it for a terminal or fails without writing.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return None;
        }
        let mut raw = original;
        // SAFETY: cfmakeraw edits the attributes we own; tcsetattr applies them to our own terminal.
        unsafe {
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return None;
            }
        }
        Some(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.original) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_by_a_read_should_wait_for_its_rest() {
        let mut pending = "aé".as_bytes()[..2].to_vec();
        assert_eq!(take_whole_characters(&mut pending), "a");
        pending.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_whole_characters(&mut pending), "é");
        assert!(pending.is_empty());
        let mut invalid = vec![b'x', 0xff, b'y'];
        assert_eq!(take_whole_characters(&mut invalid), "x\u{fffd}y");
    }
}
