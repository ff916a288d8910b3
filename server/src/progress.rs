//! Progress of long work (connect, sync, snapshot), reported by the engine and shown by each front door its own way,
//! and whether whoever asked for the work still wants it.

use async_trait::async_trait;

/// Reports progress of long work; the LSP layer maps it to `$/progress`, the command line to its status line.
#[async_trait]
pub trait Progress: Send + Sync {
    async fn report(&self, message: String, percentage: Option<u32>);

    /// Whether the work should stop: long work asks between its steps (sync between batches) and, when told so,
    /// ends consistently and answers `cancelled`. Front doors that cannot cancel keep the default.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A `Progress` that reports nowhere.
pub struct NoProgress;

#[async_trait]
impl Progress for NoProgress {
    async fn report(&self, _message: String, _percentage: Option<u32>) {}
}
