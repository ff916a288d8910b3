//! The `vercel` driver: Vercel Sandbox microVMs through Vercel's REST API (`https://vercel.com/api`).
//!
//! The current API generation has named (optionally persistent) sandboxes whose work happens in sessions
//! (`/v2/sandboxes/sessions/{sessionId}/…`); the older one (`/v1/sandboxes/{id}/…`, the setting `apiVersion: "v1"`)
//! has the sandbox as the VM. Runs start detached and are followed through the logs and the reconnectable wait
//! (`commands`), sync moves gzip tars (`files`), and the engine's lifecycle manager keeps the session alive through
//! `extend-timeout`. The wire contract is cloud-apis.md section 3; reqwest types stay in here.

pub mod client;
pub mod commands;
pub mod files;
pub mod settings;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use self::client::{Api, Route, SessionPaths};
use self::commands::{CommandSpec, RunBook};
use self::settings::{Generation, Settings};
use super::http::lease::{rfc3339, LeaseBook};
use super::http::GoneFlag;
use super::{ConnectRequest, CredentialSpec, ExecSpec, Lease, Process, ReattachRequest, Sandbox, SandboxStatus, SettingSpec};
use crate::error::{Error, Result};
use crate::protocol::{DriverCapabilities, DriverInfo};
use crate::sync::RemoteFiles;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A read that waits longer than this means a dead connection. Logs and waits of a silent command are re-opened
/// after it (the logs replay, so nothing is lost), the same way as after an edge cut.
const READ_TIMEOUT: Duration = Duration::from_secs(90);

/// What a session's record keeps to find the sandbox again after a restart (`driverState`); never a token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// `v2` or `v1`.
    pub api_version: String,
    /// The sandbox's name (v2) or id (v1).
    pub sandbox: String,
    /// The session in use when the record was written (v2).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// The vercel driver; holds nothing until a session connects.
#[derive(Default)]
pub struct Driver;

impl Driver {
    pub fn new() -> Self {
        Driver
    }
}

/// A session as Vercel describes it (v2 `session`, or the v1 `sandbox`, which has the same fields).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    id: String,
    #[serde(default)]
    status: Option<String>,
    /// Milliseconds the session lives from its start, extensions included.
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    started_at: Option<i64>,
    #[serde(default)]
    created_at: Option<i64>,
}

impl SessionInfo {
    /// When Vercel ends the session (epoch milliseconds), as the SDK computes `expiresAt`.
    fn ends_at_ms(&self) -> Option<i64> {
        Some(self.started_at.or(self.created_at)? + self.timeout? as i64)
    }
}

/// A preview route: the port, and the public URL Vercel gives it.
#[derive(Debug, Clone, Deserialize)]
struct PreviewRoute {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    subdomain: Option<String>,
    port: u16,
}

impl PreviewRoute {
    fn address(&self) -> Option<String> {
        self.url.clone().or_else(|| self.subdomain.as_ref().map(|subdomain| format!("https://{subdomain}.vercel.run")))
    }
}

/// A create, get or resume answer, in either generation's form.
#[derive(Debug, Deserialize)]
struct SandboxAnswer {
    #[serde(default)]
    sandbox: Option<Value>,
    #[serde(default)]
    session: Option<SessionInfo>,
    #[serde(default)]
    routes: Option<Vec<PreviewRoute>>,
}

/// What opening a sandbox found, the same for both generations.
struct Opened {
    /// The name (v2) or id (v1) that finds the sandbox again.
    sandbox: String,
    persistent: bool,
    session: SessionInfo,
    routes: Vec<PreviewRoute>,
}

impl Opened {
    fn read(generation: Generation, answer: SandboxAnswer, what: &str) -> Result<Opened> {
        let malformed = || Error::Remote {
            status: None,
            message: format!("Vercel answered without the sandbox's session while {what}."),
        };
        let sandbox = answer.sandbox.ok_or_else(malformed)?;
        let (key, session) = match generation {
            Generation::V2 => (
                sandbox.get("name").and_then(Value::as_str).map(str::to_string),
                answer.session,
            ),
            Generation::V1 => (
                sandbox.get("id").and_then(Value::as_str).map(str::to_string),
                serde_json::from_value::<SessionInfo>(sandbox.clone()).ok(),
            ),
        };
        Ok(Opened {
            sandbox: key.ok_or_else(malformed)?,
            persistent: sandbox.get("persistent").and_then(Value::as_bool).unwrap_or(false),
            session: session.ok_or_else(malformed)?,
            routes: answer.routes.unwrap_or_default(),
        })
    }
}

