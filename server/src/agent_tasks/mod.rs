//! Agent tasks (`sandlink/task/*`): a repository cloned into a fresh sandbox on the branch `task-{id}`, its work
//! committed there with Conventional Commits messages, pushed from the host and opened as a pull request.
//!
//! The host keeps a clone per task (`agent-tasks/<id>/repo` under the state directory); the sandbox gets a copy of it,
//! `.git` included, through the driver's file operations. Commits are made in the sandbox; a push brings them out as a
//! git bundle and pushes from the host clone, so the token never enters the sandbox (see docs/tasks.md). Each task
//! has its own sandbox, branch and host clone, so tasks on one repository run in parallel without sharing anything
//! but the remote. Not the workspace's `.sandlink.toml` tasks (`crate::tasks`).

pub mod cli;
pub mod conventional;
pub mod git;
pub mod github;
pub mod record;
mod sandbox;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::credentials::Secret;
use crate::drivers::Sandbox;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::progress::{NoProgress, Progress};
use crate::protocol::{
    ConnectParams, DisconnectParams, TaskCommit, TaskCommitParams, TaskEndParams, TaskInfo, TaskListResult,
    TaskPrParams, TaskStartParams, TaskState,
};
use crate::statefile;
use git::Credential;
use record::Layout;

/// The keychain key of a profile's GitHub token; `GITHUB_TOKEN` or `GH_TOKEN` override it.
pub const TOKEN_KEY: &str = crate::credentials::GITHUB_TOKEN.key;
/// Where a push's bundle is written in the sandbox: inside `.git`, so never in the work tree or a commit.
const PUSH_BUNDLE: &str = ".git/sandlink-push.bundle";
/// Where the workspace's uncommitted changes are handed to the sandbox as a patch.
const CARRY_PATCH: &str = ".git/sandlink-carry.patch";
/// Where a rebased branch is handed back to the sandbox.
const REBASED_BUNDLE: &str = ".git/sandlink-rebased.bundle";
/// How many rebases onto a moving base one push tries before reporting it.
const REBASE_ATTEMPTS: u32 = 3;
/// git in the sandbox runs over files that another user id may own (the upload's); it is the task's own clone.
const SANDBOX_GIT: &str = "git -c safe.directory='*'";

/// The branch of a task.
pub fn branch_of(task_id: &str) -> String {
    format!("task-{task_id}")
}

/// Starts a task: clones on the host, opens a sandbox through the engine's connect, copies the clone in and checks
/// the branch out there. Anything made is removed again when a step fails.
/// Without `repo`, the repository of `params.workspace_folder`, else of `default_workspace` (the server's root, the
/// command line's current folder), is the source.
pub async fn start(
    engine: &Engine,
    params: TaskStartParams,
    default_workspace: Option<std::path::PathBuf>,
    progress: &dyn Progress,
) -> Result<TaskInfo> {
    crate::credentials::check_name("task id", &params.task_id)?;
    let source = match &params.repo {
        Some(repo) => {
            check_repo_url(repo)?;
            Source::Remote(repo.clone())
        }
        None => {
            let folder = match &params.workspace_folder {
                Some(folder) => Some(crate::paths::path_from_uri_or_path(folder)?),
                None => default_workspace,
            };
            let folder = folder.ok_or_else(|| {
                Error::InvalidParams("Say which repository to clone (`repo`), or start from a workspace folder.".into())
            })?;
            workspace_source(&folder).await?
        }
    };
    let layout = Layout::new(engine.state_dir());
    let task_id = params.task_id.clone();
    let _lock = lock_task(&layout, &task_id).await?;
    if read_record(&layout, &task_id).await?.is_some() {
        return Err(Error::InvalidParams(format!(
            "There is already a task \"{task_id}\" (`sandlink task status {task_id}`); choose another id."
        )));
    }
    let started = std::time::Instant::now();
    let host_repo = layout.host_repo(&task_id);
    let outcome = start_inner(engine, &params, &source, &host_repo, progress).await;
    match outcome {
        Ok(record) => {
            write_record(&layout, &record).await?;
            tracing::info!(task_id, elapsed_ms = started.elapsed().as_millis() as u64, "agent task started");
            Ok(record)
        }
        Err(error) => {
            let dir = layout.task_dir(&task_id);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            Err(error)
        }
    }
}

/// Where a task's repository comes from.
enum Source {
    /// A remote, cloned shallow at the requested ref.
    Remote(String),
    /// The open workspace's repository: its current commit, pushed to its `origin`, with its uncommitted changes.
    Workspace { top: std::path::PathBuf, remote: String, head: String, branch: Option<String>, base_branch: String },
}

