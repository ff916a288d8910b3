//! Removing ended sessions' directories off the user's path: moved into the state directory's `trash/` at once, then removed by a detached, low-priority `sandlink empty-trash`.
//!
//! A session's copy of a big workspace takes as long to remove as to make (50 ms for 20,000 files in memory, more
//! on disk), and nobody waits for it: `sandlink sync` and `sandlink run` would otherwise end that much later, and an
//! editor's disconnect would answer late. The rename takes the directory out of every path a session uses in one
//! step (its runs are already ended), so nothing can reach it by its old name after `disconnect` answers. The remover
//! runs in its own process so it finishes when the command that started it has exited, at a lower priority so it
//! yields to the user's next command, and one at a time under a lock. Whatever a kill cut short is removed when the
//! next sandlink starts (`Driver::clean_up_after_crash`).

use std::io;
use std::path::{Path, PathBuf};

use super::files::remove_on_every_core;

/// The trash of the state directory `state_dir`; it lies beside `sessions/`, so the sandboxes cannot see it either.
pub fn trash_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trash")
}

/// The lock a remover holds while it empties the trash, so two never remove the same tree at once.
const LOCK_NAME: &str = ".remover.lock";

/// Niceness of the remover: it yields to whatever the user runs next.
const REMOVER_NICENESS: i32 = 10;

/// Takes the directory `dir` (a session's) out of use: moved into the trash of `state_dir` and removed there by a
/// detached remover. Where it cannot be moved (another file system, a trash that cannot be made), it is removed
/// here and now, as before. A `dir` already gone is fine.
pub fn discard(dir: &Path, state_dir: &Path) -> io::Result<()> {
    discard_with(dir, state_dir, start_remover)
}

