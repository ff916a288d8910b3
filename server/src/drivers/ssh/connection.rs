//! One session's connection: a ControlMaster of the system `ssh` (through the `openssh` crate), reopened with
//! backoff after it drops, with the session's port forwards set up again on every new master.
//!
//! The system `ssh` is used rather than a Rust SSH stack so that everything a user's `ssh` honours works the same:
//! Host aliases, `Include`, `ProxyJump`, `IdentityFile`, the agent, `known_hosts`, hardware keys.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::{ControlPersist, ForwardType, KnownHosts, Session, SessionBuilder, Socket};

use super::hostkeys;
use super::target::Target;
use crate::error::{Error, Result};
use crate::locks::lock;

/// How long one attempt to reach the host may take (ssh's `ConnectTimeout`), and the whole connect with it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Reconnects back off from the first pause to the last and give up after the limit.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);
const RECONNECT_LIMIT: Duration = Duration::from_secs(120);
/// How often an idle connection is looked at.
const KEEPER_PERIOD: Duration = Duration::from_secs(1);
/// How long a master outlives its last channel. The `openssh` crate's default (`ControlPersist=yes`) kept the master of
/// a server that was killed running for ever. A live session always holds a channel (its helper shell), so this ends
/// no master in use; if it ever does, the keeper reopens the connection as after a drop.
const MASTER_LINGER_SECONDS: usize = 30;

/// `MASTER_LINGER_SECONDS`, unless `SANDLINK_SSH_MASTER_LINGER_SECONDS` sets another: the test that kills a server
/// shortens it so it need not wait half a minute; nothing else should set it.
fn master_linger() -> ControlPersist {
    let seconds = std::env::var("SANDLINK_SSH_MASTER_LINGER_SECONDS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(MASTER_LINGER_SECONDS);
    std::num::NonZeroUsize::new(seconds).map_or(ControlPersist::ClosedAfterInitialConnection, ControlPersist::IdleFor)
}

impl Target {
    fn builder(&self, control_directory: &Path) -> SessionBuilder {
        let mut builder = SessionBuilder::default();
        builder.known_hosts_check(KnownHosts::Strict);
        builder.connect_timeout(CONNECT_TIMEOUT);
        builder.control_directory(control_directory);
        builder.control_persist(master_linger());
        if self.keep_alive_seconds > 0 {
            builder.server_alive_interval(Duration::from_secs(self.keep_alive_seconds));
        }
        if let Some(config) = &self.config_file {
            builder.config_file(config);
        }
        builder
    }

    /// Opens a new master, turning ssh's failure into an error a user can act on.
    pub async fn open_master(&self, control_directory: &Path) -> Result<Session> {
        let builder = self.builder(control_directory);
        let destination = self.destination();
        let attempt = tokio::time::timeout(CONNECT_LIMIT, builder.connect_mux(&destination)).await;
        match attempt {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(error)) => Err(self.explain(&error).await),
            Err(_) => Err(Error::Timeout(format!(
                "Connecting to {} took longer than {} s; check that the host is up and reachable (try `ssh {}`).",
                self.host,
                CONNECT_LIMIT.as_secs(),
                self.host
            ))),
        }
    }

    async fn explain(&self, error: &openssh::Error) -> Error {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            source = inner.source();
        }
        let said = text.trim().to_string();
        if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || said.contains("Host key verification failed")
            || said.contains("host key is known") || said.contains("has changed and you have requested strict")
        {
            return hostkeys::refusal(self, &said).await;
        }
        if said.contains("Permission denied") || said.contains("Too many authentication failures") {
            let tried = hostkeys::identities(self).await;
            return Error::CredentialsMissing(format!(
                "{} refused every key ssh offered ({tried}). Add one of them to the remote ~/.ssh/authorized_keys, or \
                 point IdentityFile at a key the host accepts, then connect again.",
                self.host
            ));
        }
        if said.contains("timed out") || said.contains("Connection refused") || said.contains("No route to host")
            || said.contains("Could not resolve") || said.contains("Network is unreachable")
            || said.contains("Connection closed") || said.contains("kex_exchange_identification")
        {
            return Error::DriverUnavailable {
                driver: "ssh".into(),
                message: format!("Could not reach {}: {}. Check the host name and port (try `ssh {}`).", self.host, last_line(&said), self.host),
            };
        }
        Error::Remote { status: None, message: format!("ssh could not connect to {}: {said}", self.host) }
    }
}

fn last_line(text: &str) -> String {
    text.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or(text).to_string()
}

