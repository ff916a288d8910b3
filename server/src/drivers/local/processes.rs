//! Keeping a session's processes tied to it: a pids cgroup where sandlink may make one (it bounds fork bombs and
//! lists every process, however it daemonised), and otherwise the agent's own descendants, found through `/proc`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many rounds of "find what is left, kill it" a clean-up makes; each round catches what forked meanwhile.
const KILL_ROUNDS: usize = 100;
/// The pause between rounds grows from the first to the last: a killed process is usually gone within a fraction of
/// a millisecond, and a one-shot `sandlink run` waits for this clean-up before it exits.
const FIRST_ROUND_PAUSE: Duration = Duration::from_micros(200);
const ROUND_PAUSE: Duration = Duration::from_millis(5);

/// The leaf of a session's cgroup that holds its agent and every ordinary run.
const SESSION_LEAF: &str = "session";
/// The prefix of the leaf each detached run's agent gets, beside the session's leaf.
const DETACHED_LEAF_PREFIX: &str = "run-";
/// The prefix of every session's cgroup, beside which the sessions of other sandlink servers may be.
const SESSION_CGROUP_PREFIX: &str = "sandlink-";
/// A session's cgroup with no process in it, last changed longer ago than this, is taken as abandoned: its server
/// was killed (the agents ended with it, the directories stayed) or its state directory was removed. A live session
/// always has its agent in it; a kept one that is re-attached later makes its cgroup again.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// A session's pids cgroup (v2 when its pids controller is there, else the v1 pids hierarchy). The limit is set on
/// the session's cgroup and binds everything below it: the `session` leaf (the agent, its runs) and one leaf per
/// detached run (`run-<id>`), which lives on when the session's agent stops, yet stays within the same budget.
#[derive(Debug, Clone)]
pub struct SessionCgroup {
    path: PathBuf,
    /// The limit set on it, kept to set again should the cgroup have to be made again (`detached_leaf`).
    max_processes: u64,
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
        remove_abandoned(&parent, ABANDONED_AFTER);
        let cgroup = SessionCgroup { path: parent.join(format!("{SESSION_CGROUP_PREFIX}{session_id}")), max_processes };
        if let Err(error) = cgroup.make() {
            tracing::debug!(%error, "no pids cgroup for the session");
            return None;
        }
        Some(cgroup)
    }

    /// Makes the session's cgroup (or takes it as it is), sets its limit and makes the agent's leaf; on failure
    /// nothing of it is left.
    fn make(&self) -> std::io::Result<()> {
        create_leaf(&self.path)?;
        let made = std::fs::write(self.path.join("pids.max"), self.max_processes.to_string())
            .and_then(|()| create_leaf(&self.session_leaf()));
        if made.is_err() {
            let _ = std::fs::remove_dir(&self.path);
        }
        made
    }

    /// The leaf the session's agent joins (and its runs with it).
    pub fn session_leaf(&self) -> PathBuf {
        self.path.join(SESSION_LEAF)
    }

    /// A leaf of its own for a detached run's agent, under the session's limit; leaves of runs that ended are
    /// removed first. `None` when it cannot be made (then the run has only RLIMIT_NPROC, as without a cgroup).
    pub fn detached_leaf(&self, run_id: &str) -> Option<PathBuf> {
        // Another server's sweep (`remove_abandoned`) takes a session's cgroup that stayed empty for long, which a
        // live session's is when its agent has died; a detached run then makes it again, limit and all.
        if !self.path.exists() {
            if let Err(error) = self.make() {
                tracing::warn!(%error, "could not make the session's cgroup again");
            }
        }
        self.remove_empty_detached_leaves();
        let leaf = self.path.join(format!("{DETACHED_LEAF_PREFIX}{run_id}"));
        match create_leaf(&leaf) {
            Ok(()) => Some(leaf),
            Err(error) => {
                tracing::warn!(%error, "no cgroup for a detached run; only RLIMIT_NPROC bounds its processes");
                None
            }
        }
    }

    /// Kills the session's agent and its runs (the `session` leaf) and tidies up; detached runs go on in their
    /// leaves, and the session's cgroup stays while any of them lives.
    pub fn kill_session(&self) {
        let leaf = self.session_leaf();
        kill_members(&leaf);
        let _ = std::fs::remove_dir(&leaf);
        self.remove_empty_detached_leaves();
        let _ = std::fs::remove_dir(&self.path);
    }

    /// Kills every process of the session, detached runs included, then removes the cgroup (the session is gone).
    pub fn kill_all_and_remove(&self) {
        // v2 kills the whole subtree at once; v1 (and older v2) is walked leaf by leaf.
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            let _ = std::fs::write(&kill_file, "1");
        }
        for leaf in self.leaves() {
            kill_members(&leaf);
            let _ = std::fs::remove_dir(&leaf);
        }
        // A session made by an earlier build kept its processes in the session's cgroup itself.
        kill_members(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }

    fn leaves(&self) -> Vec<PathBuf> {
        leaves_of(&self.path)
    }

    /// Removes the leaves of detached runs that ended (the kernel refuses to remove one that still has members).
    fn remove_empty_detached_leaves(&self) {
        for leaf in self.leaves() {
            let detached = leaf.file_name().is_some_and(|name| name.to_string_lossy().starts_with(DETACHED_LEAF_PREFIX));
            if detached && members(&leaf).is_empty() {
                let _ = std::fs::remove_dir(&leaf);
            }
        }
    }
}

