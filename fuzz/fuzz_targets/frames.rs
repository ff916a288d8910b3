//! Fuzzes LSP frame decoding (`lsp::framing::FrameDecoder`) on arbitrary byte streams: it never panics, decodes
//! the same frames and errors however the stream is cut into reads, every frame it accepts is a JSON-RPC 2.0 object
//! that re-encodes and decodes to itself, every error it answers carries `data.kind: "invalidMessage"` and an id
//! that is a number, string or null, and it never holds much more than one maximal frame.
//!
//! Input: the first byte is the size of each read (1 to 256 bytes); the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::lsp::framing::{Frame, FrameDecoder, FrameError, MAX_CONTENT_LENGTH, MAX_HEADER_BYTES};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, stream)) = data.split_first() else { return };
    let read_size = usize::from(read_size) + 1;
    let whole = decode(stream, stream.len().max(1));
    let pieces = decode(stream, read_size);
    assert_eq!(whole, pieces, "decoding depends on how the stream was cut into reads of {read_size} bytes");
    for outcome in &whole {
        match outcome {
            Ok(frame) => check_frame(frame),
            Err(error) => check_error(error),
        }
    }
});

/// Decodes `stream` pushed in reads of `read_size` bytes, draining the decoder after each read.
fn decode(stream: &[u8], read_size: usize) -> Vec<Result<Frame, FrameError>> {
    let mut decoder = FrameDecoder::new();
    let mut outcomes = Vec::new();
    for read in stream.chunks(read_size) {
        decoder.push(read);
        while let Some(outcome) = decoder.next_frame() {
            outcomes.push(outcome);
        }
        assert!(
            decoder.buffered_len() <= MAX_CONTENT_LENGTH + MAX_HEADER_BYTES + read_size,
            "the decoder holds {} bytes",
            decoder.buffered_len()
        );
    }
    outcomes
}

fn check_frame(frame: &Frame) {
    let text = std::str::from_utf8(&frame.body).expect("an accepted frame is UTF-8");
    let message: Value = serde_json::from_str(text).expect("an accepted frame is JSON");
    assert_eq!(message.get("jsonrpc").and_then(Value::as_str), Some("2.0"), "an accepted frame is JSON-RPC 2.0: {text}");
    let mut again = FrameDecoder::new();
    again.push(&frame.encode());
    match again.next_frame() {
        Some(Ok(decoded)) => assert_eq!(&decoded, frame, "a frame re-encoded decodes to itself"),
        other => panic!("a re-encoded accepted frame was not accepted again: {other:?}"),
    }
    assert!(again.next_frame().is_none(), "one encoded frame decodes to one frame");
}

fn check_error(error: &FrameError) {
    assert!(!error.message.is_empty(), "an error says what was wrong");
    if let Some(response) = error.response() {
        assert_eq!(response["error"]["data"]["kind"], "invalidMessage", "{response}");
        assert!(matches!(response["id"], Value::Null | Value::Number(_) | Value::String(_)), "{response}");
        assert_eq!(response["jsonrpc"], "2.0");
        serde_json::to_vec(&response).expect("the response serialises");
    }
}