/// A session's connection, replaced by a new master when it drops.
pub struct Connection {
    target: Target,
    /// Where the masters' control sockets live (per session, under sandlink's state directory).
    control_directory: PathBuf,
    current: tokio::sync::Mutex<Arc<Session>>,
    /// Counts masters; a reconnect asked for an older one than the current is already done.
    generation: AtomicU64,
    /// Local ports forwarded to remote ports (local, remote), set up again on each new master.
    forwards: Mutex<Vec<(u16, u16)>>,
    closed: AtomicBool,
}

impl Connection {
    /// Connects for the first time; failures are reported at once, never retried.
    pub async fn open(target: Target, control_directory: PathBuf) -> Result<Arc<Connection>> {
        std::fs::create_dir_all(&control_directory)
            .map_err(|error| Error::io(format!("Could not create {}", control_directory.display()), error))?;
        let session = target.open_master(&control_directory).await?;
        let connection = Arc::new(Connection {
            target,
            control_directory,
            current: tokio::sync::Mutex::new(Arc::new(session)),
            generation: AtomicU64::new(0),
            forwards: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(keep(Arc::downgrade(&connection)));
        Ok(connection)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The current master and its generation.
    pub async fn session(&self) -> (Arc<Session>, u64) {
        let current = self.current.lock().await;
        (current.clone(), self.generation.load(Ordering::SeqCst))
    }

    /// Whether the master of `generation` still answers.
    pub async fn alive(&self, session: &Session) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(5), session.check()).await, Ok(Ok(())))
    }

    /// Replaces the master of `generation` when it no longer answers, backing off between attempts; answers once
    /// a master works (at once when another caller already replaced it).
    pub async fn reconnect(&self, generation: u64) -> Result<()> {
        let mut current = self.current.lock().await;
        if self.generation.load(Ordering::SeqCst) != generation {
            return Ok(());
        }
        if self.alive(&current).await {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut pause = BACKOFF_FIRST;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Remote { status: None, message: format!("The session with {} was closed.", self.target.host) });
            }
            match self.target.open_master(&self.control_directory).await {
                Ok(session) => {
                    tracing::info!(host = %self.target.host, "reconnected");
                    let forwards = lock(&self.forwards).clone();
                    for (local, remote) in forwards {
                        if let Err(error) = forward(&session, local, remote).await {
                            tracing::warn!(%error, local, remote, "could not forward a preview port again");
                        }
                    }
                    *current = Arc::new(session);
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                // A host key that changed meanwhile is never accepted by retrying.
                Err(error @ (Error::HostKeyUnknown { .. } | Error::HostKeyChanged { .. } | Error::CredentialsMissing(_))) => {
                    return Err(error)
                }
                Err(error) if started.elapsed() >= RECONNECT_LIMIT => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, ?pause, "reconnecting failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF_LAST);
                }
            }
        }
    }

    /// Forwards `remote` on the remote loopback to a new local port on 127.0.0.1, kept across reconnects.
    pub async fn forward_port(&self, remote: u16) -> Result<u16> {
        if let Some((local, _)) = lock(&self.forwards).iter().find(|(_, forwarded)| *forwarded == remote) {
            return Ok(*local);
        }
        let local = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| Error::io("Could not find a free local port for the preview", error))?
            .port();
        let (session, _) = self.session().await;
        forward(&session, local, remote).await?;
        lock(&self.forwards).push((local, remote));
        Ok(local)
    }

    /// Closes the master; nothing reconnects afterwards.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let current = self.current.lock().await;
        // The master ends when the last handle drops; asking it now ends it even while runs hold handles.
        let socket = current.control_socket().to_path_buf();
        drop(current);
        let _ = tokio::process::Command::new("ssh")
            .args(["-S"])
            .arg(&socket)
            .args(["-O", "exit", "sandlink"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// Looks at the master once a second and replaces it when it died, so previews come back after a drop even when
/// nothing else uses the connection; ends with the connection.
async fn keep(connection: std::sync::Weak<Connection>) {
    loop {
        tokio::time::sleep(KEEPER_PERIOD).await;
        let Some(connection) = connection.upgrade() else { return };
        if connection.closed.load(Ordering::SeqCst) {
            return;
        }
        let (session, generation) = connection.session().await;
        if connection.alive(&session).await {
            continue;
        }
        drop(session);
        if let Err(error) = connection.reconnect(generation).await {
            tracing::warn!(host = %connection.target.host, %error, "the connection dropped and could not be opened again");
        }
    }
}

async fn forward(session: &Session, local: u16, remote: u16) -> Result<()> {
    let listen = Socket::TcpSocket { host: "127.0.0.1".into(), port: local };
    let connect = Socket::TcpSocket { host: "127.0.0.1".into(), port: remote };
    session.request_port_forward(ForwardType::Local, listen, connect).await.map_err(|error| Error::Remote {
        status: None,
        message: format!("ssh could not forward local port {local} to remote port {remote}: {error}"),
    })
}
