//! A model-based property test of the three-way sync: random edits, deletes, renames, mode changes and symlinks on
//! both sides (a workspace and the local driver's sandbox root), synced in random directions through the real sync
//! engine (`SessionSync` over `LocalFiles`), each sync checked against a model of what it must do.
//!
//! The model keeps only the common base (what both sides last agreed on) and the paths held in conflict; the trees
//! are read from disk before and after each sync. Per path, with `local`, `remote` and `base`:
//! - a change is one of content, of kind (file or link) or of a file's permission bits, on either side;
//! - changed on one side only: `up` copies a local change, `down` a sandbox change, `both` either; the other
//!   direction leaves it waiting, untouched;
//! - changed on both sides to the same content and mode: agreed, nothing is written;
//! - changed on both sides differently: a conflict, reported, and both copies stay as they are until they agree;
//! - nothing outside either root ever changes, and nothing but the model's paths appears in either tree.
//!
//! Most writes have the same size, and sandbox writes often get one old modification time shared by every file (as
//! `tar`, `cp -p` or `touch -d` leave them), so a file renamed over another, or rewritten, can only be told by its inode
//! and status-change time, or by content.
//!
//! Each run is repeated for what each driver's listing tells of a file (`Listing`): everything (the local driver, and
//! docker with GNU find or busybox), whole seconds with inode and status-change time (older busybox builds, or file
//! systems that keep whole seconds), and sub-second
//! modification times only (E2B's envd). Sync's racy window is narrowed to 50 ms so that most stamps are trusted
//! and the fields themselves are what is tested, not the fallback to content.
//!
//! `SANDLINK_MODEL_SEED` (default a fixed seed) and `SANDLINK_MODEL_STEPS` (default 2500) choose the run;
//! `SANDLINK_MODEL_SEEDS` runs that many consecutive seeds. A failure prints the seed and every step so far.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sandlink::drivers::local::files::LocalFiles;
use sandlink::streams::BoxedReader;
use sandlink::progress::NoProgress;
use sandlink::protocol::{SyncDirection, SyncState};
use sandlink::sync::{manifest, RemoteEntry, RemoteFiles, SessionSync, StateObserver, SyncOptions};

/// Paths files live at; two share a directory so removing it removes several at once.
const FILE_PATHS: [&str; 5] = ["a", "b", "d/c", "d/e", "f/g"];
/// Paths symlinks live at; their targets are files of the model, relative to the link.
const LINK_PATHS: [&str; 2] = ["l", "d/m"];
/// Where a link pointing out of the tree is made; sync must neither follow nor copy it.
const ESCAPE_LINK: &str = "x/out";
const DEFAULT_SEED: u64 = 0x5a4d_11c3;
const DEFAULT_STEPS: usize = 2_500;

#[test]
fn random_edits_on_both_sides_should_sync_as_the_model_says() {
    run_model(Listing::Full);
}

#[test]
fn random_edits_should_sync_as_the_model_says_with_whole_second_listings() {
    run_model(Listing::WholeSeconds);
}

#[test]
fn random_edits_should_sync_as_the_model_says_with_listings_without_inodes() {
    run_model(Listing::MtimeOnly);
}

