//! Vercel's side of the HTTP layer: credentials (an access token with team and project, or an OIDC token whose
//! claims carry them), the `teamId` every request carries, the error shape, and the paths of each API generation.
//!
//! Retries, deadlines, failure mapping and scrubbing come from `drivers::http`. Vercel answers errors as
//! `{"error":{"code","message"}}`; `410` means the session (or sandbox) has stopped, `422` that it is stopping or
//! snapshotting (worth waiting for), `429` carries `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::settings::Generation;
use crate::drivers::http::{self, ErrorReading, ErrorShape, Failure, GoneFlag, RetryPolicy, Wording};
use crate::drivers::{ConnectRequest, CredentialSpec};
use crate::error::{Error, Result};

pub use crate::credentials::Secret;

/// How long one plain call may take. Streams (logs, waits) have no overall deadline; their reads are bounded.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub static WORDING: Wording = Wording {
    provider: "Vercel",
    credentials_hint: "Check the access token in VERCEL_TOKEN (with VERCEL_TEAM_ID and VERCEL_PROJECT_ID) or the \
                       OIDC token in VERCEL_OIDC_TOKEN, or the ones stored with sandlink/setCredential.",
};

/// The credential keys, each with the environment variable the official SDK and CLI read.
pub const TOKEN_CREDENTIAL: &str = "token";
pub const TEAM_CREDENTIAL: &str = "teamId";
pub const PROJECT_CREDENTIAL: &str = "projectId";
pub const OIDC_CREDENTIAL: &str = "oidcToken";
pub const CREDENTIALS: &[CredentialSpec] = &[
    CredentialSpec { key: TOKEN_CREDENTIAL, env_var: "VERCEL_TOKEN", required: false, description: "Vercel access token" },
    CredentialSpec { key: TEAM_CREDENTIAL, env_var: "VERCEL_TEAM_ID", required: false, description: "Vercel team id (team_…)" },
    CredentialSpec { key: PROJECT_CREDENTIAL, env_var: "VERCEL_PROJECT_ID", required: false, description: "Vercel project id (prj_…)" },
    CredentialSpec {
        key: OIDC_CREDENTIAL,
        env_var: "VERCEL_OIDC_TOKEN",
        required: false,
        description: "Vercel OIDC token (its claims name the team and project)",
    },
];

/// Who sandlink is to Vercel: the bearer token, and the team and project every request is about.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: Secret,
    pub team_id: String,
    pub project_id: String,
}

/// The team and project a JWT's payload names (`owner_id`, `project_id`), read without verifying the signature:
/// Vercel verifies it, sandlink only needs to know which team to name. `None` for anything that is not such a JWT.
pub fn oidc_claims(token: &str) -> Option<(String, String)> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let owner = claims.get("owner_id")?.as_str()?.to_string();
    let project = claims.get("project_id").and_then(Value::as_str).unwrap_or_default().to_string();
    Some((owner, project))
}

