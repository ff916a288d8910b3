//! Resolving paths and symlink targets inside a tree as the kernel would, so sync never follows a link out of it.
//!
//! Reading a link's target as text is not enough: with `y -> .` in the same tree, `x -> y/..` leaves the root
//! although its text does not. These functions walk a path one component at a time against a [`TreeView`] (the
//! real file system, a sandbox listing, or what a sync is about to place over the workspace), expanding every link
//! they meet, and answer where the walk ends. Nothing here touches the file system except through a view, so the
//! resolution can be checked (and fuzzed) on made-up trees.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The most links one resolution follows, as Linux's `MAXSYMLINKS`; past it the path is refused as a loop.
pub const MAX_LINKS: usize = 40;

/// What a tree holds at a relative path, as `lstat` sees it (a link is reported, not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File,
    /// A symlink and its target, as text.
    Link(String),
    Missing,
    /// The view cannot say yet (a remote tree not fetched); the resolution stops and names the path.
    Unknown,
}

/// A tree seen from its root: the node at a `/`-separated relative path whose parents are known directories.
pub trait TreeView {
    fn node(&self, relative: &str) -> Node;
}

/// Where a resolution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Inside the root, at this relative path with every link expanded (`""` is the root itself).
    Inside(String),
    /// The path leaves the root: through `..` above it, an absolute link target, or a link that does.
    Outside,
    /// More than [`MAX_LINKS`] links were followed (a loop, or a chain built to exhaust the resolver).
    TooManyLinks,
    /// The view answered `Unknown` for this path; look it up and resolve again.
    NeedsLookup(String),
}

impl Resolution {
    pub fn is_inside(&self) -> bool {
        matches!(self, Resolution::Inside(_))
    }
}

/// Resolves `path` (relative, `/`-separated, may hold `.`, `..` and links) from the directory `from` (a relative
/// path of a real directory, `""` for the root), following every link, the last component's too.
///
/// A missing component (or a file followed by more components) is taken as a directory that could appear later, so
/// the answer holds for what the tree may become, not just for what it is: `missing/../..` is outside.
pub fn resolve(tree: &dyn TreeView, from: &str, path: &str) -> Resolution {
    resolve_tracking(tree, from, path, &mut Vec::new())
}

/// [`resolve`], also noting in `followed` the path of every link the walk went through, in order.
pub fn resolve_tracking(tree: &dyn TreeView, from: &str, path: &str, followed: &mut Vec<String>) -> Resolution {
    if path.starts_with('/') {
        return Resolution::Outside;
    }
    let mut resolved: Vec<String> = components(from).map(str::to_string).collect();
    let mut pending: VecDeque<String> = components(path).map(str::to_string).collect();
    let mut links = 0usize;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return Resolution::Outside;
                }
            }
            name => {
                resolved.push(name.to_string());
                let here = resolved.join("/");
                match tree.node(&here) {
                    Node::Link(target) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Resolution::TooManyLinks;
                        }
                        if target.starts_with('/') {
                            return Resolution::Outside;
                        }
                        followed.push(here);
                        resolved.pop();
                        for part in components(&target).rev() {
                            pending.push_front(part.to_string());
                        }
                    }
                    Node::Unknown => return Resolution::NeedsLookup(here),
                    Node::Dir | Node::File | Node::Missing => {}
                }
            }
        }
    }
    Resolution::Inside(resolved.join("/"))
}

/// Where the symlink at `link_path` (relative, its parents real directories) with `target` leads in `tree`.
pub fn resolve_link(tree: &dyn TreeView, link_path: &str, target: &str) -> Resolution {
    resolve_link_tracking(tree, link_path, target, &mut Vec::new())
}

/// [`resolve_link`], noting the other links followed on the way.
pub fn resolve_link_tracking(tree: &dyn TreeView, link_path: &str, target: &str, followed: &mut Vec<String>) -> Resolution {
    let parent = link_path.rsplit_once('/').map_or("", |(parent, _)| parent);
    if target.is_empty() {
        // Linux refuses to create an empty target; one from elsewhere resolves nowhere, so it cannot lead out.
        return Resolution::Inside(parent.to_string());
    }
    resolve_tracking(tree, parent, target, followed)
}

/// Whether the symlink at `link_path` with `target` resolves inside the tree (a dangling one that would land inside
/// counts as inside).
pub fn link_stays_inside(tree: &dyn TreeView, link_path: &str, target: &str) -> bool {
    resolve_link(tree, link_path, target).is_inside()
}