/// Removes the session cgroups under `parent` that no process is in and that nothing changed for `older_than` (see
/// `ABANDONED_AFTER`), so killed servers do not leave them behind for good. The kernel refuses to remove a cgroup
/// with a member, so one that a process joins meanwhile stays.
fn remove_abandoned(parent: &Path, older_than: Duration) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    // The name first: the hierarchy's own files outnumber the sessions, and only a session's cgroup is looked at.
    for entry in entries.flatten().filter(|entry| entry.file_name().to_string_lossy().starts_with(SESSION_CGROUP_PREFIX)) {
        let Ok(metadata) = entry.metadata() else { continue };
        let old_enough = metadata.modified().ok().and_then(|changed| changed.elapsed().ok()).is_some_and(|age| age >= older_than);
        if !(metadata.is_dir() && old_enough) {
            continue;
        }
        let cgroup = entry.path();
        let leaves = leaves_of(&cgroup);
        if leaves.iter().chain([&cgroup]).all(|part| members(part).is_empty()) {
            for leaf in &leaves {
                let _ = std::fs::remove_dir(leaf);
            }
            match std::fs::remove_dir(&cgroup) {
                Ok(()) => tracing::debug!(cgroup = %cgroup.display(), "removed an abandoned session cgroup"),
                Err(error) => tracing::debug!(%error, cgroup = %cgroup.display(), "kept a session cgroup"),
            }
        }
    }
}

/// The cgroups directly below `cgroup`.
fn leaves_of(cgroup: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cgroup) else { return Vec::new() };
    entries.flatten().filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir())).map(|entry| entry.path()).collect()
}

/// Makes a cgroup directory; one that is already there (a kept session re-attached) is fine.
fn create_leaf(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => Err(error),
        _ => Ok(()),
    }
}

/// Kills every process in a cgroup, repeating until it is empty.
fn kill_members(cgroup: &Path) {
    kill_until_none_left(|| members(cgroup));
}

/// Kills what `find` lists, round after round until it lists nothing: each round catches what forked meanwhile.
fn kill_until_none_left(find: impl Fn() -> Vec<libc::pid_t>) {
    let mut pause = FIRST_ROUND_PAUSE;
    for _ in 0..KILL_ROUNDS {
        let found = find();
        if found.is_empty() {
            return;
        }
        for pid in found {
            // SAFETY: kill(2) on a process id just read from the cgroup or /proc; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(ROUND_PAUSE);
    }
}

/// The processes in one cgroup (not its children).
fn members(cgroup: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|line| line.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The file through which a single-threaded process joins the cgroup `leaf` by writing `0` into it, when there is a
/// cheaper one than `cgroup.procs`: cgroup v1's `tasks`. A write there moves only the writing thread, so the kernel
/// skips the lock on every thread group, whose taking waits for an RCU grace period (5–11 ms here, against 0.3 ms).
/// A forked child before exec has one thread, so it joins whole. cgroup v2 has no such file for a process.
pub fn own_thread_join_file(leaf: &Path) -> Option<PathBuf> {
    let tasks = leaf.join("tasks");
    tasks.exists().then_some(tasks)
}

/// Moves the process `root` and every process below it into the cgroup `leaf`, round after round until a reading
/// of the cgroup lists them all (each round catches what forked meanwhile). For a tree that runs only sandlink's own
/// code while this happens (bubblewrap and the agent before its first request), so nothing can fork faster than it
/// is moved. Fails when `root` is gone or a move is refused.
pub fn move_tree_into(leaf: &Path, root: libc::pid_t) -> std::io::Result<()> {
    let procs = leaf.join("cgroup.procs");
    // Processes that ended (zombies not yet reaped among them) cannot be moved, and cannot fork either.
    let mut ended = HashSet::new();
    for _ in 0..KILL_ROUNDS {
        let joined: HashSet<libc::pid_t> = members(leaf).into_iter().collect();
        let mut tree = descendants_of(root);
        tree.push(root);
        let outside: Vec<libc::pid_t> = tree.into_iter().filter(|pid| !joined.contains(pid) && !ended.contains(pid)).collect();
        if outside.is_empty() {
            return Ok(());
        }
        for pid in outside {
            // One write per process: the kernel takes one id per write to cgroup.procs.
            match std::fs::write(&procs, format!("{pid}\n")) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) && pid != root => {
                    ended.insert(pid);
                }
                Err(error) => return Err(error),
            }
        }
    }
    Err(std::io::Error::other("processes kept appearing outside the session's cgroup"))
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
    kill_until_none_left(|| descendants_of(ancestor));
}

