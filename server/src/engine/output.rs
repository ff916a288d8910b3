//! The output pipeline of a run: a bounded live view that coalesces, decodes UTF-8 safely and skips when the client lags,
//! and maps paths in the sandbox's root to the workspace's, so stack traces and compiler errors open workspace files.
//!
//! Readers push raw bytes and never wait for the client; the sender drains what is queued into notifications.
//! When more than `LIVE_VIEW_LIMIT_BYTES` wait for a slow client, new output is counted instead of queued, and the
//! client later sees one marker saying how much was skipped and where the full log is. The log file has everything.

use crate::locks::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::protocol::OutputStream;

/// At most this many bytes wait for the client per run; beyond it the live view skips.
pub const LIVE_VIEW_LIMIT_BYTES: usize = 1 << 20;
/// The largest text one notification carries, so a client never has to parse a giant message.
pub const NOTIFICATION_LIMIT_BYTES: usize = 64 * 1024;
/// While skipping, the newest bytes up to this size are kept, so the end of a huge output (the error, the summary)
/// still reaches the editor: the skip is a middle part, not the tail.
pub const SKIPPED_TAIL_BYTES: usize = 64 * 1024;
/// How long the sender waits for more output before sending a small piece: short enough to feel live.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(4);
/// The live view passes on this much at once before its rate applies, so any output up to this size (a build's,
/// a test suite's) arrives whole, however fast it was written.
pub const LIVE_VIEW_BURST_BYTES: u64 = 8 << 20;
/// The sustained rate the live view passes on past its burst: more than anyone reads, and little enough that
/// encoding, sending and showing it never competes with the command for the processor. Faster output is skipped
/// in the middle (the log has it) until half a burst is back, then shown again: a torrent reads as runs of output
/// between markers, about one a second.
pub const LIVE_VIEW_BYTES_PER_SECOND: u64 = 4 << 20;
/// While output past the rate is skipped and nothing else comes, the sender looks this often whether the
/// allowance is back, so the end of a torrent followed by silence still shows before the run ends.
const OVER_RATE_RECHECK: Duration = Duration::from_millis(100);

/// One queued piece of the live view.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    Data(OutputStream, Vec<u8>),
    /// This many bytes of the stream were dropped from the live view (they are in the log file); `tail` holds the
    /// newest skipped bytes, shown after the marker.
    Skipped(OutputStream, u64, Vec<u8>),
}

struct Queue {
    segments: VecDeque<Segment>,
    queued_bytes: usize,
    closed: bool,
    /// Bytes the live view may still pass on (the rate's bucket; see `LIVE_VIEW_BURST_BYTES`).
    allowance: u64,
    topped_up: Instant,
    /// Set while output past the rate is skipped; the open skip segment at the back then waits for more.
    over_rate: bool,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            segments: VecDeque::new(),
            queued_bytes: 0,
            closed: false,
            allowance: LIVE_VIEW_BURST_BYTES,
            topped_up: Instant::now(),
            over_rate: false,
        }
    }
}

impl Queue {
    /// Adds what the rate allows since the last top-up; skipping ends once half a burst is back.
    fn top_up(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.topped_up).as_secs_f64() * LIVE_VIEW_BYTES_PER_SECOND as f64;
        if earned >= 1.0 {
            self.allowance = (self.allowance + earned as u64).min(LIVE_VIEW_BURST_BYTES);
            self.topped_up = now;
        }
        if self.over_rate && self.allowance >= LIVE_VIEW_BURST_BYTES / 2 {
            self.over_rate = false;
        }
    }

    /// How many segments the sender may take now: all but a skip still open because output is over the rate.
    fn ready_segments(&self) -> usize {
        let open_skip = self.over_rate && !self.closed && matches!(self.segments.back(), Some(Segment::Skipped(..)));
        self.segments.len() - usize::from(open_skip)
    }
}

/// The bounded queue between a run's readers and its notification sender.
#[derive(Default)]
pub struct LiveView {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Signalled when the sender has taken a batch, for lossless readers waiting for room.
    space: Notify,
}