fn run_model(listing: Listing) {
    narrow_the_racy_window();
    let first_seed = env_number("SANDLINK_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let steps = env_number("SANDLINK_MODEL_STEPS").map_or(DEFAULT_STEPS, |steps| steps as usize);
    let seeds = env_number("SANDLINK_MODEL_SEEDS").unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    for seed in first_seed..first_seed + seeds {
        runtime.block_on(run_seed(seed, steps, listing));
    }
}

/// Sync reads the window once, before the first sync of any test in this binary.
fn narrow_the_racy_window() {
    static NARROWED: std::sync::Once = std::sync::Once::new();
    NARROWED.call_once(|| std::env::set_var("SANDLINK_SYNC_RACY_WINDOW_MS", "50"));
}

#[test]
fn an_upload_after_both_sides_emptied_should_still_see_the_sandbox_changes() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    narrow_the_racy_window();
    runtime.block_on(async {
        let mut harness = Harness::new(Listing::Full).await;
        let check = |outcome: Result<String, String>, harness: &Harness| match outcome {
            Ok(line) => line,
            Err(failure) => harness.fail(0, &failure),
        };
        harness.write(Side::Workspace, "a", Size::Shared, false);
        let line = harness.sync_and_check(SyncDirection::Up).await;
        harness.log.push(check(line, &harness));
        harness.remove(Side::Workspace, "a");
        harness.remove(Side::Sandbox, "a");
        let line = harness.sync_and_check(SyncDirection::Both).await;
        harness.log.push(check(line, &harness));
        // The common base is empty now, but it exists: the sandbox's new file is a change like any other.
        harness.write(Side::Sandbox, "b", Size::Shared, false);
        harness.write(Side::Workspace, "b", Size::Shared, false);
        let line = harness.sync_and_check(SyncDirection::Up).await;
        harness.log.push(check(line, &harness));
        assert!(harness.held.contains("b"), "{:?}", harness.log);
        harness.sync.stop().await;
    });
}

/// Runs `steps` (each a change, or `None` for a sync in the given direction checked against the model) on a fresh
/// harness with `listing`, failing with the steps so far when a sync disagrees.
fn run_script(listing: Listing, script: impl for<'a> Fn(&'a mut Harness, usize) -> Option<SyncDirection>, steps: usize) {
    narrow_the_racy_window();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let mut harness = Harness::new(listing).await;
        for step in 0..steps {
            let Some(direction) = script(&mut harness, step) else {
                harness.log.push(format!("{step}: a change"));
                continue;
            };
            match harness.sync_and_check(direction).await {
                Ok(line) => harness.log.push(format!("{step}: {line}")),
                Err(failure) => harness.fail(0, &failure),
            }
        }
        harness.sync.stop().await;
    });
}

#[test]
fn a_same_size_file_renamed_over_another_in_the_sandbox_should_come_down() {
    for listing in [Listing::Full, Listing::WholeSeconds, Listing::MtimeOnly] {
        run_script(
            listing,
            |harness, step| match step {
                0 => {
                    // Two files of one size from the same second of the workspace clock, as a checkout leaves them.
                    harness.write(Side::Workspace, "a", Size::Shared, false);
                    harness.write(Side::Workspace, "b", Size::Shared, false);
                    let second = filetime::FileTime::from_unix_time(1_700_000_000, 0);
                    for path in ["a", "b"] {
                        filetime::set_file_mtime(harness.workspace.join(path), second).expect("set the mtime");
                    }
                    Some(SyncDirection::Up)
                }
                1 => {
                    // Past the racy window, so nothing but the listing's fields (or the ambiguity check) can tell.
                    std::thread::sleep(std::time::Duration::from_millis(120));
                    harness.rename(Side::Sandbox, "b", "a");
                    None
                }
                2 => Some(SyncDirection::Down),
                _ => Some(SyncDirection::Both),
            },
            4,
        );
    }
}

#[test]
fn a_chmod_on_one_side_should_sync_and_on_both_sides_should_conflict() {
    for listing in [Listing::Full, Listing::WholeSeconds, Listing::MtimeOnly] {
        run_script(
            listing,
            |harness, step| match step {
                0 => {
                    harness.write(Side::Workspace, "a", Size::Shared, false);
                    harness.write(Side::Workspace, "b", Size::Shared, false);
                    Some(SyncDirection::Up)
                }
                1 => {
                    std::thread::sleep(std::time::Duration::from_millis(120));
                    harness.chmod(Side::Sandbox, "a", 0o755);
                    None
                }
                // The sandbox's `chmod +x` comes down (the model checks the workspace's mode).
                2 => Some(SyncDirection::Down),
                3 => {
                    harness.chmod(Side::Workspace, "a", 0o700);
                    harness.chmod(Side::Sandbox, "b", 0o600);
                    harness.chmod(Side::Workspace, "b", 0o755);
                    None
                }
                // `a` goes up; `b` changed differently on both sides: a conflict, neither side touched.
                4 => Some(SyncDirection::Both),
                5 => {
                    harness.chmod(Side::Workspace, "b", 0o600);
                    None
                }
                // Both sides agree again, and the conflict is over.
                _ => Some(SyncDirection::Both),
            },
            7,
        );
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// A small deterministic generator (SplitMix64), so a seed replays the same steps everywhere.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Whether a write has the size most writes share, or one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Shared,
    Own,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Workspace,
    Sandbox,
}

/// What is at one path: a file (content and permission bits) or a symlink (target).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { content: String, mode: u32 },
    Link { target: String },
}

