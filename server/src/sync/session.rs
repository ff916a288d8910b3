//! One session's sync: the manifest, the triggers (saves, the watcher, explicit requests, runs) and the
//! state reported to clients. Syncs of a session never overlap: they take turns on one async lock.

use crate::locks::lock;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::manifest::{hash_file, now_ns, save_atomically, Manifest, Record, RemoteStamp};
use super::options::{SyncOptions, WatchMode};
use super::plan::{compress_deletions, diff_local, diff_remote, Listing, RemoteChange};
use super::rules::Rules;
use super::scan::{LocalEntry, Scan, Scanner};
use super::secrets::SecretFilter;
use super::beneath::Beneath;
use super::resolve::{self, Node, OnDisk, Overlay, Resolution};
use super::transfer::{self, Staged};
use super::watch::{self, Watcher};
use super::{EntryKind, RemoteFiles, PERMISSION_BITS};
use crate::progress::Progress;
use crate::error::{Error, Result};
use crate::protocol::{Conflict, HeldBackFile, SkippedPath, SyncDirection, SyncResult, SyncState};

/// Files per upload archive: many small files travel together, yet each batch is confirmed (and recorded) soon.
/// `SANDLINK_SYNC_BATCH_FILES` sets another count (see `batch_files`).
const BATCH_FILES: usize = 8_000;
/// Content bytes per upload archive.
const BATCH_BYTES: u64 = 256 << 20;
/// How many times the worker lets the runtime run other tasks before a sync of saves starts: the rest of a burst
/// (save all) is already read and queued behind the first save, so it joins the same batch without the
/// millisecond or more a timer costs (saves that come while a sync runs wait for it and go together next).
const SAVE_COALESCE_YIELDS: usize = 8;
/// Up to this many paths, an upload checks the sandbox's copies per path (`RemoteFiles::stat`); beyond, one listing.
const STAT_PATHS: usize = 256;
/// How often a changed manifest is written after automatic syncs.
const PERSIST_DELAY: Duration = Duration::from_secs(2);

/// Files per upload archive: `BATCH_FILES`, unless `SANDLINK_SYNC_BATCH_FILES` sets another (positive) count. The
/// tests of cancellation (tests/rust/jobs.rs) make batches small so a sync has many points where it can stop;
/// nothing else should set it.
fn batch_files() -> usize {
    static FILES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *FILES.get_or_init(|| {
        std::env::var("SANDLINK_SYNC_BATCH_FILES")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|files| *files > 0)
            .unwrap_or(BATCH_FILES)
    })
}

/// The error of a sync that stopped because it was cancelled, between two steps that each left both sides agreed.
fn cancelled(done: &str) -> Error {
    Error::Cancelled(format!(
        "The sync was cancelled {done}; what was transferred is recorded, nothing is half-written, and the next sync \
         carries the rest."
    ))
}

/// Told whenever the sync state changes (the engine forwards it to clients as `sandlink/syncState`).
#[async_trait]
pub trait StateObserver: Send + Sync {
    async fn changed(&self, state: SyncState);
}

/// What the next automatic sync must look at.
#[derive(Default)]
struct Pending {
    paths: BTreeSet<String>,
    full: bool,
}

/// What only one sync at a time may touch.
struct Core {
    manifest: Manifest,
    /// Paths changed on both sides; automatic syncs leave them alone until the user decides.
    conflicts: BTreeMap<String, Conflict>,
    logged_secrets: HashSet<String>,
    /// Whether both sides have a common base: a manifest with entries was loaded, or a sync completed. Only without
    /// one does the workspace win unchecked; an emptied manifest (everything deleted) is still a base.
    has_base: bool,
}

struct Inner {
    workspace: PathBuf,
    /// Where the manifest is saved (`<session dir>/manifest`).
    manifest_path: PathBuf,
    remote: Arc<dyn RemoteFiles>,
    options: SyncOptions,
    scanner: Arc<Scanner>,
    staging: PathBuf,
    // A tokio lock on purpose: a sync awaits the driver while holding it, which is what serialises syncs.
    core: tokio::sync::Mutex<Core>,
    pending: Mutex<Pending>,
    /// The paths the automatic sync in flight was given, so that the same path queued again meanwhile (a save and
    /// then the watcher's event for it) is counted once in `pending`.
    in_flight: Mutex<BTreeSet<String>>,
    wake: Notify,
    persist_wake: Notify,
    state: Mutex<SyncState>,
    /// What notifications last told clients, so a quiet sync still sends what changed since.
    last_sent: Mutex<SyncState>,
    /// Whether a state with work pending was reported (in a notification or any response) since the last sync ended;
    /// then the end of the next sync is always announced, so no client is left showing work that is done.
    pending_reported: AtomicBool,
    observer: Arc<dyn StateObserver>,
    /// Set by the engine for the upload that opens a new session, which nothing in the sandbox can see yet
    /// (`transfer::PlaceSink::fresh`); taken by the next sync, so it serves that one only.
    fresh_sandbox: AtomicBool,
    stopped: AtomicBool,
    watcher: Mutex<Option<Watcher>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A session's sync engine.
#[derive(Clone)]
pub struct SessionSync {
    inner: Arc<Inner>,
}


/// A sandbox listing checked and sorted for comparing (`Listing::checked`), off the async threads.
async fn checked_listing(entries: Vec<crate::sync::RemoteEntry>) -> Result<Listing> {
    tokio::task::spawn_blocking(move || Listing::checked(entries)).await.map_err(join_error("Checking the sandbox listing"))?
}

/// What is known of the files a batch wrote in the sandbox, as its sending answers it.
enum Written {
    /// The driver told their entries as it wrote them.
    Told(Vec<crate::sync::RemoteEntry>),
    /// They were placed straight into a tree on this machine; each with its `fstat` right after.
    Placed(Vec<(String, rustix::fs::Stat)>),
    /// Nothing: the engine asks the driver (`look_after_upload`) where it can tell change times.
    Unknown,
}

impl Written {
    /// The entries, observed at `upload_started_ns` (taken before the batch was sent); `None` for `Unknown`.
    fn into_looked(self, upload_started_ns: i128) -> Option<Looked> {
        let entries = match self {
            Written::Told(entries) => entries,
            Written::Placed(placed) => placed
                .into_iter()
                .filter_map(|(path, stat)| crate::sync::RemoteEntry::written(path, &stat))
                .collect(),
            Written::Unknown => return None,
        };
        Some(Looked::new(entries, upload_started_ns))
    }
}

/// How the files of a batch looked in the sandbox right after it was written, and when that was observed. Kept
/// sorted by path and read in the order the batch is recorded, which is the same order for uploads through a tree
/// on this machine, so finding each file costs a comparison: a map of them cost a copy of every path and entry,
/// which showed in profiles of an initial sync of 50,000 files.
struct Looked {
    entries: Vec<crate::sync::RemoteEntry>,
    observed_ns: i128,
    /// Where the next file asked for most likely is: just after the last one found.
    next: usize,
}

impl Looked {
    fn new(mut entries: Vec<crate::sync::RemoteEntry>, observed_ns: i128) -> Self {
        if !entries.is_sorted_by(|first, second| first.path < second.path) {
            entries.sort_by(|first, second| first.path.cmp(&second.path));
            // A path told twice says two things of one file: neither is trusted, and its content is compared next time.
            let mut sorted = std::mem::take(&mut entries).into_iter().peekable();
            while let Some(entry) = sorted.next() {
                let mut told_twice = false;
                while sorted.peek().is_some_and(|next| next.path == entry.path) {
                    sorted.next();
                    told_twice = true;
                }
                if !told_twice {
                    entries.push(entry);
                }
            }
        }
        Looked { entries, observed_ns, next: 0 }
    }

