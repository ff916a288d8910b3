//! A driver for testing credential plumbing through the real binary before the cloud drivers land: a local
//! sandbox that refuses to connect without its credential. Registered only when `SANDLINK_TEST_DRIVERS=1`.
//!
//! It proves the credential arrived unchanged without ever printing it: the profile's `expectedTokenHash` setting
//! holds the BLAKE3 hash of the value the test stored, and connect fails with `credentialsMissing` on a mismatch.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{ConnectRequest, CredentialSpec, ReattachRequest, Sandbox, SettingKind, SettingSpec};
use crate::error::{Error, Result};
use crate::protocol::DriverInfo;

const CREDENTIALS: &[CredentialSpec] = &[CredentialSpec {
    key: "token",
    env_var: "SANDLINK_KEYED_TOKEN",
    required: true,
    description: "test token",
}];

const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "expectedTokenHash",
        kind: SettingKind::String,
        required: true,
        default: None,
        description: "the BLAKE3 hash of the token the test stored",
    },
    SettingSpec {
        key: "remote",
        kind: SettingKind::Bool,
        required: false,
        default: Some("false"),
        description: "behave like a driver that sends the workspace elsewhere (for trust tests)",
    },
];

/// The `keyed` test driver: the local driver plus a required credential.
pub struct Keyed {
    local: super::local::Driver,
}

impl Keyed {
    pub fn new() -> Self {
        Keyed { local: super::local::Driver::new() }
    }

    /// Registered only in tests, so users never see it.
    pub fn enabled() -> bool {
        std::env::var("SANDLINK_TEST_DRIVERS").is_ok_and(|value| value == "1")
    }
}

impl Default for Keyed {
    fn default() -> Self {
        Self::new()
    }
}

fn check_token(request: &ConnectRequest) -> Result<()> {
    let token = request
        .credentials
        .get("token")
        .ok_or_else(|| Error::CredentialsMissing("The keyed driver got no token.".into()))?;
    let expected = request.settings.get("expectedTokenHash").and_then(Value::as_str).unwrap_or_default();
    if blake3::hash(token.expose().as_bytes()).to_hex().as_str() != expected {
        return Err(Error::CredentialsMissing("The keyed driver got a token that does not match.".into()));
    }
    Ok(())
}

fn without_own_settings(request: &ConnectRequest) -> ConnectRequest {
    let mut local = request.clone();
    local.settings.retain(|key, _| !SETTINGS.iter().any(|spec| spec.key == key));
    local
}

#[async_trait]
impl super::Driver for Keyed {
    fn id(&self) -> &'static str {
        "keyed"
    }

    async fn info(&self) -> DriverInfo {
        let mut info = super::Driver::info(&self.local).await;
        info.id = self.id().into();
        info.detail = Some("test driver: a local sandbox that needs a credential".into());
        info
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        check_token(&request)?;
        super::Driver::connect(&self.local, without_own_settings(&request)).await
    }

    fn settings_schema(&self) -> &'static [SettingSpec] {
        SETTINGS
    }

    fn asked_at_connect(&self) -> &'static [&'static str] {
        // So the editors' connect flow (ask for a setting, then for a missing key) can be tried end to end.
        &["expectedTokenHash"]
    }

    fn credential_keys(&self) -> &'static [CredentialSpec] {
        CREDENTIALS
    }

    fn sends_workspace_elsewhere(&self, settings: &Map<String, Value>) -> bool {
        settings.get("remote").and_then(Value::as_bool).unwrap_or(false)
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        super::Driver::sandbox_exists(&self.local, request).await
    }

    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        check_token(&request.connect)?;
        super::Driver::reattach(&self.local, request).await
    }
}
