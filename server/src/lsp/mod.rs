//! The LSP front door: `sandlink lsp` on stdio. It translates requests into engine calls and nothing more.

pub mod code_actions;
pub mod errors;
pub mod events;
pub mod framing;
mod transport;
mod validate;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tower_lsp_server::jsonrpc;
use tower_lsp_server::ls_types::notification::{Notification, WorkDoneProgressCancel};
use tower_lsp_server::ls_types::request::Request;
use tower_lsp_server::ls_types::{
    CodeActionOptions, CodeActionParams, CodeActionProviderCapability, CodeActionResponse, CodeLens, CodeLensOptions,
    CodeLensParams, DidSaveTextDocumentParams, ExecuteCommandOptions, ExecuteCommandParams, InitializeParams, InitializeResult,
    InitializedParams, NumberOrString, SaveOptions, WorkDoneProgressCancelParams, ServerCapabilities, ServerInfo, TextDocumentSyncCapability,
    TextDocumentSyncKind, TextDocumentSyncOptions, TextDocumentSyncSaveOptions,
};
use tower_lsp_server::{Client, LanguageServer, LspService};

use self::events::{CancellableTokens, ClientFeatures, LspEvents, LspProgress};
use crate::engine::Engine;
use crate::error::Error;
use crate::protocol::{self as proto, commands};

/// The language server: the engine plus what the client told us in `initialize`.
pub struct Backend {
    client: Client,
    engine: Arc<Engine>,
    events: Arc<LspEvents>,
    features: Arc<RwLock<ClientFeatures>>,
    workspace_root: RwLock<Option<PathBuf>>,
    /// Progress tokens of jobs the client may stop with `window/workDoneProgress/cancel`.
    cancellable_tokens: CancellableTokens,
}

/// How long ending the runs and sessions may take once the client is gone.
const CLEANUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves the protocol on stdin and stdout until the client sends `exit` or closes stdin. Malformed frames are
/// answered and skipped (see `transport`); runs still in flight when the client goes are ended, so none outlives it.
pub async fn serve_stdio() {
    let (service, socket) = build_service();
    let engine = service.inner().engine.clone();
    engine.probe_drivers_early();
    let engine_at_input_end = engine.clone();
    let at_input_end = async move {
        // The client closed its side without `exit`: end runs while their `sandlink/exit` can still be sent.
        end_everything(&engine_at_input_end).await;
    };
    transport::serve(tokio::io::stdin(), tokio::io::stdout(), UnknownMethodKind(service), socket, at_input_end).await;
    // After `exit` (with or without `shutdown`), nothing may be left running either.
    end_everything(&engine).await;
}

async fn end_everything(engine: &Engine) {
    if tokio::time::timeout(CLEANUP_LIMIT, engine.disconnect_all()).await.is_err() {
        tracing::warn!("ending the sessions took longer than {} s; stopping anyway", CLEANUP_LIMIT.as_secs());
    }
}

/// Gives tower-lsp's "method not found" answers the contract's `data.kind: "unknownMethod"` and a sentence.
pub struct UnknownMethodKind<S>(pub S);

impl<S> tower_service::Service<jsonrpc::Request> for UnknownMethodKind<S>
where
    S: tower_service::Service<jsonrpc::Request, Response = Option<jsonrpc::Response>>,
    S::Future: Send + 'static,
{
    type Response = Option<jsonrpc::Response>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(context)
    }

    fn call(&mut self, request: jsonrpc::Request) -> Self::Future {
        let method = request.method().to_string();
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|response| match response.into_parts() {
                (id, Err(error)) if error.code == jsonrpc::ErrorCode::MethodNotFound => {
                    jsonrpc::Response::from_error(id, errors::unknown_method(&method))
                }
                (id, body) => jsonrpc::Response::from_parts(id, body),
            }))
        })
    }
}

