//! The architecture invariants, as functions that list violations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates an sdk crate may not depend on, directly or transitively: async
/// runtimes, databases, Kafka, HTTP, sockets, and sources of randomness.
pub const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "socket2",
    "sqlx",
    "postgres",
    "tokio-postgres",
    "rdkafka",
    "rdkafka-sys",
    "hyper",
    "axum",
    "reqwest",
    "tonic",
    "getrandom",
    "rand",
    "wasm-bindgen",
    "js-sys",
];

/// std modules an sdk crate may not use: the clock, the filesystem, the
/// network, threads, processes and the environment.
pub const FORBIDDEN_STD_MODULES: &[&str] = &["time", "fs", "net", "thread", "process", "env"];

/// The workspace root (the directory holding the virtual manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `cargo metadata` for the workspace, as JSON.
pub fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// For each sdk package, the violations of the dependency rule: forbidden
/// crates and workspace crates outside `sdk/` reachable through normal
/// (non-dev, non-build) dependencies.
pub fn dependency_violations(metadata: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    let root = metadata["workspace_root"].as_str().expect("workspace_root");
    let sdk_dir = format!("{root}/sdk/");
    let packages: BTreeMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| (package["id"].as_str().expect("id"), package))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|node| (node["id"].as_str().expect("id"), node))
        .collect();
    let is_workspace = |id: &str| packages[id]["source"].is_null();
    let in_sdk = |id: &str| {
        packages[id]["manifest_path"]
            .as_str()
            .is_some_and(|path| path.starts_with(&sdk_dir))
    };
    let mut violations = BTreeMap::new();
    for (id, package) in &packages {
        if !in_sdk(id) {
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut stack = vec![*id];
        let mut found = Vec::new();
        while let Some(current) = stack.pop() {
            for dependency in nodes[current]["deps"].as_array().expect("deps") {
                let normal = dependency["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|kind| kind["kind"].is_null());
                let dependency_id = dependency["pkg"].as_str().expect("pkg");
                if !normal || !seen.insert(dependency_id) {
                    continue;
                }
                let name = packages[dependency_id]["name"].as_str().expect("name");
                if FORBIDDEN_CRATES.contains(&name) {
                    found.push(format!("depends on {name}"));
                }
                if is_workspace(dependency_id) && !in_sdk(dependency_id) {
                    found.push(format!("depends on {name}, which is outside sdk/"));
                }
                stack.push(dependency_id);
            }
        }
        if !found.is_empty() {
            violations.insert(package["name"].as_str().expect("name").to_owned(), found);
        }
    }
    violations
}

/// The forbidden std modules a piece of Rust source uses, found by looking
/// at `std::<module>` paths and `std::{...}` groups (comments are skipped).
pub fn forbidden_std_uses(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(start) => &line[..start],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // One space between words, none around `::`, braces and commas, so
    // `use std :: { fs }` reads as `use std::{fs}`.
    let mut compact = code.split_whitespace().collect::<Vec<_>>().join(" ");
    for (spaced, tight) in [
        (" ::", "::"),
        (":: ", "::"),
        ("{ ", "{"),
        (" }", "}"),
        (" ,", ","),
        (", ", ","),
    ] {
        while compact.contains(spaced) {
            compact = compact.replace(spaced, tight);
        }
    }
    let mut found = BTreeSet::new();
    let mut rest = compact.as_str();
    while let Some(start) = rest.find("std::") {
        let after = &rest[start + 5..];
        let preceded_by_identifier = rest[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !preceded_by_identifier {
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let module = item.split("::").next().unwrap_or_default();
                    if FORBIDDEN_STD_MODULES.contains(&module) {
                        found.insert(format!("std::{module}"));
                    }
                }
            } else {
                let module: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if FORBIDDEN_STD_MODULES.contains(&module.as_str()) {
                    found.insert(format!("std::{module}"));
                }
            }
        }
        rest = after;
    }
    found.into_iter().collect()
}

/// Every `.rs` file under `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("readable directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_every_form_of_forbidden_use() {
        // Proves the source check can fail: each way of reaching a forbidden
        // module is caught, and allowed ones are not.
        assert_eq!(
            forbidden_std_uses("let t = std::time::Instant::now();"),
            vec!["std::time"]
        );
        assert_eq!(
            forbidden_std_uses("use std::{collections::BTreeMap, fs};"),
            vec!["std::fs"]
        );
        assert_eq!(
            forbidden_std_uses("use ::std::net::TcpStream;"),
            vec!["std::net"]
        );
        assert_eq!(
            forbidden_std_uses("use std :: thread;"),
            vec!["std::thread"]
        );
        assert_eq!(
            forbidden_std_uses("use std::{\n    env::var,\n    process,\n};"),
            vec!["std::env", "std::process"]
        );
        assert!(
            forbidden_std_uses("use std::collections::BTreeMap; // std::fs in a comment")
                .is_empty()
        );
        assert!(forbidden_std_uses("use mystd::time::X;").is_empty());
    }
}
