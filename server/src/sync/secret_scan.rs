//! Secrets by content: the credential shapes (cloud keys, tokens, private keys) that hold a file back whatever its
//! name, and the per-session cache of verdicts by content hash, so an unchanged file is never read twice.
//!
//! The check runs where a file is read for upload (`transfer::pack_checked`): a small text file is read once into
//! memory, hashed, checked, and only then written into the archive, so a secret never reaches the sandbox and the
//! file is neither read nor hashed a second time. Only rule names are ever reported; matched text never leaves this
//! module (not in logs, notifications, errors or state files).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::bytes::{Regex, RegexBuilder};

/// Files larger than this are not read for secrets. Credential files are small (the largest common one, a GCP
/// service-account key, is about 2.4 KB); files of a megabyte and more are data, bundles and build outputs, whose
/// scan would cost the most and find the least, and which would otherwise have to be held in memory whole before
/// the first byte is sent. Names (`terraform.tfstate`, `*.pem`) still hold back large credential files.
pub const SCAN_LIMIT: u64 = 1 << 20;
/// A NUL byte within this many leading bytes marks a binary file, which is not scanned (git's and ripgrep's test):
/// the shapes below are text, and binary data is where random bytes would look like them.
const BINARY_PROBE: usize = 8 * 1024;

/// One credential shape: its name (what users see), its pattern, and words every match of it contains (compared
/// ignoring ASCII case), which decide cheaply whether the pattern is worth running on a file at all.
struct Shape {
    rule: &'static str,
    pattern: &'static str,
    gates: &'static [&'static str],
}

