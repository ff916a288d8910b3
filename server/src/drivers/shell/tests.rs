//! The shell layer over a transport that starts local processes, so the agent, `ShellFiles` and the default bulk
//! tar bodies are checked without Docker (the docker tests cover Docker's transport).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::agent::Agent;
use super::files::ShellFiles;
use super::{Channel, Chunk, Command, Transport};
use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::{EntryKind, RemoteFiles};

/// Commands as processes of this machine, as the current user.
struct LocalTransport;

#[async_trait]
impl Transport for LocalTransport {
    async fn open(&self, command: Command) -> Result<Channel> {
        open_local(command, None)
    }

    fn describe(&self) -> String {
        "this machine".into()
    }
}

/// A local shell whose stderr reaches sandlink later than its stdout, as two pipes may (an SSH client's, say).
struct LaggingStderrTransport;

#[async_trait]
impl Transport for LaggingStderrTransport {
    async fn open(&self, command: Command) -> Result<Channel> {
        open_local(command, Some(std::time::Duration::from_millis(40)))
    }

    fn describe(&self) -> String {
        "this machine, stderr late".into()
    }
}

/// Local commands that find busybox's applets first on their `PATH`, as in an Alpine or busybox container.
struct BusyboxTransport {
    applets: tempfile::TempDir,
}

impl BusyboxTransport {
    /// `None` when this machine has no busybox (CI's has; there its absence fails the test).
    fn new() -> Option<Self> {
        let found = std::process::Command::new("sh").args(["-c", "command -v busybox"]).output().ok()?;
        let busybox = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if busybox.is_empty() {
            assert!(std::env::var_os("CI").is_none(), "busybox is missing; tests/setup installs it");
            return None;
        }
        let applets = tempfile::tempdir().ok()?;
        let listed = std::process::Command::new(&busybox).arg("--list").output().ok()?;
        for applet in String::from_utf8_lossy(&listed.stdout).lines() {
            std::os::unix::fs::symlink(&busybox, applets.path().join(applet)).ok()?;
        }
        Some(BusyboxTransport { applets })
    }
}

#[async_trait]
impl Transport for BusyboxTransport {
    async fn open(&self, mut command: Command) -> Result<Channel> {
        let path = format!("{}:{}", self.applets.path().display(), std::env::var("PATH").unwrap_or_default());
        command.env.push(("PATH".into(), path));
        open_local(command, None)
    }

    fn describe(&self) -> String {
        "this machine, with busybox".into()
    }
}

fn open_local(command: Command, stderr_delay: Option<std::time::Duration>) -> Result<Channel> {
    {
        let (program, arguments) = command.argv.split_first().ok_or_else(|| Error::Internal("no program".into()))?;
        let mut process = tokio::process::Command::new(program);
        process
            .args(arguments)
            .envs(command.env.iter().map(|(name, value)| (name, value)))
            .stdin(if command.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(directory) = &command.working_dir {
            process.current_dir(directory);
        }
        let mut child = process.spawn().map_err(|error| Error::io("Could not start a local command", error))?;
        let input: crate::drivers::BoxedWriter = match child.stdin.take() {
            Some(stdin) => Box::pin(stdin),
            None => Box::pin(tokio::io::sink()),
        };
        // `spawn` was asked for both pipes just above.
        let stdout = tokio_util::io::ReaderStream::new(child.stdout.take().expect("stdout is piped"))
            .map(|item| item.map(Chunk::Stdout));
        let stderr = tokio_util::io::ReaderStream::new(child.stderr.take().expect("stderr is piped"))
            .then(move |item| async move {
                if let Some(delay) = stderr_delay {
                    tokio::time::sleep(delay).await;
                }
                item
            })
            .map(|item| item.map(Chunk::Stderr));
        let output = futures::stream::select(stdout, stderr)
            .map(|item| item.map_err(|error| Error::io("A local command's output broke", error)));
        let exit = Box::pin(async move {
            let status = child.wait().await.map_err(|error| Error::io("Could not wait for a local command", error))?;
            Ok(i64::from(status.code().unwrap_or(-1)))
        });
        Ok(Channel { input, output: Box::pin(output), exit })
    }
}

fn files(root: &std::path::Path) -> ShellFiles {
    let transport: Arc<dyn Transport> = Arc::new(LocalTransport);
    ShellFiles {
        agent: Arc::new(Agent::new(transport.clone())),
        transport,
        root: root.to_string_lossy().into_owned(),
        owner: None,
    }
}

fn archive(entries: &[(&str, Vec<u8>)]) -> BoxedReader {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, path, content.as_slice()).unwrap();
    }
    Box::pin(std::io::Cursor::new(builder.into_inner().unwrap()))
}

