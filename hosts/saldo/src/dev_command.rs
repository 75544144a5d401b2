//! `saldo dev`: every service in one process on the in-memory store, with
//! an in-process bus: no PostgreSQL, no Kafka, nothing to set up.
//!
//! It runs the production deciders through the production rhythm: the API
//! commits decisions with their outbox rows; the bus takes each committed
//! outbox row, hands it to its consumer through `decide_message` with the
//! consumer's inbox, commits that, and only then marks the row published;
//! due saga deadlines fire through `decide_deadline`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Service, Traceparent};
use saldo_domain::order::{deadline_read_set, decide_deadline};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::{Rules, decide_message, message_read_set};
use saldo_http::api::Api;
use saldo_http::backend::{Backend, ExecuteFailure, MemoryBackend, execute};
use saldo_http::gateway::{Gateway, parse_keys};
use saldo_idempotency::IdempotencyKey;
use saldo_kafka::wall_clock;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, Sku};

use crate::service_command::{runtime, shutdown};

/// The most outbox rows the bus takes from one outbox per round.
pub const BUS_BATCH_MAX: usize = 256;

/// Arguments of `saldo dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where to serve the API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SALDO_LISTEN")]
    listen: SocketAddr,
    /// Put the gateway in front, admitting the keys in this file (see
    /// `saldo api-key`); without it the gateway is bypassed.
    #[arg(long, env = "SALDO_GATEWAY_KEYS")]
    keys: Option<PathBuf>,
    /// Start empty instead of with the demo stock and wallets.
    #[arg(long)]
    no_seed: bool,
    /// The browser harness's page, served at /harness/ (build it with
    /// `bash harness/build.sh`).
    #[arg(long, value_name = "DIR", env = "SALDO_HARNESS_DIR", default_value = HARNESS_DIR)]
    harness: PathBuf,
}

/// Where the page is in a checkout of the repository.
const HARNESS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../harness/web");

/// The harness's static page, served as files; `/harness` redirects to
/// `/harness/` so the page's relative links resolve. Without a build, the
/// page says how to make one.
fn harness_routes(dir: &std::path::Path) -> axum::Router {
    use axum::response::{Html, IntoResponse, Redirect};
    use axum::routing::get;
    let built = dir.join("pkg").join("saldo_harness_bg.wasm").is_file();
    let router = axum::Router::new().route(
        "/harness",
        get(|| async { Redirect::permanent("/harness/") }),
    );
    if built {
        router.nest_service("/harness/", tower_http::services::ServeDir::new(dir))
    } else {
        let missing = format!(
            "<!doctype html><title>Saldo harness</title><p>The browser harness is not built in {}. \
             Build it with <code>bash harness/build.sh</code> and reload.</p>",
            dir.display()
        );
        router.route(
            "/harness/",
            get(move || {
                let missing = missing.clone();
                async move { (axum::http::StatusCode::NOT_FOUND, Html(missing)).into_response() }
            }),
        )
    }
}

/// The demo catalogue: SKU, units, unit price in euro cents.
const DEMO_STOCK: [(&str, u64, i64); 3] = [
    ("book", 100, 1_500),
    ("pen", 1_000, 250),
    ("lamp", 1, 4_500),
];
/// The demo wallets: customer, euro cents.
const DEMO_WALLETS: [(&str, i64); 2] = [("alice", 10_000), ("bob", 500)];

/// Seeds the demo data through the same deciders as the API.
async fn seed(backend: &MemoryBackend, rules: &Rules) -> anyhow::Result<()> {
    let now = wall_clock();
    for (sku, on_hand, price_minor) in DEMO_STOCK {
        let request = SetStock {
            sku: Sku::new(sku).context("demo sku")?,
            on_hand,
            unit_price: Money::from_minor(price_minor, Currency::EUR),
        };
        execute(backend, &set_stock_read_set(&request), now, |snapshot| {
            decide_set_stock(snapshot, &request)
        })
        .await
        .map_err(|error| anyhow::anyhow!("seeding stock: {error:?}"))?;
    }
    for (customer, amount_minor) in DEMO_WALLETS {
        let request = TopUp {
            customer: CustomerId::new(customer).context("demo customer")?,
            amount: Money::from_minor(amount_minor, Currency::EUR),
            idempotency_key: IdempotencyKey::new(format!("demo-seed-{customer}"))
                .context("demo key")?,
            correlation_id: CorrelationId::new("demo-seed").context("demo correlation id")?,
            traceparent: Traceparent::root(Id128::derive("demo-seed", &[customer.as_bytes()])),
        };
        execute(backend, &top_up_read_set(&request), now, |snapshot| {
            decide_top_up(&rules.payment, snapshot, &request, now)
        })
        .await
        .map_err(|error| anyhow::anyhow!("seeding wallets: {error:?}"))?;
    }
    Ok(())
}