    /// The entry of `path`, if the look found it.
    fn get(&mut self, path: &str) -> Option<&crate::sync::RemoteEntry> {
        let index = match self.entries.get(self.next) {
            Some(entry) if entry.path == path => self.next,
            _ => self.entries.binary_search_by(|entry| entry.path.as_str().cmp(path)).ok()?,
        };
        self.next = index + 1;
        Some(&self.entries[index])
    }
}

/// How far an upload got, for its progress reports.
struct Tally {
    total_files: usize,
    total_bytes: u64,
    /// Whether the upload is big enough to report progress as it goes.
    long: bool,
    files_done: usize,
    bytes_done: u64,
}

fn join_error(what: &str) -> impl FnOnce(tokio::task::JoinError) -> Error + '_ {
    move |error| Error::Internal(format!("{what} failed: {error}"))
}

impl SessionSync {
    /// Prepares sync for a session; `session_dir` holds the manifest. Reads ignore files, so call it off the runtime.
    pub fn new(
        workspace: PathBuf,
        remote: Arc<dyn RemoteFiles>,
        options: SyncOptions,
        session_dir: &Path,
        observer: Arc<dyn StateObserver>,
    ) -> Result<Self> {
        let rules = Arc::new(Rules::new(&workspace, &options)?);
        let secrets = SecretFilter::with_content(&workspace, &options.allow_secrets, options.scan_content)?;
        let manifest_path = session_dir.join(super::manifest::FILE_NAME);
        let manifest = Manifest::load(manifest_path.clone());
        let state = SyncState {
            watcher: Some(if options.watch == WatchMode::Off { "off" } else { "starting" }.into()),
            ..SyncState::default()
        };
        Ok(SessionSync {
            inner: Arc::new(Inner {
                workspace,
                manifest_path,
                remote,
                options,
                scanner: Arc::new(Scanner { rules, secrets }),
                staging: session_dir.join("download-staging"),
                core: tokio::sync::Mutex::new(Core {
                    has_base: !manifest.entries.is_empty(),
                    manifest,
                    conflicts: BTreeMap::new(),
                    logged_secrets: HashSet::new(),
                }),
                pending: Mutex::default(),
                in_flight: Mutex::default(),
                wake: Notify::new(),
                persist_wake: Notify::new(),
                state: Mutex::new(state),
                last_sent: Mutex::default(),
                pending_reported: AtomicBool::new(false),
                observer,
                fresh_sandbox: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                watcher: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The state as `SessionInfo.sync` reports it.
    /// Lets one held-back file go up from now on, for this session only; the caller then syncs it.
    pub fn allow_secret(&self, relative: &str) {
        self.inner.scanner.secrets.allow_now(relative);
    }

    pub fn state(&self) -> SyncState {
        // The stored `pending` counts files of the sync in flight; queued paths are added on top.
        let mut state = lock(&self.inner.state).clone();
        let pending = lock(&self.inner.pending);
        let in_flight = lock(&self.inner.in_flight);
        let queued = pending.paths.iter().filter(|path| !in_flight.contains(*path)).count();
        state.pending += queued as u64 + u64::from(pending.full);
        if state.pending > 0 {
            self.inner.pending_reported.store(true, Ordering::SeqCst);
        }
        state
    }

    /// Starts automatic sync: the worker that syncs saves and watcher events, and the watcher (or poller), which
    /// begins `watch_delay` later.
    pub fn start_background(&self, watch_delay: std::time::Duration) {
        let worker = {
            let sync = self.clone();
            tokio::spawn(async move { sync.worker().await })
        };
        let persister = {
            let sync = self.clone();
            tokio::spawn(async move { sync.persister().await })
        };
        lock(&self.inner.tasks).extend([worker, persister]);
        if self.inner.options.watch == WatchMode::Off {
            return;
        }
        let forced_poll = self.inner.options.watch == WatchMode::Poll
            || std::env::var("SANDLINK_SYNC_WATCH").is_ok_and(|value| value == "poll");
        let on_change = {
            let sync = self.clone();
            Arc::new(move |paths: Vec<String>, full: bool| sync.enqueue(paths, full)) as watch::OnChange
        };
        let on_mode = {
            let sync = self.clone();
            // The watcher calls back from its own thread, outside the runtime, so it is handed the runtime.
            let runtime = tokio::runtime::Handle::current();
            Arc::new(move |mode: &'static str, reason: Option<String>| sync.watch_mode(&runtime, mode, reason))
                as watch::OnMode
        };
        let watcher = watch::start(
            self.inner.scanner.rules.clone(),
            watch_delay,
            forced_poll,
            self.inner.options.poll_interval(),
            on_change,
            on_mode,
        );
        *lock(&self.inner.watcher) = Some(watcher);
    }

    fn watch_mode(&self, runtime: &tokio::runtime::Handle, mode: &'static str, reason: Option<String>) {
        if let Some(reason) = &reason {
            tracing::warn!(%reason, "file watching is not available; falling back to periodic rescans");
        }
        lock(&self.inner.state).watcher = Some(mode.to_string());
        let sync = self.clone();
        runtime.spawn(async move { sync.tell_clients(true).await });
    }

    /// Sends the current state to clients when `always`, or when it differs from what they were last told in
    /// anything but `lastSyncAt` (which alone is not worth a notification).
    async fn tell_clients(&self, always: bool) {
        let current = self.state();
        {
            let mut last_sent = lock(&self.inner.last_sent);
            let differs = SyncState { last_sync_at: last_sent.last_sync_at.clone(), ..current.clone() } != *last_sent;
            if !always && !differs {
                return;
            }
            *last_sent = current.clone();
        }
        self.inner.observer.changed(current).await;
    }

    /// Stops automatic sync and writes the manifest.
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Some(watcher) = lock(&self.inner.watcher).take() {
            watcher.stop();
        }
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        self.persist().await;
    }

    /// A file was saved in the editor: sync it at once (bursts are coalesced).
    pub fn saved(&self, path: &Path) {
        let Ok(relative) = path.strip_prefix(&self.inner.workspace) else { return };
        let Some(relative) = relative.to_str() else { return };
        self.enqueue(vec![relative.to_string()], false);
    }

    fn enqueue(&self, paths: Vec<String>, full: bool) {
        if self.inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut pending = lock(&self.inner.pending);
            pending.paths.extend(paths);
            pending.full |= full;
        }
        self.inner.wake.notify_one();
    }

    async fn worker(&self) {
        loop {
            self.inner.wake.notified().await;
            for _ in 0..SAVE_COALESCE_YIELDS {
                tokio::task::yield_now().await;
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "automatic sync failed; it is retried on the next change or run");
            }
        }
    }

    async fn persister(&self) {
        loop {
            self.inner.persist_wake.notified().await;
            tokio::time::sleep(PERSIST_DELAY).await;
            self.persist().await;
        }
    }

    async fn persist(&self) {
        let (path, bytes) = {
            let mut core = self.inner.core.lock().await;
            let path = core.manifest.path().to_path_buf();
            (path, core.manifest.snapshot())
        };
        let Some(entries) = bytes else { return };
        let outcome = tokio::task::spawn_blocking(move || save_atomically(&path, &entries)).await;
        if let Ok(Err(error)) | Err(error) = outcome.map_err(join_error("Saving the manifest")) {
            tracing::warn!(%error, "could not save the sync manifest; the next sync compares by content");
        }
    }

    /// Saves the manifest straight from the live map while the sync's lock is still held, where the runtime lets this
    /// thread block: a copy to save outside the lock, and dropping it after, cost as much as the save itself (for
    /// 50,000 entries 5 and 3 ms against 8.6, all on the path of an initial sync's answer). Nothing waits on the lock
    /// at the end of an explicit sync but the next sync, which would wait for the save anyway. No `.await` comes
    /// between taking the manifest's entries and the end of the save, so a sync dropped here cannot lose them.
    /// `false` where the runtime cannot block in place (a single-threaded one): then `persist` does it.
    fn persist_holding(&self, core: &mut Core) -> bool {
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_threaded {
            return false;
        }
        if !core.manifest.is_dirty() {
            return true;
        }
        let saved = tokio::task::block_in_place(|| save_atomically(core.manifest.path(), &core.manifest.entries));
        match saved {
            Ok(()) => core.manifest.mark_saved(),
            Err(error) => tracing::warn!(%error, "could not save the sync manifest; the next sync compares by content"),
        }
        true
    }

    /// Says the sandbox is new and nothing runs in it (a session being opened): the next sync, if it is the first,
    /// may write new files under their own names (`transfer::PlaceSink::fresh`). `false` takes that back.
    pub fn set_sandbox_fresh(&self, fresh: bool) {
        self.inner.fresh_sandbox.store(fresh, Ordering::SeqCst);
    }

    /// Uploads everything pending (saves, watcher events); every run waits for this first.
    pub async fn flush(&self) -> Result<SyncResult> {
        let mut core = self.inner.core.lock().await;
        let (scope, full) = {
            let mut pending = lock(&self.inner.pending);
            let taken = std::mem::take(&mut *pending);
            (taken.paths.into_iter().collect::<Vec<_>>(), taken.full)
        };
        if scope.is_empty() && !full {
            return Ok(SyncResult::default());
        }
        lock(&self.inner.in_flight).extend(scope.iter().cloned());
        let scope = if full { None } else { Some(scope) };
        let outcome = self.run(&mut core, SyncDirection::Up, scope, false, &crate::progress::NoProgress).await;
        lock(&self.inner.in_flight).clear();
        drop(core);
        self.inner.persist_wake.notify_one();
        outcome
    }

    /// An explicit sync (`sandlink/sync`, connect, the CLI). With `paths`, conflicts on those paths are resolved in
    /// the sync's direction (up: the workspace wins; down: the sandbox wins).
    pub async fn sync(
        &self,
        direction: SyncDirection,
        paths: Option<Vec<String>>,
        progress: &dyn Progress,
    ) -> Result<SyncResult> {
        let scope = match paths {
            Some(paths) if !paths.is_empty() => Some(
                paths.iter().map(|path| self.relative(path)).collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let explicit = scope.is_some();
        let mut core = self.inner.core.lock().await;
        if scope.is_none() {
            // A full scan covers everything that was pending.
            *lock(&self.inner.pending) = Pending::default();
        }
        let outcome = self.run(&mut core, direction, scope, explicit, progress).await;
        if !self.persist_holding(&mut core) {
            drop(core);
            self.persist().await;
        }
        outcome
    }

    /// A user-given path (relative, absolute inside the workspace, or a file URI) as a relative path.
    fn relative(&self, path: &str) -> Result<String> {
        let local = if path.starts_with("file:") { crate::paths::path_from_uri_or_path(path)? } else { PathBuf::from(path) };
        let joined = crate::paths::join_inside(&self.inner.workspace, &local.to_string_lossy())?;
        let relative = joined.strip_prefix(&self.inner.workspace).unwrap_or(Path::new(""));
        let relative = relative.to_string_lossy().into_owned();
        if let Some(link) = first_linked_parent(&self.inner.workspace, &relative) {
            return Err(Error::PathOutsideWorkspace(format!(
                "The path \"{path}\" goes through the symlink \"{link}\", so it is not part of the workspace's tree (sync \
                 carries symlinks as links and never follows them); name the path the link points to instead."
            )));
        }
        Ok(relative)
    }

    async fn publish(&self, change: impl FnOnce(&mut SyncState)) {
        change(&mut lock(&self.inner.state));
        self.tell_clients(true).await;
    }

    async fn run(
        &self,
        core: &mut Core,
        direction: SyncDirection,
        scope: Option<Vec<String>>,
        explicit: bool,
        progress: &dyn Progress,
    ) -> Result<SyncResult> {
        let started = Instant::now();
        self.take_back_a_lent_manifest(core);
        // Only the first sync of a new session writes as into a fresh sandbox; its manifest is saved after it ends,
        // so a kill half-way leaves no base and the next sync replaces whatever it left.
        let fresh = self.inner.fresh_sandbox.swap(false, Ordering::SeqCst) && !core.has_base;
        let outcome = self.run_inner(core, direction, scope.clone(), explicit, fresh, progress).await;
        core.has_base |= outcome.is_ok();
        let conflicts: Vec<Conflict> = core.conflicts.values().cloned().collect();
        let now = crate::clock::now_rfc3339();
        {
            let mut state = lock(&self.inner.state);
            if outcome.is_ok() {
                state.last_sync_at = Some(now);
            }
            state.pending = 0;
            state.conflicts = conflicts;
        }
        // Clients hear of a sync that moved something or failed, and of any state that differs from what they last
        // saw (the end of a pending they were shown, new conflicts). One that found nothing to do (most watcher
        // wake-ups) stays quiet.
        let moved = outcome.as_ref().is_ok_and(|result| result.uploaded + result.downloaded + result.deleted > 0);
        let pending_was_reported = self.inner.pending_reported.swap(false, Ordering::SeqCst);
        self.tell_clients(moved || outcome.is_err() || pending_was_reported).await;
        outcome.map(|mut result| {
            result.duration_ms = started.elapsed().as_millis() as u64;
            result
        })
    }

    /// A sync lends the manifest to a blocking thread while it scans and compares, leaving an empty one with no path
    /// in its place. A sync dropped there (a `sandlink/sync` request cancelled with `$/cancelRequest` is dropped
    /// where it awaits) never brings it back: the session would have no base, and no save would ever reach the disk
    /// again. The manifest last saved takes its place, as after a restart of the server; what it lacks is compared
    /// by content.
    fn take_back_a_lent_manifest(&self, core: &mut Core) {
        if core.manifest.path().as_os_str().is_empty() {
            tracing::info!("a sync was stopped while it held the manifest; the last saved manifest is the base again");
            core.manifest = Manifest::load(self.inner.manifest_path.clone());
        }
    }

    async fn run_inner(
        &self,
        core: &mut Core,
        direction: SyncDirection,
        scope: Option<Vec<String>>,
        explicit: bool,
        fresh: bool,
        progress: &dyn Progress,
    ) -> Result<SyncResult> {
        let inner = &self.inner;
        let mut result = SyncResult::default();

        // 1. What changed locally.
        let manifest = std::mem::replace(&mut core.manifest, Manifest::load(PathBuf::new()));
        let manifest_path = manifest.path().to_path_buf();
        let scanner = inner.scanner.clone();
        let workspace = inner.workspace.clone();
        let local_scope = scope.clone();
        let down = direction != SyncDirection::Up;
        // A sync that goes down lists the whole sandbox whatever the workspace holds, so the listing is asked for
        // while the workspace is scanned. Taken before asking: a stamp is only as trustworthy as the earliest
        // moment its listing could describe.
        let listed_ns = now_ns();
        let listing = async {
            match down {
                // Checked and sorted as soon as it comes, most often while the workspace scan is still going.
                true => Some(match inner.remote.list().await {
                    Ok(entries) => checked_listing(entries).await,
                    Err(error) => Err(error),
                }),
                false => None,
            }
        };
        let scanning = tokio::task::spawn_blocking(move || {
            let mut manifest = manifest;
            let started = std::time::Instant::now();
            let scan = scanner.scan(local_scope.as_deref());
            tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "scanned the workspace");
            let scan = match scan {
                Ok(scan) => scan,
                Err(error) => return (manifest, Err(error), Default::default()),
            };
            let diff = diff_local(&mut manifest, &scan, &workspace, local_scope.as_deref());
            (manifest, Ok(scan), diff)
        });
        let (scanned, listing) = tokio::join!(scanning, listing);
        let (manifest, scan, local) = scanned.unwrap_or_else(|error| {
            (Manifest::load(manifest_path), Err(Error::Internal(format!("The workspace scan failed: {error}"))), Default::default())
        });
        core.manifest = manifest;
        let mut scan = scan?;
        self.note_held_back(core, &scan.held_back, &scan, scope.is_none());
        for (path, reason) in &scan.unsyncable {
            result.skipped.push(SkippedPath { path: path.clone(), reason: reason.clone() });
        }

        let mut local_changed = local.changed;
        let mut local_deleted = local.deleted;
        let up = direction != SyncDirection::Down;
        let resolve_up = explicit && direction == SyncDirection::Up;
        let resolve_down = explicit && direction == SyncDirection::Down;

        // 2. What changed in the sandbox, fetched to staging and compared by content. A sync that only goes up still
        //    looks at the sandbox's copy of each path it is about to overwrite or delete: one changed there since the
        //    last sync is a conflict, not something to overwrite. The first sync of a session has no common base,
        //    and there the workspace wins.
        let guarded: Option<Vec<String>> = (up && !down && !resolve_up && core.has_base)
            .then(|| local_changed.iter().chain(local_deleted.iter()).cloned().collect::<Vec<String>>())
            .filter(|paths| !paths.is_empty());
        // Taken before asking: a stamp is only as trustworthy as the earliest moment its listing could describe.
        let observed_ns = if down { listed_ns } else { now_ns() };
        let remote_view = match (&guarded, listing) {
            (_, Some(listing)) => Some((listing?, scope.clone(), true)),
            (None, None) => None,
            (Some(paths), None) => {
                let whole_sandbox = paths.len() > STAT_PATHS;
                match self.remote_state_of(paths.clone()).await? {
                    Some(entries) => Some((checked_listing(entries).await?, Some(paths.clone()), whole_sandbox)),
                    None => None,
                }
            }
        };
        if let Some((listing, scope_for_remote, whole_sandbox)) = remote_view {
            let scanner = inner.scanner.clone();
            let manifest_view = std::mem::replace(&mut core.manifest, Manifest::load(PathBuf::new()));
            let scanned = std::mem::take(&mut scan);
            let (manifest_back, scan_back, changes) = tokio::task::spawn_blocking(move || {
                // The scan's own filter, so files held back for their content leave the sandbox's copy alone too.
                let changes = diff_remote(
                    &manifest_view,
                    listing,
                    &scanned.entries,
                    &scanner.rules,
                    &scanner.secrets,
                    scope_for_remote.as_deref(),
                    whole_sandbox,
                );
                (manifest_view, scanned, changes)
            })
            .await
            .map_err(join_error("Comparing the sandbox listing"))?;
            core.manifest = manifest_back;
            scan = scan_back;
            let super::plan::RemoteDiff { changes, skipped, shared } = changes?;
            // How each possibly changed file looked in this listing: recorded once both sides agree on it. Whether
            // another file shared its size and time is known from a listing of the whole sandbox; from a look at a
            // few paths it is assumed, which only matters (and costs a comparison) where there are no inodes.
            let listed_stamps: BTreeMap<String, RemoteStamp> = changes
                .iter()
                .filter_map(|(path, change)| match change {
                    RemoteChange::Changed(entry) => {
                        let is_shared = match &shared {
                            Some(shared) => shared.contains(&(entry.size, entry.mtime_ns)),
                            None => entry.inode.is_none(),
                        };
                        Some((path.clone(), RemoteStamp::listed(entry, observed_ns, is_shared)))
                    }
                    RemoteChange::Deleted => None,
                })
                .collect();
            if down {
                result.skipped.extend(skipped);
            }
            let to_fetch: Vec<String> = changes
                .iter()
                .filter(|(_, change)| matches!(change, RemoteChange::Changed(_))).map(|(path, _)| path.clone())
                .collect();
            if !to_fetch.is_empty() && down {
                let count = to_fetch.len() as u64;
                self.publish(|state| state.pending = count).await;
            }
            if progress.cancelled() {
                return Err(cancelled("before anything was fetched from the sandbox"));
            }
            let staged = if to_fetch.is_empty() { Vec::new() } else { self.fetch(to_fetch.clone()).await? };
            let mut staged_by_path: BTreeMap<String, Staged> =
                staged.into_iter().map(|staged| (staged.path.clone(), staged)).collect();
            if down {
                for path in to_fetch.iter().filter(|path| !staged_by_path.contains_key(*path)) {
                    result.skipped.push(SkippedPath {
                        path: path.clone(),
                        reason: "the sandbox did not send it (it changed or vanished while it was fetched); the next sync \
                                 tries again"
                            .into(),
                    });
                }
            }
            let mut placements = Vec::new();
            let mut local_deletions = Vec::new();
            for (path, change) in changes {
                let mut local_state = if local_changed.contains(&path) {
                    Side::Changed
                } else if local_deleted.contains(&path) {
                    Side::Deleted
                } else {
                    Side::Same
                };
                if local_state == Side::Changed
                    && !resolve_up
                    && only_metadata_moved(core, &inner.workspace, &path, scan.entries.get(&path))
                {
                    // Touched, or re-created as it was: no change of its own, so the sandbox's change is not a
                    // conflict with it. It is taken on a sync down; a sync up leaves it for the next one (unless the
                    // user asked for the workspace's copy of this path, which then goes up as asked).
                    local_changed.remove(&path);
                    if !down {
                        continue;
                    }
                    local_state = Side::Same;
                }
                match change {
                    RemoteChange::Deleted => match local_state {
                        Side::Same => {
                            if let Some(entry) = scan.entries.get(&path) {
                                local_deletions.push((path, entry.clone()));
                            }
                        }
                        Side::Deleted => {
                            // Gone on both sides: nothing is left to disagree about, so a conflict there is over.
                            core.manifest.remove(&path);
                            core.conflicts.remove(&path);
                            local_deleted.remove(&path);
                        }
                        Side::Changed if resolve_up => {}
                        Side::Changed if resolve_down => {
                            local_changed.remove(&path);
                            if let Some(entry) = scan.entries.get(&path) {
                                local_deletions.push((path, entry.clone()));
                            }
                        }
                        Side::Changed => {
                            local_changed.remove(&path);
                            self.conflict(core, &path, "changed in the workspace and deleted in the sandbox");
                        }
                    },
                    RemoteChange::Changed(_) => {
                        let Some(staged) = staged_by_path.remove(&path) else { continue };
                        let stamp = listed_stamps.get(&path).cloned();
                        let base = core.manifest.entries.get(&path).map(|record| (record.kind, record.hash.clone(), record.mode));
                        if base.as_ref().is_some_and(|(kind, hash, mode)| same_node(*kind, hash, *mode, staged.kind, &staged.hash, staged.mode)) {
                            // Same content and permissions as last synced: only the sandbox's metadata moved.
                            if let Some(record) = core.manifest.entries.get_mut(&path) {
                                std::sync::Arc::make_mut(record).remote = stamp;
                            }
                            core.manifest.mark_dirty();
                            continue;
                        }
                        match local_state {
                            Side::Same => placements.push((staged, scan.entries.get(&path).cloned(), stamp)),
                            Side::Changed => {
                                let local_entry = scan.entries.get(&path);
                                let local_hash = hash_local(&inner.workspace, &path, local_entry);
                                let agreed = match (local_entry, &local_hash) {
                                    (Some(entry), Some(hash)) => same_node(entry.kind, hash, entry.mode, staged.kind, &staged.hash, staged.mode),
                                    _ => false,
                                };
                                if agreed {
                                    local_changed.remove(&path);
                                    if let Some(entry) = local_entry {
                                        core.manifest.insert(path.clone(), Record::new(entry, staged.hash.clone(), stamp));
                                    }
                                    core.conflicts.remove(&path);
                                } else if resolve_down {
                                    local_changed.remove(&path);
                                    placements.push((staged, scan.entries.get(&path).cloned(), stamp));
                                } else if resolve_up {
                                } else {
                                    local_changed.remove(&path);
                                    let reason = if local_hash.as_deref() == Some(staged.hash.as_str()) {
                                        "its permissions changed differently in the workspace and the sandbox"
                                    } else {
                                        "changed in both the workspace and the sandbox"
                                    };
                                    self.conflict(core, &path, reason);
                                }
                            }
                            Side::Deleted if resolve_down => {
                                local_deleted.remove(&path);
                                placements.push((staged, None, stamp));
                            }
                            Side::Deleted if resolve_up => {}
                            Side::Deleted => {
                                local_deleted.remove(&path);
                                self.conflict(core, &path, "deleted in the workspace and changed in the sandbox");
                            }
                        }
                    }
                }
            }
            let known_links: BTreeMap<String, String> = scan
                .entries
                .iter()
                .filter_map(|(path, entry)| entry.link_target.clone().map(|target| (path.clone(), target)))
                .collect();
            let (downloaded, bytes, raced) = self.place(core, placements, local_deletions, known_links, &mut result).await?;
            result.downloaded += downloaded;
            result.bytes += bytes;
            for path in raced {
                self.conflict(core, &path, "changed in the workspace while the sandbox's version was being fetched");
            }
        }

        if !up {
            result.conflicts = core.conflicts.values().cloned().collect();
            return Ok(result);
        }

        // 3. Local changes go up; conflicted paths wait for the user unless this sync resolves them.
        let is_held = |core: &Core, path: &String| core.conflicts.contains_key(path) && !resolve_up;
        let deletions: BTreeSet<String> = local_deleted.into_iter().filter(|path| !is_held(core, path)).collect();
        let uploads: Vec<String> = local_changed.into_iter().filter(|path| !is_held(core, path)).collect();
        if resolve_up {
            for path in deletions.iter().chain(uploads.iter()) {
                core.conflicts.remove(path);
            }
        }
        if (!deletions.is_empty() || !uploads.is_empty()) && progress.cancelled() {
            return Err(cancelled("before anything went to the sandbox"));
        }
        if !deletions.is_empty() || !uploads.is_empty() {
            let count = (deletions.len() + uploads.len()) as u64;
            self.publish(|state| state.pending = count).await;
        }
        if !deletions.is_empty() {
            let compressed = self.deletions_to_send(&deletions).await?;
            inner.remote.delete(compressed.clone()).await?;
            for path in &compressed {
                for recorded in core.manifest.paths_under(path) {
                    core.manifest.remove(&recorded);
                }
            }
            result.deleted += deletions.len() as u64;
        }
        if !uploads.is_empty() {
            self.upload(core, &scan, uploads, fresh, progress, &mut result).await?;
        }
        result.conflicts = core.conflicts.values().cloned().collect();
        Ok(result)
    }

    /// The deletions to send for `deleted`: a directory gone from the workspace is removed whole, unless the sandbox
    /// holds something under it that sync manages and is not deleting (a file created there since, a path held in
    /// conflict); then only the deleted paths go, so nothing written in the sandbox is lost with the directory.
    async fn deletions_to_send(&self, deleted: &BTreeSet<String>) -> Result<Vec<String>> {
        let compressed = compress_deletions(&self.inner.workspace, deleted);
        if compressed.iter().all(|path| deleted.contains(path)) {
            return Ok(compressed);
        }
        let listing = match self.inner.remote.list().await {
            Ok(listing) => listing,
            // Without a listing nothing shows what else the directory holds, so each path goes on its own.
            Err(Error::Unsupported(_)) => return Ok(deleted.iter().cloned().collect()),
            Err(error) => return Err(error),
        };
        let scanner = self.inner.scanner.clone();
        let deleted = deleted.clone();
        tokio::task::spawn_blocking(move || {
            let mut chosen = Vec::new();
            for path in compressed {
                if deleted.contains(&path) {
                    chosen.push(path);
                    continue;
                }
                let prefix = format!("{path}/");
                let keeps_something = listing.iter().any(|entry| {
                    entry.kind != EntryKind::Dir
                        && entry.path.starts_with(&prefix)
                        && !deleted.contains(&entry.path)
                        && !scanner.rules.is_excluded(&entry.path, false)
                        && !scanner.secrets.holds_back(&entry.path)
                });
                if keeps_something {
                    chosen.extend(deleted.iter().filter(|deleted_path| deleted_path.starts_with(&prefix)).cloned());
                } else {
                    chosen.push(path);
                }
            }
            chosen
        })
        .await
        .map_err(join_error("Choosing the deletions"))
    }

    /// The sandbox's entries for `paths`, asked per path when they are few, else read from the whole listing.
    /// `None` when the driver can list neither way, and so cannot tell whether the sandbox changed them.
    async fn remote_state_of(&self, paths: Vec<String>) -> Result<Option<Vec<crate::sync::RemoteEntry>>> {
        let outcome = if paths.len() <= STAT_PATHS { self.inner.remote.stat(paths).await } else { self.inner.remote.list().await };
        match outcome {
            Ok(listing) => Ok(Some(listing)),
            Err(Error::Unsupported(reason)) => {
                tracing::debug!(%reason, "the driver cannot list the sandbox; uploading without checking it first");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn conflict(&self, core: &mut Core, path: &str, reason: &str) {
        tracing::warn!(%path, reason, "sync conflict: neither side was overwritten");
        core.conflicts.insert(path.to_string(), Conflict { path: path.to_string(), reason: reason.to_string() });
    }

    /// Logs newly held-back files (path and rule, never content) and lists them in the state: a full scan
    /// replaces the list, anything else adds to it.
    fn note_held_back(&self, core: &mut Core, held_back: &BTreeMap<String, &'static str>, scan: &Scan, full: bool) {
        for (path, rule) in held_back {
            if core.logged_secrets.insert(path.clone()) {
                tracing::warn!(%path, rule, "held back a file that looks like a secret; allow it with the sync.allowSecrets setting of the profile (`sandlink sync --allow-secret PATTERN` on the command line)");
            }
        }
        for path in &scan.escaping_links {
            if core.logged_secrets.insert(path.clone()) {
                tracing::warn!(%path, "did not sync a symlink that points outside the workspace");
            }
        }
        let mut state = lock(&self.inner.state);
        let mut merged: BTreeMap<String, String> = if full {
            BTreeMap::new()
        } else {
            state.held_back.iter().map(|file| (file.path.clone(), file.rule.clone())).collect()
        };
        merged.extend(held_back.iter().map(|(path, rule)| (path.clone(), rule.to_string())));
        state.held_back_secrets = merged.keys().cloned().collect();
        state.held_back = merged.into_iter().map(|(path, rule)| HeldBackFile { path, rule }).collect();
        state.excluded = Some(state.held_back.len() as u64 + scan.escaping_links.len() as u64);
    }

    /// Drops files that went up after all (their secret was removed) from the held-back list, which a sync of a few
    /// paths (a save) would otherwise keep showing until the next full scan.
    fn note_no_longer_held<'a>(&self, core: &mut Core, sent: impl Iterator<Item = &'a str>) {
        let mut state = lock(&self.inner.state);
        if state.held_back.is_empty() {
            return;
        }
        let sent: HashSet<&str> = sent.collect();
        let before = state.held_back.len();
        state.held_back.retain(|file| !sent.contains(file.path.as_str()));
        if state.held_back.len() == before {
            return;
        }
        state.held_back_secrets.retain(|path| !sent.contains(path.as_str()));
        let removed = (before - state.held_back.len()) as u64;
        state.excluded = state.excluded.map(|excluded| excluded.saturating_sub(removed));
        core.logged_secrets.retain(|path| !sent.contains(path.as_str()));
    }

    /// Uploads changed files in batches, recording each batch once the sandbox confirmed it: one tar stream each,
    /// or, where the sandbox's tree is on this machine, copied straight into it by every core (`upload_across`).
    async fn upload(
        &self,
        core: &mut Core,
        scan: &Scan,
        uploads: Vec<String>,
        fresh: bool,
        progress: &dyn Progress,
        result: &mut SyncResult,
    ) -> Result<()> {
        let total_files = uploads.len();
        let sizes = sizes_in_order(&scan.entries, &uploads);
        let total_bytes: u64 = sizes.iter().sum();
        let mut batches: Vec<Vec<String>> = Vec::new();
        let mut current = Vec::new();
        let mut current_bytes = 0u64;
        for (path, size) in uploads.into_iter().zip(sizes) {
            if !current.is_empty() && (current.len() >= batch_files() || current_bytes + size > BATCH_BYTES) {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += size;
            current.push(path);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        let mut tally = Tally {
            total_files,
            total_bytes,
            long: total_files > 200 || total_bytes > 32 << 20,
            files_done: 0,
            bytes_done: 0,
        };
        if progress.cancelled() {
            return Err(cancelled(&format!("after 0 of {total_files} files")));
        }
        match self.inner.remote.tree_on_this_machine() {
            Some(tree) => self.upload_across(core, scan, batches, tree, fresh, progress, result, &mut tally).await?,
            None => self.upload_streams(core, scan, batches, progress, result, &mut tally).await?,
        }
        if tally.files_done < total_files {
            return Err(cancelled(&format!("after {} of {total_files} files", tally.files_done)));
        }
        Ok(())
    }

    /// `upload` through the driver, a tar stream per batch. The next batch is sent while one is recorded, so the
    /// driver never waits for the bookkeeping between two. Between batches both sides agree on everything
    /// recorded so far: the place to stop when asked (a cancel lets the batch on its way finish and be recorded
    /// too, so everything placed in the sandbox is always recorded).
    #[allow(clippy::too_many_arguments)]
    async fn upload_streams(
        &self,
        core: &mut Core,
        scan: &Scan,
        batches: Vec<Vec<String>>,
        progress: &dyn Progress,
        result: &mut SyncResult,
        tally: &mut Tally,
    ) -> Result<()> {
        let mut batches = batches.into_iter();
        let Some(first) = batches.next() else { return Ok(()) };
        // Taken before each upload: whatever the driver tells of the written files is no older than this.
        let mut current = Some((first.len(), now_ns(), self.send_batch(first).await));
        while let Some((batch_len, upload_started_ns, sent)) = current.take() {
            let (written, packed) = sent?;
            // A look the engine must ask for comes before the next batch (it can fail, and then nothing more is
            // sent); what the driver told as it wrote is read while the next batch is sent.
            let asked = match written {
                Written::Unknown => self.look_after_upload(&packed.sent).await?,
                _ => None,
            };
            let next = if progress.cancelled() { None } else { batches.next() };
            let sending = async {
                match next {
                    Some(batch) => Some((batch.len(), now_ns(), self.send_batch(batch).await)),
                    None => None,
                }
            };
            let looked = asked.or_else(|| written.into_looked(upload_started_ns));
            let recording = self.record_batch(core, scan, looked, packed, batch_len, progress, result, tally);
            let (sent_next, ()) = tokio::join!(sending, recording);
            current = sent_next;
        }
        Ok(())
    }

    /// `upload` straight into a sandbox tree on this machine (`transfer::copy_batches`): every core copies, going
    /// from one batch to the next without waiting, and each batch is recorded here as soon as all its files are
    /// placed. A cancel (or a failed batch) starts no further batch; those under way finish and are recorded.
    #[allow(clippy::too_many_arguments)]
    async fn upload_across(
        &self,
        core: &mut Core,
        scan: &Scan,
        batches: Vec<Vec<String>>,
        tree: crate::sync::TreeOnThisMachine,
        fresh: bool,
        progress: &dyn Progress,
        result: &mut SyncResult,
        tally: &mut Tally,
    ) -> Result<()> {
        let lengths: Vec<usize> = batches.iter().map(Vec::len).collect();
        let stop = Arc::new(AtomicBool::new(false));
        // One batch waits here at most: the cores copy on while one batch is recorded and the next waits, and no
        // further, so a cancel (seen as a batch arrives) leaves little copied past it.
        let (copied_sender, mut copied) = tokio::sync::mpsc::channel(1);
        let workspace = self.inner.workspace.clone();
        let scanner = self.inner.scanner.clone();
        let stop_copying = stop.clone();
        // Taken before anything is written: what the copies' own looks tell is no older than this.
        let upload_started_ns = now_ns();
        let copying = tokio::task::spawn_blocking(move || {
            let hand_over = |index: usize, outcome: Result<transfer::CopiedBatch>| {
                // Nobody is left to record it (the sync was dropped): start nothing more.
                if copied_sender.blocking_send((index, outcome)).is_err() {
                    stop_copying.store(true, Ordering::SeqCst);
                }
            };
            let secrets = Some(&scanner.secrets);
            transfer::copy_batches(&workspace, &batches, secrets, &tree.root, &tree.staging, fresh, &stop_copying, &hand_over)
        });
        let mut failed = None;
        let mut handed_over = 0;
        while let Some((index, outcome)) = copied.recv().await {
            handed_over += 1;
            if progress.cancelled() {
                stop.store(true, Ordering::SeqCst);
            }
            match outcome {
                Ok((packed, placed)) => {
                    let looked = Written::Placed(placed).into_looked(upload_started_ns);
                    self.record_batch(core, scan, looked, packed, lengths[index], progress, result, tally).await;
                }
                Err(error) => {
                    stop.store(true, Ordering::SeqCst);
                    failed.get_or_insert(error);
                }
            }
        }
        copying.await.map_err(join_error("Copying the upload"))??;
        if let Some(error) = failed {
            return Err(error);
        }
        if handed_over < lengths.len() && !stop.load(Ordering::SeqCst) {
            return Err(Error::Internal("Copying the upload stopped part-way; the next sync sends the rest.".into()));
        }
        Ok(())
    }

    /// Records one uploaded batch in the manifest (and reports progress): each file with how the sandbox's copy
    /// looked right after (`looked`), or as the upload set it.
    #[allow(clippy::too_many_arguments)]
    async fn record_batch(
        &self,
        core: &mut Core,
        scan: &Scan,
        mut looked: Option<Looked>,
        packed: transfer::Packed,
        batch_len: usize,
        progress: &dyn Progress,
        result: &mut SyncResult,
        tally: &mut Tally,
    ) {
        if !packed.held_back.is_empty() {
            let held_back: BTreeMap<String, &'static str> = packed.held_back.into_iter().collect();
            self.note_held_back(core, &held_back, scan, false);
        }
        self.note_no_longer_held(core, packed.sent.iter().map(|item| item.path.as_str()));
        for item in packed.sent {
            result.uploaded += 1;
            result.bytes += item.local.size;
            tally.bytes_done += item.local.size;
            let mtime_s = transfer::mtime_seconds(item.local.mtime_ns);
            let stamp = match &mut looked {
                None => Some(RemoteStamp::uploaded(item.local.size, mtime_s)),
                Some(looked) => {
                    let observed_ns = looked.observed_ns;
                    looked.get(&item.path).and_then(|entry| RemoteStamp::after_upload(entry, item.local.size, mtime_s, observed_ns))
                }
            };
            let record = Record::new(&item.local, item.hash, stamp);
            // A file that changed while it was read still reached the sandbox as read. That copy is recorded as the
            // sandbox's side, so the next sync does not take it for a change made in the sandbox (and the file,
            // changed on both sides, for a conflict no one made); the workspace's side is recorded as a stamp no
            // file has, so the next scan takes the file as changed and sends it again.
            let record = if item.stable { record } else { record.with_workspace_side_unknown() };
            core.manifest.insert(item.path, record);
        }
        tally.files_done += batch_len;
        if tally.long {
            let percentage = if tally.total_bytes > 0 {
                (tally.bytes_done * 100 / tally.total_bytes.max(1)) as u32
            } else {
                (tally.files_done * 100 / tally.total_files.max(1)) as u32
            };
            let message = format!(
                "{}/{} files, {} / {} MB",
                tally.files_done,
                tally.total_files,
                tally.bytes_done >> 20,
                tally.total_bytes >> 20
            );
            progress.report(message, Some(percentage.min(100))).await;
            let remaining = (tally.total_files - tally.files_done) as u64;
            self.publish(|state| state.pending = remaining).await;
        }
    }

    /// Sends one batch of workspace files as a tar stream, packed on one thread while the driver takes it. Answers
    /// what the driver told of the written files, if anything, and what was read.
    async fn send_batch(&self, batch: Vec<String>) -> Result<(Written, transfer::Packed)> {
        let workspace = self.inner.workspace.clone();
        let scanner = self.inner.scanner.clone();
        let (reader, writer) = tokio::io::duplex(1 << 20);
        let producer = tokio::task::spawn_blocking(move || {
            let bridge = tokio_util::io::SyncIoBridge::new(writer);
            transfer::pack_checked(&workspace, &batch, transfer::Links::Inside, bridge, &mut |_| {}, Some(&scanner.secrets))
        });
        let (uploaded, packed) = tokio::join!(self.inner.remote.upload_tar_looked(Box::pin(reader)), producer);
        let packed = packed.map_err(join_error("Packing the upload"))?;
        // The driver's answer comes first: a packing error usually shows up as the driver's read error.
        match (uploaded, packed) {
            (Ok(Some(written)), Ok(packed)) => Ok((Written::Told(written), packed)),
            (Ok(None), Ok(packed)) => Ok((Written::Unknown, packed)),
            (_, Err(error)) | (Err(error), _) => Err(error),
        }
    }

    /// Where the driver tells inodes and status-change times (`RemoteFiles::tells_change_times`), a look at the files
    /// just uploaded, with when it was asked for: their stamps then hold what a later rename or rewrite would change.
    /// `None` where the driver cannot tell them, and the stamps hold what the upload set.
    async fn look_after_upload(
        &self,
        sent: &[transfer::Sent],
    ) -> Result<Option<Looked>> {
        if !self.inner.remote.tells_change_times() {
            return Ok(None);
        }
        let files: Vec<String> =
            sent.iter().filter(|item| item.local.kind == EntryKind::File).map(|item| item.path.clone()).collect();
        if files.is_empty() {
            return Ok(None);
        }
        let observed_ns = now_ns();
        let Some(listing) = self.remote_state_of(files).await? else { return Ok(None) };
        Ok(Some(Looked::new(listing, observed_ns)))
    }

    /// Downloads the given sandbox paths into the staging directory.
    async fn fetch(&self, paths: Vec<String>) -> Result<Vec<Staged>> {
        let reader = self.inner.remote.download_tar(paths).await?;
        let staging = self.inner.staging.clone();
        tokio::task::spawn_blocking(move || {
            let bridge = tokio_util::io::SyncIoBridge::new(reader);
            transfer::stage(bridge, &staging)
        })
        .await
        .map_err(join_error("Unpacking the download"))?
    }

    /// Puts downloaded files into the workspace and removes files deleted in the sandbox, each only if the local
    /// file is still as the scan saw it. Answers (downloaded, bytes, paths that changed meanwhile).
    ///
    /// Everything goes through directory descriptors that never pass a symlink. A link is placed (and one is
    /// removed or replaced) only when afterwards it and every other link of the workspace that sync knows
    /// (`known_links`) still resolve inside the workspace, following each other as the kernel would; one that would
    /// not is left out and reported in `skipped`, and everything else still syncs.
    async fn place(
        &self,
        core: &mut Core,
        placements: Vec<(Staged, Option<LocalEntry>, Option<RemoteStamp>)>,
        deletions: Vec<(String, LocalEntry)>,
        mut known_links: BTreeMap<String, String>,
        result: &mut SyncResult,
    ) -> Result<(u64, u64, Vec<String>)> {
        if placements.is_empty() && deletions.is_empty() {
            return Ok((0, 0, Vec::new()));
        }
        let workspace = self.inner.workspace.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<PlaceOutcome> {
            let mut outcome = PlaceOutcome::default();
            let mut beneath = Beneath::open(&workspace)
                .map_err(|error| Error::io(format!("Could not open the workspace {}", workspace.display()), error))?;
            // First against everything this sync places at once, so with `y -> .` and `x -> y/..` it is `x` that is
            // refused whatever the order; then each change again against the disk as it stands (below).
            let refused_up_front = links_leading_out(&workspace, &placements, &deletions);
            for (staged, expected, stamp) in placements {
                if let Some(reason) = refused_up_front.get(&staged.path) {
                    outcome.skipped.push(SkippedPath { path: staged.path.clone(), reason: reason.clone() });
                    continue;
                }
                let now = current_entry(&mut beneath, &staged.path)?;
                let unchanged = match (&now, &expected) {
                    (None, None) => true,
                    (Some(now), Some(expected)) => now == expected,
                    _ => false,
                };
                if !unchanged {
                    outcome.raced.push(staged.path.clone());
                    continue;
                }
                let replaces_link = now.as_ref().is_some_and(|entry| entry.kind == EntryKind::Symlink);
                let node = match (&staged.kind, &staged.link_target) {
                    (EntryKind::Symlink, Some(target)) => Node::Link(target.clone()),
                    _ => Node::File,
                };
                if matches!(node, Node::Link(_)) || replaces_link {
                    if let Err(reason) = links_stay_inside(&workspace, &known_links, &staged.path, &node) {
                        outcome.skipped.push(SkippedPath { path: staged.path.clone(), reason });
                        continue;
                    }
                }
                let path = staged.path.clone();
                let hash = staged.hash.clone();
                let size = staged.size;
                match transfer::place(&mut beneath, staged) {
                    Ok(()) => {}
                    Err(Error::PathOutsideWorkspace(reason)) => {
                        outcome.skipped.push(SkippedPath { path, reason });
                        continue;
                    }
                    Err(error) => return Err(error),
                }
                let Some(placed) = current_entry(&mut beneath, &path)? else {
                    return Err(Error::Internal(format!("{path} vanished right after it was written.")));
                };
                match &node {
                    Node::Link(target) => known_links.insert(path.clone(), target.clone()),
                    _ => known_links.remove(&path),
                };
                outcome.placed.push((path, Record::new(&placed, hash, stamp)));
                outcome.bytes += size;
            }
            for (path, expected) in deletions {
                let now = current_entry(&mut beneath, &path)?;
                let unchanged = now.as_ref().is_some_and(|now| {
                    now.kind == expected.kind && now.size == expected.size && now.mtime_ns == expected.mtime_ns && now.inode == expected.inode
                });
                if !unchanged {
                    outcome.raced.push(path);
                    continue;
                }
                if expected.kind == EntryKind::Symlink {
                    if let Err(reason) = links_stay_inside(&workspace, &known_links, &path, &Node::Missing) {
                        outcome.skipped.push(SkippedPath { path, reason });
                        continue;
                    }
                    known_links.remove(&path);
                }
                beneath.remove(&path).map_err(|error| Error::io(format!("Could not delete {path}"), error))?;
                outcome.removed.push(path);
            }
            Ok(outcome)
        })
        .await
        .map_err(join_error("Writing downloaded files"))??;
        for (path, record) in outcome.placed.iter().cloned() {
            core.manifest.insert(path.clone(), record);
            core.conflicts.remove(&path);
        }
        for path in &outcome.removed {
            core.manifest.remove(path);
            core.conflicts.remove(path);
        }
        for skipped in &outcome.skipped {
            tracing::warn!(path = %skipped.path, reason = %skipped.reason, "did not bring a path back from the sandbox");
        }
        result.skipped.extend(outcome.skipped);
        result.deleted += outcome.removed.len() as u64;
        let limit = crate::protocol::LISTED_PATHS_LIMIT;
        let room = limit.saturating_sub(result.brought.len());
        result.brought.extend(outcome.placed.iter().take(room).map(|(path, _)| path.clone()));
        let room = limit.saturating_sub(result.removed_locally.len());
        result.removed_locally.extend(outcome.removed.iter().take(room).cloned());
        Ok((outcome.placed.len() as u64, outcome.bytes, outcome.raced))
    }
}

/// The scanned size of each of `paths` (0 for one the scan did not find), walking the scan beside them rather than
/// looking each up: `paths` come in order (a set's), and two lookups per path took 3.6 ms of an initial sync of 20,000
/// files on one core while the other waited. A path out of order only gets 0: sizes shape batches and progress.
fn sizes_in_order(entries: &BTreeMap<String, LocalEntry>, paths: &[String]) -> Vec<u64> {
    let mut scanned = entries.iter().peekable();
    paths
        .iter()
        .map(|path| {
            while scanned.next_if(|(scanned_path, _)| scanned_path.as_str() < path.as_str()).is_some() {}
            match scanned.peek() {
                Some((scanned_path, entry)) if scanned_path.as_str() == path.as_str() => entry.size,
                _ => 0,
            }
        })
        .collect()
}

/// The workspace entry at `path` as `lstat` sees it through `beneath` (with its target, for a link); `None` when it
/// is missing or under a link.
fn current_entry(beneath: &mut Beneath, path: &str) -> Result<Option<LocalEntry>> {
    let Some(stat) = beneath.lstat(path).map_err(|error| Error::io(format!("Could not read {path}"), error))? else {
        return Ok(None);
    };
    let link = if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink {
        beneath.read_link(path).ok().and_then(|target| String::from_utf8(target).ok())
    } else {
        None
    };
    Ok(Some(LocalEntry::from_stat(&stat, link)))
}

/// The links among `placements` that lead outside the workspace once every placement and deletion is done, with
/// the reason for each.
fn links_leading_out(
    workspace: &Path,
    placements: &[(Staged, Option<LocalEntry>, Option<RemoteStamp>)],
    deletions: &[(String, LocalEntry)],
) -> BTreeMap<String, String> {
    let links: Vec<(&str, &str)> = placements
        .iter()
        .filter_map(|(staged, _, _)| staged.link_target.as_deref().map(|target| (staged.path.as_str(), target)))
        .collect();
    if links.is_empty() {
        return BTreeMap::new();
    }
    let disk = OnDisk { root: workspace };
    let mut after = Overlay::new(&disk);
    for (path, target) in &links {
        after.set(path, Node::Link(target.to_string()));
    }
    for (path, _) in deletions {
        after.set(path, Node::Missing);
    }
    links
        .into_iter()
        .filter_map(|(path, target)| match resolve::resolve_link(&after, path, target) {
            Resolution::Inside(_) => None,
            ending => Some((path.to_string(), refusal_reason(path, path, target, ending))),
        })
        .collect()
}

/// Why a link change was refused: `link` (to `target`) would end as `ending` if `path` changed.
fn refusal_reason(path: &str, link: &str, target: &str, ending: Resolution) -> String {
    let how = match ending {
        Resolution::TooManyLinks => format!("goes through more than {} symlinks", resolve::MAX_LINKS),
        _ => "leads outside the workspace".to_string(),
    };
    if link == path {
        format!("the symlink's target \"{target}\" {how}, following the other links of the tree; it was not created")
    } else {
        format!("it would make the symlink \"{link}\" (to \"{target}\") {how}; it was left as it is")
    }
}

/// Whether putting `node` at `path` keeps the link there (if it is one) and every other known link inside the
/// workspace, each resolved through all the others on disk; the reason to refuse otherwise.
fn links_stay_inside(workspace: &Path, known_links: &BTreeMap<String, String>, path: &str, node: &Node) -> Result<(), String> {
    let disk = OnDisk { root: workspace };
    let mut after = Overlay::new(&disk);
    after.set(path, node.clone());
    let refusal = |link: &str, target: &str, ending: Resolution| refusal_reason(path, link, target, ending);
    if let Node::Link(target) = node {
        let ending = resolve::resolve_link(&after, path, target);
        if !ending.is_inside() {
            return Err(refusal(path, target, ending));
        }
    }
    for (link, target) in known_links {
        if link == path {
            continue;
        }
        let ending = resolve::resolve_link(&after, link, target);
        if !ending.is_inside() {
            return Err(refusal(link, target, ending));
        }
    }
    Ok(())
}

/// The first parent of `relative` under `root` that is a symlink, if any.
fn first_linked_parent(root: &Path, relative: &str) -> Option<String> {
    let parts: Vec<&str> = relative.split('/').filter(|part| !part.is_empty()).collect();
    let mut current = root.to_path_buf();
    for (index, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
        current.push(part);
        if std::fs::symlink_metadata(&current).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
            return Some(parts[..=index].join("/"));
        }
    }
    None
}

#[derive(Default)]
struct PlaceOutcome {
    placed: Vec<(String, Record)>,
    skipped: Vec<SkippedPath>,
    removed: Vec<String>,
    raced: Vec<String>,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Same,
    Changed,
    Deleted,
}

/// Whether a local entry the scan saw as changed still has the kind, mode and content last synced (only its times or
/// inode moved); its record then takes the new metadata, so the next scan sees it as unchanged.
fn only_metadata_moved(core: &mut Core, workspace: &Path, path: &str, entry: Option<&LocalEntry>) -> bool {
    let (Some(entry), Some(record)) = (entry, core.manifest.entries.get(path)) else { return false };
    if entry.kind != record.kind || entry.mode != record.mode {
        return false;
    }
    if hash_local(workspace, path, Some(entry)).as_deref() != Some(record.hash.as_str()) {
        return false;
    }
    let refreshed = Record::new(entry, record.hash.clone(), record.remote.clone());
    core.manifest.insert(path.to_string(), refreshed);
    true
}

/// Whether two versions of a path are the same for sync: the same kind and content, and for files the same
/// permission bits (`PERMISSION_BITS`), so a mode change on either side is a change like any other.
fn same_node(kind: EntryKind, hash: &str, mode: u32, other_kind: EntryKind, other_hash: &str, other_mode: u32) -> bool {
    kind == other_kind
        && hash == other_hash
        && (kind == EntryKind::Symlink || mode & PERMISSION_BITS == other_mode & PERMISSION_BITS)
}

/// The content hash of a local file or symlink, when it can be read.
fn hash_local(workspace: &Path, path: &str, entry: Option<&LocalEntry>) -> Option<String> {
    match entry {
        Some(entry) if entry.kind == EntryKind::Symlink => entry.link_target.as_deref().map(super::manifest::hash_link),
        Some(_) => hash_file(&workspace.join(path)).ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> LocalEntry {
        LocalEntry { kind: EntryKind::File, size, mtime_ns: 0, mode: 0o644, inode: size, link_target: None }
    }

    #[test]
    fn sizes_should_follow_the_paths_and_be_zero_for_what_the_scan_did_not_find() {
        let entries: BTreeMap<String, LocalEntry> = [("a", 1), ("b/c", 2), ("b/d", 3), ("e", 4)]
            .into_iter()
            .map(|(path, size)| (path.to_string(), file(size)))
            .collect();
        let paths = |list: &[&str]| list.iter().map(|path| path.to_string()).collect::<Vec<_>>();
        assert_eq!(sizes_in_order(&entries, &paths(&["a", "b/c", "b/d", "e"])), vec![1, 2, 3, 4]);
        let strays = paths(&["0", "b/d", "c", "e", "z"]);
        assert_eq!(sizes_in_order(&entries, &strays), vec![0, 3, 0, 4, 0], "gaps and strays");
        assert_eq!(sizes_in_order(&entries, &paths(&["b/c", "b/c"])), vec![2, 2], "a path twice");
        assert_eq!(sizes_in_order(&entries, &[]), Vec::<u64>::new());
        assert_eq!(sizes_in_order(&BTreeMap::new(), &paths(&["a"])), vec![0]);
        // Out of order, a path may get 0 but never another path's size.
        let sizes = sizes_in_order(&entries, &paths(&["e", "a"]));
        assert_eq!(sizes[0], 4);
        assert!(sizes[1] == 0 || sizes[1] == 1);
    }

    /// A look told in any order finds each file, asked in order or not; a path told twice is trusted in neither
    /// telling, so its content is compared next time.
    #[test]
    fn a_look_should_find_each_file_once_and_trust_no_path_told_twice() {
        let entry = |path: &str, size: u64| crate::sync::RemoteEntry { size, ..crate::sync::RemoteEntry::directory(path.to_string()) };
        let mut in_order = Looked::new(vec![entry("a", 1), entry("b/c", 2), entry("d", 3)], 7);
        assert_eq!(in_order.observed_ns, 7);
        let sizes: Vec<Option<u64>> = ["a", "b/c", "c", "d", "a", "z"].iter().map(|path| in_order.get(path).map(|found| found.size)).collect();
        assert_eq!(sizes, vec![Some(1), Some(2), None, Some(3), Some(1), None]);
        let mut told = Looked::new(vec![entry("d", 3), entry("b", 4), entry("a", 1), entry("b", 5), entry("c", 6)], 7);
        let sizes: Vec<Option<u64>> = ["a", "b", "c", "d"].iter().map(|path| told.get(path).map(|found| found.size)).collect();
        assert_eq!(sizes, vec![Some(1), None, Some(6), Some(3)]);
        assert!(Looked::new(Vec::new(), 0).get("a").is_none());
    }
}