impl LiveView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues output, waiting for room instead of skipping: for the command line, where a full pipe downstream
    /// (`| less`) should slow the command rather than lose output.
    pub async fn push_lossless(&self, stream: OutputStream, bytes: &[u8]) {
        // In pieces of one notification each, so the sender hands them on without cutting them again.
        self.push_lossless_pieces(stream, bytes.len(), || bytes.chunks(NOTIFICATION_LIMIT_BYTES).map(<[u8]>::to_vec)).await
    }

    /// `push_lossless` of a piece the caller gives up, queued without a copy; a piece longer than one notification
    /// is cut as `push_lossless` cuts it.
    pub async fn push_lossless_owned(&self, stream: OutputStream, bytes: Vec<u8>) {
        if bytes.len() > NOTIFICATION_LIMIT_BYTES {
            return self.push_lossless(stream, &bytes).await;
        }
        let length = bytes.len();
        let mut piece = Some(bytes);
        self.push_lossless_pieces(stream, length, || piece.take()).await
    }

    /// Queues the pieces (`length` bytes in all) once there is room, waiting for the sender to take a batch.
    async fn push_lossless_pieces<P: IntoIterator<Item = Vec<u8>>>(
        &self,
        stream: OutputStream,
        length: usize,
        mut pieces: impl FnMut() -> P,
    ) {
        loop {
            {
                let mut queue = lock(&self.queue);
                if queue.closed {
                    return;
                }
                if queue.queued_bytes == 0 || queue.queued_bytes + length <= LIVE_VIEW_LIMIT_BYTES {
                    queue.queued_bytes += length;
                    for piece in pieces() {
                        queue.segments.push_back(Segment::Data(stream, piece));
                    }
                    drop(queue);
                    self.wake.notify_one();
                    return;
                }
            }
            self.space.notified().await;
        }
    }

    /// Queues output, or counts it as skipped when the client is too far behind. Never waits.
    pub fn push(&self, stream: OutputStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return;
            }
            queue.top_up(Instant::now());
            if !queue.over_rate && bytes.len() as u64 > queue.allowance {
                queue.over_rate = true;
            }
            if queue.over_rate || queue.queued_bytes + bytes.len() > LIVE_VIEW_LIMIT_BYTES {
                if !matches!(queue.segments.back(), Some(Segment::Skipped(skipped_stream, ..)) if *skipped_stream == stream) {
                    queue.segments.push_back(Segment::Skipped(stream, 0, Vec::new()));
                }
                if let Some(Segment::Skipped(_, count, tail)) = queue.segments.back_mut() {
                    // Only the newest bytes can end up in the tail: the older part of a big piece is counted uncopied.
                    let older = bytes.len().saturating_sub(SKIPPED_TAIL_BYTES);
                    *count += older as u64;
                    tail.extend_from_slice(&bytes[older..]);
                    if tail.len() > SKIPPED_TAIL_BYTES {
                        let dropped = tail.len() - SKIPPED_TAIL_BYTES;
                        tail.drain(..dropped);
                        *count += dropped as u64;
                    }
                }
            } else {
                queue.queued_bytes += bytes.len();
                queue.allowance -= bytes.len() as u64;
                match queue.segments.back_mut() {
                    Some(Segment::Data(last_stream, data))
                        if *last_stream == stream && data.len() < NOTIFICATION_LIMIT_BYTES =>
                    {
                        data.extend_from_slice(bytes);
                    }
                    _ => queue.segments.push_back(Segment::Data(stream, bytes.to_vec())),
                }
            }
        }
        self.wake.notify_one();
    }

    /// Lets more output gather for at most `window`, ending early once a notification's worth is queued (a fast
    /// writer then never waits out the window, which would cap a lossless run at one queue per window).
    async fn gather(&self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while tokio::time::timeout_at(deadline, self.wake.notified()).await.is_ok() {
            let queue = lock(&self.queue);
            if queue.closed || queue.queued_bytes >= NOTIFICATION_LIMIT_BYTES {
                return;
            }
        }
    }

    /// Marks the end of output; the sender drains what is queued and then stops.
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    /// Waits for output, lets a little more gather, and takes everything queued.
    /// Returns `None` once closed and drained.
    pub async fn next_batch(&self) -> Option<Vec<Segment>> {
        loop {
            let (ready, held, closed, full) = {
                let mut queue = lock(&self.queue);
                queue.top_up(Instant::now());
                let ready = queue.ready_segments();
                (ready > 0, ready < queue.segments.len(), queue.closed, queue.queued_bytes >= NOTIFICATION_LIMIT_BYTES)
            };
            if !ready {
                if closed {
                    return None;
                }
                if held {
                    let _ = tokio::time::timeout(OVER_RATE_RECHECK, self.wake.notified()).await;
                } else {
                    self.wake.notified().await;
                }
                continue;
            }
            if !closed && !full {
                self.gather(COALESCE_WINDOW).await;
            }
            let batch: Vec<Segment> = {
                let mut queue = lock(&self.queue);
                let ready = queue.ready_segments();
                queue.queued_bytes = 0;
                queue.segments.drain(..ready).collect()
            };
            self.space.notify_one();
            return Some(batch);
        }
    }
}


