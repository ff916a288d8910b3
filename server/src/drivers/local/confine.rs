//! What confines each run, applied in the child between fork and exec: a new session, death with the agent, no
//! capabilities, no new privileges, Landlock (when it is the mechanism) and a seccomp filter (always, but `none`).
//!
//! Everything that allocates (the BPF programs, the Landlock ruleset) is built once when the agent starts; the
//! child only makes system calls, because after `fork` in a threaded process nothing else is safe.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::isolation::Mechanism;

/// How a run may use the network, as the confinement layer enforces it (the namespace and proxy are set up by the
/// driver; this is what the kernel checks inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum NetworkRule {
    /// Any address.
    Open,
    /// No IP sockets at all.
    Closed,
    /// TCP only to this port on the loopback, where sandlink's filtering proxy listens; no UDP.
    ProxyOnly { port: u16 },
}

/// What the agent applies to every run of a session; written by the driver, read by the agent at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    pub mechanism: Mechanism,
    /// Landlock: directories (and files) the run may change.
    pub writable: Vec<PathBuf>,
    /// Landlock: directories (and files) the run may read and execute from.
    pub readable: Vec<PathBuf>,
    /// Landlock: device files the run may read and write (`/dev/null` and friends).
    pub devices: Vec<PathBuf>,
    pub network: NetworkRule,
    /// Whether runs may create Unix sockets (they could reach host services such as Docker or D-Bus by path).
    pub unix_sockets: bool,
    /// The most processes the user may have while a run forks (RLIMIT_NPROC; the kernel ignores it for root,
    /// where the session's pids cgroup bounds them instead).
    pub max_processes: Option<u64>,
}

/// A run policy turned into what the kernel takes, ready to apply in a child.
pub struct Confinement {
    mechanism: Mechanism,
    /// Filters to install, in order; each denies a different set of calls.
    seccomp: Vec<seccompiler::BpfProgram>,
    landlock: Option<OwnedFd>,
    max_processes: Option<u64>,
}