impl Source {
    fn remote(&self) -> &str {
        match self {
            Source::Remote(repo) => repo,
            Source::Workspace { remote, .. } => remote,
        }
    }
}

/// Reads what a start from the workspace's repository needs: its top folder, `origin` (without any credential in
/// it), its commit and branch, and the branch a pull request targets (the upstream's, else the branch itself).
async fn workspace_source(folder: &Path) -> Result<Source> {
    let top = git::run(Some(folder), &["rev-parse", "--show-toplevel"], None).await?;
    if !top.success {
        return Err(Error::InvalidParams(format!(
            "{} is not in a git repository; give `repo` to clone one.",
            folder.display()
        )));
    }
    let top = std::path::PathBuf::from(top.stdout.trim());
    let origin = git::run(Some(&top), &["remote", "get-url", "origin"], None).await?;
    if !origin.success {
        return Err(Error::InvalidParams(format!(
            "The repository at {} has no `origin` remote to push the task's branch to.",
            top.display()
        )));
    }
    let remote = without_credentials(origin.stdout.trim());
    let head = git::ok(&top, &["rev-parse", "HEAD"]).await?;
    let current = git::ok(&top, &["rev-parse", "--abbrev-ref", "HEAD"]).await?;
    let branch = (current != "HEAD").then_some(current);
    let upstream = git::run(Some(&top), &["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"], None).await?;
    let base_branch = match (upstream.success, &branch) {
        (true, _) => upstream.stdout.trim().split_once('/').map(|(_, name)| name.to_string()).unwrap_or_default(),
        (false, Some(branch)) => branch.clone(),
        (false, None) => "main".to_string(),
    };
    Ok(Source::Workspace { top, remote, head, branch, base_branch })
}

/// `url` without a user name or password, so none reaches the clone's config (and the sandbox).
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() || !parsed.username().is_empty() => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Clones the workspace's repository at its current commit into `dir`, pointed at its `origin`.
async fn clone_workspace(source: &Source, dir: &Path) -> Result<String> {
    let Source::Workspace { top, remote, head, branch, base_branch } = source else {
        return Err(Error::Internal("clone_workspace needs a workspace source".into()));
    };
    if let Some(parent) = dir.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|error| Error::io(format!("Could not create {}", parent.display()), error))?;
    }
    let from = format!("file://{}", top.display());
    let target = dir.to_string_lossy().into_owned();
    let mut args = vec!["clone", "-q", "--no-checkout", "--no-tags"];
    if let Some(branch) = branch {
        // Shallow through file://: only the commit the agent starts from, not the whole history.
        args.extend(["--depth", "1", "--branch", branch]);
    }
    args.extend(["--", &from, &target]);
    git::network_ok(None, &args, None, "copy the workspace's repository").await?;
    git::ok(dir, &["update-ref", "--no-deref", "HEAD", head]).await?;
    git::ok(dir, &["remote", "set-url", "origin", remote]).await?;
    Ok(base_branch.clone())
}

/// Carries the workspace's uncommitted changes into the sandbox's checkout: untracked files (not ignored ones) as
/// files, changes to tracked ones as a patch applied there.
async fn carry_changes(sandbox: &dyn Sandbox, top: &Path) -> Result<()> {
    let untracked = git::ok(top, &["ls-files", "-z", "--others", "--exclude-standard"]).await?;
    let untracked: Vec<String> = untracked.split('\0').filter(|path| !path.is_empty()).map(str::to_string).collect();
    if !untracked.is_empty() {
        let files = sandbox.files().ok_or_else(|| Error::unsupported_by(sandbox.driver_id(), "file transfer"))?;
        let root = top.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let mut archive = Vec::new();
            crate::sync::transfer::pack(&root, &untracked, crate::sync::transfer::Links::Inside, &mut archive, &mut |_| {})?;
            Ok(archive)
        })
        .await
        .map_err(|error| Error::Internal(format!("Packing the untracked files stopped: {error}")))??;
        files.upload_tar(Box::pin(std::io::Cursor::new(archive))).await?;
    }
    // Bytes as git wrote them: a text file in another encoding must reach the patch unchanged.
    let patch = tokio::process::Command::new("git")
        .args(["diff", "--binary", "--no-color", "--no-ext-diff", "HEAD"])
        .current_dir(top)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| Error::io("Could not run git diff in the workspace", error))?;
    if !patch.status.success() {
        let stderr = String::from_utf8_lossy(&patch.stderr);
        return Err(Error::Internal(format!("Could not read the workspace's changes: {}", git::last_line(&stderr))));
    }
    if !patch.stdout.is_empty() {
        sandbox::upload_file(sandbox, CARRY_PATCH, patch.stdout).await?;
        let script = format!("{SANDBOX_GIT} apply --binary \"$1\"; status=$?; rm -f \"$1\"; exit $status");
        sandbox::shell_ok(sandbox, &script, &[CARRY_PATCH], BTreeMap::new(), "carry the uncommitted changes over").await?;
    }
    Ok(())
}

