//! The `e2b` driver: E2B cloud sandboxes through E2B's control API and envd, the daemon inside each sandbox.
//!
//! The control plane (`https://api.{domain}`, `X-API-Key`) creates, resumes, extends, snapshots, pauses and kills
//! sandboxes; envd (port 49983, reached through E2B's edge proxy) runs processes over Connect streams and moves
//! files. The wire contract is in /work/shared/specs/e2b and cloud-apis.md section 1; reqwest types stay in here.

pub mod client;
pub mod envd;
pub mod files;
mod recovery;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use self::client::{json_body, Api, Envd, Plane, Secret};
use self::envd::StreamTuning;
use self::settings::{routes_by_header, Settings, DEFAULT_DOMAIN};
use super::http::lease::{rfc3339, LeaseBook};
use super::http::{GoneFlag, IdempotencyKey};
use super::{
    ConnectRequest, CredentialSpec, ExecSpec, Lease, Process, ReattachRequest, Sandbox, SandboxStatus, SettingSpec,
};
use crate::error::{Error, Result};
use crate::protocol::{DriverCapabilities, DriverInfo, Resources};
use crate::sync::RemoteFiles;

/// The environment variable holding the API key when no stored credential is given.
pub const API_KEY_VARIABLE: &str = "E2B_API_KEY";
/// Metadata key that ties a sandbox to the sandlink session that created it.
const SESSION_METADATA_KEY: &str = "sandlinkSession";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session's record keeps for a re-attach after a restart (`driverState`): the sandbox, never the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub sandbox_id: String,
}

/// The e2b driver; holds nothing until a session connects.
#[derive(Default)]
pub struct Driver;

impl Driver {
    pub fn new() -> Self {
        Driver
    }
}

/// The credential key of the API key in profiles and the keychain.
const API_KEY_CREDENTIAL: &str = "apiKey";
const CREDENTIALS: &[CredentialSpec] =
    &[CredentialSpec { key: API_KEY_CREDENTIAL, env_var: API_KEY_VARIABLE, required: true, description: "E2B API key" }];

/// The API key: the engine resolves it from the profile's keychain entry or `E2B_API_KEY`.
fn api_key(request: &ConnectRequest) -> Result<Secret> {
    if let Some(key) = request.credentials.get(API_KEY_CREDENTIAL).filter(|key| !key.expose().trim().is_empty()) {
        return Ok(Secret::new(key.expose().trim()));
    }
    // Callers that build requests themselves (tests, tools) may leave credentials empty; the variable still works.
    match std::env::var(API_KEY_VARIABLE) {
        Ok(key) if !key.trim().is_empty() => Ok(Secret::new(key.trim())),
        _ => Err(Error::CredentialsMissing(format!(
            "The e2b driver needs an E2B API key: set the {API_KEY_VARIABLE} environment variable for sandlink, or \
             connect with a profile and store the key with your editor's \"Sandlink: Set Credential\" command or \
             `sandlink profile set-credential PROFILE apiKey`."
        ))),
    }
}

/// E2B's `Sandbox` answer to create and connect; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxAnswer {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(default)]
    envd_access_token: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    /// Which envd the sandbox runs; decides whether uploads may go gzip-compressed.
    #[serde(default)]
    envd_version: Option<String>,
}

/// The parts of `SandboxDetail` the driver reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxDetail {
    #[serde(default)]
    end_at: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metric {
    #[serde(default)]
    cpu_used_pct: Option<f64>,
    #[serde(default)]
    mem_used: Option<u64>,
}

fn http_client(tuning: &StreamTuning) -> Result<reqwest::Client> {
    // A read that waits longer than a few keepalive intervals means a dead connection.
    let read_timeout = (tuning.idle + tuning.probe).max(Duration::from_secs(60));
    super::http::connection_pool(&client::WORDING, CONNECT_TIMEOUT, read_timeout)
}

impl Driver {
    async fn open(&self, request: ConnectRequest, template: Option<String>) -> Result<Arc<E2bSandbox>> {
        self.open_with(request, template, None).await
    }

