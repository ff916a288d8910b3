//! The file-system watcher: notices changes made outside the editor (git checkout, generators), debounced so a
//! burst becomes one batch. Only directories that sync are watched; when the OS watch limit is reached it falls
//! back to periodic rescans and says so, never failing the session.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use super::rules::{is_ignore_file, Rules};

/// Told which relative paths changed (`full`: rescan everything, e.g. after an ignore file changed).
pub type OnChange = Arc<dyn Fn(Vec<String>, bool) + Send + Sync>;
/// Told the watching mode (`watching`, `polling`) and, on a fallback, why.
pub type OnMode = Arc<dyn Fn(&'static str, Option<String>) + Send + Sync>;

/// Quiet time after the last event before a batch is handed over.
const DEBOUNCE: Duration = Duration::from_millis(60);
/// Longest a continuous stream of events is held back.
const MAX_HOLD: Duration = Duration::from_millis(600);

/// A running watcher (or poller); stops when told or dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Watcher {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts watching the workspace of `rules` on a thread of its own, `delay` from now unless stopped before. The
/// watcher's first act is a full rescan, so nothing that changed meanwhile is missed.
pub fn start(
    rules: Arc<Rules>,
    delay: Duration,
    force_poll: bool,
    poll_interval: Duration,
    on_change: OnChange,
    on_mode: OnMode,
) -> Watcher {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let spawned = std::thread::Builder::new().name("sandlink-watch".into()).spawn(move || {
        if !wait_unless_stopped(&thread_stop, delay) {
            return;
        }
        if force_poll {
            on_mode("polling", None);
            poll(&thread_stop, poll_interval, &on_change);
            return;
        }
        match watch(&rules, &thread_stop, &on_change, &on_mode) {
            Ok(()) => {}
            Err(reason) => {
                on_mode("polling", Some(reason));
                poll(&thread_stop, poll_interval, &on_change);
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the file watcher thread; changes outside the editor sync on runs");
    }
    Watcher { stop }
}

/// Sleeps for `delay` in short slices; answers false as soon as `stop` is set.
fn wait_unless_stopped(stop: &AtomicBool, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

fn poll(stop: &AtomicBool, interval: Duration, on_change: &OnChange) {
    while wait_unless_stopped(stop, interval) {
        on_change(Vec::new(), true);
    }
}

/// Watches until stopped; answers why when the OS cannot watch (limit reached), so the caller can poll.
fn watch(rules: &Arc<Rules>, stop: &AtomicBool, on_change: &OnChange, on_mode: &OnMode) -> Result<(), String> {
    let (sender, receiver) = channel::<notify::Result<notify::Event>>();
    let mut watcher = RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| {
            if event.as_ref().is_ok_and(|event| !changes_content(&event.kind)) {
                return;
            }
            let _ = sender.send(event);
        },
        watch_config(),
    )
    .map_err(describe)?;
    let workspace = rules.workspace().to_path_buf();
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    add_tree(&mut watcher, rules, &workspace, &mut watched)?;
    on_mode("watching", None);
    // Changes made while the watches were being set up are caught by one rescan.
    on_change(Vec::new(), true);
    run_events(&mut watcher, rules, &workspace, &receiver, stop, on_change, &mut watched)
}

fn run_events(
    watcher: &mut RecommendedWatcher,
    rules: &Arc<Rules>,
    workspace: &Path,
    receiver: &Receiver<notify::Result<notify::Event>>,
    stop: &AtomicBool,
    on_change: &OnChange,
    watched: &mut BTreeSet<PathBuf>,
) -> Result<(), String> {
    let mut batch: BTreeSet<String> = BTreeSet::new();
    let mut full = false;
    let mut first_event: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match receiver.recv_timeout(DEBOUNCE) {
            Ok(Ok(event)) => {
                first_event.get_or_insert_with(Instant::now);
                // The paths this event takes away: a directory made again there is another directory to the OS,
                // whose watch must be set again (the kernel dropped the old one with the directory).
                let gone = match event.kind {
                    notify::EventKind::Remove(_) | notify::EventKind::Modify(ModifyKind::Name(RenameMode::From)) => event.paths.len(),
                    notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => 1,
                    _ => 0,
                };
                for path in &event.paths[..gone.min(event.paths.len())] {
                    forget_tree(watched, path);
                }
                for path in event.paths {
                    let Ok(relative) = path.strip_prefix(workspace) else { continue };
                    let Some(relative) = relative.to_str().map(str::to_string) else { continue };
                    if relative.is_empty() {
                        continue;
                    }
                    let name = relative.rsplit('/').next().unwrap_or(&relative);
                    if is_ignore_file(name) {
                        rules.invalidate();
                        full = true;
                        continue;
                    }
                    let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.is_dir());
                    if rules.is_excluded(&relative, is_dir) {
                        continue;
                    }
                    if is_dir && !watched.contains(&path) {
                        add_tree(watcher, rules, &path, watched)?;
                    }
                    batch.insert(relative);
                }
            }
            Ok(Err(error)) => {
                if matches!(error.kind, notify::ErrorKind::MaxFilesWatch) {
                    return Err(describe(error));
                }
                // An overflowed event queue loses events: rescan everything rather than miss a change.
                tracing::debug!(%error, "file watcher error; rescanning");
                full = true;
                first_event.get_or_insert_with(Instant::now);
            }
            Err(RecvTimeoutError::Timeout) => {
                // Quiet for a while: hand the batch over.
                if first_event.take().is_some() {
                    on_change(std::mem::take(&mut batch).into_iter().collect(), std::mem::take(&mut full));
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if let Some(started) = first_event {
            if started.elapsed() >= MAX_HOLD {
                on_change(std::mem::take(&mut batch).into_iter().collect(), std::mem::take(&mut full));
                first_event = None;
            }
        }
    }
}

/// What the watcher asks the OS for: changes, and the closing of a file written. Opening and reading are not asked
/// for at all: every directory a scan opens and every file a sync hashes would be an event (inotify's `IN_OPEN`),
/// each one a wake-up of the watching thread from inside the scan's own `openat`, and so would every open by
/// `git status`, a build or the editor. Asked for, they took a fifth of an unchanged sync's CPU.
fn watch_config() -> notify::Config {
    notify::Config::default().with_event_kinds(notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE)
}

/// Whether an event can mean a change. Opening and reading are not: sync itself opens directories and files as it
/// scans and hashes, and treating those as changes made every sync trigger the next, forever.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Forgets the watches of `gone` and of every directory that was below it.
fn forget_tree(watched: &mut BTreeSet<PathBuf>, gone: &Path) {
    let below: Vec<PathBuf> = watched.range(gone.to_path_buf()..).take_while(|path| path.starts_with(gone)).cloned().collect();
    for path in below {
        watched.remove(&path);
    }
}

/// Watches `start` and every directory below it that syncs (ignored trees such as node_modules cost no watches).
fn add_tree(
    watcher: &mut RecommendedWatcher,
    rules: &Arc<Rules>,
    start: &Path,
    watched: &mut BTreeSet<PathBuf>,
) -> Result<(), String> {
    let mut walker = rules.walker(start);
    let filter_rules = rules.clone();
    // `filter_entry` replaces the rules' own filter, so `.git` and configured excludes are checked here again.
    walker.filter_entry(move |entry| {
        if !entry.file_type().is_some_and(|kind| kind.is_dir()) {
            return false;
        }
        match entry.path().strip_prefix(filter_rules.workspace()) {
            Ok(relative) if !relative.as_os_str().is_empty() => !filter_rules.is_excluded(&relative.to_string_lossy(), true),
            _ => true,
        }
    });
    for entry in walker.build().flatten() {
        let path = entry.path().to_path_buf();
        if watched.contains(&path) {
            continue;
        }
        match watcher.watch(&path, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(path);
            }
            Err(error) if is_limit(&error) => return Err(describe(error)),
            Err(error) => tracing::debug!(path = %path.display(), %error, "could not watch a directory"),
        }
    }
    Ok(())
}

fn is_limit(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        // inotify reports an exhausted watch limit as ENOSPC.
        notify::ErrorKind::Io(io) => io.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
}

fn describe(error: notify::Error) -> String {
    format!(
        "the file watch limit is exhausted ({error}); sandlink rescans periodically instead. Raise \
         fs.inotify.max_user_watches to watch again."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed and made again is a new directory to the OS: what is written in it must still be seen.
    #[test]
    fn a_directory_made_again_should_be_watched_again() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("d/inner")).expect("mkdir");
        let rules = Arc::new(Rules::new(dir.path(), &Default::default()).expect("rules"));
        let (sender, receiver) = channel::<(Vec<String>, bool)>();
        let sender = std::sync::Mutex::new(sender);
        let on_change: OnChange = Arc::new(move |paths, full| {
            let _ = sender.lock().expect("the sender").send((paths, full));
        });
        let (mode_sender, modes) = channel::<&'static str>();
        let mode_sender = std::sync::Mutex::new(mode_sender);
        let on_mode: OnMode = Arc::new(move |mode, _| {
            let _ = mode_sender.lock().expect("the sender").send(mode);
        });
        let _watcher = start(rules, Duration::ZERO, false, Duration::from_secs(60), on_change, on_mode);
        assert_eq!(modes.recv_timeout(Duration::from_secs(10)).expect("a mode"), "watching");
        let wait_for = |wanted: &str| {
            let until = Instant::now() + Duration::from_secs(10);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match receiver.recv_timeout(left) {
                    Ok((paths, _)) if paths.iter().any(|path| path == wanted) => return,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            panic!("{wanted} was never reported");
        };
        std::fs::write(dir.path().join("d/inner/first.txt"), "one").expect("write");
        wait_for("d/inner/first.txt");
        // At once, as `git checkout` would: the watcher sees the removal only after the directory is back.
        std::fs::remove_dir_all(dir.path().join("d")).expect("rm");
        std::fs::create_dir_all(dir.path().join("d/inner")).expect("mkdir");
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.path().join("d/inner/second.txt"), "two").expect("write");
        wait_for("d/inner/second.txt");
    }

    /// The OS itself must not report reads: the events are taken as they come, without `changes_content`.
    #[test]
    fn reading_the_tree_should_not_reach_the_watcher_and_writing_should() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("read.txt"), "content").expect("write");
        let (sender, receiver) = channel();
        let mut watcher = RecommendedWatcher::new(
            move |event: notify::Result<notify::Event>| {
                let _ = sender.send(event);
            },
            watch_config(),
        )
        .expect("a watcher");
        for watched in [dir.path(), sub.as_path()] {
            watcher.watch(watched, RecursiveMode::NonRecursive).expect("a watch");
        }
        // What a scan and a hash do: open and read the directories and the file.
        for _ in 0..3 {
            assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
            assert_eq!(std::fs::read_dir(&sub).expect("list").count(), 1);
            assert_eq!(std::fs::read(sub.join("read.txt")).expect("read"), b"content");
        }
        if let Ok(event) = receiver.recv_timeout(Duration::from_millis(300)) {
            panic!("reading reached the watcher: {event:?}");
        }
        std::fs::write(sub.join("written.txt"), "new").expect("write");
        let event = receiver.recv_timeout(Duration::from_secs(5)).expect("the write is reported").expect("an event");
        assert!(event.paths.iter().any(|path| path.ends_with("sub/written.txt")), "{event:?}");
    }
}
