//! GitHub's REST API for agent tasks: open a pull request or find the one a branch already has.
//!
//! reqwest directly rather than `drivers::http`: pull requests need the answer's headers (rate-limit resets, the
//! scopes a token has and the ones an endpoint accepts) and the body of a `422`, which that layer's `ErrorShape`
//! never sees. The retry policy is the same: transient answers repeated with exponential backoff, `Retry-After`
//! honoured, plus GitHub's `x-ratelimit-reset` for its primary and secondary limits.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::credentials::Secret;
use crate::error::{Error, Result};

/// GitHub's public API, used when neither `GITHUB_API_URL` nor `api_url` says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// How many times one request is sent before its failure is reported.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest sandlink waits for a rate limit to reset before reporting it instead.
const LONGEST_RATE_LIMIT_WAIT: Duration = Duration::from_secs(120);

/// The owner and name of a repository, read from its git URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// `https://host/owner/repo(.git)` → owner, repo. Other shapes are `invalidParams`.
    pub fn from_url(repo: &str) -> Result<Self> {
        let parsed = url::Url::parse(repo).map_err(|error| Error::InvalidParams(format!("The repository URL \"{repo}\" is not a URL ({error}).")))?;
        let segments: Vec<&str> = parsed.path_segments().map(|segments| segments.filter(|s| !s.is_empty()).collect()).unwrap_or_default();
        match segments.as_slice() {
            [.., owner, name] if matches!(parsed.scheme(), "http" | "https") => Ok(RepoName {
                owner: owner.to_string(),
                name: name.strip_suffix(".git").unwrap_or(name).to_string(),
            }),
            _ => Err(Error::InvalidParams(format!(
                "A pull request needs a repository URL of the form https://host/OWNER/REPO(.git); \"{repo}\" is not one."
            ))),
        }
    }
}

/// A pull request as the task records it.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
    /// Whether it existed already (found instead of created).
    pub existing: bool,
}

/// What to open.
pub struct NewPullRequest<'a> {
    pub head: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub draft: bool,
}

pub struct Client {
    http: reqwest::Client,
    api_url: String,
    token: Secret,
}

