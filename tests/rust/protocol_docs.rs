//! Keeps `docs/protocol.md` and the shared contract in step with `server/src/protocol.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{} is readable: {error}", path.display()))
}

/// Every `sandlink/…` method and `sandlink.…` command named in `text`, in quotes or backticks.
fn names_in(text: &str, quote: char) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (index, _) in text.match_indices(quote) {
        let rest = &text[index + 1..];
        if !(rest.starts_with("sandlink/") || rest.starts_with("sandlink.")) {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.')).collect();
        if rest[name.len()..].starts_with(quote) && name.len() > "sandlink/".len() {
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_method_and_command_in_the_code_should_be_documented_and_vice_versa() {
    let code = names_in(&repo_file("server/src/protocol.rs"), '"');
    let docs = names_in(&repo_file("docs/protocol.md"), '`');
    assert!(code.len() >= 30, "the code declares the contract's methods: {code:?}");
    let undocumented: Vec<_> = code.difference(&docs).collect();
    assert!(undocumented.is_empty(), "docs/protocol.md does not document {undocumented:?}");
    let unknown: Vec<_> = docs.difference(&code).collect();
    assert!(unknown.is_empty(), "docs/protocol.md names {unknown:?}, which server/src/protocol.rs does not declare");
}

#[test]
fn every_name_of_the_shared_contract_should_exist_in_the_code() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/protocol.md");
    let Ok(contract) = std::fs::read_to_string(&shared) else {
        assert!(std::env::var_os("CI").is_none(), "../shared/protocol.md must sit beside the repository under CI");
        return;
    };
    let code = names_in(&repo_file("server/src/protocol.rs"), '"');
    let contract_names = names_in(&contract, '`');
    let missing: Vec<_> = contract_names.difference(&code).collect();
    assert!(missing.is_empty(), "the contract names {missing:?}, which the code does not declare");
}

#[test]
fn every_error_kind_should_be_documented() {
    let code = repo_file("server/src/protocol.rs");
    let docs = repo_file("docs/protocol.md");
    let start = code.find("pub fn as_str(self) -> &'static str {\n        match self {\n            ErrorKind").expect("ErrorKind::as_str");
    let body = &code[start..code[start..].find("\n    }\n").map(|end| start + end).expect("end of as_str")];
    let kinds: Vec<&str> = body.split("=> \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert!(kinds.len() >= 11, "the kinds are found: {kinds:?}");
    for kind in kinds {
        assert!(docs.contains(&format!("| `{kind}` |")), "docs/protocol.md's error table lacks `{kind}`");
    }
}

/// Kinds written as literals outside `ErrorKind` (the framing layer answers before any engine error exists).
#[test]
fn every_error_kind_literal_in_the_server_should_be_documented() {
    let docs = repo_file("docs/protocol.md");
    let mut pending = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut literals = Vec::new();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a readable source folder").flatten() {
                pending.push(entry.path());
            }
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable source file");
        for marker in ["_KIND: &str = \"", "\"kind\": \""] {
            for (index, _) in text.match_indices(marker) {
                let rest = &text[index + marker.len()..];
                if let Some(kind) = rest.split('"').next() {
                    literals.push((path.display().to_string(), kind.to_string()));
                }
            }
        }
    }
    assert!(literals.iter().any(|(_, kind)| kind == "invalidMessage"), "the framing layer's kind is found: {literals:?}");
    for (file, kind) in literals {
        assert!(docs.contains(&format!("| `{kind}` |")), "docs/protocol.md's error table lacks `{kind}`, used in {file}");
    }
}