    /// Creates a sandbox, or with `existing` (or the `sandboxId` setting) connects to that one, resuming it.
    async fn open_with(
        &self,
        request: ConnectRequest,
        template: Option<String>,
        existing: Option<(String, String)>,
    ) -> Result<Arc<E2bSandbox>> {
        let mut settings = Settings::parse(&request.settings)?;
        let replace_network = existing.is_some() || settings.network_given;
        let api_key = api_key(&request)?;
        if let Some((sandbox_id, remote_root)) = existing {
            settings.sandbox_id = Some(sandbox_id);
            settings.remote_root = remote_root;
        }
        // Checked before anything is created, so an unsupported policy leaves no sandbox behind.
        let network_fields = settings.network_create_fields()?;
        let tuning = StreamTuning::from_keepalive_seconds(settings.stream_keepalive_seconds);
        let http = http_client(&tuning)?;
        let gone = Arc::new(GoneFlag::default());
        let api = Arc::new(Api::new(http.clone(), settings.api_url.clone(), api_key, gone.clone()));
        let (answer, created) = match (&settings.sandbox_id, template) {
            (Some(sandbox_id), None) => {
                let path = format!("/sandboxes/{sandbox_id}/connect");
                let body = json!({ "timeout": settings.timeout_seconds });
                let response = api
                    .call(reqwest::Method::POST, &path, Some(&body), Plane::ControlSandbox, "connecting to the sandbox")
                    .await?;
                let answer = json_body::<SandboxAnswer>(response, "connecting to the sandbox").await?;
                // A sandbox made earlier (a kept session, or one the user names) has the egress rules it was given
                // then; set the session's own so a changed policy never quietly keeps the old network.
                if replace_network {
                    let body = settings.network_update_body()?;
                    api.call(
                        reqwest::Method::PUT,
                        &format!("/sandboxes/{sandbox_id}/network"),
                        Some(&body),
                        Plane::ControlSandbox,
                        "setting the sandbox's network policy",
                    )
                    .await?;
                }
                (answer, false)
            }
            (_, template) => {
                let mut metadata: Map<String, Value> =
                    settings.metadata.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect();
                metadata.insert(SESSION_METADATA_KEY.into(), Value::String(request.session_id.clone()));
                let mut body = json!({
                    "templateID": template.unwrap_or_else(|| settings.template.clone()),
                    "timeout": settings.timeout_seconds,
                    "metadata": metadata,
                    "envVars": settings.envs,
                    "secure": true,
                    "autoPause": false,
                });
                if let Some(object) = body.as_object_mut() {
                    object.extend(network_fields);
                }
                let idempotency_key = IdempotencyKey::for_logical_create(&request.session_id);
                let response = api.create("/sandboxes", &body, "creating the sandbox", &idempotency_key).await?;
                (json_body::<SandboxAnswer>(response, "creating the sandbox").await?, true)
            }
        };
        let domain = settings
            .domain
            .clone()
            .or(answer.domain.clone())
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
        let header_routing = routes_by_header(&domain);
        let (base_url, preview_scheme) = if header_routing {
            (format!("http://{domain}"), "http")
        } else {
            (format!("https://{}-{}.{domain}", client::ENVD_PORT, answer.sandbox_id), "https")
        };
        let envd = Arc::new(Envd::new(
            http,
            base_url,
            &answer.sandbox_id,
            header_routing,
            answer.envd_access_token.clone().map(Secret::new),
            gone.clone(),
        ));
        let sandbox = E2bSandbox {
            api,
            envd: envd.clone(),
            sandbox_id: answer.sandbox_id,
            domain,
            preview_scheme,
            remote_root: settings.remote_root.clone(),
            tuning,
            lease: LeaseBook::starting_now(settings.timeout_seconds, Duration::from_secs(settings.keepalive_idle_seconds)),
            gone,
            files: Arc::new(
                files::Files::new(envd.clone(), tuning, settings.remote_root.clone())
                    .compressing(files::envd_takes_gzip(answer.envd_version.as_deref())),
            ),
        };
        if let Err(error) = sandbox.prepare_remote_root().await {
            if created {
                let _ = sandbox.disconnect(false).await;
            }
            return Err(error);
        }
        tracing::info!(sandbox_id = %sandbox.sandbox_id, "connected an E2B sandbox");
        Ok(Arc::new(sandbox))
    }
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "e2b"
    }

    async fn info(&self) -> DriverInfo {
        let key_present = std::env::var(API_KEY_VARIABLE).is_ok_and(|key| !key.trim().is_empty());
        let detail = if key_present {
            "E2B cloud sandboxes; the API key comes from E2B_API_KEY".to_string()
        } else {
            "E2B cloud sandboxes; needs an API key in E2B_API_KEY or stored in the keychain with Set Credential".to_string()
        };
        DriverInfo {
            id: self.id().into(),
            // Reachability is only known when connecting; a missing key is reported then, as credentialsMissing.
            available: true,
            detail: Some(detail),
            capabilities: DriverCapabilities {
                exec: true,
                stdin: true,
                cancel: true,
                upload: true,
                download: true,
                preview: true,
                extend: true,
                snapshot: true,
                metrics: true,
                detect_ports: true,
                terminal: true,
            },
            // `drivers::describe` fills these from the driver's declarations.
            settings: Vec::new(),
            credentials: Vec::new(),
        }
    }

    fn settings_schema(&self) -> &'static [SettingSpec] {
        settings::SETTINGS
    }

    fn validate_settings(&self, settings: &Map<String, Value>) -> Result<()> {
        Settings::parse(settings).map(|_| ())
    }

    fn credential_keys(&self) -> &'static [CredentialSpec] {
        CREDENTIALS
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        Ok(self.open(request, None).await?)
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let Some(State { sandbox_id }) = request.recorded_state::<State>("e2b")? else { return Ok(false) };
        let settings = Settings::parse(&request.connect.settings)?;
        let api = Api::new(
            http_client(&StreamTuning::from_keepalive_seconds(settings.stream_keepalive_seconds))?,
            settings.api_url,
            api_key(&request.connect)?,
            Arc::default(),
        );
        let outcome = api
            .call(reqwest::Method::GET, &format!("/sandboxes/{sandbox_id}"), None, Plane::ControlSandbox, "looking for the kept sandbox")
            .await;
        match outcome {
            Ok(_) => Ok(true),
            Err(_) if api.gone().get().is_some() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Connects to the kept sandbox again (`POST /sandboxes/{id}/connect`), which also resumes a paused one.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let State { sandbox_id } = request.recorded_state::<State>("e2b")?.ok_or_else(|| {
            Error::Internal("The kept e2b session's record does not name its sandbox.".into())
        })?;
        let existing = Some((sandbox_id, request.remote_root.clone()));
        Ok(self.open_with(request.connect, None, existing).await?)
    }

    async fn restore(&self, snapshot_id: String, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        if snapshot_id.trim().is_empty() {
            return Err(Error::InvalidParams("The snapshot id is empty; use the id the snapshot was given when it was taken.".into()));
        }
        // Restoring is creating a sandbox whose template is the snapshot.
        Ok(self.open(request, Some(snapshot_id)).await?)
    }
}

