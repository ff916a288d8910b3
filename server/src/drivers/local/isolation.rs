//! Which isolation the local driver uses: bubblewrap where it works, else Landlock with seccomp, else none only
//! when a profile asks for it. Never a silent weak default.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The oldest Landlock ABI the local driver accepts: 1 restricts the file system, which is the core promise.
/// TCP rules (ABI 4) are needed only for network policies other than `on`; signal scoping (ABI 6) is used when there.
const LANDLOCK_MIN_ABI: i32 = 1;

/// The mechanism that confines a session's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mechanism {
    /// Namespaces (user, pid, mount, ipc, uts, and net when the network is restricted): the host is read-only,
    /// the user's home and `/run` are hidden, no capabilities even when sandlink runs as root.
    Bubblewrap,
    /// No namespaces: Landlock limits the file system (and TCP), seccomp blocks the dangerous syscalls.
    Landlock,
    /// Only what every mechanism gets: a clean environment, a new session and a process tree tied to the server.
    Unconfined,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Bubblewrap => "bubblewrap",
            Mechanism::Landlock => "landlock",
            Mechanism::Unconfined => "none",
        }
    }

    /// One sentence for `sandlink drivers` and a session's detail.
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::Bubblewrap => {
                "isolation: bubblewrap (runs write only to the session root, a private home and a private /tmp; \
                 your home, /run and host processes are hidden; no capabilities)"
            }
            Mechanism::Landlock => {
                "isolation: landlock + seccomp (runs write only to the session root, a private home and a private \
                 TMPDIR; your home and /run are unreadable; no mounts, namespaces, ptrace or terminal injection)"
            }
            Mechanism::Unconfined => {
                "isolation: none, as the profile asks (runs can read and change everything your user can)"
            }
        }
    }
}

/// What the `isolation` setting asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// The strongest mechanism that works here.
    Auto,
    Exactly(Mechanism),
}

impl Requested {
    /// Parses the `isolation` setting (absent means `auto`).
    pub fn from_setting(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("auto") => Ok(Requested::Auto),
            Some("bubblewrap") => Ok(Requested::Exactly(Mechanism::Bubblewrap)),
            Some("landlock") => Ok(Requested::Exactly(Mechanism::Landlock)),
            Some("none") => Ok(Requested::Exactly(Mechanism::Unconfined)),
            Some(other) => Err(Error::InvalidProfile(format!(
                "The local setting \"isolation\" must be \"auto\", \"bubblewrap\", \"landlock\" or \"none\", not \"{other}\"."
            ))),
        }
    }
}

/// What this machine offers, probed once per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    pub bubblewrap: bool,
    /// The kernel's Landlock ABI version, 0 when Landlock is off or missing.
    pub landlock_abi: i32,
    /// Whether a seccomp filter can be installed (it always goes with Landlock).
    pub seccomp: bool,
}

impl Available {
    /// Probes the machine. `SANDLINK_LOCAL_NO_BWRAP` and `SANDLINK_LOCAL_NO_LANDLOCK` pretend a mechanism is missing,
    /// so the refusal and the fallbacks can be tested on a machine that has everything.
    pub fn probe() -> Self {
        let bubblewrap = std::env::var_os("SANDLINK_LOCAL_NO_BWRAP").is_none()
            && remembered_or_probed(&probe_record_path(), bubblewrap_identity(), bubblewrap_works);
        let landlock_abi = if std::env::var_os("SANDLINK_LOCAL_NO_LANDLOCK").is_some() { 0 } else { landlock_abi() };
        Available { bubblewrap, landlock_abi, seccomp: seccomp_works() }
    }

    fn landlock_works(&self) -> bool {
        self.landlock_abi >= LANDLOCK_MIN_ABI && self.seccomp
    }

    /// The mechanism for a request, or an error saying how to get isolation.
    pub fn choose(&self, requested: Requested) -> Result<Mechanism> {
        match requested {
            Requested::Exactly(Mechanism::Unconfined) => Ok(Mechanism::Unconfined),
            Requested::Exactly(Mechanism::Bubblewrap) if self.bubblewrap => Ok(Mechanism::Bubblewrap),
            Requested::Exactly(Mechanism::Landlock) if self.landlock_works() => Ok(Mechanism::Landlock),
            Requested::Auto if self.bubblewrap => Ok(Mechanism::Bubblewrap),
            Requested::Auto if self.landlock_works() => Ok(Mechanism::Landlock),
            Requested::Exactly(mechanism) => Err(unavailable(&format!(
                "The profile asks for {} isolation, which does not work on this machine ({}).",
                mechanism.as_str(),
                self.explain()
            ))),
            Requested::Auto => Err(unavailable(&format!(
                "sandlink found no way to isolate runs on this machine ({}), so it will not run your code here.",
                self.explain()
            ))),
        }
    }

