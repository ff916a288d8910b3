//! The LSP wire framing, decoded defensively: bytes in, whole messages or one error per bad frame out, never a stop.
//!
//! tower-lsp-server's own reader ends the whole server on the first frame it cannot decode (its `FramedRead` returns
//! `None` after an error), so sandlink reads stdin through [`FrameDecoder`] and hands tower-lsp only frames that its
//! codec is known to accept. The decoder is synchronous and pure (no I/O, no clock), so it can be unit-tested and
//! fuzzed: push bytes with [`FrameDecoder::push`], then drain [`FrameDecoder::next_frame`] until it returns `None`.
//!
//! What it guarantees, whatever the input:
//! - every `Ok` frame is valid UTF-8 and parses as a tower-lsp JSON-RPC request, notification or response, exactly
//!   as tower-lsp's codec will parse it again;
//! - a frame that does not is reported once, with the request's `id` when one can still be read from it;
//! - a `Content-Length` above [`MAX_CONTENT_LENGTH`] (or a number too long to parse) is refused without allocating
//!   it, and a header block that cannot be read is skipped; in both cases the decoder resynchronises on the next
//!   `Content-Length` header in the stream;
//! - memory held is bounded by the largest accepted frame plus one read's worth of bytes.

use bytes::{Buf, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

/// The largest message body accepted; larger ones are refused without being buffered.
pub const MAX_CONTENT_LENGTH: usize = 64 * 1024 * 1024;
/// The longest header block accepted; LSP headers are two short lines.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// JSON-RPC's code for bytes that are not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's code for JSON that is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// The `data.kind` of every framing error, as documented in `docs/protocol.md`.
pub const INVALID_MESSAGE_KIND: &str = "invalidMessage";

/// How far the blank line ending a header block is looked for: the longest header plus its `\r\n\r\n`.
const HEADER_WINDOW: usize = MAX_HEADER_BYTES + 4;
/// The header name that starts every frame, also what resynchronisation looks for.
const CONTENT_LENGTH: &[u8] = b"Content-Length";

/// One message that tower-lsp will accept, as its body bytes (without headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub body: Vec<u8>,
}

impl Frame {
    /// The frame as it goes on the wire: a `Content-Length` header, a blank line, the body.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(&self.body)
    }
}

/// Frames `body` with the one header LSP requires.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut framed = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    framed.extend_from_slice(body);
    framed
}

/// What was wrong with one frame, and whether and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// JSON-RPC error code: [`PARSE_ERROR`] or [`INVALID_REQUEST`].
    pub code: i64,
    /// A sentence saying what was wrong, for the client and the log.
    pub message: String,
    /// The `id` of the request the frame carried, when one could be read from it (a JSON number or string).
    pub id: Option<Value>,
    /// What kind of message the frame was, as far as it could be told.
    pub shape: MessageShape,
}

/// What a bad frame was meant to be; JSON-RPC answers requests and unknowns, never notifications or responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageShape {
    /// It has a `method` and an `id`.
    Request,
    /// It has a `method` and no `id`: JSON-RPC forbids an answer.
    Notification,
    /// It has no `method` but a `result` or `error`: an answer to one of the server's requests.
    Response,
    /// Nothing could be read from it.
    Unknown,
}

impl FrameError {
    fn new(code: i64, message: String) -> Self {
        FrameError { code, message, id: None, shape: MessageShape::Unknown }
    }