/// [`discard`], with `start_remover` the step that starts the remover for a state directory (the tests watch it).
fn discard_with(dir: &Path, state_dir: &Path, start_remover: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let entries = entries_up_to(dir, INLINE_ENTRIES);
    if entries <= INLINE_ENTRIES {
        // Removed faster than a remover process would start; a small tree faster still by this thread alone than
        // by threads started for it (a 60-entry session directory: 1 ms with them).
        let removed = if entries <= ONE_THREAD_ENTRIES { std::fs::remove_dir_all(dir) } else { remove_on_every_core(dir) };
        return match removed {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    }
    let trash = trash_dir(state_dir);
    let name = format!("{}-{}", dir.file_name().map(|name| name.to_string_lossy()).unwrap_or_default(), crate::ids::short_id());
    let moved = std::fs::create_dir_all(&trash).and_then(|()| std::fs::rename(dir, trash.join(name)));
    match moved {
        Ok(()) => {
            if let Err(error) = start_remover(state_dir) {
                // Left for the next sandlink to start, which removes what is in the trash.
                tracing::warn!(%error, "could not start removing an ended session's directory; the next sandlink start will");
            }
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound && !dir.exists() => Ok(()),
        Err(error) => {
            tracing::debug!(%error, "could not move a session directory into the trash; removing it in place");
            remove_on_every_core(dir)
        }
    }
}

/// Up to this many entries a session directory is removed in place: a remover process costs a millisecond or two to
/// start, about what removing that many entries costs.
const INLINE_ENTRIES: usize = 2_000;

/// Up to this many entries one thread removes a session directory; more are shared among the cores.
const ONE_THREAD_ENTRIES: usize = 500;

/// How many entries the tree at `dir` holds, counted from directory listings alone (no `stat`), and only until the
/// count passes `limit` (then `limit + 1`).
fn entries_up_to(dir: &Path, limit: usize) -> usize {
    let mut count = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else { continue };
        for entry in entries.flatten() {
            count += 1;
            if count > limit {
                return count;
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    count
}

/// Starts a detached `sandlink empty-trash` for `state_dir`, in a process group of its own (a terminal's Ctrl-C
/// for the command that started it does not stop it), with no standard streams. A thread reaps it, so a server that
/// lives on keeps no zombie; a command that exits first leaves it to finish on its own.
pub fn start_remover(state_dir: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let program = std::env::current_exe()?;
    let mut child = std::process::Command::new(program)
        .arg("empty-trash")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    std::thread::Builder::new().name("trash-reaper".into()).spawn(move || child.wait())?;
    Ok(())
}

/// Whether the trash of `state_dir` holds anything to remove.
pub fn has_leftovers(state_dir: &Path) -> bool {
    std::fs::read_dir(trash_dir(state_dir))
        .map(|entries| entries.flatten().any(|entry| entry.file_name() != LOCK_NAME))
        .unwrap_or(false)
}

/// `sandlink empty-trash`: removes everything in the trash of `state_dir`, under the remover's lock (waiting for a
/// remover already at work), at a lower priority, until the trash is empty.
pub fn empty(state_dir: &Path) -> io::Result<()> {
    // SAFETY: setpriority only changes this process's scheduling priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, REMOVER_NICENESS);
    }
    let trash = trash_dir(state_dir);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(trash.join(LOCK_NAME))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    // Removed one by one: what was moved in while this one worked is found on the next look.
    loop {
        let entries: Vec<PathBuf> = std::fs::read_dir(&trash)?
            .flatten()
            .filter(|entry| entry.file_name() != LOCK_NAME)
            .map(|entry| entry.path())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            let is_directory = std::fs::symlink_metadata(&entry).is_ok_and(|metadata| metadata.is_dir());
            let removed = if is_directory { remove_on_every_core(&entry) } else { std::fs::remove_file(&entry) };
            match removed {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io::Error::new(error.kind(), format!("could not remove {}: {error}", entry.display()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptying_the_trash_should_remove_every_tree_in_it_and_nothing_a_link_leads_to() {
        let state = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        std::fs::write(outside.path().join("keep"), "outside").expect("write");
        for session in ["local-a", "local-b"] {
            let dir = state.path().join("sessions").join(session);
            std::fs::create_dir_all(dir.join("root/src")).expect("mkdir");
            std::fs::write(dir.join("root/src/file"), "x").expect("write");
            std::os::unix::fs::symlink(outside.path(), dir.join("root/link")).expect("symlink");
            let trash = trash_dir(state.path());
            std::fs::create_dir_all(&trash).expect("mkdir");
            std::fs::rename(&dir, trash.join(session)).expect("moved into the trash");
        }
        assert!(has_leftovers(state.path()));
        empty(state.path()).expect("emptied");
        assert!(!has_leftovers(state.path()), "the trash is empty");
        assert_eq!(std::fs::read_to_string(outside.path().join("keep")).expect("read"), "outside", "what a link led to is untouched");
    }

    #[test]
    fn a_small_session_directory_should_be_removed_in_place_and_a_big_one_moved_to_the_trash() {
        let state = tempfile::tempdir().expect("a temp dir");
        let small = state.path().join("sessions/local-small");
        std::fs::create_dir_all(small.join("root/src")).expect("mkdir");
        std::fs::write(small.join("root/src/a"), "a").expect("write");
        discard_with(&small, state.path(), |_| panic!("a small directory needs no remover")).expect("discarded");
        assert!(!small.exists());
        assert!(!trash_dir(state.path()).exists(), "a small directory never goes through the trash");

        // Between one thread's share and the remover's: removed in place, on every core.
        let middle = state.path().join("sessions/local-middle");
        for index in 0..ONE_THREAD_ENTRIES + 100 {
            let file = middle.join(format!("root/d{}/sub/f{index}", index % 10));
            std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
            std::fs::write(file, "x").expect("write");
        }
        discard_with(&middle, state.path(), |_| panic!("a directory of this size needs no remover")).expect("discarded");
        assert!(!middle.exists());
        assert!(!trash_dir(state.path()).exists(), "nor does a middle-sized one");

        let big = state.path().join("sessions/local-big");
        for index in 0..INLINE_ENTRIES {
            let file = big.join(format!("root/d{}/f{index}", index % 10));
            std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
            std::fs::write(file, "x").expect("write");
        }
        assert_eq!(entries_up_to(&big, INLINE_ENTRIES), INLINE_ENTRIES + 1);
        assert!(entries_up_to(&big, INLINE_ENTRIES + 20) <= INLINE_ENTRIES + 20);
        // Moved at once, and a remover asked for; this test empties the trash as that `sandlink empty-trash` would
        // (the real one is run by the CLI tests).
        let mut removers_asked_for = Vec::new();
        discard_with(&big, state.path(), |state_dir| {
            removers_asked_for.push(state_dir.to_path_buf());
            Ok(())
        })
        .expect("discarded");
        assert!(!big.exists(), "the session's directory is out of use at once");
        assert_eq!(removers_asked_for, vec![state.path().to_path_buf()], "one remover, for this state directory");
        assert!(has_leftovers(state.path()));
        empty(state.path()).expect("emptied");
        assert!(!has_leftovers(state.path()));
    }

    #[test]
    fn a_directory_that_cannot_be_moved_should_be_removed_in_place() {
        let state = tempfile::tempdir().expect("a temp dir");
        let dir = state.path().join("sessions/local-c");
        for index in 0..=INLINE_ENTRIES {
            std::fs::create_dir_all(dir.join(format!("root/d{}", index % 10))).expect("mkdir");
            std::fs::write(dir.join(format!("root/d{}/f{index}", index % 10)), "x").expect("write");
        }
        // A file where the trash directory would be: the move fails, the removal happens here.
        std::fs::write(trash_dir(state.path()), "not a directory").expect("write");
        discard_with(&dir, state.path(), |_| panic!("nothing was moved, so no remover")).expect("discarded");
        assert!(!dir.exists());
        discard(&dir, state.path()).expect("a directory already gone is fine");
    }
}
