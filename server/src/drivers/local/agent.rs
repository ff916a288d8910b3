//! The session agent: one long-lived process per session (inside its bubblewrap, when that is the mechanism)
//! that starts each run by fork and exec.
//!
//! Starting bubblewrap costs several milliseconds (namespaces, mounts), which dominated the cost of a short run.
//! The local driver therefore starts bubblewrap once per session with `sandlink sandbox-agent` inside it, and each
//! run is a request on the agent's Unix socket carrying the run's three pipe ends (SCM_RIGHTS). The agent answers
//! `started PID`, signals the run's process group on `TERM` or `KILL`, reports `exit code N` or `exit signal N`,
//! and kills the group when the server goes away, so nothing outlives the connection. The agent confines each run
//! (`confine.rs`) between fork and exec, and is a child subreaper, so when it is told to stop it finds and ends
//! every process the session started.
//!
//! Without bubblewrap the agent runs directly on the host: the same code, the confinement then being Landlock.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::confine::{Confinement, NetworkRule, RunPolicy};
use super::isolation::Mechanism;
use super::processes;
use crate::drivers::pty as terminal;
use crate::protocol::PtySize;
use crate::drivers::process::signal_name;
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};

/// Requests larger than this are refused; a command line and environment never come close.
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// What the server asks the agent to start.
#[derive(Debug, Serialize, Deserialize)]
struct SpawnRequest {
    program: String,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    /// Attach the run to a new terminal of this size, relayed to the request's stdin and stdout pipes.
    #[serde(default)]
    pty: Option<PtySize>,
}

/// What the driver tells its agent when it starts it: how to confine runs and how to clean up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub policy: RunPolicy,
    /// The session's pids cgroup, whose members the agent kills when it is told to stop.
    pub cgroup: Option<PathBuf>,
    /// Inside a network namespace: a loopback port bridged to the filtering proxy's Unix socket.
    pub proxy_bridge: Option<ProxyBridge>,
    /// Set for the agent of one detached run: the run goes on when the server goes, the agent ends with the run
    /// (ending what it left), and at the latest after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached_lifetime_seconds: Option<u64>,
}

/// A loopback listener inside the sandbox that carries connections to sandlink's proxy outside.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyBridge {
    pub port: u16,
    pub unix_socket: PathBuf,
}

