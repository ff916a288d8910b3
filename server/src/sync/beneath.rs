//! File access below a root that never passes through a symlink: every path is walked one directory at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor of the root, and the last step acts on that directory's
//! descriptor (`openat`, `renameat`, `symlinkat`, `unlinkat`). A link swapped in for a directory after a check can
//! therefore never redirect a read or a write: the walk fails at the link instead.
//!
//! `rustix` gives these calls safely; it is already in the build through `tempfile`. (`cap-std` was the other
//! candidate, but it follows links that stay inside its root, while sync must not write through any link at all.)

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};

/// Why a walk to a path's directory stopped.
#[derive(Debug)]
pub enum WalkError {
    /// This parent (relative to the root) is a symlink: nothing below it is reached through it.
    Link(String),
    /// A parent does not exist (and was not to be created).
    Missing,
    Io(io::Error),
}

impl From<rustix::io::Errno> for WalkError {
    fn from(errno: rustix::io::Errno) -> Self {
        WalkError::Io(errno.into())
    }
}

impl From<io::Error> for WalkError {
    fn from(error: io::Error) -> Self {
        WalkError::Io(error)
    }
}

/// An open root and the directories along the last path used, so files of one directory share one walk.
pub struct Beneath {
    root: OwnedFd,
    /// Open directories from the root down, with their names: a prefix of the last path walked.
    open: Vec<(String, OwnedFd)>,
    /// Whether `link_unnamed` may still try linking straight from a descriptor (it stops at the first refusal).
    links_by_descriptor: bool,
}

