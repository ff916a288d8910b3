//! The HTTP client layer that cloud-provider drivers share: requests, retries, deadlines, errors and the gone flag.
//!
//! A provider's driver builds one `Client` per API it talks to (a base URL, its fixed and secret headers, a deadline)
//! and plugs its own knowledge in through `ErrorShape`: how an error answer reads, whether it is worth repeating, and
//! whether it says the sandbox is gone. Everything else is the same for every provider: `Client::send` retries with
//! exponential backoff and honours `Retry-After` up to a bound; a create carries an `IdempotencyKey` that stays the
//! same across its retries; failures become `crate::error::Error` (`remoteError` with the HTTP status) in sentences
//! worded with the provider's name, from which every secret the client holds is scrubbed.

pub mod lease;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::credentials::Secret;
use crate::error::Error;

/// The statuses that usually mean "try again shortly": rate limiting and transient server or gateway trouble.
pub fn status_is_transient(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// The standard reason phrase of a status ("Not Found"), for answers whose body says nothing readable.
pub fn reason_phrase(status: u16) -> String {
    StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).unwrap_or("").to_string()
}

/// What a provider read from one error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReading {
    /// The provider's own explanation, shown to the user (after scrubbing).
    pub message: String,
    /// Whether the answer says the sandbox no longer exists; sets the client's gone flag.
    pub gone: bool,
    /// Whether the same request may succeed when repeated.
    pub retryable: bool,
}

/// How one provider (or one of its APIs) writes error answers; the provider-specific half of failure mapping.
pub trait ErrorShape: Send + Sync {
    /// Reads an error answer's status and body.
    fn read(&self, status: u16, body: &str) -> ErrorReading;
}

/// Remembers that the sandbox is gone (the provider said so), so the session can turn `expired`.
#[derive(Default)]
pub struct GoneFlag(Mutex<Option<String>>);

impl GoneFlag {
    /// Records the first sentence saying the sandbox is gone; later ones add nothing.
    pub fn set(&self, message: &str) {
        let mut gone = crate::locks::lock(&self.0);
        if gone.is_none() {
            *gone = Some(message.to_string());
        }
    }

    pub fn get(&self) -> Option<String> {
        crate::locks::lock(&self.0).clone()
    }
}

