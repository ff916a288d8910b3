//! The docker driver's network allow-list: the container has no network (`NetworkMode: none`, loopback only) and
//! sandlink opens one loopback port inside the container's own network namespace where `netpolicy::Proxy` serves,
//! so the proxy, which resolves and connects on this machine for the listed hosts only, is the container's only
//! way out.
//!
//! Entering the namespace needs dockerd on this machine (the container's pid must be one of this machine's
//! processes) and the privilege to enter another process's network namespace (root, or `CAP_SYS_ADMIN`); where
//! either is missing the policy is refused as `unsupported` with a sentence saying why, never run unenforced.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};
use crate::netpolicy::{proxy_environment, AllowedHost, Proxy, ServedListener};

/// Linux's number for `CAP_SYS_ADMIN`, which `setns(2)` into a network namespace needs.
const CAP_SYS_ADMIN: u32 = 21;

/// What to do instead, the end of every refusal.
const INSTEAD: &str = "Use \"network\" = \"on\" or \"off\" with this daemon, or the local driver, which enforces the \
                       list without privileges.";

/// An allow-list in force for one container: the proxy and its port inside the container's network namespace.
/// Dropping it closes the port and every connection through it.
pub struct Gate {
    port: u16,
    // Declared before the proxy so the port closes first.
    _listener: ServedListener,
    _proxy: Proxy,
}

impl Gate {
    /// Starts a proxy admitting `hosts` and serves it on a fresh loopback port inside the network namespace of the
    /// container whose first process is `pid` (as inspected), after checking that this pid really is that container
    /// (its `/etc/hostname` is `hostname`, or its cgroup names `container_id`). `policy` is the policy in words, for
    /// error messages.
    pub async fn open(hosts: Vec<AllowedHost>, pid: u32, container_id: &str, hostname: &str, policy: &str) -> Result<Gate> {
        let (container_id, hostname, policy_text) = (container_id.to_string(), hostname.to_string(), policy.to_string());
        let listener = tokio::task::spawn_blocking(move || {
            // A thread of its own, which ends right after: `setns` moves only the calling thread, and a pooled
            // thread would go on serving other work inside the container's namespace.
            std::thread::Builder::new()
                .name("sandlink-docker-netns".into())
                .spawn(move || listen_inside(pid, &container_id, &hostname, &policy_text))
                .map_err(|error| Error::io("Could not start a thread to open the container's proxy port", error))?
                .join()
                .map_err(|_| Error::Internal("The thread opening the container's proxy port panicked.".into()))?
        })
        .await
        .map_err(|error| Error::Internal(format!("Could not open the container's proxy port: {error}")))??;
        let port = listener
            .local_addr()
            .map_err(|error| Error::io("Could not read the container's proxy port", error))?
            .port();
        let proxy = Proxy::start(hosts, None).await?;
        let served = proxy.serve_listener(listener)?;
        Ok(Gate { port, _listener: served, _proxy: proxy })
    }

