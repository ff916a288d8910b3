//! Fuzzes path normalisation: `paths::join_inside` (user paths: run `cwd`, sync paths), `scan::check_relative`
//! (paths named by the sandbox), `resolve::link_stays_inside` (link targets, resolved through the tree's other
//! links), `paths::path_from_uri_or_path`, and the file-system walks `resolve::parents_are_real_dirs` and
//! `Beneath::parent` on a real tree with links.
//! Properties: an accepted path joined to the root stays under it, lexically and (for the walks and links) once the
//! kernel resolves it.
//!
//! Input lines, tab-separated: `dir<TAB>path`, `link<TAB>path<TAB>target`, `file<TAB>path` build the tree; every
//! other line is a path to check (the whole line, tabs included).
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use sandlink::paths::{join_inside, path_from_uri_or_path};
use sandlink::sync::beneath::Beneath;
use sandlink::sync::resolve::{self, link_stays_inside, OnDisk};
use sandlink::sync::scan::check_relative;
use sandlink_fuzz::{lines, Layout};

fuzz_target!(|data: &[u8]| {
    let layout = Layout::new();
    let root = layout.root.clone();
    let mut candidates = Vec::new();
    for fields in lines(data).take(48) {
        let text = |index: usize| fields.get(index).map(|field| String::from_utf8_lossy(field).into_owned()).unwrap_or_default();
        match fields.first().copied().unwrap_or_default() {
            b"dir" => {
                if check_relative(&text(1)).is_ok() {
                    let _ = std::fs::create_dir_all(root.join(text(1)));
                }
            }
            b"file" => {
                if check_relative(&text(1)).is_ok() {
                    let _ = std::fs::write(root.join(text(1)), "made by the fuzzer");
                }
            }
            b"link" => {
                // Links may point anywhere: the tree is hostile, only the writers under test must stay inside.
                if check_relative(&text(1)).is_ok() {
                    let _ = std::os::unix::fs::symlink(text(2), root.join(text(1)));
                }
            }
            _ => candidates.push(fields.join(&b'\t')),
        }
    }
    let before = layout.outside_state();
    for raw in candidates {
        let path = String::from_utf8_lossy(&raw).into_owned();
        lexical_properties(&root, &path);
        link_properties(&root, &path);
        file_system_properties(&layout, &path);
    }
    assert_eq!(before, layout.outside_state(), "a path walk changed something outside the root");
});

fn lexical_properties(root: &Path, path: &str) {
    if let Ok(joined) = join_inside(root, path) {
        assert!(joined.starts_with(root), "join_inside({path:?}) left the root: {}", joined.display());
        assert!(
            joined.components().all(|part| matches!(part, Component::RootDir | Component::Normal(_))),
            "join_inside({path:?}) is not normalised: {}",
            joined.display()
        );
        // The result names the same place when given back (absolute inside the root is accepted as is).
        let again = join_inside(root, &joined.to_string_lossy()).expect("an accepted path is accepted again");
        assert_eq!(again, joined);
    } else if !path.starts_with('/') && !path.split('/').any(|part| part == "..") {
        panic!("join_inside refused the plain relative path {path:?}");
    }

    if check_relative(path).is_ok() {
        let joined = root.join(path);
        assert!(joined.starts_with(root), "{path:?}");
        let parts: Vec<Component> = Path::new(path).components().collect();
        assert!(parts.iter().all(|part| matches!(part, Component::Normal(_))), "check_relative accepted {path:?}");
        assert_eq!(parts.len(), path.split('/').count(), "check_relative accepted a path with empty parts: {path:?}");
        assert!(!path.contains('\0'), "{path:?}");
    }

    if let Ok(local) = path_from_uri_or_path(path) {
        assert!(local.is_absolute(), "path_from_uri_or_path({path:?}) gave the relative {}", local.display());
    }
}

/// A link target split off the candidate, `link-path -> target`: when `link_stays_inside` accepts it against the
/// real tree, the link made there resolves (as far as it resolves at all) under the root, by the kernel's own
/// answer. (Its text is no guide either way: `l/../../..` with `l -> a/b/c` stays inside.)
fn link_properties(root: &Path, path: &str) {
    let Some((at, target)) = path.split_once(" -> ") else { return };
    if check_relative(at).is_err() || at.len() > 200 {
        return;
    }
    let accepted = link_stays_inside(&OnDisk { root }, at, target);
    let full = root.join(at);
    if !accepted || !resolve::parents_are_real_dirs(root, at) || std::fs::symlink_metadata(&full).is_ok() {
        return;
    }
    if std::os::unix::fs::symlink(target, &full).is_err() {
        return;
    }
    let canonical_root = root.canonicalize().expect("the root resolves");
    // The kernel's own answer, following every link; a dangling end is checked through its deepest existing parent.
    let mut probe = full.clone();
    let resolved = loop {
        match probe.canonicalize() {
            Ok(resolved) => break Some(resolved),
            Err(_) => match probe.parent() {
                Some(parent) if parent.starts_with(root) && parent != root => probe = parent.to_path_buf(),
                _ => break None,
            },
        }
    };
    let _ = std::fs::remove_file(&full);
    if let Some(resolved) = resolved {
        assert!(resolved.starts_with(&canonical_root), "{at:?} -> {target:?} was accepted but resolves to {}", resolved.display());
    }
}

fn file_system_properties(layout: &Layout, path: &str) {
    let root = &layout.root;
    if check_relative(path).is_err() || path.len() > 300 {
        return;
    }
    let canonical_root = root.canonicalize().expect("the root resolves");
    if resolve::parents_are_real_dirs(root, path) {
        if let Some(parent) = root.join(path).parent() {
            let resolved = parent.canonicalize().expect("real parent directories resolve");
            assert!(resolved.starts_with(&canonical_root), "{path:?}: the parents resolve to {}", resolved.display());
        }
    }
    let Ok(mut beneath) = Beneath::open(root) else { return };
    if beneath.parent(path, true).is_ok() {
        drop(beneath);
        let parent = root.join(path).parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        let resolved = parent.canonicalize().expect("Beneath::parent left real directories");
        assert!(resolved.starts_with(&canonical_root), "{path:?}: Beneath::parent accepted parents at {}", resolved.display());
        assert!(resolve::parents_are_real_dirs(root, path), "{path:?}: Beneath::parent and parents_are_real_dirs disagree");
    }
}