impl Node {
}

type Tree = BTreeMap<String, Node>;

/// The old modification time sandbox writes often get, the same for every file.
const SHARED_OLD_MTIME: i64 = 1_600_000_000;

struct Observer;

/// What a driver's listing tells of each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// Everything the local driver and docker with GNU find or busybox give: nanosecond times, inode and status-change
    /// time.
    Full,
    /// Older busybox builds, or file systems that keep whole seconds: inode and status-change time, both times in whole
    /// seconds.
    WholeSeconds,
    /// E2B's envd: a modification time to the nanosecond, no inode and no status-change time.
    MtimeOnly,
}

/// The local driver's files, with listings cut down to what `listing` says a driver tells.
struct ListedAs {
    files: LocalFiles,
    listing: Listing,
}

impl ListedAs {
    fn cut(&self, mut entries: Vec<RemoteEntry>) -> Vec<RemoteEntry> {
        let whole_second = |ns: i128| ns.div_euclid(1_000_000_000) * 1_000_000_000;
        for entry in &mut entries {
            match self.listing {
                Listing::Full => {}
                Listing::WholeSeconds => {
                    entry.subsecond = false;
                    entry.mtime_ns = whole_second(entry.mtime_ns);
                    entry.ctime_ns = entry.ctime_ns.map(whole_second);
                }
                Listing::MtimeOnly => {
                    entry.inode = None;
                    entry.ctime_ns = None;
                }
            }
        }
        entries
    }
}

#[async_trait]
impl RemoteFiles for ListedAs {
    async fn upload_tar(&self, archive: BoxedReader) -> sandlink::error::Result<()> {
        self.files.upload_tar(archive).await
    }

    /// The local driver tells how it wrote each file (`Full`); docker cannot, so the whole-seconds kind leaves the
    /// engine to look after the upload, and both ways of stamping an upload are exercised.
    async fn upload_tar_looked(&self, archive: BoxedReader) -> sandlink::error::Result<Option<Vec<RemoteEntry>>> {
        match self.listing {
            Listing::Full => Ok(self.files.upload_tar_looked(archive).await?.map(|entries| self.cut(entries))),
            Listing::WholeSeconds | Listing::MtimeOnly => self.files.upload_tar(archive).await.map(|()| None),
        }
    }

    async fn delete(&self, paths: Vec<String>) -> sandlink::error::Result<()> {
        self.files.delete(paths).await
    }

    async fn list(&self) -> sandlink::error::Result<Vec<RemoteEntry>> {
        Ok(self.cut(self.files.list().await?))
    }

    async fn stat(&self, paths: Vec<String>) -> sandlink::error::Result<Vec<RemoteEntry>> {
        Ok(self.cut(self.files.stat(paths).await?))
    }

    fn tells_change_times(&self) -> bool {
        self.listing != Listing::MtimeOnly
    }

    async fn download_tar(&self, paths: Vec<String>) -> sandlink::error::Result<BoxedReader> {
        self.files.download_tar(paths).await
    }
}

#[async_trait]
impl StateObserver for Observer {
    async fn changed(&self, _state: SyncState) {}
}

