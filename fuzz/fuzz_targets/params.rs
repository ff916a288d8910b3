//! Fuzzes the params of every sandlink request and notification: decoded from arbitrary JSON the way the LSP layer
//! decodes them, then through the pure validation the engine applies (settings, sync options, names). Nothing may
//! panic, a refusal is always `invalidParams`-shaped, and whatever decodes survives a serialise/decode round trip.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandlink::protocol::{self as proto, ErrorKind};
use sandlink::sync::SyncOptions;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    static COVERS_EVERY_METHOD: OnceLock<()> = OnceLock::new();
    COVERS_EVERY_METHOD.get_or_init(check_every_method_is_covered);
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    every_request(&value);
});

thread_local! {
    /// The methods `every_request` decoded for, recorded so a method added to the protocol cannot go unfuzzed.
    static DECODED: std::cell::RefCell<std::collections::BTreeSet<&'static str>> = Default::default();
}

fn check_every_method_is_covered() {
    every_request(&Value::Null);
    let decoded = DECODED.with(|decoded| decoded.borrow().clone());
    let declared: std::collections::BTreeSet<&str> =
        proto::REQUEST_METHODS.iter().chain(proto::NOTIFICATION_METHODS).copied().collect();
    let missing: Vec<&&str> = declared.difference(&decoded).collect();
    assert!(missing.is_empty(), "every_request does not decode the params of {missing:?}; add them");
}

/// Runs one JSON value through the decoder of every method, as if each had received it.
fn every_request(value: &Value) {
    decode::<proto::DriversRequest>(value);
    if let Some(params) = decode::<proto::ConnectRequest>(value) {
        validate_connect(&params);
    }
    decode::<proto::DisconnectRequest>(value);
    decode::<proto::SessionsRequest>(value);
    if let Some(params) = decode::<proto::StatusRequest>(value) {
        expect_only_invalid_params(sandlink::credentials::check_name("session id", &params.session_id));
    }
    decode::<proto::RunRequest>(value);
    decode::<proto::InputRequest>(value);
    decode::<proto::CancelRequest>(value);
    decode::<proto::CancelJobRequest>(value);
    decode::<proto::SyncRequest>(value);
    decode::<proto::PreviewRequest>(value);
    decode::<proto::ExtendRequest>(value);
    decode::<proto::SnapshotRequest>(value);
    decode::<proto::RestoreRequest>(value);
    decode::<proto::ProfilesRequest>(value);
    if let Some(params) = decode::<proto::SaveProfileRequest>(value) {
        expect_only_invalid_params(sandlink::credentials::check_name("profile name", &params.name));
    }
    if let Some(params) = decode::<proto::DeleteProfileRequest>(value) {
        expect_only_invalid_params(sandlink::credentials::check_name("profile name", &params.name));
    }
    decode::<proto::SetCredentialRequest>(value);
    decode::<proto::DeleteCredentialRequest>(value);
    decode::<proto::TrustWorkspaceRequest>(value);
    decode::<proto::AcceptHostKeyRequest>(value);
    decode::<proto::ResolveRequest>(value);
    decode::<proto::RunsRequest>(value);
    decode::<proto::TasksRequest>(value);
    decode::<proto::AllowSecretRequest>(value);
    decode::<proto::SettingChoicesRequest>(value);
    decode::<proto::KeepaliveRequest>(value);
    decode::<proto::ResizeRequest>(value);
    decode::<proto::AttachRequest>(value);
    if let Some(params) = decode::<proto::TaskStartRequest>(value) {
        expect_only_invalid_params(sandlink::credentials::check_name("task id", &params.task_id));
    }
    decode::<proto::TaskStatusRequest>(value);
    if let Some(params) = decode::<proto::TaskCommitRequest>(value) {
        expect_only_invalid_params(sandlink::agent_tasks::conventional::check(&params.message));
    }
    decode::<proto::TaskPushRequest>(value);
    decode::<proto::TaskPrRequest>(value);
    decode::<proto::TaskListRequest>(value);
    decode::<proto::TaskEndRequest>(value);
    notification::<proto::OutputNotification>(value);
    notification::<proto::ExitNotification>(value);
    notification::<proto::SessionStateNotification>(value);
    notification::<proto::SyncStateNotification>(value);
    notification::<proto::PreviewReadyNotification>(value);
    notification::<proto::TimeoutWarningNotification>(value);
}

