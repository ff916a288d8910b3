//! The command line: `sandlink lsp` for editors, and `run`, `drivers` for scripts and CI, on the same engine.

mod shell;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

mod manage;
mod runs;
mod stdout;

use crate::drivers::process::signal_number;
use crate::engine::{Engine, Events};
use crate::progress::NoProgress;
use crate::error::Error;
use crate::protocol::{
    ConnectParams, DisconnectParams, ExitParams, OutputParams, OutputStream, PreviewReadyParams, RunParams,
    SessionStateParams, SyncDirection, SyncParams, SyncStateParams, TimeoutWarningParams,
};

/// Exit code for problems of sandlink itself (not of the command it ran), as with `env` and `timeout`.
const EXIT_SANDLINK_ERROR: u8 = 125;
/// Exit code when the command timed out, as `timeout(1)` uses.
const EXIT_TIMED_OUT: u8 = 124;

#[derive(Parser)]
#[command(
    name = "sandlink",
    version,
    about = "Run your project in an isolated sandbox: a local process sandbox, Docker, SSH or a cloud sandbox.",
    long_about = "sandlink runs your project somewhere isolated and streams the output back.\n\n\
        Editors start `sandlink lsp`; scripts and CI use `sandlink run`.",
    after_help = "Examples:\n  sandlink run -- npm test\n  sandlink run --workspace ~/code/app -- 'make && ./app'\n  sandlink drivers\n  \
        sandlink profile save dev --driver local --default\n  printf %s \"$E2B_API_KEY\" | sandlink profile set-credential cloud apiKey\n  \
        sandlink trust"
)]
struct Cli {
    /// Accepted for editors that start servers with `--stdio` and no subcommand; same as `sandlink lsp`.
    #[arg(long, hide = true)]
    stdio: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sandlink language server on stdin and stdout (what editors start).
    Lsp {
        /// Accepted for clients that append it; stdio is the only transport.
        #[arg(long)]
        stdio: bool,
        /// Write logs to this file instead of stderr.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Run a command in a fresh sandbox with a copy of the workspace, stream its output, and clean up.
    ///
    /// One argument after `--` is a shell command line; several are a program and its arguments, passed
    /// without a shell. sandlink exits with the command's exit code.
    Run {
        /// The driver to run on (default: the profile's, else `local`).
        #[arg(long, short)]
        driver: Option<String>,
        /// The profile to run with (default: the workspace's or the user's default profile, if any).
        #[arg(long, short, conflicts_with = "driver")]
        profile: Option<String>,
        /// The workspace to copy into the sandbox (default: the current directory).
        #[arg(long, short, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// The working directory inside the sandbox, relative to its root.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        /// Set an environment variable for the command (repeatable).
        #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Stop the command after this many seconds (exit code 124).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Keep the sandbox after the command ends instead of removing it.
        #[arg(long)]
        keep: bool,
        /// Start the command detached: print its run id and exit while it goes on in the kept sandbox (one hour
        /// at most unless --timeout says otherwise); follow it with `sandlink attach RUN` or `sandlink logs RUN`.
        #[arg(long)]
        detach: bool,
        /// The command: one shell command line, or a program and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Copy the workspace into a fresh sandbox and report what was synced and what was held back.
    ///
    /// Honours .gitignore, .ignore and .sandlinkignore; files that look like secrets (.env, private keys) stay
    /// behind unless allowed with --allow-secret. The sandbox is removed afterwards unless --keep is given.
    Sync {
        /// The driver to sync into.
        #[arg(long, short, default_value = "local")]
        driver: String,
        /// The workspace to sync (default: the current directory).
        #[arg(long, short, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Also exclude paths matching this gitignore-style pattern (repeatable).
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Upload secret-looking files matching this gitignore-style pattern after all (repeatable).
        #[arg(long = "allow-secret", value_name = "PATTERN")]
        allow_secrets: Vec<String>,
        /// Sync the .git directory too.
        #[arg(long)]
        include_git: bool,
        /// Keep the sandbox after syncing instead of removing it.
        #[arg(long)]
        keep: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the drivers and whether each can be used here.
    Drivers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage profiles (named driver configurations) and their credentials in the OS keychain.
    Profile {
        #[command(subcommand)]
        action: ProfileCommand,
    },
    /// List sandboxes: kept ones (re-attachable from an editor or `--keep` runs) and ones another sandlink holds.
    ///
    /// `sandlink sessions rm ID…` removes kept sandboxes; `sandlink sessions rm --all` removes every kept one.
    Sessions {
        #[command(subcommand)]
        action: Option<SessionsCommand>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Trust a workspace, so profiles from its .sandlink.toml may send it elsewhere (SSH, cloud, remote Docker).
    ///
    /// A repository is not trusted by default. Trust is remembered in your state directory, never in the workspace.
    Trust {
        /// The workspace folder (default: the current directory).
        #[arg(value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Take the trust back.
        #[arg(long)]
        revoke: bool,
    },
    /// Record an SSH host's key in your known_hosts after you checked its fingerprint on the machine itself.
    ///
    /// Only the key the host presents now is recorded, and only when its fingerprint is the one given.
    AcceptHostKey {
        /// The host as the profile's `host` setting names it (an alias from your ssh config, or user@host:port).
        host: String,
        /// The fingerprint you checked, like SHA256:abc… (from the connect error).
        fingerprint: String,
        /// The ssh configuration file (the profile's `configFile` setting); default: ssh's own.
        #[arg(long, value_name = "FILE")]
        config_file: Option<String>,
    },
    #[command(flatten)]
    Manage(manage::ManageCommand),
    /// Open an interactive terminal in a sandbox: the login shell (or COMMAND) on a terminal inside it.
    ///
    /// With SESSION, in that kept session (it stays kept); otherwise in a fresh sandbox with a copy of the
    /// workspace, removed when the shell ends unless --keep. sandlink exits with the shell's exit code.
    #[command(alias = "terminal")]
    Shell {
        /// A kept session's id, as `sandlink sessions` lists it.
        #[arg(value_name = "SESSION")]
        session: Option<String>,
        /// The driver to open the sandbox with (default: the profile's, else `local`).
        #[arg(long, short, conflicts_with = "session")]
        driver: Option<String>,
        /// The profile to open the sandbox with.
        #[arg(long, short, conflicts_with_all = ["driver", "session"])]
        profile: Option<String>,
        /// The workspace to copy into the sandbox (default: the current directory).
        #[arg(long, short, value_name = "DIR", conflicts_with = "session")]
        workspace: Option<PathBuf>,
        /// The working directory inside the sandbox, relative to its root.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        /// Keep the sandbox after the shell ends instead of removing it.
        #[arg(long)]
        keep: bool,
        /// A command to run on the terminal instead of the login shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List detached runs (started with `run --detach` or by an editor), running or ended, newest first.
    Runs {
        /// Only this session's runs.
        #[arg(value_name = "SESSION")]
        session: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a detached run's output so far (raw, to stdout and stderr), or follow it with --follow.
    Logs {
        #[arg(value_name = "RUN")]
        run: String,
        /// Keep printing until the run ends.
        #[arg(long, short)]
        follow: bool,
        /// Start at this stdout byte (what you already have is not printed again).
        #[arg(long, value_name = "OFFSET")]
        from: Option<u64>,
        /// Start at this stderr byte.
        #[arg(long, value_name = "OFFSET")]
        from_stderr: Option<u64>,
        /// Print JSON lines ({"stream","offset","text"}, then {"exit"}) instead of raw output.
        #[arg(long)]
        json: bool,
    },
    /// Follow a detached run to its end, printing its output, and exit with its exit code.
    Attach {
        #[arg(value_name = "RUN")]
        run: String,
        /// Start at this stdout byte.
        #[arg(long, value_name = "OFFSET")]
        from: Option<u64>,
        /// Start at this stderr byte.
        #[arg(long, value_name = "OFFSET")]
        from_stderr: Option<u64>,
    },
    /// Agent tasks: clone a repository into a sandbox on the branch task-ID, commit, push from this machine, open a PR.
    Task {
        #[command(subcommand)]
        action: crate::agent_tasks::cli::TaskCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Remove kept sandboxes (their runs are stopped and the sandbox deleted).
    Rm {
        /// Session ids, as `sandlink sessions` lists them.
        #[arg(value_name = "ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Remove every kept sandbox instead of the ones named.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// List profiles from your config.toml and the workspace's .sandlink.toml.
    List {
        /// The workspace whose .sandlink.toml is listed too (default: the current directory).
        #[arg(long, short, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a profile in your config.toml.
    Save {
        name: String,
        /// The driver (see `sandlink drivers`).
        #[arg(long, short)]
        driver: String,
        /// A setting, repeatable; VALUE is read as JSON when it parses (numbers, true, lists), else as text.
        #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Make it the default profile.
        #[arg(long)]
        default: bool,
    },
    /// Delete a profile from your config.toml, and its credentials from the keychain.
    Delete { name: String },
    /// Store a credential in the OS keychain; the value is read from stdin (without echo on a terminal).
    SetCredential { profile: String, key: String },
    /// Remove a credential from the OS keychain.
    DeleteCredential { profile: String, key: String },
}

/// The commands sandlink starts itself, not shown in its help. They have a parser of their own, so starting the
/// local driver's agent (on the path of every `sandlink run`) does not build the whole command line's definition
/// first: 0.3 ms of the agent's start here.
#[derive(Parser, Debug)]
#[command(name = "sandlink", version)]
enum Internal {
    /// The agent the local driver runs inside a session's bubblewrap to start runs quickly.
    SandboxAgent {
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// The confinement and clean-up the driver chose (JSON), written by the local driver.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Removes the directories of ended local sessions, which their disconnect moved into the trash.
    EmptyTrash {
        #[arg(long, value_name = "PATH")]
        state_dir: PathBuf,
    },
}

impl Internal {
    /// Whether the command line names one of these commands.
    fn is_named() -> bool {
        let name = std::env::args_os().nth(1);
        matches!(name.as_ref().and_then(|name| name.to_str()), Some("sandbox-agent" | "empty-trash"))
    }

    fn run(self) -> ExitCode {
        match self {
            Internal::SandboxAgent { socket, config } => {
                // The agent is plain threads and blocking I/O: it must stay small and start fast inside the sandbox.
                match crate::drivers::local::agent::serve(&socket, config.as_deref()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("sandlink sandbox-agent: {error}");
                        ExitCode::from(EXIT_SANDLINK_ERROR)
                    }
                }
            }
            // Detached and alone: nobody reads what it prints, and a failure leaves the rest for the next start.
            Internal::EmptyTrash { state_dir } => match crate::drivers::local::trash::empty(&state_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(EXIT_SANDLINK_ERROR),
            },
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    if Internal::is_named() {
        return Internal::parse().run();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sandlink: could not start the async runtime: {error}");
            return ExitCode::from(EXIT_SANDLINK_ERROR);
        }
    };
    match cli.command {
        None if cli.stdio => serve(&runtime, None),
        Some(Command::Lsp { stdio: _, log_file }) => serve(&runtime, log_file),
        None => {
            eprintln!("sandlink: say what to do, e.g. `sandlink run -- npm test` or `sandlink lsp`; see `sandlink --help`.");
            ExitCode::from(2)
        }
        Some(Command::Drivers { json }) => {
            crate::logging::init("warn", None);
            end_quietly_on_a_closed_pipe();
            runtime.block_on(print_drivers(json))
        }
        Some(Command::Sync { driver, workspace, exclude, allow_secrets, include_git, keep, json }) => {
            crate::logging::init("warn", None);
            let options = SyncCommand { driver, workspace, exclude, allow_secrets, include_git, keep, json };
            let code = match runtime.block_on(sync(options)) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("sandlink: {error}");
                    EXIT_SANDLINK_ERROR
                }
            };
            end_at_once(code)
        }
        Some(Command::Run { driver, profile, workspace, cwd, env, timeout, keep, detach, command }) => {
            crate::logging::init("warn", None);
            runtime.block_on(run(RunOptions { driver, profile, workspace, cwd, env, timeout, keep, command, detach }))
        }
        Some(Command::Runs { session, json }) => {
            crate::logging::init("warn", None);
            end_quietly_on_a_closed_pipe();
            report(runtime.block_on(runs::list(session, json)))
        }
        Some(Command::Logs { run, follow, from, from_stderr, json }) => {
            crate::logging::init("warn", None);
            end_quietly_on_a_closed_pipe();
            let options = runs::Follow { run_id: run, from_offset: from, from_stderr_offset: from_stderr, to_end: follow, json };
            runtime.block_on(runs::logs(options))
        }
        Some(Command::Attach { run, from, from_stderr }) => {
            crate::logging::init("warn", None);
            let options =
                runs::Follow { run_id: run, from_offset: from, from_stderr_offset: from_stderr, to_end: true, json: false };
            runtime.block_on(runs::attach(options))
        }
        Some(Command::Profile { action }) => {
            crate::logging::init("warn", None);
            report(runtime.block_on(profile_command(action)))
        }
        Some(Command::Sessions { action, json }) => {
            crate::logging::init("warn", None);
            if action.is_none() {
                end_quietly_on_a_closed_pipe();
            }
            report(runtime.block_on(sessions_command(action, json)))
        }
        Some(Command::Trust { workspace, revoke }) => {
            crate::logging::init("warn", None);
            report(runtime.block_on(trust_command(workspace, revoke)))
        }
        Some(Command::AcceptHostKey { host, fingerprint, config_file }) => {
            crate::logging::init("warn", None);
            report(runtime.block_on(async {
                let written = quiet_engine().accept_host_key(&host, &fingerprint, config_file.as_deref()).await?;
                eprintln!("sandlink recorded the key {fingerprint} of {host} in {}", written.known_hosts);
                Ok(())
            }))
        }
        Some(Command::Manage(command)) => {
            crate::logging::init("warn", None);
            runtime.block_on(manage::run(command))
        }
        Some(Command::Shell { session, driver, profile, workspace, cwd, keep, command }) => {
            crate::logging::init("warn", None);
            let options = shell::ShellOptions { session, driver, profile, workspace, cwd, keep, command };
            runtime.block_on(shell::shell(options))
        }
        Some(Command::Task { action }) => {
            crate::logging::init("warn", None);
            match runtime.block_on(crate::agent_tasks::cli::run(action)) {
                Ok(Some(code)) => ExitCode::from(code),
                Ok(None) => ExitCode::SUCCESS,
                Err(error) => report(Err(error)),
            }
        }
    }
}

/// For commands that only print a listing: a reader that stops early (`sandlink drivers --json | head`) ends the
/// process as it ends `ls`, instead of a panic on the broken pipe. Not for commands that hold a sandbox (`run`,
/// `sync`): those must live to clean it up, so they keep Rust's default of ignoring SIGPIPE.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring the default disposition of one signal before any thread of ours writes to stdout.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn serve(runtime: &tokio::runtime::Runtime, log_file: Option<PathBuf>) -> ExitCode {
    crate::logging::init("info", log_file.as_deref());
    runtime.block_on(crate::lsp::serve_stdio());
    ExitCode::SUCCESS
}

async fn print_drivers(json: bool) -> ExitCode {
    let engine = Engine::new(Arc::new(TerminalEvents::new().0));
    let drivers = engine.drivers().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&drivers).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    for driver in drivers {
        let availability = if driver.available { "available" } else { "unavailable" };
        println!("{:<8} {:<12} {}", driver.id, availability, driver.detail.unwrap_or_default());
    }
    ExitCode::SUCCESS
}

struct SyncCommand {
    driver: String,
    workspace: Option<PathBuf>,
    exclude: Vec<String>,
    allow_secrets: Vec<String>,
    include_git: bool,
    keep: bool,
    json: bool,
}

/// `sandlink sync`: connect with the sync settings given, upload, report, and clean up unless kept.
async fn sync(options: SyncCommand) -> Result<(), Error> {
    let workspace = match options.workspace {
        Some(workspace) => workspace,
        None => std::env::current_dir().map_err(|error| Error::io("Could not read the current directory", error))?,
    };
    let workspace = std::fs::canonicalize(&workspace)
        .map_err(|error| Error::io(format!("The workspace {} cannot be used", workspace.display()), error))?;
    let mut settings = serde_json::Map::new();
    settings.insert(
        crate::sync::options::SETTINGS_KEY.into(),
        serde_json::json!({
            "exclude": options.exclude,
            "allowSecrets": options.allow_secrets,
            "includeGit": options.include_git,
            "watch": "off",
        }),
    );
    let (events, _exits) = TerminalEvents::new();
    let engine = Engine::for_one_command(Arc::new(events)).for_files_only();
    let session = engine
        .connect(
            ConnectParams {
                driver: Some(options.driver.clone()),
                workspace_folder: Some(workspace.to_string_lossy().into_owned()),
                settings: Some(settings),
                // The upload happens within connect; the files-only engine starts nothing for commands beside it.
                sync: Some(true),
                ..ConnectParams::default()
            },
            None,
            &NoProgress,
        )
        .await?;
    let outcome = match engine.initial_sync(&session.session_id) {
        Some(result) => Ok(result),
        None => {
            engine
                .sync(
                    SyncParams { session_id: session.session_id.clone(), direction: SyncDirection::Up, paths: None, work_done_token: None },
                    &NoProgress,
                )
                .await
        }
    };
    let state = engine.status(&session.session_id).await.map(|info| info.sync).unwrap_or_default();
    engine.disconnect(DisconnectParams { session_id: session.session_id.clone(), keep: options.keep }).await?;
    let result = outcome?;
    if options.json {
        let report = serde_json::json!({ "result": result, "sync": state, "remoteRoot": session.remote_root });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!(
            "synced {} file(s), {} bytes in {} ms",
            result.uploaded, result.bytes, result.duration_ms
        );
        if !state.held_back.is_empty() {
            println!("held back {} file(s) that look like secrets (allow with --allow-secret):", state.held_back.len());
            for file in &state.held_back {
                println!("  {} ({})", file.path, file.rule);
            }
        }
        if options.keep {
            println!("kept the sandbox at {}", session.remote_root);
        }
    }
    Ok(())
}

/// Ends `sandlink sync` once it has said everything, without tearing down the engine, the async runtime and what
/// they hold (the scan, the manifest, the threads): that teardown took 9-11 ms of a 230-240 ms sync of 20,000 files
/// (paired runs), and none of it is left to do. The session was disconnected, or kept with its record written; the
/// trash remover is a detached process of its own; the kernel releases descriptors and locks.
fn end_at_once(code: u8) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}

struct RunOptions {
    driver: Option<String>,
    profile: Option<String>,
    workspace: Option<PathBuf>,
    cwd: Option<String>,
    env: Vec<String>,
    timeout: Option<f64>,
    keep: bool,
    command: Vec<String>,
    detach: bool,
}

async fn run(options: RunOptions) -> ExitCode {
    match run_inner(options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sandlink: {error}");
            ExitCode::from(EXIT_SANDLINK_ERROR)
        }
    }
}

async fn run_inner(options: RunOptions) -> Result<ExitCode, Error> {
    let mut env = std::collections::BTreeMap::new();
    for pair in &options.env {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            Error::InvalidParams(format!("--env takes NAME=VALUE, and \"{pair}\" has no '='."))
        })?;
        env.insert(name.to_string(), value.to_string());
    }
    let workspace = match options.workspace {
        Some(workspace) => workspace,
        None => std::env::current_dir().map_err(|error| Error::io("Could not read the current directory", error))?,
    };
    let workspace = std::fs::canonicalize(&workspace)
        .map_err(|error| Error::io(format!("The workspace {} cannot be used", workspace.display()), error))?;
    let (events, mut exits) = TerminalEvents::new();
    let engine = Engine::for_one_command(Arc::new(events)).with_lossless_output();
    let session = engine
        .connect(
            ConnectParams {
                driver: options.driver.clone(),
                profile: options.profile.clone(),
                workspace_folder: Some(workspace.to_string_lossy().into_owned()),
                ..ConnectParams::default()
            },
            None,
            &NoProgress,
        )
        .await?;
    let (command, args) = match options.command.as_slice() {
        [line] => (line.clone(), None),
        [program, rest @ ..] => (program.clone(), Some(rest.to_vec())),
        [] => return Err(Error::InvalidParams("Give a command after `--`.".into())),
    };
    let started = engine
        .run(RunParams {
            session_id: session.session_id.clone(),
            command,
            task: None,
            args,
            cwd: options.cwd,
            env: Some(env),
            stdin: false,
            timeout_ms: options.timeout.map(|seconds| (seconds * 1000.0) as u64),
            detach: options.detach,
            max_duration_seconds: None,
            warn_at_seconds: None,
            pty: None,
        })
        .await;
    if options.detach {
        // The run goes on in the sandbox, which is kept for it; only its id is printed, for scripts.
        let outcome = started.map(|(run_id, _)| run_id);
        let kept = engine.disconnect(DisconnectParams { session_id: session.session_id.clone(), keep: outcome.is_ok() }).await;
        let run_id = outcome?;
        kept?;
        println!("{run_id}");
        eprintln!(
            "sandlink: run {run_id} goes on in session {}; follow it with `sandlink attach {run_id}`",
            session.session_id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let exit = match started {
        Ok((run_id, answered)) => {
            let _ = answered.send(());
            tokio::select! {
                exit = exits.recv() => exit,
                _ = tokio::signal::ctrl_c() => {
                    let _ = engine.cancel(&run_id);
                    exits.recv().await
                }
            }
        }
        Err(error) => {
            let _ = engine.disconnect(DisconnectParams { session_id: session.session_id, keep: false }).await;
            return Err(error);
        }
    };
    if options.keep {
        eprintln!("sandlink: kept the sandbox at {}", session.remote_root);
    }
    engine.disconnect(DisconnectParams { session_id: session.session_id, keep: options.keep }).await?;
    let Some(exit) = exit else {
        return Err(Error::Internal("The run ended without reporting its exit.".into()));
    };
    Ok(exit_code_for(&exit))
}

/// The shell's convention: the exit code, 128 + the signal number when killed, 124 on timeout.
fn exit_code_for(exit: &ExitParams) -> ExitCode {
    if exit.timed_out {
        return ExitCode::from(EXIT_TIMED_OUT);
    }
    if let Some(code) = exit.exit_code {
        return ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1));
    }
    if exit.message.is_some() && exit.signal.is_none() {
        eprintln!("sandlink: {}", exit.message.as_deref().unwrap_or_default());
        return ExitCode::from(EXIT_SANDLINK_ERROR);
    }
    // A signal no driver names (or none at all) still reads as "killed", the way SIGTERM does.
    let number = exit.signal.as_deref().and_then(signal_number).unwrap_or(libc::SIGTERM);
    ExitCode::from((128 + number) as u8)
}

/// Writes run output straight to this process's stdout and stderr, and hands the exit to the waiting command.
struct TerminalEvents {
    exits: mpsc::UnboundedSender<ExitParams>,
}

impl TerminalEvents {
    fn new() -> (Self, mpsc::UnboundedReceiver<ExitParams>) {
        let (exits, receiver) = mpsc::unbounded_channel();
        (TerminalEvents { exits }, receiver)
    }
}

#[async_trait]
impl Events for TerminalEvents {
    async fn output(&self, params: OutputParams) {
        // Terminal writes are short and ordered; a closed pipe (`| head`) is not an error worth reporting.
        let _ = match params.stream {
            OutputStream::Stdout => stdout::write_unbuffered(params.text.as_bytes()),
            OutputStream::Stderr => std::io::stderr().lock().write_all(params.text.as_bytes()),
        };
    }

    async fn exit(&self, params: ExitParams) {
        let _ = self.exits.send(params);
    }

    async fn session_state(&self, params: SessionStateParams) {
        tracing::debug!(session = %params.session_id, state = params.state.as_str(), "session state");
    }

    async fn sync_state(&self, _params: SyncStateParams) {}

    async fn preview_ready(&self, params: PreviewReadyParams) {
        eprintln!("sandlink: port {} is at {}", params.port, params.url);
    }

    async fn timeout_warning(&self, params: TimeoutWarningParams) {
        match (params.reason, &params.run_id) {
            (Some(crate::protocol::LimitReason::RunLimit), Some(run_id)) => eprintln!(
                "sandlink: run {run_id} reaches its time limit in {} s (at {}); it will be stopped then",
                params.seconds_left, params.expires_at
            ),
            _ => eprintln!("sandlink: the sandbox expires in {} s", params.seconds_left),
        }
    }
}

/// Prints a command's error the way every sandlink command does, and picks the exit code.
fn report(outcome: Result<(), Error>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sandlink: {error}");
            ExitCode::from(EXIT_SANDLINK_ERROR)
        }
    }
}