async fn start_inner(
    engine: &Engine,
    params: &TaskStartParams,
    source: &Source,
    host_repo: &Path,
    progress: &dyn Progress,
) -> Result<TaskInfo> {
    let branch = branch_of(&params.task_id);
    let credential = credential_for(source.remote(), params.profile.as_deref()).await;
    // An empty folder of the task's own as the session's workspace: the engine re-attaches a kept sandbox with the
    // same driver, settings and workspace instead of making one, and no task may get another's; and no repository's
    // `.sandlink.toml` is ever read as the workspace's profiles.
    let workspace = host_repo.with_file_name("workspace");
    tokio::fs::create_dir_all(&workspace)
        .await
        .map_err(|error| Error::io(format!("Could not create {}", workspace.display()), error))?;
    let connect = ConnectParams {
        profile: params.profile.clone(),
        driver: params.driver.clone(),
        settings: params.settings.clone(),
        workspace_folder: Some(workspace.to_string_lossy().into_owned()),
        sync: Some(false),
        reuse: None,
        work_done_token: None,
    };
    // The clone and the sandbox do not depend on each other until the upload, so they are made at the same time.
    let cloning = async {
        progress.report(format!("Cloning {}", source.remote()), None).await;
        let base_branch = match source {
            Source::Remote(repo) => clone(repo, params.r#ref.as_deref(), host_repo, credential.as_ref()).await?,
            Source::Workspace { .. } => clone_workspace(source, host_repo).await?,
        };
        let base_commit = git::ok(host_repo, &["rev-parse", "HEAD"]).await?;
        // The branch is made without a checkout: the host never needs the files, the sandbox checks them out.
        git::ok(host_repo, &["branch", &branch, &base_commit]).await?;
        git::ok(host_repo, &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")]).await?;
        tracing::debug!(task_id = %params.task_id, "cloned on the host");
        Ok::<_, Error>((base_branch, base_commit))
    };
    let (cloned, connected) = tokio::join!(cloning, engine.connect(connect, None, progress));
    let session = connected?;
    let (base_branch, base_commit) = match cloned {
        Ok(cloned) => cloned,
        Err(error) => {
            let _ = engine.disconnect(DisconnectParams { session_id: session.session_id.clone(), keep: false }).await;
            return Err(error);
        }
    };
    let session_id = session.session_id.clone();
    let prepared = async {
        let sandbox = engine.session(&session_id)?.sandbox.clone();
        tracing::debug!(task_id = %params.task_id, "sandbox connected");
        progress.report("Copying the repository into the sandbox".into(), None).await;
        sandbox::upload_tree(sandbox.as_ref(), host_repo).await?;
        tracing::debug!(task_id = %params.task_id, "repository uploaded");
        // Only `.git` went in (a pack, not hundreds of files); git writes the tree in the sandbox.
        let checked_out = sandbox::shell(
            sandbox.as_ref(),
            &format!("{SANDBOX_GIT} reset -q --hard && {SANDBOX_GIT} rev-parse --abbrev-ref HEAD"),
            &[],
            BTreeMap::new(),
        )
        .await?;
        if !checked_out.success() || checked_out.stdout.trim() != branch {
            return Err(Error::Unsupported(format!(
                "The sandbox could not use the repository (is git installed there?): {}",
                git::last_line(&format!("{}\n{}", checked_out.stdout, checked_out.stderr))
            )));
        }
        if let Source::Workspace { top, .. } = source {
            progress.report("Carrying the workspace's uncommitted changes over".into(), None).await;
            carry_changes(sandbox.as_ref(), top).await?;
        }
        // The host clone leaves the branch so a push can fetch the sandbox's commits into it.
        git::ok(host_repo, &["update-ref", "--no-deref", "HEAD", &base_commit]).await?;
        Ok(())
    }
    .await;
    if let Err(error) = prepared {
        let _ = engine.disconnect(DisconnectParams { session_id: session_id.clone(), keep: false }).await;
        return Err(error);
    }
    let now = crate::clock::now_rfc3339();
    Ok(TaskInfo {
        task_id: params.task_id.clone(),
        repo: source.remote().to_string(),
        branch,
        base_branch,
        base_commit,
        state: TaskState::Running,
        title: params.title.clone(),
        profile: params.profile.clone(),
        session_id: Some(session_id),
        commits: Vec::new(),
        pushed_commit: None,
        pr_url: None,
        pr_number: None,
        message: None,
        created_at: now.clone(),
        updated_at: now,
    })
}

/// Clones `repo` at `reference` into `dir` (shallow when the reference is a branch or tag) and answers the branch
/// the task's pull request will target.
async fn clone(repo: &str, reference: Option<&str>, dir: &Path, credential: Option<&Credential>) -> Result<String> {
    if let Some(parent) = dir.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|error| Error::io(format!("Could not create {}", parent.display()), error))?;
    }
    let target = dir.to_string_lossy().into_owned();
    let mut args = vec!["clone", "-q", "--no-checkout", "--depth", "1", "--no-tags"];
    if let Some(reference) = reference {
        args.extend(["--branch", reference]);
    }
    args.extend(["--", repo, &target]);
    let shallow = git::network(None, &args, credential).await?;
    if !shallow.success {
        let Some(reference) = reference else {
            return Err(Error::Remote { status: None, message: format!("Could not clone {repo}: {}", git::last_line(&shallow.stderr)) });
        };
        // A commit id cannot be cloned by name: the whole history, then a checkout of it.
        let _ = tokio::fs::remove_dir_all(dir).await;
        git::network_ok(None, &["clone", "-q", "--no-checkout", "--", repo, &target], credential, &format!("clone {repo}")).await?;
        let commit = git::run(Some(dir), &["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")], None).await?;
        if !commit.success {
            return Err(Error::InvalidParams(format!("The repository has no branch, tag or commit \"{reference}\".")));
        }
        git::ok(dir, &["update-ref", "--no-deref", "HEAD", commit.stdout.trim()]).await?;
    }
    let current = git::ok(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).await?;
    if current != "HEAD" {
        return Ok(current);
    }
    // On a tag or a commit: the pull request goes to the remote's default branch.
    let remote_head = git::network_ok(Some(dir), &["ls-remote", "--symref", "origin", "HEAD"], credential, "read the default branch").await?;
    Ok(remote_head
        .lines()
        .find_map(|line| line.strip_prefix("ref: refs/heads/").and_then(|rest| rest.split('\t').next()))
        .unwrap_or("main")
        .to_string())
}

