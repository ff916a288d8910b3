//! Short random ids for sessions, runs, jobs and temporary names.

/// A short random id: unique enough per machine, short enough to read.
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}
