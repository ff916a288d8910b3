//! What a connect flow may offer for Docker's `image` and `container`: the workspace's dev container image first,
//! then the daemon's own images (or its running containers), so a first connect needs no typing.

use std::path::Path;

use serde_json::Value;

use super::client::Client;
use crate::error::Result;
use crate::protocol::SettingChoice;

/// Where dev containers keep their configuration, in the order the Dev Containers spec looks.
const DEVCONTAINER_FILES: [&str; 2] = [".devcontainer/devcontainer.json", ".devcontainer.json"];
/// The most images or containers offered; a picker longer than this is not read.
const MOST_OFFERED: usize = 50;
/// A configuration file larger than this is not a dev container's.
const MOST_CONFIG_BYTES: u64 = 1 << 20;

/// The choices for `setting`; settings without any are answered empty.
pub async fn for_setting(client: Option<&Client>, setting: &str, workspace: Option<&Path>) -> Result<Vec<SettingChoice>> {
    match setting {
        "image" => {
            let mut choices: Vec<SettingChoice> = workspace.and_then(devcontainer_image).into_iter().collect();
            if let Some(client) = client {
                for (tag, size) in client.list_tagged_images().await? {
                    if choices.iter().all(|choice| choice.value.as_str() != Some(tag.as_str())) {
                        choices.push(SettingChoice {
                            value: Value::from(tag),
                            label: None,
                            detail: Some(format!("local image, {}", human_size(size))),
                        });
                    }
                }
            }
            choices.truncate(MOST_OFFERED);
            Ok(choices)
        }
        "container" => {
            let Some(client) = client else { return Ok(Vec::new()) };
            let mut running = client.list_running().await?;
            running.truncate(MOST_OFFERED);
            Ok(running
                .into_iter()
                .map(|(name, image, status)| SettingChoice {
                    value: Value::from(name),
                    label: None,
                    detail: Some(format!("{image}, {status}")),
                })
                .collect())
        }
        _ => Ok(Vec::new()),
    }
}

/// The `image` of the workspace's dev container configuration, when it names one (a `build` or compose setup has
/// none to offer). The file is the workspace's, so it is read as untrusted input: size-capped and parsed, never run.
fn devcontainer_image(workspace: &Path) -> Option<SettingChoice> {
    DEVCONTAINER_FILES.iter().find_map(|relative| {
        let path = workspace.join(relative);
        // Not through a link: the workspace decides what it holds, not what sandlink reads outside it.
        let metadata = std::fs::symlink_metadata(&path).ok()?;
        if !metadata.is_file() || metadata.len() > MOST_CONFIG_BYTES {
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let image = image_of(&text)?;
        Some(SettingChoice { value: Value::from(image), label: None, detail: Some(format!("from {relative}")) })
    })
}

/// The top-level `image` string of a `devcontainer.json`, which is JSON with comments and trailing commas.
pub fn image_of(text: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(&plain_json(text)).ok()?;
    let image = parsed.get("image")?.as_str()?.trim();
    (!image.is_empty() && !image.chars().any(char::is_control)).then(|| image.to_string())
}

/// JSON with comments (`//`, `/* */`) and trailing commas turned into plain JSON; text inside strings is kept as is.
pub fn plain_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some(inner) = chars.next() {
                    out.push(inner);
                    match inner {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = '\0';
                for skipped in chars.by_ref() {
                    if previous == '*' && skipped == '/' {
                        break;
                    }
                    previous = skipped;
                }
                out.push(' ');
            }
            ',' => {
                // A comma followed (past blanks and comments) by a closing bracket is dropped.
                if !matches!(next_significant(chars.clone()), Some('}') | Some(']')) {
                    out.push(',');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The next character that is not blank or inside a comment. Each call reads only up to that character, so the
/// whole conversion stays linear in the text.
fn next_significant(mut chars: std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '/' if chars.peek() == Some(&'/') => {
                chars.find(|&skipped| skipped == '\n')?;
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = '\0';
                chars.find(|&skipped| {
                    let end = previous == '*' && skipped == '/';
                    previous = skipped;
                    end
                })?;
            }
            other => return Some(other),
        }
    }
    None
}

fn human_size(bytes: i64) -> String {
    const MB: f64 = 1_000_000.0;
    let bytes = bytes.max(0) as f64;
    if bytes >= 1000.0 * MB {
        format!("{:.1} GB", bytes / (1000.0 * MB))
    } else {
        format!("{:.0} MB", bytes / MB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_should_be_read_from_json_with_comments_and_trailing_commas() {
        let text = r#"// Dev container for the web app
        {
            "name": "web // not a comment",
            /* the base image */
            "image": "mcr.microsoft.com/devcontainers/javascript-node:20", // pinned
            "features": { "ghcr.io/x/y:1": {}, },
            "forwardPorts": [3000, 8000,],
        }"#;
        assert_eq!(image_of(text).as_deref(), Some("mcr.microsoft.com/devcontainers/javascript-node:20"));
    }

    #[test]
    fn strings_should_keep_what_looks_like_comments_and_escaped_quotes() {
        let text = r#"{ "image": "a\"/*b*/,]", "x": "//" }"#;
        let plain: Value = serde_json::from_str(&plain_json(text)).expect("plain JSON");
        assert_eq!(plain["image"], "a\"/*b*/,]");
        assert_eq!(plain["x"], "//");
    }

    #[test]
    fn many_commas_should_not_make_the_conversion_slow() {
        let text = format!("[{}]", "1, ".repeat(200_000));
        let started = std::time::Instant::now();
        let plain: Value = serde_json::from_str(&plain_json(&text)).expect("plain JSON");
        assert_eq!(plain.as_array().map(Vec::len), Some(200_000));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "linear, not quadratic");
    }

    #[test]
    fn a_configuration_without_an_image_or_not_json_should_offer_nothing() {
        assert_eq!(image_of(r#"{ "build": { "dockerfile": "Dockerfile" } }"#), None);
        assert_eq!(image_of(r#"{ "image": "" }"#), None);
        assert_eq!(image_of(r#"{ "image": "bad\nname" }"#), None);
        assert_eq!(image_of("not json at all /* unterminated"), None);
        assert_eq!(image_of(r#"{ "image": 3 }"#), None);
    }

    #[test]
    fn the_workspace_file_should_be_found_and_a_link_out_ignored() {
        let workspace = tempfile::tempdir().expect("temp dir");
        assert!(devcontainer_image(workspace.path()).is_none());
        std::fs::write(workspace.path().join(".devcontainer.json"), r#"{ "image": "debian:12" }"#).expect("write");
        let choice = devcontainer_image(workspace.path()).expect("found");
        assert_eq!((choice.value, choice.detail.as_deref()), (Value::from("debian:12"), Some("from .devcontainer.json")));

        let elsewhere = tempfile::tempdir().expect("temp dir");
        std::fs::write(elsewhere.path().join("devcontainer.json"), r#"{ "image": "evil:1" }"#).expect("write");
        std::fs::create_dir(workspace.path().join(".devcontainer")).expect("dir");
        std::os::unix::fs::symlink(elsewhere.path().join("devcontainer.json"), workspace.path().join(".devcontainer/devcontainer.json"))
            .expect("link");
        let choice = devcontainer_image(workspace.path()).expect("the plain file still");
        assert_eq!(choice.value, Value::from("debian:12"), "the link out of the workspace is not read");
    }
}