/// Runs the agent: accepts one connection per run until told to stop (SIGTERM, SIGINT, SIGHUP, or the death of the
/// server through the parent-death signal), then kills everything the session started and exits.
pub fn serve(socket_path: &Path, config_path: Option<&Path>) -> std::io::Result<()> {
    // Before any thread starts, so every thread inherits the mask and only the signal thread takes these.
    let termination = termination_signals();
    // SAFETY: pthread_sigmask on the calling thread with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &termination, std::ptr::null_mut()) };
    // Runs share the agent's user, so without this they could open the agent's `/proc/PID/mem` and `/proc/PID/fd`:
    // write code into a process outside their seccomp filter, or reach the descriptors it holds (the server's
    // stderr). A process that is not dumpable can be inspected only with CAP_SYS_PTRACE, which no run has. It stays
    // so until exec, so runs, which are exec'd, are ordinary processes again.
    // SAFETY: prctl on the calling process with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Orphans of runs (daemons, double forks) become the agent's children, so the clean-up finds them all.
    // SAFETY: prctl on the calling process with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let config: AgentConfig = match config_path {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)?,
        None => AgentConfig {
            policy: RunPolicy {
                mechanism: Mechanism::Unconfined,
                writable: Vec::new(),
                readable: Vec::new(),
                devices: Vec::new(),
                network: NetworkRule::Open,
                unix_sockets: true,
                max_processes: None,
            },
            cgroup: None,
            proxy_bridge: None,
            detached_lifetime_seconds: None,
        },
    };
    let confinement = Arc::new(Confinement::prepare(&config.policy)?);
    let reaper = Arc::new(Reaper::default());
    {
        let reaper = reaper.clone();
        std::thread::spawn(move || reaper.run());
    }
    {
        let cgroup = config.cgroup.clone();
        std::thread::spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait with a valid set and out-pointer.
            unsafe { libc::sigwait(&termination, &mut signal) };
            clean_up_and_exit(cgroup.as_deref());
        });
    }
    let detached = config.detached_lifetime_seconds.is_some();
    if let Some(seconds) = config.detached_lifetime_seconds {
        // The wrapper stops its run at its own limit; this is the backstop should the wrapper itself be stuck.
        let cgroup = config.cgroup.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            clean_up_and_exit(cgroup.as_deref());
        });
    }
    if let Some(bridge) = &config.proxy_bridge {
        // Bound before the agent answers, so the first run already finds the proxy on the loopback.
        let listener = std::net::TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], bridge.port)))?;
        let unix_socket = bridge.unix_socket.clone();
        std::thread::spawn(move || {
            if let Err(error) = crate::netpolicy::serve_loopback_bridge(listener, unix_socket) {
                eprintln!("sandlink sandbox-agent: the network bridge stopped: {error}");
            }
        });
    }
    let _ = std::fs::remove_file(socket_path);
    let listener = UnixListener::bind(socket_path)?;
    announce_listening();
    for connection in listener.incoming() {
        let Ok(connection) = connection else { continue };
        let confinement = confinement.clone();
        let reaper = reaper.clone();
        let cgroup = config.cgroup.clone();
        std::thread::spawn(move || {
            let outcome = handle_run(connection, &confinement, &reaper, detached);
            if let Err(error) = &outcome {
                eprintln!("sandlink sandbox-agent: {error}");
            }
            if detached && matches!(outcome, Ok(true)) {
                // The detached run is over: what it left behind ends with its agent, in its cgroup leaf too.
                clean_up_and_exit(cgroup.as_deref());
            }
        });
    }
    Ok(())
}

/// What the agent writes on its stdout once it listens; the server waits for it (`wait_until_listening`).
const LISTENING: &[u8] = b"listening\n";

/// Tells the server, on stdout, that the socket listens; then points stdout at `/dev/null`, so nothing later holds
/// the server's pipe open or writes into it. An agent started by hand, with stdout elsewhere, just prints the line.
fn announce_listening() {
    let _ = std::io::stdout().write_all(LISTENING);
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto this process's own stdout, from a descriptor we own.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
}

/// Waits until the agent whose stdout is `ready` says that it listens, up to `limit`. End-of-file first means it
/// ended (with its bubblewrap) without listening, which is known at once rather than after the limit.
pub async fn wait_until_listening(ready: std::io::PipeReader, limit: std::time::Duration) -> bool {
    tokio::task::spawn_blocking(move || wait_until_listening_blocking(ready, limit)).await.unwrap_or(false)
}

/// `wait_until_listening`, blocking the calling thread (stopping an agent nobody waited for does, off the runtime).
pub fn wait_until_listening_blocking(ready: std::io::PipeReader, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut ready = ready;
    let mut said = Vec::new();
    let mut buffer = [0u8; 64];
    while said.len() < LISTENING.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut watched = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) on one descriptor we own, with a valid pollfd.
        let polled = unsafe { libc::poll(&mut watched, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if polled <= 0 {
            return false;
        }
        match ready.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(count) => said.extend_from_slice(&buffer[..count]),
        }
    }
    said.starts_with(LISTENING)
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Ends every process the session started (its cgroup's members and every descendant of the agent), then exits.
fn clean_up_and_exit(cgroup: Option<&Path>) -> ! {
    // SAFETY: getpid has no preconditions.
    let agent = unsafe { libc::getpid() };
    processes::kill_descendants(agent);
    if let Some(cgroup) = cgroup {
        let members = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in members.lines().filter_map(|line| line.trim().parse::<libc::pid_t>().ok()).filter(|pid| *pid != agent) {
            // SAFETY: kill(2) on a member of the session's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::process::exit(0)
}

/// The agent is the only waiter for its children: runs' exit statuses go to whoever registered the run, and
/// orphans re-parented to the agent are reaped so they do not linger as zombies.
#[derive(Default)]
struct Reaper {
    waiting: std::sync::Mutex<HashMap<libc::pid_t, std::sync::mpsc::Sender<libc::c_int>>>,
    /// Signalled when a run is registered, so a reaper with no children sleeps until there is one (a timed poll
    /// would add its interval to the end of every short run).
    registered: std::sync::Condvar,
}

impl Reaper {
    fn run(&self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid for any child with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let waiter = crate::locks::lock(&self.waiting).remove(&pid);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(status);
                }
            } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                // No children: wait for the next run. Runs register under this lock, so none is missed.
                let waiting = crate::locks::lock(&self.waiting);
                if waiting.is_empty() {
                    let _ = self.registered.wait_timeout(waiting, std::time::Duration::from_secs(1));
                }
            }
        }
    }
}