/// A task's record, refreshed: a task whose sandbox is gone turns `failed` with its last pushed commit.
pub async fn status(engine: &Engine, task_id: &str) -> Result<TaskInfo> {
    let layout = Layout::new(engine.state_dir());
    let record = existing(&layout, task_id).await?;
    if matches!(record.state, TaskState::Running | TaskState::Pushed) && record.session_id.is_some() {
        let _lock = lock_task(&layout, task_id).await?;
        let mut record = existing(&layout, task_id).await?;
        match sandbox_of(engine, &layout, &mut record).await {
            Ok(_) | Err(Error::SessionGone(_)) => {}
            Err(error) => return Err(error),
        }
        return Ok(record);
    }
    Ok(record)
}

/// Every task's record, newest first.
pub async fn list(engine: &Engine) -> Result<TaskListResult> {
    let layout = Layout::new(engine.state_dir());
    let tasks = statefile::blocking(move || layout.list()).await?;
    Ok(TaskListResult { tasks })
}

/// Commits every change in the sandbox with the host user's identity and a Conventional Commits message.
pub async fn commit(engine: &Engine, params: TaskCommitParams) -> Result<TaskInfo> {
    conventional::check(&params.message)?;
    let layout = Layout::new(engine.state_dir());
    let _lock = lock_existing_task(&layout, &params.task_id).await?;
    let mut record = existing(&layout, &params.task_id).await?;
    let sandbox = sandbox_of(engine, &layout, &mut record).await?;
    let (name, email) = git::identity().await;
    let env = BTreeMap::from([
        ("GIT_AUTHOR_NAME".to_string(), name.clone()),
        ("GIT_AUTHOR_EMAIL".to_string(), email.clone()),
        ("GIT_COMMITTER_NAME".to_string(), name),
        ("GIT_COMMITTER_EMAIL".to_string(), email),
    ]);
    let script = format!(
        "{SANDBOX_GIT} add -A && if {SANDBOX_GIT} diff --cached --quiet; then echo sandlink-nothing-to-commit; exit 0; fi \
         && {SANDBOX_GIT} commit -q --no-verify -m \"$1\" && {SANDBOX_GIT} rev-parse HEAD"
    );
    let sha = sandbox::shell_ok(sandbox.as_ref(), &script, &[&params.message], env, "commit").await?;
    if sha == "sandlink-nothing-to-commit" {
        return Err(Error::InvalidParams(format!(
            "There is nothing to commit in task {}: its sandbox has no changes since the last commit.",
            params.task_id
        )));
    }
    let subject = params.message.lines().next().unwrap_or_default().to_string();
    record.commits.push(TaskCommit { sha, message: subject });
    record.state = TaskState::Running;
    save(&layout, &mut record).await?;
    Ok(record)
}