/// Builds the service with every custom method registered; also used by in-process tests.
pub fn build_service() -> (LspService<Backend>, tower_lsp_server::ClientSocket) {
    LspService::build(|client| {
        let features = Arc::new(RwLock::new(ClientFeatures::default()));
        let events = Arc::new(LspEvents { client: client.clone(), features: features.clone() });
        let engine = Arc::new(Engine::new(events.clone()));
        Backend {
            client,
            engine,
            events,
            features,
            workspace_root: RwLock::new(None),
            cancellable_tokens: CancellableTokens::default(),
        }
    })
    .custom_method(proto::DriversRequest::METHOD, Backend::drivers)
    .custom_method(proto::ConnectRequest::METHOD, Backend::connect)
    .custom_method(proto::DisconnectRequest::METHOD, Backend::disconnect)
    .custom_method(proto::SessionsRequest::METHOD, Backend::sessions)
    .custom_method(proto::StatusRequest::METHOD, Backend::status)
    .custom_method(proto::RunRequest::METHOD, Backend::run)
    .custom_method(proto::InputRequest::METHOD, Backend::input)
    .custom_method(proto::CancelRequest::METHOD, Backend::cancel)
    .custom_method(proto::CancelJobRequest::METHOD, Backend::cancel_job)
    .custom_method(WorkDoneProgressCancel::METHOD, Backend::work_done_progress_cancel)
    .custom_method(proto::SyncRequest::METHOD, Backend::sync)
    .custom_method(proto::PreviewRequest::METHOD, Backend::preview)
    .custom_method(proto::ExtendRequest::METHOD, Backend::extend)
    .custom_method(proto::SnapshotRequest::METHOD, Backend::snapshot)
    .custom_method(proto::RestoreRequest::METHOD, Backend::restore)
    .custom_method(proto::ProfilesRequest::METHOD, Backend::profiles)
    .custom_method(proto::SaveProfileRequest::METHOD, Backend::save_profile)
    .custom_method(proto::DeleteProfileRequest::METHOD, Backend::delete_profile)
    .custom_method(proto::SetCredentialRequest::METHOD, Backend::set_credential)
    .custom_method(proto::DeleteCredentialRequest::METHOD, Backend::delete_credential)
    .custom_method(proto::TrustWorkspaceRequest::METHOD, Backend::trust_workspace)
    .custom_method(proto::TasksRequest::METHOD, Backend::tasks)
    .custom_method(proto::RunsRequest::METHOD, Backend::runs)
    .custom_method(proto::ResolveRequest::METHOD, Backend::resolve)
    .custom_method(proto::AcceptHostKeyRequest::METHOD, Backend::accept_host_key)
    .custom_method(proto::AllowSecretRequest::METHOD, Backend::allow_secret)
    .custom_method(proto::SettingChoicesRequest::METHOD, Backend::setting_choices)
    .custom_method(proto::KeepaliveRequest::METHOD, Backend::keepalive)
    .custom_method(proto::ResizeRequest::METHOD, Backend::resize)
    .custom_method(proto::AttachRequest::METHOD, Backend::attach)
    .custom_method(proto::TaskStartRequest::METHOD, Backend::task_start)
    .custom_method(proto::TaskStatusRequest::METHOD, Backend::task_status)
    .custom_method(proto::TaskCommitRequest::METHOD, Backend::task_commit)
    .custom_method(proto::TaskPushRequest::METHOD, Backend::task_push)
    .custom_method(proto::TaskPrRequest::METHOD, Backend::task_pr)
    .custom_method(proto::TaskListRequest::METHOD, Backend::task_list)
    .custom_method(proto::TaskEndRequest::METHOD, Backend::task_end)
    .finish()
}

