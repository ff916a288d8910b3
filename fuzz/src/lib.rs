//! Helpers shared by the fuzz targets: a temporary layout with a sentinel directory beside the root, snapshots that
//! prove nothing outside the root changed, and a raw tar writer that can say what `tar::Builder` refuses to.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A fresh temporary directory holding `root` (what is written to), `staging` (temporary files) and `outside` (a
/// sentinel that must never change), plus links in `root` that lead out, so writes through them would show.
pub struct Layout {
    pub base: tempfile::TempDir,
    pub root: PathBuf,
    pub staging: PathBuf,
    pub outside: PathBuf,
}

impl Layout {
    pub fn new() -> Layout {
        let base = tempfile::Builder::new().prefix("sandlink-fuzz-").tempdir().expect("a temporary directory");
        let root = base.path().join("root");
        let staging = base.path().join("staging");
        let outside = base.path().join("outside");
        for dir in [&root, &staging, &outside.join("sub"), &root.join("dir")] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(outside.join("secret"), "SENTINEL-OUTSIDE-THE-ROOT").expect("write the sentinel");
        std::fs::write(outside.join("sub/deep"), "SENTINEL-OUTSIDE-THE-ROOT").expect("write the sentinel");
        std::fs::write(root.join("dir/file"), "inside").expect("write");
        std::fs::write(root.join("file"), "inside").expect("write");
        // Ways out that a careless writer would follow: relative, absolute, and through a link to a link.
        std::os::unix::fs::symlink("../outside", root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(&outside, root.join("absolute")).expect("symlink");
        std::os::unix::fs::symlink("escape", root.join("chain")).expect("symlink");
        std::os::unix::fs::symlink("..", root.join("dir/up")).expect("symlink");
        Layout { base, root, staging, outside }
    }

    /// What must stay the same whatever happens under `root`: the sentinel tree and the names beside the root.
    pub fn outside_state(&self) -> Snapshot {
        let mut snapshot = snapshot_tree(&self.outside);
        for entry in std::fs::read_dir(self.base.path()).expect("list the base").flatten() {
            snapshot.insert(format!("<base>/{}", entry.file_name().to_string_lossy()), "present".into());
        }
        snapshot
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

/// Path to a description of each entry (kind, size, mode, mtime, content or link target), recursively.
pub type Snapshot = BTreeMap<String, String>;

pub fn snapshot_tree(dir: &Path) -> Snapshot {
    let mut snapshot = Snapshot::new();
    walk(dir, dir, &mut snapshot);
    snapshot
}

fn walk(top: &Path, dir: &Path, snapshot: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let relative = path.strip_prefix(top).unwrap_or(&path).to_string_lossy().into_owned();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        let detail = if metadata.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&path).ok())
        } else if metadata.is_dir() {
            walk(top, &path, snapshot);
            format!("dir {:o} {}", metadata.mode(), metadata.mtime())
        } else {
            let content = std::fs::read(&path).unwrap_or_default();
            format!("file {:o} {} {}", metadata.mode(), metadata.mtime(), String::from_utf8_lossy(&content))
        };
        snapshot.insert(relative, detail);
    }
}

/// One archive entry with raw bytes for its name and link name, so paths like `../x` or `a\0b` can be expressed.
pub struct RawEntry<'a> {
    pub name: &'a [u8],
    pub entry_type: u8,
    pub link: &'a [u8],
    pub mode: u32,
    pub mtime: u64,
    pub content: &'a [u8],
}

/// Appends one entry to `archive` as a GNU tar header (with a GNU long-name entry first when the name is long).
pub fn append_raw(archive: &mut Vec<u8>, entry: &RawEntry<'_>) {
    if entry.name.len() > 100 {
        let mut long_name = entry.name.to_vec();
        long_name.push(0);
        append_header(archive, b"././@LongLink", b'L', b"", 0o644, 0, &long_name);
    }
    let name = &entry.name[..entry.name.len().min(100)];
    append_header(archive, name, entry.entry_type, entry.link, entry.mode, entry.mtime, entry.content);
}

fn append_header(archive: &mut Vec<u8>, name: &[u8], entry_type: u8, link: &[u8], mode: u32, mtime: u64, content: &[u8]) {
    let mut header = tar::Header::new_gnu();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        let link = &link[..link.len().min(100)];
        old.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(tar::EntryType::new(entry_type));
    header.set_size(content.len() as u64);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_cksum();
    archive.extend_from_slice(header.as_bytes());
    archive.extend_from_slice(content);
    let padding = (512 - content.len() % 512) % 512;
    archive.extend(std::iter::repeat_n(0u8, padding));
}

/// Ends an archive with the two zero blocks tar expects.
pub fn finish_archive(archive: &mut Vec<u8>) {
    archive.extend(std::iter::repeat_n(0u8, 1024));
}

/// Splits fuzz input into lines of tab-separated fields (bytes, not text: names may be any bytes).
pub fn lines(data: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    data.split(|byte| *byte == b'\n').map(|line| line.split(|byte| *byte == b'\t').collect())
}
