//! The `daytona` driver: Daytona cloud sandboxes through Daytona's main API and the toolbox daemon inside each one.
//!
//! The main API (`https://app.daytona.io/api`, `Authorization: Bearer`) creates, starts, stops, snapshots and
//! deletes sandboxes and answers preview URLs; the toolbox (`{toolboxProxyUrl}/{sandboxId}`) runs commands in
//! sessions and moves files. The wire contract is in /work/shared/specs/daytona and cloud-apis.md section 2; the
//! official Python SDK (0.226) is the record of what goes over it. reqwest and tungstenite types stay in here.

pub mod client;
pub mod files;
pub mod settings;
pub mod toolbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use self::client::{json_body, Api, Credentials, Secret};
use self::settings::Settings;
use self::toolbox::{StreamTuning, Toolbox};
use super::http::lease::{rfc3339, LeaseBook};
use super::http::{GoneFlag, IdempotencyKey};
use super::{
    ConnectRequest, CredentialSpec, ExecSpec, Lease, Process, ReattachRequest, Sandbox, SandboxStatus, SettingSpec,
};
use crate::error::{Error, Result};
use crate::protocol::{DriverCapabilities, DriverInfo, Resources};
use crate::sync::RemoteFiles;

/// The environment variables the SDK reads credentials from.
pub const API_KEY_VARIABLE: &str = "DAYTONA_API_KEY";
pub const JWT_VARIABLE: &str = "DAYTONA_JWT_TOKEN";
pub const ORGANIZATION_VARIABLE: &str = "DAYTONA_ORGANIZATION_ID";
/// The label that ties a sandbox to the sandlink session that created it.
const SESSION_LABEL: &str = "sandlink-session";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The SDK's poll interval ceiling while waiting for a state.
const POLL_INTERVAL_MAX: Duration = Duration::from_secs(1);

const API_KEY_CREDENTIAL: &str = "apiKey";
const JWT_CREDENTIAL: &str = "jwtToken";
const CREDENTIALS: &[CredentialSpec] = &[
    CredentialSpec { key: API_KEY_CREDENTIAL, env_var: API_KEY_VARIABLE, required: false, description: "Daytona API key" },
    CredentialSpec {
        key: JWT_CREDENTIAL,
        env_var: JWT_VARIABLE,
        required: false,
        description: "Daytona JWT (with DAYTONA_ORGANIZATION_ID), instead of an API key",
    },
];

/// What a session's record keeps for a re-attach after a restart (`driverState`): the sandbox, never the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub sandbox_id: String,
}

/// The daytona driver; holds nothing until a session connects.
#[derive(Default)]
pub struct Driver;

impl Driver {
    pub fn new() -> Self {
        Driver
    }
}

fn resolved(request: &ConnectRequest, key: &str, variable: &str) -> Option<Secret> {
    if let Some(secret) = request.credentials.get(key).filter(|secret| !secret.expose().trim().is_empty()) {
        return Some(Secret::new(secret.expose().trim()));
    }
    std::env::var(variable).ok().filter(|value| !value.trim().is_empty()).map(|value| Secret::new(value.trim()))
}

/// The credentials as the SDK picks them: an API key first, else a JWT with its organisation.
fn credentials(request: &ConnectRequest) -> Result<Credentials> {
    if let Some(key) = resolved(request, API_KEY_CREDENTIAL, API_KEY_VARIABLE) {
        return Ok(Credentials::ApiKey(key));
    }
    if let Some(token) = resolved(request, JWT_CREDENTIAL, JWT_VARIABLE) {
        let organization_id = std::env::var(ORGANIZATION_VARIABLE).ok().filter(|id| !id.trim().is_empty()).ok_or_else(|| {
            Error::CredentialsMissing(format!(
                "The daytona driver was given a JWT, which needs the organisation's id as well: set \
                 {ORGANIZATION_VARIABLE} for sandlink."
            ))
        })?;
        return Ok(Credentials::Jwt { token, organization_id: organization_id.trim().to_string() });
    }
    Err(Error::CredentialsMissing(format!(
        "The daytona driver needs a Daytona API key: set the {API_KEY_VARIABLE} environment variable for sandlink \
         (or {JWT_VARIABLE} with {ORGANIZATION_VARIABLE}), or store the key with sandlink/setCredential."
    )))
}