/// Pushes the task's branch from the host: the sandbox's commits come out as a bundle, the host clone pushes them
/// with the token, and a push refused because the base moved is rebased onto the new base and tried again.
pub async fn push(engine: &Engine, task_id: &str) -> Result<TaskInfo> {
    let layout = Layout::new(engine.state_dir());
    let _lock = lock_existing_task(&layout, task_id).await?;
    let mut record = existing(&layout, task_id).await?;
    let sandbox = sandbox_of(engine, &layout, &mut record).await?;
    let host_repo = layout.host_repo(task_id);
    let credential = credential_for(&record.repo, record.profile.as_deref()).await;
    let branch = record.branch.clone();
    let head = sandbox::shell_ok(sandbox.as_ref(), &format!("{SANDBOX_GIT} rev-parse HEAD"), &[], BTreeMap::new(), "read the branch").await?;
    if head == record.base_commit {
        return Err(Error::InvalidParams(format!("Task {task_id} has no commits to push; commit first (`sandlink task commit`).")));
    }
    // Bring the commits out: a bundle of what the base does not have, fetched into the host clone's branch.
    let bundle_script = format!("{SANDBOX_GIT} bundle create -q \"$1\" \"$2..refs/heads/$3\"");
    sandbox::shell_ok(sandbox.as_ref(), &bundle_script, &[PUSH_BUNDLE, &record.base_commit, &branch], BTreeMap::new(), "bundle the commits").await?;
    let bundle = sandbox::download_file(sandbox.as_ref(), PUSH_BUNDLE).await;
    let _ = sandbox::shell(sandbox.as_ref(), "rm -f \"$1\"", &[PUSH_BUNDLE], BTreeMap::new()).await;
    let bundle_path = layout.task_dir(task_id).join("push.bundle");
    tokio::fs::write(&bundle_path, bundle?).await.map_err(|error| Error::io("Could not keep the pushed bundle", error))?;
    let bundle_arg = bundle_path.to_string_lossy().into_owned();
    let fetched = git::ok(&host_repo, &["fetch", "-q", &bundle_arg, &format!("+refs/heads/{branch}:refs/heads/{branch}")]).await;
    let _ = tokio::fs::remove_file(&bundle_path).await;
    fetched?;

    let mut rebases = 0;
    loop {
        let expected = record.pushed_commit.clone().unwrap_or_default();
        let lease = format!("--force-with-lease=refs/heads/{branch}:{expected}");
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        let pushed = git::network(Some(&host_repo), &["push", "--porcelain", &lease, "origin", &refspec], credential.as_ref()).await?;
        if pushed.success {
            let head = git::ok(&host_repo, &["rev-parse", &format!("refs/heads/{branch}")]).await?;
            // What the remote now has, commits an agent made with git itself included.
            record.commits = commits_between(&host_repo, &record.base_commit, &branch).await?;
            record.pushed_commit = Some(head);
            record.state = TaskState::Pushed;
            record.message = None;
            save(&layout, &mut record).await?;
            return Ok(record);
        }
        let refusal = format!("{}\n{}", pushed.stdout, pushed.stderr);
        if !refusal.contains("rejected") || rebases >= REBASE_ATTEMPTS {
            return Err(Error::Remote { status: None, message: format!("The remote refused the push of {branch}: {}", git::last_line(&refusal)) });
        }
        // Refused: if the base moved, rebase onto it and try again; otherwise it is not ours to fix.
        let base_ref = format!("refs/remotes/origin/{}", record.base_branch);
        git::network_ok(
            Some(&host_repo),
            &["fetch", "-q", "origin", &format!("+refs/heads/{}:{base_ref}", record.base_branch)],
            credential.as_ref(),
            "fetch the base branch",
        )
        .await?;
        let new_base = git::ok(&host_repo, &["rev-parse", &base_ref]).await?;
        if new_base == record.base_commit {
            return Err(Error::Remote { status: None, message: format!("The remote refused the push of {branch}: {}", git::last_line(&refusal)) });
        }
        progress_note(task_id, "the base moved; rebasing before pushing again");
        rebase_on_host(&host_repo, &branch, &base_ref, task_id).await?;
        hand_back_rebased(sandbox.as_ref(), &host_repo, &record.base_commit, &branch).await?;
        record.base_commit = new_base;
        record.commits = commits_between(&host_repo, &record.base_commit, &branch).await?;
        save(&layout, &mut record).await?;
        rebases += 1;
    }
}

fn progress_note(task_id: &str, what: &str) {
    tracing::info!(task_id, "{what}");
}

