//! Daytona's side of the HTTP layer: the main API and the toolbox, their error shapes, headers and credentials.
//!
//! Retries, deadlines, failure mapping and scrubbing come from `drivers::http`; this file says what is Daytona's own:
//! the NestJS error body of the main API and the toolbox's own, which answers mean the sandbox is gone, and the
//! headers the official SDK sends (`Authorization: Bearer`, `X-Daytona-Source`, `X-Daytona-SDK-Version`, and
//! `X-Daytona-Organization-ID` with a JWT). The SDK version matters: without one of at least 0.167.0 the toolbox
//! answers combined output with no stdout/stderr markers.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::drivers::http::{self, ErrorReading, ErrorShape, GoneFlag, IdempotencyKey, Wording};
use crate::error::Error;

pub use crate::credentials::Secret;
pub use crate::drivers::http::Failure;

/// How long one unary call may take before it counts as failed.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(60);
/// The SDK version sandlink speaks as: the toolbox splits stdout from stderr (the `01 01 01` / `02 02 02` markers)
/// only for clients that say they are at least 0.167.0; this is the release whose wire format the driver follows.
pub const SDK_VERSION: &str = "0.226.1";
/// What `X-Daytona-Source` says; Daytona's dashboards group requests by it.
pub const SOURCE: &str = "sandlink";

/// How Daytona's failures read to a user.
pub static WORDING: Wording = Wording {
    provider: "Daytona",
    credentials_hint: "Check the key in DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN with DAYTONA_ORGANIZATION_ID), or the \
                       one stored with sandlink/setCredential.",
};

/// The credentials the SDK accepts: an API key, or a JWT that also needs the organisation's id.
#[derive(Clone)]
pub enum Credentials {
    ApiKey(Secret),
    Jwt { token: Secret, organization_id: String },
}

/// Which part of Daytona a request went to; decides how an answer's status is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The main API, on a route that is not about one existing sandbox (create, list).
    Api,
    /// The main API, on `/sandbox/{id}/…`: a 404 there means the sandbox is gone.
    ApiSandbox,
    /// The toolbox inside the sandbox, behind Daytona's proxy: a 404 there is about a session or a file.
    Toolbox,
}

impl ErrorShape for Plane {
    /// The main API answers NestJS bodies (`statusCode`, `error`, `message` as text or a list); the toolbox its own
    /// (`statusCode`, `message`, `code`). Both carry `message`.
    fn read(&self, status: u16, body: &str) -> ErrorReading {
        let message = error_message_from_body(body).unwrap_or_else(|| http::reason_phrase(status));
        let gone = match self {
            Plane::ApiSandbox => status == 404,
            Plane::Api | Plane::Toolbox => false,
        };
        ErrorReading { message, gone, retryable: !gone && http::status_is_transient(status) }
    }
}

fn error_message_from_body(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let message = match value.get("message")? {
        Value::String(text) => text.clone(),
        // NestJS validation errors list one sentence per field.
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
        other => other.to_string(),
    };
    Some(message)
}

/// Reads a JSON answer from Daytona, tolerating unknown fields.
pub async fn json_body<T: DeserializeOwned>(response: Response, what: &str) -> Result<T, Error> {
    http::json_body(response, &WORDING, what).await
}

/// One Daytona HTTP API (the main API or one sandbox's toolbox) with the SDK's headers.
pub struct Api {
    client: http::Client,
    plane: Plane,
    base_url: String,
}

impl Api {
    /// The main API at `base_url` (`https://app.daytona.io/api` by default).
    pub fn main(http: reqwest::Client, base_url: String, credentials: &Credentials, gone: Arc<GoneFlag>) -> Self {
        Api::with_headers(http, base_url, credentials, gone, Plane::ApiSandbox)
    }

    /// One sandbox's toolbox at `{toolboxProxyUrl}/{sandboxId}`, as the SDK forms it.
    pub fn toolbox(http: reqwest::Client, base_url: String, credentials: &Credentials, gone: Arc<GoneFlag>) -> Self {
        Api::with_headers(http, base_url, credentials, gone, Plane::Toolbox)
    }