/// The parts of Daytona's `Sandbox` the driver reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxAnswer {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error_reason: Option<String>,
    #[serde(default)]
    toolbox_proxy_url: Option<String>,
    /// Allocated memory in GiB.
    #[serde(default)]
    memory: Option<f64>,
    #[serde(default)]
    auto_stop_interval: Option<f64>,
    /// When Daytona last saw activity (RFC 3339, its own clock): auto-stop comes `autoStopInterval` minutes after.
    #[serde(default)]
    last_activity_at: Option<String>,
}

impl SandboxAnswer {
    /// When Daytona will stop the sandbox unless there is activity, by Daytona's own clock.
    fn auto_stop_at(&self) -> Option<time::OffsetDateTime> {
        let last = time::OffsetDateTime::parse(self.last_activity_at.as_deref()?, &time::format_description::well_known::Rfc3339).ok()?;
        let minutes = self.auto_stop_interval.filter(|minutes| *minutes > 0.0)?;
        Some(last + Duration::from_secs_f64(minutes * 60.0))
    }
}

#[derive(Debug, Deserialize)]
struct PreviewAnswer {
    url: String,
    #[serde(default)]
    token: Option<String>,
}

fn http_client(tuning: &StreamTuning) -> Result<reqwest::Client> {
    let read_timeout = (tuning.idle + tuning.probe).max(Duration::from_secs(60));
    super::http::connection_pool(&client::WORDING, CONNECT_TIMEOUT, read_timeout)
}

/// How a sandbox in `state` reads to a user, for the states sandlink cannot work with.
fn state_problem(answer: &SandboxAnswer) -> Option<String> {
    let reason = answer.error_reason.clone().filter(|reason| !reason.is_empty());
    let with_reason = |text: String| match &reason {
        Some(reason) => format!("{text} ({reason})"),
        None => text,
    };
    match answer.state.as_deref() {
        Some("error") => Some(with_reason(format!("The Daytona sandbox {} failed to start", answer.id))),
        Some("build_failed") => Some(with_reason(format!("Building the image of the Daytona sandbox {} failed", answer.id))),
        _ => None,
    }
}

/// One main-API client plus what connecting needs.
struct Opening {
    api: Arc<Api>,
    http: reqwest::Client,
    settings: Settings,
    credentials: Credentials,
    gone: Arc<GoneFlag>,
}

impl Opening {
    fn new(request: &ConnectRequest) -> Result<Opening> {
        let settings = Settings::parse(&request.settings)?;
        let credentials = credentials(request)?;
        let tuning = StreamTuning::from_keepalive_seconds(settings.stream_keepalive_seconds);
        let http = http_client(&tuning)?;
        let gone = Arc::new(GoneFlag::default());
        let api = Arc::new(Api::main(http.clone(), settings.api_url.clone(), &credentials, gone.clone()));
        Ok(Opening { api, http, settings, credentials, gone })
    }

    async fn get(&self, sandbox_id: &str, what: &str) -> Result<SandboxAnswer> {
        let response = self.api.call(reqwest::Method::GET, &format!("/sandbox/{sandbox_id}"), None, what).await?;
        json_body(response, what).await
    }

    /// Starts the sandbox (`POST …/start`), which Daytona accepts from `stopped`, `archived` and `error`.
    async fn start(&self, sandbox_id: &str) -> Result<SandboxAnswer> {
        let path = format!("/sandbox/{sandbox_id}/start");
        let response = self.api.call(reqwest::Method::POST, &path, None, "starting the sandbox").await?;
        json_body(response, "starting the sandbox").await
    }

