//! Which TCP ports listen inside a sandbox, read from `/proc` by one command every driver can run: previews of a port
//! nothing listens on say so, and servers that start during a run are offered as previews without being asked for.
//!
//! Why `/proc` through a run rather than a driver call: every sandbox sandlink drives is Linux with a POSIX shell
//! (local namespaces, containers, cloud VMs, SSH hosts), and the listing is seen from inside the sandbox's own network
//! and process namespaces, which is where the server binds. Where the probe cannot run or read `/proc`, it answers
//! `None` and callers go on without it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Engine, Session};
use crate::drivers::{ExecSpec, Sandbox, Signal};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::protocol::PreviewReadyParams;

/// The sockets every visible process holds, then the TCP tables. `ls -l` reads all descriptor links in one process.
const PROBE: &str = "ls -l /proc/[0-9]*/fd/ 2>/dev/null; echo ---sandlink-tcp---; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null";
const SEPARATOR: &str = "---sandlink-tcp---";
/// A probe that takes longer is abandoned (a hung sandbox must not hold a preview up).
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// `/proc/net/tcp`'s state for a listening socket.
const TCP_LISTEN: &str = "0A";

/// The ports in LISTEN state, and those of them held by a process visible in the sandbox (in a pid namespace, the
/// sandbox's own processes; elsewhere every process the sandbox's user may inspect).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listening {
    pub all: BTreeSet<u16>,
    pub owned: BTreeSet<u16>,
    /// Whether the probe could see any process's sockets. Under Landlock each run is its own domain and cannot
    /// inspect another run's descriptors, so nothing is attributable and every listening port counts.
    pub attributable: bool,
}

impl Listening {
    /// The ports to treat as the sandbox's own: those its processes hold, or all when that cannot be told.
    pub fn sandbox_ports(&self) -> &BTreeSet<u16> {
        if self.attributable {
            &self.owned
        } else {
            &self.all
        }
    }
}

/// Reads the probe's output; `None` when it holds no TCP table (no `/proc`, not Linux).
pub fn parse(text: &str) -> Option<Listening> {
    let (descriptors, tables) = text.split_once(SEPARATOR)?;
    let socket_inodes: BTreeSet<&str> = descriptors
        .split("socket:[")
        .skip(1)
        .filter_map(|rest| rest.split_once(']').map(|(inode, _)| inode))
        .collect();
    let mut listening = Listening { attributable: !socket_inodes.is_empty(), ..Listening::default() };
    let mut saw_table = false;
    for line in tables.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"sl") {
            saw_table = true;
            continue;
        }
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else { continue };
        if *state != TCP_LISTEN {
            continue;
        }
        let Some(port) = local.rsplit_once(':').and_then(|(_, port)| u16::from_str_radix(port, 16).ok()) else { continue };
        listening.all.insert(port);
        if socket_inodes.contains(inode) {
            listening.owned.insert(port);
        }
    }
    saw_table.then_some(listening)
}

/// Reads the sandbox's sockets from this machine where the driver can (no process starts beside the runs), else runs
/// the probe in the sandbox; `None` when neither could (no shell, no `/proc`, a failed or slow command).
pub async fn probe(sandbox: &dyn Sandbox) -> Option<Listening> {
    if let Some(seen) = sandbox.sockets_seen_from_here().await {
        // Every process of the sandbox was looked at, so a port none of them holds is not the sandbox's, even when
        // none holds a socket at all.
        let owned = seen.listening.iter().filter(|(_, inode)| seen.socket_inodes.contains(inode)).map(|(port, _)| *port);
        return Some(Listening {
            owned: owned.collect(),
            all: seen.listening.iter().map(|(port, _)| *port).collect(),
            attributable: true,
        });
    }
    let spec = ExecSpec {
        command: PROBE.into(),
        args: None,
        cwd: None,
        env: BTreeMap::new(),
        stdin: false,
        timeout: Some(PROBE_LIMIT),
        pty: None,
    };
    let mut process = sandbox.exec(spec).await.ok()?;
    let control = process.control.clone();
    let read = async {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (out, _) = tokio::join!(process.stdout.read_to_end(&mut stdout), process.stderr.read_to_end(&mut stderr));
        out.ok()?;
        let _ = (&mut process.exit).await;
        Some(stdout)
    };
    match tokio::time::timeout(PROBE_LIMIT, read).await {
        Ok(Some(stdout)) => parse(&String::from_utf8_lossy(&stdout)),
        Ok(None) => None,
        Err(_) => {
            let _ = control.signal(Signal::Kill).await;
            None
        }
    }
}

