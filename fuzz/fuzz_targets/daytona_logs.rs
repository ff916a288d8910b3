//! Fuzzes the Daytona log demultiplexer (`drivers::daytona::toolbox::Demux`) on arbitrary bytes: it never panics,
//! splits stdout from stderr the same however the log is cut into WebSocket frames, and neither loses nor invents a
//! byte: what it answers is exactly a plain left-to-right split of the whole log at the `\x01\x01\x01` and
//! `\x02\x02\x02` markers, bytes before any marker counting as stdout.
//!
//! Input: the first byte is the size of each frame (1 to 256 bytes); the rest is the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::drivers::daytona::toolbox::{Demux, Stream, STDERR_MARKER, STDOUT_MARKER};

fuzz_target!(|data: &[u8]| {
    let Some((&frame_size, log)) = data.split_first() else { return };
    let frame_size = usize::from(frame_size) + 1;
    let expected = reference_split(log);
    assert_eq!(demux(log, log.len().max(1)), expected, "the whole log in one frame differs from the reference split");
    assert_eq!(demux(log, frame_size), expected, "frames of {frame_size} bytes change the split");
    assert_eq!(demux(log, 1), expected, "frames of one byte change the split");
});

/// The log's stdout and stderr bytes through a `Demux` fed frames of `frame_size` bytes, then finished.
fn demux(log: &[u8], frame_size: usize) -> (Vec<u8>, Vec<u8>) {
    let mut demux = Demux::default();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut take = |(stream, piece): (Stream, Vec<u8>)| {
        assert!(!piece.is_empty(), "an empty piece of {stream:?} was answered");
        match stream {
            Stream::Stdout => stdout.extend(piece),
            Stream::Stderr => stderr.extend(piece),
        }
    };
    for frame in log.chunks(frame_size) {
        demux.push(frame).into_iter().for_each(&mut take);
    }
    demux.finish().into_iter().for_each(&mut take);
    assert!(demux.finish().is_none(), "a finished demux still held bytes");
    (stdout, stderr)
}

/// The split by definition: scanning the whole log from the left, a marker switches streams and is dropped; every
/// other byte goes to the current stream.
fn reference_split(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut to_stderr = false;
    let mut index = 0;
    let mut marker_bytes = 0;
    while index < log.len() {
        let rest = &log[index..];
        if rest.starts_with(&STDOUT_MARKER) || rest.starts_with(&STDERR_MARKER) {
            to_stderr = rest.starts_with(&STDERR_MARKER);
            index += 3;
            marker_bytes += 3;
            continue;
        }
        if to_stderr { &mut stderr } else { &mut stdout }.push(log[index]);
        index += 1;
    }
    assert_eq!(stdout.len() + stderr.len() + marker_bytes, log.len(), "the reference lost a byte");
    (stdout, stderr)
}