/// Decodes request params exactly as `lsp::dispatch` does (`null` means no params), and checks the refusal's shape
/// and the round trip of what was accepted.
fn decode<R>(value: &Value) -> Option<R::Params>
where
    R: tower_lsp_server::ls_types::request::Request,
    R::Params: DeserializeOwned + Serialize,
{
    DECODED.with(|decoded| decoded.borrow_mut().insert(R::METHOD));
    let params = if value.is_null() { Value::Object(Default::default()) } else { value.clone() };
    match serde_json::from_value::<R::Params>(params) {
        Ok(typed) => {
            round_trip::<R::Params>(&typed, R::METHOD);
            Some(typed)
        }
        Err(error) => {
            let refusal = sandlink::lsp::errors::invalid_params(R::METHOD, error);
            let kind = refusal.data.as_ref().and_then(|data| data.get("kind")).and_then(Value::as_str);
            assert_eq!(kind, Some(ErrorKind::InvalidParams.as_str()), "{}: {refusal:?}", R::METHOD);
            None
        }
    }
}

fn notification<N>(value: &Value)
where
    N: tower_lsp_server::ls_types::notification::Notification,
    N::Params: DeserializeOwned + Serialize,
{
    DECODED.with(|decoded| decoded.borrow_mut().insert(N::METHOD));
    if let Ok(typed) = serde_json::from_value::<N::Params>(value.clone()) {
        round_trip::<N::Params>(&typed, N::METHOD);
    }
}

/// What decoded once serialises, decodes again, and then serialises to the same JSON (no field is lost or changes
/// meaning on the way, so a client echoing a value back sends what it was given).
fn round_trip<P: DeserializeOwned + Serialize>(typed: &P, method: &str) {
    let first = serde_json::to_value(typed).unwrap_or_else(|error| panic!("{method}: accepted params do not serialise: {error}"));
    let again: P = serde_json::from_value(first.clone())
        .unwrap_or_else(|error| panic!("{method}: serialised params do not decode again: {error}\n{first}"));
    let second = serde_json::to_value(&again).unwrap_or_else(|error| panic!("{method}: {error}"));
    assert_eq!(first, second, "{method}: params change on a round trip");
}

/// The engine's checks of a connect that need no I/O: secrets in settings, each driver's settings schema, the sync
/// options. Every refusal must be a user-facing error, never a panic.
fn validate_connect(params: &proto::ConnectParams) {
    static DRIVERS: OnceLock<Vec<std::sync::Arc<dyn sandlink::drivers::Driver>>> = OnceLock::new();
    let drivers = DRIVERS.get_or_init(sandlink::drivers::registry);
    let Some(settings) = &params.settings else { return };
    let keys: Vec<&str> = drivers.iter().flat_map(|driver| driver.credential_keys().iter().map(|spec| spec.key)).collect();
    let _ = sandlink::profiles::refuse_secrets("fuzz", settings, &keys, "the connect settings");
    for driver in drivers {
        let _ = driver.validate_settings(settings);
    }
    if let Ok(options) = SyncOptions::from_settings(settings) {
        // An accepted interval must be usable (Duration::from_secs_f64 panics on some values).
        let _ = options.poll_interval();
    }
}

fn expect_only_invalid_params(outcome: sandlink::error::Result<()>) {
    if let Err(error) = outcome {
        assert_eq!(error.kind(), ErrorKind::InvalidParams, "{error}");
    }
}