/// How long a preview waits for its port to start listening (a server that is still starting).
const PREVIEW_WAIT: Duration = Duration::from_secs(5);

/// Waits until `port` listens in the sandbox, for at most `PREVIEW_WAIT`; a port that never does is `portNotListening`
/// naming the ports that do. Where listening ports cannot be known, the preview goes ahead.
pub async fn wait_until_listening(sandbox: &dyn Sandbox, port: u16) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PREVIEW_WAIT;
    loop {
        let Some(listening) = probe(sandbox).await else { return Ok(()) };
        if listening.all.contains(&port) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let others: Vec<String> = listening.owned.iter().map(u16::to_string).collect();
            let others = match others.is_empty() {
                true => String::new(),
                false => format!(" (ports listening there: {})", others.join(", ")),
            };
            return Err(Error::PortNotListening(format!(
                "Nothing listens on port {port} in the sandbox{others}. Start the server there (listening on 0.0.0.0 \
                 or 127.0.0.1), then open the preview again."
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Engine {
    /// While the session has runs in flight, looks now and then (`Sandbox::port_watch_interval`: every 2 s on this
    /// machine, every 10 s where a command is a provider's API call) for ports that a process of the sandbox
    /// started listening on since the watch began, and offers each as a preview (`sandlink/previewReady`), as
    /// editors' own port detection does for local servers. One watcher per session; it ends with the last run.
    pub(super) fn watch_ports(&self, session: &Arc<Session>) {
        let Some(interval) = session.sandbox.port_watch_interval() else { return };
        if session.watching_ports.swap(true, Ordering::SeqCst) {
            return;
        }
        let (session, events, runs) = (session.clone(), self.events.clone(), self.runs.clone());
        tokio::spawn(async move {
            let baseline = probe(&*session.sandbox).await.map(|listening| listening.sandbox_ports().clone());
            if let Some(mut known) = baseline {
                loop {
                    tokio::time::sleep(interval).await;
                    let in_flight = lock(&runs).values().any(|run| run.session_id == session.id);
                    if !in_flight || session.is_forgotten() {
                        break;
                    }
                    let Some(listening) = probe(&*session.sandbox).await else { break };
                    let now = listening.sandbox_ports().clone();
                    for port in now.difference(&known).copied().collect::<Vec<u16>>() {
                        let Ok(url) = session.sandbox.preview(port).await else { continue };
                        if session.add_preview(port, &url) {
                            events.preview_ready(PreviewReadyParams { session_id: session.id.clone(), port, url }).await;
                        }
                    }
                    known = now;
                }
            }
            session.watching_ports.store(false, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7777 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_ports_should_be_read_from_both_tables_and_owned_ones_told_apart() {
        let text = format!(
            "/proc/12/fd/:\ntotal 0\nlrwx------ 1 u u 64 Dec  5 06:00 3 -> socket:[4242]\nlr-x------ 1 u u 64 Dec  5 06:00 4 -> /dev/null\n\
             /proc/13/fd/:\nlrwx------ 1 u u 64 Dec  5 06:00 5 -> socket:[7777]\n{SEPARATOR}\n{TABLES}"
        );
        let listening = parse(&text).expect("tables");
        assert_eq!(listening.all, BTreeSet::from([8080, 22, 3000]), "LISTEN only, IPv4 and IPv6");
        assert_eq!(listening.owned, BTreeSet::from([8080, 3000]), "port 22 belongs to a process the sandbox cannot see");
        assert_eq!(listening.sandbox_ports(), &listening.owned);
        let blind = parse(&format!("/proc/1/fd/:\n0 -> /dev/null\n{SEPARATOR}\n{TABLES}")).expect("tables");
        assert!(!blind.attributable && blind.owned.is_empty());
        assert_eq!(blind.sandbox_ports(), &BTreeSet::from([8080, 22, 3000]), "no sockets seen: every port counts");
    }

    #[test]
    fn output_without_tables_should_say_nothing_is_known() {
        assert_eq!(parse(""), None);
        assert_eq!(parse(&format!("ls: cannot access\n{SEPARATOR}\n")), None, "no /proc/net/tcp");
        assert_eq!(parse("sl local_address\n"), None, "no separator: not the probe's output");
        let garbage = format!("{SEPARATOR}\n  sl local\n 0: zz:zz 0 0A\n 1: 0100007F:FFFFF 0 0A a b c d e f\n");
        assert_eq!(parse(&garbage), Some(Listening::default()), "bad lines are skipped, not trusted");
    }
}