/// One run: a workspace, the local driver's sandbox, the engine's sync for them, and the model.
struct Harness {
    _dir: tempfile::TempDir,
    workspace: PathBuf,
    sandbox: PathBuf,
    outside: PathBuf,
    sync: SessionSync,
    /// What both sides last agreed on.
    base: Tree,
    /// Paths changed differently on both sides, which sync must leave alone.
    held: BTreeSet<String>,
    /// Whether a sync has completed: the first has no common base and the workspace wins.
    synced_once: bool,
    /// Each write gets a number of its own, so no two writes are ever the same data by chance.
    writes: u64,
    /// Whether the step that puts a link out of the tree in the sandbox is under way (the link is then expected).
    sandbox_escape_present: bool,
    listing: Listing,
    log: Vec<String>,
}

async fn run_seed(seed: u64, steps: usize, listing: Listing) {
    let mut random = Random(seed);
    let mut harness = Harness::new(listing).await;
    for step in 0..steps {
        let outcome = harness.random_step(&mut random).await;
        let (line, failure) = match outcome {
            Ok(line) => (line, harness.check_outside().err()),
            Err((line, failure)) => (line, Some(failure)),
        };
        harness.log.push(format!("{step}: {line}"));
        if let Some(failure) = failure {
            harness.fail(seed, &failure);
        }
    }
    harness.sync.stop().await;
    eprintln!("seed {seed:#x}, {listing:?} listings: {steps} steps agreed with the model");
}

impl Harness {
    async fn new(listing: Listing) -> Harness {
        let dir = tempfile::Builder::new().prefix("sandlink-sync-model-").tempdir().expect("a temporary directory");
        let workspace = dir.path().join("workspace");
        let state = dir.path().join("state");
        let outside = dir.path().join("outside");
        for path in [&workspace, &state, &outside] {
            std::fs::create_dir_all(path).expect("mkdir");
        }
        std::fs::write(outside.join("secret"), "must never change").expect("write the sentinel");
        // The local driver's files over a sandbox root, as the driver makes them for a session (its runs are not
        // needed here: the test changes the sandbox side directly, as a run would).
        // Both roots sit beside `outside`, so links made in either as `../../outside` lead to the sentinel.
        let sandbox_root = dir.path().join("sandbox");
        std::fs::create_dir_all(&sandbox_root).expect("mkdir");
        let files = LocalFiles::new(sandbox_root.clone(), state.join("staging"));
        let remote = Arc::new(ListedAs { files, listing });
        let options = SyncOptions { watch: sandlink::sync::options::WatchMode::Off, ..SyncOptions::default() };
        let session_dir = state.join("session");
        let sync = SessionSync::new(workspace.clone(), remote, options, &session_dir, Arc::new(Observer)).expect("sync starts");
        Harness {
            _dir: dir,
            workspace,
            sandbox: sandbox_root,
            outside,
            sync,
            base: Tree::new(),
            held: BTreeSet::new(),
            synced_once: false,
            writes: 0,
            sandbox_escape_present: false,
            listing,
            log: Vec::new(),
        }
    }

    fn root(&self, side: Side) -> &Path {
        match side {
            Side::Workspace => &self.workspace,
            Side::Sandbox => &self.sandbox,
        }
    }

    fn fail(&self, seed: u64, failure: &str) -> ! {
        let steps = self.log.join("\n");
        panic!(
            "{failure}\n\nreplay with SANDLINK_MODEL_SEED={seed:#x} SANDLINK_MODEL_STEPS={}\nsteps:\n{steps}\n\nbase: {:#?}\nheld: {:?}",
            self.log.len(),
            self.base,
            self.held
        );
    }