/// Reads the credentials as the SDK does: a token with `teamId` and `projectId` (all three, or none of them), else
/// `VERCEL_OIDC_TOKEN`, whose claims carry team and project. A token that is itself such a JWT names its own team.
pub fn credentials(request: &ConnectRequest) -> Result<Credentials> {
    let value = |key: &str| -> Option<String> {
        let spec = CREDENTIALS.iter().find(|spec| spec.key == key)?;
        request
            .credentials
            .get(key)
            .map(|secret| secret.expose().trim().to_string())
            .or_else(|| std::env::var(spec.env_var).ok().map(|value| value.trim().to_string()))
            .filter(|value| !value.is_empty())
    };
    let (token, team, project) = (value(TOKEN_CREDENTIAL), value(TEAM_CREDENTIAL), value(PROJECT_CREDENTIAL));
    if let Some(token) = token {
        let claims = oidc_claims(&token);
        let team = team.or_else(|| claims.as_ref().map(|(team, _)| team.clone()));
        let project = project.or_else(|| claims.as_ref().map(|(_, project)| project.clone()).filter(|project| !project.is_empty()));
        return match (team, project) {
            (Some(team_id), Some(project_id)) => Ok(Credentials { token: Secret::new(token), team_id, project_id }),
            (team, _) => Err(Error::CredentialsMissing(format!(
                "The vercel driver has an access token but not its {}: set {} for sandlink, or store it with \
                 sandlink/setCredential.",
                if team.is_none() { "team id" } else { "project id" },
                if team.is_none() { "VERCEL_TEAM_ID" } else { "VERCEL_PROJECT_ID" },
            ))),
        };
    }
    if let Some(oidc) = value(OIDC_CREDENTIAL) {
        let Some((team_id, claimed_project)) = oidc_claims(&oidc) else {
            return Err(Error::CredentialsMissing(
                "VERCEL_OIDC_TOKEN is not a Vercel OIDC token (a JWT whose claims carry owner_id and project_id); \
                 pull a fresh one with `vercel env pull`, or use an access token with VERCEL_TEAM_ID and \
                 VERCEL_PROJECT_ID."
                    .into(),
            ));
        };
        let project_id = project.or(Some(claimed_project).filter(|project| !project.is_empty())).ok_or_else(|| {
            Error::CredentialsMissing("The Vercel OIDC token names no project; set VERCEL_PROJECT_ID.".into())
        })?;
        return Ok(Credentials { token: Secret::new(oidc), team_id, project_id });
    }
    Err(Error::CredentialsMissing(
        "The vercel driver needs credentials: an access token in VERCEL_TOKEN with VERCEL_TEAM_ID and \
         VERCEL_PROJECT_ID, or an OIDC token in VERCEL_OIDC_TOKEN (from `vercel env pull`); set them for sandlink or \
         store them with sandlink/setCredential."
            .into(),
    ))
}

/// Which kind of route a request went to; decides whether a `404` means the sandbox is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Creating or listing: nothing can be gone.
    Account,
    /// A sandbox or session route: `410` (stopped) and `404` (unknown) mean it is gone.
    Sandbox,
}

/// `{"error":{"code","message"}}`, also seen without the wrapper.
fn error_parts(body: &str) -> Option<(Option<String>, String)> {
    let value: Value = serde_json::from_str(body).ok()?;
    let error = value.get("error").unwrap_or(&value);
    let message = error.get("message").and_then(Value::as_str)?.to_string();
    let code = error.get("code").and_then(Value::as_str).map(str::to_string);
    Some((code, message))
}

impl ErrorShape for Route {
    fn read(&self, status: u16, body: &str) -> ErrorReading {
        let (code, message) = error_parts(body).unwrap_or((None, http::reason_phrase(status)));
        let message = match &code {
            Some(code) => format!("{message} ({code})"),
            None => message,
        };
        let gone = *self == Route::Sandbox && matches!(status, 404 | 410);
        // 422 means the session is stopping or snapshotting: the same request succeeds once that is over.
        let retryable = !gone && (http::status_is_transient(status) || status == 422);
        ErrorReading { message, gone, retryable }
    }
}

/// The SDK gives up when `Retry-After` exceeds 20 s; sandlink waits up to a minute (saying so in its log) and only
/// then reports how long Vercel asked for.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy { max_retry_after: Duration::from_secs(60), ..RetryPolicy::default() }
}

/// Vercel's sandbox API for one team and project.
pub struct Api {
    client: http::Client,
    team_id: String,
    pub project_id: String,
}

impl Api {
    pub fn new(http: reqwest::Client, base_url: &str, credentials: Credentials, gone: Arc<GoneFlag>) -> Self {
        let client = http::Client::new(http, base_url.to_string(), &WORDING, gone)
            .with_bearer_header("Authorization", "Bearer", credentials.token)
            .with_header("user-agent", concat!("sandlink/", env!("CARGO_PKG_VERSION")))
            .with_retry(retry_policy())
            .with_gone_note("Vercel reports that the sandbox's session has stopped.");
        Api { client, team_id: credentials.team_id, project_id: credentials.project_id }
    }

    pub fn gone(&self) -> &Arc<GoneFlag> {
        self.client.gone()
    }

    /// `path` with `teamId`, which every request carries.
    fn with_team(&self, path: &str) -> String {
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("{path}{separator}teamId={}", url::form_urlencoded::byte_serialize(self.team_id.as_bytes()).collect::<String>())
    }

