//! E2B's side of the HTTP layer: its control-plane API and envd, their error shapes, and envd's unary calls.
//!
//! Retries, deadlines, failure mapping and scrubbing come from `drivers::http`; this file says what is E2B's own:
//! the three JSON error shapes (control API, envd, the edge proxy), which answers mean the sandbox is gone, which
//! Connect codes are worth retrying, and how envd is addressed and authenticated.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::drivers::http::{self, ErrorReading, ErrorShape, GoneFlag, IdempotencyKey, Wording};
use crate::error::Error;

pub use crate::credentials::Secret;
pub use crate::drivers::http::Failure;

/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// How long one unary call (control plane or envd) may take before it counts as failed.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

/// How E2B's failures read to a user.
pub static WORDING: Wording = Wording {
    provider: "E2B",
    credentials_hint: "Check the API key in E2B_API_KEY or the one stored in the keychain with Set Credential.",
};

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

impl ErrorShape for Plane {
    /// E2B's control API, envd and its edge proxy each have their own JSON shape; all carry a `message`.
    fn read(&self, status: u16, body: &str) -> ErrorReading {
        let rpc_code = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|value| value.get("code").and_then(Value::as_str).map(str::to_string));
        let message = error_message_from_body(body).unwrap_or_else(|| http::reason_phrase(status));
        let lowered = message.to_ascii_lowercase();
        let gone = match self {
            // The edge proxy answers 502 "The sandbox was not found" for a sandbox that no longer exists.
            Plane::Envd => status == 502 && lowered.contains("not found"),
            Plane::ControlSandbox => status == 404,
            Plane::Control => false,
        };
        let retryable = match rpc_code {
            // An RPC handler's own error (a string code such as "not_found") is an answer, not a hiccup.
            Some(code) => code == "unavailable" || code == "resource_exhausted",
            None => !gone && http::status_is_transient(status),
        };
        ErrorReading { message, gone, retryable }
    }
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

/// Reads a JSON answer from E2B, tolerating unknown fields.
pub async fn json_body<T: DeserializeOwned>(response: Response, what: &str) -> Result<T, Error> {
    http::json_body(response, &WORDING, what).await
}

/// The control-plane API (`https://api.{domain}`), authenticated with the API key.
pub struct Api {
    client: http::Client,
}

impl Api {
    pub fn new(http: reqwest::Client, base_url: String, api_key: Secret, gone: Arc<GoneFlag>) -> Self {
        let client = http::Client::new(http, base_url, &WORDING, gone)
            .with_secret_header("X-API-Key", api_key)
            .with_deadline(UNARY_TIMEOUT)
            .with_gone_note("E2B reports that the sandbox no longer exists.");
        Api { client }
    }

    pub fn gone(&self) -> &Arc<GoneFlag> {
        self.client.gone()
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
        self.client.call(method, path, body, &plane, what).await
    }

    /// Like `call`, with an `Idempotency-Key` so a retried create after a lost answer makes no second sandbox.
    pub async fn create(&self, path: &str, body: &Value, what: &str, key: &IdempotencyKey) -> Result<Response, Error> {
        self.client.call_keyed(reqwest::Method::POST, path, Some(body), &Plane::Control, what, Some(key)).await
    }
}

/// The sandbox user's Basic credentials: user name "user" and an empty password, as the SDK sends them.
const SANDBOX_USER_BASIC_AUTH: &str = "Basic dXNlcjo=";
pub const SANDBOX_USER: &str = "user";

/// envd inside one sandbox, reached through E2B's edge proxy.
pub struct Envd {
    client: http::Client,
}

impl Envd {
    /// `base_url` is `https://49983-{id}.{domain}`, or `http://{ip:port}` with `header_routing`, where the proxy
    /// routes by `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers (it does so for IP and localhost hosts).
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        sandbox_id: &str,
        header_routing: bool,
        access_token: Option<Secret>,
        gone: Arc<GoneFlag>,
    ) -> Self {
        let mut client = http::Client::new(http, base_url, &WORDING, gone)
            .with_header("Authorization", SANDBOX_USER_BASIC_AUTH)
            .with_gone_note("E2B's proxy answered that the sandbox was not found.");
        if header_routing {
            client = client.with_header("E2b-Sandbox-Id", sandbox_id).with_header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        }
        if let Some(token) = access_token {
            client = client.with_secret_header("X-Access-Token", token);
        }
        Envd { client }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, path)
    }

    /// Sends what `build` makes, retrying as the HTTP layer does; `header_limit` bounds each wait for an answer.
    pub async fn send<B>(&self, header_limit: Option<Duration>, build: B) -> Result<Response, Failure>
    where
        B: Fn() -> RequestBuilder,
    {
        self.client.send(&Plane::Envd, header_limit, build).await
    }

    /// Reads an error answer from envd or its proxy.
    pub async fn failure(response: Response) -> Failure {
        Failure::from_response(response, &Plane::Envd).await
    }

    /// Turns a failure into an `Error`, remembering when it shows the sandbox is gone.
    pub fn fail(&self, failure: Failure, what: &str) -> Error {
        self.client.fail(failure, what)
    }

    /// A unary Connect call (`POST /{service}/{method}` with a bare JSON body).
    pub async fn unary(&self, rpc: &str, message: &Value, what: &str) -> Result<Value, Error> {
        self.unary_within(rpc, message, what, UNARY_TIMEOUT).await
    }

    /// A unary Connect call that gives up after `limit` (signals must not wait a minute on a dead sandbox).
    pub async fn unary_within(&self, rpc: &str, message: &Value, what: &str, limit: Duration) -> Result<Value, Error> {
        let path = format!("/{rpc}");
        let response = self
            .send(Some(limit), || {
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
                let failure = Envd::failure(response).await;
                if failure.gone() {
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
