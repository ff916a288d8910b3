//! Walking a directory tree on every core: the workspace for a scan, the local sandbox for a listing.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, CWD};

/// One directory as the walk read it: its descriptor, for looking at entries by name, and its entries.
pub struct Listed<'a> {
    /// Relative to the walk's root, `/`-separated; `""` for the root.
    pub relative: &'a str,
    /// The directory's absolute path.
    pub path: &'a Path,
    pub descriptor: &'a OwnedFd,
    /// The entries' names, each ending in a NUL, one after another (one buffer per thread, not one per name).
    names: &'a [u8],
    /// Where each entry's name starts in `names`, and the type the directory told (`Unknown` on file systems that
    /// do not tell).
    kinds: &'a [(usize, FileType)],
}

impl<'a> Listed<'a> {
    /// Each entry's name and the type the directory told.
    pub fn entries(&self) -> impl Iterator<Item = (&'a CStr, FileType)> + 'a {
        let names = self.names;
        self.kinds.iter().map(move |(start, kind)| {
            // Every name was copied in with its NUL (see `read_directory`).
            let name = CStr::from_bytes_until_nul(&names[*start..]).unwrap_or_default();
            (name, *kind)
        })
    }

    /// Whether an entry is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.entries().any(|(listed, _)| listed.to_bytes() == name.as_bytes())
    }

    /// The relative path of the entry `name` in this directory.
    pub fn child(&self, name: &str) -> String {
        if self.relative.is_empty() {
            return name.to_string();
        }
        let mut child = String::with_capacity(self.relative.len() + 1 + name.len());
        child.push_str(self.relative);
        child.push('/');
        child.push_str(name);
        child
    }
}

/// Walks the tree under `root` from the directory `start` (relative, `""` for `root` itself). Each thread (one per
/// core) takes the next directory waiting, opens it without following a link, reads its entries and hands them to
/// `visit` with its own state from `state`; `visit` answers the directories in it to walk next (relative paths).
/// Answers every thread's state, and the directories that could not be read (the caller decides whether that
/// fails the walk), with why.
pub fn walk_tree<S: Send>(
    root: &Path,
    start: &str,
    state: impl Fn() -> S + Sync,
    visit: impl Fn(&mut S, &Listed<'_>) -> Vec<String> + Sync,
) -> (Vec<S>, Vec<(String, rustix::io::Errno)>) {
    walk_tree_finishing(root, start, state, visit, |_| {})
}

/// `walk_tree`, and `finish` on each thread's state on that thread once the walk is over: work on what each thread
/// found (sorting it) then runs on every core, where after the walk it would run on one.
pub fn walk_tree_finishing<S: Send>(
    root: &Path,
    start: &str,
    state: impl Fn() -> S + Sync,
    visit: impl Fn(&mut S, &Listed<'_>) -> Vec<String> + Sync,
    finish: impl Fn(&mut S) + Sync,
) -> (Vec<S>, Vec<(String, rustix::io::Errno)>) {
    let queue = DirectoryQueue::new(Waiting { relative: start.to_string(), parent: None });
    let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 4);
    let walk_one = || {
        let mut own = state();
        let mut unreadable = Vec::new();
        let mut buffer = vec![std::mem::MaybeUninit::<u8>::uninit(); DIRECTORY_BUFFER];
        let (mut names, mut kinds) = (Vec::new(), Vec::new());
        while let Some(Waiting { relative, parent }) = queue.take() {
            let path = if relative.is_empty() { root.to_path_buf() } else { root.join(&relative) };
            let opened = match &parent {
                // Through the descriptor of the directory it was listed in: were a directory on the way swapped for a
                // link since (a process in the sandbox can), the walk still never leaves the tree.
                Some(parent) => open_directory(parent, relative.rsplit('/').next().unwrap_or(&relative)),
                None => open_directory(CWD, &path),
            };
            let subdirectories = match opened.and_then(|descriptor| {
                read_directory(&descriptor, &mut buffer, &mut names, &mut kinds).map(|()| descriptor)
            }) {
                Ok(descriptor) => {
                    let listed = Listed { relative: &relative, path: &path, descriptor: &descriptor, names: &names, kinds: &kinds };
                    let subdirectories = visit(&mut own, &listed);
                    // Kept open (shared) until the last directory in it has been opened.
                    let descriptor = std::sync::Arc::new(descriptor);
                    subdirectories
                        .into_iter()
                        .map(|relative| Waiting { relative, parent: Some(descriptor.clone()) })
                        .collect()
                }
                Err(error) => {
                    unreadable.push((relative, error));
                    Vec::new()
                }
            };
            drop(parent);
            queue.done(subdirectories);
        }
        finish(&mut own);
        (own, unreadable)
    };
    let outcomes = if threads == 1 {
        vec![walk_one()]
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(walk_one)).collect();
            workers.into_iter().filter_map(|worker| worker.join().ok()).collect()
        })
    };
    let mut states = Vec::with_capacity(outcomes.len());
    let mut unreadable = Vec::new();
    for (state, failed) in outcomes {
        states.push(state);
        unreadable.extend(failed);
    }
    (states, unreadable)
}