fn http_client() -> Result<reqwest::Client> {
    super::http::connection_pool(&client::WORDING, CONNECT_TIMEOUT, READ_TIMEOUT)
}

/// A sandbox name Vercel accepts, tied to the sandlink session that made it.
fn sandbox_name(session_id: &str) -> String {
    let cleaned: String = session_id
        .chars()
        .map(|character| if character.is_ascii_alphanumeric() || character == '-' { character.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("sandlink-{cleaned}")
}

/// Epoch milliseconds as RFC 3339.
fn from_epoch_ms(ms: i64) -> Option<String> {
    let when = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    Some(rfc3339(when))
}

impl Driver {
    /// Creates a sandbox (from `snapshot` when given), or connects to the one `existing` or the settings name.
    async fn open(&self, request: ConnectRequest, snapshot: Option<String>, existing: Option<(String, String)>) -> Result<Arc<VercelSandbox>> {
        let mut settings = Settings::parse(&request.settings)?;
        let credentials = client::credentials(&request)?;
        if let Some((sandbox, remote_root)) = existing {
            settings.sandbox = Some(sandbox);
            settings.remote_root = remote_root;
        }
        // Checked before anything is created, so an unsupported policy leaves no sandbox behind.
        let network_policy = settings.network_policy()?;
        let gone = Arc::new(GoneFlag::default());
        let api = Arc::new(Api::new(http_client()?, &settings.base_url, credentials, gone.clone()));
        let (opened, created) = match (&settings.sandbox, snapshot) {
            (Some(sandbox), None) => (get_sandbox(&api, settings.generation, sandbox, true).await?, false),
            (_, snapshot) => (create(&api, &settings, &request.session_id, network_policy, snapshot).await?, true),
        };
        let sandbox = VercelSandbox::new(api, gone, &settings, opened);
        if settings.remote_root != settings::DEFAULT_REMOTE_ROOT {
            if let Err(error) = sandbox.files.prepare_root().await {
                if created {
                    let _ = sandbox.disconnect(false).await;
                }
                return Err(error);
            }
        }
        tracing::info!(sandbox = %sandbox.sandbox(), "connected a Vercel sandbox");
        Ok(Arc::new(sandbox))
    }
}

/// `POST /v2/sandboxes` (with a runtime), `/v3/sandboxes` (without, image-based) or `/v1/sandboxes`.
async fn create(api: &Api, settings: &Settings, session_id: &str, network_policy: Option<Value>, snapshot: Option<String>) -> Result<Opened> {
    let mut body = json!({
        "projectId": api.project_id,
        "ports": settings.ports,
        "timeout": settings.timeout_seconds * 1000,
    });
    let fields = body.as_object_mut().expect("a JSON object literal");
    if let Some(runtime) = &settings.runtime {
        fields.insert("runtime".into(), json!(runtime));
    }
    if let Some(vcpus) = settings.vcpus {
        fields.insert("resources".into(), json!({ "vcpus": vcpus }));
    }
    if !settings.env.is_empty() {
        fields.insert("env".into(), json!(settings.env));
    }
    if let Some(policy) = network_policy {
        fields.insert("networkPolicy".into(), policy);
    }
    if let Some(snapshot_id) = snapshot {
        fields.insert("source".into(), json!({ "type": "snapshot", "snapshotId": snapshot_id }));
    }
    let what = "creating the sandbox";
    match settings.generation {
        Generation::V1 => {
            let answer = api.call_json(reqwest::Method::POST, "/v1/sandboxes", Some(&body), Route::Account, what).await?;
            Opened::read(Generation::V1, answer, what)
        }
        Generation::V2 => {
            let name = sandbox_name(session_id);
            fields.insert("name".into(), json!(name));
            fields.insert("persistent".into(), json!(settings.persistent));
            if let Some(image) = &settings.image {
                fields.insert("image".into(), json!(image));
            }
            if let Some(region) = &settings.region {
                fields.insert("region".into(), json!(region));
            }
            let path = if settings.runtime.is_some() { "/v2/sandboxes" } else { "/v3/sandboxes" };
            match api.call_json(reqwest::Method::POST, path, Some(&body), Route::Account, what).await {
                Ok(answer) => Opened::read(Generation::V2, answer, what),
                // The name is the create's identity: a create repeated after its answer was lost finds the sandbox
                // the first one made instead of a second.
                Err(Error::Remote { status: Some(409), .. }) => get_sandbox(api, Generation::V2, &name, true).await,
                Err(error) => Err(error),
            }
        }
    }
}

/// `GET /v2/sandboxes/{name}` (resuming a stopped persistent sandbox with `resume`) or `GET /v1/sandboxes/{id}`.
async fn get_sandbox(api: &Api, generation: Generation, sandbox: &str, resume: bool) -> Result<Opened> {
    let what = "connecting to the sandbox";
    let encoded: String = url::form_urlencoded::byte_serialize(sandbox.as_bytes()).collect();
    let path = match generation {
        Generation::V2 => format!(
            "/v2/sandboxes/{encoded}?projectId={}{}",
            url::form_urlencoded::byte_serialize(api.project_id.as_bytes()).collect::<String>(),
            if resume { "&resume=true" } else { "" }
        ),
        Generation::V1 => format!("/v1/sandboxes/{encoded}"),
    };
    let answer = api.call_json(reqwest::Method::GET, &path, None, Route::Sandbox, what).await?;
    let opened = Opened::read(generation, answer, what)?;
    let status = opened.session.status.as_deref().unwrap_or("running");
    if resume && !matches!(status, "running" | "pending") {
        return Err(Error::Remote {
            status: Some(410),
            message: format!(
                "The Vercel sandbox {sandbox} is {status}{}; connect without the sandbox setting to get a new one.",
                if generation == Generation::V1 { " and v1 sandboxes cannot be resumed" } else { " and could not be resumed" }
            ),
        });
    }
    Ok(opened)
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "vercel"
    }

    async fn info(&self) -> DriverInfo {
        let has_credentials = ["VERCEL_TOKEN", "VERCEL_OIDC_TOKEN"].iter().any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
        let detail = if has_credentials {
            "Vercel Sandbox microVMs; credentials come from the environment"
        } else {
            "Vercel Sandbox microVMs; needs VERCEL_TOKEN with VERCEL_TEAM_ID and VERCEL_PROJECT_ID, or VERCEL_OIDC_TOKEN"
        };
        DriverInfo {
            id: self.id().into(),
            // Reachability is only known when connecting; missing credentials are reported then.
            available: true,
            detail: Some(detail.into()),
            capabilities: DriverCapabilities {
                exec: true,
                // Vercel's command API has no way to write to a command's input.
                stdin: false,
                cancel: true,
                upload: true,
                download: true,
                preview: true,
                extend: true,
                snapshot: true,
                metrics: false,
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
        client::CREDENTIALS
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        Ok(self.open(request, None, None).await?)
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let Some(state) = request.recorded_state::<State>("vercel")? else { return Ok(false) };
        let generation = if state.api_version == "v1" { Generation::V1 } else { Generation::V2 };
        let settings = Settings::parse(&request.connect.settings)?;
        let api = Api::new(http_client()?, &settings.base_url, client::credentials(&request.connect)?, Arc::default());
        match get_sandbox(&api, generation, &state.sandbox, false).await {
            // A persistent v2 sandbox resumes when connected again, whatever its session's state.
            Ok(opened) => Ok(opened.persistent || matches!(opened.session.status.as_deref(), None | Some("running" | "pending"))),
            Err(_) if api.gone().get().is_some() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Connects to the kept sandbox again; a stopped persistent one resumes from its last snapshot.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let state = request
            .recorded_state::<State>("vercel")?
            .ok_or_else(|| Error::Internal("The kept vercel session's record does not name its sandbox.".into()))?;
        let mut connect = request.connect;
        if state.api_version == "v1" {
            connect.settings.insert("apiVersion".into(), json!("v1"));
        }
        Ok(self.open(connect, None, Some((state.sandbox, request.remote_root))).await?)
    }

    async fn restore(&self, snapshot_id: String, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        if snapshot_id.trim().is_empty() {
            return Err(Error::InvalidParams("The snapshot id is empty; use the id sandlink/snapshot answered.".into()));
        }
        // Restoring is creating a sandbox whose source is the snapshot.
        Ok(self.open(request, Some(snapshot_id), None).await?)
    }
}

/// One Vercel sandbox, owned by one session.
pub struct VercelSandbox {
    api: Arc<Api>,
    generation: Generation,
    /// The name (v2) or id (v1); a v1 snapshot moves the session to a new sandbox, so the id can change.
    sandbox: Mutex<String>,
    persistent: bool,
    /// What a v1 snapshot needs to create the sandbox that carries the session on.
    settings: Settings,
    /// The session's routes; a snapshot moves the sandbox to a new session, so they change with it.
    paths: Arc<Mutex<SessionPaths>>,
    session_id: Mutex<String>,
    routes: Mutex<Vec<PreviewRoute>>,
    remote_root: String,
    env: std::collections::BTreeMap<String, String>,
    lease: LeaseBook,
    gone: Arc<GoneFlag>,
    runs: Arc<RunBook>,
    files: Arc<files::Files>,
    /// Held for writing while a snapshot stops one session and resumes the next, so nothing else asks the stopped
    /// one meanwhile (which would answer 410 and make the session look gone).
    switching: Arc<tokio::sync::RwLock<()>>,
    /// What the last snapshot did to the session, for `sandlink/snapshot`'s answer.
    snapshot_note: Mutex<Option<String>>,
    /// What runs and file commands start from: the current session, and where a stopped session is reported.
    watch: commands::SessionWatch,
}

impl VercelSandbox {
    fn new(api: Arc<Api>, gone: Arc<GoneFlag>, settings: &Settings, opened: Opened) -> Self {
        let paths = Arc::new(Mutex::new(SessionPaths::new(settings.generation, &opened.session.id)));
        let runs = Arc::new(RunBook::default());
        let switching = Arc::new(tokio::sync::RwLock::new(()));
        let watch = commands::SessionWatch { gone: gone.clone(), current: paths.clone(), switching: switching.clone() };
        let files = Arc::new(files::Files::new(api.clone(), watch.clone(), settings.remote_root.clone()));
        let lease = LeaseBook::starting_now(settings.timeout_seconds, Duration::from_secs(settings.keepalive_idle_seconds));
        let sandbox = VercelSandbox {
            api,
            generation: settings.generation,
            sandbox: Mutex::new(opened.sandbox),
            settings: settings.clone(),
            persistent: opened.persistent,
            paths,
            session_id: Mutex::new(opened.session.id.clone()),
            routes: Mutex::new(opened.routes),
            remote_root: settings.remote_root.clone(),
            env: settings.env.clone(),
            lease,
            gone,
            runs,
            files,
            switching,
            watch,
            snapshot_note: Mutex::new(None),
        };
        sandbox.observe(&opened.session);
        sandbox
    }

    fn paths(&self) -> SessionPaths {
        crate::locks::lock(&self.paths).clone()
    }

    /// Records the end of the session Vercel reported.
    fn observe(&self, session: &SessionInfo) {
        if let Some(end) = session.ends_at_ms().and_then(from_epoch_ms) {
            self.lease.observed_end(&end);
        }
    }

    fn sandbox(&self) -> String {
        crate::locks::lock(&self.sandbox).clone()
    }

    /// Moves to the session a snapshot's resume (or a restore) started.
    fn adopt(&self, opened: Opened) {
        *crate::locks::lock(&self.sandbox) = opened.sandbox.clone();
        *crate::locks::lock(&self.paths) = SessionPaths::new(self.generation, &opened.session.id);
        *crate::locks::lock(&self.session_id) = opened.session.id.clone();
        *crate::locks::lock(&self.routes) = opened.routes;
        self.observe(&opened.session);
    }

    fn project_query(&self) -> String {
        format!("projectId={}", url::form_urlencoded::byte_serialize(self.api.project_id.as_bytes()).collect::<String>())
    }

    fn named_path(&self) -> String {
        let encoded: String = url::form_urlencoded::byte_serialize(self.sandbox().as_bytes()).collect();
        format!("/v2/sandboxes/{encoded}?{}", self.project_query())
    }

    /// The sentence a session that ended on its own carries: whether its files were kept.
    fn gone_sentence(&self, message: &str) -> String {
        let files = if self.persistent {
            format!(
                "its files were kept: the persistent sandbox {} resumes from its last snapshot when you connect with \
                 the setting \"sandbox\": \"{}\"",
                self.sandbox(),
                self.sandbox()
            )
        } else {
            "its files were lost with it (set \"persistent\": true to keep them across sessions)".to_string()
        };
        format!("The Vercel sandbox {} has stopped ({message}); {files}.", self.sandbox())
    }

    /// The working directory of a run: the remote root, or a path below it the engine already checked.
    fn working_directory(&self, cwd: Option<&str>) -> String {
        match cwd.map(|cwd| cwd.trim_matches('/')).filter(|cwd| !cwd.is_empty() && *cwd != ".") {
            Some(relative) => format!("{}/{relative}", self.remote_root),
            None => self.remote_root.clone(),
        }
    }

    /// Stops the session (`POST …/stop`); a persistent v2 sandbox snapshots itself on the way.
    async fn stop_session(&self) -> Result<()> {
        self.api.call(reqwest::Method::POST, &self.paths().at("/stop"), None, Route::Sandbox, "stopping the sandbox").await.map(|_| ())
    }
}

#[async_trait]
impl Sandbox for VercelSandbox {
    fn driver_id(&self) -> &'static str {
        "vercel"
    }

    fn remote_root(&self) -> String {
        self.remote_root.clone()
    }

    fn detail(&self) -> Option<String> {
        Some(match self.generation {
            Generation::V2 => format!("Vercel sandbox {} (session {})", self.sandbox(), crate::locks::lock(&self.session_id)),
            Generation::V1 => format!("Vercel sandbox {}", self.sandbox()),
        })
    }

    fn driver_state(&self) -> Value {
        let state = State {
            api_version: if self.generation == Generation::V1 { "v1".into() } else { "v2".into() },
            sandbox: self.sandbox(),
            session_id: (self.generation == Generation::V2).then(|| crate::locks::lock(&self.session_id).clone()),
        };
        super::state_value("vercel", &state)
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        if let Some(cwd) = &spec.cwd {
            if cwd.starts_with('/') || cwd.split('/').any(|part| part == "..") {
                return Err(Error::PathOutsideWorkspace(format!(
                    "The working directory \"{cwd}\" is outside the session root; give a path relative to the root."
                )));
            }
        }
        let _gate = self.switching.read().await;
        let (program, args) = match spec.args {
            Some(args) => (spec.command, args),
            None => ("sh".to_string(), vec!["-c".to_string(), spec.command]),
        };
        let mut env = self.env.clone();
        env.extend(spec.env);
        let command = CommandSpec { program, args, cwd: self.working_directory(spec.cwd.as_deref()), env, timeout: spec.timeout };
        commands::start(self.api.clone(), self.watch.clone(), command, self.runs.clone()).await
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(self.files.clone())
    }

    async fn preview(&self, port: u16) -> Result<String> {
        let _gate = self.switching.read().await;
        let known = crate::locks::lock(&self.routes).iter().find(|route| route.port == port).and_then(PreviewRoute::address);
        if let Some(url) = known {
            return Ok(url);
        }
        if self.generation == Generation::V1 {
            return Err(Error::Unsupported(format!(
                "Port {port} was not declared when this v1 Vercel sandbox was created, and v1 sandboxes cannot add \
                 ports later; add it to the \"ports\" setting and connect again."
            )));
        }
        // v2 sandboxes take their port list whole: the known ports and this one.
        let mut ports: Vec<u16> = crate::locks::lock(&self.routes).iter().map(|route| route.port).collect();
        ports.push(port);
        let body = json!({ "ports": ports });
        let answer: SandboxAnswer = self
            .api
            .call_json(reqwest::Method::PATCH, &self.named_path(), Some(&body), Route::Sandbox, "adding a port to the sandbox")
            .await?;
        let routes = match answer.routes {
            Some(routes) => routes,
            None => {
                let session: SandboxAnswer =
                    self.api.call_json(reqwest::Method::GET, &self.paths().at(""), None, Route::Sandbox, "reading the sandbox's routes").await?;
                session.routes.unwrap_or_default()
            }
        };
        let url = routes.iter().find(|route| route.port == port).and_then(PreviewRoute::address);
        *crate::locks::lock(&self.routes) = routes;
        url.ok_or_else(|| Error::Remote {
            status: None,
            message: format!("Vercel accepted port {port} but answered no route for it."),
        })
    }

    async fn extend(&self, seconds: u64) -> Result<String> {
        if seconds == 0 {
            return Err(Error::InvalidParams("Extend by at least one second.".into()));
        }
        let _gate = self.switching.read().await;
        #[derive(Deserialize)]
        struct Extended {
            #[serde(default)]
            session: Option<SessionInfo>,
            #[serde(default)]
            sandbox: Option<SessionInfo>,
        }
        let body = json!({ "duration": seconds * 1000 });
        let answer: Extended = self
            .api
            .call_json(reqwest::Method::POST, &self.paths().at("/extend-timeout"), Some(&body), Route::Sandbox, "extending the sandbox's timeout")
            .await?;
        match answer.session.or(answer.sandbox).and_then(|session| session.ends_at_ms()).and_then(from_epoch_ms) {
            Some(end) => self.lease.observed_end(&end),
            // Vercel adds the duration to the session's timeout.
            None => {
                let end = self.lease.expires_at() + Duration::from_secs(seconds);
                self.lease.observed_end(&rfc3339(end));
            }
        }
        Ok(rfc3339(self.lease.expires_at()))
    }

    /// Snapshots the sandbox. On Vercel that stops the session, so the driver first fetches the output of runs in
    /// flight (the logs are gone after the stop), then resumes the sandbox from the snapshot in a new session, with
    /// the same files; runs in flight end, saying the session stopped.
    async fn snapshot(&self, name: Option<String>) -> Result<String> {
        let _ = name;
        let _gate = self.switching.write().await;
        self.runs.drain_all().await;
        #[derive(Deserialize)]
        struct Snapshotted {
            snapshot: SnapshotInfo,
        }
        #[derive(Deserialize)]
        struct SnapshotInfo {
            id: String,
        }
        let answer: Snapshotted = self
            .api
            .call_json(reqwest::Method::POST, &self.paths().at("/snapshot"), Some(&json!({})), Route::Sandbox, "snapshotting the sandbox")
            .await?;
        let snapshot_id = answer.snapshot.id;
        tracing::info!(sandbox = %self.sandbox(), %snapshot_id, "the snapshot stopped the Vercel session; resuming from it");
        let resumed = match self.generation {
            Generation::V2 => {
                // Resuming starts from the sandbox's current snapshot, which only persistent sandboxes set themselves.
                let body = json!({ "currentSnapshotId": snapshot_id });
                self.api
                    .call(reqwest::Method::PATCH, &self.named_path(), Some(&body), Route::Sandbox, "pointing the sandbox at its snapshot")
                    .await?;
                get_sandbox(&self.api, Generation::V2, &self.sandbox(), true).await
            }
            // A v1 sandbox cannot resume: the session goes on in a new sandbox created from the snapshot.
            Generation::V1 => match self.settings.network_policy() {
                Ok(policy) => create(&self.api, &self.settings, "", policy, Some(snapshot_id.clone())).await,
                Err(error) => Err(error),
            },
        };
        let note = match resumed {
            Ok(opened) => {
                let note = match self.generation {
                    Generation::V2 => format!(
                        "Taking it stopped the Vercel session {}; sandlink resumed the sandbox from the snapshot in \
                         session {}, with the same files (runs in flight ended).",
                        crate::locks::lock(&self.session_id),
                        opened.session.id
                    ),
                    Generation::V1 => format!(
                        "Taking it stopped the Vercel sandbox {}; sandlink carries the session on in sandbox {}, \
                         created from the snapshot with the same files (runs in flight ended).",
                        self.sandbox(),
                        opened.sandbox
                    ),
                };
                self.adopt(opened);
                note
            }
            Err(error) => {
                let note = format!(
                    "Taking it stopped the Vercel session, and sandlink could not resume it ({error}); restore the \
                     snapshot with sandlink/restore to go on."
                );
                self.gone.set(&note);
                note
            }
        };
        *crate::locks::lock(&self.snapshot_note) = Some(note);
        Ok(snapshot_id)
    }

    fn snapshot_note(&self) -> Option<String> {
        crate::locks::lock(&self.snapshot_note).clone()
    }

    fn lease(&self) -> Option<Lease> {
        let mut lease = self.lease.lease(&self.gone);
        // The session's end says whether its files were kept, which the engine's expiry message then carries.
        lease.gone = lease.gone.map(|message| self.gone_sentence(&message));
        Some(lease)
    }

    async fn status(&self) -> Result<SandboxStatus> {
        let gone_status = |message: String| SandboxStatus { failure: Some(self.gone_sentence(&message)), expired: true, ..SandboxStatus::default() };
        if let Some(message) = self.gone.get() {
            return Ok(gone_status(message));
        }
        let _gate = self.switching.read().await;
        let answer: SandboxAnswer =
            match self.api.call_json(reqwest::Method::GET, &self.paths().at(""), None, Route::Sandbox, "reading the sandbox's state").await {
                Ok(answer) => answer,
                Err(error) => {
                    return match self.gone.get() {
                        Some(message) => Ok(gone_status(message)),
                        None => Err(error),
                    }
                }
            };
        let session = match self.generation {
            Generation::V2 => answer.session,
            Generation::V1 => answer.sandbox.and_then(|sandbox| serde_json::from_value(sandbox).ok()),
        };
        if let Some(routes) = answer.routes {
            *crate::locks::lock(&self.routes) = routes;
        }
        if let Some(session) = &session {
            self.observe(session);
            if let Some(status @ ("stopped" | "failed" | "aborted")) = session.status.as_deref() {
                let message = format!("its session is {status}");
                self.gone.set(&message);
                return Ok(gone_status(message));
            }
        }
        Ok(SandboxStatus { resources: None, failure: None, expires_at: Some(rfc3339(self.lease.expires_at())), expired: false })
    }

    /// Fetches the unread output of runs in flight, then ends the session. With `keep`, a persistent sandbox stops
    /// (snapshotting itself, so a re-attach resumes it) and any other keeps running until its timeout.
    async fn disconnect(&self, keep: bool) -> Result<()> {
        if self.gone.get().is_some() {
            return Ok(());
        }
        let _gate = self.switching.write().await;
        self.runs.drain_all().await;
        let outcome = match (keep, self.generation) {
            (true, Generation::V2) if self.persistent => self.stop_session().await,
            (true, _) => Ok(()),
            (false, Generation::V1) => self.stop_session().await,
            (false, Generation::V2) => {
                self.api.call(reqwest::Method::DELETE, &self.named_path(), None, Route::Sandbox, "removing the sandbox").await.map(|_| ())
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            // Already stopped: the goal is reached.
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
        let recorded = json!({ "apiVersion": "v2", "sandbox": "sandlink-vercel-1a2b", "sessionId": "sbx_1" });
        let state: State = serde_json::from_value(recorded.clone()).expect("today's record format");
        assert_eq!(crate::drivers::state_value("vercel", &state), recorded);
    }

    #[test]
    fn sandbox_names_should_be_what_vercel_accepts() {
        assert_eq!(sandbox_name("vercel-1A2b_c"), "sandlink-vercel-1a2b-c");
    }

    #[test]
    fn a_session_should_end_at_its_start_plus_its_timeout() {
        let session = SessionInfo { id: "s".into(), timeout: Some(300_000), started_at: Some(1_000), ..SessionInfo::default() };
        assert_eq!(session.ends_at_ms(), Some(301_000));
        assert_eq!(from_epoch_ms(0).as_deref(), Some("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn v1_answers_should_read_the_sandbox_as_the_session() {
        let answer: SandboxAnswer = serde_json::from_value(json!({
            "sandbox": { "id": "sbx_1", "status": "running", "timeout": 1000, "createdAt": 5 },
            "routes": [{ "url": "https://sb-a.vercel.run", "subdomain": "sb-a", "port": 3000 }]
        }))
        .unwrap();
        let opened = Opened::read(Generation::V1, answer, "testing").expect("reads");
        assert_eq!(opened.sandbox, "sbx_1");
        assert_eq!(opened.session.id, "sbx_1");
        assert_eq!(opened.routes[0].address().as_deref(), Some("https://sb-a.vercel.run"));
    }
}
