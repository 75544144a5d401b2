//! The Kubernetes manifests held to the binary: every container's arguments
//! and environment are ones `saldo` accepts, and the processes that take no
//! requests (publishers, the reconciler) answer the probes the manifests
//! point at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Processes, free_port, http, migrated_database, saldo, spawn_broker};

/// The manifests' folder, from this crate's manifest directory.
fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// The value a container gets from a Secret in this test: the manifests
/// name Secrets, never their contents.
const SECRET_PLACEHOLDER: &str = "postgres://role:secret@postgresql:5432/saldo";

/// Every `.yaml` file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{dir:?}: {error}")) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A YAML scalar as written in the manifests: a JSON-quoted string or a
/// plain word.
fn scalar(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('"') {
        serde_json::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    } else {
        text.to_owned()
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// One container of a Deployment or Job: where it is written, its
/// arguments, its environment (Secrets as the placeholder) and the
/// ConfigMaps it takes whole.
#[derive(Debug)]
struct Container {
    source: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    config_maps: Vec<String>,
}

/// The manifests are written so that a few line rules read them: one
/// container per document, `args:` as a one-line JSON array, `env:` items as
/// `- name:` then `value:` or `valueFrom:`. A manifest written otherwise
/// fails here rather than going unchecked.
fn containers_and_config_maps(
    files: &[PathBuf],
) -> (Vec<Container>, BTreeMap<String, BTreeMap<String, String>>) {
    let mut containers = Vec::new();
    let mut config_maps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("readable");
        for (number, document) in text.split("\n---\n").enumerate() {
            let source = format!("{} document {}", file.display(), number + 1);
            let lines: Vec<&str> = document.lines().collect();
            if lines.iter().any(|line| line.trim() == "kind: ConfigMap") {
                let name = lines
                    .iter()
                    .find_map(|line| line.strip_prefix("  name: "))
                    .unwrap_or_else(|| panic!("{source}: a ConfigMap has a name"));
                let start = lines.iter().position(|line| *line == "data:");
                let entries = config_maps.entry(scalar(name)).or_default();
                for line in lines[start.map_or(lines.len(), |start| start + 1)..]
                    .iter()
                    .take_while(|line| line.starts_with("  "))
                {
                    let (key, value) = line.trim().split_once(": ").expect("KEY: value");
                    entries.insert(key.to_owned(), scalar(value));
                }
            }
            let Some(containers_at) = lines.iter().position(|line| line.trim() == "containers:")
            else {
                continue;
            };
            let body = &lines[containers_at..];
            let args: Vec<&str> = body
                .iter()
                .filter_map(|line| line.trim().strip_prefix("args: "))
                .collect();
            assert_eq!(
                args.len(),
                1,
                "{source}: one container with one `args:` line"
            );
            let args: Vec<String> = serde_json::from_str(args[0])
                .unwrap_or_else(|error| panic!("{source}: args as a JSON array: {error}"));
            let mut env = BTreeMap::new();
            if let Some(env_at) = body.iter().position(|line| line.trim() == "env:") {
                let item_indent = indent(body[env_at]) + 2;
                for (offset, line) in body[env_at + 1..].iter().enumerate() {
                    if indent(line) < item_indent || line.trim().starts_with('#') {
                        if indent(line) < item_indent && !line.trim().starts_with('#') {
                            break;
                        }
                        continue;
                    }
                    let Some(name) = line.trim().strip_prefix("- name: ") else {
                        continue;
                    };
                    let next = body[env_at + 2 + offset].trim();
                    let value = if let Some(value) = next.strip_prefix("value: ") {
                        scalar(value)
                    } else if next == "valueFrom:" {
                        SECRET_PLACEHOLDER.to_owned()
                    } else {
                        panic!("{source}: {name} has `value:` or `valueFrom:` next");
                    };
                    env.insert(scalar(name), value);
                }
            }
            let config_maps_of = body
                .windows(2)
                .filter(|pair| pair[0].trim() == "- configMapRef:")
                .map(|pair| {
                    scalar(
                        pair[1]
                            .trim()
                            .strip_prefix("name: ")
                            .expect("configMapRef's name"),
                    )
                })
                .collect();
            containers.push(Container {
                source,
                args,
                env,
                config_maps: config_maps_of,
            });
        }
    }
    (containers, config_maps)
}

/// Variables `saldo` reads that are not a flag's (so not in `--help`).
const VARIABLES_NOT_FLAGS: [&str; 1] = ["SALDO_LOG"];

/// Variables read as librdkafka properties by the subcommands with Kafka
/// clients (those that take `--kafka-property`).
const KAFKA_PROPERTY_PREFIX: &str = "SALDO_KAFKA__";

/// The OpenTelemetry SDK's standard variables, which every long-running
/// subcommand reads (ADR 0020) and `--check-config` checks.
const OPENTELEMETRY_PREFIX: &str = "OTEL_";

#[test]
fn every_container_in_the_kubernetes_manifests_passes_the_binarys_configuration_check() {
    // Proves each Deployment's and Job's arguments and environment (with
    // the base's and the example overlay's ConfigMaps) parse as the binary
    // parses them, and every variable set is one the subcommand reads.
    let files = yaml_files(&kubernetes_dir());
    let (containers, config_maps) = containers_and_config_maps(&files);
    let subcommands: Vec<&str> = containers
        .iter()
        .map(|container| container.args[0].as_str())
        .collect();
    for expected in [
        "order",
        "inventory",
        "payment",
        "outbox",
        "gateway",
        "reconcile",
        "migrate",
    ] {
        assert!(
            subcommands.contains(&expected),
            "no container runs `saldo {expected}`: {subcommands:?}"
        );
    }
    assert_eq!(
        subcommands.iter().filter(|name| **name == "outbox").count(),
        3,
        "one publisher per service"
    );
    assert!(
        config_maps
            .get("saldo-telemetry")
            .is_some_and(|data| data.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT")),
        "the example overlay names a collector"
    );
    let overlay_kafka = config_maps
        .get("saldo-kafka")
        .expect("the base's ConfigMap saldo-kafka");
    assert!(
        overlay_kafka.contains_key("SALDO_KAFKA_BOOTSTRAP"),
        "{overlay_kafka:?}"
    );
    for container in &containers {
        let mut env = container.env.clone();
        for name in &container.config_maps {
            let data = config_maps
                .get(name)
                .unwrap_or_else(|| panic!("{}: no ConfigMap {name}", container.source));
            env.extend(data.clone());
        }
        let help = saldo(&[container.args[0].as_str(), "--help"]);
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        for name in env.keys() {
            assert!(
                help.contains(&format!("[env: {name}"))
                    || VARIABLES_NOT_FLAGS.contains(&name.as_str())
                    || name.starts_with(OPENTELEMETRY_PREFIX)
                    || (name.starts_with(KAFKA_PROPERTY_PREFIX)
                        && help.contains("--kafka-property")),
                "{}: `saldo {}` reads no {name}",
                container.source,
                container.args[0]
            );
        }
        let output = Command::new(env!("CARGO_BIN_EXE_saldo"))
            .arg("--check-config")
            .args(&container.args)
            .env_clear()
            .envs(&env)
            .output()
            .expect("the binary runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: saldo {:?} with {:?}: {}",
            container.source,
            container.args,
            env,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn check_config_refuses_what_the_command_would_refuse() {
    // Proves --check-config parses for real: a missing URL, a bad address
    // and an unknown flag are each one line and exit 2, as the command's are.
    let valid = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(["--check-config", "migrate"])
        .env_clear()
        .env("SALDO_DATABASE_URL", SECRET_PLACEHOLDER)
        .output()
        .expect("runs");
    assert_eq!(valid.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&valid.stdout).trim(),
        "saldo: the configuration is valid"
    );
    for arguments in [
        vec!["--check-config", "migrate"],
        vec![
            "order",
            "--check-config",
            "--database-url=x",
            "--kafka-bootstrap=y",
            "--http-address=nowhere",
        ],
        vec![
            "--check-config",
            "reconcile",
            "--database-url=x",
            "--colour",
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_saldo"))
            .args(&arguments)
            .env_clear()
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{arguments:?}: {stderr}");
    }
}

#[test]
fn an_outbox_publisher_serves_the_probes_and_is_ready_only_while_the_broker_answers() {
    // Proves the publisher's metrics port answers /healthz, /readyz and
    // /metrics (its Kubernetes probes), and that /readyz fails while the
    // broker is down and recovers when it is back.
    let (_admin_url, _name, url) = migrated_database("probes");
    let mut processes = Processes(Vec::new());
    let broker = spawn_broker(&mut processes);
    let address = format!("127.0.0.1:{}", free_port());
    processes.spawn(
        "outbox-probes",
        &[
            "outbox",
            "--service=order",
            "--metrics-address",
            &address,
            "--kafka-bootstrap",
            &broker.bootstrap,
            "--create-topics=false",
        ],
        &[("SALDO_DATABASE_URL", url.as_str())],
    );
    let status_within = |path: &str, wanted: u16, seconds: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let status = http(&address, "GET", path, &[], None).map(|(status, _, _)| status);
            if status == Some(wanted) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GET {path} answered {status:?}, not {wanted}, within {seconds} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    status_within("/healthz", 200, 30);
    status_within("/readyz", 200, 30);
    status_within("/metrics", 200, 5);
    // No API is served here, so no API document either.
    status_within("/openapi.json", 404, 5);
    processes.signal("broker", "USR1");
    status_within("/readyz", 503, 30);
    status_within("/healthz", 200, 5);
    processes.signal("broker", "USR2");
    status_within("/readyz", 200, 30);
    processes.stop_all();
}