/// The buffer each walking thread reads directories through: most directories in one `getdents` call.
const DIRECTORY_BUFFER: usize = 32 * 1024;

/// A directory waiting to be read: its path from the walk's root, and the directory it was listed in (`None` for the
/// start, opened by its path).
struct Waiting {
    relative: String,
    parent: Option<std::sync::Arc<OwnedFd>>,
}

/// Opens the directory `name` in `parent` without following a link at that step.
fn open_directory(parent: impl std::os::fd::AsFd, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(parent, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// Reads a directory's entries through `buffer` into `names` and `kinds` (as `Listed` holds them), which are emptied
/// first and keep their memory for the next.
fn read_directory(
    descriptor: &OwnedFd,
    buffer: &mut [std::mem::MaybeUninit<u8>],
    names: &mut Vec<u8>,
    kinds: &mut Vec<(usize, FileType)>,
) -> rustix::io::Result<()> {
    names.clear();
    kinds.clear();
    let mut reader = rustix::fs::RawDir::new(descriptor, buffer);
    while let Some(entry) = reader.next() {
        let entry = entry?;
        if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            kinds.push((names.len(), entry.file_type()));
            names.extend_from_slice(entry.file_name().to_bytes_with_nul());
        }
    }
    Ok(())
}

/// The directories waiting to be read, shared by the walking threads; the walk is over when none waits and no
/// thread is reading one (which could still add more).
struct DirectoryQueue {
    /// Waiting directories, and how many are being read.
    state: std::sync::Mutex<(Vec<Waiting>, usize)>,
    changed: std::sync::Condvar,
}

impl DirectoryQueue {
    fn new(start: Waiting) -> Self {
        DirectoryQueue { state: std::sync::Mutex::new((vec![start], 0)), changed: std::sync::Condvar::new() }
    }

    /// The next directory to read, or `None` once the walk is over.
    fn take(&self) -> Option<Waiting> {
        let mut state = crate::locks::lock(&self.state);
        loop {
            if let Some(directory) = state.0.pop() {
                state.1 += 1;
                return Some(directory);
            }
            if state.1 == 0 {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// A directory was read, with these directories in it.
    fn done(&self, subdirectories: Vec<Waiting>) {
        let mut state = crate::locks::lock(&self.state);
        state.1 -= 1;
        let wake = !subdirectories.is_empty() || state.1 == 0;
        state.0.extend(subdirectories);
        drop(state);
        if wake {
            self.changed.notify_all();
        }
    }
}

/// `items` (a walk's findings, in whatever order its threads found them) sorted by `path`, stably. Only indices move
/// while sorting, then each item is swapped into place once, in the same vector: a listing's entries are big (a path,
/// a stamp, a link target), and a sort of the entries themselves moved each one a dozen times (a tenth of an
/// unchanged two-way sync's time).
pub fn sorted_by_path<T>(mut items: Vec<T>, path: impl Fn(&T) -> &str) -> Vec<T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|left, right| path(&items[*left]).cmp(path(&items[*right])));
    // Position `i` takes the item at `order[i]`: each cycle of that permutation is walked once, carrying its first
    // item along until it lands where the cycle closes. A walked position is marked with `usize::MAX`.
    for start in 0..order.len() {
        let mut current = start;
        while order[current] != usize::MAX {
            let next = std::mem::replace(&mut order[current], usize::MAX);
            if next == start {
                break;
            }
            items.swap(current, next);
            current = next;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_by_path_should_order_byte_wise_and_keep_equal_paths_in_their_order() {
        let items = vec![("b/c", 1), ("a", 2), ("b", 3), ("a", 4), ("", 5), ("b/c", 6), ("a/z", 7), ("a.b", 8)];
        let sorted = sorted_by_path(items, |(path, _)| path);
        assert_eq!(sorted, vec![("", 5), ("a", 2), ("a", 4), ("a.b", 8), ("a/z", 7), ("b", 3), ("b/c", 1), ("b/c", 6)]);
        assert!(sorted_by_path(Vec::<(&str, u8)>::new(), |(path, _)| path).is_empty());
        // Many cycles of every length: the same as a stable sort of the items themselves.
        let mut seed = 0x2545_f491_u64;
        let items: Vec<(String, usize)> = (0..2_000)
            .map(|index| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (format!("d{}/f{}", (seed >> 33) % 40, (seed >> 20) % 300), index)
            })
            .collect();
        let mut expected = items.clone();
        expected.sort_by(|left, right| left.0.cmp(&right.0));
        assert_eq!(sorted_by_path(items, |(path, _)| path), expected);
    }

    #[test]
    fn a_walk_should_visit_every_directory_once_and_never_follow_a_link() {
        let root = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(outside.path().join("beyond")).expect("mkdir");
        let mut expected = vec![String::new()];
        for index in 0..40 {
            let directory = format!("a{}/b{index}", index % 4);
            std::fs::create_dir_all(root.path().join(&directory)).expect("mkdir");
            std::fs::write(root.path().join(&directory).join("file"), "x").expect("write");
            expected.push(directory);
        }
        expected.extend((0..4).map(|index| format!("a{index}")));
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).expect("symlink");
        let (visited, unreadable) = walk_tree(root.path(), "", Vec::new, |seen: &mut Vec<String>, listed| {
            seen.push(listed.relative.to_string());
            listed
                .entries()
                .filter(|(_, kind)| *kind == FileType::Directory)
                .map(|(name, _)| listed.child(name.to_str().expect("a UTF-8 name")))
                .chain(listed.has("link").then(|| "link".to_string()))
                .collect()
        });
        assert_eq!(unreadable.len(), 1, "the link is refused as a directory: {unreadable:?}");
        let mut visited: Vec<String> = visited.into_iter().flatten().collect();
        visited.sort();
        expected.sort();
        assert_eq!(visited, expected, "each directory once; the link, though handed back, is not entered");
    }

    #[test]
    fn finishing_should_run_once_on_each_thread_after_its_walk() {
        let root = tempfile::tempdir().expect("a temp dir");
        for index in 0..64 {
            std::fs::create_dir_all(root.path().join(format!("d{}/e{index}", index % 8))).expect("mkdir");
        }
        let (states, unreadable) = walk_tree_finishing(
            root.path(),
            "",
            || (Vec::new(), 0, std::thread::current().id()),
            |(seen, _, _): &mut (Vec<String>, usize, _), listed| {
                seen.push(listed.relative.to_string());
                listed.entries().map(|(name, _)| listed.child(name.to_str().expect("UTF-8"))).collect()
            },
            |(seen, finished, made_on)| {
                assert_eq!(*made_on, std::thread::current().id(), "finished on the thread that walked");
                seen.sort();
                *finished += 1;
            },
        );
        assert!(unreadable.is_empty());
        assert!(states.iter().all(|(_, finished, _)| *finished == 1), "each thread's state finished once");
        assert!(states.iter().all(|(seen, _, _)| seen.is_sorted()), "each thread's findings sorted by its finish");
        assert_eq!(states.iter().map(|(seen, _, _)| seen.len()).sum::<usize>(), 1 + 8 + 64, "every directory once");
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_it_was_listed_should_not_lead_the_walk_outside() {
        // What a process in the sandbox could do between the listing of `a` and the opening of `a/b`: move `a` away
        // and put a link to somewhere else in its place. Opened by its path, `a/b` would then be `outside/b`.
        let root = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        std::fs::write(root.path().join("a/b/mine"), "x").expect("write");
        std::fs::create_dir_all(outside.path().join("b")).expect("mkdir");
        std::fs::write(outside.path().join("b/secret"), "s").expect("write");
        let swap = || {
            std::fs::rename(root.path().join("a"), root.path().join("moved")).expect("rename");
            std::os::unix::fs::symlink(outside.path(), root.path().join("a")).expect("symlink");
        };
        let (seen, unreadable) = walk_tree(root.path(), "", Vec::new, |seen: &mut Vec<String>, listed| {
            seen.extend(listed.entries().map(|(name, _)| listed.child(name.to_str().expect("UTF-8"))));
            if listed.relative == "a" {
                swap();
            }
            match listed.relative {
                "" => vec!["a".to_string()],
                "a" => vec!["a/b".to_string()],
                _ => Vec::new(),
            }
        });
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let mut seen: Vec<String> = seen.into_iter().flatten().collect();
        seen.sort();
        assert_eq!(seen, ["a", "a/b", "a/b/mine"], "the directory that was listed, never what the link points to");
    }
}