/// Rebases the host clone's `branch` onto `onto`; conflicts abort it and are reported with their files.
async fn rebase_on_host(host_repo: &Path, branch: &str, onto: &str, task_id: &str) -> Result<()> {
    // Forced: the host clone was made without a checkout, so its index and tree say nothing.
    git::ok(host_repo, &["checkout", "-q", "-f", branch]).await?;
    let (name, email) = git::identity().await;
    let rebased = git::run(
        Some(host_repo),
        &["-c", &format!("user.name={name}"), "-c", &format!("user.email={email}"), "rebase", "-q", onto],
        None,
    )
    .await?;
    if !rebased.success {
        let files = git::ok(host_repo, &["diff", "--name-only", "--diff-filter=U"]).await.unwrap_or_default();
        let files: Vec<String> = files.lines().map(str::to_string).filter(|line| !line.is_empty()).collect();
        let _ = git::run(Some(host_repo), &["rebase", "--abort"], None).await;
        let _ = git::run(Some(host_repo), &["checkout", "-q", "-f", "--detach"], None).await;
        return Err(Error::Conflict {
            message: format!(
                "The push of task {task_id} was refused because its base moved, and its commits do not rebase cleanly \
                 onto the new base: {} conflict. Resolve them in the sandbox (merge or rebase the base branch there), \
                 commit, and push again.",
                if files.is_empty() { "some files".to_string() } else { files.join(", ") }
            ),
            files,
        });
    }
    git::ok(host_repo, &["checkout", "-q", "--detach"]).await?;
    Ok(())
}

/// Puts the rebased branch back into the sandbox, keeping any uncommitted changes there (`reset --keep`).
async fn hand_back_rebased(sandbox: &dyn Sandbox, host_repo: &Path, old_base: &str, branch: &str) -> Result<()> {
    let bundle_path = host_repo.parent().unwrap_or(host_repo).join("rebased.bundle");
    let bundle_arg = bundle_path.to_string_lossy().into_owned();
    git::ok(host_repo, &["bundle", "create", "-q", &bundle_arg, &format!("{old_base}..refs/heads/{branch}")]).await?;
    let content = tokio::fs::read(&bundle_path).await.map_err(|error| Error::io("Could not read the rebased bundle", error));
    let _ = tokio::fs::remove_file(&bundle_path).await;
    sandbox::upload_file(sandbox, REBASED_BUNDLE, content?).await?;
    let script = format!(
        "{SANDBOX_GIT} fetch -q \"$1\" \"+refs/heads/$2:refs/sandlink/rebased\" && {SANDBOX_GIT} reset -q --keep refs/sandlink/rebased \
         && {SANDBOX_GIT} update-ref -d refs/sandlink/rebased; status=$?; rm -f \"$1\"; exit $status"
    );
    sandbox::shell_ok(sandbox, &script, &[REBASED_BUNDLE, branch], BTreeMap::new(), "take the rebased branch").await?;
    Ok(())
}

/// The commits of `branch` after `base`, oldest first, with their subjects.
async fn commits_between(host_repo: &Path, base: &str, branch: &str) -> Result<Vec<TaskCommit>> {
    let log = git::ok(host_repo, &["log", "--reverse", "--format=%H%x1f%s", &format!("{base}..refs/heads/{branch}")]).await?;
    Ok(log
        .lines()
        .filter_map(|line| line.split_once('\u{1f}'))
        .map(|(sha, subject)| TaskCommit { sha: sha.to_string(), message: subject.to_string() })
        .collect())
}

/// Opens the task's pull request (or finds the one its branch has) through GitHub's REST API.
pub async fn pull_request(engine: &Engine, params: TaskPrParams) -> Result<TaskInfo> {
    let layout = Layout::new(engine.state_dir());
    let _lock = lock_existing_task(&layout, &params.task_id).await?;
    let mut record = existing(&layout, &params.task_id).await?;
    if record.pushed_commit.is_none() {
        return Err(Error::InvalidParams(format!(
            "Task {} has nothing on the remote yet; push first (`sandlink task push {}`).",
            params.task_id, params.task_id
        )));
    }
    let repo = github::RepoName::from_url(&record.repo)?;
    let token = token(record.profile.as_deref()).await.ok_or_else(|| {
        Error::CredentialsMissing(
            "Opening a pull request needs a GitHub token: set GITHUB_TOKEN (or GH_TOKEN), or store one with \
             `sandlink profile set-credential PROFILE githubToken` and start the task with that profile."
                .into(),
        )
    })?;
    let title = params
        .title
        .clone()
        .or_else(|| record.title.clone())
        .or_else(|| record.commits.first().map(|commit| commit.message.clone()))
        .unwrap_or_else(|| format!("Task {}", record.task_id));
    let body = params.body.clone().unwrap_or_else(|| default_body(&record));
    let client = github::Client::new(None, token)?;
    let pull = client
        .open_pull_request(
            &repo,
            github::NewPullRequest { head: &record.branch, base: &record.base_branch, title: &title, body: &body, draft: params.draft },
        )
        .await?;
    record.pr_url = Some(pull.url);
    record.pr_number = Some(pull.number);
    save(&layout, &mut record).await?;
    Ok(record)
}