/// Serves one run request; answers whether a run was started and has ended. A `detached` run outlives the
/// connection: the server may go away while it runs.
fn handle_run(connection: UnixStream, confinement: &Arc<Confinement>, reaper: &Reaper, detached: bool) -> std::io::Result<bool> {
    let mut first = vec![0u8; 64 * 1024];
    let mut fds: [RawFd; 3] = [-1; 3];
    let (received, fd_count) = connection.recv_with_fd(&mut first, &mut fds)?;
    // SAFETY: recv_with_fd returned these descriptors to us; each is owned exactly once from here on.
    let owned: Vec<OwnedFd> = fds[..fd_count].iter().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) }).collect();
    if received == 0 {
        // Connected and closed without a request: nothing to do.
        return Ok(false);
    }
    let mut writer = connection.try_clone()?;
    if owned.len() != 3 || received < 4 {
        writeln!(writer, "error the request must carry stdin, stdout and stderr")?;
        return Ok(false);
    }
    let length = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize;
    if length > MAX_REQUEST_BYTES {
        writeln!(writer, "error the request is too large")?;
        return Ok(false);
    }
    let mut body = first[4..received].to_vec();
    let mut reader = connection.try_clone()?;
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let count = reader.read(&mut chunk)?;
        if count == 0 {
            return Ok(false);
        }
        body.extend_from_slice(&chunk[..count]);
    }
    let request: SpawnRequest = match serde_json::from_slice(&body[..length]) {
        Ok(request) => request,
        Err(error) => {
            writeln!(writer, "error the request is malformed: {error}")?;
            return Ok(false);
        }
    };
    let mut descriptors = owned.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (descriptors.next(), descriptors.next(), descriptors.next()) else {
        return Ok(false);
    };
    let mut command = std::process::Command::new(&request.program);
    command
        .args(&request.args)
        .current_dir(&request.cwd)
        // The request carries the whole environment: nothing of the agent's own reaches the run.
        .env_clear()
        .envs(&request.env);
    // A terminal run's three streams are the terminal; the pipes are then the relay's ends and stderr stays empty.
    let mut terminal_master = None;
    match request.pty {
        Some(size) => {
            let (master, slave) = match terminal::open(size) {
                Ok(opened) => opened,
                Err(error) => {
                    writeln!(writer, "error could not open a terminal: {error}")?;
                    return Ok(false);
                }
            };
            command
                .stdin(std::process::Stdio::from(slave.try_clone()?))
                .stdout(std::process::Stdio::from(slave.try_clone()?))
                .stderr(std::process::Stdio::from(slave));
            let master = Arc::new(master);
            terminal::relay(master.clone(), stdin, stdout);
            drop(stderr);
            terminal_master = Some(master);
        }
        None => {
            command
                .stdin(std::process::Stdio::from(stdin))
                .stdout(std::process::Stdio::from(stdout))
                .stderr(std::process::Stdio::from(stderr));
        }
    }
    let child_confinement = confinement.clone();
    let controlling_terminal = terminal_master.is_some();
    // SAFETY: the closure only makes system calls (see `Confinement::apply_in_child`); the terminal becomes the
    // run's controlling one after the confinement's `setsid`, inside the confined process.
    unsafe {
        command.pre_exec(move || {
            child_confinement.apply_in_child()?;
            if controlling_terminal {
                terminal::take_as_controlling_terminal()?;
            }
            Ok(())
        })
    };
    // The reaper may only see the run's exit once the run is registered: spawn and register under its lock.
    let (exited, exit_status) = std::sync::mpsc::channel();
    let group = {
        let mut waiting = crate::locks::lock(&reaper.waiting);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                drop(waiting);
                writeln!(writer, "error could not start {}: {error}", request.program)?;
                return Ok(false);
            }
        };
        let pid = child.id() as libc::pid_t;
        waiting.insert(pid, exited);
        reaper.registered.notify_all();
        // The reaper waits for it; dropping the handle neither kills nor waits.
        drop(child);
        pid
    };
    drop(command);
    let started = writeln!(writer, "started {group}");
    if !detached {
        started?;
    }
    let signals = connection.try_clone()?;
    std::thread::spawn(move || {
        for line in BufReader::new(signals).lines() {
            let number = match line.as_deref() {
                Ok("TERM") => libc::SIGTERM,
                Ok("KILL") => libc::SIGKILL,
                Ok(other) => {
                    if let (Some(master), Some(size)) = (&terminal_master, parse_size_line(other)) {
                        let _ = terminal::set_size(master.as_raw_fd(), size);
                    }
                    continue;
                }
                Err(_) => break,
            };
            // SAFETY: kill(2) on the run's own process group (the run leads a session of its own).
            unsafe { libc::kill(-group, number) };
        }
        // The server went away (or finished with this run): nothing of the run may outlive it, unless it is detached.
        if !detached {
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    });
    let status = exit_status.recv().map_err(|_| std::io::Error::other("the reaper stopped"))?;
    // The server of a detached run may be long gone: a failed write is no reason to keep the agent.
    let reported = if libc::WIFEXITED(status) {
        writeln!(writer, "exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        writeln!(writer, "exit signal {}", libc::WTERMSIG(status))
    } else {
        writeln!(writer, "exit code 255")
    };
    if !detached {
        reported?;
    }
    Ok(true)
}

/// Reads a `SIZE COLS ROWS` line, the server's request to resize a run's terminal.
fn parse_size_line(line: &str) -> Option<PtySize> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("SIZE"), Some(cols), Some(rows), None) => Some(PtySize { cols: cols.parse().ok()?, rows: rows.parse().ok()? }),
        _ => None,
    }
}

