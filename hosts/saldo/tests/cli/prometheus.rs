//! A real Prometheus (Debian's `prometheus`, which tests/run.sh installs
//! with promtool) scraping a running `saldo reconcile` with the shipped
//! rules: an injected dead letter makes its alert fire.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{first_top_up_sql, free_port, http, reconcile_database};

/// The shipped rules, from this crate's manifest directory.
fn rules_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/saldo-rules.yml")
}

/// How long Prometheus may take to scrape, evaluate and fire.
const ALERT_WITHIN: Duration = Duration::from_secs(60);

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The alerts Prometheus reports, as `(name, state)`.
fn alerts(address: &str) -> Vec<(String, String)> {
    let Some((200, _, body)) = http(address, "GET", "/api/v1/alerts", &[], None) else {
        return Vec::new();
    };
    body["data"]["alerts"]
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .map(|alert| {
                    (
                        alert["labels"]["alertname"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                        alert["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_scraping_the_reconciler_fires_the_dead_letter_and_critical_alerts() {
    // Proves the shipped rules work on what the reconciler really exports:
    // Prometheus scrapes it, evaluates saldo-rules.yml, and an injected dead
    // letter makes SaldoDeadLettersPresent fire while no critical alert does;
    // then an injected ledger finding makes SaldoReconciliationCritical fire.
    let prometheus = which_prometheus();
    let (read_only, run_sql) = reconcile_database("prometheus");
    run_sql(
        "INSERT INTO inventory.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ('m', 'ReserveStock', 'o1', 'malformed', '\\x00', now())",
    );
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let _reconciler = Running(
        Command::new(env!("CARGO_BIN_EXE_saldo"))
            .args([
                "reconcile",
                "--interval=1s",
                "--metrics-address",
                &metrics_address,
                "--database-url",
                &read_only,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("saldo reconcile starts"),
    );
    let directory = std::env::temp_dir().join(format!("saldo-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("a temporary directory");
    let config = directory.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: reconciler\n    static_configs:\n      - targets: ['{metrics_address}']\n",
            rules_file().display()
        ),
    )
    .expect("writes the configuration");
    let web_address = format!("127.0.0.1:{}", free_port());
    let _prometheus = Running(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.join("data").display()
            ))
            .arg(format!("--web.listen-address={web_address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let deadline = Instant::now() + ALERT_WITHIN;
    let firing = loop {
        let alerts = alerts(&web_address);
        if alerts
            .iter()
            .any(|(name, state)| name == "SaldoDeadLettersPresent" && state == "firing")
        {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "SaldoDeadLettersPresent did not fire within {ALERT_WITHIN:?}: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        !firing
            .iter()
            .any(|(name, _)| name == "SaldoReconciliationCritical"),
        "a dead letter is not critical: {firing:?}"
    );
    // A reconciliation finding: a wallet whose balance its ledger entries
    // do not explain (a cent written behind the ledger's back) is critical.
    run_sql(&first_top_up_sql("alice", 500));
    run_sql("UPDATE payment.accounts SET balance_minor = balance_minor + 1 WHERE kind = 'wallet'");
    let deadline = Instant::now() + ALERT_WITHIN;
    loop {
        let alerts = alerts(&web_address);
        if alerts
            .iter()
            .any(|(name, state)| name == "SaldoReconciliationCritical" && state == "firing")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SaldoReconciliationCritical did not fire within {ALERT_WITHIN:?}: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_dir_all(&directory);
}

/// Debian's prometheus binary; tests/run.sh installs it with promtool.
fn which_prometheus() -> &'static str {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "no prometheus on PATH: install Debian's prometheus package (tests/run.sh does)"
    );
    "prometheus"
}
