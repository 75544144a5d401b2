//! `saldo sim`: runs seeds of the simulator, in parallel, and reports.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use saldo_sim::{Profile, SimConfig, Stats, ViolationReport};

/// Arguments of `saldo sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many seeds to run, starting at --seed.
    #[arg(long, default_value_t = 1, env = "SALDO_SIM_SEEDS")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0, env = "SALDO_SIM_SEED")]
    seed: u64,
    /// Orders the client places in each run.
    #[arg(long, default_value_t = 20, env = "SALDO_SIM_ORDERS")]
    orders: u32,
    /// Fault profile: none, light, heavy or chaos.
    #[arg(long, default_value = "light", env = "SALDO_SIM_FAULTS")]
    faults: String,
    /// Write the whole run as JSON lines to FILE (one seed only).
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// When stderr is not a terminal (a CI log, a soak under nohup), print a
    /// progress line this often instead of the progress bar.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    progress_every: Duration,
}

/// How often the plain progress reporter checks whether the run ended.
const PROGRESS_POLL: Duration = Duration::from_millis(100);

/// Runs the command; the exit code is 1 when an invariant broke.
pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let Some(profile) = Profile::from_name(&args.faults) else {
        bail!(
            "unknown fault profile {:?}; choose none, light, heavy or chaos",
            args.faults
        );
    };
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if args.orders == 0 || args.orders > saldo_sim::config::ORDERS_MAX {
        bail!(
            "--orders must be between 1 and {}",
            saldo_sim::config::ORDERS_MAX
        );
    }
    if args.trace.is_some() && args.seeds != 1 {
        bail!("--trace records one run: use it with --seeds 1");
    }
    args.seed
        .checked_add(args.seeds - 1)
        .context("--seed plus --seeds overflows")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, 64);

    let progress = ProgressBar::new(args.seeds);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} seeds ({per_sec}, eta {eta})",
        )
        .expect("the template is valid"),
    );
    // Runs are counted from 0, not seeds: the last seed may be u64::MAX,
    // and a seed counter would wrap past it to 0 and never stop.
    let next = AtomicU64::new(0);
    let totals = Mutex::new(Stats::default());
    let first_violation: Mutex<Option<Box<ViolationReport>>> = Mutex::new(None);
    let last_report = Mutex::new(None);
    let started = Instant::now();
    let finished = AtomicBool::new(false);
    let plain_progress = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    if plain_progress {
        eprintln!(
            "saldo sim: running {} seed(s) from {} on {threads} thread(s)",
            args.seeds, args.seed
        );
    }
    std::thread::scope(|scope| {
        if plain_progress && !args.progress_every.is_zero() {
            scope.spawn(|| {
                let mut next_line = Instant::now() + args.progress_every;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(PROGRESS_POLL.min(args.progress_every));
                    if Instant::now() < next_line {
                        continue;
                    }
                    next_line += args.progress_every;
                    let done = progress.position();
                    let elapsed_ms = u64::try_from(started.elapsed().as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    eprintln!(
                        "saldo sim: {done}/{} seeds, {} seeds/s, {} s elapsed",
                        args.seeds,
                        done.saturating_mul(1_000) / elapsed_ms,
                        elapsed_ms / 1_000
                    );
                }
            });
        }
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= args.seeds {
                            break;
                        }
                        let seed = args.seed + index;
                        let report = saldo_sim::run(
                            SimConfig::new(seed, args.orders, profile),
                            args.trace.is_some(),
                        );
                        totals.lock().expect("not poisoned").absorb(&report.stats);
                        if let Some(violation) = report.violation.clone() {
                            let mut first = first_violation.lock().expect("not poisoned");
                            if first
                                .as_ref()
                                .is_none_or(|known| violation.seed < known.seed)
                            {
                                *first = Some(violation);
                            }
                            // Later seeds cannot be the first failure any more.
                            next.store(args.seeds, Ordering::Relaxed);
                        }
                        if args.seeds == 1 {
                            *last_report.lock().expect("not poisoned") = Some(report);
                        }
                        progress.inc(1);
                    }
                })
            })
            .collect();
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        finished.store(true, Ordering::Relaxed);
    });
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let totals = totals.into_inner().expect("not poisoned");
    let report = last_report.into_inner().expect("not poisoned");

    if let (Some(path), Some(report)) = (&args.trace, &report) {
        let lines = report.trace_json_lines.as_deref().unwrap_or_default();
        std::fs::write(path, lines)
            .with_context(|| format!("cannot write the trace to {}", path.display()))?;
    }

    let orders = totals.orders_confirmed + totals.orders_cancelled;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "saldo sim: {} seed(s) from {} with {} orders each, faults {}",
        args.seeds,
        args.seed,
        args.orders,
        profile.name()
    )?;
    writeln!(
        out,
        "  orders        {:>12} confirmed {:>10} cancelled {:>10}",
        orders, totals.orders_confirmed, totals.orders_cancelled
    )?;
    writeln!(
        out,
        "  messages      {:>12} published {:>10} delivered",
        totals.messages_published, totals.messages_delivered
    )?;
    writeln!(
        out,
        "  duplicates    {:>12} injected  {:>10} absorbed by inboxes",
        totals.duplicates_injected, totals.duplicates_absorbed
    )?;
    writeln!(
        out,
        "  crashes       {:>12} injected",
        totals.crashes_injected
    )?;
    writeln!(
        out,
        "  client retries{:>12}    timers fired {:>10}",
        totals.client_retries, totals.timers_fired
    )?;
    writeln!(out, "  invariant checks {:>9}", totals.invariant_checks)?;
    // Integer arithmetic only, as everywhere in Saldo.
    let micros = elapsed.as_micros().max(1);
    let rate = u128::from(orders) * 1_000_000 / micros;
    writeln!(
        out,
        "  elapsed       {:>9}.{:02}s ({rate} orders/s on {threads} thread(s))",
        elapsed.as_secs(),
        elapsed.subsec_millis() / 10
    )?;
    if let Some(report) = &report {
        writeln!(out, "  trace hash    {}", report.trace_hash)?;
    }
    if let Some(path) = &args.trace {
        writeln!(out, "  trace written to {}", path.display())?;
    }
    if let Some(violation) = first_violation.into_inner().expect("not poisoned") {
        writeln!(out)?;
        writeln!(
            out,
            "INVARIANT BROKEN: {} at step {} of seed {}",
            violation.violation.invariant, violation.step, violation.seed
        )?;
        writeln!(out, "  {}", violation.violation.detail)?;
        writeln!(out, "  last events:")?;
        for record in &violation.recent {
            writeln!(
                out,
                "    {}",
                serde_json::to_string(record).unwrap_or_default()
            )?;
        }
        writeln!(
            out,
            "reproduce: saldo sim --seed {} --orders {} --faults {} --trace saldo-{}.jsonl",
            violation.seed,
            args.orders,
            profile.name(),
            violation.seed
        )?;
        return Ok(ExitCode::from(1));
    }
    writeln!(out, "all invariants held")?;
    Ok(ExitCode::SUCCESS)
}
