//! Delivers engine events to the editor: custom notifications for clients that asked for them, standard LSP otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tower_lsp_server::ls_types::notification::{Progress as ProgressNotification};
use tower_lsp_server::ls_types::request::WorkDoneProgressCreate;
use tower_lsp_server::ls_types::{
    MessageType, NumberOrString, ProgressParams, ProgressParamsValue, ShowDocumentParams, Uri, WorkDoneProgress,
    WorkDoneProgressBegin, WorkDoneProgressCreateParams, WorkDoneProgressEnd, WorkDoneProgressReport,
};
use tower_lsp_server::Client;

use crate::engine::Events;
use crate::protocol::{
    ExitNotification, ExitParams, OutputNotification, OutputParams, OutputStream, PreviewReadyNotification,
    PreviewReadyParams, SessionState, SessionStateNotification, SessionStateParams, SyncStateNotification,
    SyncStateParams, TimeoutWarningNotification, TimeoutWarningParams,
};

/// What the client said it can do in `initialize`.
#[derive(Debug, Clone, Default)]
pub struct ClientFeatures {
    /// `experimental.sandlink.notifications`: the client renders the custom notifications.
    pub notifications: bool,
    pub work_done_progress: bool,
    pub show_document: bool,
}

/// The engine's `Events`, delivered over LSP.
pub struct LspEvents {
    pub client: Client,
    pub features: Arc<RwLock<ClientFeatures>>,
}

impl LspEvents {
    fn features(&self) -> ClientFeatures {
        self.features.read().map(|features| features.clone()).unwrap_or_default()
    }

    /// Opens a URL in the client's browser when it can, else shows it.
    pub async fn open_url(&self, url: &str, title: &str) {
        if self.features().show_document {
            if let Ok(uri) = url.parse::<Uri>() {
                let params = ShowDocumentParams { uri, external: Some(true), take_focus: None, selection: None };
                if matches!(self.client.show_document(params).await, Ok(true)) {
                    return;
                }
            }
        }
        self.client.show_message(MessageType::INFO, format!("sandlink: {title}: {url}")).await;
    }
}

#[async_trait]
impl Events for LspEvents {
    async fn output(&self, params: OutputParams) {
        if self.features().notifications {
            self.client.send_notification::<OutputNotification>(params).await;
        } else {
            let kind = match params.stream {
                OutputStream::Stdout => MessageType::LOG,
                OutputStream::Stderr => MessageType::INFO,
            };
            self.client.log_message(kind, params.text).await;
        }
    }

    async fn exit(&self, params: ExitParams) {
        if self.features().notifications {
            self.client.send_notification::<ExitNotification>(params).await;
            return;
        }
        let outcome = describe_exit(&params);
        self.client.log_message(MessageType::LOG, format!("[sandlink] {outcome}")).await;
        let kind = if params.exit_code == Some(0) { MessageType::INFO } else { MessageType::WARNING };
        self.client.show_message(kind, format!("sandlink: {outcome}")).await;
    }

    async fn session_state(&self, params: SessionStateParams) {
        if self.features().notifications {
            self.client.send_notification::<SessionStateNotification>(params).await;
            return;
        }
        // Plain clients show every message as a pop-up, so only the transitions a user acts on are shown.
        let kind = match params.state {
            SessionState::Active | SessionState::Disconnected => MessageType::INFO,
            SessionState::Error | SessionState::Expired => MessageType::ERROR,
            SessionState::Connecting | SessionState::Syncing => return,
        };
        let mut text = format!("sandlink: session {} is {}", params.session_id, params.state.as_str());
        if let Some(message) = params.message {
            text.push_str(": ");
            text.push_str(&message);
        }
        self.client.show_message(kind, text).await;
    }

    async fn sync_state(&self, params: SyncStateParams) {
        if self.features().notifications {
            self.client.send_notification::<SyncStateNotification>(params).await;
        } else if !params.state.conflicts.is_empty() {
            let paths: Vec<&str> = params.state.conflicts.iter().map(|conflict| conflict.path.as_str()).collect();
            self.client
                .show_message(
                    MessageType::WARNING,
                    format!(
                        "sandlink: {} file(s) changed both locally and in the sandbox and were left untouched: {}",
                        paths.len(),
                        paths.join(", ")
                    ),
                )
                .await;
        }
    }

    async fn preview_ready(&self, params: PreviewReadyParams) {
        if self.features().notifications {
            self.client.send_notification::<PreviewReadyNotification>(params).await;
        } else {
            self.client
                .show_message(MessageType::INFO, format!("sandlink: port {} is at {}", params.port, params.url))
                .await;
        }
    }

    async fn timeout_warning(&self, params: TimeoutWarningParams) {
        if self.features().notifications {
            self.client.send_notification::<TimeoutWarningNotification>(params).await;
        } else {
            let message = match (params.reason, &params.run_id) {
                (Some(crate::protocol::LimitReason::RunLimit), Some(run_id)) => format!(
                    "sandlink: run {run_id} reaches its time limit in {} s and will then be stopped; extend it with \
                     sandlink/extend (reason \"runLimit\") to let it go on.",
                    params.seconds_left
                ),
                _ => format!(
                    "sandlink: session {} expires in {} s; run the sandlink.extend command to keep it.",
                    params.session_id, params.seconds_left
                ),
            };
            self.client.show_message(MessageType::WARNING, message).await;
        }
    }
}