    /// The JSON-RPC error response to send, or `None` when JSON-RPC says a bad notification or response is only
    /// logged. Without a recoverable id the response carries `id: null`, as JSON-RPC prescribes.
    pub fn response(&self) -> Option<Value> {
        match self.shape {
            MessageShape::Notification | MessageShape::Response => None,
            MessageShape::Request | MessageShape::Unknown => Some(json!({
                "jsonrpc": "2.0",
                "id": self.id.clone().unwrap_or(Value::Null),
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "data": { "kind": INVALID_MESSAGE_KIND },
                },
            })),
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for FrameError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header block.
    Header,
    /// The header was read; waiting for this many body bytes.
    Body(usize),
    /// A header could not be used: discarding bytes until the next `Content-Length`.
    Resync,
}

/// Turns a byte stream into frames; see the module documentation for what it guarantees.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder { buffer: BytesMut::new(), state: State::Header }
    }

    /// Appends bytes read from the stream. While resynchronising, bytes that cannot start a header are dropped
    /// here, so a huge refused body is never held in memory.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        if self.state == State::Resync {
            self.discard_to_next_header();
        }
    }

    /// The next complete frame or frame error, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            match self.state {
                State::Resync => {
                    if !self.discard_to_next_header() {
                        return None;
                    }
                    self.state = State::Header;
                }
                State::Header => match self.read_header() {
                    HeaderOutcome::NeedMore => return None,
                    HeaderOutcome::Length(length) => self.state = State::Body(length),
                    HeaderOutcome::Refused(error) => {
                        self.state = State::Resync;
                        return Some(Err(error));
                    }
                },
                State::Body(length) => {
                    if self.buffer.len() < length {
                        // The buffer grows only as bytes arrive: a declared length alone allocates nothing.
                        return None;
                    }
                    let body = self.buffer.split_to(length).to_vec();
                    self.state = State::Header;
                    return Some(check_body(body));
                }
            }
        }
    }

    /// How many bytes are buffered (for tests and the fuzz target's memory assertions).
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Drops bytes up to the next `Content-Length` (any case); returns whether one was found. A tail that could be
    /// the start of one is kept for the next push.
    fn discard_to_next_header(&mut self) -> bool {
        match find_ignoring_case(&self.buffer, CONTENT_LENGTH) {
            Some(start) => {
                self.buffer.advance(start);
                true
            }
            None => {
                let keep = (CONTENT_LENGTH.len() - 1).min(self.buffer.len());
                let drop = self.buffer.len() - keep;
                self.buffer.advance(drop);
                false
            }
        }
    }

    fn read_header(&mut self) -> HeaderOutcome {
        // Blank lines between frames are harmless; some clients send a stray line ending.
        while self.buffer.starts_with(b"\r\n") || self.buffer.starts_with(b"\n") {
            let skip = if self.buffer.starts_with(b"\r\n") { 2 } else { 1 };
            self.buffer.advance(skip);
        }
        let Some(header_end) = header_block_end(&self.buffer) else {
            // Decided only once the whole window is here, so how the bytes were split never changes the outcome.
            if self.buffer.len() >= HEADER_WINDOW {
                self.buffer.advance(1);
                return HeaderOutcome::Refused(FrameError::new(
                    PARSE_ERROR,
                    format!(
                        "sandlink received a message header longer than {MAX_HEADER_BYTES} bytes without its blank \
                         line; it skipped to the next Content-Length header."
                    ),
                ));
            }
            return HeaderOutcome::NeedMore;
        };
        let parsed = parse_header_block(&self.buffer[..header_end.lines_end]);
        match parsed {
            Ok(length) => {
                self.buffer.advance(header_end.block_end);
                HeaderOutcome::Length(length)
            }
            Err(error) => {
                // Skip past this header's own name only: a frame that merely had garbage in front of it is found
                // again by the resynchronisation, whose next `Content-Length` may sit inside this block.
                self.buffer.advance(1);
                HeaderOutcome::Refused(error)
            }
        }
    }
}

enum HeaderOutcome {
    NeedMore,
    Length(usize),
    Refused(FrameError),
}

struct HeaderEnd {
    /// Where the header lines end (before the blank line).
    lines_end: usize,
    /// Where the body starts.
    block_end: usize,
}

