//! `saldo reconcile`: read-only checks, once or as a periodic service.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::parse_duration;
use saldo_kafka::wall_clock;
use saldo_postgres::reconcile::{Reconciler, RunReport};
use saldo_reconcile::{FindingKind, Settings};
use sqlx::postgres::PgPoolOptions;

/// Arguments of `saldo reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// PostgreSQL URL; use the read-only `saldo_reconcile` role.
    #[arg(long, env = "SALDO_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Run once, print a report, exit 0 when clean and 1 with findings.
    #[arg(long, conflicts_with = "interval")]
    once: bool,
    /// Run every INTERVAL (e.g. 30s, 5m) as a service, with metrics and alerts.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Print the report as JSON (with --once).
    #[arg(long)]
    json: bool,
    /// How long an unfinished order counts as in flight.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    grace: Duration,
    /// How long an outbox row may wait unpublished.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    outbox_age: Duration,
    /// A checkpoint printed earlier by `saldo ledger checkpoint`
    /// (SEQUENCE:HASH), kept outside the database: any rewrite of the chain
    /// at or before it is reported (repeat for several).
    #[arg(long = "expect-checkpoint", value_name = "SEQUENCE:HASH")]
    expect_checkpoints: Vec<saldo_ledger::Checkpoint>,
    /// Where to serve Prometheus metrics (with --interval).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_address: SocketAddr,
}

/// Runs the command.
pub fn run(args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    if !args.once && args.interval.is_none() {
        bail!("choose --once or --interval DURATION");
    }
    if args.interval.is_some_and(|interval| interval.is_zero()) {
        bail!("--interval must be longer than zero");
    }
    let settings = Settings {
        grace_ms: u64::try_from(args.grace.as_millis()).unwrap_or(u64::MAX),
        outbox_age_max_ms: u64::try_from(args.outbox_age.as_millis()).unwrap_or(u64::MAX),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(saldo_postgres::ACQUIRE_TIMEOUT)
            .connect(&args.database_url)
            .await
            .context("cannot connect to the database")?;
        let mut reconciler = Reconciler::new(pool, settings);
        for checkpoint in &args.expect_checkpoints {
            reconciler.expect_checkpoint(*checkpoint);
        }
        match args.interval {
            None => {
                let report = reconciler
                    .run(wall_clock())
                    .await
                    .context("reconciliation failed")?;
                print_report(&report, args.json)?;
                Ok(if report.findings.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            Some(interval) => serve(&mut reconciler, interval, args.metrics_address).await,
        }
    })
}

fn print_report(report: &RunReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "clean": report.findings.is_empty(),
            "orders_checked": report.orders_checked,
            "entries_verified": report.entries_verified,
            "findings": report.findings,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "saldo reconcile: {} orders checked, {} ledger entries verified",
        report.orders_checked, report.entries_verified
    )?;
    if report.findings.is_empty() {
        writeln!(out, "clean: no findings")?;
    }
    for finding in &report.findings {
        writeln!(
            out,
            "{:<8} {:<36} {:<40} {}",
            format!("{:?}", finding.severity).to_lowercase(),
            finding.kind.name(),
            finding.ids.join(" "),
            finding.detail
        )?;
    }
    if !report.findings.is_empty() {
        writeln!(out, "{} finding(s)", report.findings.len())?;
    }
    Ok(())
}

/// The periodic service: gauges per finding kind, and one alert line per
/// new finding (a finding that persists is not alerted again).
async fn serve(
    reconciler: &mut Reconciler,
    interval: Duration,
    metrics_address: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let mut probes = saldo_http::api::Api::new(wall_clock);
    probes.metrics = Some(
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?,
    );
    crate::service_command::serve_probes(metrics_address, probes).await?;
    eprintln!("saldo reconcile: every {interval:?}, metrics on http://{metrics_address}/metrics");
    let mut alerted: BTreeSet<String> = BTreeSet::new();
    let mut ticker = tokio::time::interval(interval);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("saldo reconcile: stopping on SIGINT");
                return Ok(ExitCode::SUCCESS);
            }
            _ = terminate.recv() => {
                eprintln!("saldo reconcile: stopping on SIGTERM");
                return Ok(ExitCode::SUCCESS);
            }
        }
        let report = match reconciler.run(wall_clock()).await {
            Ok(report) => report,
            Err(error) => {
                metrics::counter!("saldo_reconcile_failures_total").increment(1);
                eprintln!("saldo reconcile: run failed: {error}");
                continue;
            }
        };
        metrics::counter!("saldo_reconcile_runs_total").increment(1);
        metrics::gauge!("saldo_reconcile_orders_checked").set(report.orders_checked as f64);
        for kind in FindingKind::ALL {
            let count = report
                .findings
                .iter()
                .filter(|finding| finding.kind == kind)
                .count();
            metrics::gauge!("saldo_reconcile_findings", "kind" => kind.name()).set(count as f64);
        }
        let current: BTreeSet<String> = report
            .findings
            .iter()
            .map(|finding| finding.identity())
            .collect();
        for finding in &report.findings {
            if !alerted.contains(&finding.identity()) {
                eprintln!(
                    "ALERT {}",
                    serde_json::to_string(finding).unwrap_or_default()
                );
            }
        }
        alerted = current;
    }
}