const DIRECTORY_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Beneath {
    /// Opens `root` (which may itself be reached through links: it is trusted, what lies below it is not).
    pub fn open(root: &Path) -> io::Result<Self> {
        let root = rustix::fs::openat(CWD, root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Beneath { root, open: Vec::new(), links_by_descriptor: true })
    }

    /// The directory that holds `relative` (`/`-separated, plain names only) and the last name, reached without
    /// following a link. With `create`, missing parents are made and a file standing where a parent must be is
    /// replaced by a directory; a link is never replaced or followed.
    pub fn parent(&mut self, relative: &str, create: bool) -> Result<(BorrowedFd<'_>, String), WalkError> {
        let (directories, name) = match relative.rsplit_once('/') {
            Some((parent, name)) => (parent.split('/').collect::<Vec<_>>(), name),
            None => (Vec::new(), relative),
        };
        let mut kept = 0;
        while kept < self.open.len() && kept < directories.len() && self.open[kept].0 == directories[kept] {
            kept += 1;
        }
        self.open.truncate(kept);
        for (index, part) in directories.iter().enumerate().skip(kept) {
            let parent = self.open.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let opened = match rustix::fs::openat(parent, *part, DIRECTORY_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(errno) => {
                    let prefix = || directories[..=index].join("/");
                    match rustix::fs::statat(parent, *part, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                            return Err(WalkError::Link(prefix()))
                        }
                        Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::Directory && create => {
                            rustix::fs::unlinkat(parent, *part, AtFlags::empty())?;
                            make_directory(parent, part)?;
                        }
                        // Made meanwhile (by another thread of the same upload): open it as it is now.
                        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory && errno == rustix::io::Errno::NOENT => {}
                        Ok(_) => return Err(WalkError::Io(errno.into())),
                        Err(rustix::io::Errno::NOENT) if create => make_directory(parent, part)?,
                        Err(rustix::io::Errno::NOENT) => return Err(WalkError::Missing),
                        Err(other) => return Err(other.into()),
                    }
                    rustix::fs::openat(parent, *part, DIRECTORY_FLAGS, Mode::empty())?
                }
            };
            self.open.push((part.to_string(), opened));
        }
        let directory = self.open.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
        Ok((directory, name.to_string()))
    }

    /// Drops cached directories at or below `relative`, after it was removed or replaced.
    fn forget(&mut self, relative: &str) {
        let depth = relative.split('/').count();
        if self.open.len() >= depth {
            self.open.truncate(depth - 1);
        }
    }

    /// `lstat` of `relative`; `None` when it or a parent is missing, or a parent is a link.
    pub fn lstat(&mut self, relative: &str) -> io::Result<Option<Stat>> {
        let (directory, name) = match self.parent(relative, false) {
            Ok(found) => found,
            Err(WalkError::Link(_) | WalkError::Missing) => return Ok(None),
            Err(WalkError::Io(error)) => return Err(error),
        };
        match rustix::fs::statat(directory, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// The target of the symlink at `relative`, as bytes.
    pub fn read_link(&mut self, relative: &str) -> Result<Vec<u8>, WalkError> {
        let (directory, name) = self.parent(relative, false)?;
        Ok(rustix::fs::readlinkat(directory, name.as_str(), Vec::new())?.into_bytes())
    }

    /// Opens the regular file at `relative` for reading. `Ok(None)` when it is a symlink (never followed), not a
    /// regular file, or gone; a FIFO swapped in is opened without blocking and then refused.
    pub fn open_file(&mut self, relative: &str) -> Result<Option<File>, WalkError> {
        Ok(self.open_file_looked(relative)?.map(|(file, _)| file))
    }

    /// `open_file`, with the `fstat` it checked the file by, so a caller needs no second one.
    pub fn open_file_looked(&mut self, relative: &str) -> Result<Option<(File, std::fs::Metadata)>, WalkError> {
        let (directory, name) = match self.parent(relative, false) {
            Ok(found) => found,
            Err(WalkError::Missing) => return Ok(None),
            Err(error) => return Err(error),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::openat(directory, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => {
                let file = File::from(fd);
                let metadata = file.metadata()?;
                Ok(metadata.is_file().then_some((file, metadata)))
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::MLINK) => {
                Ok(None)
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Opens a new file with no name in the directory that will hold `relative` (made if missing, never through a
    /// link), for writing and reading back; `Ok(None)` where the file system cannot make unnamed files (`O_TMPFILE`).
    /// Nothing of it is visible until `link_unnamed` names it, and a kill before that leaves nothing behind.
    pub fn create_unnamed(&mut self, relative: &str, mode: u32) -> Result<Option<File>, WalkError> {
        let (directory, _) = self.parent(relative, true)?;
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        match rustix::fs::openat(directory, ".", flags, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {
                Ok(None)
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Creates the file `relative` for writing, only where nothing stands yet (`O_EXCL`, never through a link);
    /// `None` when something does. For a sandbox nothing can look into yet (`PlaceSink::fresh`), where a file may be
    /// written under its own name.
    pub fn create_new(&mut self, relative: &str, mode: u32) -> Result<Option<File>, WalkError> {
        let (directory, name) = self.parent(relative, true)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(directory, name.as_str(), flags, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::EXIST) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Removes the file `relative` made by `create_new` whose writing failed (a directory is left alone).
    pub fn unlink_file(&mut self, relative: &str) -> Result<(), WalkError> {
        let (directory, name) = self.parent(relative, false)?;
        rustix::fs::unlinkat(directory, name.as_str(), AtFlags::empty())?;
        Ok(())
    }

    /// Gives a file from `create_unnamed` the name `relative`, which must not exist yet: the complete file appears
    /// at once. Answers `Linked::Exists` when something stands there (the caller replaces it by a rename instead)
    /// and `Linked::Unsupported` where the file cannot be named through `/proc` (no `/proc` mounted).
    pub fn link_unnamed(&mut self, file: &File, relative: &str) -> Result<Linked, WalkError> {
        if self.links_by_descriptor {
            // Straight from the descriptor, which needs `CAP_DAC_READ_SEARCH` (root has it): no `/proc` path to
            // resolve. Without it the kernel refuses (ENOENT), and this and every later file go through `/proc`.
            let (directory, name) = self.parent(relative, false)?;
            match rustix::fs::linkat(file, "", directory, name.as_str(), AtFlags::EMPTY_PATH) {
                Ok(()) => return Ok(Linked::Named),
                Err(rustix::io::Errno::EXIST) => return Ok(Linked::Exists),
                Err(_) => self.links_by_descriptor = false,
            }
        }
        let (directory, name) = self.parent(relative, false)?;
        link_through_proc(file, directory, &name)
    }

    /// Moves the file at `source` (an absolute path in a trusted staging directory) to `relative`, replacing what is
    /// there (a directory is removed first). Fails with `CrossesDevices` when a rename cannot work.
    pub fn rename_into(&mut self, source: &Path, relative: &str) -> Result<(), WalkError> {
        self.clear_directory_at(relative)?;
        let (directory, name) = self.parent(relative, true)?;
        rustix::fs::renameat(CWD, source, directory, name.as_str())?;
        Ok(())
    }

    /// Creates a new file beside `relative` (same directory, a temporary name) for writing; answers it and its name.
    pub fn create_beside(&mut self, relative: &str, mode: u32) -> Result<(File, String), WalkError> {
        let (directory, _) = self.parent(relative, true)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let temporary = format!(".sandlink-{}", crate::ids::short_id());
            match rustix::fs::openat(directory, temporary.as_str(), flags, Mode::from_raw_mode(mode & 0o7777)) {
                Ok(fd) => return Ok((File::from(fd), temporary)),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Renames `temporary` (made by `create_beside` or `symlink_beside`) over `relative` in the same directory.
    pub fn rename_beside(&mut self, temporary: &str, relative: &str) -> Result<(), WalkError> {
        self.clear_directory_at(relative)?;
        let (directory, name) = self.parent(relative, true)?;
        if let Err(errno) = rustix::fs::renameat(directory, temporary, directory, name.as_str()) {
            let _ = rustix::fs::unlinkat(directory, temporary, AtFlags::empty());
            return Err(errno.into());
        }
        Ok(())
    }

    /// Creates the symlink `relative` -> `target`, atomically replacing what is there (never following it).
    pub fn symlink(&mut self, target: &str, relative: &str) -> Result<(), WalkError> {
        let (directory, _) = self.parent(relative, true)?;
        let temporary = format!(".sandlink-{}", crate::ids::short_id());
        rustix::fs::symlinkat(target, directory, temporary.as_str())?;
        self.rename_beside(&temporary, relative)
    }

    /// Removes what is at `relative` (a directory with everything in it); `false` when there was nothing, or a parent
    /// is a link (nothing below a link is touched).
    pub fn remove(&mut self, relative: &str) -> io::Result<bool> {
        let (directory, name) = match self.parent(relative, false) {
            Ok(found) => found,
            Err(WalkError::Link(_) | WalkError::Missing) => return Ok(false),
            Err(WalkError::Io(error)) => return Err(error),
        };
        let removed = match rustix::fs::statat(directory, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                remove_tree(directory, &name)?;
                true
            }
            Ok(_) => {
                rustix::fs::unlinkat(directory, name.as_str(), AtFlags::empty())?;
                true
            }
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => false,
            Err(errno) => return Err(errno.into()),
        };
        self.forget(relative);
        Ok(removed)
    }

    /// Removes a directory standing at `relative`, so a file or link can take its place.
    fn clear_directory_at(&mut self, relative: &str) -> Result<(), WalkError> {
        if self.lstat(relative)?.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory) {
            self.remove(relative)?;
        }
        Ok(())
    }
}

/// `Beneath::link_unnamed` by the file's `/proc/self/fd` name, which any user may link from.
fn link_through_proc(file: &File, directory: BorrowedFd<'_>, name: &str) -> Result<Linked, WalkError> {
    match rustix::fs::linkat(CWD, proc_fd_path(file).as_str(), directory, name, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(Linked::Named),
        Err(rustix::io::Errno::EXIST) => Ok(Linked::Exists),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM | rustix::io::Errno::ACCESS | rustix::io::Errno::XDEV) => {
            Ok(Linked::Unsupported)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// What `Beneath::link_unnamed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    Named,
    Exists,
    Unsupported,
}

/// The `/proc` path through which an unnamed file (`O_TMPFILE`) is given a name without extra privileges.
pub fn proc_fd_path(file: &File) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

fn make_directory(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Removes the directory `name` in `parent` and everything in it, descending by descriptor, never through a link.
fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::other("a file name holds a NUL byte"))?;
    remove_tree_c(parent, &name)
}

/// `remove_tree` by a C name, which need not be UTF-8 (whatever a sandbox left in a directory being replaced).
fn remove_tree_c(parent: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<()> {
    let directory = rustix::fs::openat(parent, name, DIRECTORY_FLAGS, Mode::empty())?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&directory)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes != b"." && bytes != b".." {
            children.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (child, kind) in children {
        let is_directory = match kind {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(&directory, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_directory {
            remove_tree_c(directory.as_fd(), &child)?;
        } else {
            rustix::fs::unlinkat(&directory, child.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_should_stop_at_a_link_and_never_write_through_it() {
        let root = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        let mut beneath = Beneath::open(root.path()).expect("open the root");
        let (file, temporary) = match beneath.create_beside("escape/pwned", 0o644) {
            Err(WalkError::Link(link)) => {
                assert_eq!(link, "escape");
                (None, String::new())
            }
            Ok((file, temporary)) => (Some(file), temporary),
            Err(other) => panic!("unexpected {other:?}"),
        };
        assert!(file.is_none(), "no file was created through the link ({temporary})");
        assert!(matches!(beneath.symlink("x", "escape/l"), Err(WalkError::Link(_))));
        assert!(!beneath.remove("escape/anything").expect("remove answers"));
        assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0, "nothing appeared outside");
    }

    #[test]
    fn writes_should_replace_directories_and_files_in_place() {
        let root = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        std::fs::write(root.path().join("a/b/inner"), "x").expect("write");
        std::fs::write(root.path().join("file"), "x").expect("write");
        let mut beneath = Beneath::open(root.path()).expect("open the root");
        beneath.symlink("target", "a").expect("a link replaces a directory");
        assert_eq!(std::fs::read_link(root.path().join("a")).expect("readlink"), Path::new("target"));
        let (mut file, temporary) = beneath.create_beside("file/inside", 0o600).expect("a file becomes a directory");
        std::io::Write::write_all(&mut file, b"hello").expect("write");
        beneath.rename_beside(&temporary, "file/inside").expect("rename");
        assert_eq!(std::fs::read_to_string(root.path().join("file/inside")).expect("read"), "hello");
        let mut read = String::new();
        std::io::Read::read_to_string(&mut beneath.open_file("file/inside").expect("open").expect("a file"), &mut read).expect("read");
        assert_eq!(read, "hello");
        assert!(beneath.open_file("a").expect("open answers").is_none(), "a link is not opened");
    }
}