/// Finds the blank line ending a header block; `\r\n` is the standard line end, a bare `\n` is tolerated.
fn header_block_end(buffer: &[u8]) -> Option<HeaderEnd> {
    let mut line_start = 0;
    let limit = buffer.len().min(HEADER_WINDOW);
    while let Some(offset) = buffer[line_start..limit].iter().position(|&byte| byte == b'\n') {
        let newline = line_start + offset;
        let line = &buffer[line_start..newline];
        if line.is_empty() || line == b"\r" {
            return Some(HeaderEnd { lines_end: line_start, block_end: newline + 1 });
        }
        line_start = newline + 1;
    }
    None
}

/// Reads the header lines; returns the body length or why the block is unusable.
fn parse_header_block(block: &[u8]) -> Result<usize, FrameError> {
    let mut content_length = None;
    for raw_line in block.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            return Err(FrameError::new(
                PARSE_ERROR,
                format!(
                    "sandlink received a message header line without a colon ({}); it skipped to the next \
                     Content-Length header.",
                    shown(line)
                ),
            ));
        };
        let (name, value) = (&line[..colon], trim_ascii(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(CONTENT_LENGTH) {
            content_length = Some(parse_content_length(value)?);
        }
        // Content-Type and unknown headers are ignored: the body must be UTF-8 JSON whatever they say.
    }
    content_length.ok_or_else(|| {
        FrameError::new(
            PARSE_ERROR,
            "sandlink received a message header without Content-Length; it skipped to the next Content-Length header."
                .into(),
        )
    })
}

fn parse_content_length(value: &[u8]) -> Result<usize, FrameError> {
    let digits = !value.is_empty() && value.iter().all(u8::is_ascii_digit);
    if !digits {
        return Err(FrameError::new(
            PARSE_ERROR,
            format!(
                "sandlink received a Content-Length that is not a number ({}); it skipped to the next \
                 Content-Length header.",
                shown(value)
            ),
        ));
    }
    // Parsing as u64 with a length cap keeps 20-digit and longer numbers from overflowing anything.
    let significant = value.iter().skip_while(|&&digit| digit == b'0').count();
    let length = if significant > 18 {
        None
    } else {
        std::str::from_utf8(value).ok().and_then(|text| text.parse::<u64>().ok())
    };
    match length {
        Some(length) if length <= MAX_CONTENT_LENGTH as u64 => Ok(length as usize),
        _ => Err(FrameError::new(
            PARSE_ERROR,
            format!(
                "sandlink refused a message of {} bytes: the limit is {} MiB. It skipped to the next \
                 Content-Length header.",
                shown(value),
                MAX_CONTENT_LENGTH / (1024 * 1024)
            ),
        )),
    }
}

/// The same message shape tower-lsp's codec parses (its `Message` is private): a response first, then a request.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // Only parsed to prove tower-lsp will accept the bytes.
enum TowerMessage {
    Response(tower_lsp_server::jsonrpc::Response),
    Request(tower_lsp_server::jsonrpc::Request),
}

/// Accepts a body tower-lsp will parse, or says why not with what could be recovered from it.
fn check_body(body: Vec<u8>) -> Result<Frame, FrameError> {
    // tower-lsp checks UTF-8 over the whole body before parsing, so a bad byte in an ignored field matters too.
    let text = match std::str::from_utf8(&body) {
        Ok(text) => text,
        Err(error) => {
            let mut failure = FrameError::new(
                PARSE_ERROR,
                format!(
                    "sandlink could not read a message: its body is not valid UTF-8 (at byte {}). The server keeps \
                     serving.",
                    error.valid_up_to()
                ),
            );
            recover(&body, &mut failure);
            return Err(failure);
        }
    };
    if serde_json::from_str::<TowerMessage>(text).is_ok() {
        return Ok(Frame { body });
    }
    let failure = match serde_json::from_str::<Value>(text) {
        Err(error) => {
            let mut failure = FrameError::new(
                PARSE_ERROR,
                format!("sandlink could not read a message: its body is not valid JSON ({error}). The server keeps serving."),
            );
            recover(&body, &mut failure);
            failure
        }
        Ok(value) => {
            let mut failure = FrameError::new(
                INVALID_REQUEST,
                format!("sandlink could not read a message: {}. The server keeps serving.", why_not_a_message(&value)),
            );
            recover(&body, &mut failure);
            failure
        }
    };
    Err(failure)
}

