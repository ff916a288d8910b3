//! Fuzzes the sync tar writer: a tree described by the input is packed with `pack` (paths filtered the way its
//! callers filter them), then read back with `unpack_atomically` and with `stage` + `place`. Packing never panics,
//! never reads outside the root (the sentinel's content never appears in an archive), and what was packed arrives
//! intact: same content, mode and link target.
//!
//! Input lines, tab-separated: `file<TAB>path<TAB>octal mode<TAB>content`, `link<TAB>path<TAB>target`,
//! `dir<TAB>path`, `pack<TAB>path` (a path to pack; when none is given, every path named in the input is packed).
#![no_main]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sandlink::sync::beneath::Beneath;
use sandlink::sync::resolve;
use sandlink::sync::scan::check_relative;
use sandlink::sync::transfer::{self, Sent};
use sandlink::sync::{EntryKind, PERMISSION_BITS};
use sandlink_fuzz::{lines, Layout};

fuzz_target!(|data: &[u8]| {
    let layout = Layout::new();
    let mut named = Vec::new();
    let mut to_pack = Vec::new();
    for fields in lines(data).take(64) {
        let text = |index: usize| fields.get(index).map(|field| String::from_utf8_lossy(field).into_owned()).unwrap_or_default();
        let path = text(1);
        match fields.first().copied().unwrap_or_default() {
            b"file" => {
                let mode = u32::from_str_radix(&text(2), 8).unwrap_or(0o644) & 0o7777;
                if create_parents(&layout.root, &path) {
                    let full = layout.root.join(&path);
                    if std::fs::write(&full, fields.get(3).copied().unwrap_or_default()).is_ok() {
                        let _ = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode));
                    }
                }
                named.push(path);
            }
            b"link" => {
                if create_parents(&layout.root, &path) {
                    let _ = std::os::unix::fs::symlink(text(2), layout.root.join(&path));
                }
                named.push(path);
            }
            b"dir" => {
                if create_parents(&layout.root, &format!("{path}/x")) {
                    named.push(path);
                }
            }
            b"pack" => to_pack.push(path),
            _ => {}
        }
    }
    if to_pack.is_empty() {
        to_pack = named;
    }
    // As the callers do: the session packs only scanned (plain, relative) paths, and the local driver's download
    // drops paths that fail `check_relative` or lie under a symlinked directory.
    to_pack.retain(|path| check_relative(path).is_ok() && resolve::parents_are_real_dirs(&layout.root, path));
    // Links placed by the layout (escape, absolute, chain) lead outside: packing them must not read through them.
    to_pack.extend(["escape/secret", "absolute/secret", "chain/secret", "escape", "absolute", "chain", "dir/up"].map(String::from));
    to_pack.retain(|path| resolve::parents_are_real_dirs(&layout.root, path));

    let before = layout.outside_state();
    let mut archive = Vec::new();
    let sent = transfer::pack(&layout.root, &to_pack, transfer::Links::Inside, &mut archive, &mut |_| {}).expect("packing a local tree succeeds");
    assert!(
        !archive.windows(b"SENTINEL-OUTSIDE".len()).any(|window| window == b"SENTINEL-OUTSIDE"),
        "pack read a file outside the root"
    );
    assert_eq!(before, layout.outside_state(), "packing changed something outside the root");

    let upload = Layout::new();
    transfer::unpack_atomically(archive.as_slice(), &upload.root, &upload.staging).expect("a packed archive unpacks");
    assert_arrived(&layout.root, &upload.root, &sent);

    let download = Layout::new();
    let staged = transfer::stage(archive.as_slice(), &download.staging).expect("a packed archive stages");
    let mut beneath = Beneath::open(&download.root).expect("the download root opens");
    for entry in staged {
        transfer::place(&mut beneath, entry).expect("a staged entry is placed");
    }
    assert_arrived(&layout.root, &download.root, &sent);
});

/// Creates the parent directories of `path` under `root`, unless the path is not plain or a parent is a link.
fn create_parents(root: &Path, path: &str) -> bool {
    if check_relative(path).is_err() || path.len() > 200 {
        return false;
    }
    let Some((parent, _)) = path.rsplit_once('/') else { return true };
    let mut current = root.to_path_buf();
    for part in parent.split('/') {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return false,
            Err(_) => {
                if std::fs::create_dir(&current).is_err() {
                    return false;
                }
            }
        }
    }
    true
}

/// Every entry `pack` reported arrived at `destination` as it was at `source`. The last entry for a path wins,
/// as it does when an archive names a path twice.
fn assert_arrived(source: &Path, destination: &Path, sent: &[Sent]) {
    let mut seen = HashSet::new();
    for item in sent.iter().rev() {
        if !seen.insert(item.path.clone()) {
            continue;
        }
        let (from, to) = (source.join(&item.path), destination.join(&item.path));
        match item.local.kind {
            EntryKind::Symlink => {
                assert_eq!(std::fs::read_link(&from).ok(), std::fs::read_link(&to).ok(), "link {}", item.path);
            }
            _ => {
                assert_eq!(std::fs::read(&from).ok(), std::fs::read(&to).ok(), "content of {}", item.path);
                let mode = |path: &Path| std::fs::symlink_metadata(path).ok().map(|metadata| metadata.permissions().mode() & 0o7777);
                // The permission bits travel; setuid, setgid and sticky stay behind (a sandbox must not hand out
                // privileges, nor receive them).
                assert_eq!(mode(&from).map(|mode| mode & PERMISSION_BITS), mode(&to), "mode of {}", item.path);
            }
        }
    }
}
