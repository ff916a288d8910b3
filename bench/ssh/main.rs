//! ssh driver benchmarks, each a ratio against plain OpenSSH doing the same job in the same run.
//!
//! Run with `bench/ssh.sh` (after `tests/setup/ssh.sh`). Four figures:
//! - run round trip of `true` through sandlink (request to `sandlink/exit`) against `ssh host true` over a
//!   ControlMaster that is already open;
//! - initial sync of a generated tree against `tar -c | ssh host tar -x` over the same kind of master;
//! - an unchanged resync against `ssh host true` plus a local `git status`;
//! - saving one file until it is visible on the remote (the driver's upload of a one-file batch).

#[path = "../../tests/rust/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandlink::drivers::{ConnectRequest, Driver as _};
use serde_json::{json, Value};
use support::Server;

const ROUND_TRIPS: usize = 40;
const SYNC_ROUNDS: usize = 5;
const RESYNCS: usize = 20;
const SAVES: usize = 40;

struct Target {
    config: String,
    host: String,
    /// The control socket of the baseline's own master.
    control: PathBuf,
}

impl Target {
    /// `ssh -F CONFIG -S CONTROL HOST COMMAND`: plain OpenSSH over the open master.
    fn ssh(&self, command: &str) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.arg("-F").arg(&self.config).arg("-S").arg(&self.control).arg(&self.host).arg(command);
        ssh
    }

    fn settings(&self) -> Value {
        json!({ "host": self.host, "configFile": self.config, "sync": { "watch": "off" } })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(&self.config)
            .arg("-S")
            .arg(&self.control)
            .args(["-O", "exit"])
            .arg(&self.host)
            .stderr(Stdio::null())
            .status();
    }
}