fn default_body(record: &TaskInfo) -> String {
    let mut body = match &record.title {
        Some(title) => format!("Task {}: {title}\n", record.task_id),
        None => format!("Task {}\n", record.task_id),
    };
    if !record.commits.is_empty() {
        body.push_str("\nCommits:\n");
        for commit in &record.commits {
            body.push_str(&format!("- {} ({})\n", commit.message, &commit.sha[..commit.sha.len().min(7)]));
        }
    }
    body
}

/// Ends a task: its sandbox removed (or kept), its record kept as `done`, or `failed` when commits never reached
/// the remote.
pub async fn end(engine: &Engine, params: TaskEndParams) -> Result<TaskInfo> {
    let layout = Layout::new(engine.state_dir());
    let _lock = lock_existing_task(&layout, &params.task_id).await?;
    let mut record = existing(&layout, &params.task_id).await?;
    if let Some(session_id) = record.session_id.clone() {
        match engine.disconnect(DisconnectParams { session_id, keep: params.keep }).await {
            Ok(()) | Err(Error::UnknownSession(_)) | Err(Error::SessionGone(_)) => {}
            Err(error) => return Err(error),
        }
        if !params.keep {
            record.session_id = None;
        }
    }
    let unpushed = record.commits.last().is_some_and(|last| record.pushed_commit.as_deref() != Some(last.sha.as_str()));
    if record.state != TaskState::Failed {
        if unpushed {
            record.state = TaskState::Failed;
            record.message = Some(format!(
                "The task ended with commits the remote never got; the last pushed commit is {}.",
                record.pushed_commit.as_deref().unwrap_or("none")
            ));
        } else {
            record.state = TaskState::Done;
        }
    }
    if !params.keep {
        let host_repo = layout.host_repo(&params.task_id);
        let workspace = host_repo.with_file_name("workspace");
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(workspace);
            std::fs::remove_dir_all(host_repo)
        })
        .await;
    }
    save(&layout, &mut record).await?;
    Ok(record)
}

/// What a command run in a task's sandbox printed and how it ended.
pub struct ExecOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a shell command line in the task's sandbox, at its root, and answers its output once it ended: for the
/// command line, which has no live session to send `sandlink/run` to (editors use `sandlink/run` on `sessionId`).
pub async fn exec(engine: &Engine, task_id: &str, command: &str) -> Result<ExecOutput> {
    let layout = Layout::new(engine.state_dir());
    let _lock = lock_existing_task(&layout, task_id).await?;
    let mut record = existing(&layout, task_id).await?;
    let sandbox = sandbox_of(engine, &layout, &mut record).await?;
    let output = sandbox::shell(sandbox.as_ref(), command, &[], BTreeMap::new()).await?;
    Ok(ExecOutput { code: output.code, stdout: output.stdout, stderr: output.stderr })
}

/// Lets go of a task's sandbox without ending it (kept for the next command), for one-shot front doors.
pub async fn release(engine: &Engine, task_id: &str) {
    let layout = Layout::new(engine.state_dir());
    let Ok(Some(record)) = read_record(&layout, task_id).await else { return };
    if let Some(session_id) = record.session_id {
        if engine.session(&session_id).is_ok() {
            if let Err(error) = engine.disconnect(DisconnectParams { session_id, keep: true }).await {
                tracing::warn!(task_id, %error, "could not keep the task's sandbox");
            }
        }
    }
}

