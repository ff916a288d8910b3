//! The Conventional Commits check an agent task's commit messages must pass: `type(scope)?!?: subject`.

use crate::error::{Error, Result};

/// The commit types a task may use, as Conventional Commits' common set names them.
pub const TYPES: &[&str] = &["feat", "fix", "docs", "style", "refactor", "perf", "test", "build", "ci", "chore", "revert"];

/// Accepts a message whose first line is `type(scope)?!?: subject`; anything else is an `invalidParams` error that
/// shows the expected form, so an agent can correct itself from the error alone.
pub fn check(message: &str) -> Result<()> {
    let header = message.lines().next().unwrap_or_default();
    match parse_header(header) {
        Ok(()) => Ok(()),
        Err(problem) => Err(Error::InvalidParams(format!(
            "The commit message \"{}\" is not a Conventional Commit: {problem}. Write the first line as \
             `type(scope)?: subject`, for example `feat(parser): accept empty input` or `fix!: drop the old flag`, \
             with type one of {}.",
            shorten(header),
            TYPES.join(", ")
        ))),
    }
}

fn parse_header(header: &str) -> std::result::Result<(), String> {
    let Some((prefix, subject)) = header.split_once(": ") else {
        return Err("it lacks the `: ` after the type".into());
    };
    if subject.trim().is_empty() {
        return Err("the subject after `: ` is empty".into());
    }
    let prefix = prefix.strip_suffix('!').unwrap_or(prefix);
    let (kind, scope) = match prefix.split_once('(') {
        Some((kind, rest)) => {
            let scope = rest.strip_suffix(')').ok_or("the scope's `(` is not closed by `)` before the `:`")?;
            (kind, Some(scope))
        }
        None => (prefix, None),
    };
    if !TYPES.contains(&kind) {
        return Err(format!("`{}` is not one of the types", shorten(kind)));
    }
    if let Some(scope) = scope {
        let well_formed = !scope.is_empty()
            && scope.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ',' | ' '));
        if !well_formed {
            return Err(format!("the scope `{}` must be a non-empty word", shorten(scope)));
        }
    }
    Ok(())
}

/// The first 60 characters, so a pasted essay does not become the whole error.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    #[test]
    fn check_should_accept_conventional_headers() {
        for message in ["feat: add x", "fix(parser): y", "refactor!: z", "chore(deps)!: bump\n\nbody", "revert: undo"] {
            assert!(check(message).is_ok(), "{message}");
        }
    }

    #[test]
    fn check_should_refuse_others_with_the_expected_form() {
        for message in ["update stuff", "feature: x", "fix(): y", "fix(parser: y", "feat:", "feat: ", "Feat: x"] {
            let error = check(message).expect_err(message);
            assert_eq!(error.kind(), ErrorKind::InvalidParams);
            assert!(error.to_string().contains("type(scope)?: subject"), "{error}");
        }
    }
}