fn main() {
    let config = std::env::var("SANDLINK_SSH_CONFIG").ok().filter(|config| Path::new(config).exists());
    if support::skip_unless(config.is_some(), "sshd on loopback (tests/setup/ssh.sh, tests/.run/ssh.env)") {
        return;
    }
    let config = config.unwrap_or_default();
    let host = std::env::var("SANDLINK_SSH_HOST").unwrap_or_else(|_| "sandlink-target".into());
    let control = std::env::temp_dir().join(format!("sandlink-bench-ssh-{}", std::process::id()));
    let opened = Command::new("ssh").arg("-F").arg(&config).args(["-M", "-f", "-N", "-S"]).arg(&control).arg(&host).status();
    assert!(opened.is_ok_and(|status| status.success()), "the baseline's ControlMaster opens");
    let target = Target { config, host, control };
    let server = Server::start();
    let mut ok = true;
    ok &= run_round_trip(&server, &target);
    ok &= syncs(&server, &target);
    ok &= save_one_file(&target);
    // `exit` skips destructors: the baseline's master is closed first.
    drop(target);
    if !ok {
        eprintln!("an ssh benchmark missed its target");
        std::process::exit(1);
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn connect(server: &Server, target: &Target, workspace: &Path, sync: bool) -> (String, String) {
    let session = server
        .request_timeout(
            "sandlink/connect",
            json!({ "driver": "ssh", "settings": target.settings(), "workspaceFolder": support::file_uri(workspace), "sync": sync }),
            Duration::from_secs(120),
        )
        .expect("connect ssh");
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let root = session["remoteRoot"].as_str().expect("remoteRoot").to_string();
    (session_id, root)
}

fn run_round_trip(server: &Server, target: &Target) -> bool {
    let workspace = support::workspace_with(&[]);
    let (session_id, _) = connect(server, target, workspace.path(), false);
    let run = |command: Value| {
        let started = Instant::now();
        let outcome = server.run_to_exit(command);
        assert_eq!(outcome.exit_code(), Some(0));
        started.elapsed()
    };
    let plain = || {
        let started = Instant::now();
        assert!(target.ssh("true").status().expect("ssh").success());
        started.elapsed()
    };
    for _ in 0..5 {
        run(json!({ "sessionId": session_id, "command": "true" }));
        plain();
    }
    let (mut ours, mut ours_args, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so both see the same machine load.
    for _ in 0..ROUND_TRIPS {
        ours.push(run(json!({ "sessionId": session_id, "command": "true" })));
        ours_args.push(run(json!({ "sessionId": session_id, "command": "true", "args": [] })));
        baseline.push(plain());
    }
    let (ours, ours_args, baseline) = (median(ours), median(ours_args), median(baseline));
    let ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "run round trip `true`: sandlink {:.1} ms (args form {:.1} ms), `ssh host true` over an open ControlMaster {:.1} ms, ratio {:.2} (target <= 1.0)",
        millis(ours),
        millis(ours_args),
        millis(baseline),
        ratio
    );
    let _ = server.request("sandlink/disconnect", json!({ "sessionId": session_id }));
    ratio <= 1.0
}

/// A tree like a small web project: many small sources in nested folders plus a few larger assets.
fn benchmark_tree(root: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0u64;
    let mut seed = 0x2545F4914F6CDD1Du64;
    for package in 0..20 {
        for module in 0..10 {
            let dir = root.join(format!("packages/p{package}/src/m{module}"));
            std::fs::create_dir_all(&dir).expect("bench dirs");
            for file in 0..10 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let size = 200 + (seed % 8000) as usize;
                let line = format!("export const value{file} = {seed}; // package {package} module {module}\n");
                let contents: String = line.repeat(size / line.len() + 1)[..size].to_string();
                std::fs::write(dir.join(format!("file{file}.ts")), contents).expect("bench file");
                files += 1;
                bytes += size as u64;
            }
        }
    }
    let assets = root.join("assets");
    std::fs::create_dir_all(&assets).expect("assets");
    for asset in 0..4 {
        let data: Vec<u8> = (0..2_000_000u32).map(|index| (index.wrapping_mul(2654435761) >> 13) as u8 ^ asset).collect();
        std::fs::write(assets.join(format!("image{asset}.bin")), &data).expect("asset");
        files += 1;
        bytes += data.len() as u64;
    }
    (files, bytes)
}

fn syncs(server: &Server, target: &Target) -> bool {
    let workspace = tempfile::tempdir().expect("bench workspace");
    let (files, bytes) = benchmark_tree(workspace.path());
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    let mut last_session = None;
    for round in 0..SYNC_ROUNDS + 1 {
        // A fresh session per round, its root emptied, so every sync is an initial one.
        if let Some(session_id) = last_session.take() {
            let _ = server.request("sandlink/disconnect", json!({ "sessionId": session_id }));
        }
        let (session_id, root) = connect(server, target, workspace.path(), false);
        let started = Instant::now();
        let result = server
            .request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), Duration::from_secs(120))
            .expect("sync");
        let ours_elapsed = started.elapsed();
        assert!(result["uploaded"].as_u64().unwrap_or(0) >= files as u64, "{result}");
        assert!(target.ssh("rm -rf ~/.cache/sandlink-baseline").status().expect("ssh").success());
        let started = Instant::now();
        let mut tar = Command::new("tar").args(["-c", "-C"]).arg(workspace.path()).arg(".").stdout(Stdio::piped()).spawn().expect("tar");
        let tar_output = tar.stdout.take().expect("tar stdout");
        let status = target
            .ssh("mkdir -p ~/.cache/sandlink-baseline && tar -x -C ~/.cache/sandlink-baseline")
            .stdin(Stdio::from(tar_output))
            .status()
            .expect("ssh tar");
        assert!(status.success() && tar.wait().expect("tar ends").success());
        let baseline_elapsed = started.elapsed();
        let check = target
            .ssh(&format!("cmp '{root}/assets/image3.bin' ~/.cache/sandlink-baseline/assets/image3.bin && find '{root}' -type f | wc -l"))
            .output()
            .expect("check");
        let count: usize = String::from_utf8_lossy(&check.stdout).trim().parse().unwrap_or(0);
        assert!(check.status.success() && count == files, "the sync delivered every file: {count} of {files}");
        if round > 0 {
            ours.push(ours_elapsed);
            baseline.push(baseline_elapsed);
        }
        last_session = Some(session_id);
    }
    let _ = target.ssh("rm -rf ~/.cache/sandlink-baseline").status();
    let (ours, baseline) = (median(ours), median(baseline));
    let initial_ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    let driver_part = driver_upload(target, workspace.path());
    println!(
        "initial sync of {files} files ({:.1} MB): sandlink {:.0} ms, `tar -c | ssh host tar -x` {:.0} ms, ratio {:.2} (target <= 1.2)",
        bytes as f64 / 1e6,
        millis(ours),
        millis(baseline),
        initial_ratio
    );
    println!(
        "  of which the driver's upload of the same tree as one prebuilt archive (unpack, merge, look): {:.0} ms; the rest is the engine's scan, hashing, secret check and archive",
        millis(driver_part)
    );

    // An unchanged resync of the last session against what a person would run to see that nothing changed.
    let session_id = last_session.expect("a session");
    let git = |arguments: &[&str]| {
        let status = Command::new("git").arg("-C").arg(workspace.path()).args(arguments).stdout(Stdio::null()).status().expect("git");
        assert!(status.success(), "git {arguments:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qm", "bench"]);
    let _ = server.request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), Duration::from_secs(120));
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..RESYNCS {
        let started = Instant::now();
        let result = server
            .request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), Duration::from_secs(120))
            .expect("resync");
        ours.push(started.elapsed());
        assert_eq!(result["uploaded"], 0, "{result}");
        let started = Instant::now();
        assert!(target.ssh("true").status().expect("ssh").success());
        git(&["status", "--porcelain"]);
        baseline.push(started.elapsed());
    }
    let (ours, baseline) = (median(ours), median(baseline));
    let resync_ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "unchanged resync: sandlink {:.1} ms, `ssh host true` + `git status` {:.1} ms, ratio {:.2}",
        millis(ours),
        millis(baseline),
        resync_ratio
    );
    let _ = server.request("sandlink/disconnect", json!({ "sessionId": session_id }));
    initial_ratio <= 1.2
}

