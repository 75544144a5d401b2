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
use saldo_domain::Rules;
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Service, Traceparent};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::retention::Horizons;
use saldo_engine::{
    DeadLetter, DeadLetterSink, Deliverer, DeliveryError, Incoming, MemoryBackend, Store, execute,
    timers, wall_clock,
};
use saldo_http::admin::AdminAccess;
use saldo_http::api::Api;
use saldo_http::gateway::{Gateway, parse_keys};
use saldo_idempotency::IdempotencyKey;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, Sku};

use crate::service_command::{runtime, shutdown};

/// The most outbox rows the bus takes from one outbox per round; they are
/// delivered to their consumers in batches of the engine's size.
pub const BUS_BATCH_MAX: usize = 128;
/// The longest the bus sleeps when nothing is due; a commit wakes it sooner.
pub const BUS_IDLE_MAX: Duration = Duration::from_secs(1);

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
    /// `bash harness/build.sh`). Default: the first built page of
    /// `SHARE/saldo/harness` beside the installed binary (`BIN/../share`),
    /// `./harness/web` and the checkout this binary was built from.
    #[arg(long, value_name = "DIR", env = "SALDO_HARNESS_DIR")]
    harness: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::tls_flags::ListenerTls,
}

/// Where the page is in the checkout this binary was built from.
const HARNESS_DIR_OF_BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../harness/web");

/// Where to look for the page when `--harness` is not given, in order: an
/// installed layout, the working directory's checkout, the build's checkout.
fn harness_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(binary) = std::env::current_exe()
        && let Some(bin) = binary.parent()
    {
        candidates.push(bin.join("../share/saldo/harness"));
    }
    candidates.push(PathBuf::from("harness/web"));
    candidates.push(PathBuf::from(HARNESS_DIR_OF_BUILD));
    candidates
}

/// `--harness` when given, else the first candidate with a built page, else
/// the first that exists (whose page then says how to build it).
fn harness_dir(given: Option<&PathBuf>) -> PathBuf {
    if let Some(given) = given {
        return given.clone();
    }
    let candidates = harness_candidates();
    candidates
        .iter()
        .find(|dir| is_built(dir))
        .or_else(|| candidates.iter().find(|dir| dir.is_dir()))
        .unwrap_or(&candidates[candidates.len() - 1])
        .clone()
}

fn is_built(dir: &std::path::Path) -> bool {
    dir.join("pkg").join("saldo_harness_bg.wasm").is_file()
}