/// The shapes, most specific first, since the first that matches names the verdict. Patterns are bytes regexes
/// without Unicode (ASCII `\b` and `\s`), which keeps the combined automaton small and fast.
const SHAPES: &[Shape] = &[
    Shape { rule: "gcp-service-account", pattern: r#""type"\s*:\s*"service_account""#, gates: &["service_account"] },
    Shape {
        rule: "private-key",
        // The header, then (raw or JSON-escaped line breaks, PEM headers such as `Proc-Type:`) base64 key material,
        // so code that merely names the header (a parser, a doc) is not taken for a key.
        pattern: r"-----BEGIN[A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----(?:\\[rn]|\s|[A-Za-z-]{2,32}: [^\r\n\\]{0,200})*[A-Za-z0-9+/]{32}",
        gates: &["PRIVATE KEY"],
    },
    Shape { rule: "aws-access-key-id", pattern: r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", gates: &["AKIA", "ASIA", "ABIA", "ACCA"] },
    Shape {
        rule: "aws-secret-access-key",
        // 40 characters of base64 are common (git object names are 40 hex digits), so a secret key counts only
        // when the text names it: `aws_secret_access_key = …`, `AWS_SECRET_ACCESS_KEY=…`, `secretAccessKey: "…"`.
        // The spellings are listed rather than matched case-insensitively, so every shape starts with a literal
        // and the combined search runs on a literal prefilter instead of visiting every byte.
        pattern: r#"(?:aws_secret_access_key|AWS_SECRET_ACCESS_KEY|secret_access_key|SECRET_ACCESS_KEY|secretAccessKey|SecretAccessKey|aws_secret_key|AWS_SECRET_KEY)["']?\s*(?:[:=]|=>|:=)\s*["']?[A-Za-z0-9/+]{40}(?:[^A-Za-z0-9/+=]|$)"#,
        gates: &["secret_access_key", "secretAccessKey", "aws_secret_key"],
    },
    Shape { rule: "github-token", pattern: r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b", gates: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] },
    Shape { rule: "github-token", pattern: r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b", gates: &["github_pat_"] },
    Shape { rule: "gitlab-token", pattern: r"\bglpat-[A-Za-z0-9_-]{20,}", gates: &["glpat-"] },
    Shape { rule: "slack-token", pattern: r"\bxox[baprs]-[A-Za-z0-9-]{10,}", gates: &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"] },
    Shape { rule: "slack-webhook", pattern: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}", gates: &["hooks.slack.com/"] },
    Shape { rule: "stripe-key", pattern: r"\b[rs]k_live_[A-Za-z0-9]{20,}", gates: &["k_live_"] },
    Shape { rule: "npm-token", pattern: r"\bnpm_[A-Za-z0-9]{36}\b", gates: &["npm_"] },
    Shape { rule: "pypi-token", pattern: r"\bpypi-AgEI[A-Za-z0-9_-]{50,}", gates: &["pypi-AgEI"] },
];

/// A service-account file is only a secret with its key in it (the same JSON without `private_key` is a template).
const SERVICE_ACCOUNT_KEY: &str = r#""private_key"\s*:\s*"-----BEGIN"#;

/// The compiled shapes, each stage compiled only when a file gets that far:
/// - the gate, a literal search for every shape's words, answers "nothing here" for almost every file in one pass
///   and is built in microseconds;
/// - the combined automaton of all shapes runs on a file the gate let through (compiling it took 0.6–1 ms of every
///   `sandlink run`'s upload when it stood first);
/// - the single shapes, run only on a file the combined one matched, name the rule.
pub struct Shapes {
    gate: aho_corasick::AhoCorasick,
    any: OnceLock<Regex>,
    single: OnceLock<SingleShapes>,
}

/// Each shape on its own, and the service-account key test, to name the rule a file breaks.
struct SingleShapes {
    each: Vec<(&'static str, Regex)>,
    service_account_key: Regex,
}

fn compile(pattern: &str) -> Regex {
    // The patterns are constants of this file, compiled by a unit test on every build; one that fails is a bug here.
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(1 << 24)
        .build()
        .unwrap_or_else(|error| panic!("the secret shape {pattern} does not compile: {error}"))
}

impl Shapes {
    pub fn new() -> Self {
        let gates = SHAPES.iter().flat_map(|shape| shape.gates.iter());
        let gate = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(gates)
            .unwrap_or_else(|error| panic!("the secret shapes' words do not build a search: {error}"));
        Shapes { gate, any: OnceLock::new(), single: OnceLock::new() }
    }

    fn any(&self) -> &Regex {
        self.any.get_or_init(|| {
            compile(&SHAPES.iter().map(|shape| format!("(?:{})", shape.pattern)).collect::<Vec<_>>().join("|"))
        })
    }

    fn single(&self) -> &SingleShapes {
        self.single.get_or_init(|| SingleShapes {
            each: SHAPES.iter().map(|shape| (shape.rule, compile(shape.pattern))).collect(),
            service_account_key: compile(SERVICE_ACCOUNT_KEY),
        })
    }

    /// The rule a file's content breaks, if any. Binary content is not looked at.
    pub fn find(&self, content: &[u8]) -> Option<&'static str> {
        if is_binary(content) || !self.gate.is_match(content) || !self.any().is_match(content) {
            return None;
        }
        let single = self.single();
        single.each.iter().find_map(|(rule, pattern)| {
            pattern.find_iter(content).any(|found| plausible(rule, found.as_bytes(), content, single)).then_some(*rule)
        })
    }
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes::new()
    }
}

/// Whether a match is a credential rather than its documented stand-in.
fn plausible(rule: &str, matched: &[u8], content: &[u8], shapes: &SingleShapes) -> bool {
    match rule {
        // AWS's own documentation key ids (AKIAIOSFODNN7EXAMPLE) appear in countless READMEs and tests.
        "aws-access-key-id" | "aws-secret-access-key" => !contains(matched, b"EXAMPLE"),
        "gcp-service-account" => shapes.service_account_key.is_match(content),
        _ => true,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Whether content is binary by git's test: a NUL byte near the start.
pub fn is_binary(content: &[u8]) -> bool {
    content[..content.len().min(BINARY_PROBE)].contains(&0)
}

/// What a regular file looked like (`lstat`), to tell whether it changed since its content was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub mode: u32,
}

/// A file held back for its content, as last seen, so an unchanged one is held back again without a read.
#[derive(Debug, Clone)]
struct HeldFile {
    seen: FileStamp,
    rule: &'static str,
}

#[derive(Default)]
struct Verdicts {
    /// blake3 of content -> the rule it breaks (`None`: clean). Shared by every path with that content.
    by_hash: HashMap<[u8; 32], Option<&'static str>>,
    /// Paths held back for content, with what they looked like then.
    held: HashMap<String, HeldFile>,
}

/// One session's content check: the shapes and the verdicts, shared by the scan (which skips files it already
/// knows are secret), the upload (which checks what it reads) and the listing comparison (which leaves the
/// sandbox's copy of a held-back file alone).
pub struct ContentCheck {
    verdicts: Mutex<Verdicts>,
    /// Whether any path was ever held back, so a scan's look at every file takes no lock until one was.
    ever_held: std::sync::atomic::AtomicBool,
}

/// The shapes, compiled once per process, when the first file is read for them (not when a session starts, where
/// that competed with the sandbox's start for the CPU), not once per session.
fn compiled_shapes() -> &'static Shapes {
    static SHAPES_ONCE: OnceLock<Shapes> = OnceLock::new();
    SHAPES_ONCE.get_or_init(Shapes::new)
}

impl ContentCheck {
    pub fn new() -> Self {
        ContentCheck { verdicts: Mutex::default(), ever_held: std::sync::atomic::AtomicBool::new(false) }
    }

    fn verdicts(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        // Holders only insert and remove map entries, so a poisoned lock still holds consistent maps.
        crate::locks::lock(&self.verdicts)
    }

    /// The rule that held `path` back, when the file still looks exactly as it did then (no read needed).
    pub fn known_secret(&self, path: &str, now: &FileStamp) -> Option<&'static str> {
        let verdicts = self.verdicts();
        let held = verdicts.held.get(path)?;
        (held.seen == *now).then_some(held.rule)
    }

    /// Whether `path` is currently held back for its content (by path alone: for the sandbox's side).
    pub fn is_held(&self, path: &str) -> bool {
        self.verdicts().held.contains_key(path)
    }

    /// Checks content read for upload: answers the rule it breaks, if any, and remembers the verdict by hash.
    ///
    /// Every core that copies an upload calls this for each file it reads, so it takes the lock once for content
    /// it knows and twice for new content (never while the shapes run), and leaves the held paths alone until one
    /// was held: three locks a file, on a lock both cores wanted, were 3.6% of the CPU time of an initial sync.
    pub fn check(&self, path: &str, seen: &FileStamp, hash: &blake3::Hash, content: &[u8]) -> Option<&'static str> {
        let mut verdicts = self.verdicts();
        let verdict = match verdicts.by_hash.get(hash.as_bytes()).copied() {
            Some(verdict) => verdict,
            None => {
                drop(verdicts);
                let verdict = compiled_shapes().find(content);
                verdicts = self.verdicts();
                verdicts.by_hash.insert(*hash.as_bytes(), verdict);
                verdict
            }
        };
        match verdict {
            Some(rule) => {
                verdicts.held.insert(path.to_string(), HeldFile { seen: *seen, rule });
                self.ever_held.store(true, std::sync::atomic::Ordering::Release);
            }
            None if self.ever_held.load(std::sync::atomic::Ordering::Acquire) => {
                verdicts.held.remove(path);
            }
            None => {}
        }
        verdict
    }

    /// Forgets a path that now syncs again or is gone (its secret was removed).
    pub fn release(&self, path: &str) {
        self.verdicts().held.remove(path);
    }

    /// `known_secret`, and `release` when it answers `None`, under one lock: what a scan asks of every file.
    pub fn known_or_release(&self, path: &str, now: &FileStamp) -> Option<&'static str> {
        if !self.ever_held.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut verdicts = self.verdicts();
        match verdicts.held.get(path) {
            Some(held) if held.seen == *now => Some(held.rule),
            Some(_) => {
                verdicts.held.remove(path);
                None
            }
            None => None,
        }
    }
}

impl Default for ContentCheck {
    fn default() -> Self {
        ContentCheck::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like real credentials but assembled at run time, so this file holds no string a secret scanner flags.
    fn token(prefix: &str, length: usize) -> String {
        let body: String = "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xYz".chars().cycle().take(length).collect();
        format!("{prefix}{body}")
    }

    /// One case per shape, each through the gate too: a shape whose gate words a match can lack would answer `None`.
    #[test]
    fn every_shape_should_compile_and_name_its_rule() {
        let shapes = Shapes::new();
        let aws_id = format!("{}{}", "AKIA", "Q3EGRJ5XZ7B2LKWN");
        let pem = format!("-----BEGIN {}PRIVATE KEY-----\n{}\n-----END", "RSA ", token("MIIEow", 64));
        let cases = [
            (format!("const id = \"{aws_id}\";"), "aws-access-key-id"),
            (format!("aws_secret_access_key = {}\n", token("", 40).replace('a', "/")), "aws-secret-access-key"),
            (format!("secretAccessKey: \"{}\",", token("", 40)), "aws-secret-access-key"),
            (format!("token = \"{}\"", token("ghp_", 36)), "github-token"),
            (format!("t={}", token(&format!("github_pat_{}_", token("", 22)), 59)), "github-token"),
            (format!("GITLAB={}", token("glpat-", 20)), "gitlab-token"),
            (format!("SLACK={}", token("xoxb-", 30)), "slack-token"),
            (format!("url: https://hooks.slack.com/services/{}", token("T0/B0/", 24)), "slack-webhook"),
            (format!("key = {}", token("sk_live_", 24)), "stripe-key"),
            (format!("//registry.npmjs.org/:_authToken={}", token("npm_", 36)), "npm-token"),
            (format!("password = {}", token("pypi-AgEI", 60)), "pypi-token"),
            (pem.clone(), "private-key"),
            (format!("{{\"type\": \"service_account\", \"private_key\": \"{}\"}}", pem.replace('\n', "\\n")), "gcp-service-account"),
        ];
        for (content, rule) in cases {
            assert_eq!(shapes.find(content.as_bytes()), Some(rule), "{rule}");
        }
    }

    #[test]
    fn ordinary_high_entropy_text_should_not_look_like_a_secret() {
        let shapes = Shapes::new();
        let ordinary = [
            "let commit = \"3f2a9c1b7e4d5f60718293a4b5c6d7e8f9a0b1c2\";",
            "sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"",
            "id: 123e4567-e89b-12d3-a456-426614174000",
            "data = \"TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuIE1hbnkgaGFuZHMgbWFrZSBsaWdodCB3b3JrLg==\"",
            "if line.starts_with(\"-----BEGIN PRIVATE KEY-----\") { parse(line) }",
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
            "{\"type\": \"service_account\", \"project_id\": \"demo\"}",
            "npm_config_cache=/tmp/npm",
        ];
        for content in ordinary {
            assert_eq!(shapes.find(content.as_bytes()), None, "{content}");
        }
    }

    #[test]
    fn a_file_without_any_shapes_word_should_be_cleared_without_compiling_the_shapes() {
        let shapes = Shapes::new();
        assert_eq!(shapes.find(b"export const value = 42;\nfunction main() { return value * 2; }\n"), None);
        assert!(shapes.any.get().is_none() && shapes.single.get().is_none(), "the gate alone answered");
        // A shape's word (here in its other case) opens the gate: the patterns decide.
        assert_eq!(shapes.find(b"# docs: set AWS_SECRET_KEY in your shell\n"), None);
        assert!(shapes.any.get().is_some(), "the combined shapes ran on a file with a shape's word");
    }

    #[test]
    fn binary_content_should_not_be_scanned() {
        let mut content = token("ghp_", 36).into_bytes();
        content.insert(0, 0);
        assert_eq!(Shapes::new().find(&content), None);
    }

    #[test]
    fn verdicts_should_be_remembered_by_path_and_hash() {
        let check = ContentCheck::new();
        let seen = FileStamp { size: 40, mtime_ns: 1, mode: 0o644, inode: 9 };
        let content = token("ghp_", 36);
        let hash = blake3::hash(content.as_bytes());
        assert_eq!(check.check("a.js", &seen, &hash, content.as_bytes()), Some("github-token"));
        assert_eq!(check.known_secret("a.js", &seen), Some("github-token"));
        assert!(check.is_held("a.js"));
        let moved = FileStamp { mtime_ns: 2, ..seen };
        assert_eq!(check.known_secret("a.js", &moved), None, "a changed file is read again");
        // The same content elsewhere is judged from the cache, even with other bytes passed in.
        assert_eq!(check.check("b.js", &seen, &hash, b""), Some("github-token"));
    }
}
