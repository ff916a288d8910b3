//! HTTP plumbing of the e2b driver: the control-plane API, envd's unary calls, retries with backoff, and errors.
//!
//! Every request goes through `send_with_retry`, which retries 429 and transient 5xx answers with exponential backoff
//! and honours `Retry-After`. Failures become `crate::error::Error` with a sentence that names what sandlink was doing
//! and never contains the API key or the envd access token (both are `Secret`s, and server messages are scrubbed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;

/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// The longest `Retry-After` sandlink waits for; a longer one ends the request with a clear error instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long one unary call (control plane or envd) may take before it counts as failed.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::credentials::Secret;

/// Remembers that the sandbox is gone (E2B answered "sandbox not found"), so the session can turn `expired`.
#[derive(Default)]
pub struct GoneFlag(Mutex<Option<String>>);

impl GoneFlag {
    pub fn set(&self, message: &str) {
        let mut gone = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if gone.is_none() {
            *gone = Some(message.to_string());
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Why one HTTP attempt failed; decides whether to retry and becomes an `Error` at the end.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with a non-success status.
    Status { status: u16, message: String, retry_after: Option<Duration>, sandbox_missing: bool, rpc_code: Option<String> },
    /// The request never got an answer (refused connection, reset, timeout).
    Transport { message: String, connect: bool },
    /// No answer within the time sandlink allows.
    Timeout(Duration),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            // An RPC handler's own error (a string code such as "not_found") is an answer, not a hiccup.
            Failure::Status { rpc_code: Some(code), .. } => code == "unavailable" || code == "resource_exhausted",
            Failure::Status { status, sandbox_missing, .. } => {
                !sandbox_missing && matches!(status, 429 | 500 | 502 | 503 | 504)
            }
            // Only a refused connection is certain not to have reached the server, so only it is safe to repeat.
            Failure::Transport { connect, .. } => *connect,
            Failure::Timeout(_) => false,
        }
    }

