//! Taking a mutex that a panicking holder may have poisoned.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering it when a holder panicked. sandlink's mutexes guard tables and plain fields that every
/// holder changes in single steps (an insertion, an assignment), so a panic cannot leave them half-updated, and the
/// server must keep serving after a handler panicked (see `lsp::dispatch`).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
