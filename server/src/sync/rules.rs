//! Which workspace paths sync: ignore files and configured patterns, built once and used for the walk, for
//! single paths (saves, watcher events) and for remote listings alike.
//!
//! Precedence is the `ignore` crate's: configured `exclude` patterns first, then `.sandlinkignore`, `.ignore`,
//! `.gitignore` (each from the deepest directory up), then `.git/info/exclude` and the user's global git excludes.
//! A path is excluded when it or any parent directory is. The full walk and the per-path check run the same code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::{Match, WalkBuilder};

use super::options::SyncOptions;
use crate::error::{Error, Result};

/// The project's own ignore file, for paths that should stay out of the sandbox but not out of git.
pub const SANDLINK_IGNORE: &str = ".sandlinkignore";
/// Per-directory ignore files, from highest to lowest precedence.
const IGNORE_FILES: [&str; 3] = [SANDLINK_IGNORE, ".ignore", ".gitignore"];

/// Whether a file name is one of the ignore files, whose change means the rules must be rebuilt.
pub fn is_ignore_file(name: &str) -> bool {
    IGNORE_FILES.contains(&name)
}

/// The ignore rules of one workspace; per-directory files are read lazily and cached.
pub struct Rules {
    workspace: PathBuf,
    include_git: bool,
    configured: Gitignore,
    global: Gitignore,
    git_exclude: Gitignore,
    /// Per directory (relative, `""` for the root): the ignore files that apply to its entries, its own and its
    /// parents', as (`IGNORE_FILES` index, matcher), deepest directory first. Most directories have none of their
    /// own and share their parent's chain, so deciding an entry is one lookup, not one per parent and file name.
    chains: Mutex<HashMap<String, IgnoreChain>>,
}

/// The ignore files that apply to one directory's entries (see `Rules::chains`).
pub type IgnoreChain = Arc<Vec<(usize, Arc<Gitignore>)>>;

impl Rules {
    pub fn new(workspace: &Path, options: &SyncOptions) -> Result<Self> {
        let configured = build_patterns(workspace, &options.exclude, "sync.exclude")?;
        let (global, _) = GitignoreBuilder::new(workspace).build_global();
        let git_exclude = {
            let path = workspace.join(".git/info/exclude");
            if path.is_file() {
                Gitignore::new(path).0
            } else {
                Gitignore::empty()
            }
        };
        Ok(Rules {
            workspace: workspace.to_path_buf(),
            include_git: options.include_git,
            configured,
            global,
            git_exclude,
            chains: Mutex::default(),
        })
    }

    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// Forgets cached ignore files after one of them changed.
    pub fn invalidate(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, IgnoreChain>> {
        // The cache is only ever inserted into or cleared, so a poisoned lock still holds a valid map.
        crate::locks::lock(&self.chains)
    }

    /// The ignore files that apply to entries of `relative_dir`, deepest directory first.
    fn chain(&self, relative_dir: &str) -> IgnoreChain {
        self.chain_known(relative_dir, None)
    }

    /// `chain`, for a directory just listed: `listed` tells whether a name is in it, so only ignore files that
    /// are there are looked at (most directories have none, and then cost no look at all).
    pub fn chain_of_listed(&self, relative_dir: &str, listed: &dyn Fn(&str) -> bool) -> IgnoreChain {
        self.chain_known(relative_dir, Some(listed))
    }

    fn chain_known(&self, relative_dir: &str, listed: Option<&dyn Fn(&str) -> bool>) -> IgnoreChain {
        if let Some(found) = self.lock().get(relative_dir) {
            return found.clone();
        }
        let parent = match relative_dir.rsplit_once('/') {
            Some((parent, _)) => self.chain(parent),
            None if relative_dir.is_empty() => Arc::new(Vec::new()),
            None => self.chain(""),
        };
        let dir = if relative_dir.is_empty() { self.workspace.clone() } else { self.workspace.join(relative_dir) };
        let own: Vec<(usize, Arc<Gitignore>)> = IGNORE_FILES
            .iter()
            .enumerate()
            .filter(|(_, name)| listed.is_none_or(|listed| listed(name)))
            .filter_map(|(index, name)| {
                let path = dir.join(name);
                path.is_file().then(|| (index, Arc::new(Gitignore::new(&path).0)))
            })
            .collect();
        let chain = if own.is_empty() {
            parent
        } else {
            Arc::new(own.into_iter().chain(parent.iter().cloned()).collect())
        };
        self.lock().insert(relative_dir.to_string(), chain.clone());
        chain
    }

    /// Whether a relative, `/`-separated path is excluded (it or any parent directory).
    pub fn is_excluded(&self, relative: &str, is_dir: bool) -> bool {
        let parts: Vec<&str> = relative.split('/').filter(|part| !part.is_empty()).collect();
        for (index, part) in parts.iter().enumerate() {
            if *part == ".git" && !self.include_git {
                return true;
            }
            let prefix = parts[..=index].join("/");
            let parent = parts[..index].join("/");
            let prefix_is_dir = index + 1 < parts.len() || is_dir;
            if self.excludes_itself(&self.workspace.join(&prefix), &parent, prefix_is_dir) {
                return true;
            }
        }
        false
    }

    /// Decides one path by its own rules only (parents are checked by the caller): `absolute` is the path under
    /// the workspace, `parent` its directory relative to the workspace. Empty matchers are skipped, since every
    /// entry of every scan passes here.
    fn excludes_itself(&self, absolute: &Path, parent: &str, is_dir: bool) -> bool {
        self.excludes_by(&self.chain(parent), absolute, is_dir)
    }

    /// Whether an entry named `name` of a directory being walked is excluded by its own rules, given the
    /// directory's `chain` (`chain_of_listed`): what the walker asks of every entry, and exactly what `is_excluded`
    /// asks of each part of a path.
    pub fn excludes_entry(&self, chain: &IgnoreChain, absolute: &Path, name: &str, is_dir: bool) -> bool {
        (name == ".git" && !self.include_git) || self.excludes_by(chain, absolute, is_dir)
    }

    fn excludes_by(&self, chain: &IgnoreChain, absolute: &Path, is_dir: bool) -> bool {
        let decide = |matcher: &Gitignore| match matcher.is_empty() {
            true => Match::None,
            false => matcher.matched(absolute, is_dir).map(|_| ()),
        };
        match decide(&self.configured) {
            Match::Ignore(()) => return true,
            Match::Whitelist(()) => return false,
            Match::None => {}
        }
        // Each file name in precedence order, and for one name the deepest directory's file first.
        for file_index in 0..IGNORE_FILES.len() {
            for (_, matcher) in chain.iter().filter(|(index, _)| *index == file_index) {
                match decide(matcher) {
                    Match::Ignore(()) => return true,
                    Match::Whitelist(()) => return false,
                    Match::None => {}
                }
            }
        }
        match decide(&self.git_exclude) {
            Match::Ignore(()) => return true,
            Match::Whitelist(()) => return false,
            Match::None => {}
        }
        decide(&self.global).is_ignore()
    }

    /// Decides many paths at once (`Excluder::is_excluded`), each directory once.
    pub fn excluder(&self) -> Excluder<'_> {
        Excluder { rules: self, directories: HashMap::new() }
    }