/// Why one HTTP attempt failed; decides whether to retry and becomes an `Error` at the end.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with a non-success status.
    Status { status: u16, message: String, retry_after: Option<Duration>, gone: bool, retryable: bool },
    /// The request never got an answer (refused connection, reset, timeout).
    Transport { message: String, connect: bool },
    /// No answer within the time sandlink allows.
    Timeout(Duration),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Status { retryable, .. } => *retryable,
            // Only a refused connection is certain not to have reached the server, so only it is safe to repeat.
            Failure::Transport { connect, .. } => *connect,
            Failure::Timeout(_) => false,
        }
    }

    /// Reads an error answer, with `shape` telling what the provider's body means.
    pub async fn from_response(response: Response, shape: &dyn ErrorShape) -> Failure {
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let ErrorReading { message, gone, retryable } = shape.read(status, &body);
        Failure::Status { status, message, retry_after, gone, retryable }
    }

    /// A request that got no answer, with the whole chain of causes (reqwest's own text is often just "error").
    pub fn transport(error: reqwest::Error) -> Failure {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure::Transport { message, connect: error.is_connect() }
    }

    /// Whether the provider said the sandbox no longer exists.
    pub fn gone(&self) -> bool {
        matches!(self, Failure::Status { gone: true, .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::format_description::well_known::Rfc2822;
    let when = time::OffsetDateTime::parse(text, &format).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs_f64(delta.as_seconds_f64().max(0.0)))
}

/// How often and how patiently a request is repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff delay; each further one doubles, with jitter.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The longest `Retry-After` sandlink waits for; a longer one ends the request with a clear error instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retries: 5,
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Sends a request built by `build` until it succeeds, a failure is not worth retrying, or the attempts run out.
///
/// `header_limit` bounds each attempt's wait for the answer's headers (a `Failure::Timeout`), apart from any
/// deadline on the request itself.
pub async fn send_with_retry<B>(
    shape: &dyn ErrorShape,
    policy: RetryPolicy,
    header_limit: Option<Duration>,
    build: B,
) -> Result<Response, Failure>
where
    B: Fn() -> RequestBuilder,
{
    let attempt = || async {
        let sending = build().send();
        let response = match header_limit {
            Some(limit) => tokio::time::timeout(limit, sending).await.map_err(|_| Failure::Timeout(limit))?,
            None => sending.await,
        }
        .map_err(Failure::transport)?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(Failure::from_response(response, shape).await)
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries)
        .with_jitter();
    attempt
        .retry(backoff)
        .when(Failure::retryable)
        .adjust(|failure, planned| {
            // `planned` is None once the attempts are used up: stop then, whatever the server asked for.
            let planned = planned?;
            match failure {
                Failure::Status { retry_after: Some(wait), .. } if *wait > policy.max_retry_after => None,
                Failure::Status { retry_after: Some(wait), .. } if !wait.is_zero() => Some(*wait),
                _ => Some(planned),
            }
        })
        .notify(|failure, wait| {
            if let Failure::Status { status: 429, retry_after: Some(_), .. } = failure {
                // A wait the server asked for can be long; the log says how long, so a pause is never a mystery.
                tracing::info!(wait_ms = wait.as_millis() as u64, "rate-limited (429): waiting {:.1} s, as Retry-After asks", wait.as_secs_f64());
            } else {
                tracing::debug!(status = ?failure.status(), wait_ms = wait.as_millis() as u64, "retrying a request");
            }
        })
        .await
}

/// The provider-specific words of the sentences a user sees.
#[derive(Debug)]
pub struct Wording {
    /// The provider's name as users know it ("E2B").
    pub provider: &'static str,
    /// What to check when the credentials are refused; a whole sentence.
    pub credentials_hint: &'static str,
}

/// Replaces every secret in `text` with `<redacted>`.
pub fn scrub(text: String, secrets: &[&Secret]) -> String {
    secrets.iter().fold(text, |text, secret| {
        if secret.expose().is_empty() {
            text
        } else {
            text.replace(secret.expose(), "<redacted>")
        }
    })
}

/// Builds the `Error` a user sees for a failure, scrubbing any secret the server might have echoed.
pub fn describe_failure(failure: Failure, wording: &Wording, policy: &RetryPolicy, what: &str, secrets: &[&Secret]) -> Error {
    let provider = wording.provider;
    let scrub = |text: String| scrub(text, secrets);
    match failure {
        Failure::Status { status: 401 | 403, message, .. } => Error::Remote {
            status: Some(401),
            message: scrub(format!(
                "{provider} refused the credentials while {what} ({message}). {}",
                wording.credentials_hint
            )),
        },
        Failure::Status { status: 429, message, retry_after, .. } => Error::Remote {
            status: Some(429),
            message: scrub(match retry_after {
                Some(wait) if wait > policy.max_retry_after => format!(
                    "{provider} is rate-limiting requests while {what} and asked to wait {} s ({message}); try again \
                     later.",
                    wait.as_secs()
                ),
                _ => format!(
                    "{provider} kept answering 429 Too Many Requests while {what}, even after retrying ({message}); \
                     wait a little and try again."
                ),
            }),
        },
        Failure::Status { status, message, gone: true, .. } => Error::Remote {
            status: Some(status),
            message: scrub(format!(
                "The {provider} sandbox no longer exists ({message}) while {what}; it most likely reached its timeout \
                 or was killed. Connect again to get a new sandbox."
            )),
        },
        Failure::Status { status, message, .. } => Error::Remote {
            status: Some(status),
            message: scrub(format!("{provider} answered HTTP {status} while {what}: {message}.")),
        },
        Failure::Transport { message, .. } => Error::Remote {
            status: None,
            message: scrub(format!("Could not reach {provider} while {what}: {message}.")),
        },
        Failure::Timeout(limit) => Error::Timeout(format!(
            "{provider} did not answer within {} s while {what}; the sandbox may be overloaded or unreachable.",
            limit.as_secs()
        )),
    }
}

/// The key that makes one logical create safe to repeat: the provider answers a repeat with what the first made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A fresh key for a create that has no natural identity of its own.
    pub fn generate() -> Self {
        IdempotencyKey(format!("sandlink-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A key derived from what identifies the create (a session id), so even a create repeated after a restart of
    /// sandlink finds the sandbox the first one made.
    pub fn for_logical_create(identity: &str) -> Self {
        IdempotencyKey(format!("sandlink-{identity}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The connection pool a provider's clients share: sandlink's user agent, a bound on connecting, and a bound on each
/// read (a read that waits longer means a dead connection, for streams and uploads alike).
pub fn connection_pool(wording: &Wording, connect_timeout: Duration, read_timeout: Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .user_agent(concat!("sandlink/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| Error::Internal(format!("Could not set up the HTTP client for {}: {error}", wording.provider)))
}

/// One provider API: a base URL, the headers every request carries, a deadline, retries and failure mapping.
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    wording: &'static Wording,
    headers: Vec<(&'static str, String)>,
    /// Headers whose values are secrets; they are also what error text is scrubbed of.
    secret_headers: Vec<(&'static str, Secret)>,
    /// Secrets sent inside another value (a key inside `Bearer KEY`): error text is scrubbed of them too.
    scrubbed: Vec<Secret>,
    deadline: Option<Duration>,
    retry: RetryPolicy,
    idempotency_header: &'static str,
    gone: Arc<GoneFlag>,
    gone_note: String,
}

impl Client {
    /// A client for `base_url` (no trailing slash; paths start with one) that records a gone sandbox in `gone`.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, wording: &'static Wording, gone: Arc<GoneFlag>) -> Self {
        Client {
            http,
            base_url: base_url.into(),
            wording,
            headers: Vec::new(),
            secret_headers: Vec::new(),
            scrubbed: Vec::new(),
            deadline: None,
            retry: RetryPolicy::default(),
            idempotency_header: "Idempotency-Key",
            gone,
            gone_note: format!("{} reports that the sandbox no longer exists.", wording.provider),
        }
    }

    /// A header every request carries.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// A header carrying a secret (an API key, a token); error text is scrubbed of its value.
    pub fn with_secret_header(mut self, name: &'static str, secret: Secret) -> Self {
        self.secret_headers.push((name, secret));
        self
    }

    /// A secret that travels inside another value (the key of a `Bearer` header): answers that echo it bare are
    /// scrubbed of it as well.
    pub fn with_scrubbed(mut self, secret: Secret) -> Self {
        self.scrubbed.push(secret);
        self
    }

    /// A header whose value embeds `secret` (`Authorization: Bearer <token>`): the whole value and the bare secret are
    /// both scrubbed from error text, so a server echoing just the token shows nothing of it.
    pub fn with_bearer_header(mut self, name: &'static str, scheme: &str, secret: Secret) -> Self {
        self.secret_headers.push((name, Secret::new(format!("{scheme} {}", secret.expose()))));
        self.scrubbed.push(secret);
        self
    }

    /// How long one request (sending, waiting and reading the answer) may take.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The header a create's `IdempotencyKey` goes in (`Idempotency-Key` unless the provider names another).
    pub fn with_idempotency_header(mut self, name: &'static str) -> Self {
        self.idempotency_header = name;
        self
    }

    /// The sentence the gone flag records when this API says the sandbox is gone.
    pub fn with_gone_note(mut self, note: impl Into<String>) -> Self {
        self.gone_note = note.into();
        self
    }

    pub fn gone(&self) -> &Arc<GoneFlag> {
        &self.gone
    }

    /// A request to `path` with the client's headers and deadline.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url));
        for (name, value) in &self.headers {
            request = request.header(*name, value.as_str());
        }
        for (name, secret) in &self.secret_headers {
            request = request.header(*name, secret.expose());
        }
        if let Some(deadline) = self.deadline {
            request = request.timeout(deadline);
        }
        request
    }

    /// Sends what `build` makes (start it from `request`) with this client's retry policy.
    pub async fn send<B>(&self, shape: &dyn ErrorShape, header_limit: Option<Duration>, build: B) -> Result<Response, Failure>
    where
        B: Fn() -> RequestBuilder,
    {
        send_with_retry(shape, self.retry, header_limit, build).await
    }

    /// Turns a failure into an `Error`, remembering when it shows the sandbox is gone.
    pub fn fail(&self, failure: Failure, what: &str) -> Error {
        if failure.gone() {
            self.gone.set(&self.gone_note);
        }
        let secrets: Vec<&Secret> =
            self.secret_headers.iter().map(|(_, secret)| secret).chain(self.scrubbed.iter()).collect();
        describe_failure(failure, self.wording, &self.retry, what, &secrets)
    }

    /// Sends a call with a JSON body (or none) and answers the raw response.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        shape: &dyn ErrorShape,
        what: &str,
    ) -> Result<Response, Error> {
        self.call_keyed(method, path, body, shape, what, None).await
    }

    /// Like `call`, with an idempotency key so a retried create after a lost answer makes no second sandbox.
    pub async fn call_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        shape: &dyn ErrorShape,
        what: &str,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Response, Error> {
        let outcome = self
            .send(shape, None, || {
                let mut request = self.request(method.clone(), path);
                if let Some(key) = idempotency_key {
                    request = request.header(self.idempotency_header, key.as_str());
                }
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await;
        outcome.map_err(|failure| self.fail(failure, what))
    }

    /// Reads a JSON answer, tolerating unknown fields.
    pub async fn json<T: DeserializeOwned>(&self, response: Response, what: &str) -> Result<T, Error> {
        json_body(response, self.wording, what).await
    }
}

/// Reads a JSON answer, tolerating unknown fields.
pub async fn json_body<T: DeserializeOwned>(response: Response, wording: &Wording, what: &str) -> Result<T, Error> {
    let provider = wording.provider;
    let bytes = response.bytes().await.map_err(|error| Error::Remote {
        status: None,
        message: format!("The answer from {provider} broke off while {what}: {error}."),
    })?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Remote {
        status: None,
        message: format!("{provider} answered something sandlink does not understand while {what}: {error}."),
    })
}