    /// The mechanism `auto` would pick, for `sandlink drivers`.
    pub fn best(&self) -> Option<Mechanism> {
        self.choose(Requested::Auto).ok()
    }

    fn explain(&self) -> String {
        let bubblewrap = if self.bubblewrap {
            "bubblewrap works"
        } else if which("bwrap") {
            "bubblewrap is installed but cannot create namespaces here"
        } else {
            "bubblewrap is not installed"
        };
        let landlock = match (self.landlock_abi, self.seccomp) {
            (0, _) => "Landlock is not enabled in this kernel".to_string(),
            (_, false) => "seccomp filters cannot be installed".to_string(),
            (abi, true) => format!("Landlock ABI {abi} works"),
        };
        format!("{bubblewrap}; {landlock}")
    }
}

fn unavailable(first: &str) -> Error {
    Error::DriverUnavailable {
        driver: "local".into(),
        message: format!(
            "{first} Install bubblewrap (for example `apt install bubblewrap`), or use a kernel with Landlock enabled \
             (5.13 or newer, `lsm=landlock` on the kernel command line). To run without isolation anyway, set \
             isolation = \"none\" in a profile of your own (`sandlink profile save NAME --driver local --set \
             isolation=none`); runs can then read and change everything your user can."
        ),
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Where a process remembers that bubblewrap worked here, for the next one (`remembered_or_probed`).
fn probe_record_path() -> std::path::PathBuf {
    crate::paths::state_dir().join("bubblewrap-works")
}

/// The `bwrap` that `PATH` finds, looked up here rather than by `exec`: a search by `exec` tries every directory
/// before it in turn, each a failed `execve` in the forked child, on the way to every sandbox's start.
pub fn bubblewrap_on_path() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("bwrap")).find(|candidate| candidate.is_file()))
}

/// What the probe's verdict depends on: the `bwrap` found on `PATH` (its file's identity, so an upgrade probes again),
/// this boot, this user, and the kernel's settings for user namespaces. `None` without a `bwrap` to identify.
fn bubblewrap_identity() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = bubblewrap_on_path()?;
    let file = std::fs::metadata(&path).ok()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let settings: Vec<String> = [
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ]
    .iter()
    .map(|setting| std::fs::read_to_string(setting).map(|value| value.trim().to_string()).unwrap_or_default())
    .collect();
    // SAFETY: getuid(2) only reads the calling process's user id.
    let uid = unsafe { libc::getuid() };
    Some(format!(
        "sandlink bubblewrap probe 1\n{}\n{} {} {} {}.{}\nboot {}\nuid {uid}\nuserns {}\n",
        path.display(),
        file.dev(),
        file.ino(),
        file.size(),
        file.mtime(),
        file.mtime_nsec(),
        boot.trim(),
        settings.join(" ")
    ))
}

/// `probe`'s verdict, remembered at `record` when it is yes: starting bubblewrap to see whether it can make namespaces
/// costs about 3 ms, a tenth of a `sandlink run`. Only a yes is kept, keyed by `identity`, so a machine that changed
/// probes again; and a sandbox that then fails to start forgets it (`forget_that_bubblewrap_works`). A no is never
/// remembered: the fallback it leads to must be found anew each time.
fn remembered_or_probed(record: &std::path::Path, identity: Option<String>, probe: impl FnOnce() -> bool) -> bool {
    if let Some(identity) = &identity {
        if std::fs::read_to_string(record).is_ok_and(|remembered| &remembered == identity) {
            return true;
        }
    }
    let works = probe();
    match (works, identity) {
        (true, Some(identity)) => {
            // Written whole under another name, then renamed, so a reader never takes half a record for a match.
            let partial = record.with_extension(format!("{}.tmp", std::process::id()));
            if std::fs::create_dir_all(record.parent().unwrap_or(std::path::Path::new("/"))).is_ok()
                && std::fs::write(&partial, identity).is_ok()
                && std::fs::rename(&partial, record).is_err()
            {
                let _ = std::fs::remove_file(&partial);
            }
        }
        _ => {
            let _ = std::fs::remove_file(record);
        }
    }
    works
}

