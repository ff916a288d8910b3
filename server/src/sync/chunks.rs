//! Resumable uploads of big files for drivers whose provider has no resumable upload (E2B, Daytona, Vercel): each
//! file over a threshold travels as numbered part files in a staging folder of the sandbox, one request per part, and
//! is joined in place.
//!
//! Why the parts are named by content: a dropped connection, a killed sync or a restarted server all leave the parts
//! that arrived in the sandbox, and the next upload of the same file lists its folder and sends only the parts that
//! are not there whole. A part is taken as there when the listing shows its name (index and blake3 of its bytes) with
//! its exact size: a request dropped half-way leaves a shorter file, which is sent again. The sandbox itself is the
//! record of what arrived, so it cannot disagree with a record kept on the engine's side (a sandbox restored from a
//! snapshot, a second editor). The joined file is written into the batch's staging directory with `cat` and moved
//! into place by the same rename as every other file of the batch, so nothing half-written ever sits in the root.

use crate::drivers::shell::scripts::STAGING_DIR;

/// Files bigger than this go in parts; below it one request per batch is cheaper than a listing per file.
const DEFAULT_THRESHOLD_BYTES: u64 = 32 * 1024 * 1024;
/// The size of one part: what a dropped connection can cost at most, and what a retry sends again.
const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;
/// Part folders older than this belong to uploads that were abandoned (the file changed or was deleted meanwhile).
pub const ABANDONED_AFTER_MINUTES: u32 = 24 * 60;

/// The size above which a file goes in parts. `SANDLINK_CHUNKED_UPLOAD_THRESHOLD_BYTES` overrides it (tests use a
/// small file rather than hundreds of megabytes).
pub fn threshold_bytes() -> u64 {
    std::env::var("SANDLINK_CHUNKED_UPLOAD_THRESHOLD_BYTES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_THRESHOLD_BYTES)
}

/// The size of each part. `SANDLINK_UPLOAD_PART_BYTES` overrides it, for tests; never below 64 KiB.
pub fn part_bytes() -> usize {
    std::env::var("SANDLINK_UPLOAD_PART_BYTES")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(DEFAULT_PART_BYTES)
        .max(64 * 1024)
}

/// Lists a parts folder (`$1`, relative to the working directory) as `size name` lines, nothing when it does not
/// exist; for drivers that look through a shell (GNU and busybox `stat` both take `-c`).
pub const LIST_PARTS: &str = r#"cd -- "$1" 2>/dev/null || exit 0
for f in *; do [ -f "$f" ] && echo "$(stat -c %s -- "$f") $f"; done
exit 0"#;

/// Reads `LIST_PARTS`' output into (path relative to the root, size) pairs.
pub fn parse_listed_parts(folder: &str, listing: &[u8]) -> Vec<(String, u64)> {
    String::from_utf8_lossy(listing)
        .lines()
        .filter_map(|line| {
            let (size, name) = line.split_once(' ')?;
            Some((format!("{folder}/{name}"), size.parse().ok()?))
        })
        .collect()
}

/// Where parts of uploads in progress live, relative to the remote root.
pub fn parts_root() -> String {
    format!("{STAGING_DIR}/parts")
}

/// One big file on its way in parts.
#[derive(Debug, Clone)]
pub struct PartedFile {
    /// Relative to the remote root.
    pub path: String,
    pub size: u64,
    /// The folder its parts go to, relative to the remote root. It is named after the file's path, size and
    /// modification time, so an upload of the same file finds the parts of an earlier, interrupted one.
    pub folder: String,
    /// Part names in order, as they were sent or found.
    pub parts: Vec<String>,
}

impl PartedFile {
    pub fn new(path: &str, size: u64, mtime_seconds: u64) -> PartedFile {
        let mut hasher = blake3::Hasher::new();
        hasher.update(path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&size.to_le_bytes());
        hasher.update(&mtime_seconds.to_le_bytes());
        let key = hasher.finalize().to_hex();
        PartedFile { path: path.to_string(), size, folder: format!("{}/{}", parts_root(), &key[..24]), parts: Vec::new() }
    }

    /// Reads a big file's content from `content` in parts of `part_bytes()` and hands each to `send` with its
    /// destination in the sandbox (the parts folder); answers the file with its parts named, for `join_lines`.
    pub fn split(
        content: &mut impl std::io::Read,
        path: &str,
        size: u64,
        mtime_seconds: u64,
        mut send: impl FnMut(String, Vec<u8>) -> crate::error::Result<()>,
    ) -> crate::error::Result<PartedFile> {
        let mut parted = PartedFile::new(path, size, mtime_seconds);
        let part_bytes = part_bytes();
        loop {
            let mut bytes = Vec::with_capacity(part_bytes);
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut *content, part_bytes as u64), &mut bytes)
                .map_err(|source| crate::error::Error::io(format!("Could not read {path} from the upload archive"), source))?;
            if bytes.is_empty() {
                return Ok(parted);
            }
            let name = PartedFile::part_name(parted.parts.len(), &bytes);
            send(format!("{}/{name}", parted.folder), bytes)?;
            parted.parts.push(name);
        }
    }

    /// The name of the part at `index` holding `bytes`: the index first (so names sort in order), then the content's
    /// hash (so a part of other content, left by an earlier version of the file, never passes for this one).
    pub fn part_name(index: usize, bytes: &[u8]) -> String {
        format!("{index:06}-{}", &blake3::hash(bytes).to_hex()[..32])
    }

    /// Shell lines, run from the remote root with `$stage` set to the batch's staging directory, that join the parts
    /// into the staged file and check its size; `quote` quotes a word for `sh`. The parts are removed only after the
    /// whole batch is in place (`cleanup_lines`), so a batch that fails later still finds them next time.
    pub fn join_lines(&self, quote: impl Fn(&str) -> String) -> String {
        let staged = format!("\"$stage\"/{}", quote(&self.path));
        let parent = match self.path.rsplit_once('/') {
            Some((parent, _)) => format!("\"$stage\"/{}", quote(parent)),
            None => "\"$stage\"".to_string(),
        };
        let parts: Vec<String> = self.parts.iter().map(|part| quote(&format!("{}/{part}", self.folder))).collect();
        let mut lines = format!("mkdir -p -- {parent}\n");
        if parts.is_empty() {
            lines.push_str(&format!(": > {staged}\n"));
        } else {
            lines.push_str(&format!("cat -- {} > {staged}\n", parts.join(" ")));
        }
        lines.push_str(&format!(
            "[ \"$(($(wc -c < {staged})))\" -eq {size} ] || {{ echo \"joining the parts of \"{path}\" gave the wrong size\" >&2; exit 1; }}\n",
            size = self.size,
            path = quote(&self.path),
        ));
        lines
    }
}