/// One E2B sandbox, owned by one session.
pub struct E2bSandbox {
    api: Arc<Api>,
    envd: Arc<Envd>,
    sandbox_id: String,
    domain: String,
    preview_scheme: &'static str,
    remote_root: String,
    tuning: StreamTuning,
    /// When E2B will end the sandbox, and what one extension buys.
    lease: LeaseBook,
    gone: Arc<GoneFlag>,
    /// One per sandbox, so what a listing learnt serves the downloads that follow it.
    files: Arc<files::Files>,
}

impl E2bSandbox {
    fn sandbox_path(&self, suffix: &str) -> String {
        format!("/sandboxes/{}{suffix}", self.sandbox_id)
    }

    /// Creates the remote root unless it is the sandbox user's home, which always exists.
    async fn prepare_remote_root(&self) -> Result<()> {
        if self.remote_root == "/home/user" {
            return Ok(());
        }
        let message = json!({ "path": self.remote_root });
        match self.envd.unary("filesystem.Filesystem/MakeDir", &message, "creating the remote root").await {
            Err(Error::Remote { status: Some(409), .. }) | Ok(_) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The working directory of a run: the remote root, or a path below it the engine already checked.
    fn working_directory(&self, cwd: Option<&str>) -> String {
        match cwd.map(|cwd| cwd.trim_matches('/')).filter(|cwd| !cwd.is_empty() && *cwd != ".") {
            Some(relative) => format!("{}/{relative}", self.remote_root),
            None => self.remote_root.clone(),
        }
    }
}

#[async_trait]
impl Sandbox for E2bSandbox {
    /// A look is one envd request; every 10 s is enough for a server a run starts, and little for the account.
    fn port_watch_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(10))
    }