fn current_dir() -> Result<PathBuf, Error> {
    std::env::current_dir().map_err(|error| Error::io("Could not read the current directory", error))
}

fn quiet_engine() -> Engine {
    Engine::new(Arc::new(TerminalEvents::new().0))
}

/// `sandlink sessions`: the kept sandboxes in a table (or JSON), or `rm` to remove some or all of them.
async fn sessions_command(action: Option<SessionsCommand>, json: bool) -> Result<(), Error> {
    let engine = quiet_engine();
    let sessions = engine.sessions().await;
    let Some(SessionsCommand::Rm { ids, all }) = action else {
        if json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "sessions": sessions })).unwrap_or_default());
        } else if sessions.is_empty() {
            println!("no sandboxes are kept");
        } else {
            println!("{:<14} {:<8} {:<13} {:<20} {:<9} WORKSPACE", "ID", "DRIVER", "STATE", "LAST ACTIVE", "COST");
            for session in &sessions {
                let state = serde_json::to_value(session.state).ok().and_then(|v| v.as_str().map(String::from));
                let cost = session.cost.as_ref().map_or("-".to_string(), |cost| format!("${:.2}", cost.usd));
                println!(
                    "{:<14} {:<8} {:<13} {:<20} {:<9} {}",
                    session.session_id,
                    session.driver,
                    state.unwrap_or_default(),
                    session.last_activity.get(..19).unwrap_or(&session.last_activity),
                    cost,
                    session.workspace_folder.as_deref().unwrap_or("-"),
                );
            }
            println!("remove one with `sandlink sessions rm ID`, all kept ones with `sandlink sessions rm --all`");
        }
        return Ok(());
    };
    let targets: Vec<String> = if all {
        sessions
            .iter()
            .filter(|session| session.state == crate::protocol::SessionState::Disconnected)
            .map(|session| session.session_id.clone())
            .collect()
    } else {
        ids
    };
    let mut failures = Vec::new();
    for id in &targets {
        match engine.disconnect(DisconnectParams { session_id: id.clone(), keep: false }).await {
            Ok(()) => println!("removed {id}"),
            Err(error) => {
                eprintln!("sandlink: {id}: {error}");
                failures.push(id.clone());
            }
        }
    }
    if targets.is_empty() {
        println!("no sandboxes are kept");
    }
    match failures.len() {
        0 => Ok(()),
        count => Err(Error::InvalidParams(format!("{count} of {} sandbox(es) could not be removed.", targets.len()))),
    }
}

