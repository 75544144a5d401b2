//! Architecture invariants, checked on the real workspace.

use saldo_tests::architecture::{
    dependency_violations, forbidden_std_uses, metadata, rust_files, workspace_root,
};

#[test]
fn sdk_crates_depend_on_no_io_crate_and_nothing_outside_sdk() {
    // Proves no sdk crate reaches tokio, sqlx, rdkafka, hyper, randomness or
    // any hosts/harness crate through its normal dependencies.
    let metadata = metadata();
    let sdk_packages = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|package| {
            package["manifest_path"]
                .as_str()
                .is_some_and(|path| path.contains("/sdk/"))
        })
        .count();
    assert!(
        sdk_packages >= 5,
        "the sdk crates are found ({sdk_packages})"
    );
    assert_eq!(dependency_violations(&metadata), Default::default());
}

#[test]
fn sdk_sources_use_no_clock_filesystem_network_threads_or_environment() {
    // Proves no sdk source file names std's time, fs, net, thread, process or env.
    let sdk = workspace_root().join("sdk");
    let files = rust_files(&sdk);
    assert!(
        files.len() >= 10,
        "the sdk sources are found ({})",
        files.len()
    );
    let violations: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let source = std::fs::read_to_string(file).expect("readable source");
            forbidden_std_uses(&source)
                .into_iter()
                .map(move |module| format!("{}: {module}", file.display()))
        })
        .collect();
    assert_eq!(violations, Vec::<String>::new());
}

#[test]
fn the_dependency_check_catches_a_forbidden_crate() {
    // Proves the dependency check can fail: a metadata graph where an sdk
    // crate reaches tokio through another crate is reported.
    let root = "/w";
    let package = |id: &str, name: &str, path: &str, source: Option<&str>| serde_json::json!({"id": id, "name": name, "manifest_path": format!("{root}/{path}/Cargo.toml"), "source": source});
    let normal = serde_json::json!([{"kind": null}]);
    let fake = serde_json::json!({
        "workspace_root": root,
        "packages": [
            package("core", "saldo-core", "sdk/saldo-core", None),
            package("helper", "helper", "registry/helper", Some("registry")),
            package("tokio", "tokio", "registry/tokio", Some("registry")),
            package("host", "saldo-host", "hosts/saldo-host", None),
        ],
        "resolve": {"nodes": [
            {"id": "core", "deps": [{"pkg": "helper", "dep_kinds": normal}, {"pkg": "host", "dep_kinds": normal}]},
            {"id": "helper", "deps": [{"pkg": "tokio", "dep_kinds": normal}]},
            {"id": "tokio", "deps": []},
            {"id": "host", "deps": []},
        ]},
    });
    let violations = dependency_violations(&fake);
    assert_eq!(
        violations.get("saldo-core").cloned().unwrap_or_default(),
        vec![
            "depends on saldo-host, which is outside sdk/".to_owned(),
            "depends on tokio".to_owned()
        ]
    );
}