/// A one-line summary of how a run ended, for people.
pub fn describe_exit(params: &ExitParams) -> String {
    let seconds = params.duration_ms as f64 / 1000.0;
    let how = if params.timed_out {
        "timed out".to_string()
    } else if params.cancelled {
        "was cancelled".to_string()
    } else if let Some(code) = params.exit_code {
        format!("exited with code {code}")
    } else if let Some(signal) = &params.signal {
        format!("was killed by {signal}")
    } else {
        "ended".to_string()
    };
    let mut line = format!("run {} {how} after {seconds:.1} s", params.run_id);
    if let Some(message) = &params.message {
        line.push_str(&format!(" ({message})"));
    }
    line
}

/// The progress tokens of work the client may stop with `window/workDoneProgress/cancel`, each with the flag that
/// work watches (through `Progress::cancelled`).
#[derive(Clone, Default)]
pub struct CancellableTokens(Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>);

impl CancellableTokens {
    /// Tokens are numbers or strings; their JSON text tells `1` from `"1"`.
    fn key(token: &NumberOrString) -> String {
        serde_json::to_string(token).unwrap_or_default()
    }

    /// Stops the work reporting under `token`; a token of work that already ended is ignored, as LSP says.
    pub fn cancel(&self, token: &NumberOrString) {
        match crate::locks::lock(&self.0).get(&Self::key(token)) {
            Some(stop) => stop.store(true, Ordering::SeqCst),
            None => tracing::debug!(?token, "the client cancelled progress that is not in flight"),
        }
    }
}

/// `$/progress` for one piece of long work, created on the client when it supports it. It is also how the work learns
/// that the client wants it stopped: its token was cancelled, or its request was dropped (`$/cancelRequest`).
pub struct LspProgress {
    client: Client,
    token: Option<NumberOrString>,
    /// Where the token is registered while the work can be cancelled; `None` for work that cannot stop.
    cancellable: Option<CancellableTokens>,
    stop: Arc<AtomicBool>,
}

impl LspProgress {
    /// Starts progress under the client's token, or a server-created one when the client allows it. With
    /// `cancellable`, the progress says `cancellable: true` and its token is registered there until the end.
    pub async fn begin(
        client: &Client,
        token: Option<NumberOrString>,
        can_create: bool,
        title: &str,
        cancellable: Option<&CancellableTokens>,
    ) -> Self {
        let token = match token {
            Some(token) => Some(token),
            None if can_create => {
                let token = NumberOrString::String(format!("sandlink-{}", crate::ids::short_id()));
                let created = client
                    .send_request::<WorkDoneProgressCreate>(WorkDoneProgressCreateParams { token: token.clone() })
                    .await;
                created.ok().map(|()| token)
            }
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        if let (Some(token), Some(tokens)) = (&token, cancellable) {
            crate::locks::lock(&tokens.0).insert(CancellableTokens::key(token), stop.clone());
        }
        if let Some(token) = &token {
            let begin = WorkDoneProgress::Begin(WorkDoneProgressBegin {
                title: title.to_string(),
                cancellable: Some(cancellable.is_some()),
                message: None,
                percentage: None,
            });
            client
                .send_notification::<ProgressNotification>(ProgressParams {
                    token: token.clone(),
                    value: ProgressParamsValue::WorkDone(begin),
                })
                .await;
        }
        LspProgress { client: client.clone(), token, cancellable: cancellable.cloned(), stop }
    }

    /// A guard that stops the work when dropped before `disarm`: held by a request whose work runs on a task of its
    /// own, so a request dropped by `$/cancelRequest` stops the work at its next safe point instead of abandoning it.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(Some(self.stop.clone()))
    }

    pub async fn end(self, message: Option<String>) {
        if let Some(token) = &self.token {
            let end = WorkDoneProgress::End(WorkDoneProgressEnd { message });
            self.client
                .send_notification::<ProgressNotification>(ProgressParams {
                    token: token.clone(),
                    value: ProgressParamsValue::WorkDone(end),
                })
                .await;
        }
    }
}

impl Drop for LspProgress {
    fn drop(&mut self) {
        if let (Some(token), Some(tokens)) = (&self.token, &self.cancellable) {
            crate::locks::lock(&tokens.0).remove(&CancellableTokens::key(token));
        }
    }
}

/// See `LspProgress::stop_on_drop`.
pub struct StopOnDrop(Option<Arc<AtomicBool>>);

impl StopOnDrop {
    /// The request got its answer: nothing to stop.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl crate::progress::Progress for LspProgress {
    async fn report(&self, message: String, percentage: Option<u32>) {
        if let Some(token) = &self.token {
            let report = WorkDoneProgress::Report(WorkDoneProgressReport {
                cancellable: Some(self.cancellable.is_some()),
                message: Some(message),
                percentage,
            });
            self.client
                .send_notification::<ProgressNotification>(ProgressParams {
                    token: token.clone(),
                    value: ProgressParamsValue::WorkDone(report),
                })
                .await;
        }
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
