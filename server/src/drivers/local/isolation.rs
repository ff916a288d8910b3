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
        let bubblewrap = std::env::var_os("SANDLINK_LOCAL_NO_BWRAP").is_none() && bubblewrap_works();
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

/// Whether bubblewrap can build the sandbox the local driver needs here (user namespaces may be forbidden).
fn bubblewrap_works() -> bool {
    std::process::Command::new("bwrap")
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