/// Decodes params for request `R`, runs `handler`, and turns errors and panics into JSON-RPC errors.
async fn dispatch<R, F, Fut>(params: Value, handler: F) -> jsonrpc::Result<Value>
where
    R: Request,
    R::Params: DeserializeOwned,
    R::Result: Serialize,
    F: FnOnce(R::Params) -> Fut,
    Fut: Future<Output = Result<R::Result, Error>>,
{
    // `null` and a missing object both mean "no params" for requests that take none.
    let params = if params.is_null() { Value::Object(Default::default()) } else { params };
    let typed: R::Params = serde_json::from_value(params).map_err(|error| errors::invalid_params(R::METHOD, error))?;
    let outcome = AssertUnwindSafe(handler(typed)).catch_unwind().await;
    match outcome {
        Ok(Ok(result)) => serde_json::to_value(result)
            .map_err(|error| errors::to_jsonrpc(&Error::Internal(format!("Could not encode the result: {error}")))),
        Ok(Err(error)) => {
            tracing::debug!(method = R::METHOD, kind = error.kind().as_str(), %error, "request failed");
            Err(errors::to_jsonrpc(&error))
        }
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "no details".into());
            tracing::error!(method = R::METHOD, %detail, "a request handler panicked");
            Err(errors::to_jsonrpc(&Error::Internal(format!(
                "sandlink hit a bug while handling {}: {detail}. The server keeps running; please report this.",
                R::METHOD
            ))))
        }
    }
}

/// Runs the work of request `R` on a task of its own. A request dropped by `$/cancelRequest` (answered at once with
/// -32800) then stops the work at its next safe point, where it cleans up as a failure would (a connect removes its
/// half-made sandbox), instead of being abandoned halfway.
async fn detached<R, Fut>(
    progress: LspProgress,
    work: impl FnOnce(LspProgress) -> Fut,
) -> Result<R::Result, Error>
where
    R: Request,
    R::Result: Send + 'static,
    Fut: Future<Output = Result<R::Result, Error>> + Send + 'static,
{
    let stop_when_dropped = progress.stop_on_drop();
    let joined = tokio::spawn(work(progress)).await;
    stop_when_dropped.disarm();
    joined.unwrap_or_else(|failure| {
        let detail = match failure.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "no details".into()),
            Err(failure) => failure.to_string(),
        };
        tracing::error!(method = R::METHOD, %detail, "a request's task panicked");
        Err(Error::Internal(format!(
            "sandlink hit a bug while handling {}: {detail}. The server keeps running; please report this.",
            R::METHOD
        )))
    })
}

impl Backend {
    fn token(value: &Option<Value>) -> Option<NumberOrString> {
        value.as_ref().and_then(|token| serde_json::from_value(token.clone()).ok())
    }

    fn can_create_progress(&self) -> bool {
        self.features.read().map(|features| features.work_done_progress).unwrap_or(false)
    }

    fn workspace_root(&self) -> Option<PathBuf> {
        self.workspace_root.read().ok().and_then(|root| root.clone())
    }

    async fn drivers(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::DriversRequest, _, _>(params, |_| async {
            Ok(proto::DriversResult { drivers: self.engine.drivers().await })
        })
        .await
    }

    async fn connect(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::ConnectRequest, _, _>(params, |params| async move {
            let token = Self::token(&params.work_done_token);
            let progress = self.begin_progress(token, "sandlink: connecting").await;
            let (engine, root) = (self.engine.clone(), self.workspace_root());
            detached::<proto::ConnectRequest, _>(progress, move |progress| async move {
                let outcome = engine.connect(params, root, &progress).await;
                let summary = match &outcome {
                    Ok(session) => format!("Connected {}", session.session_id),
                    Err(error) => error.to_string(),
                };
                progress.end(Some(summary)).await;
                outcome
            })
            .await
        })
        .await
    }

    /// Progress for a job the client may stop: `$/progress` says `cancellable: true` and its token is registered
    /// for `window/workDoneProgress/cancel`.
    async fn begin_progress(&self, token: Option<NumberOrString>, title: &str) -> LspProgress {
        LspProgress::begin(&self.client, token, self.can_create_progress(), title, Some(&self.cancellable_tokens)).await
    }

