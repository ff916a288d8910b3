//! The engine's jobs: long work (connect, sync, snapshot, restore) with an id, its progress and a way to cancel it,
//! listed with its session while in flight. Runs have their own table (`runs`); a job is work that answers a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::ids::short_id;
use crate::locks::lock;
use crate::progress::Progress;
use crate::protocol::{JobInfo, JobKind};

/// One piece of long work in flight.
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub title: String,
    pub started_at: String,
    /// For ordering: RFC 3339 strings of one second are not.
    started: Instant,
    /// Whether the work has points where it can stop and leave things consistent (a snapshot is one provider call).
    cancellable: bool,
    /// The session the work belongs to; a connect learns it once the session is named.
    session_id: Mutex<Option<String>>,
    percentage: Mutex<Option<u32>>,
    cancelled: AtomicBool,
}

impl Job {
    pub fn set_session(&self, session_id: &str) {
        *lock(&self.session_id) = Some(session_id.to_string());
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub fn info(&self) -> JobInfo {
        JobInfo {
            job_id: self.id.clone(),
            kind: self.kind,
            title: self.title.clone(),
            started_at: self.started_at.clone(),
            percentage: *lock(&self.percentage),
        }
    }

    /// The `cancelled` error this job answers with, saying what was kept.
    pub fn cancelled_error(&self, what_was_kept: &str) -> Error {
        Error::Cancelled(format!("{} was cancelled ({}); {what_was_kept}", self.title, self.id))
    }
}

type Table = Arc<Mutex<HashMap<String, Arc<Job>>>>;

/// The jobs in flight of one engine.
#[derive(Default)]
pub struct Jobs {
    table: Table,
}

impl Jobs {
    /// Registers new work; it is listed until the returned guard is dropped.
    pub fn start(&self, kind: JobKind, title: impl Into<String>, session_id: Option<&str>, cancellable: bool) -> JobGuard {
        let job = Arc::new(Job {
            id: format!("job-{}", short_id()),
            kind,
            title: title.into(),
            started_at: crate::clock::now_rfc3339(),
            started: Instant::now(),
            cancellable,
            session_id: Mutex::new(session_id.map(String::from)),
            percentage: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        });
        lock(&self.table).insert(job.id.clone(), job.clone());
        JobGuard { job, table: self.table.clone() }
    }

    /// Asks a job to stop at its next safe point; its request then answers `cancelled`.
    pub fn cancel(&self, job_id: &str) -> Result<()> {
        let job = lock(&self.table).get(job_id).cloned().ok_or_else(|| Error::UnknownJob(job_id.to_string()))?;
        if !job.cancellable {
            return Err(Error::Unsupported(format!(
                "{} ({job_id}) cannot be stopped once it started: the provider does it in one step. It ends on its own.",
                job.title
            )));
        }
        job.cancelled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The jobs in flight of a session, oldest first.
    pub fn of_session(&self, session_id: &str) -> Vec<JobInfo> {
        let mut jobs: Vec<Arc<Job>> = lock(&self.table)
            .values()
            .filter(|job| lock(&job.session_id).as_deref() == Some(session_id))
            .cloned()
            .collect();
        jobs.sort_by_key(|job| job.started);
        jobs.iter().map(|job| job.info()).collect()
    }
}

/// A registered job; dropping it (the work ended, or its request was dropped) takes the job off the table.
pub struct JobGuard {
    job: Arc<Job>,
    table: Table,
}

impl std::ops::Deref for JobGuard {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        lock(&self.table).remove(&self.job.id);
    }
}

/// The progress of a job: reports go to the front door's `Progress` and are kept for `status`; the work stops when
/// the job was cancelled or the front door no longer wants it.
pub struct JobProgress<'a> {
    pub job: &'a Job,
    pub inner: &'a dyn Progress,
}

#[async_trait]
impl Progress for JobProgress<'_> {
    async fn report(&self, message: String, percentage: Option<u32>) {
        if percentage.is_some() {
            *lock(&self.job.percentage) = percentage;
        }
        self.inner.report(message, percentage).await;
    }

    fn cancelled(&self) -> bool {
        self.job.is_cancelled() || self.inner.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn a_started_job_should_be_listed_with_its_session_until_its_guard_drops() {
        let jobs = Jobs::default();
        let first = jobs.start(JobKind::Sync, "Syncing", Some("local-a"), true);
        let second = jobs.start(JobKind::Snapshot, "Snapshotting", Some("local-a"), false);
        let _other = jobs.start(JobKind::Sync, "Syncing", Some("local-b"), true);
        assert!(first.id.starts_with("job-") && first.id.len() == "job-".len() + 12, "{}", first.id);
        let listed = jobs.of_session("local-a");
        assert_eq!(listed.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(), [first.id.as_str(), second.id.as_str()]);
        assert_eq!(listed[0].kind, JobKind::Sync);
        drop(first);
        assert_eq!(jobs.of_session("local-a").len(), 1);
        drop(second);
        assert!(jobs.of_session("local-a").is_empty());
    }

    #[test]
    fn a_connect_should_be_listed_once_it_knows_its_session() {
        let jobs = Jobs::default();
        let connect = jobs.start(JobKind::Connect, "Connecting", None, true);
        assert!(jobs.of_session("local-a").is_empty());
        connect.set_session("local-a");
        assert_eq!(jobs.of_session("local-a")[0].job_id, connect.id);
    }

    #[test]
    fn cancelling_should_mark_the_job_and_refuse_unknown_and_unstoppable_ones() {
        let jobs = Jobs::default();
        let sync = jobs.start(JobKind::Sync, "Syncing", Some("local-a"), true);
        let snapshot = jobs.start(JobKind::Snapshot, "Snapshotting", Some("local-a"), false);
        assert!(!sync.is_cancelled());
        jobs.cancel(&sync.id).expect("a sync can be cancelled");
        assert!(sync.is_cancelled());
        assert!(matches!(jobs.cancel(&snapshot.id), Err(Error::Unsupported(_))));
        assert!(!snapshot.is_cancelled());
        assert!(matches!(jobs.cancel("job-000000000000"), Err(Error::UnknownJob(_))));
        let id = sync.id.clone();
        drop(sync);
        assert!(matches!(jobs.cancel(&id), Err(Error::UnknownJob(_))), "a finished job is gone");
        assert_eq!(snapshot.cancelled_error("nothing changed").kind(), crate::protocol::ErrorKind::Cancelled);
    }

    /// A front door whose own stop was asked for (the client cancelled its progress token).
    struct Stopped;

    #[async_trait]
    impl Progress for Stopped {
        async fn report(&self, _message: String, _percentage: Option<u32>) {}
        fn cancelled(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn job_progress_should_keep_the_percentage_and_stop_when_either_side_says_so() {
        let jobs = Jobs::default();
        let job = jobs.start(JobKind::Sync, "Syncing", Some("local-a"), true);
        let progress = JobProgress { job: &job, inner: &NoProgress };
        progress.report("1/4".into(), Some(25)).await;
        progress.report("still".into(), None).await;
        assert_eq!(jobs.of_session("local-a")[0].percentage, Some(25));
        assert!(!progress.cancelled());
        assert!(JobProgress { job: &job, inner: &Stopped }.cancelled(), "the front door's stop counts");
        jobs.cancel(&job.id).expect("cancellable");
        assert!(progress.cancelled());
    }
}