    /// One random change on one side, or a sync checked against the model. Answers a line for the step log, and
    /// what went wrong when the sync disagreed with the model.
    async fn random_step(&mut self, random: &mut Random) -> Result<String, (String, String)> {
        let side = if random.below(2) == 0 { Side::Workspace } else { Side::Sandbox };
        let line = match random.below(22) {
            0..=5 => {
                let path = random.pick(&FILE_PATHS);
                let size = if random.below(5) == 0 { Size::Own } else { Size::Shared };
                // Sandbox writes keep the sandbox clock's time, or get the old time every such file shares; a listing
                // without a status-change time cannot tell the latter from the file it replaced (sync's documented
                // limit on such drivers), so there every write keeps its clock's time.
                let old_time = side == Side::Sandbox && random.below(2) == 0 && self.listing != Listing::MtimeOnly;
                self.write(side, path, size, old_time);
                let size_note = if size == Size::Own { " (own size)" } else { "" };
                let time_note = if old_time { " (old time)" } else { "" };
                format!("{side:?}: write {path}{size_note}{time_note}")
            }
            6 | 7 => {
                let path = random.pick(&FILE_PATHS);
                self.remove(side, path);
                format!("{side:?}: delete {path}")
            }
            8 | 9 => {
                let (from, to) = (random.pick(&FILE_PATHS), random.pick(&FILE_PATHS));
                self.rename(side, from, to);
                format!("{side:?}: rename {from} to {to}")
            }
            10 => {
                let path = random.pick(&FILE_PATHS);
                let mode = [0o600, 0o644, 0o755, 0o700][random.below(4)];
                self.chmod(side, path, mode);
                format!("{side:?}: chmod {mode:o} {path}")
            }
            11 => {
                let path = random.pick(&LINK_PATHS);
                let target = random.pick(&FILE_PATHS);
                let relative = relative_target(path, target);
                self.link(side, path, &relative);
                format!("{side:?}: link {path} -> {relative}")
            }
            12 => {
                let dir = random.pick(&["d", "f"]);
                let _ = std::fs::remove_dir_all(self.root(side).join(dir));
                format!("{side:?}: remove directory {dir}")
            }
            13 => {
                // A link out of the tree in the workspace is neither followed nor copied.
                let target = ["../../outside", "/etc", "../../outside/secret"][random.below(3)];
                let path = self.workspace.join(ESCAPE_LINK);
                let _ = std::fs::create_dir_all(path.parent().expect("a parent"));
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(target, &path).expect("symlink");
                format!("Workspace: link {ESCAPE_LINK} -> {target}")
            }
            14 => {
                // Emptying a side makes the common base empty again, which must not read as "never synced".
                for name in ["a", "b", "l", "d", "f"] {
                    let full = self.root(side).join(name);
                    let _ = std::fs::remove_file(&full).or_else(|_| std::fs::remove_dir_all(&full));
                }
                format!("{side:?}: remove everything")
            }
            15 => {
                // A link in the sandbox that leads out of it: a sync that lists the sandbox leaves that link alone
                // (reporting it as skipped) and syncs everything else as the model says; the link is then removed
                // again, as a user would.
                let direction = [SyncDirection::Down, SyncDirection::Both][random.below(2)];
                let target = ["../../outside", "/etc", "../../../outside/secret"][random.below(3)];
                let link = self.sandbox.join(ESCAPE_LINK);
                std::fs::create_dir_all(link.parent().expect("a parent")).expect("mkdir");
                std::os::unix::fs::symlink(target, &link).expect("symlink");
                self.sandbox_escape_present = true;
                let workspace_link = |harness: &Self| std::fs::read_link(harness.workspace.join(ESCAPE_LINK)).ok();
                let before = workspace_link(self);
                let outcome = self.sync_and_check(direction).await;
                self.sandbox_escape_present = false;
                std::fs::remove_file(&link).expect("remove the link");
                let line = format!("Sandbox: link {ESCAPE_LINK} -> {target}, sync {direction:?} (link skipped)");
                // The workspace's own `x/out` (the model makes one on that side too) must be as it was.
                let placed = workspace_link(self) != before;
                let outcome = outcome.and_then(|summary| match placed {
                    true => Err(format!("a sync {direction:?} placed the sandbox's link out of the tree: {summary}")),
                    false => Ok(summary),
                });
                outcome.map_err(|failure| (line.clone(), failure))?;
                line
            }
            _ => {
                let direction = [SyncDirection::Up, SyncDirection::Down, SyncDirection::Both][random.below(3)];
                return self.sync_and_check(direction).await.map_err(|failure| (format!("sync {direction:?}"), failure));
            }
        };
        Ok(line)
    }

