//! Fuzzes the Vercel logs stream reader (`drivers::vercel::commands::{take_line, parse_line, ReplayPosition}`) on
//! arbitrary bytes: it never panics, reads the same lines however the stream is cut into reads, and when readers are
//! cut off anywhere and replay the output from the start (a follower cut by the edge reading the stream's own lines,
//! and a drain, interleaved with it, then one reader that reads to the end; replays group the output into other
//! pieces, as the logs endpoint may), each stream's bytes are delivered exactly once and in order.
//!
//! Input: the first byte is the size of each read (1 to 256 bytes), the next two say where the follower's and the
//! drain's streams are cut (as a fraction of the stream), the fourth how their deliveries interleave, the fifth the
//! sizes of the drain's and the last reader's pieces (low and high nibble, plus one); the rest is the NDJSON stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::drivers::vercel::commands::{parse_line, take_line, ReplayPosition, StreamLine};

fuzz_target!(|data: &[u8]| {
    let [read_size, follower_cut, drain_cut, interleaving, replay_pieces, stream @ ..] = data else { return };
    let read_size = usize::from(*read_size) + 1;
    let whole = read(stream, stream.len().max(1));
    assert_eq!(read(stream, read_size), whole, "reads of {read_size} bytes change the lines read");
    assert_eq!(read(stream, 1), whole, "reads of one byte change the lines read");

    // What the command printed, as far as a reader goes: everything before an error line, which ends a stream.
    let mut expected: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    for (stream, bytes) in outputs(&whole) {
        expected[stream].extend_from_slice(bytes);
    }

    let follower = read(&stream[..stream.len() * usize::from(*follower_cut) / 255], read_size);
    let drain = regrouped(&expected, usize::from(replay_pieces & 0x0f) + 1, *drain_cut);
    let mut ledger = Ledger::default();
    let (mut follower_position, mut drain_position) = (ReplayPosition::default(), ReplayPosition::default());
    let mut follower_outputs = outputs(&follower).into_iter();
    let mut drain_outputs = drain.iter().map(|(stream, bytes)| (*stream, bytes.as_slice()));
    let mut step = 0u32;
    loop {
        let follower_turn = interleaving.rotate_left(step % 8) & 1 == 1;
        step += 1;
        let next = if follower_turn { follower_outputs.next() } else { drain_outputs.next() };
        match next {
            Some((stream, bytes)) => {
                let position = if follower_turn { &mut follower_position } else { &mut drain_position };
                ledger.offer(position, stream, bytes, &expected);
            }
            None => {
                let rest: Vec<_> = follower_outputs.by_ref().chain(drain_outputs.by_ref()).collect();
                if rest.is_empty() {
                    break;
                }
                // One reader is done; the other delivers the rest of what it read, in order.
                let position = if follower_turn { &mut drain_position } else { &mut follower_position };
                for (stream, bytes) in rest {
                    ledger.offer(position, stream, bytes, &expected);
                }
                break;
            }
        }
    }
    // The stream opened once more reads to its end and delivers whatever is still missing.
    let mut last_position = ReplayPosition::default();
    for (stream, bytes) in regrouped(&expected, usize::from(replay_pieces >> 4) + 1, u8::MAX) {
        ledger.offer(&mut last_position, stream, &bytes, &expected);
    }
    assert_eq!(ledger.received, expected, "a stream's bytes were lost or repeated across replays");
});

/// The run's shared count of delivered bytes and what its readers handed on.
#[derive(Default)]
struct Ledger {
    delivered: [u64; 2],
    received: [Vec<u8>; 2],
}

impl Ledger {
    fn offer(&mut self, position: &mut ReplayPosition, stream: usize, bytes: &[u8], expected: &[Vec<u8>; 2]) {
        if let Some(fresh) = position.advance(&mut self.delivered, stream, bytes) {
            assert!(!fresh.is_empty(), "an empty delivery counted as new");
            self.received[stream].extend_from_slice(fresh);
        }
        assert_eq!(self.delivered[stream], self.received[stream].len() as u64, "the count is not what was delivered");
        assert!(expected[stream].starts_with(&self.received[stream]), "stream {stream} got bytes out of order or twice");
    }
}

/// A replay of the output in pieces of `piece_size` bytes, stdout's and stderr's alternating, cut after `fraction`
/// of its pieces (255: all of them).
fn regrouped(output: &[Vec<u8>; 2], piece_size: usize, fraction: u8) -> Vec<(usize, Vec<u8>)> {
    let mut stdout_pieces = output[0].chunks(piece_size).map(|piece| (0, piece.to_vec()));
    let mut stderr_pieces = output[1].chunks(piece_size).map(|piece| (1, piece.to_vec()));
    let mut pieces = Vec::new();
    loop {
        let (stdout, stderr) = (stdout_pieces.next(), stderr_pieces.next());
        if stdout.is_none() && stderr.is_none() {
            break;
        }
        pieces.extend(stdout.into_iter().chain(stderr));
    }
    pieces.truncate(pieces.len() * usize::from(fraction) / 255);
    pieces
}

/// The lines of `stream` read in pieces of `read_size` bytes, and the unfinished line left at its end.
fn read(stream: &[u8], read_size: usize) -> (Vec<StreamLine>, Vec<u8>) {
    let mut pending = Vec::new();
    let mut lines = Vec::new();
    for piece in stream.chunks(read_size) {
        pending.extend_from_slice(piece);
        while let Some(line) = take_line(&mut pending) {
            assert_eq!(line.last(), Some(&b'\n'), "a line taken ends with its newline");
            assert!(!line[..line.len() - 1].contains(&b'\n'), "a line taken holds one line");
            lines.push(parse_line(&line));
        }
        assert!(!pending.contains(&b'\n'), "a whole line was left pending");
    }
    (lines, pending)
}

/// The output lines a reader delivers: those before the first error line, which ends its stream.
fn outputs((lines, _): &(Vec<StreamLine>, Vec<u8>)) -> Vec<(usize, &[u8])> {
    lines
        .iter()
        .take_while(|line| !matches!(line, StreamLine::Error { .. }))
        .filter_map(|line| match line {
            StreamLine::Output { stream, data } => {
                assert!(*stream < 2, "output of stream {stream}");
                Some((*stream, data.as_bytes()))
            }
            _ => None,
        })
        .collect()
}