/// Marks every descriptor above stderr close-on-exec, in a forked child before exec: whatever the process that
/// started sandlink left open without that flag (an editor's, a shell's `exec 200>file`) would otherwise pass through
/// bubblewrap and the agent into every run, which could write to a host file through it. Only system calls: safe
/// between fork and exec. Kernels before 5.11 lack `close_range`'s flag; there each descriptor up to the open-file
/// limit is marked on its own.
pub fn close_inherited_on_exec() {
    // SAFETY: close_range(2), getrlimit(2) and fcntl(2) on this process's own descriptor table, with integer arguments
    // and a local out-value; none allocates.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        let highest = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 { limit.rlim_cur.min(1 << 20) } else { 1024 };
        for fd in 3..highest as libc::c_int {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

impl Confinement {
    /// Builds the filters and the Landlock ruleset for `policy`.
    pub fn prepare(policy: &RunPolicy) -> std::io::Result<Self> {
        let seccomp = match policy.mechanism {
            Mechanism::Unconfined => Vec::new(),
            _ => seccomp_programs(policy)?,
        };
        let landlock = match policy.mechanism {
            Mechanism::Landlock => Some(landlock_ruleset(policy)?),
            _ => None,
        };
        Ok(Confinement { mechanism: policy.mechanism, seccomp, landlock, max_processes: policy.max_processes })
    }

    /// Applies the confinement to the calling process. Call only between fork and exec: it makes system calls and
    /// nothing else (no allocation, no locks).
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        // SAFETY (whole function): each call is a plain system call on the calling process with integer or
        // pre-built, live arguments; none allocates or touches shared state.
        unsafe {
            close_inherited_on_exec();
            // A session of its own: no controlling terminal to inject keystrokes into, its own process group.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The run dies with the agent thread that started it, so nothing outlives the session.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Signals the editor or a `nohup` left ignored would be inherited across exec: a run starts with every
            // signal at its default, as in a fresh terminal, so `kill -HUP` ends it wherever sandlink was started.
            for signal in 1..libc::SIGRTMIN() {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            if self.mechanism == Mechanism::Unconfined {
                return Ok(());
            }
            if let Some(limit) = self.max_processes {
                if libc::getuid() != 0 {
                    let bound = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    libc::setrlimit(libc::RLIMIT_NPROC, &bound);
                }
            }
            drop_capabilities()?;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ruleset) = &self.landlock {
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        for program in &self.seccomp {
            seccompiler::apply_filter(program).map_err(|error| std::io::Error::other(error.to_string()))?;
        }
        Ok(())
    }
}

/// Empties every capability set, the bounding set included, so not even an exec as root regains one.
///
/// # Safety
/// Plain system calls on the calling process; for use between fork and exec.
unsafe fn drop_capabilities() -> std::io::Result<()> {
    // Without CAP_SETPCAP (an unprivileged user, or bubblewrap already dropped it) this fails harmlessly: the
    // bounding set is then already as small as this process can make it.
    for capability in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        {
            break;
        }
    }
    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn seccomp_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("could not build the seccomp filter: {error}"))
}

fn target_arch() -> std::io::Result<seccompiler::TargetArch> {
    seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(seccomp_error)
}

/// The calls a run must never make, as two filters: one answering `ENOSYS` (so the C library falls back from
/// `clone3` to `clone`, whose flags a filter can read), one answering `EPERM` for everything else. The same family
/// of rules as OpenAI's Codex CLI and Anthropic's sandbox-runtime ship.
fn seccomp_programs(policy: &RunPolicy) -> std::io::Result<Vec<seccompiler::BpfProgram>> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond};
    use seccompiler::{SeccompFilter, SeccompRule};
    use std::collections::BTreeMap;

    let arch = target_arch()?;
    let always = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, syscall: libc::c_long| {
        rules.insert(syscall, Vec::new());
    };
    let rule = |conditions: Vec<Cond>| SeccompRule::new(conditions).map_err(seccomp_error);
    let equals = |argument: u8, value: u64| Cond::new(argument, Len::Dword, Op::Eq, value).map_err(seccomp_error);
    let has_bits = |argument: u8, bits: u64| Cond::new(argument, Len::Qword, Op::MaskedEq(bits), bits).map_err(seccomp_error);

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Mounting, new namespaces and switching roots: the ways out of a mount view.
    for syscall in [
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        // Reading or changing other processes.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        // The kernel keyring, BPF and performance counters: shared with the host, and large attack surfaces.
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        // Whole-machine operations, refused without capabilities anyway; denied so no kernel bug makes them work.
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_personality,
    ] {
        always(&mut denied, syscall);
    }
    // Typing into a terminal (TIOCSTI) and its console cousin.
    const TIOCSTI: u64 = 0x5412;
    const TIOCLINUX: u64 = 0x541C;
    denied.insert(libc::SYS_ioctl, vec![rule(vec![equals(1, TIOCSTI)?])?, rule(vec![equals(1, TIOCLINUX)?])?]);
    // clone with any namespace flag.
    let namespace_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for flag in namespace_flags {
        clone_rules.push(rule(vec![has_bits(0, flag as u64)?])?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    // Sockets: Unix sockets reach host services by path; IP sockets as the network policy says.
    let mut socket_rules = Vec::new();
    if !policy.unix_sockets {
        socket_rules.push(rule(vec![equals(0, libc::AF_UNIX as u64)?])?);
    }
    match policy.network {
        NetworkRule::Open => {}
        NetworkRule::Closed => {
            for family in [libc::AF_INET, libc::AF_INET6, libc::AF_PACKET] {
                socket_rules.push(rule(vec![equals(0, family as u64)?])?);
            }
        }
        NetworkRule::ProxyOnly { .. } => {
            // TCP to the proxy's port is all Landlock lets through; UDP (DNS included) is not needed behind a proxy.
            const SOCKET_TYPE_MASK: u64 = 0xf;
            for family in [libc::AF_INET, libc::AF_INET6] {
                let datagram = Cond::new(1, Len::Dword, Op::MaskedEq(SOCKET_TYPE_MASK), libc::SOCK_DGRAM as u64)
                    .map_err(seccomp_error)?;
                socket_rules.push(rule(vec![equals(0, family as u64)?, datagram])?);
            }
            socket_rules.push(rule(vec![equals(0, libc::AF_PACKET as u64)?])?);
        }
    }
    if !socket_rules.is_empty() {
        denied.insert(libc::SYS_socket, socket_rules);
    }
    let permission_denied = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccomp_error)?;

    let mut not_implemented: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    always(&mut not_implemented, libc::SYS_clone3);
    let no_clone3 = SeccompFilter::new(
        not_implemented,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(seccomp_error)?;

    [no_clone3, permission_denied]
        .into_iter()
        .map(|filter| seccompiler::BpfProgram::try_from(filter).map_err(seccomp_error))
        .collect()
}

/// The Landlock ruleset: read and execute beneath `readable`, everything beneath `writable`, devices, and TCP
/// only to the proxy when the network is restricted. Built best-effort for the file system (older kernels lose
/// only newer rights such as truncate), but the driver checks the ABI before asking for network rules.
fn landlock_ruleset(policy: &RunPolicy) -> std::io::Result<OwnedFd> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
    };
    let failed = |error: landlock::RulesetError| std::io::Error::other(format!("could not build the Landlock rules: {error}"));
    let abi = ABI::V7;
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi)).map_err(failed)?;
    if policy.network != NetworkRule::Open {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi)).map_err(failed)?;
    }
    // Signals to, and abstract sockets of, processes outside the sandbox (the agent, the server, the user's).
    ruleset = ruleset.scope(Scope::from_all(abi)).map_err(failed)?;
    let mut created = ruleset
        .create()
        .map_err(failed)?
        .add_rules(path_beneath_rules(&policy.readable, AccessFs::from_read(abi)))
        .map_err(failed)?
        .add_rules(path_beneath_rules(&policy.writable, AccessFs::from_all(abi)))
        .map_err(failed)?
        .add_rules(path_beneath_rules(&policy.devices, AccessFs::from_file(abi)))
        .map_err(failed)?;
    if let NetworkRule::ProxyOnly { port } = policy.network {
        created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp)).map_err(failed)?;
    }
    let descriptor: Option<OwnedFd> = created.into();
    descriptor.ok_or_else(|| std::io::Error::other("Landlock is not enabled in this kernel"))
}
