//! A run's log on disk, kept up to a cap: the first `cap` bytes as the command wrote them, then one marker line
//! naming how many bytes were dropped after them.
//!
//! Writing every byte of a command that prints gigabytes costs more than the command itself (the page cache, then
//! the disk), so the log keeps the head up to the cap (`[runs] logCap` in the user's config.toml, 256 MiB when
//! unset) and counts the rest. Anything that writes a run's output to a file (the pump of an ordinary run, a
//! detached run's writer) uses `CappedLog`, so every log reads the same way: the bytes, then at most one marker.

use std::io::Write;

use super::output::human_bytes;

/// Small writes gather up to this much before they reach the file; a larger write goes straight through.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The line that ends a log that reached its cap; it starts on a line of its own even when the cap cut a line.
pub fn cap_marker(dropped: u64, cap: u64) -> String {
    format!(
        "\n[sandlink: {} ({dropped} bytes) of output dropped here: run logs keep the first {} of a run's output \
         (set [runs] logCap in config.toml to change it)]\n",
        human_bytes(dropped),
        human_bytes(cap)
    )
}

/// What a finished log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogTotals {
    /// Output bytes written to the log (at most the cap).
    pub kept: u64,
    /// Output bytes that came after the cap and are named by the marker instead.
    pub dropped: u64,
}

/// Writes output up to the cap and counts the rest; `finish` adds the marker. A failed write is reported once in
/// the server's own log and ends the writing (the run goes on: the log is a record, not the output's path).
pub struct CappedLog<W: Write> {
    out: std::io::BufWriter<W>,
    cap: u64,
    totals: LogTotals,
    failed: bool,
}

impl<W: Write> CappedLog<W> {
    pub fn new(out: W, cap: u64) -> Self {
        CappedLog { out: std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, out), cap, totals: LogTotals::default(), failed: false }
    }

    /// How many more bytes the log keeps before its cap.
    pub fn room(&self) -> u64 {
        self.cap - self.totals.kept
    }

    /// Keeps what fits under the cap and counts the rest as dropped.
    pub fn write(&mut self, bytes: &[u8]) {
        let fits = (bytes.len() as u64).min(self.room()) as usize;
        if fits > 0 && !self.failed {
            if let Err(error) = self.out.write_all(&bytes[..fits]) {
                tracing::warn!(%error, "could not write to the run log; the live view continues");
                self.failed = true;
            }
        }
        self.totals.kept += fits as u64;
        self.totals.dropped += (bytes.len() - fits) as u64;
    }

    /// Counts bytes the caller never handed over because the log was already full.
    pub fn count_dropped(&mut self, count: u64) {
        self.totals.dropped += count;
    }

    /// Writes the marker when anything was dropped, flushes, and says what the log holds.
    pub fn finish(mut self) -> LogTotals {
        if self.totals.dropped > 0 && !self.failed {
            let _ = self.out.write_all(cap_marker(self.totals.dropped, self.cap).as_bytes());
        }
        let _ = self.out.flush();
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_under_its_cap_should_hold_every_byte_and_no_marker() {
        let mut log = CappedLog::new(Vec::new(), 100);
        log.write(b"hello ");
        log.write(b"world");
        let totals = log.finish();
        assert_eq!(totals, LogTotals { kept: 11, dropped: 0 });
    }

    #[test]
    fn a_log_past_its_cap_should_keep_the_head_and_name_the_rest() {
        let mut file = Vec::new();
        {
            let mut log = CappedLog::new(&mut file, 10);
            log.write(b"0123456");
            log.write(b"789abc");
            log.count_dropped(5);
            assert_eq!(log.room(), 0);
            assert_eq!(log.finish(), LogTotals { kept: 10, dropped: 8 });
        }
        let expected = [b"0123456789".as_slice(), cap_marker(8, 10).as_bytes()].concat();
        assert_eq!(file, expected);
        assert!(cap_marker(8, 10).contains("(8 bytes) of output dropped"));
    }
}