/// The harness's static page, served as files; `/harness` redirects to
/// `/harness/` so the page's relative links resolve. Without a build, the
/// page says how to make one.
fn harness_routes(dir: &std::path::Path) -> axum::Router {
    use axum::response::{Html, IntoResponse, Redirect};
    use axum::routing::get;
    let built = is_built(dir);
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
            principal: None,
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

/// In dev mode a dead letter is its log line (the engine writes it as an
/// alert) and its entry in the in-memory store.
struct LoggedDeadLetters;

#[async_trait::async_trait]
impl DeadLetterSink for LoggedDeadLetters {
    async fn publish(&self, _consumer: Service, _letter: &DeadLetter) -> Result<(), String> {
        Ok(())
    }
}

/// One deliverer per consuming service, all on the shared store.
struct Bus {
    backend: MemoryBackend,
    rules: Arc<Rules>,
    deliverers: Vec<Deliverer>,
}

impl Bus {
    fn new(
        backend: MemoryBackend,
        rules: Arc<Rules>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Bus {
        let store: Arc<dyn Store> = Arc::new(backend.clone());
        let deliverers = Service::ALL
            .into_iter()
            .map(|service| {
                Deliverer::new(
                    service,
                    store.clone(),
                    rules.clone(),
                    Arc::new(LoggedDeadLetters),
                    stop.clone(),
                )
            })
            .collect();
        Bus {
            backend,
            rules,
            deliverers,
        }
    }

    /// Delivers the committed outbox rows of every service to their
    /// consumers, in outbox order, through the engine, marks them
    /// published, and fires due deadlines; returns whether it did anything.
    async fn drain(&self) -> anyhow::Result<bool> {
        let mut progressed = false;
        for service in Service::ALL {
            let rows = self.backend.lock().outbox_pending(service, BUS_BATCH_MAX);
            if rows.is_empty() {
                continue;
            }
            for deliverer in &self.deliverers {
                let batch: Vec<Incoming> = rows
                    .iter()
                    .filter(|row| row.envelope.payload.consumer() == Some(deliverer.service()))
                    .map(|row| {
                        Incoming::decoded(
                            format!("{service}.outbox/{}", row.sequence),
                            (*row.envelope).clone(),
                        )
                    })
                    .collect();
                if !batch.is_empty() {
                    match deliverer.handle(&batch).await {
                        Ok(_) => {}
                        // Stopping: the rows stay unpublished, nothing is lost.
                        Err(DeliveryError::Stopped) => return Ok(false),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            let sequences: Vec<u64> = rows.iter().map(|row| row.sequence).collect();
            self.backend.lock().mark_published(service, &sequences);
            progressed = true;
        }
        let fired = timers::fire_due(&self.backend, &self.rules).await?;
        Ok(progressed || fired.fired > 0)
    }

    /// Drains after every commit and at the next deadline, until stopped.
    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            // Registered before draining, so a commit during the drain still wakes us.
            let committed = self.backend.committed().notified();
            while self.drain().await? {}
            let next_timer = self.backend.lock().next_timer();
            let wait_ms = next_timer.map_or(BUS_IDLE_MAX.as_millis() as u64, |at| {
                at.ms_since(wall_clock())
                    .clamp(1, BUS_IDLE_MAX.as_millis() as u64)
            });
            tokio::select! {
                () = committed => {}
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            }
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
    let tls = args.tls.server_config()?;
    runtime()?.block_on(async {
        let backend = MemoryBackend::new();
        let rules = Arc::new(Rules::default());
        if !args.no_seed {
            seed(&backend, &rules).await?;
        }
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let shared: Arc<dyn Store> = Arc::new(backend.clone());
        let mut api = Api::new(wall_clock);
        api.order = Some(shared.clone());
        api.payment = Some(shared.clone());
        api.inventory = Some(shared);
        api.operator = Some(Arc::new(backend.clone()));
        // With keys the gateway wraps every route of this process, so /admin
        // sees only the principals it forwards; without keys there is no
        // authentication at all, and the operator API is as open as the rest.
        api.admin_access = if gateway.is_some() {
            AdminAccess::Gateway
        } else {
            AdminAccess::WithoutGateway
        };
        api.rules = rules.clone();
        api.metrics = Some(metrics);
        let mut router = api.router();
        if let Some(gateway) = gateway {
            router = gateway.protect(router);
        }
        // The page is static and public: it runs the simulator in the
        // browser and never calls the API.
        let router = router.merge(harness_routes(&harness_dir(args.harness.as_ref())));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr().context("local address")?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Every service purges its receipts and records past their horizons,
        // as the service processes do (ADR 0015).
        let purges: Vec<_> = Service::ALL
            .into_iter()
            .map(|service| {
                let store: Arc<dyn Store> = Arc::new(backend.clone());
                tokio::spawn(saldo_engine::retention::run(
                    store,
                    service,
                    Horizons::default(),
                    stopped.clone(),
                ))
            })
            .collect();
        let mut bus = tokio::spawn(Bus::new(backend, rules, stopped.clone()).run(stopped));
        // Signal handlers first: once the banner is out, a SIGTERM must stop
        // the process cleanly.
        let stop_requested = shutdown();
        print_banner(
            &format!("{}://{address}", args.tls.scheme()),
            args.no_seed,
            args.keys.is_some(),
        );
        let server = saldo_http::serve_with_tls(
            listener,
            router,
            saldo_http::Limits::default(),
            tls,
            stop_requested,
        );
        // The bus never stops by itself: if it does, the process must not
        // carry on accepting orders that nothing delivers.
        tokio::select! {
            served = server => served.context("serving HTTP")?,
            ended = &mut bus => {
                ended.context("the bus")?.context("the bus")?;
                anyhow::bail!("the bus stopped");
            }
        }
        stop.send_replace(true);
        bus.await.context("the bus")?.context("the bus")?;
        for purge in purges {
            purge.await.context("a purge")?;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn print_banner(url: &str, no_seed: bool, gateway: bool) {
    use std::fmt::Write as _;
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