    /// Polls until the sandbox is `started` (backing off to one second, as the SDK does). `error` and `build_failed`
    /// end the wait with their reason; a sandbox still not started at the deadline is a timeout. With `restart`, a
    /// sandbox found stopping finishes stopping and is started once it has (start is refused while it stops).
    async fn wait_started(&self, mut answer: SandboxAnswer, mut restart: bool) -> Result<SandboxAnswer> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.settings.start_timeout_seconds);
        let mut interval = Duration::from_millis(100);
        loop {
            if let Some(problem) = state_problem(&answer) {
                return Err(Error::Remote { status: None, message: format!("{problem}.") });
            }
            match answer.state.as_deref() {
                Some("started") | None => return Ok(answer),
                Some("destroyed") | Some("destroying") => {
                    return Err(Error::Remote {
                        status: Some(404),
                        message: format!("The Daytona sandbox {} was deleted while sandlink waited for it to start.", answer.id),
                    })
                }
                Some("stopped") | Some("archived") if restart => {
                    restart = false;
                    answer = self.start(&answer.id).await?;
                    continue;
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "The Daytona sandbox {} was still {} after {} s (the startTimeoutSeconds setting).",
                    answer.id,
                    answer.state.as_deref().unwrap_or("starting"),
                    self.settings.start_timeout_seconds
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(POLL_INTERVAL_MAX);
            answer = self.get(&answer.id, "waiting for the sandbox to start").await?;
        }
    }

    async fn delete(&self, sandbox_id: &str) {
        let path = format!("/sandbox/{sandbox_id}");
        if let Err(error) = self.api.call(reqwest::Method::DELETE, &path, None, "deleting the sandbox").await {
            tracing::warn!(%error, sandbox_id, "could not delete a Daytona sandbox that failed to start");
        }
    }

    fn create_body(&self, session_id: &str, snapshot: Option<String>) -> Result<Value> {
        let settings = &self.settings;
        let mut labels: Map<String, Value> =
            settings.labels.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect();
        labels.insert(SESSION_LABEL.into(), Value::String(session_id.to_string()));
        let mut body = json!({
            "labels": labels,
            "env": settings.envs,
            "autoStopInterval": settings.auto_stop_minutes,
            "public": false,
        });
        let object = body.as_object_mut().ok_or_else(|| Error::Internal("The create body is not an object.".into()))?;
        match (snapshot.or(settings.snapshot.clone()), &settings.image) {
            (Some(snapshot), _) => {
                object.insert("snapshot".into(), Value::String(snapshot));
            }
            (None, Some(image)) => {
                object.insert("buildInfo".into(), json!({ "dockerfileContent": format!("FROM {image}\n") }));
            }
            (None, None) => {}
        }
        for (key, value) in [("cpu", settings.cpu), ("memory", settings.memory_gib), ("disk", settings.disk_gib)] {
            if let Some(value) = value {
                object.insert(key.into(), Value::from(value));
            }
        }
        if let Some(target) = &settings.target {
            object.insert("target".into(), Value::String(target.clone()));
        }
        object.extend(settings.network_create_fields()?);
        Ok(body)
    }
}