    /// Reads an error answer: E2B's control API, envd and its edge proxy each have their own JSON shape.
    pub async fn from_response(response: Response, plane: Plane) -> Failure {
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let rpc_code = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|value| value.get("code").and_then(Value::as_str).map(str::to_string));
        let message = error_message_from_body(&body).unwrap_or_else(|| {
            let reason = StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).unwrap_or("");
            reason.to_string()
        });
        let lowered = message.to_ascii_lowercase();
        let sandbox_missing = match plane {
            // The edge proxy answers 502 "The sandbox was not found" for a sandbox that no longer exists.
            Plane::Envd => status == 502 && lowered.contains("not found"),
            Plane::ControlSandbox => status == 404,
            Plane::Control => false,
        };
        Failure::Status { status, message, retry_after, sandbox_missing, rpc_code }
    }

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

    pub fn sandbox_missing(&self) -> bool {
        matches!(self, Failure::Status { sandbox_missing: true, .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Which part of E2B a request went to; decides how an answer's status is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The control API, on a route that is not about one existing sandbox (create, list).
    Control,
    /// The control API, on `/sandboxes/{id}/…`: a 404 there means the sandbox is gone.
    ControlSandbox,
    /// envd inside the sandbox, behind E2B's edge proxy.
    Envd,
}

fn error_message_from_body(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let message = value.get("message").and_then(Value::as_str)?.to_string();
    // envd and Connect errors carry a string code such as "not_found"; keep it, it helps when reporting bugs.
    match value.get("code").and_then(Value::as_str) {
        Some(code) => Some(format!("{message} ({code})")),
        None => Some(message),
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

/// Sends a request built by `build` until it succeeds, a failure is not worth retrying, or the attempts run out.
pub async fn send_with_retry<B>(plane: Plane, header_timeout: Option<Duration>, build: B) -> Result<Response, Failure>
where
    B: Fn() -> RequestBuilder,
{
    let attempt = || async {
        let sending = build().send();
        let response = match header_timeout {
            Some(limit) => tokio::time::timeout(limit, sending).await.map_err(|_| Failure::Timeout(limit))?,
            None => sending.await,
        }
        .map_err(Failure::transport)?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(Failure::from_response(response, plane).await)
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(5)
        .with_jitter();
    attempt
        .retry(backoff)
        .when(Failure::retryable)
        .adjust(|failure, planned| {
            // `planned` is None once the attempts are used up: stop then, whatever the server asked for.
            let planned = planned?;
            match failure {
                Failure::Status { retry_after: Some(wait), .. } if *wait > MAX_RETRY_AFTER => None,
                Failure::Status { retry_after: Some(wait), .. } if !wait.is_zero() => Some(*wait),
                _ => Some(planned),
            }
        })
        .notify(|failure, wait| {
            tracing::debug!(status = ?failure.status(), wait_ms = wait.as_millis() as u64, "retrying an E2B request");
        })
        .await
}

/// Builds the `Error` a user sees for a failure, scrubbing any secret the server might have echoed.
pub fn describe_failure(failure: Failure, what: &str, secrets: &[&Secret]) -> Error {
    let scrub = |text: String| {
        secrets.iter().fold(text, |text, secret| {
            if secret.expose().is_empty() {
                text
            } else {
                text.replace(secret.expose(), "<redacted>")
            }
        })
    };
    match failure {
        Failure::Status { status: 401 | 403, message, .. } => Error::Remote {
            status: Some(401),
            message: scrub(format!(
                "E2B refused the credentials while {what} ({message}). Check the API key in E2B_API_KEY or the \
                 one stored with sandlink/setCredential."
            )),
        },
        Failure::Status { status: 429, message, retry_after, .. } => Error::Remote {
            status: Some(429),
            message: scrub(match retry_after {
                Some(wait) if wait > MAX_RETRY_AFTER => format!(
                    "E2B is rate-limiting requests while {what} and asked to wait {} s ({message}); try again later.",
                    wait.as_secs()
                ),
                _ => format!(
                    "E2B kept answering 429 Too Many Requests while {what}, even after retrying ({message}); wait a \
                     little and try again."
                ),
            }),
        },
        Failure::Status { status, message, sandbox_missing: true, .. } => Error::Remote {
            status: Some(status),
            message: scrub(format!(
                "The E2B sandbox no longer exists ({message}) while {what}; it most likely reached its timeout or \
                 was killed. Connect again to get a new sandbox."
            )),
        },
        Failure::Status { status, message, .. } => Error::Remote {
            status: Some(status),
            message: scrub(format!("E2B answered HTTP {status} while {what}: {message}.")),
        },
        Failure::Transport { message, .. } => Error::Remote {
            status: None,
            message: scrub(format!("Could not reach E2B while {what}: {message}.")),
        },
        Failure::Timeout(limit) => Error::Timeout(format!(
            "E2B did not answer within {} s while {what}; the sandbox may be overloaded or unreachable.",
            limit.as_secs()
        )),
    }
}

/// Reads a JSON answer, tolerating unknown fields.
pub async fn json_body<T: DeserializeOwned>(response: Response, what: &str) -> Result<T, Error> {
    let bytes = response.bytes().await.map_err(|error| Error::Remote {
        status: None,
        message: format!("The answer from E2B broke off while {what}: {error}."),
    })?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Remote {
        status: None,
        message: format!("E2B answered something sandlink does not understand while {what}: {error}."),
    })
}

/// The control-plane API (`https://api.{domain}`), authenticated with the API key.
pub struct Api {
    pub http: reqwest::Client,
    pub base_url: String,
    pub api_key: Secret,
    pub gone: Arc<GoneFlag>,
}

impl Api {
    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header("X-API-Key", self.api_key.expose())
            .timeout(UNARY_TIMEOUT)
    }

    /// Sends a control-plane call with a JSON body (or none) and answers the raw response.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        plane: Plane,
        what: &str,
    ) -> Result<Response, Error> {
        self.call_keyed(method, path, body, plane, what, None).await
    }

    /// Like `call`, with an `Idempotency-Key` so a retried create after a lost answer makes no second sandbox.
    pub async fn call_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        plane: Plane,
        what: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Response, Error> {
        let outcome = send_with_retry(plane, None, || {
            let mut request = self.request(method.clone(), path);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await;
        outcome.map_err(|failure| {
            if failure.sandbox_missing() {
                self.gone.set("E2B reports that the sandbox no longer exists.");
            }
            describe_failure(failure, what, &[&self.api_key])
        })
    }
}

/// envd inside one sandbox, reached through E2B's edge proxy.
pub struct Envd {
    pub http: reqwest::Client,
    /// `https://49983-{id}.{domain}`, or `http://{ip:port}` for the header-routing form.
    pub base_url: String,
    pub sandbox_id: String,
    /// Whether to route with `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers (the proxy does so for IP and localhost hosts).
    pub header_routing: bool,
    pub access_token: Option<Secret>,
    pub gone: Arc<GoneFlag>,
}

/// The sandbox user's Basic credentials: user name "user" and an empty password, as the SDK sends them.
const SANDBOX_USER_BASIC_AUTH: &str = "Basic dXNlcjo=";
pub const SANDBOX_USER: &str = "user";

impl Envd {
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header(reqwest::header::AUTHORIZATION, SANDBOX_USER_BASIC_AUTH);
        if self.header_routing {
            request = request.header("E2b-Sandbox-Id", &self.sandbox_id).header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        }
        if let Some(token) = &self.access_token {
            request = request.header("X-Access-Token", token.expose());
        }
        request
    }

    /// Turns a failure into an `Error`, remembering when it shows the sandbox is gone.
    pub fn fail(&self, failure: Failure, what: &str) -> Error {
        if failure.sandbox_missing() {
            self.gone.set("E2B's proxy answered that the sandbox was not found.");
        }
        let secrets: Vec<&Secret> = self.access_token.iter().collect();
        describe_failure(failure, what, &secrets)
    }

    /// A unary Connect call (`POST /{service}/{method}` with a bare JSON body).
    pub async fn unary(&self, rpc: &str, message: &Value, what: &str) -> Result<Value, Error> {
        self.unary_within(rpc, message, what, UNARY_TIMEOUT).await
    }

    /// A unary Connect call that gives up after `limit` (signals must not wait a minute on a dead sandbox).
    pub async fn unary_within(&self, rpc: &str, message: &Value, what: &str, limit: Duration) -> Result<Value, Error> {
        let path = format!("/{rpc}");
        let response = send_with_retry(Plane::Envd, Some(limit), || {
            self.request(reqwest::Method::POST, &path)
                .header("Connect-Protocol-Version", "1")
                .timeout(limit)
                .json(message)
        })
        .await
        .map_err(|failure| self.fail(failure, what))?;
        json_body(response, what).await
    }

    /// `GET /health` within `limit`: tells a dead or unreachable sandbox from a dropped stream.
    pub async fn health(&self, limit: Duration) -> Health {
        let probe = self.request(reqwest::Method::GET, "/health").timeout(limit).send();
        match tokio::time::timeout(limit, probe).await {
            Err(_) => Health::Unresponsive,
            Ok(Err(_)) => Health::Unresponsive,
            Ok(Ok(response)) if response.status().is_success() => Health::Healthy,
            Ok(Ok(response)) => {
                let failure = Failure::from_response(response, Plane::Envd).await;
                if failure.sandbox_missing() {
                    Health::Gone(self.fail(failure, "checking the sandbox's health"))
                } else {
                    // Any other answer still proves something is listening; re-attaching will tell more.
                    Health::Healthy
                }
            }
        }
    }
}

/// What a health probe found.
pub enum Health {
    Healthy,
    Unresponsive,
    Gone(Error),
}

/// True when a Connect error code (from an end-of-stream frame or a unary error) says the process is unknown.
pub fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Remote { status: Some(404), .. })
}