/// The server's side: starts runs through a session's agent.
pub struct AgentClient {
    socket_path: PathBuf,
}

impl AgentClient {
    pub fn new(socket_path: PathBuf) -> Self {
        AgentClient { socket_path }
    }

    /// Starts `program` with `args` inside the sandbox; answers once the agent has started it.
    pub async fn spawn(
        &self,
        program: String,
        args: Vec<String>,
        cwd: PathBuf,
        env: BTreeMap<String, String>,
        stdin: bool,
        pty: Option<PtySize>,
    ) -> Result<Process> {
        // A terminal always takes keystrokes.
        let stdin = stdin || pty.is_some();
        let agent_gone = |error: std::io::Error| {
            Error::Internal(format!("The session's sandbox agent is not answering ({error}); reconnect the session."))
        };
        let (stdin_reader, stdin_writer) = std::io::pipe().map_err(|error| Error::io("Could not create a pipe", error))?;
        let (stdout_reader, stdout_writer) = std::io::pipe().map_err(|error| Error::io("Could not create a pipe", error))?;
        let (stderr_reader, stderr_writer) = std::io::pipe().map_err(|error| Error::io("Could not create a pipe", error))?;
        let request = serde_json::to_vec(&SpawnRequest { program, args, cwd, env, pty })
            .map_err(|error| Error::Internal(format!("Could not encode a run request: {error}")))?;
        let mut message = (request.len() as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&request);
        let connection = UnixStream::connect(&self.socket_path).map_err(agent_gone)?;
        let child_ends = [stdin_reader.as_raw_fd(), stdout_writer.as_raw_fd(), stderr_writer.as_raw_fd()];
        let sent = connection.send_with_fd(&message, &child_ends).map_err(agent_gone)?;
        if sent < message.len() {
            (&connection).write_all(&message[sent..]).map_err(agent_gone)?;
        }
        // The child holds its ends now; ours must close so the readers see end-of-file when it exits.
        drop((stdin_reader, stdout_writer, stderr_writer));
        connection.set_nonblocking(true).map_err(agent_gone)?;
        let connection = tokio::net::UnixStream::from_std(connection).map_err(agent_gone)?;
        let (read_half, write_half) = connection.into_split();
        let mut lines = tokio::io::BufReader::new(read_half).lines();
        let first = lines.next_line().await.map_err(agent_gone)?.unwrap_or_default();
        if let Some(reason) = first.strip_prefix("error ") {
            return Err(Error::InvalidParams(format!("The run could not start: {reason}.")));
        }
        if !first.starts_with("started ") {
            return Err(Error::Internal("The session's sandbox agent stopped; reconnect the session.".into()));
        }
        let exit = async move {
            while let Some(line) = lines.next_line().await.map_err(|error| Error::io("Lost the sandbox agent", error))? {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next().and_then(|value| value.parse::<i32>().ok())) {
                    (Some("exit"), Some("code"), Some(code)) => {
                        return Ok(ExitStatus { code: Some(code), signal: None, message: None })
                    }
                    (Some("exit"), Some("signal"), Some(number)) => {
                        return Ok(ExitStatus { code: None, signal: Some(signal_name(number)), message: None })
                    }
                    _ => {}
                }
            }
            Ok(ExitStatus {
                code: None,
                signal: None,
                message: Some("The sandbox stopped before the run ended.".into()),
            })
        }
        .boxed();
        let stdin = if stdin { Some(Box::pin(pipe_sender(stdin_writer)?) as crate::drivers::BoxedWriter) } else { None };
        Ok(Process {
            stdout: Box::pin(pipe_receiver(stdout_reader)?),
            stderr: Box::pin(pipe_receiver(stderr_reader)?),
            stdin,
            control: Arc::new(AgentControl { writer: tokio::sync::Mutex::new(write_half), terminal: pty.is_some() }),
            exit,
        })
    }
}