impl Driver {
    /// Creates a sandbox (from `snapshot` when restoring), or with `existing` (or the `sandboxId` setting) connects
    /// to that one, starting it when it is stopped.
    async fn open(&self, request: ConnectRequest, snapshot: Option<String>, existing: Option<(String, String)>) -> Result<Arc<DaytonaSandbox>> {
        let mut opening = Opening::new(&request)?;
        if let Some((sandbox_id, remote_root)) = existing {
            opening.settings.sandbox_id = Some(sandbox_id);
            opening.settings.remote_root = remote_root;
        }
        let (answer, created) = match (opening.settings.sandbox_id.clone(), snapshot) {
            (Some(sandbox_id), None) => {
                let mut answer = opening.get(&sandbox_id, "looking for the sandbox").await?;
                let stopping = matches!(answer.state.as_deref(), Some("stopping") | Some("archiving"));
                if matches!(answer.state.as_deref(), Some("stopped") | Some("archived") | Some("error")) {
                    answer = opening.start(&sandbox_id).await?;
                }
                (opening.wait_started(answer, stopping).await?, false)
            }
            (_, snapshot) => {
                let body = opening.create_body(&request.session_id, snapshot)?;
                let key = IdempotencyKey::for_logical_create(&request.session_id);
                let response = opening.api.create("/sandbox", &body, "creating the sandbox", &key).await?;
                let answer: SandboxAnswer = json_body(response, "creating the sandbox").await?;
                match opening.wait_started(answer.clone(), false).await {
                    Ok(started) => (started, true),
                    Err(error) => {
                        // A sandbox that never started is of no use and would cost money: it goes.
                        opening.delete(&answer.id).await;
                        return Err(error);
                    }
                }
            }
        };
        let sandbox = DaytonaSandbox::new(&opening, answer).await?;
        if let Err(error) = sandbox.prepare_remote_root().await {
            if created {
                let _ = sandbox.disconnect(false).await;
            }
            return Err(error);
        }
        tracing::info!(sandbox_id = %sandbox.sandbox_id, "connected a Daytona sandbox");
        Ok(Arc::new(sandbox))
    }
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "daytona"
    }

    async fn info(&self) -> DriverInfo {
        let key_present = [API_KEY_VARIABLE, JWT_VARIABLE].iter().any(|name| std::env::var(name).is_ok_and(|key| !key.trim().is_empty()));
        let detail = if key_present {
            "Daytona cloud sandboxes; the key comes from DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN)".to_string()
        } else {
            "Daytona cloud sandboxes; needs an API key in DAYTONA_API_KEY or stored with sandlink/setCredential".to_string()
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
                detect_ports: false,
                terminal: false,
            },
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
        Ok(self.open(request, None, None).await?)
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let Some(State { sandbox_id }) = request.recorded_state::<State>("daytona")? else { return Ok(false) };
        let opening = Opening::new(&request.connect)?;
        match opening.get(&sandbox_id, "looking for the kept sandbox").await {
            Ok(answer) => Ok(!matches!(answer.state.as_deref(), Some("destroyed") | Some("destroying"))),
            Err(_) if opening.gone.get().is_some() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Connects to the kept sandbox again, starting it when Daytona stopped it meanwhile.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let State { sandbox_id } = request
            .recorded_state::<State>("daytona")?
            .ok_or_else(|| Error::Internal("The kept daytona session's record does not name its sandbox.".into()))?;
        let existing = Some((sandbox_id, request.remote_root.clone()));
        Ok(self.open(request.connect, None, existing).await?)
    }

    async fn restore(&self, snapshot_id: String, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        if snapshot_id.trim().is_empty() {
            return Err(Error::InvalidParams("The snapshot id is empty; use the id sandlink/snapshot answered.".into()));
        }
        // Restoring is creating a sandbox from the snapshot.
        Ok(self.open(request, Some(snapshot_id), None).await?)
    }
}

/// One Daytona sandbox, owned by one session.
pub struct DaytonaSandbox {
    api: Arc<Api>,
    toolbox: Arc<Toolbox>,
    sandbox_id: String,
    remote_root: String,
    /// The remote root as the sandbox's shell names it (`pwd` there), for `cd` in command text.
    shell_root: std::sync::Mutex<String>,
    /// Daytona stops the sandbox after this many minutes without activity.
    auto_stop_minutes: AtomicU64,
    /// When Daytona will stop the sandbox unless something happens in it, and what `last-activity` buys.
    lease: LeaseBook,
    gone: Arc<GoneFlag>,
    files: Arc<files::Files>,
    resources: Resources,
}