    /// New content for a write: `Size::Shared` writes all have one size, so only content (or the metadata sync
    /// keeps of the sandbox's copy) tells them apart; `Size::Own` writes get a size of their own.
    fn next_content(&mut self, side: Side, path: &str, size: Size) -> String {
        self.writes += 1;
        let content = format!("write {} on the {side:?} side at {path}", self.writes);
        let width = match size {
            Size::Shared => 64,
            Size::Own => 64 + self.writes as usize,
        };
        format!("{content:.<width$}\n")
    }

    /// Writes new content at `path`, replacing what was there (and `old_time`: with the modification time every
    /// such sandbox file shares).
    fn write(&mut self, side: Side, path: &str, size: Size, old_time: bool) {
        let content = self.next_content(side, path, size);
        let full = self.root(side).join(path);
        std::fs::create_dir_all(full.parent().expect("a parent")).expect("mkdir");
        // Replace rather than truncate, as editors and tools do; a link at the path is replaced, not followed.
        let _ = std::fs::remove_file(&full);
        std::fs::write(&full, content).expect("write");
        if old_time {
            let time = filetime::FileTime::from_unix_time(SHARED_OLD_MTIME, 0);
            filetime::set_file_times(&full, time, time).expect("set the old time");
        }
    }

    fn remove(&mut self, side: Side, path: &str) {
        let _ = std::fs::remove_file(self.root(side).join(path));
    }

    fn rename(&mut self, side: Side, from: &str, to: &str) {
        let (source, destination) = (self.root(side).join(from), self.root(side).join(to));
        if from == to || std::fs::symlink_metadata(&source).is_err() {
            return;
        }
        std::fs::create_dir_all(destination.parent().expect("a parent")).expect("mkdir");
        std::fs::rename(&source, &destination).expect("rename");
    }

