//! Delivers engine events to the editor: custom notifications for clients that asked for them, standard LSP otherwise.

use std::sync::{Arc, RwLock};

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
            self.client
                .show_message(
                    MessageType::WARNING,
                    format!(
                        "sandlink: session {} expires in {} s; run the sandlink.extend command to keep it.",
                        params.session_id, params.seconds_left
                    ),
                )
                .await;
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

/// `$/progress` for one piece of long work, created on the client when it supports it.
pub struct LspProgress {
    client: Client,
    token: Option<NumberOrString>,
}

impl LspProgress {
    /// Starts progress under the client's token, or a server-created one when the client allows it.
    pub async fn begin(client: &Client, token: Option<NumberOrString>, can_create: bool, title: &str) -> Self {
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
        if let Some(token) = &token {
            let begin = WorkDoneProgress::Begin(WorkDoneProgressBegin {
                title: title.to_string(),
                cancellable: Some(false),
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
        LspProgress { client: client.clone(), token }
    }

    pub async fn end(self, message: Option<String>) {
        if let Some(token) = self.token {
            let end = WorkDoneProgress::End(WorkDoneProgressEnd { message });
            self.client
                .send_notification::<ProgressNotification>(ProgressParams { token, value: ProgressParamsValue::WorkDone(end) })
                .await;
        }
    }
}

#[async_trait]
impl crate::progress::Progress for LspProgress {
    async fn report(&self, message: String, percentage: Option<u32>) {
        if let Some(token) = &self.token {
            let report = WorkDoneProgress::Report(WorkDoneProgressReport {
                cancellable: Some(false),
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
}
