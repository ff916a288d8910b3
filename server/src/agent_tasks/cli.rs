//! `sandlink task …`: agent tasks from the command line, one engine per command with the task's sandbox kept between.

use std::sync::Arc;

use async_trait::async_trait;
use clap::Subcommand;

use crate::engine::Engine;
use crate::error::Error;
use crate::progress::Progress;
use crate::protocol::{TaskCommitParams, TaskEndParams, TaskInfo, TaskPrParams, TaskStartParams};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Clone a repository into a new sandbox on the branch task-ID, ready for work.
    Start {
        /// The repository URL (https://host/OWNER/REPO.git; http:// and file:// for local servers). Without it, the
        /// repository of --workspace (default: the current folder) at its current commit, uncommitted changes included.
        repo: Option<String>,
        /// The workspace whose repository to start from when no URL is given.
        #[arg(long, short, value_name = "DIR")]
        workspace: Option<std::path::PathBuf>,
        /// The task's id; its branch is task-ID.
        #[arg(long = "id", value_name = "ID")]
        task_id: String,
        /// The branch, tag or commit to start from (default: the remote's default branch).
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// The task's title (the pull request's default title).
        #[arg(long)]
        title: Option<String>,
        /// The profile to run with; its keychain entry githubToken is the token unless GITHUB_TOKEN is set.
        #[arg(long, short)]
        profile: Option<String>,
        /// The driver to run on (default: the profile's, else local).
        #[arg(long, short, conflicts_with = "profile")]
        driver: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a shell command line in the task's sandbox (at the repository's root) and print its output when it ends.
    Exec {
        task_id: String,
        /// The command line, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Show a task.
    Status {
        task_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Commit every change in the task's sandbox; MESSAGE must read `type(scope)?: subject`.
    Commit {
        task_id: String,
        #[arg(long, short)]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Push the task's branch from this machine (the token never enters the sandbox).
    Push {
        task_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Open the task's pull request on GitHub (GITHUB_API_URL for GitHub Enterprise), or find the open one.
    Pr {
        task_id: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        draft: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the tasks, ended ones included.
    List {
        #[arg(long)]
        json: bool,
    },
    /// End a task: its sandbox removed (unless --keep), its record kept.
    End {
        task_id: String,
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `sandlink task` command; the task's sandbox stays kept for the next one unless the task ended. `exec`
/// answers its command's exit code; the others `None` (success) or an error.
pub async fn run(action: TaskCommand) -> Result<Option<u8>, Error> {
    // Tasks run no commands the user watches; the engine's events have nothing to show here.
    let engine = Engine::new(Arc::new(crate::engine::NoEvents));
    if let TaskCommand::Exec { task_id, command } = action {
        let outcome = crate::agent_tasks::exec(&engine, &task_id, &command.join(" ")).await;
        crate::agent_tasks::release(&engine, &task_id).await;
        let output = outcome?;
        print!("{}", output.stdout);
        eprint!("{}", output.stderr);
        return Ok(Some(output.code.map(|code| code.clamp(0, 255) as u8).unwrap_or(125)));
    }
    run_other(engine, action).await.map(|()| None)
}

async fn run_other(engine: Engine, action: TaskCommand) -> Result<(), Error> {
    match action {
        TaskCommand::Exec { .. } => Ok(()),
        TaskCommand::Start { repo, workspace, task_id, reference, title, profile, driver, json } => {
            let params = TaskStartParams {
                repo,
                r#ref: reference,
                task_id: task_id.clone(),
                title,
                profile,
                driver,
                settings: None,
                work_done_token: None,
                workspace_folder: None,
            };
            let folder = workspace.or_else(|| std::env::current_dir().ok());
            let outcome = crate::agent_tasks::start(&engine, params, folder, &StderrProgress).await;
            crate::agent_tasks::release(&engine, &task_id).await;
            print_task(&outcome?, json)
        }
        TaskCommand::Status { task_id, json } => {
            let outcome = crate::agent_tasks::status(&engine, &task_id).await;
            crate::agent_tasks::release(&engine, &task_id).await;
            print_task(&outcome?, json)
        }
        TaskCommand::Commit { task_id, message, json } => {
            let outcome = crate::agent_tasks::commit(&engine, TaskCommitParams { task_id: task_id.clone(), message }).await;
            crate::agent_tasks::release(&engine, &task_id).await;
            print_task(&outcome?, json)
        }
        TaskCommand::Push { task_id, json } => {
            let outcome = crate::agent_tasks::push(&engine, &task_id).await;
            crate::agent_tasks::release(&engine, &task_id).await;
            print_task(&outcome?, json)
        }
        TaskCommand::Pr { task_id, title, body, draft, json } => {
            let params = TaskPrParams { task_id: task_id.clone(), title, body, draft };
            let outcome = crate::agent_tasks::pull_request(&engine, params).await;
            crate::agent_tasks::release(&engine, &task_id).await;
            print_task(&outcome?, json)
        }
        TaskCommand::List { json } => {
            let listing = crate::agent_tasks::list(&engine).await?;
            if json {
                println!("{}", to_json(&listing)?);
            } else if listing.tasks.is_empty() {
                println!("No tasks.");
            } else {
                for task in &listing.tasks {
                    println!("{}", summary(task));
                }
            }
            Ok(())
        }
        TaskCommand::End { task_id, keep, json } => {
            let outcome = crate::agent_tasks::end(&engine, TaskEndParams { task_id: task_id.clone(), keep }).await;
            if keep {
                crate::agent_tasks::release(&engine, &task_id).await;
            }
            print_task(&outcome?, json)
        }
    }
}

fn print_task(task: &TaskInfo, json: bool) -> Result<(), Error> {
    if json {
        println!("{}", to_json(task)?);
    } else {
        println!("{}", summary(task));
        if let Some(url) = &task.pr_url {
            println!("Pull request: {url}");
        }
        if let Some(message) = &task.message {
            println!("{message}");
        }
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|error| Error::Internal(format!("Could not encode the answer: {error}")))
}

/// One line per task: id, state, branch, commits, pushed commit.
fn summary(task: &TaskInfo) -> String {
    let state = serde_json::to_value(task.state).ok().and_then(|state| state.as_str().map(str::to_string)).unwrap_or_default();
    let pushed = task.pushed_commit.as_deref().map(|sha| &sha[..sha.len().min(7)]).unwrap_or("-");
    format!("{}\t{state}\t{}\t{} commit(s)\tpushed {pushed}\t{}", task.task_id, task.branch, task.commits.len(), task.repo)
}

/// Progress lines on stderr, so stdout holds only the answer (`--json` stays parseable).
struct StderrProgress;

#[async_trait]
impl Progress for StderrProgress {
    async fn report(&self, message: String, _percentage: Option<u32>) {
        eprintln!("sandlink: {message}");
    }
}