async fn profile_command(action: ProfileCommand) -> Result<(), Error> {
    let engine = quiet_engine();
    match action {
        ProfileCommand::List { workspace, json } => {
            let workspace = match workspace {
                Some(workspace) => workspace,
                None => current_dir()?,
            };
            let listed = engine.profiles(Some(workspace)).await?;
            // A closed pipe (`| head`) is not an error worth reporting.
            let mut stdout = std::io::stdout().lock();
            if json {
                let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
                return Ok(());
            }
            for profile in &listed.profiles {
                let mut notes = Vec::new();
                if profile.default {
                    notes.push("default".to_string());
                }
                if !profile.missing_credentials.is_empty() {
                    notes.push(format!("missing credentials: {}", profile.missing_credentials.join(", ")));
                }
                if profile.needs_trust {
                    notes.push("needs `sandlink trust`".into());
                }
                let _ = writeln!(
                    stdout,
                    "{:<20} {:<8} {:<9} {}",
                    profile.name,
                    profile.driver,
                    profile.source,
                    notes.join("; ")
                );
            }
            if let Some(problem) = &listed.workspace_error {
                eprintln!("sandlink: {problem}");
            }
            Ok(())
        }
        ProfileCommand::Save { name, driver, settings, default } => {
            let mut parsed = serde_json::Map::new();
            for pair in &settings {
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    Error::InvalidParams(format!("--set takes KEY=VALUE, and \"{pair}\" has no '='."))
                })?;
                let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                parsed.insert(key.to_string(), value);
            }
            engine
                .save_profile(crate::protocol::SaveProfileParams {
                    name: name.clone(),
                    driver,
                    settings: Some(parsed),
                    default,
                })
                .await?;
            eprintln!("sandlink: saved profile \"{name}\"");
            Ok(())
        }
        ProfileCommand::Delete { name } => engine.delete_profile(&name, Some(current_dir()?)).await,
        ProfileCommand::SetCredential { profile, key } => {
            let workspace = current_dir()?;
            let value = read_secret(&format!("Value for {key} of profile {profile}: "))?;
            engine.set_credential(&profile, &key, value, Some(&workspace)).await?;
            eprintln!("sandlink: stored {key} for profile \"{profile}\" in the OS keychain");
            Ok(())
        }
        ProfileCommand::DeleteCredential { profile, key } => {
            engine.delete_credential(&profile, &key, Some(&current_dir()?)).await
        }
    }
}

