//! The one place engine errors become JSON-RPC errors with `data.kind`.

use serde_json::json;
use tower_lsp_server::jsonrpc;

use crate::error::Error;
use crate::protocol::ErrorKind;

/// Application error codes start here, inside JSON-RPC's server-error range.
const SERVER_ERROR_BASE: i64 = -32000;

pub fn to_jsonrpc(error: &Error) -> jsonrpc::Error {
    let kind = error.kind();
    let code = match kind {
        ErrorKind::InvalidParams => jsonrpc::ErrorCode::InvalidParams,
        ErrorKind::Internal => jsonrpc::ErrorCode::InternalError,
        other => jsonrpc::ErrorCode::ServerError(SERVER_ERROR_BASE - other as i64),
    };
    let mut data = json!({ "kind": kind.as_str() });
    match error {
        Error::Remote { status: Some(status), .. } => data["status"] = json!(status),
        Error::DriverUnavailable { driver, .. } => data["driver"] = json!(driver),
        Error::WorkspaceNotTrusted { fingerprint: Some(fingerprint), .. } => data["fingerprint"] = json!(fingerprint),
        Error::HostKeyUnknown { host, fingerprint, .. } | Error::HostKeyChanged { host, fingerprint, .. } => {
            data["host"] = json!(host);
            data["fingerprint"] = json!(fingerprint);
        }
        Error::Conflict { files, .. } => data["files"] = json!(files),
        _ => {}
    }
    jsonrpc::Error { code, message: error.to_string().into(), data: Some(data) }
}

/// Params that do not match the method's shape: the serde message names the field.
pub fn invalid_params(method: &str, detail: impl std::fmt::Display) -> jsonrpc::Error {
    to_jsonrpc(&Error::InvalidParams(format!("Invalid params for {method}: {detail}.")))
}

/// A method this server does not implement (JSON-RPC -32601).
pub fn unknown_method(method: &str) -> jsonrpc::Error {
    jsonrpc::Error {
        code: jsonrpc::ErrorCode::MethodNotFound,
        message: format!(
            "sandlink does not know the method \"{method}\". The custom methods are listed in sandlink's docs/protocol.md."
        )
        .into(),
        data: Some(json!({ "kind": ErrorKind::UnknownMethod.as_str(), "method": method })),
    }
}