/// Delivers every committed outbox row to its consumer and fires due
/// deadlines, until nothing is left to do; returns whether it did anything.
async fn drain(backend: &MemoryBackend, rules: &Rules) -> bool {
    let mut progressed = false;
    for service in Service::ALL {
        let rows = backend.lock().outbox_pending(service, BUS_BATCH_MAX);
        let mut delivered = Vec::with_capacity(rows.len());
        for row in rows {
            let envelope = &row.envelope;
            if let Some(consumer) = envelope.payload.consumer() {
                let now = wall_clock();
                let result = execute(
                    backend,
                    &message_read_set(consumer, envelope),
                    now,
                    |snapshot| decide_message(rules, consumer, snapshot, envelope, now),
                )
                .await;
                match result {
                    Ok(outcome) => {
                        tracing::debug!(%consumer, message_type = envelope.message_type(), order_id = %envelope.order_id, correlation_id = %envelope.correlation_id, ?outcome, "delivered");
                    }
                    Err(ExecuteFailure::Rejected(refusal)) => {
                        // The production consumer dead-letters this; here the
                        // log line is the dead letter.
                        tracing::error!(alert = true, %consumer, message_type = envelope.message_type(), order_id = %envelope.order_id, %refusal, "dead-lettered");
                        metrics::counter!("saldo_dead_letters_total", "service" => consumer.name())
                            .increment(1);
                    }
                    // Contention: stop here and retry this row next round, so
                    // that the outbox's order is kept.
                    Err(ExecuteFailure::Conflict(_) | ExecuteFailure::Unavailable(_)) => break,
                }
            }
            delivered.push(row.sequence);
        }
        progressed |= !delivered.is_empty();
        backend.lock().mark_published(service, &delivered);
    }
    let now = wall_clock();
    let due = backend.lock().due_timers(now, BUS_BATCH_MAX);
    for order_id in due {
        progressed = true;
        let result = execute(backend, &deadline_read_set(&order_id), now, |snapshot| {
            Ok::<_, ()>(decide_deadline(&rules.order_saga, snapshot, &order_id, now))
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(%order_id, ?error, "deadline not handled; retrying");
        }
    }
    progressed
}

/// The bus: drains after every commit and at the next deadline.
async fn run_bus(backend: MemoryBackend, rules: Arc<Rules>) {
    loop {
        // Registered before draining, so a commit during the drain still wakes us.
        let committed = backend.committed().notified();
        while drain(&backend, &rules).await {}
        let next_timer = backend.lock().next_timer();
        let wait_ms = next_timer.map_or(1_000, |at| at.ms_since(wall_clock()).clamp(1, 1_000));
        tokio::select! {
            () = committed => {}
            () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        }
    }
}

/// Runs `saldo dev` until SIGTERM or SIGINT.
pub fn run(args: &DevArgs) -> anyhow::Result<ExitCode> {
    let gateway = match &args.keys {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the keys file {}", path.display()))?;
            Some(Gateway::new(parse_keys(&text)?))
        }
        None => None,
    };
    runtime()?.block_on(async {
        let backend = MemoryBackend::new();
        let rules = Arc::new(Rules::default());
        if !args.no_seed {
            seed(&backend, &rules).await?;
        }
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let shared: Arc<dyn Backend> = Arc::new(backend.clone());
        let mut api = Api::new(wall_clock);
        api.order = Some(shared.clone());
        api.payment = Some(shared.clone());
        api.inventory = Some(shared);
        api.rules = rules.clone();
        api.metrics = Some(metrics);
        let mut router = api.router();
        if let Some(gateway) = gateway {
            router = gateway.protect(router);
        }
        // The page is static and public: it runs the simulator in the
        // browser and never calls the API.
        let router = router.merge(harness_routes(&args.harness));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr().context("local address")?;
        let bus = tokio::spawn(run_bus(backend, rules));
        print_banner(address, args.no_seed, args.keys.is_some());
        saldo_http::serve(listener, router, shutdown())
            .await
            .context("serving HTTP")?;
        bus.abort();
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn print_banner(address: SocketAddr, no_seed: bool, gateway: bool) {
    use std::fmt::Write as _;
    let url = format!("http://{address}");
    let key = if gateway {
        " -H 'X-Api-Key: YOUR_KEY'"
    } else {
        ""
    };
    let mut banner =
        format!("Saldo dev is running at {url} (in memory: no PostgreSQL, no Kafka).\n");
    if !no_seed {
        banner.push_str(
            "Demo data: stock book (100 at 15.00 EUR), pen (1000 at 2.50), lamp (1 at 45.00);\n",
        );
        banner.push_str("           wallets alice (100.00 EUR) and bob (5.00 EUR).\n");
    }
    let _ = writeln!(
        banner,
        "Place an order:\n  curl -si -X POST {url}/orders -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1'{key} \\\n    -d '{{\"customer\":\"alice\",\"currency\":\"EUR\",\"lines\":[{{\"sku\":\"book\",\"quantity\":2}}]}}'"
    );
    let _ = writeln!(
        banner,
        "Then follow it with the Location header:  curl -s {url}/orders/ORDER_ID{key}"
    );
    let _ = writeln!(
        banner,
        "API description: {url}/openapi.json   Browser harness: {url}/harness/\nStop with Ctrl-C."
    );
    // One write, errors ignored: whoever started us may have stopped
    // reading after the first line, and that must not stop the server.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}