fn pipe_receiver(reader: std::io::PipeReader) -> Result<tokio::net::unix::pipe::Receiver> {
    let fd = OwnedFd::from(reader);
    // SAFETY: fcntl on a descriptor we own. A large pipe lets a fast writer hand over big chunks per read.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|error| Error::io("Could not watch a run's output", error))
}

fn pipe_sender(writer: std::io::PipeWriter) -> Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(writer))
        .map_err(|error| Error::io("Could not open a run's stdin", error))
}

/// Signals a run's process group through the agent's connection.
struct AgentControl {
    writer: tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    /// The run was started with a terminal, which `resize` changes.
    terminal: bool,
}

#[async_trait]
impl ProcessControl for AgentControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        let line: &[u8] = match signal {
            Signal::Terminate => b"TERM\n",
            Signal::Kill => b"KILL\n",
        };
        // A closed connection means the run and the agent are gone already, which is what the caller wants.
        let _ = self.writer.lock().await.write_all(line).await;
        Ok(())
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.terminal {
            return Err(Error::InvalidParams("This run has no terminal to resize.".into()));
        }
        let line = format!("SIZE {} {}\n", size.cols, size.rows);
        // As for signals: a closed connection means the run is over, and its size no longer matters.
        let _ = self.writer.lock().await.write_all(line.as_bytes()).await;
        Ok(())
    }
}