/// The components of a `/`-separated path, without empty ones (`a//b/` is `a`, `b`).
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|part| !part.is_empty())
}

/// A directory on this machine seen through `lstat`.
pub struct OnDisk<'a> {
    pub root: &'a Path,
}

impl TreeView for OnDisk<'_> {
    fn node(&self, relative: &str) -> Node {
        // The resolver only asks for paths whose parents it resolved to real directories, so `join` does not pass a
        // link (short of a concurrent change, which can only make a decision stale, never make it write anywhere).
        let full = self.root.join(relative);
        match std::fs::symlink_metadata(&full) {
            Ok(metadata) if metadata.file_type().is_symlink() => match std::fs::read_link(&full) {
                // A target that is not UTF-8 cannot be followed here; `/` makes it refused rather than guessed.
                Ok(target) => Node::Link(target.to_str().map_or_else(|| "/".to_string(), str::to_string)),
                Err(_) => Node::Missing,
            },
            Ok(metadata) if metadata.is_dir() => Node::Dir,
            Ok(_) => Node::File,
            Err(_) => Node::Missing,
        }
    }
}

/// A tree as it will be after a sync places `entries` (files, links, removals) over `base`: directories that hold
/// a placed entry exist, the rest is as `base` says.
pub struct Overlay<'a> {
    base: &'a dyn TreeView,
    entries: BTreeMap<String, Node>,
    parents: BTreeSet<String>,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn TreeView) -> Self {
        Overlay { base, entries: BTreeMap::new(), parents: BTreeSet::new() }
    }

    /// Says that `relative` will hold `node` (use `Node::Missing` for a removal).
    pub fn set(&mut self, relative: &str, node: Node) {
        if node != Node::Missing {
            let mut parent = relative;
            while let Some((above, _)) = parent.rsplit_once('/') {
                if !self.parents.insert(above.to_string()) {
                    break;
                }
                parent = above;
            }
        }
        self.entries.insert(relative.to_string(), node);
    }
}

impl TreeView for Overlay<'_> {
    fn node(&self, relative: &str) -> Node {
        if let Some(node) = self.entries.get(relative) {
            return node.clone();
        }
        if self.parents.contains(relative) {
            return Node::Dir;
        }
        self.base.node(relative)
    }
}

/// Resolves the user-given `relative` under `root` on this machine as the kernel would, following links, and
/// answers the real path it names; `None` when it leaves `root` (or loops). For a run's working directory.
pub fn resolve_on_disk(root: &Path, relative: &str) -> Option<PathBuf> {
    match resolve(&OnDisk { root }, "", relative) {
        Resolution::Inside(path) if path.is_empty() => Some(root.to_path_buf()),
        Resolution::Inside(path) => Some(root.join(path)),
        _ => None,
    }
}

/// Resolves a run's working directory in the sandbox itself, following the sandbox's links as its kernel would, and
/// refuses one that leads outside the session root (a link there to `/etc`, or to `..`). `cwd` is relative to the
/// root, or absolute under `remote_root`. Answers the directory it resolves to, relative to the root (`.` for the root
/// itself), so the run starts where the check looked. The sandbox is asked through the driver's `RemoteFiles`, one
/// batch of `stat`s per link met.
pub async fn check_run_directory(files: &dyn super::RemoteFiles, remote_root: &str, cwd: &str) -> crate::error::Result<String> {
    let outside = || {
        crate::error::Error::PathOutsideWorkspace(format!(
            "The working directory \"{cwd}\" resolves outside the session root (through \"..\" or a symlink); use a \
             directory inside it."
        ))
    };
    let relative = if cwd.starts_with('/') {
        let root = remote_root.trim_end_matches('/');
        match cwd.strip_prefix(root) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
            _ => return Err(outside()),
        }
    } else {
        cwd
    };
    let mut known: BTreeMap<String, Node> = BTreeMap::new();
    // Every prefix of the path as written is asked for at once; each link met costs one more round.
    let mut wanted: Vec<String> = Vec::new();
    let mut prefix = String::new();
    for part in components(relative).filter(|part| *part != "." && *part != "..") {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        wanted.push(prefix.clone());
    }
    for _ in 0..=MAX_LINKS + 1 {
        if !wanted.is_empty() {
            let asked: BTreeSet<String> = wanted.drain(..).collect();
            let found = files.stat(asked.iter().cloned().collect()).await?;
            for path in &asked {
                known.insert(path.clone(), Node::Missing);
            }
            for entry in found {
                let node = match entry.kind {
                    super::EntryKind::Dir => Node::Dir,
                    super::EntryKind::File => Node::File,
                    super::EntryKind::Symlink => Node::Link(entry.link_target.unwrap_or_default()),
                };
                known.insert(entry.path, node);
            }
        }
        struct Known<'a>(&'a BTreeMap<String, Node>);
        impl TreeView for Known<'_> {
            fn node(&self, relative: &str) -> Node {
                self.0.get(relative).cloned().unwrap_or(Node::Unknown)
            }
        }
        match resolve(&Known(&known), "", relative) {
            Resolution::Inside(path) if path.is_empty() => return Ok(".".to_string()),
            Resolution::Inside(path) => return Ok(path),
            Resolution::Outside | Resolution::TooManyLinks => return Err(outside()),
            Resolution::NeedsLookup(path) => wanted.push(path),
        }
    }
    Err(outside())
}