/// Decodes a byte stream into text without splitting a character across pieces; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Decoder {
    carry: Vec<u8>,
    /// After a skip, the stream resumes mid-character; its continuation bytes are dropped instead of shown as garbage.
    resync: bool,
}

impl Utf8Decoder {
    /// `decode` for bytes the caller gives up: valid text with nothing carried over becomes the string without a
    /// copy, which is what almost every piece of a big output is.
    pub fn decode_owned(&mut self, bytes: Vec<u8>) -> String {
        if self.carry.is_empty() && !self.resync {
            match String::from_utf8(bytes) {
                Ok(text) => return text,
                Err(error) => return self.decode(error.as_bytes()),
            }
        }
        self.decode(&bytes)
    }

    /// Decodes what can be decoded now; an incomplete trailing character waits for the next call.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let mut input: &[u8] = bytes;
        if self.resync {
            let continuation = input.iter().take_while(|byte| (**byte & 0b1100_0000) == 0b1000_0000).count();
            input = &input[continuation..];
            self.resync = input.is_empty();
        }
        let mut pending = std::mem::take(&mut self.carry);
        pending.extend_from_slice(input);
        let mut text = String::with_capacity(pending.len());
        let mut rest: &[u8] = &pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    // SAFETY-free: `valid_up_to` guarantees this prefix is UTF-8.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        Some(invalid_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[invalid_len..];
                        }
                        None => {
                            self.carry = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        text
    }

    /// Ends the stream (or a part before a skip): a dangling partial character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            String::new()
        } else {
            self.carry.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }

    /// Called when output was skipped: what follows may start mid-character.
    pub fn skipped(&mut self) -> String {
        let flushed = self.finish();
        self.resync = true;
        flushed
    }

    /// Nothing was actually dropped after all: continue without resynchronising.
    pub fn resume(&mut self) {
        self.resync = false;
    }
}

