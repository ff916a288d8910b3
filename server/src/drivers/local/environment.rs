//! A run's environment: a short allow-list of the server's variables (locale, terminal, proxies, CA bundles,
//! toolchain locations), a private home, then the profile's and the run's own. Nothing else of the server's
//! environment, credentials above all, reaches a run unless a profile names it in `passEnv`.

use std::collections::BTreeMap;
use std::path::Path;

/// Variables passed through by exact name.
const PASSED: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TERM",
    "COLORTERM",
    "TZ",
    "USER",
    "LOGNAME",
    // Corporate proxies, so package managers work behind them.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    // Certificate bundles those proxies need.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    // Where version managers keep toolchains (shims on PATH find them through these); none holds a secret.
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "NVM_DIR",
    "VOLTA_HOME",
    "ASDF_DIR",
    "ASDF_DATA_DIR",
    "JAVA_HOME",
    "GOROOT",
];

/// Variables passed through by prefix.
const PASSED_PREFIXES: &[&str] = &["LC_"];

/// Whether a server variable is passed to runs by default.
pub fn passes_by_default(name: &str) -> bool {
    PASSED.contains(&name) || PASSED_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The environment of a run: allowed server variables, those the profile passes by name, the private `HOME` and
/// temporary directory, then the profile's `env`, then the run's (later ones win).
pub fn for_run(
    server: impl IntoIterator<Item = (String, String)>,
    pass_env: &[String],
    private_home: &Path,
    temporary: &Path,
    profile_env: &BTreeMap<String, String>,
    run_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut environment: BTreeMap<String, String> = server
        .into_iter()
        .filter(|(name, _)| passes_by_default(name) || pass_env.iter().any(|passed| passed == name))
        .collect();
    environment.entry("PATH".into()).or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    environment.insert("HOME".into(), private_home.to_string_lossy().into_owned());
    environment.insert("TMPDIR".into(), temporary.to_string_lossy().into_owned());
    environment.extend(profile_env.iter().map(|(name, value)| (name.clone(), value.clone())));
    environment.extend(run_env.iter().map(|(name, value)| (name.clone(), value.clone())));
    environment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C.UTF-8"),
            ("E2B_API_KEY", "e2b_canary"),
            ("AWS_SECRET_ACCESS_KEY", "aws_canary"),
            ("GITHUB_TOKEN", "ghp_canary"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("HOME", "/home/user"),
            ("NPM_TOKEN", "npm_canary"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
    }

    #[test]
    fn credentials_should_never_reach_a_run_unless_named() {
        let environment =
            for_run(server(), &[], Path::new("/s/home"), Path::new("/tmp"), &BTreeMap::new(), &BTreeMap::new());
        for name in ["E2B_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "NPM_TOKEN"] {
            assert!(!environment.contains_key(name), "{name} leaked");
        }
        assert_eq!(environment.get("HOME").map(String::as_str), Some("/s/home"));
        assert_eq!(environment.get("LC_ALL").map(String::as_str), Some("C.UTF-8"));
        assert_eq!(environment.get("HTTPS_PROXY").map(String::as_str), Some("http://proxy:3128"));
    }

    #[test]
    fn a_profile_may_pass_a_variable_by_name_and_the_run_wins() {
        let profile = BTreeMap::from([("MODE".to_string(), "profile".to_string())]);
        let run = BTreeMap::from([("MODE".to_string(), "run".to_string())]);
        let environment =
            for_run(server(), &["NPM_TOKEN".into()], Path::new("/h"), Path::new("/t"), &profile, &run);
        assert_eq!(environment.get("NPM_TOKEN").map(String::as_str), Some("npm_canary"));
        assert_eq!(environment.get("MODE").map(String::as_str), Some("run"));
    }
}