    fn driver_id(&self) -> &'static str {
        "e2b"
    }

    fn remote_root(&self) -> String {
        self.remote_root.clone()
    }

    fn detail(&self) -> Option<String> {
        Some(format!("E2B sandbox {}", self.sandbox_id))
    }

    fn driver_state(&self) -> Value {
        super::state_value("e2b", &State { sandbox_id: self.sandbox_id.clone() })
    }

    fn supports_terminal(&self) -> bool {
        true
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        if let Some(cwd) = &spec.cwd {
            if cwd.starts_with('/') || cwd.split('/').any(|part| part == "..") {
                return Err(Error::PathOutsideWorkspace(format!(
                    "The working directory \"{cwd}\" is outside the session's remote root."
                )));
            }
        }
        let (program, arguments) = match &spec.args {
            Some(args) => (spec.command.clone(), args.clone()),
            // What the SDK does for `commands.run`: a login shell, so the template's PATH applies.
            None => ("/bin/bash".to_string(), vec!["-l".to_string(), "-c".to_string(), spec.command.clone()]),
        };
        // A run without stdin also writes its output to files in the sandbox, read from there after a dropped stream.
        // A terminal's output is the terminal's own, read live: it is never wrapped.
        let files = (!spec.stdin && spec.pty.is_none()).then(recovery::new_folder);
        let (program, arguments) = match &files {
            Some(folder) => recovery::wrap(folder, program, arguments),
            None => (program, arguments),
        };
        let config = json!({
            "cmd": program,
            "args": arguments,
            "envs": spec.env,
            "cwd": self.working_directory(spec.cwd.as_deref()),
        });
        envd::start_with(self.envd.clone(), self.tuning, config, spec.stdin, spec.pty, files).await
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(self.files.clone())
    }

    async fn preview(&self, port: u16) -> Result<String> {
        // E2B's form, what `sandbox.getHost(port)` answers: the port and sandbox id as the host's first label.
        Ok(format!("{}://{port}-{}.{}", self.preview_scheme, self.sandbox_id, self.domain))
    }

    async fn extend(&self, seconds: u64) -> Result<String> {
        if seconds == 0 {
            return Err(Error::InvalidParams("Extend by at least one second.".into()));
        }
        let body = json!({ "timeout": seconds });
        self.api
            .call(
                reqwest::Method::POST,
                &self.sandbox_path("/timeout"),
                Some(&body),
                Plane::ControlSandbox,
                "extending the sandbox's timeout",
            )
            .await?;
        // `POST /timeout` sets the end to now + timeout.
        Ok(rfc3339(self.lease.extended_by(seconds)))
    }

    async fn snapshot(&self, name: Option<String>) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct SnapshotAnswer {
            #[serde(rename = "snapshotID")]
            snapshot_id: String,
        }
        let body = match name {
            Some(name) => json!({ "name": name }),
            None => json!({}),
        };
        let response = self
            .api
            .call(reqwest::Method::POST, &self.sandbox_path("/snapshots"), Some(&body), Plane::ControlSandbox, "snapshotting the sandbox")
            .await?;
        Ok(json_body::<SnapshotAnswer>(response, "snapshotting the sandbox").await?.snapshot_id)
    }

    fn lease(&self) -> Option<Lease> {
        Some(self.lease.lease(&self.gone))
    }

    async fn status(&self) -> Result<SandboxStatus> {
        let gone_status = |message: String| SandboxStatus {
            failure: Some(format!(
                "The E2B sandbox {} is gone ({message}); it most likely reached its timeout. Connect again to get a \
                 new sandbox.",
                self.sandbox_id
            )),
            expired: true,
            ..SandboxStatus::default()
        };
        if let Some(message) = self.gone.get() {
            return Ok(gone_status(message));
        }
        let response = match self
            .api
            .call(reqwest::Method::GET, &self.sandbox_path(""), None, Plane::ControlSandbox, "reading the sandbox's state")
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return match self.gone.get() {
                    Some(message) => Ok(gone_status(message)),
                    None => Err(error),
                }
            }
        };
        let detail: SandboxDetail = json_body(response, "reading the sandbox's state").await?;
        if let Some(end_at) = detail.end_at.as_deref() {
            self.lease.observed_end(end_at);
        }
        let resources = match self
            .api
            .call(reqwest::Method::GET, &self.sandbox_path("/metrics"), None, Plane::ControlSandbox, "reading the sandbox's metrics")
            .await
        {
            Ok(response) => json_body::<Vec<Metric>>(response, "reading the sandbox's metrics")
                .await
                .ok()
                .and_then(|metrics| metrics.into_iter().last())
                .map(|metric| Resources { cpu_percent: metric.cpu_used_pct, memory_bytes: metric.mem_used }),
            Err(_) => None,
        };
        let failure = match detail.state.as_deref() {
            Some("paused") => Some(format!("The E2B sandbox {} is paused; connect with its sandboxId to resume it.", self.sandbox_id)),
            _ => None,
        };
        Ok(SandboxStatus { resources, failure, expires_at: Some(rfc3339(self.lease.expires_at())), expired: false })
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        if self.gone.get().is_some() {
            return Ok(());
        }
        let outcome = if keep {
            // Paused with its memory, the sandbox can be resumed later by connecting with its sandboxId.
            let body = json!({ "memory": true });
            self.api
                .call(reqwest::Method::POST, &self.sandbox_path("/pause"), Some(&body), Plane::ControlSandbox, "pausing the sandbox")
                .await
        } else {
            self.api.call(reqwest::Method::DELETE, &self.sandbox_path(""), None, Plane::ControlSandbox, "killing the sandbox").await
        };
        match outcome {
            Ok(_) => Ok(()),
            // Already gone: the goal is reached.
            Err(_) if self.gone.get().is_some() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_should_read_the_records_of_earlier_builds_and_write_the_same_keys() {
        let recorded = json!({ "sandboxId": "i8x2kq0f" });
        let state: State = serde_json::from_value(recorded.clone()).expect("today's record format");
        assert_eq!(state, State { sandbox_id: "i8x2kq0f".into() });
        assert_eq!(crate::drivers::state_value("e2b", &state), recorded);
    }
}