/// Says, as a clause, why valid JSON is not a JSON-RPC 2.0 message tower-lsp accepts.
fn why_not_a_message(value: &Value) -> String {
    let Some(object) = value.as_object() else {
        return "it is not a JSON object (batches are not part of LSP)".into();
    };
    match object.get("jsonrpc") {
        Some(Value::String(version)) if version == "2.0" => {}
        Some(other) => return format!("its \"jsonrpc\" is {other}, and only \"2.0\" is spoken"),
        None => return "it has no \"jsonrpc\": \"2.0\"".into(),
    }
    if let Some(id) = object.get("id") {
        if !(id.is_string() || id.is_i64() || id.is_null()) {
            return format!("its \"id\" {id} is neither an integer nor a string");
        }
    }
    if let Some(method) = object.get("method") {
        if !method.is_string() {
            return format!("its \"method\" {method} is not a string");
        }
    }
    "it is neither a request, a notification nor a response (a duplicate or wrongly typed member)".into()
}

/// What can be read from a body that did not parse: only the members that decide how to answer, with everything
/// else skipped unchecked (serde_json does not validate escapes or UTF-8 inside skipped strings).
#[derive(Deserialize)]
struct Salvage {
    #[serde(default)]
    id: Option<SalvagedId>,
    #[serde(default)]
    method: Option<IgnoredAny>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SalvagedId {
    Number(i64),
    Text(String),
}

/// Fills in the id and shape of a failed frame from whatever of it still parses.
fn recover(body: &[u8], failure: &mut FrameError) {
    let Ok(salvage) = serde_json::from_slice::<Salvage>(body) else {
        return;
    };
    failure.id = salvage.id.map(|id| match id {
        SalvagedId::Number(number) => json!(number),
        SalvagedId::Text(text) => json!(text),
    });
    failure.shape = match (salvage.method.is_some(), failure.id.is_some()) {
        (true, true) => MessageShape::Request,
        (true, false) => MessageShape::Notification,
        (false, _) if salvage.result.is_some() || salvage.error.is_some() => MessageShape::Response,
        (false, true) => MessageShape::Request,
        (false, false) => MessageShape::Unknown,
    };
}

/// The first position of `needle` in `haystack`, ignoring ASCII case; cheap on long runs without its first letter.
fn find_ignoring_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let last_start = haystack.len().checked_sub(needle.len())?;
    let mut start = 0;
    while start <= last_start {
        let offset = haystack[start..=last_start].iter().position(|byte| byte.eq_ignore_ascii_case(&first))?;
        let at = start + offset;
        if haystack[at..at + needle.len()].eq_ignore_ascii_case(needle) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|byte| !byte.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|byte| !byte.is_ascii_whitespace()).map_or(start, |end| end + 1);
    &bytes[start..end]
}