    fn with_headers(http: reqwest::Client, base_url: String, credentials: &Credentials, gone: Arc<GoneFlag>, plane: Plane) -> Self {
        let mut client = http::Client::new(http, base_url.clone(), &WORDING, gone)
            .with_header("X-Daytona-Source", SOURCE)
            .with_header("X-Daytona-SDK-Version", SDK_VERSION)
            .with_deadline(UNARY_TIMEOUT)
            .with_gone_note("Daytona reports that the sandbox no longer exists.");
        match credentials {
            Credentials::ApiKey(key) => {
                client = client
                    .with_secret_header("Authorization", Secret::new(format!("Bearer {}", key.expose())))
                    .with_scrubbed(key.clone());
            }
            Credentials::Jwt { token, organization_id } => {
                client = client
                    .with_secret_header("Authorization", Secret::new(format!("Bearer {}", token.expose())))
                    .with_scrubbed(token.clone())
                    .with_header("X-Daytona-Organization-ID", organization_id.clone());
            }
        }
        Api { client, plane, base_url }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn gone(&self) -> &Arc<GoneFlag> {
        self.client.gone()
    }

    /// A request with the client's headers and deadline.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, path)
    }

    /// The headers a WebSocket upgrade to this API carries (the same authentication as every request).
    pub fn upgrade_headers(&self) -> Vec<(String, String)> {
        let probe = self.request(reqwest::Method::GET, "/").build();
        match probe {
            Ok(request) => request
                .headers()
                .iter()
                .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Sends what `build` makes (start it from `request`) with retries; `header_limit` bounds each wait.
    pub async fn send<B>(&self, header_limit: Option<Duration>, build: B) -> Result<Response, Failure>
    where
        B: Fn() -> RequestBuilder,
    {
        self.client.send(&self.plane, header_limit, build).await
    }

    /// Turns a failure into an `Error`, remembering when it shows the sandbox is gone.
    pub fn fail(&self, failure: Failure, what: &str) -> Error {
        self.client.fail(failure, what)
    }

    /// Sends a call with a JSON body (or none) and answers the raw response.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>, what: &str) -> Result<Response, Error> {
        self.call_within(method, path, body, what, UNARY_TIMEOUT).await
    }

    /// Like `call`, giving up on each attempt after `limit` (a probe must not wait a minute on a hung toolbox).
    pub async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        limit: Duration,
    ) -> Result<Response, Error> {
        self.send(Some(limit), || {
            let request = self.request(method.clone(), path).timeout(limit);
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await
        .map_err(|failure| self.fail(failure, what))
    }

    /// A create on the main API (not about an existing sandbox, so a 404 is no gone sandbox), with a key that
    /// makes a retried create after a lost answer find the first sandbox instead of making a second.
    pub async fn create(&self, path: &str, body: &Value, what: &str, key: &IdempotencyKey) -> Result<Response, Error> {
        self.client.call_keyed(reqwest::Method::POST, path, Some(body), &Plane::Api, what, Some(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_and_toolbox_bodies_should_give_their_message() {
        let nest = r#"{"path":"/api/sandbox/x","timestamp":"t","statusCode":404,"error":"Not Found","message":"Sandbox with ID x not found"}"#;
        let reading = Plane::ApiSandbox.read(404, nest);
        assert_eq!(reading.message, "Sandbox with ID x not found");
        assert!(reading.gone && !reading.retryable);
        let toolbox = r#"{"statusCode":404,"message":"session not found","code":"Not Found"}"#;
        let reading = Plane::Toolbox.read(404, toolbox);
        assert!(!reading.gone, "a toolbox 404 is about a session or file, not the sandbox");
        let listed = Plane::Api.read(400, r#"{"statusCode":400,"message":["cpu must be a number","memory too big"]}"#);
        assert_eq!(listed.message, "cpu must be a number; memory too big");
        assert!(Plane::Api.read(429, "").retryable);
        assert_eq!(Plane::Api.read(503, "<html>").message, "Service Unavailable");
    }
}