impl DaytonaSandbox {
    async fn new(opening: &Opening, answer: SandboxAnswer) -> Result<DaytonaSandbox> {
        let proxy = match answer.toolbox_proxy_url.clone().filter(|url| !url.is_empty()) {
            Some(url) => url,
            None => {
                #[derive(Deserialize)]
                struct ProxyUrl {
                    url: String,
                }
                let what = "asking for the toolbox's address";
                let response = opening.api.call(reqwest::Method::GET, &format!("/sandbox/{}/toolbox-proxy-url", answer.id), None, what).await?;
                json_body::<ProxyUrl>(response, what).await?.url
            }
        };
        let settings = &opening.settings;
        let tuning = StreamTuning::from_keepalive_seconds(settings.stream_keepalive_seconds);
        // The SDK's form: the sandbox id is the first path segment under the proxy.
        let toolbox_base = format!("{}/{}", proxy.trim_end_matches('/'), answer.id);
        let toolbox = Arc::new(Toolbox {
            api: Api::toolbox(opening.http.clone(), toolbox_base, &opening.credentials, opening.gone.clone()),
            tuning,
            main: opening.api.clone(),
            sandbox_id: answer.id.clone(),
        });
        let auto_stop_minutes = answer.auto_stop_interval.map(|minutes| minutes as u64).filter(|minutes| *minutes > 0).unwrap_or(settings.auto_stop_minutes);
        let lease = LeaseBook::starting_now(auto_stop_minutes * 60, Duration::from_secs(settings.keepalive_idle_seconds));
        if let Some(end) = answer.auto_stop_at() {
            lease.observed_end(&rfc3339(end));
        }
        Ok(DaytonaSandbox {
            api: opening.api.clone(),
            toolbox: toolbox.clone(),
            sandbox_id: answer.id.clone(),
            remote_root: settings.remote_root.clone(),
            shell_root: std::sync::Mutex::new(settings.remote_root.clone()),
            auto_stop_minutes: AtomicU64::new(auto_stop_minutes),
            lease,
            gone: opening.gone.clone(),
            files: Arc::new(files::Files::new(toolbox, settings.remote_root.clone())),
            resources: Resources {
                cpu_percent: None,
                memory_bytes: answer.memory.map(|gib| (gib * (1u64 << 30) as f64) as u64),
            },
        })
    }

    fn sandbox_path(&self, suffix: &str) -> String {
        format!("/sandbox/{}{suffix}", self.sandbox_id)
    }

    /// Creates the remote root and learns how the sandbox's shell names it.
    async fn prepare_remote_root(&self) -> Result<()> {
        let what = "creating the remote root";
        self.toolbox
            .api
            .send(None, || {
                self.toolbox.api.request(reqwest::Method::POST, "/files/folder").query(&[("path", self.remote_root.as_str()), ("mode", "755")])
            })
            .await
            .map_err(|failure| self.toolbox.api.fail(failure, what))?;
        let (code, output) = self.toolbox.execute(&self.remote_root, "pwd", "finding the remote root").await?;
        let shell_root = output.trim();
        if code == 0 && shell_root.starts_with('/') {
            *crate::locks::lock(&self.shell_root) = shell_root.to_string();
        }
        Ok(())
    }

    /// The working directory of a run as the shell names it: the root, or a path below it the engine checked.
    fn working_directory(&self, cwd: Option<&str>) -> String {
        let root = crate::locks::lock(&self.shell_root).clone();
        match cwd.map(|cwd| cwd.trim_matches('/')).filter(|cwd| !cwd.is_empty() && *cwd != ".") {
            Some(relative) => format!("{root}/{relative}"),
            None => root,
        }
    }

    fn auto_stop_seconds(&self) -> u64 {
        self.auto_stop_minutes.load(Ordering::SeqCst) * 60
    }

    fn gone_status(&self, message: String) -> SandboxStatus {
        SandboxStatus {
            failure: Some(format!(
                "The Daytona sandbox {} is gone ({message}); it was deleted outside sandlink. Connect again to get a \
                 new sandbox.",
                self.sandbox_id
            )),
            expired: true,
            ..SandboxStatus::default()
        }
    }
}