    async fn cancel_job(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::CancelJobRequest, _, _>(params, |params| async move {
            self.engine.cancel_job(&params.job_id).map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn work_done_progress_cancel(&self, params: WorkDoneProgressCancelParams) {
        self.cancellable_tokens.cancel(&params.token);
    }

    async fn disconnect(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::DisconnectRequest, _, _>(params, |params| async move {
            self.engine.disconnect(params).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn sessions(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SessionsRequest, _, _>(params, |_| async {
            Ok(proto::SessionsResult { sessions: self.engine.sessions().await })
        })
        .await
    }

    async fn status(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::StatusRequest, _, _>(params, |params| async move {
            self.engine.status(&params.session_id).await
        })
        .await
    }

    async fn run(&self, params: Value) -> jsonrpc::Result<Value> {
        let mut release = None;
        let answer = dispatch::<proto::RunRequest, _, _>(params, |params| async {
            validate::run_params(&params)?;
            let (run_id, answered) = self.engine.run(params).await?;
            release = Some(answered);
            Ok(proto::RunResult { run_id })
        })
        .await;
        // Output may flow once the answer is on its way, so the client knows the run id first.
        if let Some(answered) = release {
            let _ = answered.send(());
        }
        answer
    }

    async fn attach(&self, params: Value) -> jsonrpc::Result<Value> {
        let mut release = None;
        let answer = dispatch::<proto::AttachRequest, _, _>(params, |params| async {
            let (result, answered) = self.engine.attach(params).await?;
            release = Some(answered);
            Ok(result)
        })
        .await;
        // As for `run`: output flows once the answer is on its way.
        if let Some(answered) = release {
            let _ = answered.send(());
        }
        answer
    }

    async fn input(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::InputRequest, _, _>(params, |params| async move {
            self.engine.input(&params.run_id, &params.text, params.eof).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn resize(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::ResizeRequest, _, _>(params, |params| async move {
            let size = proto::PtySize { cols: params.cols, rows: params.rows };
            self.engine.resize(&params.run_id, size).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn cancel(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::CancelRequest, _, _>(params, |params| async move {
            self.engine.cancel(&params.run_id).map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn sync(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SyncRequest, _, _>(params, |params| async move {
            validate::sync_params(&params)?;
            let token = Self::token(&params.work_done_token);
            let progress = self.begin_progress(token, "sandlink: syncing").await;
            let outcome = self.engine.sync(params, &progress).await;
            let summary = match &outcome {
                Ok(result) => format!(
                    "{} up, {} down, {} deleted, {} conflict(s)",
                    result.uploaded,
                    result.downloaded,
                    result.deleted,
                    result.conflicts.len()
                ),
                Err(error) => error.to_string(),
            };
            progress.end(Some(summary)).await;
            outcome
        })
        .await
    }

    async fn preview(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::PreviewRequest, _, _>(params, |params| async move {
            let url = self.engine.preview(&params.session_id, params.port).await?;
            Ok(proto::PreviewResult { url })
        })
        .await
    }

    async fn extend(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::ExtendRequest, _, _>(params, |params| async move {
            let expires_at = self.engine.extend_with(params).await?;
            Ok(proto::ExtendResult { expires_at })
        })
        .await
    }

    async fn snapshot(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SnapshotRequest, _, _>(params, |params| async move {
            let snapshot_id = self.engine.snapshot(&params.session_id, params.name).await?;
            let note = self.engine.snapshot_note(&params.session_id);
            Ok(proto::SnapshotResult { snapshot_id, note })
        })
        .await
    }

    async fn restore(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::RestoreRequest, _, _>(params, |params| async move {
            let progress = self.begin_progress(None, "sandlink: restoring").await;
            let (engine, root) = (self.engine.clone(), self.workspace_root());
            detached::<proto::RestoreRequest, _>(progress, move |progress| async move {
                let outcome = engine.restore(params, root, &progress).await;
                let summary = match &outcome {
                    Ok(session) => format!("Restored {}", session.session_id),
                    Err(error) => error.to_string(),
                };
                progress.end(Some(summary)).await;
                outcome
            })
            .await
        })
        .await
    }

    /// The workspace a request names, else the server's root.
    fn workspace_or_root(&self, folder: &Option<String>) -> Result<Option<PathBuf>, Error> {
        match folder {
            Some(folder) => crate::paths::path_from_uri_or_path(folder).map(Some),
            None => Ok(self.workspace_root()),
        }
    }

    async fn profiles(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::ProfilesRequest, _, _>(params, |params| async move {
            let workspace = self.workspace_or_root(&params.workspace_folder)?;
            self.engine.profiles(workspace).await
        })
        .await
    }

    async fn resolve(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::ResolveRequest, _, _>(params, |params| async move {
            self.engine.resolve(params, &crate::progress::NoProgress).await
        })
        .await
    }

    async fn allow_secret(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::AllowSecretRequest, _, _>(params, |params| async move {
            self.engine.allow_secret(params, &crate::progress::NoProgress).await
        })
        .await
    }

    async fn setting_choices(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SettingChoicesRequest, _, _>(params, |params| async move {
            self.engine.setting_choices(params).await
        })
        .await
    }

    async fn runs(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::RunsRequest, _, _>(params, |params| async move {
            if let Some(session_id) = &params.session_id {
                // A kept session's detached runs are listed before (and without) re-attaching it.
                if !self.engine.has_detached_runs(session_id) {
                    self.engine.session(session_id)?;
                }
            }
            Ok(self.engine.list_runs(params.session_id.as_deref()))
        })
        .await
    }

    async fn keepalive(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::KeepaliveRequest, _, _>(params, |params| async move {
            self.engine.keepalive(&params.session_id).map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn tasks(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TasksRequest, _, _>(params, |params| async move {
            let workspace = self.workspace_or_root(&params.workspace_folder)?;
            self.engine.tasks(workspace).await
        })
        .await
    }

    async fn save_profile(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SaveProfileRequest, _, _>(params, |params| async move {
            self.engine.save_profile(params).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn delete_profile(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::DeleteProfileRequest, _, _>(params, |params| async move {
            self.engine.delete_profile(&params.name, self.workspace_root()).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn set_credential(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::SetCredentialRequest, _, _>(params, |params| async move {
            let proto::SetCredentialParams { profile, key, value } = params;
            let secret = crate::credentials::Secret::new(value);
            let workspace = self.workspace_root();
            self.engine.set_credential(&profile, &key, secret, workspace.as_deref()).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn delete_credential(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::DeleteCredentialRequest, _, _>(params, |params| async move {
            let workspace = self.workspace_root();
            self.engine
                .delete_credential(&params.profile, &params.key, workspace.as_deref())
                .await
                .map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn trust_workspace(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TrustWorkspaceRequest, _, _>(params, |params| async move {
            let workspace = self.workspace_or_root(&params.workspace_folder)?.ok_or_else(|| {
                Error::InvalidParams("Name the workspace folder to trust; this server has no workspace root.".into())
            })?;
            self.engine.trust_workspace(workspace, params.trust, params.fingerprint).await.map(|()| proto::EmptyResult {})
        })
        .await
    }

    async fn accept_host_key(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::AcceptHostKeyRequest, _, _>(params, |params| async move {
            self.engine.accept_host_key(&params.host, &params.fingerprint, params.config_file.as_deref()).await
        })
        .await
    }

    async fn task_start(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskStartRequest, _, _>(params, |params| async move {
            let token = Self::token(&params.work_done_token);
            let progress = self.begin_progress(token, "sandlink: starting a task").await;
            let (engine, root) = (self.engine.clone(), self.workspace_root());
            detached::<proto::TaskStartRequest, _>(progress, move |progress| async move {
                let outcome = crate::agent_tasks::start(&engine, params, root, &progress).await;
                let summary = match &outcome {
                    Ok(task) => format!("Task {} is ready on {}", task.task_id, task.branch),
                    Err(error) => error.to_string(),
                };
                progress.end(Some(summary)).await;
                outcome
            })
            .await
        })
        .await
    }

    async fn task_status(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskStatusRequest, _, _>(params, |params| async move {
            crate::agent_tasks::status(&self.engine, &params.task_id).await
        })
        .await
    }

    async fn task_commit(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskCommitRequest, _, _>(params, |params| async move {
            crate::agent_tasks::commit(&self.engine, params).await
        })
        .await
    }

    async fn task_push(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskPushRequest, _, _>(params, |params| async move {
            crate::agent_tasks::push(&self.engine, &params.task_id).await
        })
        .await
    }

    async fn task_pr(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskPrRequest, _, _>(params, |params| async move {
            crate::agent_tasks::pull_request(&self.engine, params).await
        })
        .await
    }

    async fn task_list(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskListRequest, _, _>(params, |_| async move { crate::agent_tasks::list(&self.engine).await })
            .await
    }

    async fn task_end(&self, params: Value) -> jsonrpc::Result<Value> {
        dispatch::<proto::TaskEndRequest, _, _>(params, |params| async move {
            crate::agent_tasks::end(&self.engine, params).await
        })
        .await
    }

    /// `workspace/executeCommand`: the same requests for clients without custom-request support.
    async fn execute(&self, command: &str, argument: Value) -> jsonrpc::Result<Value> {
        match command {
            commands::CONNECT => self.connect(argument).await,
            commands::DISCONNECT => self.disconnect(argument).await,
            commands::RUN => self.run(argument).await,
            commands::CANCEL => self.cancel(argument).await,
            commands::SYNC => self.sync(argument).await,
            commands::STATUS => self.status(argument).await,
            commands::EXTEND => self.extend(argument).await,
            commands::PREVIEW => {
                let answer = self.preview(argument).await?;
                if let Some(url) = answer.get("url").and_then(Value::as_str) {
                    self.events.open_url(url, "preview").await;
                }
                Ok(answer)
            }
            other => Err(errors::to_jsonrpc(&Error::InvalidParams(format!(
                "There is no command \"{other}\". The commands are: {}.",
                commands::ALL.join(", ")
            )))),
        }
    }
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> jsonrpc::Result<InitializeResult> {
        let notifications = params
            .capabilities
            .experimental
            .as_ref()
            .and_then(|experimental| experimental.pointer("/sandlink/notifications"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let window = params.capabilities.window.as_ref();
        let features = ClientFeatures {
            notifications,
            work_done_progress: window.and_then(|window| window.work_done_progress).unwrap_or(false),
            show_document: window
                .and_then(|window| window.show_document.as_ref())
                .is_some_and(|show_document| show_document.support),
        };
        if let Ok(mut slot) = self.features.write() {
            *slot = features;
        }
        if let Some(level) = params
            .initialization_options
            .as_ref()
            .and_then(|options| options.get("logLevel"))
            .and_then(Value::as_str)
        {
            crate::logging::set_level(level);
        }
        #[allow(deprecated)] // `root_uri` is still what older clients (Neovim 0.7) send.
        let root = params
            .workspace_folders
            .as_ref()
            .and_then(|folders| folders.first())
            .map(|folder| folder.uri.clone())
            .or(params.root_uri.clone())
            .and_then(|uri| uri.to_file_path().map(|path| path.into_owned()));
        if let Ok(mut slot) = self.workspace_root.write() {
            *slot = root;
        }
        let experimental = proto::ServerExperimental {
            version: proto::PROTOCOL_VERSION,
            drivers: self.engine.drivers_at_start().await,
        };
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
                    open_close: Some(false),
                    change: Some(TextDocumentSyncKind::NONE),
                    will_save: None,
                    will_save_wait_until: None,
                    save: Some(TextDocumentSyncSaveOptions::SaveOptions(SaveOptions { include_text: Some(false) })),
                })),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: commands::ALL.iter().map(|command| command.to_string()).collect(),
                    work_done_progress_options: Default::default(),
                }),
                experimental: Some(serde_json::json!({ "sandlink": experimental })),
                code_action_provider: Some(CodeActionProviderCapability::Options(CodeActionOptions {
                    code_action_kinds: Some(vec![code_actions::action_kind()]),
                    work_done_progress_options: Default::default(),
                    resolve_provider: Some(false),
                })),
                code_lens_provider: Some(CodeLensOptions { resolve_provider: Some(false) }),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo { name: "sandlink".into(), version: Some(env!("CARGO_PKG_VERSION").into()) }),
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        tracing::info!("client initialized");
    }

    async fn shutdown(&self) -> jsonrpc::Result<()> {
        self.engine.disconnect_all().await;
        Ok(())
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        // Registered before any await, so a `sandlink/run` sent right after the save finds it pending and waits.
        match params.text_document.uri.to_file_path() {
            Some(path) => {
                self.engine.saved(&path);
                self.engine.note_activity(&path);
            }
            None => tracing::debug!(uri = params.text_document.uri.as_str(), "saved a document that is not a file"),
        }
    }

    async fn code_action(&self, params: CodeActionParams) -> jsonrpc::Result<Option<CodeActionResponse>> {
        if !code_actions::kind_is_wanted(params.context.only.as_deref()) {
            return Ok(None);
        }
        let Some(document) = params.text_document.uri.to_file_path().map(|path| path.into_owned()) else {
            return Ok(None);
        };
        let drivers = self.engine.drivers().await;
        let root = self.workspace_root();
        Ok(Some(code_actions::actions_for(&self.engine, &drivers, &document, root.as_deref())))
    }

    async fn code_lens(&self, params: CodeLensParams) -> jsonrpc::Result<Option<Vec<CodeLens>>> {
        let Some(document) = params.text_document.uri.to_file_path().map(|path| path.into_owned()) else {
            return Ok(None);
        };
        let drivers = self.engine.drivers().await;
        let root = self.workspace_root();
        Ok(Some(vec![code_actions::lens_for(&self.engine, &drivers, &document, root.as_deref())]))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> jsonrpc::Result<Option<Value>> {
        let argument = params.arguments.into_iter().next().unwrap_or(Value::Null);
        self.execute(&params.command, argument).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_should_become_an_internal_error_response() {
        let answer = dispatch::<proto::DriversRequest, _, _>(serde_json::json!({}), |_| async {
            if true {
                panic!("boom in a handler");
            }
            Ok(proto::DriversResult { drivers: Vec::new() })
        })
        .await;
        let error = answer.expect_err("a panic is an error, not a dead server");
        assert_eq!(error.code, jsonrpc::ErrorCode::InternalError);
        assert_eq!(error.data.as_ref().and_then(|data| data.get("kind")), Some(&serde_json::json!("internal")));
        assert!(error.message.contains("boom in a handler") && error.message.contains("keeps running"));
    }

    #[tokio::test]
    async fn params_of_the_wrong_shape_should_name_the_method_and_field() {
        let answer = dispatch::<proto::RunRequest, _, _>(serde_json::json!({ "command": "true" }), |_| async {
            Ok(proto::RunResult { run_id: String::new() })
        })
        .await;
        let error = answer.expect_err("a missing field is refused");
        assert_eq!(error.code, jsonrpc::ErrorCode::InvalidParams);
        assert!(error.message.contains("sandlink/run") && error.message.contains("sessionId"), "{}", error.message);
    }
}