    fn chmod(&mut self, side: Side, path: &str, mode: u32) {
        let full = self.root(side).join(path);
        if std::fs::symlink_metadata(&full).is_ok_and(|metadata| metadata.is_file()) {
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }

    fn link(&mut self, side: Side, path: &str, target: &str) {
        let full = self.root(side).join(path);
        std::fs::create_dir_all(full.parent().expect("a parent")).expect("mkdir");
        let _ = std::fs::remove_file(&full);
        std::os::unix::fs::symlink(target, &full).expect("symlink");
    }

    /// Reads one side's tree, failing on anything that is not a model path (a temporary file left behind, an
    /// escaping link copied into the sandbox).
    fn read_tree(&self, side: Side) -> Result<Tree, String> {
        let root = self.root(side);
        let mut tree = Tree::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|error| format!("cannot list {}: {error}", dir.display()))?.flatten() {
                let full = entry.path();
                let relative = full.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
                let metadata = std::fs::symlink_metadata(&full).map_err(|error| format!("{relative}: {error}"))?;
                if metadata.is_dir() {
                    stack.push(full);
                    continue;
                }
                let node = if metadata.file_type().is_symlink() {
                    Node::Link { target: std::fs::read_link(&full).expect("readlink").to_string_lossy().into_owned() }
                } else {
                    let content = std::fs::read_to_string(&full).map_err(|error| format!("{relative}: {error}"))?;
                    Node::File { content, mode: metadata.permissions().mode() & 0o7777 }
                };
                if relative == ESCAPE_LINK && (side == Side::Workspace || self.sandbox_escape_present) {
                    continue;
                }
                if !FILE_PATHS.contains(&relative.as_str()) && !LINK_PATHS.contains(&relative.as_str()) {
                    return Err(format!("the {side:?} holds {relative:?}, which no step made: {node:?}"));
                }
                tree.insert(relative, node);
            }
        }
        Ok(tree)
    }

    fn check_outside(&self) -> Result<(), String> {
        let names: BTreeSet<String> = std::fs::read_dir(&self.outside)
            .map_err(|error| error.to_string())?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let secret = std::fs::read_to_string(self.outside.join("secret")).map_err(|error| error.to_string())?;
        if names != BTreeSet::from(["secret".to_string()]) || secret != "must never change" {
            return Err(format!("something outside both roots changed: {names:?}, {secret:?}"));
        }
        Ok(())
    }

    /// Syncs in `direction` and compares both trees, the base and the reported conflicts with the model.
    async fn sync_and_check(&mut self, direction: SyncDirection) -> Result<String, String> {
        let local = self.read_tree(Side::Workspace)?;
        let remote = self.read_tree(Side::Sandbox)?;
        let expected = self.predict(direction, &local, &remote);
        let result = self
            .sync
            .sync(direction, None, &NoProgress)
            .await
            .map_err(|error| format!("sync {direction:?} failed: {error} (kind {})", error.kind().as_str()))?;
        let local_after = self.read_tree(Side::Workspace)?;
        let remote_after = self.read_tree(Side::Sandbox)?;
        let reported: BTreeSet<String> = result.conflicts.iter().map(|conflict| conflict.path.clone()).collect();
        let mut problems = Vec::new();
        for path in FILE_PATHS.iter().chain(LINK_PATHS.iter()).map(|path| path.to_string()) {
            let outcome = &expected[&path];
            let before = format!("before: workspace {:?}, sandbox {:?}, base {:?}", local.get(&path), remote.get(&path), self.base.get(&path));
            if local_after.get(&path) != outcome.local.as_ref() {
                problems.push(format!("{path}: workspace has {:?}, the model expects {:?} ({before})", local_after.get(&path), outcome.local));
            }
            if remote_after.get(&path) != outcome.remote.as_ref() {
                problems.push(format!("{path}: sandbox has {:?}, the model expects {:?} ({before})", remote_after.get(&path), outcome.remote));
            }
            if outcome.conflict && !reported.contains(&path) {
                problems.push(format!("{path}: changed differently on both sides but not reported as a conflict ({before})"));
            }
            if reported.contains(&path) && !outcome.conflict {
                problems.push(format!("{path}: reported as a conflict, which the model does not expect ({before})"));
            }
        }
        if !problems.is_empty() {
            return Err(format!("sync {direction:?} disagrees with the model:\n  {}", problems.join("\n  ")));
        }
        for (path, outcome) in expected {
            match outcome.base {
                Some(node) => self.base.insert(path.clone(), node),
                None => self.base.remove(&path),
            };
            if outcome.conflict {
                self.held.insert(path);
            } else {
                self.held.remove(&path);
            }
        }
        self.synced_once = true;
        Ok(format!("sync {direction:?}: {} up, {} down, {} deleted, conflicts {reported:?}", result.uploaded, result.downloaded, result.deleted))
    }

    /// What a sync in `direction` must leave at each path.
    fn predict(&self, direction: SyncDirection, local: &Tree, remote: &Tree) -> BTreeMap<String, Outcome> {
        let up = direction != SyncDirection::Down;
        let down = direction != SyncDirection::Up;
        let mut outcomes = BTreeMap::new();
        for path in FILE_PATHS.iter().chain(LINK_PATHS.iter()).map(|path| path.to_string()) {
            let (l, r, b) = (local.get(&path), remote.get(&path), self.base.get(&path));
            let held = self.held.contains(&path);
            let outcome = if !self.synced_once && !down {
                // The first sync up has no common base: the workspace wins and the sandbox's other files stay.
                match l {
                    Some(node) => Outcome { local: l.cloned(), remote: Some(node.clone()), base: Some(node.clone()), conflict: false },
                    None => Outcome { local: None, remote: r.cloned(), base: None, conflict: false },
                }
            } else {
                predict_synced(up, down, held, l, r, b)
            };
            outcomes.insert(path, outcome);
        }
        outcomes
    }
}