/// A process's state letter and parent, from `/proc/PID/stat`.
fn state_and_parent(proc_entry: &Path) -> Option<(char, libc::pid_t)> {
    let stat = std::fs::read_to_string(proc_entry.join("stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The parent of process `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    state_and_parent(&Path::new("/proc").join(pid.to_string())).map(|(_, parent)| parent)
}

/// Every process below `ancestor` in the process tree, read from `/proc/*/stat`.
pub fn descendants_of(ancestor: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<libc::pid_t>().ok()) else { continue };
        let Some((state, parent)) = state_and_parent(&entry.path()) else { continue };
        if state == 'Z' {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A process tree started outside a cgroup (a shell with two children) is moved in whole; cgroup v2 sessions
    /// depend on it (their agent joins after it started), and it runs here on whichever version the machine has.
    #[test]
    fn moving_a_tree_into_a_leaf_should_move_every_process_of_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs the unit tests as root, where cgroups can be made");
            return;
        }
        let session = format!("unit-move-{}", std::process::id());
        let cgroup = SessionCgroup::create(&session, 64).expect("a pids cgroup (root, pids controller)");
        let leaf = cgroup.session_leaf();
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut first = [0u8; 8];
        std::io::Read::read_exact(shell.stdout.as_mut().expect("stdout"), &mut first).expect("the children started");
        let root = shell.id() as libc::pid_t;
        let tree: HashSet<libc::pid_t> = descendants_of(root).into_iter().chain([root]).collect();
        assert_eq!(tree.len(), 3, "the shell and its two children: {tree:?}");
        assert!(members(&leaf).is_empty(), "the leaf starts empty");
        move_tree_into(&leaf, root).expect("move the tree");
        let joined: HashSet<libc::pid_t> = members(&leaf).into_iter().collect();
        assert!(tree.is_subset(&joined), "every process of the tree is a member: {tree:?} against {joined:?}");
        cgroup.kill_all_and_remove();
        let _ = shell.wait();
        let alive = |pid: &libc::pid_t| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rfind(')').is_some_and(|end| !stat[end + 1..].trim_start().starts_with('Z'))
        };
        assert!(!tree.iter().any(alive), "the cgroup's kill ended every process of the tree");
        assert!(!leaf.exists(), "the cgroup was removed");
    }

    /// A killed server leaves its sessions' cgroups behind, empty; the next session made beside them removes them,
    /// and never one a process is still in.
    #[test]
    fn abandoned_session_cgroups_should_be_removed_and_live_ones_kept() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs the unit tests as root, where cgroups can be made");
            return;
        }
        // A hierarchy of the test's own, so no other test's session (empty while it starts) is swept.
        let parent = pids_hierarchy().expect("a pids hierarchy").join(format!("unit-sweep-{}", std::process::id()));
        let session = |name: &str| {
            let cgroup = SessionCgroup { path: parent.join(name), max_processes: 64 };
            for part in [parent.clone(), cgroup.path.clone(), cgroup.session_leaf()] {
                create_leaf(&part).expect("a cgroup");
            }
            cgroup
        };
        let abandoned = session("sandlink-abandoned");
        // cgroup v2 gives children a `pids.max` only with the controller enabled below (v1 has no such file).
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids");
        let detached = abandoned.detached_leaf("1").expect("a detached run's leaf");
        let live = session("sandlink-live");
        let not_a_session = session("another-tool");
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        std::fs::write(live.session_leaf().join("cgroup.procs"), sleeper.id().to_string()).expect("join the live session");
        remove_abandoned(&parent, Duration::from_secs(3600));
        assert!(detached.exists(), "a cgroup changed lately is not taken for abandoned");
        remove_abandoned(&parent, Duration::ZERO);
        assert!(!abandoned.path.exists(), "the empty session cgroup and its leaves are removed");
        assert!(live.session_leaf().exists(), "a session cgroup with a process in it stays");
        assert!(not_a_session.session_leaf().exists(), "only sandlink's cgroups are looked at");
        // A live session whose cgroup was swept (its agent had died) gets it back, limit and all, for a detached run.
        let again = abandoned.detached_leaf("2").expect("the swept cgroup made again");
        assert!(again.exists());
        let limit = std::fs::read_to_string(abandoned.path.join("pids.max")).expect("the limit");
        assert_eq!(limit.trim(), "64", "the limit is set again");
        abandoned.kill_all_and_remove();
        live.kill_all_and_remove();
        not_a_session.kill_all_and_remove();
        let _ = sleeper.wait();
        let _ = std::fs::remove_dir(&parent);
        assert!(!live.path.exists());
    }
}