async fn names_in(mut reader: BoxedReader) -> Vec<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut found = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        found.push((name, content));
    }
    found.sort();
    found
}

/// Each batch's staging folder is merged away; the staging folder itself may stay.
fn assert_no_batch_left(root: &std::path::Path) {
    let staging = root.join(super::scripts::STAGING_DIR);
    let left = std::fs::read_dir(&staging).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(left, 0, "batches left in {}", staging.display());
}

#[tokio::test]
async fn shell_files_should_upload_list_stat_download_and_delete() {
    let root = tempfile::tempdir().unwrap();
    let files = files(root.path());
    files.upload_tar(archive(&[("a/b.txt", b"hello".to_vec()), ("-dash", b"x".to_vec())])).await.unwrap();
    assert_eq!(std::fs::read(root.path().join("a/b.txt")).unwrap(), b"hello");
    assert_no_batch_left(root.path());

    let listing = files.list().await.unwrap();
    let paths: Vec<(&str, EntryKind)> = listing.iter().map(|entry| (entry.path.as_str(), entry.kind)).collect();
    assert_eq!(paths, [("-dash", EntryKind::File), ("a", EntryKind::Dir), ("a/b.txt", EntryKind::File)]);
    let stat = files.stat(vec!["a/b.txt".into(), "missing".into()]).await.unwrap();
    assert_eq!((stat.len(), stat[0].size), (1, 5));

    let downloaded = names_in(files.download_tar(vec!["a".into(), "-dash".into(), "gone".into()]).await.unwrap()).await;
    let names: Vec<&str> = downloaded.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["-dash", "a", "a/b.txt"]);
    assert_eq!(downloaded[2].1, b"hello");
    assert!(names_in(files.download_tar(vec!["gone".into()]).await.unwrap()).await.is_empty());

    files.delete(vec!["a".into()]).await.unwrap();
    assert!(!root.path().join("a").exists());
    assert!(files.delete(vec!["../outside".into()]).await.is_err(), "paths leaving the root are refused");
}

#[tokio::test]
async fn a_small_upload_should_tell_how_its_files_look_in_the_same_request() {
    let root = tempfile::tempdir().unwrap();
    let files = files(root.path());
    let upload = archive(&[("a/b.txt", b"hello".to_vec()), ("-dash", b"xy".to_vec()), ("with space", b"s".to_vec())]);
    let looked = files.upload_tar_looked(upload).await.unwrap().expect("a small upload tells what it wrote");
    let mut told: Vec<(&str, u64)> = looked.iter().map(|entry| (entry.path.as_str(), entry.size)).collect();
    told.sort();
    assert_eq!(told, [("-dash", 2), ("a/b.txt", 5), ("with space", 1)]);
    for entry in &looked {
        let now = std::fs::metadata(root.path().join(&entry.path)).unwrap();
        assert_eq!(entry.inode, Some(std::os::unix::fs::MetadataExt::ino(&now)), "the look is of the placed file {}", entry.path);
        assert_eq!(entry.mtime_ns, 1_700_000_000 * 1_000_000_000, "{}", entry.path);
    }
    assert_eq!(std::fs::read(root.path().join("a/b.txt")).unwrap(), b"hello");
    assert_no_batch_left(root.path());
    // The same shell serves the next request in step.
    assert_eq!(files.stat(vec!["-dash".into()]).await.unwrap()[0].size, 2);
}

