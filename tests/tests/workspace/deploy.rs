//! The container image and the Kubernetes manifests, held to the repository
//! where no engine or cluster can run them: the Dockerfile builds what
//! exists on the pinned toolchain, and every workload has the probes,
//! resources and budget the operations guide promises. (Their schema is
//! checked by `kubernetes-validate` in tests/run.sh; their arguments by the
//! binary itself, in hosts/saldo/tests/cli/deploy.rs.)

use std::fs;

use saldo_tests::architecture::workspace_root;

fn read(path: &str) -> String {
    fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Where `saldo dev` looks for the page beside an installed binary
/// (hosts/saldo/src/dev_command.rs), from `/usr/local/bin`.
const HARNESS_INSTALLED: &str = "/usr/local/share/saldo/harness";

#[test]
fn the_dockerfile_builds_the_pinned_toolchain_copies_what_exists_and_runs_unprivileged() {
    // Proves the image's build stage is the toolchain rust-toolchain.toml
    // pins, every source path it copies or runs exists, the page lands where
    // the binary looks, and the runtime user is numeric and not root.
    let dockerfile = read("Dockerfile");
    let channel = read("rust-toolchain.toml")
        .lines()
        .find_map(|line| line.strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("rust-toolchain.toml pins a channel");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(
        stages[0].starts_with(&format!("FROM rust:{channel}-")),
        "{} builds on {channel}",
        stages[0]
    );
    assert!(
        dockerfile.contains("cargo build --release --locked -p saldo --bin saldo"),
        "only the saldo binary, in release, with the lockfile"
    );
    let dev_command = read("hosts/saldo/src/dev_command.rs");
    assert!(dev_command.contains("bin.join(\"../share/saldo/harness\")"));
    let mut copied = 0;
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["COPY", "--from=build", source, target] => {
                copied += 1;
                let relative = source.strip_prefix("/src/").expect("from the build's /src");
                let built = relative == "target/release/saldo";
                assert!(
                    built || workspace_root().join(relative).exists(),
                    "{source} exists in the repository"
                );
                if relative == "harness/web" {
                    assert_eq!(*target, HARNESS_INSTALLED);
                }
            }
            ["RUN", "bash", script] => {
                assert!(workspace_root().join(script).is_file(), "{script} exists");
            }
            _ => {}
        }
    }
    assert_eq!(copied, 2, "the binary and the page");
    let user = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    let (uid, gid) = user.split_once(':').expect("USER UID:GID");
    for id in [uid, gid] {
        let id: u32 = id.parse().expect("numeric, so runAsNonRoot can verify it");
        assert_ne!(id, 0, "not root");
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"saldo\"]"));
    let ignored = read(".dockerignore");
    for excluded in ["target", ".git"] {
        assert!(
            ignored.lines().any(|line| line == excluded),
            ".dockerignore excludes {excluded}"
        );
    }
    // The manifests run the image as the Dockerfile's user.
    for manifest in workload_manifests() {
        let text = read(&manifest);
        assert!(
            text.contains(&format!("runAsUser: {uid}")),
            "{manifest} runs as {uid}"
        );
    }
}

/// The base's files that hold Deployments or Jobs.
fn workload_manifests() -> Vec<String> {
    let base = workspace_root().join("deploy/kubernetes/base");
    let mut files: Vec<String> = fs::read_dir(&base)
        .expect("deploy/kubernetes/base")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| format!("deploy/kubernetes/base/{name}"))
        .filter(|path| {
            let text = read(path);
            text.contains("kind: Deployment") || text.contains("kind: Job")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_deployment_has_its_probes_a_memory_limit_and_a_budget_or_one_replica() {
    // Proves each Deployment probes /healthz for liveness and /readyz for
    // readiness, requests and limits memory, and has a PodDisruptionBudget
    // unless it runs a single replica; and the base lists every file.
    let kustomization = read("deploy/kubernetes/base/kustomization.yaml");
    let mut deployments = 0;
    for manifest in workload_manifests() {
        let file_name = manifest.rsplit('/').next().expect("a file name");
        assert!(
            kustomization.contains(&format!("  - {file_name}\n")),
            "the base lists {file_name}"
        );
        let text = read(&manifest);
        let budgets: Vec<&str> = text
            .split("\n---\n")
            .filter(|document| document.contains("kind: PodDisruptionBudget"))
            .collect();
        for document in text.split("\n---\n") {
            if !document.contains("kind: Deployment") {
                continue;
            }
            deployments += 1;
            let name = document
                .lines()
                .find_map(|line| line.strip_prefix("  name: "))
                .expect("a Deployment has a name");
            for (probe, path) in [
                ("livenessProbe:", "/healthz"),
                ("readinessProbe:", "/readyz"),
            ] {
                let after = document
                    .split_once(probe)
                    .unwrap_or_else(|| panic!("{name} has a {probe}"))
                    .1;
                assert!(
                    after
                        .trim_start()
                        .starts_with(&format!("httpGet:\n              path: {path}")),
                    "{name}'s {probe} gets {path}"
                );
            }
            let resources = document
                .split_once("resources:")
                .unwrap_or_else(|| panic!("{name} has resources"))
                .1;
            let limits = resources.split_once("limits:").expect("limits").1;
            assert!(
                resources
                    .split_once("limits:")
                    .expect("limits")
                    .0
                    .contains("memory:"),
                "{name} requests memory"
            );
            assert!(
                limits.trim_start().starts_with("memory:"),
                "{name} limits memory"
            );
            let single = document.contains("  replicas: 1\n");
            let budgeted = budgets
                .iter()
                .any(|budget| budget.contains(&format!("app.kubernetes.io/name: {name}")));
            assert!(single || budgeted, "{name} has a PodDisruptionBudget");
        }
    }
    assert_eq!(
        deployments, 8,
        "three services, three publishers, the gateway, the reconciler"
    );
}