impl Client {
    /// `api_url` overrides `GITHUB_API_URL`, which overrides GitHub's public API.
    pub fn new(api_url: Option<String>, token: Secret) -> Result<Self> {
        let api_url = api_url
            .or_else(|| std::env::var("GITHUB_API_URL").ok().filter(|url| !url.is_empty()))
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("sandlink/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Internal(format!("Could not build the GitHub client: {error}")))?;
        Ok(Client { http, api_url: api_url.trim_end_matches('/').to_string(), token })
    }

    /// Opens the pull request of `new.head`; when GitHub says one exists already (`422`), finds and returns it.
    pub async fn open_pull_request(&self, repo: &RepoName, new: NewPullRequest<'_>) -> Result<PullRequest> {
        let path = format!("/repos/{}/{}/pulls", repo.owner, repo.name);
        let body = json!({ "title": new.title, "body": new.body, "head": new.head, "base": new.base, "draft": new.draft });
        let (status, _, answer) = self.send(reqwest::Method::POST, &path, Some(&body)).await?;
        if status.is_success() {
            return read_pull(&answer, false);
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            if let Some(existing) = self.find_open(repo, new.head).await? {
                return Ok(existing);
            }
        }
        Err(self.failure(status, &answer, "open the pull request"))
    }

    /// The open pull request whose head is `branch` in the repository itself, if any.
    pub async fn find_open(&self, repo: &RepoName, branch: &str) -> Result<Option<PullRequest>> {
        let path = format!("/repos/{}/{}/pulls?state=open&head={}:{}", repo.owner, repo.name, repo.owner, branch);
        let (status, _, answer) = self.send(reqwest::Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(self.failure(status, &answer, "list the pull requests"));
        }
        match answer.as_array().and_then(|pulls| pulls.first()) {
            Some(pull) => read_pull(pull, true).map(Some),
            None => Ok(None),
        }
    }

    /// Sends one request with retries; answers the final status, headers and JSON body. Rate limits are waited out
    /// (up to `LONGEST_RATE_LIMIT_WAIT`), a token missing a scope is `credentialsMissing` naming it.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, HeaderMap, Value)> {
        let url = format!("{}{path}", self.api_url);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .header("Authorization", format!("Bearer {}", self.token.expose()));
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = request.send().await;
            let response = match outcome {
                Ok(response) => response,
                Err(error) if attempt < ATTEMPTS => {
                    tracing::info!(attempt, error = %self.scrub(&error.to_string()), "GitHub unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                    continue;
                }
                Err(error) => {
                    return Err(Error::Remote {
                        status: None,
                        message: format!("GitHub ({}) could not be reached: {}", self.api_url, self.scrub(&error.to_string())),
                    })
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap_or_default();
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if let Some(wait) = rate_limit_wait(status, &headers, &answer) {
                if attempt >= ATTEMPTS || wait > LONGEST_RATE_LIMIT_WAIT {
                    return Err(Error::Remote {
                        status: Some(status.as_u16()),
                        message: format!(
                            "GitHub's rate limit is reached and resets in {} s; try again then.",
                            wait.as_secs().max(1)
                        ),
                    });
                }
                tracing::info!(attempt, wait_ms = wait.as_millis() as u64, "GitHub rate limit; waiting");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            if status.is_server_error() && attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED {
                return Err(Error::CredentialsMissing(
                    "GitHub refused the token (401). Set GITHUB_TOKEN (or GH_TOKEN), or store a token with \
                     `sandlink profile set-credential PROFILE githubToken`."
                        .into(),
                ));
            }
            if let Some(missing) = missing_scopes(status, &headers) {
                return Err(Error::CredentialsMissing(format!(
                    "The GitHub token lacks the permission this needs: it has the scopes [{}] and the request needs \
                     {missing}. Create a token with that scope (or, for a fine-grained token, \"Pull requests: read \
                     and write\").",
                    header(&headers, "x-oauth-scopes").unwrap_or_default()
                )));
            }
            return Ok((status, headers, answer));
        }
    }

    fn failure(&self, status: StatusCode, answer: &Value, what: &str) -> Error {
        let mut detail = answer.get("message").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
            let messages: Vec<String> = errors
                .iter()
                .filter_map(|error| error.get("message").and_then(Value::as_str).map(str::to_string))
                .collect();
            if !messages.is_empty() {
                detail = format!("{detail} ({})", messages.join("; "));
            }
        }
        Error::Remote {
            status: Some(status.as_u16()),
            message: format!("GitHub could not {what} ({}): {}", status.as_u16(), self.scrub(detail.trim())),
        }
    }

    fn scrub(&self, text: &str) -> String {
        if self.token.expose().is_empty() {
            return text.to_string();
        }
        text.replace(self.token.expose(), "***")
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

fn read_pull(pull: &Value, existing: bool) -> Result<PullRequest> {
    let number = pull.get("number").and_then(Value::as_u64);
    let url = pull.get("html_url").and_then(Value::as_str);
    match (number, url) {
        (Some(number), Some(url)) => Ok(PullRequest { number, url: url.to_string(), existing }),
        _ => Err(Error::Remote { status: None, message: "GitHub answered a pull request without a number or URL.".into() }),
    }
}

/// How long to wait when the answer is a rate limit: `429`, or `403` with `Retry-After`, an exhausted
/// `x-ratelimit-remaining`, or a message about a secondary rate limit. `None` for any other answer.
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap, answer: &Value) -> Option<Duration> {
    let limited_403 = status == StatusCode::FORBIDDEN
        && (headers.contains_key("retry-after")
            || header(headers, "x-ratelimit-remaining").as_deref() == Some("0")
            || answer.get("message").and_then(Value::as_str).is_some_and(|m| m.to_lowercase().contains("rate limit")));
    if status != StatusCode::TOO_MANY_REQUESTS && !limited_403 {
        return None;
    }
    if let Some(seconds) = header(headers, "retry-after").and_then(|value| value.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(seconds.max(0.0)));
    }
    if let Some(reset) = header(headers, "x-ratelimit-reset").and_then(|value| value.trim().parse::<u64>().ok()) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        return Some(Duration::from_secs(reset.saturating_sub(now)));
    }
    // GitHub's advice for a secondary limit with neither header: wait at least a minute.
    Some(Duration::from_secs(60))
}

/// For a `403`/`404` to a token that lacks what the endpoint accepts: the scopes it would need, in words.
fn missing_scopes(status: StatusCode, headers: &HeaderMap) -> Option<String> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::NOT_FOUND {
        return None;
    }
    // A fine-grained token names the permission it lacks instead of scopes.
    if let Some(permissions) = header(headers, "x-accepted-github-permissions").filter(|value| !value.trim().is_empty()) {
        if status == StatusCode::FORBIDDEN {
            return Some(format!("the permission {}", permissions.trim()));
        }
    }
    let accepted = header(headers, "x-accepted-oauth-scopes")?;
    let accepted: Vec<&str> = accepted.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if accepted.is_empty() {
        return None;
    }
    let held = header(headers, "x-oauth-scopes").unwrap_or_default();
    let held: Vec<&str> = held.split(',').map(str::trim).collect();
    if accepted.iter().any(|scope| held.contains(scope)) {
        return None;
    }
    Some(format!("one of the scopes [{}]", accepted.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_name_should_come_from_https_urls() {
        let name = RepoName::from_url("https://github.com/acme/widgets.git").expect("parses");
        assert_eq!(name, RepoName { owner: "acme".into(), name: "widgets".into() });
        let local = RepoName::from_url("http://127.0.0.1:8080/git/acme/widgets").expect("parses");
        assert_eq!(local.name, "widgets");
        assert!(RepoName::from_url("file:///tmp/repo.git").is_err());
    }

    #[test]
    fn rate_limits_should_be_read_from_retry_after_and_the_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().expect("a header value"));
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &headers, &Value::Null), Some(Duration::from_secs(2)));
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &HeaderMap::new(), &Value::Null), None);
        let mut scopes = HeaderMap::new();
        scopes.insert("x-accepted-oauth-scopes", "repo, public_repo".parse().expect("a header value"));
        scopes.insert("x-oauth-scopes", "read:org".parse().expect("a header value"));
        assert!(missing_scopes(StatusCode::FORBIDDEN, &scopes).expect("missing").contains("repo"));
    }
}