#[async_trait]
impl Sandbox for DaytonaSandbox {
    fn driver_id(&self) -> &'static str {
        "daytona"
    }

    fn remote_root(&self) -> String {
        self.remote_root.clone()
    }

    fn detail(&self) -> Option<String> {
        Some(format!("Daytona sandbox {}", self.sandbox_id))
    }

    fn driver_state(&self) -> Value {
        super::state_value("daytona", &State { sandbox_id: self.sandbox_id.clone() })
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        if let Some(cwd) = &spec.cwd {
            if cwd.starts_with('/') || cwd.split('/').any(|part| part == "..") {
                return Err(Error::PathOutsideWorkspace(format!(
                    "The working directory \"{cwd}\" is outside the session's remote root."
                )));
            }
        }
        let program = match &spec.args {
            Some(args) => std::iter::once(spec.command.clone()).chain(args.iter().cloned()).collect(),
            // A command line goes to bash where the sandbox has it (Daytona's images do), else to sh.
            None => vec![
                "sh".to_string(),
                "-c".to_string(),
                "if command -v bash >/dev/null 2>&1; then exec bash -c \"$0\"; fi; eval \"$0\"".to_string(),
                spec.command.clone(),
            ],
        };
        let env: Vec<(String, String)> = spec.env.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
        let line = toolbox::command_line(&self.working_directory(spec.cwd.as_deref()), &env, &program, spec.stdin);
        toolbox::start(self.toolbox.clone(), line, spec.stdin).await
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(self.files.clone())
    }

    /// The preview URL with its token in the query, so it opens in a browser without a header.
    async fn preview(&self, port: u16) -> Result<String> {
        let what = "asking for the preview URL";
        let response = self.api.call(reqwest::Method::GET, &self.sandbox_path(&format!("/ports/{port}/preview-url")), None, what).await?;
        let answer: PreviewAnswer = json_body(response, what).await?;
        let mut url = url::Url::parse(&answer.url).map_err(|error| Error::Remote {
            status: None,
            message: format!("Daytona answered a preview URL sandlink cannot read ({error}): {}", answer.url),
        })?;
        if let Some(token) = answer.token.filter(|token| !token.is_empty()) {
            url.query_pairs_mut().append_pair("DAYTONA_SANDBOX_AUTH_KEY", &token);
        }
        Ok(url.to_string())
    }

    /// Counts as activity (`last-activity`), which restarts Daytona's auto-stop countdown; asking for longer than the
    /// auto-stop interval raises the interval first.
    async fn extend(&self, seconds: u64) -> Result<String> {
        if seconds == 0 {
            return Err(Error::InvalidParams("Extend by at least one second.".into()));
        }
        let minutes = seconds.div_ceil(60);
        if minutes > self.auto_stop_minutes.load(Ordering::SeqCst) {
            self.api
                .call(reqwest::Method::POST, &self.sandbox_path(&format!("/autostop/{minutes}")), None, "raising the sandbox's auto-stop interval")
                .await?;
            self.auto_stop_minutes.store(minutes, Ordering::SeqCst);
        }
        self.api.call(reqwest::Method::POST, &self.sandbox_path("/last-activity"), None, "keeping the sandbox active").await?;
        let fallback = self.lease.extended_by(self.auto_stop_seconds());
        // The end by Daytona's clock, which is what its auto-stop goes by; the lease keeps that.
        let what = "reading when the sandbox will stop";
        let observed = match self.api.call(reqwest::Method::GET, &self.sandbox_path(""), None, what).await {
            Ok(response) => json_body::<SandboxAnswer>(response, what).await.ok().and_then(|answer| answer.auto_stop_at()),
            Err(_) => None,
        };
        match observed {
            Some(end) => {
                self.lease.observed_end(&rfc3339(end));
                Ok(rfc3339(end))
            }
            None => Ok(rfc3339(fallback)),
        }
    }

    /// A Daytona snapshot of the sandbox; its name is the id `restore` creates a sandbox from.
    async fn snapshot(&self, name: Option<String>) -> Result<String> {
        let name = name.filter(|name| !name.trim().is_empty()).unwrap_or_else(|| format!("sandlink-{}", crate::ids::short_id()));
        let body = json!({ "name": name, "includeMemory": false });
        let what = "snapshotting the sandbox";
        let response = self.api.call(reqwest::Method::POST, &self.sandbox_path("/snapshot"), Some(&body), what).await?;
        let mut answer: SandboxAnswer = json_body(response, what).await?;
        // The sandbox is `snapshotting` until the snapshot is taken.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut interval = Duration::from_millis(100);
        while answer.state.as_deref() == Some("snapshotting") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(POLL_INTERVAL_MAX);
            let response = self.api.call(reqwest::Method::GET, &self.sandbox_path(""), None, what).await?;
            answer = json_body(response, what).await?;
        }
        if let Some(problem) = state_problem(&answer) {
            return Err(Error::Remote { status: None, message: format!("{problem} while snapshotting it.") });
        }
        Ok(name)
    }

    fn lease(&self) -> Option<Lease> {
        Some(self.lease.lease(&self.gone))
    }

    async fn status(&self) -> Result<SandboxStatus> {
        if let Some(message) = self.gone.get() {
            return Ok(self.gone_status(message));
        }
        let what = "reading the sandbox's state";
        let answer: SandboxAnswer = match self.api.call(reqwest::Method::GET, &self.sandbox_path(""), None, what).await {
            Ok(response) => json_body(response, what).await?,
            Err(error) => {
                return match self.gone.get() {
                    Some(message) => Ok(self.gone_status(message)),
                    None => Err(error),
                }
            }
        };
        let resources = Some(Resources {
            cpu_percent: self.resources.cpu_percent,
            memory_bytes: answer.memory.map(|gib| (gib * (1u64 << 30) as f64) as u64).or(self.resources.memory_bytes),
        });
        let expired_as = |message: &str| SandboxStatus {
            failure: Some(format!("The Daytona sandbox {} {message}; connect again to start it.", self.sandbox_id)),
            expired: true,
            resources: resources.clone(),
            expires_at: None,
        };
        Ok(match answer.state.as_deref() {
            Some("stopped") | Some("stopping") => expired_as("was stopped (Daytona's auto-stop after inactivity, or from outside)"),
            Some("archived") | Some("archiving") => expired_as("was archived"),
            Some("destroyed") | Some("destroying") => self.gone_status("deleted".into()),
            _ => match state_problem(&answer) {
                Some(problem) => SandboxStatus { failure: Some(format!("{problem}.")), resources, ..SandboxStatus::default() },
                None => {
                    if let Some(end) = answer.auto_stop_at() {
                        self.lease.observed_end(&rfc3339(end));
                    }
                    SandboxStatus {
                    resources,
                    failure: None,
                    expires_at: Some(rfc3339(self.lease.expires_at())),
                    expired: false,
                    }
                }
            },
        })
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        if self.gone.get().is_some() {
            return Ok(());
        }
        if keep {
            // Left as it is: Daytona stops it after its auto-stop interval, keeping its disk, and a re-attach starts
            // it again.
            return Ok(());
        }
        match self.api.call(reqwest::Method::DELETE, &self.sandbox_path(""), None, "deleting the sandbox").await {
            Ok(_) => Ok(()),
            Err(_) if self.gone.get().is_some() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_should_round_trip_with_the_same_keys() {
        let recorded = json!({ "sandboxId": "3f2a9c" });
        let state: State = serde_json::from_value(recorded.clone()).expect("today's record format");
        assert_eq!(crate::drivers::state_value("daytona", &state), recorded);
    }

    #[test]
    fn terminal_states_should_be_clear_problems_with_their_reason() {
        let answer = |state: &str| SandboxAnswer {
            id: "sb1".into(),
            state: Some(state.into()),
            error_reason: Some("image not found".into()),
            toolbox_proxy_url: None,
            memory: None,
            auto_stop_interval: None,
            last_activity_at: None,
        };
        assert!(state_problem(&answer("build_failed")).is_some_and(|text| text.contains("image not found")));
        assert!(state_problem(&answer("error")).is_some_and(|text| text.contains("sb1")));
        assert!(state_problem(&answer("started")).is_none());
    }
}