/// Shell lines that remove the parts of the batch's joined files and any folder of parts abandoned long ago.
pub fn cleanup_lines(files: &[PartedFile], quote: impl Fn(&str) -> String) -> String {
    let mut lines = String::new();
    for file in files {
        lines.push_str(&format!("rm -rf -- {}\n", quote(&file.folder)));
    }
    lines.push_str(&format!(
        "find {} -mindepth 1 -maxdepth 1 -type d -mmin +{ABANDONED_AFTER_MINUTES} -exec rm -rf -- {{}} + 2>/dev/null\n",
        quote(&parts_root())
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(word: &str) -> String {
        format!("'{}'", word.replace('\'', "'\\''"))
    }

    #[test]
    fn folder_should_depend_on_path_size_and_time() {
        let first = PartedFile::new("big.bin", 100, 5);
        assert_eq!(first.folder, PartedFile::new("big.bin", 100, 5).folder, "the same file finds its parts again");
        assert_ne!(first.folder, PartedFile::new("big.bin", 101, 5).folder);
        assert_ne!(first.folder, PartedFile::new("big.bin", 100, 6).folder);
        assert_ne!(first.folder, PartedFile::new("other.bin", 100, 5).folder);
        assert!(first.folder.starts_with(".sandlink-staging/parts/"));
    }

    #[test]
    fn part_names_should_sort_by_index_and_tell_content_apart() {
        assert!(PartedFile::part_name(9, b"a") < PartedFile::part_name(10, b"a"));
        assert_ne!(PartedFile::part_name(0, b"a"), PartedFile::part_name(0, b"b"));
    }

    #[test]
    fn join_should_rebuild_the_file_and_refuse_a_wrong_size() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut file = PartedFile::new("dir/it's big.bin", 6, 1);
        std::fs::create_dir_all(root.path().join(&file.folder)).expect("mkdir");
        for (index, content) in [&b"abc"[..], &b"def"[..]].iter().enumerate() {
            let name = PartedFile::part_name(index, content);
            std::fs::write(root.path().join(&file.folder).join(&name), content).expect("write a part");
            file.parts.push(name);
        }
        let run = |file: &PartedFile| {
            let script = format!("set -e\nstage=.stage\n{}{}", file.join_lines(quote), cleanup_lines(std::slice::from_ref(file), quote));
            std::process::Command::new("sh").arg("-c").arg(script).current_dir(root.path()).output().expect("sh runs")
        };
        let output = run(&file);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(std::fs::read(root.path().join(".stage/dir/it's big.bin")).expect("the joined file"), b"abcdef");
        assert!(!root.path().join(&file.folder).exists(), "the parts are removed once joined");
        file.size = 7;
        std::fs::create_dir_all(root.path().join(&file.folder)).expect("mkdir");
        assert!(!run(&file).status.success(), "missing parts or a wrong size fail the script");
    }
}