/// The driver's part of an initial sync: the whole tree as one prebuilt archive through the files API, median.
fn driver_upload(target: &Target, tree: &Path) -> Duration {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", tree).expect("archive the tree");
    let archive = builder.into_inner().expect("tar");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let state = tempfile::tempdir().expect("state dir");
        let sandbox = sandlink::drivers::ssh::Driver::new()
            .connect(ConnectRequest {
                session_id: format!("ssh-benchup{}", std::process::id()),
                workspace: None,
                settings: target.settings().as_object().expect("settings").clone(),
                state_dir: state.path().to_path_buf(),
                credentials: Default::default(),
                runs_commands: true,
            })
            .await
            .expect("connect");
        let files = sandbox.files().expect("ssh syncs files");
        let (mut samples, mut uploads) = (Vec::new(), Vec::new());
        for _ in 0..SYNC_ROUNDS {
            assert!(target.ssh(&format!("rm -rf '{}'/* '{}'/.git", sandbox.remote_root(), sandbox.remote_root())).status().expect("ssh").success());
            let started = Instant::now();
            files.upload_tar(Box::pin(std::io::Cursor::new(archive.clone()))).await.expect("upload");
            uploads.push(started.elapsed());
            let _ = files.list().await.expect("the look after a batch");
            samples.push(started.elapsed());
        }
        sandbox.disconnect(false).await.expect("disconnect");
        println!("  (the driver's unpack and merge alone: {:.0} ms)", millis(median(uploads)));
        median(samples)
    })
}

/// The driver's part of save-to-visible: one changed file as a one-entry batch, through the driver's files API.
fn save_one_file(target: &Target) -> bool {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let state = tempfile::tempdir().expect("state dir");
        let driver = sandlink::drivers::ssh::Driver::new();
        let settings = target.settings().as_object().expect("settings").clone();
        let sandbox = driver
            .connect(ConnectRequest {
                session_id: format!("ssh-bench{}", std::process::id()),
                workspace: None,
                settings,
                state_dir: state.path().to_path_buf(),
                credentials: Default::default(),
                runs_commands: true,
            })
            .await
            .expect("connect");
        let files = sandbox.files().expect("ssh syncs files");
        let mut samples = Vec::new();
        for save in 0..SAVES + 3 {
            let contents = format!("export const saved = {save};\n");
            let archive = one_file_tar("src/app.ts", contents.as_bytes());
            let started = Instant::now();
            files.upload_tar(Box::pin(std::io::Cursor::new(archive))).await.expect("upload");
            if save >= 3 {
                samples.push(started.elapsed());
            }
        }
        let check = target.ssh(&format!("cat '{}/src/app.ts'", sandbox.remote_root())).output().expect("cat");
        assert_eq!(String::from_utf8_lossy(&check.stdout), format!("export const saved = {};\n", SAVES + 2));
        sandbox.disconnect(false).await.expect("disconnect");
        let median = median(samples);
        println!("save one file to visible on the remote: median {:.1} ms (target < 30 ms)", millis(median));
        median < Duration::from_millis(30)
    })
}

fn one_file_tar(path: &str, contents: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    builder.append_data(&mut header, path, contents).expect("tar entry");
    let mut archive = builder.into_inner().expect("tar");
    archive.flush().expect("flush");
    archive
}