#[tokio::test]
async fn a_save_after_an_upload_in_a_busybox_sandbox_should_be_trusted_without_fetching_it() {
    // busybox's `stat` used to be read in whole seconds, which made every file uploaded in the last three seconds
    // "racy": the next save of it fetched the sandbox's copy to compare (25 ms on Docker, per save).
    let Some(transport) = BusyboxTransport::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(transport);
    let files = ShellFiles {
        agent: Arc::new(Agent::new(transport.clone())),
        transport,
        root: root.path().to_string_lossy().into_owned(),
        owner: None,
    };
    let observed_ns = crate::sync::manifest::now_ns();
    let looked = files.upload_tar_looked(archive(&[("src/saved.js", b"v1".to_vec())])).await.unwrap().expect("looked at");
    let stamp = crate::sync::manifest::RemoteStamp::after_upload(&looked[0], 2, 1_700_000_000, observed_ns)
        .expect("the look shows what the upload wrote");
    let metadata = std::fs::metadata(root.path().join("src/saved.js")).unwrap();
    assert_eq!(looked[0].ctime_ns, Some(i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec())));
    // The guard's look before the next save: the same file, nothing changed, and nothing to fetch.
    let later = files.stat(vec!["src/saved.js".into()]).await.unwrap();
    assert!(stamp.matches(&later[0]), "{stamp:?} vs {:?}", later[0]);
    assert!(!stamp.is_racy(&later[0]), "a file sandlink just uploaded is trusted on the next look: {:?}", later[0]);
    // A write in the sandbox right after is still seen: it moves the status-change time.
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(root.path().join("src/saved.js"), b"v2").unwrap();
    let changed = files.stat(vec!["src/saved.js".into()]).await.unwrap();
    assert!(!stamp.matches(&changed[0]), "a same-size write in the sandbox shows: {:?}", changed[0]);
}

#[tokio::test]
async fn shell_files_should_stream_large_batches_through_the_transport() {
    let root = tempfile::tempdir().unwrap();
    let files = files(root.path());
    let large: Vec<u8> = (0..(9u32 << 20)).map(|index| (index % 251) as u8).collect();
    files.upload_tar(archive(&[("big.bin", large.clone()), ("small", b"s".to_vec())])).await.unwrap();
    assert_eq!(std::fs::read(root.path().join("big.bin")).unwrap(), large);
    assert_eq!(std::fs::read(root.path().join("small")).unwrap(), b"s");
    assert_no_batch_left(root.path());
}

#[tokio::test]
async fn agent_should_give_each_request_its_own_stderr_when_stderr_comes_late() {
    // Each request's stderr is its own even when stdout's end marker arrives first: before stderr had a marker of
    // its own, an SSH run's state read took the previous `cat`'s error as its own and failed as a lost connection.
    let agent = Agent::new(Arc::new(LaggingStderrTransport));
    for index in 0..4 {
        let reply = agent.run(r#"echo "out $1"; echo "err $1" >&2"#, &[&index.to_string()], None).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&reply.stdout), format!("out {index}\n"));
        assert_eq!(String::from_utf8_lossy(&reply.stderr), format!("err {index}\n"), "request {index}");
    }
}

#[tokio::test]
async fn agent_should_keep_requests_apart_and_replace_a_shell_that_ended() {
    let agent = Agent::new(Arc::new(LocalTransport));
    let reply = agent.run(r#"printf '%s|' "$@"; echo oops >&2; exit 3"#, &["a b", "it's"], None).await.unwrap();
    assert_eq!((reply.status, reply.stdout.as_slice(), reply.stderr.as_slice()), (3, b"a b|it's|".as_slice(), b"oops\n".as_slice()));
    let reply = agent.run(r#"dd bs=65536 count="$2" iflag=count_bytes,fullblock 2>/dev/null | wc -c"#, &["x"], Some(b"12345")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "5");
    // A request that ends the shell itself fails; the next one gets a new shell.
    assert!(agent.run("kill -9 $$", &[], None).await.is_err());
    let reply = agent.run("echo again", &[], None).await.unwrap();
    assert_eq!((reply.status, reply.stdout.as_slice()), (0, b"again\n".as_slice()));
}