async fn trust_command(workspace: Option<PathBuf>, revoke: bool) -> Result<(), Error> {
    let workspace = match workspace {
        Some(workspace) => workspace,
        None => current_dir()?,
    };
    let workspace = std::fs::canonicalize(&workspace)
        .map_err(|error| Error::io(format!("The workspace {} cannot be used", workspace.display()), error))?;
    let engine = quiet_engine();
    // Said before trusting: what the workspace's file will be allowed to do, credentials by name only.
    let (granted, summarised) = if revoke {
        (Vec::new(), None)
    } else {
        let (lines, fingerprint) = engine.trust_summary(&workspace).await?;
        (lines, Some(fingerprint))
    };
    // Bound to the file the summary was read from: an edit made after it was read is refused, never trusted unseen.
    engine.trust_workspace(workspace.clone(), !revoke, summarised).await?;
    let verb = if revoke { "no longer trusts" } else { "now trusts" };
    eprintln!("sandlink {verb} {}", workspace.display());
    if !granted.is_empty() {
        eprintln!("its {} may now:", crate::tasks::WORKSPACE_FILE);
        for line in &granted {
            eprintln!("  - {line}");
        }
        eprintln!("a change to any of this asks for trust again.");
    }
    Ok(())
}

/// Reads a secret from stdin: one line without echo on a terminal, else everything up to the end (one trailing
/// newline removed), so `printf %s "$TOKEN" | sandlink profile set-credential …` works and nothing lands in
/// the shell history.
fn read_secret(prompt: &str) -> Result<crate::credentials::Secret, Error> {
    use std::io::{BufRead, Read};
    let read_error = |error| Error::io("Could not read the credential from stdin", error);
    // SAFETY: isatty only inspects the file descriptor.
    let terminal = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let mut value = String::new();
    if terminal {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let restore = disable_echo();
        let outcome = std::io::stdin().lock().read_line(&mut value);
        if let Some(original) = restore {
            // SAFETY: restores the terminal attributes read from the same descriptor just before.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
        }
        eprintln!();
        outcome.map_err(read_error)?;
    } else {
        std::io::stdin().lock().read_to_string(&mut value).map_err(read_error)?;
    }
    let trimmed = value.strip_suffix('\n').map(|rest| rest.strip_suffix('\r').unwrap_or(rest)).unwrap_or(&value);
    Ok(crate::credentials::Secret::new(trimmed.to_string()))
}

/// Turns terminal echo off; answers the attributes to restore.
fn disable_echo() -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal descriptor or fails without writing.
    let mut original: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
        return None;
    }
    let mut silent = original;
    silent.c_lflag &= !libc::ECHO;
    // SAFETY: applies attributes derived from the ones just read.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &silent) } != 0 {
        return None;
    }
    Some(original)
}