    /// The proxy's port on the container's loopback.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `*_PROXY` variables every run of the container gets (the same as the local driver's).
    pub fn environment(&self) -> Vec<(String, String)> {
        proxy_environment(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
    }
}

/// Why this server cannot enforce an allow-list for containers of the daemon at `docker_host`, as a sentence that
/// names `policy` and what to do instead; `None` when it can (which `Gate::open` still confirms per container).
pub fn why_not_enforceable(docker_host: &str, policy: &str) -> Option<String> {
    if !docker_host.starts_with("unix://") {
        return Some(format!(
            "The docker driver enforces this profile's {policy} from the Docker host itself, inside the container's \
             network namespace, and the daemon here is remote (DOCKER_HOST is {docker_host}). Run sandlink on the \
             Docker host, or: {INSTEAD}"
        ));
    }
    if !has_effective_capability(CAP_SYS_ADMIN) {
        return Some(not_privileged(policy));
    }
    None
}

fn not_privileged(policy: &str) -> String {
    format!(
        "The docker driver enforces this profile's {policy} by opening sandlink's proxy port inside the container's \
         network namespace, which needs root (CAP_SYS_ADMIN) on the Docker host, and this sandlink runs without it (as \
         with rootless Docker). Run sandlink as root, or: {INSTEAD}"
    )
}

fn not_visible(policy: &str, pid: u32) -> String {
    format!(
        "The docker driver enforces this profile's {policy} inside the container's network namespace, but the \
         container's process (pid {pid} on the daemon's side) is not visible from here: dockerd runs in a virtual \
         machine (Docker Desktop) or another pid namespace. Run sandlink where dockerd runs, or: {INSTEAD}"
    )
}

/// Runs on a thread of its own: enters the container's network namespace and binds the proxy's port there. The
/// socket stays in that namespace after the thread ends.
fn listen_inside(pid: u32, container_id: &str, hostname: &str, policy: &str) -> Result<StdTcpListener> {
    let refuse = |error: &io::Error| match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Unsupported(not_privileged(policy)),
        _ => Error::Unsupported(not_visible(policy, pid)),
    };
    // Opened first, so the namespace checked below is the one entered even if the pid ended in between.
    let namespace = File::open(format!("/proc/{pid}/ns/net")).map_err(|error| refuse(&error))?;
    if !is_the_container(pid, container_id, hostname) {
        return Err(Error::Unsupported(not_visible(policy, pid)));
    }
    // SAFETY: setns(2) with a namespace file descriptor we own, on this thread only; the thread does nothing but
    // bind one socket afterwards and then ends, so no other code ever runs inside the container's namespace.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(refuse(&io::Error::last_os_error()));
    }
    // Network mode `none` leaves only loopback; anything else (an interface added from outside Docker) would be a
    // way out that the proxy does not see.
    let interfaces = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|error| Error::io("Could not list the container's network interfaces", error))?;
    let others = interfaces_besides_loopback(&interfaces);
    if !others.is_empty() {
        return Err(Error::InvalidParams(format!(
            "The container has network interfaces besides loopback ({}), so this profile's {policy} would not be its \
             only way out. Disconnect the session without keeping it (or remove the container) and connect again.",
            others.join(", ")
        )));
    }
    StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|error| Error::io("Could not open the proxy's port on the container's loopback", error))
}

/// Whether `pid`, as this machine numbers it, is the container's process and not an unrelated one that happens to
/// have the number the daemon reported (a daemon in a VM numbers its own processes).
fn is_the_container(pid: u32, container_id: &str, hostname: &str) -> bool {
    let same_hostname = !hostname.is_empty()
        && std::fs::read_to_string(format!("/proc/{pid}/root/etc/hostname"))
            .is_ok_and(|written| written.trim() == hostname);
    let same_cgroup = container_id.len() >= 12
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cgroup| cgroup.contains(container_id));
    same_hostname || same_cgroup
}

/// The interface names of a `/proc/net/dev` listing, loopback left out.
fn interfaces_besides_loopback(listing: &str) -> Vec<String> {
    listing
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim().to_string()))
        .filter(|name| name != "lo")
        .collect()
}

/// Whether this process has `capability` in its effective set (`CapEff` in `/proc/self/status`).
fn has_effective_capability(capability: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << capability) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_daemon_should_be_refused_with_a_sentence_naming_the_policy() {
        let why = why_not_enforceable("tcp://build-box:2376", "network: only pypi.org").expect("refused");
        assert!(why.contains("network: only pypi.org") && why.contains("tcp://build-box:2376"), "{why}");
        assert!(why.contains("\"off\""), "says what to do instead: {why}");
        let ssh = why_not_enforceable("ssh://me@box", "network: only pypi.org").expect("refused");
        assert!(ssh.contains("remote"), "{ssh}");
    }

    #[test]
    fn interfaces_should_be_read_from_a_proc_net_dev_listing() {
        let listing = "Inter-|   Receive\n face |bytes    packets\n    lo: 0 0 0\n  eth0: 1 2 3\nsneaky1: 0 0\n";
        assert_eq!(interfaces_besides_loopback(listing), vec!["eth0".to_string(), "sneaky1".to_string()]);
        assert!(interfaces_besides_loopback("h1\nh2\n    lo: 0 0\n").is_empty());
    }

    #[test]
    fn this_process_should_not_pass_for_a_container() {
        let pid = std::process::id();
        assert!(!is_the_container(pid, "0123456789abcdef0123", "not-this-machines-hostname"));
    }
}