/// A header value as it can be shown in a message: lossy, quoted, at most 40 characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut shortened: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        shortened.push('…');
    }
    format!("{shortened:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut decoder = FrameDecoder::new();
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    fn good(id: i64) -> Vec<u8> {
        encode_frame(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"sandlink/drivers"}}"#).as_bytes())
    }

    fn raw(header_and_body: &str) -> Vec<u8> {
        header_and_body.as_bytes().to_vec()
    }

    #[test]
    fn the_kind_should_be_the_contracts() {
        assert_eq!(INVALID_MESSAGE_KIND, crate::protocol::ErrorKind::InvalidMessage.as_str());
    }

    #[test]
    fn a_duplicate_member_should_be_refused_exactly_when_tower_lsp_would_refuse_it() {
        // serde's untagged parse refuses a duplicate `id` (a field of both shapes) but reads a duplicate `result`
        // as a request with an empty method, which tower-lsp then answers "method not found".
        let duplicate_id = decode_all(&encode_frame(br#"{"jsonrpc":"2.0","id":3,"id":4,"method":"m"}"#));
        assert!(duplicate_id[0].is_err());
        let duplicate_result = decode_all(&encode_frame(br#"{"jsonrpc":"2.0","id":3,"result":1,"result":2}"#));
        assert!(duplicate_result[0].is_ok());
    }

    #[test]
    fn well_formed_frames_should_come_out_whole_whatever_the_chunking() {
        let stream: Vec<u8> = [good(1), good(2), good(3)].concat();
        for chunk in [1, 2, 7, 64, stream.len()] {
            let mut decoder = FrameDecoder::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame() {
                    frames.push(frame.expect("a good frame"));
                }
            }
            assert_eq!(frames.len(), 3, "chunks of {chunk}");
            assert_eq!(frames[1].encode(), good(2));
            assert_eq!(decoder.buffered_len(), 0);
        }
    }

    #[test]
    fn a_body_that_is_not_json_should_be_one_error_and_the_next_frame_should_follow() {
        let stream = [raw("Content-Length: 3\r\n\r\n{x}"), good(7)].concat();
        let outcomes = decode_all(&stream);
        assert_eq!(outcomes.len(), 2);
        let error = outcomes[0].clone().expect_err("{x} is refused");
        assert_eq!(error.code, PARSE_ERROR);
        assert_eq!(error.shape, MessageShape::Unknown);
        let response = error.response().expect("an unknown frame is answered with id null");
        assert_eq!(response["id"], Value::Null);
        assert_eq!(response["error"]["data"]["kind"], "invalidMessage");
        assert!(outcomes[1].is_ok());
    }

    #[test]
    fn the_id_of_a_request_with_invalid_utf8_or_a_lone_surrogate_should_be_recovered() {
        let mut bad_utf8 = br#"{"jsonrpc":"2.0","id":41,"method":"sandlink/status","params":{"sessionId":"#.to_vec();
        bad_utf8.extend_from_slice(b"\"\xff\xfe\"}}");
        let surrogate = br#"{"jsonrpc":"2.0","id":"s-42","method":"sandlink/status","params":{"sessionId":"\ud800"}}"#;
        for (body, id) in [(bad_utf8, json!(41)), (surrogate.to_vec(), json!("s-42"))] {
            let outcomes = decode_all(&[encode_frame(&body), good(1)].concat());
            let error = outcomes[0].clone().expect_err("refused");
            assert_eq!(error.code, PARSE_ERROR, "{}", error.message);
            assert_eq!(error.id, Some(id.clone()));
            assert_eq!(error.response().expect("a request is answered")["id"], id);
            assert!(outcomes[1].is_ok());
        }
    }

    #[test]
    fn a_wrong_jsonrpc_version_should_be_an_invalid_request_with_the_id() {
        let outcomes = decode_all(&encode_frame(br#"{"jsonrpc":"1.0","id":5,"method":"sandlink/drivers"}"#));
        let error = outcomes[0].clone().expect_err("1.0 is refused");
        assert_eq!(error.code, INVALID_REQUEST);
        assert_eq!(error.id, Some(json!(5)));
        assert!(error.message.contains("\"1.0\""), "{}", error.message);
    }

    #[test]
    fn a_bad_notification_or_response_should_only_be_logged() {
        let notification = decode_all(&encode_frame(br#"{"jsonrpc":"1.0","method":"initialized"}"#));
        assert_eq!(notification[0].clone().expect_err("refused").response(), None);
        let response = decode_all(&encode_frame(br#"{"jsonrpc":"1.0","id":3,"result":1}"#));
        let error = response[0].clone().expect_err("a response of the wrong version is refused");
        assert_eq!(error.shape, MessageShape::Response);
        assert_eq!(error.response(), None);
    }

    #[test]
    fn unusable_lengths_should_be_refused_and_the_next_frame_served() {
        for header in ["Content-Length: abc", "Content-Length: 99999999999999999999", "Content-Length: 67108865", "X: y"] {
            let stream = [raw(&format!("{header}\r\n\r\n{{\"a\":1}}")), good(9)].concat();
            let outcomes = decode_all(&stream);
            assert_eq!(outcomes.len(), 2, "{header}: {outcomes:?}");
            assert!(outcomes[0].is_err(), "{header}");
            assert_eq!(outcomes[1].clone().expect("the next frame is served").encode(), good(9));
        }
    }

    #[test]
    fn a_refused_huge_body_should_never_be_held_in_memory() {
        let mut decoder = FrameDecoder::new();
        decoder.push(b"Content-Length: 200000000\r\n\r\n");
        assert!(decoder.next_frame().expect("an answer").is_err());
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            decoder.push(&junk);
            assert!(decoder.next_frame().is_none());
            assert!(decoder.buffered_len() < CONTENT_LENGTH.len());
        }
        decoder.push(&good(4));
        assert!(decoder.next_frame().expect("the next frame").is_ok());
    }

    #[test]
    fn garbage_in_front_of_a_header_should_cost_one_error_not_the_frame() {
        let outcomes = decode_all(&[raw("}}garbage"), good(1)].concat());
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert!(outcomes[0].is_err());
        assert!(outcomes[1].is_ok());
    }

    #[test]
    fn a_header_without_its_blank_line_should_be_refused_past_the_bound() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&vec![b'a'; HEADER_WINDOW]);
        assert!(decoder.next_frame().expect("refused").is_err());
        decoder.push(&good(2));
        assert!(decoder.next_frame().expect("then served").is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces a hostile or unlucky client might send, glued in any order.
        fn piece() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                (0i64..1000).prop_map(good),
                proptest::collection::vec(any::<u8>(), 0..40),
                "[a-zA-Z0-9:{}\"\\\r\n -]{0,40}".prop_map(|text| text.into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(|body| encode_frame(&body)),
                (0u64..u64::MAX).prop_map(|length| format!("Content-Length: {length}\r\n\r\n").into_bytes()),
                Just(b"Content-Length: 20\r\n\r\n{\"jsonrpc\":\"2.0\"}".to_vec()),
            ]
        }

        fn outcomes(stream: &[u8], chunk: usize) -> Vec<Result<Frame, FrameError>> {
            let mut decoder = FrameDecoder::new();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk.max(1)) {
                decoder.push(piece);
                while let Some(outcome) = decoder.next_frame() {
                    seen.push(outcome);
                }
                assert!(decoder.buffered_len() <= MAX_CONTENT_LENGTH + HEADER_WINDOW + chunk);
            }
            seen
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_stream_should_decode_the_same_however_it_is_split_and_forward_only_what_tower_lsp_accepts(
                pieces in proptest::collection::vec(piece(), 0..12),
                chunk in 1usize..64,
            ) {
                let stream = pieces.concat();
                let whole = outcomes(&stream, stream.len().max(1));
                let split = outcomes(&stream, chunk);
                prop_assert_eq!(&whole, &split);
                for frame in whole.iter().flatten() {
                    let text = std::str::from_utf8(&frame.body).expect("forwarded frames are UTF-8");
                    prop_assert!(serde_json::from_str::<TowerMessage>(text).is_ok());
                }
            }

            #[test]
            fn a_good_frame_after_any_garbage_and_a_header_should_be_served(
                garbage in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                // Resynchronisation looks for the next `Content-Length`, so garbage costs at most the frame right
                // after it (random bytes practically never spell a usable header); the one after that is served.
                let mut stream = garbage;
                stream.extend_from_slice(b"\r\n\r\n");
                stream.extend_from_slice(&good(77));
                stream.extend_from_slice(&good(78));
                let seen = outcomes(&stream, 7);
                let last = seen.last().and_then(|outcome| outcome.as_ref().ok()).map(Frame::encode);
                prop_assert_eq!(last, Some(good(78)));
            }
        }
    }
}