/// Forgets that bubblewrap worked here, after a bubblewrap sandbox did not start: the next start probes again.
pub fn forget_that_bubblewrap_works() {
    let _ = std::fs::remove_file(probe_record_path());
}

/// Whether bubblewrap can build the sandbox the local driver needs here (user namespaces may be forbidden).
fn bubblewrap_works() -> bool {
    std::process::Command::new(bubblewrap_on_path().unwrap_or_else(|| "bwrap".into()))
        .args(super::bubblewrap::PROBE_ARGUMENTS)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The kernel's Landlock ABI version (0 when unavailable).
fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute and the VERSION flag only returns a number.
    let version = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION)
    };
    version.max(0) as i32
}

/// Whether this kernel takes seccomp filters (checked without installing one).
fn seccomp_works() -> bool {
    // SAFETY: prctl(PR_GET_SECCOMP) reads the calling thread's mode; it changes nothing.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERYTHING: Available = Available { bubblewrap: true, landlock_abi: 7, seccomp: true };
    const LANDLOCK_ONLY: Available = Available { bubblewrap: false, landlock_abi: 7, seccomp: true };
    const NOTHING: Available = Available { bubblewrap: false, landlock_abi: 0, seccomp: true };

    #[test]
    fn only_a_working_bubblewrap_should_be_remembered_and_only_for_the_same_machine() {
        let directory = tempfile::tempdir().unwrap();
        let record = directory.path().join("state/bubblewrap-works");
        let probes = std::cell::Cell::new(0);
        let probe = |answer: bool| {
            let probes = &probes;
            move || {
                probes.set(probes.get() + 1);
                answer
            }
        };
        let here = Some("bwrap 1 2 3\nboot a\n".to_string());
        assert!(remembered_or_probed(&record, here.clone(), probe(true)));
        assert!(remembered_or_probed(&record, here.clone(), probe(false)), "remembered: not probed again");
        assert_eq!(probes.get(), 1);
        // Another bwrap, boot or kernel setting is another machine.
        let upgraded = Some("bwrap 1 9 3\nboot a\n".to_string());
        assert!(!remembered_or_probed(&record, upgraded.clone(), probe(false)));
        assert_eq!(probes.get(), 2);
        assert!(!record.exists(), "a no forgets the yes and is not kept itself");
        assert!(!remembered_or_probed(&record, upgraded, probe(false)));
        assert_eq!(probes.get(), 3, "a no is probed again each time");
        // Without an identity nothing is remembered.
        assert!(remembered_or_probed(&record, None, probe(true)));
        assert!(!record.exists());
        let leftovers: Vec<_> = std::fs::read_dir(record.parent().unwrap()).unwrap().collect();
        assert!(leftovers.is_empty(), "no partial records: {leftovers:?}");
    }

    #[test]
    fn auto_should_prefer_bubblewrap_then_landlock() {
        assert_eq!(EVERYTHING.choose(Requested::Auto).expect("works"), Mechanism::Bubblewrap);
        assert_eq!(LANDLOCK_ONLY.choose(Requested::Auto).expect("works"), Mechanism::Landlock);
    }

    #[test]
    fn no_mechanism_should_refuse_unless_the_profile_says_none() {
        let error = NOTHING.choose(Requested::Auto).expect_err("refused");
        assert!(error.to_string().contains("isolation = \"none\""), "{error}");
        assert!(error.to_string().contains("bubblewrap is"), "{error}");
        assert_eq!(NOTHING.choose(Requested::Exactly(Mechanism::Unconfined)).expect("asked"), Mechanism::Unconfined);
    }

    #[test]
    fn an_explicit_mechanism_should_never_fall_back() {
        let error = LANDLOCK_ONLY.choose(Requested::Exactly(Mechanism::Bubblewrap)).expect_err("refused");
        assert!(error.to_string().contains("bubblewrap isolation"), "{error}");
    }

    #[test]
    fn the_setting_should_name_its_values_when_wrong() {
        let error = Requested::from_setting(Some("strong")).expect_err("refused");
        assert!(error.to_string().contains("\"landlock\""), "{error}");
        assert_eq!(Requested::from_setting(None).expect("auto"), Requested::Auto);
    }
}