/// What a sync must do at one path once a common base exists. `held`: the path was left in conflict before.
fn predict_synced(up: bool, down: bool, held: bool, l: Option<&Node>, r: Option<&Node>, b: Option<&Node>) -> Outcome {
    // Content, kind and a file's permission bits are all part of what changed, on either side.
    let local_changed = l != b;
    let remote_changed = r != b;
    let unchanged = Outcome { local: l.cloned(), remote: r.cloned(), base: b.cloned(), conflict: false };
    match (local_changed, remote_changed) {
        // Both sides agree now, whichever way they got there: nothing to write, nothing to hold.
        (true, true) if l == r => Outcome { base: l.cloned(), ..unchanged },
        (true, true) => Outcome { conflict: true, ..unchanged },
        // A path held in conflict is not overwritten from the workspace until the user decides.
        (true, false) if up && !held => Outcome { remote: l.cloned(), base: l.cloned(), ..unchanged },
        (false, true) if down => Outcome { local: r.cloned(), base: r.cloned(), ..unchanged },
        // A change waiting for a sync in its direction; a conflict stays reported until it is resolved.
        _ => Outcome { conflict: held, ..unchanged },
    }
}

/// What one path must look like after a sync.
#[derive(Debug)]
struct Outcome {
    local: Option<Node>,
    remote: Option<Node>,
    base: Option<Node>,
    conflict: bool,
}

/// The target of a link at `link` that names the file `file`, relative to the link's directory.
fn relative_target(link: &str, file: &str) -> String {
    let depth = link.matches('/').count();
    format!("{}{file}", "../".repeat(depth))
}

/// A sync dropped part-way (a `sandlink/sync` request cancelled with `$/cancelRequest` is dropped wherever it
/// awaits) must leave the session a base and its saves: the next sync works, finds no conflict, and its manifest
/// reaches the disk. The drops come after growing delays, so some land while the scan holds the manifest.
#[test]
fn a_sync_dropped_at_any_point_should_leave_the_session_its_base_and_its_saves() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::Builder::new().prefix("sandlink-sync-dropped-").tempdir().expect("a temporary directory");
        let workspace = dir.path().join("workspace");
        let sandbox = dir.path().join("sandbox");
        let state = dir.path().join("state");
        for index in 0..3000 {
            let path = workspace.join(format!("d{}/f{index}.txt", index % 30));
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, format!("file {index}")).expect("write");
        }
        std::fs::create_dir_all(&sandbox).expect("mkdir");
        let remote = Arc::new(LocalFiles::new(sandbox.clone(), state.join("staging")));
        let options = SyncOptions { watch: sandlink::sync::options::WatchMode::Off, ..SyncOptions::default() };
        let session_dir = state.join("session");
        let sync =
            SessionSync::new(workspace.clone(), remote, options, &session_dir, Arc::new(Observer)).expect("sync starts");
        sync.sync(SyncDirection::Up, None, &NoProgress).await.expect("the first sync");
        let saved = |name: &str| -> bool {
            let bytes = std::fs::read(session_dir.join(manifest::FILE_NAME)).expect("a saved manifest");
            manifest::decode(&bytes).expect("a whole manifest").contains_key(name)
        };
        assert!(saved("d0/f0.txt"));
        let mut dropped = 0;
        for step in 0..60u64 {
            let name = format!("new-{step}.txt");
            std::fs::write(workspace.join(&name), format!("written before drop {step}")).expect("write");
            let delay = std::time::Duration::from_micros(step * 250);
            tokio::select! {
                outcome = sync.sync(SyncDirection::Both, None, &NoProgress) => {
                    outcome.expect("a sync that was not dropped");
                }
                () = tokio::time::sleep(delay) => dropped += 1,
            }
            let result = sync.sync(SyncDirection::Both, None, &NoProgress).await.expect("the sync after a dropped one");
            assert!(result.conflicts.is_empty(), "step {step}: {:?}", result.conflicts);
            assert!(saved(&name), "step {step} ({delay:?}): the sync after a dropped one saved no manifest with {name}");
            let (placed, written) = (std::fs::read(sandbox.join(&name)), std::fs::read(workspace.join(&name)));
            assert_eq!(placed.expect("in the sandbox"), written.expect("read"), "step {step}");
        }
        assert!(dropped > 0, "no sync was dropped part-way");
        sync.stop().await;
    });
}
