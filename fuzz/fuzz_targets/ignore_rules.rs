//! Fuzzes ignore-rule matching (`sync::rules`) with arbitrary patterns and paths: building rules never panics, a
//! path under an excluded directory is excluded, and `Rules::is_excluded` (used for saves and watcher events), its
//! many-paths form `Rules::excluder` (used for listings of the sandbox) and the full scan (`Scanner::scan`, which
//! walks the tree itself) agree on every file of a real tree.
//!
//! Input: sections of lines. Lines before any header, or after `--- exclude`, are `sync.exclude` patterns;
//! after `--- allow` they are `allowSecrets` patterns; after `--- <dir>/.gitignore` (or `.ignore`,
//! `.sandlinkignore`, at any plain relative place) they are that file's lines; after `--- paths` each line is a
//! path to create and check (a trailing `/` makes it a directory).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sandlink::sync::rules::{build_patterns, is_ignore_file, Rules};
use sandlink::sync::scan::{check_relative, Scanner};
use sandlink::sync::secrets::SecretFilter;
use sandlink::sync::SyncOptions;

enum Section {
    Exclude,
    Allow,
    IgnoreFile(String),
    Paths,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut exclude = Vec::new();
    let mut allow = Vec::new();
    let mut ignore_files: BTreeMap<String, String> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut section = Section::Exclude;
    for line in text.lines().take(64) {
        if let Some(header) = line.strip_prefix("--- ") {
            section = match header {
                "exclude" => Section::Exclude,
                "allow" => Section::Allow,
                "paths" => Section::Paths,
                file if check_relative(file).is_ok() && is_ignore_file(file.rsplit('/').next().unwrap_or(file)) => {
                    Section::IgnoreFile(file.to_string())
                }
                _ => continue,
            };
            continue;
        }
        match &section {
            Section::Exclude => exclude.push(line.to_string()),
            Section::Allow => allow.push(line.to_string()),
            Section::IgnoreFile(file) => {
                let content = ignore_files.entry(file.clone()).or_default();
                content.push_str(line);
                content.push('\n');
            }
            Section::Paths => paths.push(line.to_string()),
        }
    }

    let workspace = tempfile::Builder::new().prefix("sandlink-fuzz-rules-").tempdir().expect("a temporary directory");
    let root = workspace.path();
    let _ = build_patterns(root, &exclude, "sync.exclude");
    for (file, content) in &ignore_files {
        let full = root.join(file);
        if let Some(parent) = full.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(full, content);
    }
    // Files and directories of the tree; `.git` is special-cased by `includeGit` and left out of the comparison.
    let mut files = BTreeSet::new();
    for line in &paths {
        let (path, is_dir) = match line.strip_suffix('/') {
            Some(dir) => (dir, true),
            None => (line.as_str(), false),
        };
        if check_relative(path).is_err() || path.split('/').any(|part| part == ".git") || path.len() > 200 {
            continue;
        }
        let full = root.join(path);
        if is_dir {
            let _ = std::fs::create_dir_all(&full);
        } else if full.parent().is_some_and(|parent| std::fs::create_dir_all(parent).is_ok()) && std::fs::write(&full, "x").is_ok() {
            files.insert(path.to_string());
        }
    }
    let options = SyncOptions { exclude, allow_secrets: allow.clone(), ..SyncOptions::default() };
    let Ok(rules) = Rules::new(root, &options) else { return };
    let _ = SecretFilter::new(root, &allow).map(|filter| paths.iter().map(|path| filter.holds_back(path)).count());
    let rules = Arc::new(rules);

    // Every file that exists, ignore files included, as the full walk would see it.
    for (file, _) in &ignore_files {
        if root.join(file).is_file() {
            files.insert(file.clone());
        }
    }
    for path in &files {
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            let directory = parts[..depth].join("/");
            if rules.is_excluded(&directory, true) {
                assert!(rules.is_excluded(path, false), "{path:?} is not excluded, but its directory {directory:?} is");
            }
        }
    }
    // The full scan, as a sync makes it; files it holds back for their names were walked all the same.
    let Ok(secrets) = SecretFilter::new(root, &allow) else { return };
    let scan = Scanner { rules: rules.clone(), secrets }.scan(None).expect("a scan of a real tree succeeds");
    let walked: BTreeSet<String> = scan.entries.into_keys().chain(scan.held_back.into_keys()).collect();
    // The many-paths form (used on whole listings of the sandbox) decides every path as the one-path form does,
    // asked in any order.
    let mut excluder = rules.excluder();
    for path in files.iter().rev() {
        assert_eq!(excluder.is_excluded(path, false), rules.is_excluded(path, false), "{path:?}: the excluder disagrees");
    }
    for path in &files {
        let excluded = rules.is_excluded(path, false);
        assert_eq!(
            walked.contains(path),
            !excluded,
            "{path:?}: the full scan and the per-path check disagree (walked: {walked:?})"
        );
    }
});
