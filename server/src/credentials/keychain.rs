//! The OS keychain through `keyring-core`: the Secret Service on Linux, Keychain on macOS, Credential Manager on
//! Windows. Entries are service `sandlink`, user `<profile>/<key>`.
//!
//! Every call runs on a blocking thread (the stores make synchronous D-Bus or system calls). A store that could
//! not be opened is not cached, so starting the keychain daemon later works without restarting sandlink.

use std::sync::{Arc, Mutex};

use keyring_core::CredentialStore;

use super::Secret;
use crate::error::Error;

/// The keychain service name all sandlink entries share.
const SERVICE: &str = "sandlink";

/// The store, once it opened; guarded by a lock that is only taken on blocking threads.
static STORE: Mutex<Option<Arc<CredentialStore>>> = Mutex::new(None);

/// Why the keychain cannot be used, as the end of a sentence a person can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<Unavailable> for Error {
    fn from(unavailable: Unavailable) -> Self {
        Error::KeychainUnavailable(unavailable.0)
    }
}

fn open_store() -> std::result::Result<Arc<CredentialStore>, Unavailable> {
    let mut slot = crate::locks::lock(&STORE);
    if let Some(store) = slot.as_ref() {
        return Ok(store.clone());
    }
    let store = platform_store()?;
    *slot = Some(store.clone());
    Ok(store)
}

/// Drops the cached store after a failure that may mean the connection is gone (the daemon restarted).
fn forget_store() {
    *crate::locks::lock(&STORE) = None;
}

#[cfg(all(unix, not(any(target_os = "macos", target_os = "ios", target_os = "android"))))]
fn platform_store() -> std::result::Result<Arc<CredentialStore>, Unavailable> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|address| address.is_empty())
        && !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists())
    {
        return Err(Unavailable(
            "no OS keychain is reachable: there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset), so the \
             Secret Service (gnome-keyring, KeePassXC) cannot be asked"
                .into(),
        ));
    }
    zbus_secret_service_keyring_store::Store::new().map(|store| store as Arc<CredentialStore>).map_err(|error| {
        Unavailable(format!(
            "no OS keychain is reachable: the Secret Service on the D-Bus session bus did not answer ({})",
            describe(&error)
        ))
    })
}

#[cfg(target_os = "macos")]
fn platform_store() -> std::result::Result<Arc<CredentialStore>, Unavailable> {
    apple_native_keyring_store::keychain::Store::new()
        .map(|store| store as Arc<CredentialStore>)
        .map_err(|error| Unavailable(format!("the macOS Keychain could not be opened ({})", describe(&error))))
}

#[cfg(target_os = "windows")]
fn platform_store() -> std::result::Result<Arc<CredentialStore>, Unavailable> {
    windows_native_keyring_store::Store::new()
        .map(|store| store as Arc<CredentialStore>)
        .map_err(|error| Unavailable(format!("the Windows Credential Manager could not be opened ({})", describe(&error))))
}

#[cfg(not(any(target_os = "macos", target_os = "windows", all(unix, not(any(target_os = "ios", target_os = "android"))))))]
fn platform_store() -> std::result::Result<Arc<CredentialStore>, Unavailable> {
    Err(Unavailable("sandlink has no OS keychain support on this platform".into()))
}

/// A keyring error as text, without the secret bytes some variants carry.
fn describe(error: &keyring_core::Error) -> String {
    use keyring_core::Error as KeyringError;
    match error {
        KeyringError::PlatformFailure(source) => format!("platform failure: {source}"),
        KeyringError::NoStorageAccess(source) => {
            format!("the keychain is locked or refused access: {source}")
        }
        KeyringError::NoEntry => "no such entry".into(),
        KeyringError::BadEncoding(_) => "the stored value is not UTF-8 text".into(),
        KeyringError::BadDataFormat(_, _) => "the stored value is malformed".into(),
        KeyringError::BadStoreFormat(reason) => format!("the keychain is malformed: {reason}"),
        KeyringError::TooLong(name, limit) => format!("{name} is longer than the keychain's limit of {limit}"),
        KeyringError::Invalid(attribute, reason) => format!("{attribute} is invalid: {reason}"),
        KeyringError::Ambiguous(entries) => format!("{} entries match", entries.len()),
        KeyringError::NoDefaultStore => "no keychain store".into(),
        KeyringError::NotSupportedByStore(issue) => format!("not supported: {issue}"),
        _ => "an unknown keychain error".into(),
    }
}

fn user(profile: &str, key: &str) -> String {
    format!("{profile}/{key}")
}

/// Runs a keychain operation on a blocking thread, turning store errors into sentences.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce(&CredentialStore) -> keyring_core::Result<T> + Send + 'static,
) -> std::result::Result<T, Unavailable> {
    tokio::task::spawn_blocking(move || {
        let store = open_store()?;
        operation(store.as_ref()).map_err(|error| {
            let reachable = !matches!(error, keyring_core::Error::PlatformFailure(_));
            if !reachable {
                forget_store();
            }
            Unavailable(format!("the OS keychain failed: {}", describe(&error)))
        })
    })
    .await
    .map_err(|error| Unavailable(format!("the keychain task failed: {error}")))?
}

/// Stores a credential, replacing any earlier value.
pub async fn set(profile: &str, key: &str, secret: Secret) -> std::result::Result<(), Unavailable> {
    let user = user(profile, key);
    blocking(move |store| store.build(SERVICE, &user, None)?.set_password(secret.expose())).await
}

/// Reads a credential; `None` when none is stored.
pub async fn get(profile: &str, key: &str) -> std::result::Result<Option<Secret>, Unavailable> {
    let user = user(profile, key);
    blocking(move |store| match store.build(SERVICE, &user, None)?.get_password() {
        Ok(value) => Ok(Some(Secret::new(value))),
        Err(keyring_core::Error::NoEntry) => Ok(None),
        Err(error) => Err(error),
    })
    .await
}

/// Removes a credential; answers whether one was stored.
pub async fn delete(profile: &str, key: &str) -> std::result::Result<bool, Unavailable> {
    let user = user(profile, key);
    blocking(move |store| match store.build(SERVICE, &user, None)?.delete_credential() {
        Ok(()) => Ok(true),
        Err(keyring_core::Error::NoEntry) => Ok(false),
        Err(error) => Err(error),
    })
    .await
}