/// The task's sandbox: the live session, or its kept one re-attached. A sandbox that is gone turns the task `failed`.
async fn sandbox_of(engine: &Engine, layout: &Layout, record: &mut TaskInfo) -> Result<Arc<dyn Sandbox>> {
    if matches!(record.state, TaskState::Done | TaskState::Failed) {
        return Err(Error::InvalidParams(format!(
            "Task {} has ended ({}); start a new task to work on.",
            record.task_id,
            if record.state == TaskState::Done { "done" } else { "failed" }
        )));
    }
    let Some(session_id) = record.session_id.clone() else {
        return Err(Error::InvalidParams(format!("Task {} has no sandbox any more.", record.task_id)));
    };
    if let Ok(session) = engine.session(&session_id) {
        return Ok(session.sandbox.clone());
    }
    let reattach = ConnectParams { reuse: Some(session_id.clone()), sync: Some(false), ..ConnectParams::default() };
    match engine.connect(reattach, None, &NoProgress).await {
        Ok(_) => Ok(engine.session(&session_id)?.sandbox.clone()),
        Err(error @ (Error::SessionGone(_) | Error::UnknownSession(_))) => {
            record.state = TaskState::Failed;
            record.message = Some(format!(
                "The task's sandbox is gone ({error}); the last pushed commit is {}.",
                record.pushed_commit.as_deref().unwrap_or("none")
            ));
            record.session_id = None;
            save(layout, record).await?;
            Err(Error::SessionGone(record.message.clone().unwrap_or_default()))
        }
        Err(error) => Err(error),
    }
}

/// The token for `repo`'s remote when it is reached over HTTP(S): `GITHUB_TOKEN`, `GH_TOKEN`, then the profile's
/// keychain entry `githubToken`.
async fn credential_for(repo: &str, profile: Option<&str>) -> Option<Credential> {
    if !(repo.starts_with("https://") || repo.starts_with("http://")) {
        return None;
    }
    token(profile).await.map(|token| Credential { token })
}

async fn token(profile: Option<&str>) -> Option<Secret> {
    for variable in ["GITHUB_TOKEN", "GH_TOKEN"] {
        if let Some(value) = std::env::var(variable).ok().filter(|value| !value.is_empty()) {
            return Some(Secret::new(value));
        }
    }
    let profile = profile?;
    match crate::credentials::keychain::get(profile, TOKEN_KEY).await {
        Ok(secret) => secret,
        Err(error) => {
            tracing::debug!(profile, %error, "no GitHub token from the keychain");
            None
        }
    }
}

/// Refuses a URL that would carry a credential into the clone's config, and so into the sandbox.
pub fn check_repo_url(repo: &str) -> Result<()> {
    if repo.trim().is_empty() {
        return Err(Error::InvalidParams("Say which repository to clone: `repo` is empty.".into()));
    }
    if let Ok(parsed) = url::Url::parse(repo) {
        if parsed.password().is_some() || (parsed.scheme().starts_with("http") && !parsed.username().is_empty()) {
            return Err(Error::InvalidParams(
                "The repository URL holds a credential, which would end up in the sandbox's git config. Give the URL \
                 without it and the token through GITHUB_TOKEN (or GH_TOKEN) or the keychain \
                 (`sandlink profile set-credential PROFILE githubToken`)."
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Locks a task that exists (commit, push, pr, end), without leaving a folder behind for one that does not.
async fn lock_existing_task(layout: &Layout, task_id: &str) -> Result<statefile::Lock> {
    existing(layout, task_id).await?;
    lock_task(layout, task_id).await
}

async fn lock_task(layout: &Layout, task_id: &str) -> Result<statefile::Lock> {
    crate::credentials::check_name("task id", task_id)?;
    let path = layout.lock_file(task_id);
    statefile::blocking(move || statefile::Lock::exclusive(&path)).await
}

async fn read_record(layout: &Layout, task_id: &str) -> Result<Option<TaskInfo>> {
    let layout = layout.clone();
    let task_id = task_id.to_string();
    statefile::blocking(move || layout.read(&task_id)).await
}

async fn existing(layout: &Layout, task_id: &str) -> Result<TaskInfo> {
    crate::credentials::check_name("task id", task_id)?;
    read_record(layout, task_id).await?.ok_or_else(|| {
        Error::InvalidParams(format!("There is no task \"{task_id}\". `sandlink task list` lists the tasks."))
    })
}

async fn write_record(layout: &Layout, record: &TaskInfo) -> Result<()> {
    let layout = layout.clone();
    let record = record.clone();
    statefile::blocking(move || layout.write(&record)).await
}

async fn save(layout: &Layout, record: &mut TaskInfo) -> Result<()> {
    record.updated_at = crate::clock::now_rfc3339();
    write_record(layout, record).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    #[test]
    fn repository_urls_with_a_credential_should_be_refused() {
        for repo in ["https://x-access-token:ghp_abc@github.com/acme/widgets.git", "https://ghp_abc@github.com/acme/w", ""] {
            let error = check_repo_url(repo).expect_err(repo);
            assert_eq!(error.kind(), ErrorKind::InvalidParams);
            assert!(!error.to_string().contains("ghp_abc"), "{error}");
        }
        for repo in ["https://github.com/acme/widgets.git", "http://127.0.0.1:8080/acme/widgets", "file:///srv/repo.git"] {
            assert!(check_repo_url(repo).is_ok(), "{repo}");
        }
    }
}
