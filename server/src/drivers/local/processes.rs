//! Keeping a session's processes tied to it: a pids cgroup where sandlink may make one (it bounds fork bombs and
//! lists every process, however it daemonised), and otherwise the agent's own descendants, found through `/proc`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many rounds of "find what is left, kill it" a clean-up makes; each round catches what forked meanwhile.
const KILL_ROUNDS: usize = 100;
const ROUND_PAUSE: Duration = Duration::from_millis(5);

/// A session's pids cgroup (v2 when its pids controller is there, else the v1 pids hierarchy).
#[derive(Debug, Clone)]
pub struct SessionCgroup {
    path: PathBuf,
}

impl SessionCgroup {
    /// Creates the session's cgroup with a process limit; `None` where this process may not (not root, no
    /// pids controller), which the caller reports and makes up for with RLIMIT_NPROC and the agent's clean-up.
    pub fn create(session_id: &str, max_processes: u64) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let parent = pids_hierarchy()?;
        let path = parent.join(format!("sandlink-{session_id}"));
        if let Err(error) = std::fs::create_dir(&path) {
            if error.kind() != std::io::ErrorKind::AlreadyExists {
                tracing::debug!(%error, "no pids cgroup for the session");
                return None;
            }
        }
        if let Err(error) = std::fs::write(path.join("pids.max"), max_processes.to_string()) {
            tracing::debug!(%error, "could not limit the session's processes");
            let _ = std::fs::remove_dir(&path);
            return None;
        }
        Some(SessionCgroup { path })
    }

    /// The file a process writes `0` to, to join the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kills every process in the cgroup, repeating until it is empty, then removes it.
    pub fn kill_all_and_remove(&self) {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            let _ = std::fs::write(&kill_file, "1");
        }
        for _ in 0..KILL_ROUNDS {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            for pid in members {
                // SAFETY: kill(2) on a process id read from the cgroup; no memory is touched.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(ROUND_PAUSE);
        }
        let _ = std::fs::remove_dir(&self.path);
    }

    fn members(&self) -> Vec<libc::pid_t> {
        std::fs::read_to_string(self.procs_file())
            .map(|text| text.lines().filter_map(|line| line.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Where a new pids cgroup can go: beside this process's own, in whichever hierarchy has the pids controller.
fn pids_hierarchy() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2, mounted at /sys/fs/cgroup, with the pids controller available.
    let unified_root = Path::new("/sys/fs/cgroup");
    if std::fs::read_to_string(unified_root.join("cgroup.controllers")).is_ok_and(|list| list.split_whitespace().any(|c| c == "pids")) {
        let relative = own.lines().find_map(|line| line.strip_prefix("0::"))?;
        let parent = unified_root.join(relative.trim_start_matches('/'));
        // v2 puts processes only in leaves: the session cgroup is a child of ours, with pids enabled for children.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids");
        return Some(parent);
    }
    // cgroup v1's pids hierarchy.
    let v1_root = Path::new("/sys/fs/cgroup/pids");
    if v1_root.join("cgroup.procs").exists() {
        let relative = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == "pids").then_some(path)
        })?;
        return Some(v1_root.join(relative.trim_start_matches('/')));
    }
    None
}

/// Kills every descendant of `ancestor` (not `ancestor` itself), repeating until none is left. Orphans of a
/// subreaper are re-parented to it, so once the agent is a subreaper this finds every process a run started.
pub fn kill_descendants(ancestor: libc::pid_t) {
    for _ in 0..KILL_ROUNDS {
        let descendants = descendants_of(ancestor);
        if descendants.is_empty() {
            return;
        }
        for pid in descendants {
            // SAFETY: kill(2) on a process id read from /proc; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// Every process below `ancestor` in the process tree, read from `/proc/*/stat`.
pub fn descendants_of(ancestor: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name is in parentheses and may hold spaces or parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|end| &stat[end + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let Some(parent) = fields.next().and_then(|field| field.parse::<libc::pid_t>().ok()) else { continue };
        if state == Some("Z") {
            // A zombie is already dead; its parent reaps it.
            continue;
        }
        children.entry(parent).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![ancestor];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(child) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}
