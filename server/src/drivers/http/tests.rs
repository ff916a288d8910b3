//! Tests of the HTTP layer against a tiny HTTP/1.1 server on a local port: real requests, scripted answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::lease::LeaseBook;
use super::*;

static WORDING: Wording = Wording { provider: "Cloud", credentials_hint: "Check the cloud key." };

/// An error shape like a simple provider's: the body is the message, 404 means the sandbox is gone.
struct PlainShape;

impl ErrorShape for PlainShape {
    fn read(&self, status: u16, body: &str) -> ErrorReading {
        ErrorReading { message: body.to_string(), gone: status == 404, retryable: status_is_transient(status) }
    }
}

/// What the test server does with one request.
#[derive(Clone)]
enum Answer {
    Reply { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// Never answers, so the client's deadline has to end the request.
    Stall,
}

fn reply(status: u16, body: &str) -> Answer {
    Answer::Reply { status, headers: Vec::new(), body: body.to_string() }
}

fn reply_after(status: u16, retry_after: &str, body: &str) -> Answer {
    Answer::Reply { status, headers: vec![("Retry-After", retry_after.to_string())], body: body.to_string() }
}

/// One request as the server received it.
struct Received {
    at: Instant,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

struct TestServer {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl TestServer {
    /// Serves `answers` in order, one per connection (each answer closes it); the last repeats once they run out.
    async fn start(answers: Vec<Answer>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let base_url = format!("http://{}", listener.local_addr().expect("local address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            let mut served = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else { continue };
                log.lock().expect("log lock").push(request);
                let answer = answers[served.min(answers.len() - 1)].clone();
                served += 1;
                match answer {
                    Answer::Reply { status, headers, body } => {
                        let mut head = format!(
                            "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n",
                            reason_phrase(status),
                            body.len()
                        );
                        for (name, value) in headers {
                            head.push_str(&format!("{name}: {value}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    Answer::Stall => {
                        // Hold the connection open without answering until the client gives up.
                        tokio::spawn(async move {
                            let mut sink = [0u8; 64];
                            while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                        });
                    }
                }
            }
        });
        TestServer { base_url, received }
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.received.lock().expect("log lock")
    }
}

/// Reads one request's head and its `Content-Length` body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(position) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..read]);
    };
    let at = Instant::now();
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body_read = bytes.len() - (head_end + 4);
    while body_read < length {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        body_read += read;
    }
    Some(Received { at, method, path, headers })
}

fn client(server: &TestServer) -> Client {
    Client::new(reqwest::Client::new(), server.base_url.clone(), &WORDING, Arc::default())
}

/// Retries in milliseconds, so giving up after the last one is quick to test.
fn quick_retries() -> RetryPolicy {
    RetryPolicy { min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5), ..RetryPolicy::default() }
}

fn remote_status_and_message(error: Error) -> (Option<u16>, String) {
    match error {
        Error::Remote { status, message } => (status, message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn retry_should_wait_as_long_as_retry_after_asks() {
    let server = TestServer::start(vec![reply_after(429, "1", "slow down"), reply(200, "{}")]).await;
    let client = client(&server);
    let response = client.call(reqwest::Method::GET, "/things", None, &PlainShape, "listing things").await;
    assert!(response.is_ok(), "the retry after the wait should succeed");
    let received = server.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    // The backoff alone would have waited at most a few hundred milliseconds.
    assert!(waited >= Duration::from_millis(950), "waited only {waited:?} where Retry-After asked for 1 s");
}

#[tokio::test]
async fn retry_should_give_up_at_once_when_retry_after_exceeds_the_bound() {
    let server = TestServer::start(vec![reply_after(429, "31", "slow down"), reply(200, "{}")]).await;
    let client = client(&server);
    let error = client.call(reqwest::Method::GET, "/things", None, &PlainShape, "listing things").await.expect_err("gives up");
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, Some(429));
    assert_eq!(
        message,
        "Cloud is rate-limiting requests while listing things and asked to wait 31 s (slow down); try again later."
    );
    assert_eq!(server.received().len(), 1, "a wait past the bound must not be retried");
}

#[tokio::test]
async fn retry_should_stop_when_the_attempts_run_out() {
    let server = TestServer::start(vec![reply(503, "busy")]).await;
    let client = client(&server).with_retry(RetryPolicy { max_retries: 2, ..quick_retries() });
    let error = client.call(reqwest::Method::GET, "/things", None, &PlainShape, "listing things").await.expect_err("gives up");
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, Some(503));
    assert_eq!(message, "Cloud answered HTTP 503 while listing things: busy.");
    assert_eq!(server.received().len(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn non_retryable_status_should_not_be_retried() {
    let server = TestServer::start(vec![reply(400, "bad field"), reply(200, "{}")]).await;
    let client = client(&server).with_retry(quick_retries());
    let error = client.call(reqwest::Method::POST, "/things", None, &PlainShape, "making a thing").await.expect_err("fails");
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, Some(400));
    assert_eq!(message, "Cloud answered HTTP 400 while making a thing: bad field.");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn idempotency_key_should_be_the_same_across_retries_of_one_create() {
    let server = TestServer::start(vec![reply(503, "busy"), reply(502, "gateway"), reply(200, "{}")]).await;
    let client = client(&server).with_retry(quick_retries()).with_idempotency_header("X-Request-Id");
    let key = IdempotencyKey::generate();
    let body = serde_json::json!({ "template": "base" });
    client
        .call_keyed(reqwest::Method::POST, "/sandboxes", Some(&body), &PlainShape, "creating the sandbox", Some(&key))
        .await
        .expect("the third attempt succeeds");
    let received = server.received();
    assert_eq!(received.len(), 3);
    for request in received.iter() {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/sandboxes"));
        assert_eq!(request.header("X-Request-Id"), Some(key.as_str()));
    }
    assert_ne!(IdempotencyKey::generate(), key, "each logical create gets its own key");
}

#[tokio::test]
async fn failure_text_should_not_contain_the_secret() {
    let secret = "sk-test-0123456789abcdef";
    let echo = format!("invalid key {secret} for this account");
    let server = TestServer::start(vec![reply(401, &echo)]).await;
    let client = client(&server).with_header("Accept", "application/json").with_secret_header("X-API-Key", Secret::new(secret));
    let error = client.call(reqwest::Method::GET, "/things", None, &PlainShape, "listing things").await.expect_err("refused");
    assert_eq!(server.received()[0].header("X-API-Key"), Some(secret), "the request carries the key");
    assert_eq!(server.received()[0].header("Accept"), Some("application/json"));
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, Some(401));
    assert!(!message.contains(secret), "the message leaks the secret: {message}");
    assert_eq!(
        message,
        "Cloud refused the credentials while listing things (invalid key <redacted> for this account). Check the cloud key."
    );
}

#[tokio::test]
async fn gone_answer_should_set_the_gone_flag() {
    let server = TestServer::start(vec![reply(404, "no such sandbox")]).await;
    let client = client(&server).with_gone_note("The cloud says the sandbox is gone.");
    assert_eq!(client.gone().get(), None);
    let error = client.call(reqwest::Method::GET, "/sandboxes/sb1", None, &PlainShape, "reading the sandbox").await.expect_err("gone");
    assert_eq!(client.gone().get().as_deref(), Some("The cloud says the sandbox is gone."));
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, Some(404));
    assert!(message.starts_with("The Cloud sandbox no longer exists (no such sandbox) while reading the sandbox"), "{message}");
}

#[tokio::test]
async fn other_failures_should_leave_the_gone_flag_unset() {
    let server = TestServer::start(vec![reply(409, "conflict")]).await;
    let client = client(&server);
    let _ = client.call(reqwest::Method::GET, "/sandboxes/sb1", None, &PlainShape, "reading the sandbox").await;
    assert_eq!(client.gone().get(), None);
}

#[tokio::test]
async fn deadline_should_end_a_request_that_gets_no_answer() {
    let server = TestServer::start(vec![Answer::Stall]).await;
    let client = client(&server).with_deadline(Duration::from_millis(300)).with_retry(quick_retries());
    let started = Instant::now();
    let error = client.call(reqwest::Method::GET, "/things", None, &PlainShape, "listing things").await.expect_err("times out");
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline did not end the request");
    let (status, message) = remote_status_and_message(error);
    assert_eq!(status, None);
    assert!(message.starts_with("Could not reach Cloud while listing things:"), "{message}");
    assert_eq!(server.received().len(), 1, "a request that may have reached the server is not repeated");
}

#[tokio::test]
async fn header_limit_should_turn_a_silent_server_into_a_timeout() {
    let server = TestServer::start(vec![Answer::Stall]).await;
    let client = client(&server);
    let outcome = client.send(&PlainShape, Some(Duration::from_millis(200)), || client.request(reqwest::Method::GET, "/")).await;
    let error = client.fail(outcome.expect_err("times out"), "probing");
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
}

#[test]
fn lease_should_follow_extensions_and_reported_ends() {
    let book = LeaseBook::starting_now(300, Duration::from_secs(60));
    let first = book.expires_at();
    let extended = book.extended_by(3600);
    assert!(extended > first);
    assert_eq!(book.expires_at(), extended);
    book.observed_end("2030-01-02T03:04:05Z");
    assert_eq!(lease::rfc3339(book.expires_at()), "2030-01-02T03:04:05Z");
    book.observed_end("not a time");
    assert_eq!(lease::rfc3339(book.expires_at()), "2030-01-02T03:04:05Z", "an unreadable end changes nothing");
    let gone = GoneFlag::default();
    let lease = book.lease(&gone);
    assert_eq!((lease.extend_seconds, lease.idle_window, lease.gone), (300, Duration::from_secs(60), None));
    gone.set("first");
    gone.set("second");
    assert_eq!(book.lease(&gone).gone.as_deref(), Some("first"), "the first reason is the one kept");
}