/// Splits text into pieces of at most `limit` bytes, on character boundaries.
pub fn split_text(text: &str, limit: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > limit {
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// The line shown in the live view where output was skipped.
pub fn skip_marker(skipped_bytes: u64, log_path: Option<&str>) -> String {
    let amount = human_bytes(skipped_bytes);
    match log_path {
        Some(path) => format!(
            "\n[sandlink: {amount} of output skipped here because the editor could not keep up; the full log is at {path}]\n"
        ),
        None => format!("\n[sandlink: {amount} of output skipped here because the editor could not keep up]\n"),
    }
}

/// Formats a byte count the way people read it (`1.5 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_owned_lossless_piece_should_be_queued_whole_and_a_longer_one_cut_into_notifications() {
        let live = LiveView::new();
        live.push_lossless_owned(OutputStream::Stdout, b"first".to_vec()).await;
        live.push_lossless_owned(OutputStream::Stderr, vec![b'x'; NOTIFICATION_LIMIT_BYTES + 1]).await;
        live.close();
        let batch = live.next_batch().await.expect("the queued pieces");
        assert_eq!(
            batch,
            vec![
                Segment::Data(OutputStream::Stdout, b"first".to_vec()),
                Segment::Data(OutputStream::Stderr, vec![b'x'; NOTIFICATION_LIMIT_BYTES]),
                Segment::Data(OutputStream::Stderr, vec![b'x']),
            ]
        );
        assert!(live.next_batch().await.is_none(), "closed and drained");
    }

    #[test]
    fn decoder_should_not_split_a_character_across_pieces() {
        let mut decoder = Utf8Decoder::default();
        let euro = "€".as_bytes();
        assert_eq!(decoder.decode(&euro[..1]), "");
        assert_eq!(decoder.decode(&euro[1..2]), "");
        assert_eq!(decoder.decode(&euro[2..]), "€");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn decoder_should_replace_invalid_bytes_visibly() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.decode(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(decoder.decode(b"\xe2\x82"), "");
        assert_eq!(decoder.finish(), "\u{FFFD}");
    }

    #[test]
    fn decoder_should_drop_continuation_bytes_after_a_skip() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.decode(b"x\xe2"), "x");
        assert_eq!(decoder.skipped(), "\u{FFFD}");
        assert_eq!(decoder.decode(b"\x82\xacok"), "ok");
    }

    #[test]
    fn skipping_should_keep_the_newest_bytes_so_the_end_of_the_output_shows() {
        let view = LiveView::new();
        view.push(OutputStream::Stdout, &vec![b'a'; LIVE_VIEW_LIMIT_BYTES]);
        for _ in 0..10 {
            view.push(OutputStream::Stdout, &vec![b'b'; 32 * 1024]);
        }
        view.push(OutputStream::Stdout, b"the last line\n");
        let queue = lock(&view.queue);
        let Some(Segment::Skipped(_, count, tail)) = queue.segments.back() else { panic!("a skip was recorded") };
        assert!(tail.ends_with(b"the last line\n"), "the tail is kept");
        assert_eq!(tail.len(), SKIPPED_TAIL_BYTES);
        assert_eq!(*count as usize + tail.len(), 10 * 32 * 1024 + b"the last line\n".len());
    }

    #[test]
    fn output_past_the_rate_should_be_skipped_until_half_a_burst_is_back() {
        let view = LiveView::new();
        let chunk = vec![b'r'; 64 * 1024];
        let mut shown = 0u64;
        // A fast editor: the queue is emptied after every piece, so only the rate can make the view skip.
        for _ in 0..(LIVE_VIEW_BURST_BYTES / chunk.len() as u64 + 4) {
            view.push(OutputStream::Stdout, &chunk);
            let mut queue = lock(&view.queue);
            let ready = queue.ready_segments();
            for segment in queue.segments.drain(..ready) {
                if let Segment::Data(_, bytes) = segment {
                    shown += bytes.len() as u64;
                }
            }
            queue.queued_bytes = 0;
        }
        {
            let mut queue = lock(&view.queue);
            assert!(queue.over_rate, "a torrent past the burst is over the rate");
            assert!(shown <= LIVE_VIEW_BURST_BYTES + 64 * 1024, "about a burst was shown: {shown}");
            assert!(matches!(queue.segments.back(), Some(Segment::Skipped(..))));
            assert_eq!(queue.ready_segments(), queue.segments.len() - 1, "the open skip waits for more");
            queue.topped_up -= Duration::from_secs(2);
            queue.top_up(Instant::now());
            assert!(!queue.over_rate, "the allowance came back");
            assert_eq!(queue.ready_segments(), queue.segments.len(), "the skip and its tail can be sent");
        }
        view.push(OutputStream::Stdout, b"after the pause");
        let queue = lock(&view.queue);
        assert!(matches!(queue.segments.back(), Some(Segment::Data(_, bytes)) if bytes == b"after the pause"));
    }

    #[test]
    fn split_text_should_respect_char_boundaries() {
        let text = "ab€cd";
        let pieces = split_text(text, 3);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|piece| piece.len() <= 3));
    }

    #[test]
    fn live_view_should_skip_instead_of_growing_past_its_limit() {
        let view = LiveView::new();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            view.push(OutputStream::Stdout, &chunk);
        }
        let queue = lock(&view.queue);
        assert!(queue.queued_bytes <= LIVE_VIEW_LIMIT_BYTES);
        let skipped: u64 = queue
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Skipped(_, count, tail) => *count + tail.len() as u64,
                Segment::Data(..) => 0,
            })
            .sum();
        assert_eq!(skipped as usize + queue.queued_bytes, 64 * chunk.len());
    }

    #[test]
    fn paths_into_the_root_should_read_as_workspace_paths_however_the_text_is_cut() {
        let text = "Error: boom\n    at /state/sessions/s1/root/test.js:9:8\n    at /state/sessions/s1/rootless/x.js:1:1\n";
        let expected = "Error: boom\n    at /home/me/app/test.js:9:8\n    at /state/sessions/s1/rootless/x.js:1:1\n";
        for cut in 0..=text.len() {
            let mut mapper = PathMapper::new("/state/sessions/s1/root", "/home/me/app").expect("a mapping");
            let mut shown = mapper.map(&text[..cut]);
            shown.push_str(&mapper.map(&text[cut..]));
            shown.push_str(&mapper.finish());
            assert_eq!(shown, expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_held_back_start_should_be_released_when_it_is_not_the_root() {
        let mut mapper = PathMapper::new("/srv/root/", "/w").expect("a mapping");
        assert_eq!(mapper.map("see /srv/r"), "see ", "a possible start of the root waits");
        assert_eq!(mapper.map("un"), "/srv/run");
        assert_eq!(mapper.map("é /srv"), "é ");
        assert_eq!(mapper.finish(), "/srv", "the end of the output is never lost");
        assert!(PathMapper::new("/same", "/same/").is_none(), "nothing to map");
        assert!(PathMapper::new("/", "/w").is_none(), "a root of / would rewrite every path");
    }
}

/// Rewrites `ROOT/` to `WORKSPACE/` in a stream of text that arrives in pieces, so a path into the sandbox's copy
/// (`/…/sessions/ID/root/test.js:9:8`) is shown as the workspace file it came from. A piece that ends in what may be
/// the start of the root is held back until the next piece says (at most the root's length, and only then), and
/// `finish` hands back whatever is still held. The log file keeps the bytes as the command wrote them.
#[derive(Debug, Clone)]
pub struct PathMapper {
    root: String,
    workspace: String,
    held: String,
}

impl PathMapper {
    /// `None` when there is nothing to map (no workspace, or the run sees the workspace's own path).
    pub fn new(remote_root: &str, workspace: &str) -> Option<PathMapper> {
        let root = format!("{}/", remote_root.trim_end_matches('/'));
        let workspace = format!("{}/", workspace.trim_end_matches('/'));
        (root.len() > 1 && workspace.len() > 1 && root != workspace).then(|| PathMapper { root, workspace, held: String::new() })
    }

    pub fn map(&mut self, text: &str) -> String {
        self.map_owned(text.to_string())
    }

    /// `map` for text the caller gives up: text with no root in it and nothing held is handed back as it is, so
    /// the mapping costs one search, not a copy, for output that never names the root.
    pub fn map_owned(&mut self, text: String) -> String {
        if self.held.is_empty() && !text.contains(self.root.as_str()) {
            let keep = self.partial_root_at_end(&text);
            if keep == 0 {
                return text;
            }
            let mut text = text;
            self.held = text.split_off(text.len() - keep);
            return text;
        }
        let mut combined = std::mem::take(&mut self.held);
        combined.push_str(&text);
        let mapped = combined.replace(&self.root, &self.workspace);
        let keep = self.partial_root_at_end(&mapped);
        self.held = mapped[mapped.len() - keep..].to_string();
        let mut mapped = mapped;
        mapped.truncate(mapped.len() - keep);
        mapped
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The length of the longest end of `text` that is a proper start of the root (on a character boundary).
    fn partial_root_at_end(&self, text: &str) -> usize {
        let longest = (self.root.len() - 1).min(text.len());
        (1..=longest)
            .rev()
            .find(|&length| text.is_char_boundary(text.len() - length) && self.root.starts_with(&text[text.len() - length..]))
            .unwrap_or(0)
    }
}