    /// A request to `path` (team added) with the client's headers; no deadline, for streams.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, &self.with_team(path))
    }

    /// Sends what `build` makes with the retry policy; `header_limit` bounds each wait for an answer's headers.
    pub async fn send<B>(&self, route: Route, header_limit: Option<Duration>, build: B) -> Result<Response, Failure>
    where
        B: Fn() -> RequestBuilder,
    {
        self.client.send(&route, header_limit, build).await
    }

    pub fn fail(&self, failure: Failure, what: &str) -> Error {
        self.client.fail(failure, what)
    }

    /// A JSON call (or one without a body) with the call deadline.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>, route: Route, what: &str) -> Result<Response> {
        let response = self
            .send(route, None, || {
                let request = self.request(method.clone(), path).timeout(CALL_TIMEOUT);
                match body {
                    Some(body) => request.json(body),
                    None => request.header(reqwest::header::CONTENT_TYPE, "application/json"),
                }
            })
            .await;
        response.map_err(|failure| self.fail(failure, what))
    }

    /// A JSON call whose answer is read into `T`.
    pub async fn call_json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        route: Route,
        what: &str,
    ) -> Result<T> {
        let response = self.call(method, path, body, route, what).await?;
        http::json_body(response, &WORDING, what).await
    }
}

/// Where one session's routes are, for its API generation: `/v2/sandboxes/sessions/{sessionId}` or
/// `/v1/sandboxes/{sandboxId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPaths {
    pub generation: Generation,
    base: String,
}

impl SessionPaths {
    pub fn new(generation: Generation, session_or_sandbox_id: &str) -> Self {
        let base = match generation {
            Generation::V2 => format!("/v2/sandboxes/sessions/{session_or_sandbox_id}"),
            Generation::V1 => format!("/v1/sandboxes/{session_or_sandbox_id}"),
        };
        SessionPaths { generation, base }
    }

    /// The session itself (`GET`), or one of its operations (`/cmd`, `/fs/write`, `/extend-timeout`, `/stop`, …).
    pub fn at(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    pub fn command(&self, command_id: &str) -> String {
        format!("{}/cmd/{command_id}", self.base)
    }

    pub fn logs(&self, command_id: &str) -> String {
        format!("{}/cmd/{command_id}/logs", self.base)
    }

    /// v1 has no `/cmd/` segment in the kill path (the reference and the 1.x SDK agree); v2 has it.
    pub fn kill(&self, command_id: &str) -> String {
        match self.generation {
            Generation::V2 => format!("{}/cmd/{command_id}/kill", self.base),
            Generation::V1 => format!("{}/{command_id}/kill", self.base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &Value) -> String {
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        format!("{}.{}.{}", encode(br#"{"alg":"RS256"}"#), encode(payload.to_string().as_bytes()), encode(b"signature"))
    }

    #[test]
    fn oidc_claims_should_read_team_and_project_without_verifying() {
        let token = jwt(&serde_json::json!({"owner_id": "team_abc", "project_id": "prj_xyz", "exp": 1}));
        assert_eq!(oidc_claims(&token), Some(("team_abc".into(), "prj_xyz".into())));
        assert_eq!(oidc_claims("vercel_plain_token"), None);
        assert_eq!(oidc_claims(&jwt(&serde_json::json!({"sub": "x"}))), None);
    }

    #[test]
    fn kill_paths_should_follow_each_generation() {
        assert_eq!(SessionPaths::new(Generation::V2, "sess_1").kill("cmd_2"), "/v2/sandboxes/sessions/sess_1/cmd/cmd_2/kill");
        assert_eq!(SessionPaths::new(Generation::V1, "sbx_1").kill("cmd_2"), "/v1/sandboxes/sbx_1/cmd_2/kill");
        assert_eq!(SessionPaths::new(Generation::V1, "sbx_1").logs("cmd_2"), "/v1/sandboxes/sbx_1/cmd/cmd_2/logs");
    }

    #[test]
    fn error_answers_should_say_gone_on_410_and_retry_422() {
        let stopped = Route::Sandbox.read(410, r#"{"error":{"code":"sandbox_stopped","message":"Sandbox has stopped"}}"#);
        assert!(stopped.gone && !stopped.retryable);
        assert_eq!(stopped.message, "Sandbox has stopped (sandbox_stopped)");
        assert!(Route::Sandbox.read(422, r#"{"error":{"code":"sandbox_snapshotting","message":"busy"}}"#).retryable);
        assert!(!Route::Account.read(404, "").gone);
    }
}