/// Whether every parent of `path` under `root` is a real directory (not a link, not missing); paths under a link
/// are neither read nor deleted.
pub fn parents_are_real_dirs(root: &Path, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut current = root.to_path_buf();
    for part in &parts[..parts.len().saturating_sub(1)] {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up tree: directories, files and links by path.
    struct Fake(BTreeMap<&'static str, Node>);

    impl TreeView for Fake {
        fn node(&self, relative: &str) -> Node {
            self.0.get(relative).cloned().unwrap_or(Node::Missing)
        }
    }

    fn link(target: &str) -> Node {
        Node::Link(target.to_string())
    }

    #[test]
    fn links_should_be_followed_through_other_links_of_the_tree() {
        let tree = Fake(BTreeMap::from([("y", link(".")), ("d", Node::Dir), ("d/up", link(".."))]));
        assert_eq!(resolve_link(&tree, "x", "y/.."), Resolution::Outside, "y is the root, so y/.. is its parent");
        assert_eq!(resolve_link(&tree, "x", "y/y/y/d"), Resolution::Inside("d".into()));
        assert_eq!(resolve_link(&tree, "x", "d/up/d/up/.."), Resolution::Outside);
        assert_eq!(resolve_link(&tree, "d/x", "up/d"), Resolution::Inside("d".into()));
    }

    #[test]
    fn a_deep_chain_through_a_self_link_should_be_refused() {
        let tree = Fake(BTreeMap::from([("y", link("."))]));
        let deep = format!("{}{}etc/passwd", "y/".repeat(30), "../".repeat(30));
        assert_eq!(resolve_link(&tree, "deep", &deep), Resolution::Outside);
    }

    #[test]
    fn loops_and_absolute_targets_should_be_refused() {
        let tree = Fake(BTreeMap::from([("a", link("b")), ("b", link("a"))]));
        assert_eq!(resolve(&tree, "", "a"), Resolution::TooManyLinks);
        assert_eq!(resolve_link(&Fake(BTreeMap::new()), "l", "/etc"), Resolution::Outside);
    }

    #[test]
    fn missing_components_should_count_as_directories_that_may_appear() {
        let tree = Fake(BTreeMap::new());
        assert_eq!(resolve_link(&tree, "l", "missing/../.."), Resolution::Outside);
        assert_eq!(resolve_link(&tree, "a/l", "../b"), Resolution::Inside("b".into()));
        assert_eq!(resolve_link(&tree, "l", "a/./b//c"), Resolution::Inside("a/b/c".into()));
    }

    #[test]
    fn an_overlay_should_answer_for_what_a_sync_places() {
        let base = Fake(BTreeMap::from([("d", Node::Dir)]));
        let mut overlay = Overlay::new(&base);
        overlay.set("new/y", link("../.."));
        assert_eq!(overlay.node("new"), Node::Dir);
        assert_eq!(resolve_link(&overlay, "x", "new/y"), Resolution::Outside);
        overlay.set("d", Node::Missing);
        assert_eq!(overlay.node("d"), Node::Missing);
    }

    #[test]
    fn unknown_nodes_should_ask_for_a_lookup() {
        struct Unknowing;
        impl TreeView for Unknowing {
            fn node(&self, _: &str) -> Node {
                Node::Unknown
            }
        }
        assert_eq!(resolve(&Unknowing, "", "a/b"), Resolution::NeedsLookup("a".into()));
    }
}