    /// A walker over `start` (the workspace or a directory in it) applying the same rules, for the watcher's list
    /// of directories to watch. (Full scans walk the tree themselves, on every core: `scan::Scanner`.)
    ///
    /// The walker decides each entry with `excludes_itself`, the very code `is_excluded` runs, rather than with the
    /// `ignore` crate's own ignore-file handling: two implementations of precedence disagreed (a configured
    /// `!pattern` re-including what a `.gitignore` excludes was synced by a save but skipped by a full scan, which
    /// the `ignore_rules` fuzz target checks). Excluded directories are pruned, so a child is reached only when no
    /// parent is excluded, exactly as `is_excluded` checks parents.
    pub fn walker(self: &Arc<Self>, start: &Path) -> WalkBuilder {
        let mut builder = WalkBuilder::new(start);
        builder.standard_filters(false).follow_links(false);
        let rules = self.clone();
        builder.filter_entry(move |entry| {
            let Ok(relative) = entry.path().strip_prefix(&rules.workspace) else { return true };
            let Some(relative) = relative.to_str() else {
                // A name that is not UTF-8 cannot match a pattern by its text; the scan reports it on its own.
                return true;
            };
            if relative.is_empty() {
                return true;
            }
            let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
            if name == ".git" && !rules.include_git {
                return false;
            }
            let is_dir = entry.file_type().is_some_and(|kind| kind.is_dir());
            !rules.excludes_itself(entry.path(), parent, is_dir)
        });
        builder
    }
}

/// `Rules::is_excluded` for many paths, as a listing of the whole sandbox asks: each directory's decision is
/// remembered, so the files of a directory cost one decision each instead of one per part of their paths.
pub struct Excluder<'a> {
    rules: &'a Rules,
    directories: HashMap<String, bool>,
}

impl Excluder<'_> {
    /// Exactly `Rules::is_excluded`: the path is excluded when its directory is, or by its own rules.
    pub fn is_excluded(&mut self, relative: &str, is_dir: bool) -> bool {
        let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        if name.is_empty() {
            return self.rules.is_excluded(relative, is_dir);
        }
        if !parent.is_empty() && self.directory_is_excluded(parent) {
            return true;
        }
        (name == ".git" && !self.rules.include_git) || self.rules.excludes_itself(&self.rules.workspace.join(relative), parent, is_dir)
    }

    fn directory_is_excluded(&mut self, directory: &str) -> bool {
        if let Some(decided) = self.directories.get(directory) {
            return *decided;
        }
        let decided = self.is_excluded(directory, true);
        self.directories.insert(directory.to_string(), decided);
        decided
    }
}

/// Builds a matcher from configured gitignore-style patterns rooted at the workspace.
pub fn build_patterns(workspace: &Path, patterns: &[String], setting: &str) -> Result<Gitignore> {
    let mut builder = GitignoreBuilder::new(workspace);
    for pattern in patterns {
        builder.add_line(None, pattern).map_err(|error| {
            Error::InvalidParams(format!("The pattern \"{pattern}\" in {setting} is not valid: {error}."))
        })?;
    }
    builder
        .build()
        .map_err(|error| Error::InvalidParams(format!("The patterns in {setting} are not valid: {error}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_should_apply_nested_gitignore_with_negation_outside_git() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let root = dir.path();
        std::fs::write(root.join(".gitignore"), "*.log\nbuild/\n").expect("write");
        std::fs::create_dir_all(root.join("sub/deep")).expect("mkdir");
        std::fs::write(root.join("sub/.gitignore"), "!keep.log\n").expect("write");
        std::fs::write(root.join(".sandlinkignore"), "private/\n").expect("write");
        let options = SyncOptions { exclude: vec!["*.tmp".into()], ..SyncOptions::default() };
        let rules = Rules::new(root, &options).expect("rules");
        assert!(rules.is_excluded("a.log", false));
        assert!(!rules.is_excluded("sub/keep.log", false));
        assert!(rules.is_excluded("sub/other.log", false));
        assert!(rules.is_excluded("build/out.js", false));
        assert!(rules.is_excluded("private/x", false));
        assert!(rules.is_excluded("x.tmp", false));
        assert!(rules.is_excluded(".git/config", false));
        assert!(!rules.is_excluded("src/main.rs", false));
    }
}
