//! `saldo load`: a load generator against Saldo's HTTP API, for benchmarks.
//! It measures; it checks no invariant (the end-to-end tests and `saldo
//! reconcile` do that).
//!
//! One run has four phases, in this order:
//! 1. plan: a splitmix64 stream seeded with `--seed` picks each order's
//!    customer and SKU, so a seed always places the same orders;
//! 2. seed data (unless `--no-seed-data`): every planned SKU gets twice the
//!    units and every planned customer twice the money its orders need, so
//!    orders confirm unless the platform refuses them;
//! 3. place: `--connections` keep-alive HTTP/1.1 clients place the orders,
//!    at `--rate` per second or as fast as the server answers; a 502, 503 or
//!    504 (or no answer) is retried with the same idempotency key;
//! 4. wait: the orders still pending are read again, sweep after sweep,
//!    until every order has ended or `--wait-seconds` have passed.
//!
//! Throughput and latency come from the server's own `created_at` and
//! `updated_at`, not from the client's clock, so neither the client's
//! scheduling nor its polling cadence shows in them. Every idempotency key
//! carries a run id derived from the seed and the start time, so repeated
//! runs against one database never replay an earlier run's requests.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::service_command::runtime;

/// The most orders one run places; the plan and every order's outcome are
/// held in memory.
const ORDERS_MAX: u64 = 1_000_000;
/// The highest fixed placement rate, in orders per second.
const RATE_MAX: u64 = 100_000;
/// The most concurrent clients (each holds one keep-alive connection).
const CONNECTIONS_MAX: u64 = 1_024;
/// The most customers orders are spread over (each is topped up once or more).
const CUSTOMERS_MAX: u64 = 100_000;
/// The most SKUs orders are spread over (each is stocked once).
const SKUS_MAX: u64 = 10_000;
/// The longest wait for every order to end.
const WAIT_SECONDS_MAX: u64 = 86_400;

/// Every order and wallet is in this currency.
const CURRENCY: &str = "EUR";
/// The price given to every seeded SKU.
const UNIT_PRICE_MINOR: u64 = 100;
/// Each order has one line of this many units.
const LINE_QUANTITY: u64 = 1;
/// Seeded stock and money are this many times what the plan needs, so an
/// order is cancelled only when the platform itself refuses it.
const SEED_MARGIN: u64 = 2;

/// Top-ups in flight at once while seeding. Every top-up of a currency
/// debits the one funding account, so concurrent top-ups only conflict
/// with each other (503 contention) and none goes faster.
const TOP_UP_CONCURRENCY: usize = 1;

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body read; Saldo's answers are a few kilobytes.
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Attempts per write (seeding and placement) before it counts as failed.
const WRITE_ATTEMPTS_MAX: u32 = 8;
/// The pause after the first failed attempt; it doubles up to
/// [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_INITIAL: Duration = Duration::from_millis(50);
/// The longest pause between two attempts of one write.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// The most orders read at once while waiting for them to end.
const POLL_CONCURRENCY_MAX: usize = 8;
/// A sweep stops after this many orders answered still pending (see
/// [`wait_for_endings`]).
const PENDING_PER_SWEEP_MAX: usize = 16;
/// The pause between two sweeps over the pending orders: short next to a
/// saga's duration, long enough that reading does not crowd out the work.
const SWEEP_PAUSE: Duration = Duration::from_millis(200);

/// Arguments of `saldo load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Where orders go: the gateway, `saldo dev`, or the order service.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "SALDO_LOAD_URL")]
    url: Uri,
    /// Where wallets are topped up (the payment service); default: --url.
    #[arg(long, env = "SALDO_LOAD_PAYMENT_URL")]
    payment_url: Option<Uri>,
    /// Where stock is set (the inventory service); default: --url.
    #[arg(long, env = "SALDO_LOAD_INVENTORY_URL")]
    inventory_url: Option<Uri>,
    /// Sent as X-Api-Key, for going through the gateway.
    #[arg(long, env = "SALDO_LOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How many orders to place in all.
    #[arg(long, default_value_t = 1_000, env = "SALDO_LOAD_ORDERS",
          value_parser = clap::value_parser!(u64).range(1..=ORDERS_MAX))]
    orders: u64,
    /// Orders per second, placed on a fixed schedule; without it, as fast
    /// as the server answers.
    #[arg(long, env = "SALDO_LOAD_RATE",
          value_parser = clap::value_parser!(u64).range(1..=RATE_MAX))]
    rate: Option<u64>,
    /// Concurrent clients, each with one keep-alive connection.
    #[arg(long, default_value_t = 8, env = "SALDO_LOAD_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX))]
    connections: u64,
    /// How many customers the orders are spread over.
    #[arg(long, default_value_t = 100, env = "SALDO_LOAD_CUSTOMERS",
          value_parser = clap::value_parser!(u64).range(1..=CUSTOMERS_MAX))]
    customers: u64,
    /// How many SKUs the orders are spread over.
    #[arg(long, default_value_t = 10, env = "SALDO_LOAD_SKUS",
          value_parser = clap::value_parser!(u64).range(1..=SKUS_MAX))]
    skus: u64,
    /// Seeds the choice of customer and SKU per order.
    #[arg(long, default_value_t = 1, env = "SALDO_LOAD_SEED")]
    seed: u64,
    /// Do not set stock or top up wallets first.
    #[arg(long, env = "SALDO_LOAD_NO_SEED_DATA")]
    no_seed_data: bool,
    /// How long to wait, after placing, for every order to end.
    #[arg(long, default_value_t = 120, env = "SALDO_LOAD_WAIT_SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=WAIT_SECONDS_MAX))]
    wait_seconds: u64,
    /// Print the report as one JSON object.
    #[arg(long, env = "SALDO_LOAD_JSON")]
    json: bool,
}

/// Runs the command: exit 0 when every order was placed and ended, 1 when
/// some were not placed or did not end within --wait-seconds.
pub fn run(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let order_base = base_of("--url", &args.url)?;
    let payment_base = base_of(
        "--payment-url",
        args.payment_url.as_ref().unwrap_or(&args.url),
    )?;
    let inventory_base = base_of(
        "--inventory-url",
        args.inventory_url.as_ref().unwrap_or(&args.url),
    )?;
    let api_key = match &args.api_key {
        Some(key) => Some(HeaderValue::from_str(key).context("--api-key must be printable ASCII")?),
        None => None,
    };
    let run_id = run_id(args.seed);
    let plan = Plan::new(args.seed, args.orders, args.customers, args.skus);
    let connections = usize::try_from(args.connections).expect("bounded by CONNECTIONS_MAX");
    runtime()?.block_on(async {
        let http = Arc::new(Http::new(connections, api_key));
        if !args.no_seed_data {
            seed_data(
                &http,
                &plan,
                &run_id,
                &payment_base,
                &inventory_base,
                connections,
            )
            .await?;
        }
        let placement = place(&http, &plan, &run_id, &order_base, args.rate, connections).await;
        let endings = wait_for_endings(
            &http,
            &order_base,
            &placement.order_ids,
            connections,
            Duration::from_secs(args.wait_seconds),
        )
        .await?;
        let report = Report::new(args, &run_id, &placement, &endings);
        report.print(args.json)?;
        let mut shortfalls = Vec::new();
        if report.placement_failures_total() > 0 {
            shortfalls.push(format!(
                "{} of {} orders could not be placed",
                report.placement_failures_total(),
                args.orders
            ));
        }
        if report.not_terminal > 0 {
            shortfalls.push(format!(
                "{} of {} placed orders had not ended after {} s",
                report.not_terminal, report.placed, args.wait_seconds
            ));
        }
        if !shortfalls.is_empty() {
            eprintln!("saldo load: {}", shortfalls.join("; "));
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `http://HOST:PORT` of `uri`, refusing anything else.
fn base_of(flag: &str, uri: &Uri) -> anyhow::Result<String> {
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => Ok(format!("http://{authority}")),
        _ => bail!("{flag} must look like http://HOST:PORT, not {uri}"),
    }
}

/// A short id unique to this run: the seed mixed with the start time, so
/// two runs with one seed still use different idempotency keys.
fn run_id(seed: u64) -> String {
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    let mut random = SplitMix64::new(seed ^ started_ms.rotate_left(32));
    format!("{:012x}", random.next() >> 16)
}

/// splitmix64 (Steele, Lea and Flood): a tiny, fast, well-mixed stream,
/// plenty for picking customers and SKUs reproducibly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A number below `bound`, by multiply-and-shift (no modulo bias worth
    /// speaking of for bounds this small).
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below needs a positive bound");
        let picked = (u128::from(self.next()) * u128::from(bound)) >> 64;
        u64::try_from(picked).expect("the product shifted by 64 is below bound")
    }
}

/// One planned order: indexes of its customer and its SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlannedOrder {
    customer: u64,
    sku: u64,
}

/// One top-up of the seed: part `part` of what customer `customer` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopUp {
    customer: u64,
    part: u64,
    amount_minor: u64,
}

/// Every order of the run, decided before anything is sent.
struct Plan {
    orders: Vec<PlannedOrder>,
    customers: u64,
    skus: u64,
}

impl Plan {
    fn new(seed: u64, orders: u64, customers: u64, skus: u64) -> Plan {
        let mut random = SplitMix64::new(seed);
        let orders = (0..orders)
            .map(|_| PlannedOrder {
                customer: random.below(customers),
                sku: random.below(skus),
            })
            .collect();
        Plan {
            orders,
            customers,
            skus,
        }
    }

    /// How many orders each customer (or SKU, with `of = sku`) has.
    fn counts(&self, size: u64, of: impl Fn(&PlannedOrder) -> u64) -> Vec<u64> {
        let mut counts = vec![0; usize::try_from(size).expect("bounded by CUSTOMERS_MAX")];
        for order in &self.orders {
            counts[usize::try_from(of(order)).expect("picked below size")] += 1;
        }
        counts
    }

    /// [`SEED_MARGIN`] times the money each customer's orders need, in
    /// parts of at most `top_up_max_minor` (the payment service's limit
    /// per top-up). Customers without orders get none: top-ups are applied
    /// one at a time, so each one costs the run a round trip.
    fn top_ups(&self, top_up_max_minor: u64) -> Vec<TopUp> {
        assert!(top_up_max_minor > 0, "a top-up limit must be positive");
        let mut top_ups = Vec::new();
        for (customer, orders) in (0..).zip(self.counts(self.customers, |order| order.customer)) {
            let mut needed_minor = orders * LINE_QUANTITY * UNIT_PRICE_MINOR * SEED_MARGIN;
            let mut part = 0;
            while needed_minor > 0 {
                let amount_minor = needed_minor.min(top_up_max_minor);
                top_ups.push(TopUp {
                    customer,
                    part,
                    amount_minor,
                });
                needed_minor -= amount_minor;
                part += 1;
            }
        }
        top_ups
    }
}

fn customer_name(index: u64) -> String {
    format!("load-c{index}")
}

fn sku_name(index: u64) -> String {
    format!("load-s{index}")
}

/// A response: its status and its body as JSON (`null` when not JSON).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Reply {
    /// The problem's stable `code`, if the body is a problem.
    pub(crate) fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("-")
    }

    /// Worth another attempt with the same idempotency key: the platform
    /// was unavailable, or the first attempt is still being processed.
    fn is_transient(&self) -> bool {
        matches!(
            self.status,
            StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
        ) || (self.status == StatusCode::CONFLICT && self.code() == "idempotency_key_in_flight")
    }
}

/// Why a request got no usable answer.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// No connection, or it broke before the answer was complete.
    Transport(String),
    /// No answer within [`REQUEST_TIMEOUT`].
    TimedOut,
}

impl fmt::Display for RequestError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Transport(error) => write!(formatter, "no answer: {error}"),
            RequestError::TimedOut => {
                write!(
                    formatter,
                    "no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )
            }
        }
    }
}

/// A write that did not succeed within [`WRITE_ATTEMPTS_MAX`] attempts, or
/// was refused: `reason` is what the report counts it under.
#[derive(Debug)]
struct WriteFailed {
    /// The refusing answer's status; `None` when no answer came.
    status: Option<StatusCode>,
    reason: String,
}

/// The one HTTP client of a run: keep-alive connections, pooled per host.
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    api_key: Option<HeaderValue>,
}

impl Http {
    pub(crate) fn new(connections: usize, api_key: Option<HeaderValue>) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Http { client, api_key }
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, RequestError> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|error| RequestError::Transport(error.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| RequestError::Transport(error.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| RequestError::Transport(error.to_string()))?
                .to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok(Reply { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| RequestError::TimedOut)?
    }

    /// Sends a write until it succeeds or is refused, repeating it with the
    /// same idempotency key while the platform is unavailable: the key makes
    /// a repeat safe whether or not an earlier attempt was applied.
    async fn write(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<Reply, WriteFailed> {
        let mut pause = RETRY_PAUSE_INITIAL;
        let mut last_failure = String::new();
        for attempt in 1..=WRITE_ATTEMPTS_MAX {
            match self.send(method.clone(), url, headers, Some(body)).await {
                Ok(reply) if reply.status.is_success() => return Ok(reply),
                Ok(reply) if reply.is_transient() => {
                    last_failure = format!("{} {}", reply.status.as_u16(), reply.code());
                }
                Ok(reply) => {
                    return Err(WriteFailed {
                        status: Some(reply.status),
                        reason: format!("{} {}", reply.status.as_u16(), reply.code()),
                    });
                }
                Err(error) => {
                    last_failure = match error {
                        RequestError::Transport(_) => "no answer".to_owned(),
                        RequestError::TimedOut => "timed out".to_owned(),
                    };
                    tracing::debug!(%error, %url, attempt, "retrying");
                }
            }
            if attempt < WRITE_ATTEMPTS_MAX {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
        Err(WriteFailed {
            status: None,
            reason: format!("{last_failure} after {WRITE_ATTEMPTS_MAX} attempts"),
        })
    }
}

/// Runs `work(0..count)` on at most `concurrency` tasks at once; the
/// results come back in index order.
async fn run_bounded<R, F, Fut>(count: usize, concurrency: usize, work: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(count) {
        let (work, next) = (work.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break done;
                }
                done.push((index, work(index).await));
            }
        }));
    }
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for worker in workers {
        for (index, result) in worker.await.expect("a load worker panicked") {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|result| result.expect("every index is taken by exactly one worker"))
        .collect()
}

/// Sets every planned SKU's stock and tops up every planned customer's
/// wallet with [`SEED_MARGIN`] times what the plan needs.
async fn seed_data(
    http: &Arc<Http>,
    plan: &Plan,
    run_id: &str,
    payment_base: &str,
    inventory_base: &str,
    connections: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let units = plan.counts(plan.skus, |order| order.sku);
    let sku_count = units.len();
    set_stock(http, inventory_base, units, connections).await?;
    let top_up_max_minor =
        u64::try_from(saldo_domain::payment::PaymentPolicy::default().top_up_max_minor)
            .expect("the top-up limit is positive");
    let top_ups = plan.top_ups(top_up_max_minor);
    let top_up_count = top_ups.len();
    top_up_wallets(http, payment_base, run_id, top_ups).await?;
    tracing::info!(
        skus = sku_count,
        top_ups = top_up_count,
        elapsed_ms = started.elapsed().as_millis(),
        "seeded stock and wallets"
    );
    Ok(())
}

/// Gives SKU `i` [`SEED_MARGIN`] times `units[i]`, at [`UNIT_PRICE_MINOR`].
async fn set_stock(
    http: &Arc<Http>,
    inventory_base: &str,
    units: Vec<u64>,
    connections: usize,
) -> anyhow::Result<()> {
    let (http, base, units) = (http.clone(), inventory_base.to_owned(), Arc::new(units));
    let writes = run_bounded(units.len(), connections, move |sku| {
        let (http, base, units) = (http.clone(), base.clone(), units.clone());
        async move {
            let sku_index = u64::try_from(sku).expect("bounded by SKUS_MAX");
            let body = json!({
                "on_hand": (units[sku] * LINE_QUANTITY * SEED_MARGIN).max(1),
                "unit_price_minor": UNIT_PRICE_MINOR,
                "currency": CURRENCY,
            });
            let url = format!("{base}/stock/{}", sku_name(sku_index));
            // Seeding sets the level whatever an earlier run left: an
            // existing SKU answers 428, and the write is repeated over any
            // version (`If-Match: *`).
            let written = match http.write(Method::PUT, &url, &[], &body).await {
                Err(failed) if failed.status == Some(StatusCode::PRECONDITION_REQUIRED) => {
                    http.write(Method::PUT, &url, &[("If-Match", "*")], &body)
                        .await
                }
                other => other,
            };
            written
                .map(drop)
                .map_err(|failed| format!("PUT {url}: {}", failed.reason))
        }
    })
    .await;
    first_failure(writes)
}

/// Applies every top-up, one at a time (see [`TOP_UP_CONCURRENCY`]).
async fn top_up_wallets(
    http: &Arc<Http>,
    payment_base: &str,
    run_id: &str,
    top_ups: Vec<TopUp>,
) -> anyhow::Result<()> {
    let (http, base, run_id) = (http.clone(), payment_base.to_owned(), run_id.to_owned());
    let top_ups = Arc::new(top_ups);
    let writes = run_bounded(top_ups.len(), TOP_UP_CONCURRENCY, move |index| {
        let (http, base, run_id, top_up) =
            (http.clone(), base.clone(), run_id.clone(), top_ups[index]);
        async move {
            let body = json!({ "amount_minor": top_up.amount_minor, "currency": CURRENCY });
            let url = format!("{base}/wallets/{}/top-ups", customer_name(top_up.customer));
            let key = format!("load-{run_id}-top-up-{}-{}", top_up.customer, top_up.part);
            http.write(Method::POST, &url, &[("Idempotency-Key", &key)], &body)
                .await
                .map(drop)
                .map_err(|failed| format!("POST {url}: {}", failed.reason))
        }
    })
    .await;
    first_failure(writes)
}

/// Seeding stops at its first failed write: a benchmark over half-seeded
/// data would measure refusals.
fn first_failure(writes: Vec<Result<(), String>>) -> anyhow::Result<()> {
    match writes.into_iter().find_map(Result::err) {
        Some(failure) => bail!("seeding failed: {failure}"),
        None => Ok(()),
    }
}

/// What placing the orders gave: each order's id (or why it failed), and
/// how long placing took on the client's clock.
struct Placement {
    order_ids: Vec<Result<String, String>>,
    elapsed: Duration,
}

/// Places every planned order; with `rate`, order `i` is sent no earlier
/// than `i / rate` seconds after the start, whatever the server's pace.
async fn place(
    http: &Arc<Http>,
    plan: &Plan,
    run_id: &str,
    order_base: &str,
    rate: Option<u64>,
    connections: usize,
) -> Placement {
    let started = Instant::now();
    let schedule_start = tokio::time::Instant::now();
    let (http, base, run_id) = (http.clone(), order_base.to_owned(), run_id.to_owned());
    let orders = Arc::new(plan.orders.clone());
    let order_ids = run_bounded(orders.len(), connections, move |index| {
        let (http, base, run_id, orders) =
            (http.clone(), base.clone(), run_id.clone(), orders.clone());
        async move {
            let position = u64::try_from(index).expect("bounded by ORDERS_MAX");
            if let Some(rate) = rate {
                let offset = Duration::from_nanos(position * 1_000_000_000 / rate);
                tokio::time::sleep_until(schedule_start + offset).await;
            }
            let order = orders[index];
            let body = json!({
                "customer": customer_name(order.customer),
                "currency": CURRENCY,
                "lines": [{ "sku": sku_name(order.sku), "quantity": LINE_QUANTITY }],
            });
            let key = format!("load-{run_id}-order-{index}");
            let reply = http
                .write(
                    Method::POST,
                    &format!("{base}/orders"),
                    &[("Idempotency-Key", &key)],
                    &body,
                )
                .await
                .map_err(|failed| failed.reason)?;
            reply.body["order_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{} without an order_id", reply.status.as_u16()))
        }
    })
    .await;
    let elapsed = started.elapsed();
    tracing::info!(
        orders = order_ids.len(),
        elapsed_ms = elapsed.as_millis(),
        "placed"
    );
    Placement { order_ids, elapsed }
}

/// How an order ended, with the server's timestamps in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending {
    /// `None` when confirmed; the reason when cancelled.
    cancel_reason: Option<String>,
    created_ms: u64,
    updated_ms: u64,
}

/// Reads an order's answer: `Ok(None)` while it is pending.
fn parse_order(body: &Value) -> Result<Option<Ending>, String> {
    let cancel_reason = match body["status"].as_str() {
        Some("PENDING") => return Ok(None),
        Some("CONFIRMED") => None,
        Some("CANCELLED") => Some(body["reason"].as_str().unwrap_or("unknown").to_owned()),
        _ => {
            return Err(format!(
                "status is not one of PENDING, CONFIRMED, CANCELLED: {body}"
            ));
        }
    };
    let timestamp = |field: &str| {
        body[field]
            .as_str()
            .and_then(parse_timestamp_ms)
            .ok_or_else(|| format!("{field} is not an RFC 3339 UTC time with milliseconds: {body}"))
    };
    Ok(Some(Ending {
        cancel_reason,
        created_ms: timestamp("created_at")?,
        updated_ms: timestamp("updated_at")?,
    }))
}

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` (how the API writes times) to Unix
/// milliseconds.
fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let separators = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if bytes.len() != 24 || separators.iter().any(|&(at, byte)| bytes[at] != byte) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|byte| byte.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, milli) = (
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        number(20..23)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000) + milli)
}

/// Days since 1970-01-01 of a proleptic Gregorian date, after Howard
/// Hinnant's `days_from_civil`; `None` before the epoch.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

/// Reads the placed orders still pending, sweep after sweep, until all have
/// ended or `wait` has passed; returns each placed order's ending, if any.
///
/// A sweep reads in placement order and stops once
/// [`PENDING_PER_SWEEP_MAX`] orders answered still pending: orders end
/// roughly in the order they were placed, so the later ones almost surely
/// are pending too, and reading them all would take from the platform the
/// CPU whose throughput is being measured. The last sweep, at the deadline,
/// reads every order still pending, so the count of orders not ended is exact.
async fn wait_for_endings(
    http: &Arc<Http>,
    order_base: &str,
    order_ids: &[Result<String, String>],
    connections: usize,
    wait: Duration,
) -> anyhow::Result<Vec<Option<Ending>>> {
    let deadline = Instant::now() + wait;
    let concurrency = connections.min(POLL_CONCURRENCY_MAX);
    let mut endings: Vec<Option<Ending>> = vec![None; order_ids.len()];
    let mut pending: Vec<(usize, String)> = order_ids
        .iter()
        .enumerate()
        .filter_map(|(index, id)| id.as_ref().ok().map(|id| (index, id.clone())))
        .collect();
    let mut sweeps: u64 = 0;
    while !pending.is_empty() {
        sweeps += 1;
        let last_sweep = Instant::now() >= deadline;
        let mut still_pending = Vec::new();
        let mut read_up_to = 0;
        while read_up_to < pending.len()
            && (last_sweep || still_pending.len() < PENDING_PER_SWEEP_MAX)
        {
            let chunk_end = pending.len().min(read_up_to + concurrency);
            let chunk: Arc<Vec<(usize, String)>> =
                Arc::new(pending[read_up_to..chunk_end].to_vec());
            for ((index, id), read) in chunk
                .iter()
                .zip(read_orders(http, order_base, &chunk, concurrency).await)
            {
                match read.map_err(|error| anyhow::anyhow!("GET /orders/{id}: {error}"))? {
                    Some(ending) => endings[*index] = Some(ending),
                    None => still_pending.push((*index, id.clone())),
                }
            }
            read_up_to = chunk_end;
        }
        still_pending.extend_from_slice(&pending[read_up_to..]);
        pending = still_pending;
        if pending.is_empty() || last_sweep {
            break;
        }
        tokio::time::sleep(SWEEP_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
    tracing::info!(
        sweeps,
        pending = pending.len(),
        "waited for the orders to end"
    );
    Ok(endings)
}

/// Reads `orders` (index, id) at most `concurrency` at a time: each one's
/// ending, `None` while pending or unreadable (the next sweep asks again),
/// or an error when the answer breaks the API's contract.
async fn read_orders(
    http: &Arc<Http>,
    order_base: &str,
    orders: &Arc<Vec<(usize, String)>>,
    concurrency: usize,
) -> Vec<Result<Option<Ending>, String>> {
    let (http, base, orders) = (http.clone(), order_base.to_owned(), orders.clone());
    run_bounded(orders.len(), concurrency, move |position| {
        let (http, base, orders) = (http.clone(), base.clone(), orders.clone());
        async move {
            let url = format!("{base}/orders/{}", orders[position].1);
            match http.send(Method::GET, &url, &[], None).await {
                Ok(reply) if reply.status == StatusCode::OK => parse_order(&reply.body),
                Ok(_) | Err(_) => Ok(None),
            }
        }
    })
    .await
}

/// A rate in hundredths per second, computed in integers (the workspace
/// denies float arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PerSecond {
    hundredths: u64,
}

impl PerSecond {
    fn of(count: u64, elapsed_ms: u64) -> PerSecond {
        let hundredths = u128::from(count) * 100_000 / u128::from(elapsed_ms.max(1));
        PerSecond {
            hundredths: u64::try_from(hundredths).unwrap_or(u64::MAX),
        }
    }

    fn to_json(self) -> Value {
        decimal_json(&self.to_string())
    }
}

impl fmt::Display for PerSecond {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}.{:02}",
            self.hundredths / 100,
            self.hundredths % 100
        )
    }
}

/// A decimal written by this module as a JSON number.
fn decimal_json(text: &str) -> Value {
    json!(
        text.parse::<f64>()
            .expect("the module writes plain decimals")
    )
}

/// Milliseconds written as seconds with two decimals.
fn seconds(elapsed_ms: u64) -> String {
    format!("{}.{:02}", elapsed_ms / 1_000, elapsed_ms % 1_000 / 10)
}

/// Nearest-rank percentile `percent` of ascending `sorted`.
fn percentile(sorted: &[u64], percent: u64) -> u64 {
    assert!(!sorted.is_empty(), "a percentile of nothing");
    assert!((1..=100).contains(&percent), "a percentile is 1 to 100");
    let count = u64::try_from(sorted.len()).expect("bounded by ORDERS_MAX");
    let rank = (count * percent).div_ceil(100);
    sorted[usize::try_from(rank - 1).expect("below the length")]
}

/// Placement-to-end latency on the server's clock, in milliseconds.
struct Latency {
    p50_ms: u64,
    p99_ms: u64,
    max_ms: u64,
}

/// What a run measured.
struct Report {
    run_id: String,
    orders: u64,
    connections: u64,
    rate_requested: Option<u64>,
    placed: u64,
    placement_failures: BTreeMap<String, u64>,
    placement_ms: u64,
    confirmed: u64,
    cancelled: BTreeMap<String, u64>,
    not_terminal: u64,
    /// From the first order's `created_at` to the last ending's `updated_at`.
    terminal_span_ms: u64,
    latency: Option<Latency>,
}

impl Report {
    fn new(
        args: &LoadArgs,
        run_id: &str,
        placement: &Placement,
        endings: &[Option<Ending>],
    ) -> Report {
        let mut placement_failures = BTreeMap::new();
        for failure in placement
            .order_ids
            .iter()
            .filter_map(|id| id.as_ref().err())
        {
            *placement_failures.entry(failure.clone()).or_insert(0) += 1;
        }
        let ended: Vec<&Ending> = endings.iter().flatten().collect();
        let mut cancelled = BTreeMap::new();
        for reason in ended
            .iter()
            .filter_map(|ending| ending.cancel_reason.as_ref())
        {
            *cancelled.entry(reason.clone()).or_insert(0) += 1;
        }
        let count = |items: usize| u64::try_from(items).expect("bounded by ORDERS_MAX");
        let placed = count(placement.order_ids.iter().filter(|id| id.is_ok()).count());
        let first_created_ms = ended.iter().map(|ending| ending.created_ms).min();
        let last_updated_ms = ended.iter().map(|ending| ending.updated_ms).max();
        let terminal_span_ms = match (first_created_ms, last_updated_ms) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        };
        let mut latencies: Vec<u64> = ended
            .iter()
            .map(|ending| ending.updated_ms.saturating_sub(ending.created_ms))
            .collect();
        latencies.sort_unstable();
        let latency = (!latencies.is_empty()).then(|| Latency {
            p50_ms: percentile(&latencies, 50),
            p99_ms: percentile(&latencies, 99),
            max_ms: *latencies.last().expect("not empty"),
        });
        Report {
            run_id: run_id.to_owned(),
            orders: args.orders,
            connections: args.connections,
            rate_requested: args.rate,
            placed,
            placement_failures,
            placement_ms: u64::try_from(placement.elapsed.as_millis()).unwrap_or(u64::MAX),
            confirmed: count(
                ended
                    .iter()
                    .filter(|ending| ending.cancel_reason.is_none())
                    .count(),
            ),
            cancelled,
            not_terminal: placed - count(ended.len()),
            terminal_span_ms,
            latency,
        }
    }

    fn placement_failures_total(&self) -> u64 {
        self.placement_failures.values().sum()
    }

    fn cancelled_total(&self) -> u64 {
        self.cancelled.values().sum()
    }

    fn terminal(&self) -> u64 {
        self.confirmed + self.cancelled_total()
    }

    fn print(&self, as_json: bool) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if as_json {
            writeln!(out, "{}", self.to_json())?;
        } else {
            self.write_human(&mut out)?;
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "run_id": self.run_id,
            "orders": self.orders,
            "connections": self.connections,
            "rate_requested": self.rate_requested,
            "orders_placed": self.placed,
            "placement_failures": self.placement_failures_total(),
            "placement_failures_by_reason": self.placement_failures,
            "placement_seconds": decimal_json(&seconds(self.placement_ms)),
            "placement_per_second": PerSecond::of(self.placed, self.placement_ms).to_json(),
            "orders_confirmed": self.confirmed,
            "orders_cancelled": self.cancelled_total(),
            "cancelled_by_reason": self.cancelled,
            "orders_not_terminal": self.not_terminal,
            "terminal_span_ms": self.terminal_span_ms,
            "orders_terminal_per_second": PerSecond::of(self.terminal(), self.terminal_span_ms).to_json(),
            "latency_ms": self.latency.as_ref().map(|latency| json!({
                "p50": latency.p50_ms,
                "p99": latency.p99_ms,
                "max": latency.max_ms,
            })),
        })
    }

    fn write_human(&self, out: &mut impl Write) -> std::io::Result<()> {
        let pace = match self.rate_requested {
            Some(rate) => format!("at {rate} orders/s"),
            None => "as fast as it goes".to_owned(),
        };
        writeln!(
            out,
            "saldo load: run {}, {} orders over {} connections, {pace}",
            self.run_id, self.orders, self.connections
        )?;
        let failures: Vec<String> = self
            .placement_failures
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        writeln!(
            out,
            "  placed     {} ({} failed{}) in {} s: {} orders/s",
            self.placed,
            self.placement_failures_total(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join(", "))
            },
            seconds(self.placement_ms),
            PerSecond::of(self.placed, self.placement_ms)
        )?;
        let reasons: Vec<String> = self
            .cancelled
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        writeln!(
            out,
            "  ended      {}: {} confirmed, {} cancelled{}; {} not ended",
            self.terminal(),
            self.confirmed,
            self.cancelled_total(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            self.not_terminal
        )?;
        writeln!(
            out,
            "  terminal   {} orders/s ({} orders from the first created_at to the last updated_at, {} s)",
            PerSecond::of(self.terminal(), self.terminal_span_ms),
            self.terminal(),
            seconds(self.terminal_span_ms)
        )?;
        match &self.latency {
            Some(latency) => writeln!(
                out,
                "  latency    p50 {} ms, p99 {} ms, max {} ms (created_at to updated_at)",
                latency.p50_ms, latency.p99_ms, latency.max_ms
            ),
            None => writeln!(out, "  latency    no order ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use saldo_types::Timestamp;

    #[rstest]
    #[case(0)]
    #[case(1_764_058_573_000)]
    #[case(1_709_164_800_123)] // 2024-02-29, a leap day
    #[case(4_102_444_799_999)] // 2099-12-31, the last millisecond
    fn timestamps_read_back_what_the_api_writes(#[case] unix_ms: u64) {
        // Proves the parser inverts saldo-types' Display, leap days included.
        let text = Timestamp::from_unix_ms(unix_ms).to_string();
        assert_eq!(parse_timestamp_ms(&text), Some(unix_ms), "{text}");
    }

    #[rstest]
    #[case("2026-11-25T08:16:13Z")]
    #[case("2026-13-25T08:16:13.000Z")]
    #[case("2026-11-25 08:16:13.000Z")]
    #[case("2026-11-25T08:16:13.0a0Z")]
    #[case("1969-12-31T23:59:59.999Z")]
    fn malformed_timestamps_are_refused(#[case] text: &str) {
        // Proves a time the report cannot trust is refused, not misread.
        assert_eq!(parse_timestamp_ms(text), None);
    }

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // Proves the generator is splitmix64 itself, so a seed means the same
        // orders in every build.
        let mut random = SplitMix64::new(0);
        assert_eq!(random.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(random.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn a_plan_is_a_function_of_its_seed_and_stays_in_bounds() {
        // Proves one seed plans the same orders and every pick is in range.
        let plan = Plan::new(7, 1_000, 13, 5);
        assert_eq!(plan.orders, Plan::new(7, 1_000, 13, 5).orders);
        assert_ne!(plan.orders, Plan::new(8, 1_000, 13, 5).orders);
        assert!(
            plan.orders
                .iter()
                .all(|order| order.customer < 13 && order.sku < 5)
        );
        assert_eq!(
            plan.counts(13, |order| order.customer).iter().sum::<u64>(),
            1_000
        );
    }

    #[test]
    fn top_ups_cover_twice_the_orders_in_parts_the_service_accepts() {
        // Proves seeding asks for enough money and never more per top-up
        // than the payment service's limit.
        let plan = Plan::new(3, 500, 2, 1);
        let top_ups = plan.top_ups(30_000);
        for (customer, orders) in (0..).zip(plan.counts(2, |order| order.customer)) {
            let parts: Vec<&TopUp> = top_ups
                .iter()
                .filter(|top_up| top_up.customer == customer)
                .collect();
            let total: u64 = parts.iter().map(|top_up| top_up.amount_minor).sum();
            assert_eq!(total, orders * UNIT_PRICE_MINOR * SEED_MARGIN);
            assert!(parts.iter().all(|top_up| top_up.amount_minor <= 30_000));
            assert!(parts.len() > 1, "{orders} orders need more than one top-up");
        }
    }

    #[rstest]
    #[case(&[5], 50, 5)]
    #[case(&[1, 2, 3, 4], 50, 2)]
    #[case(&[1, 2, 3, 4], 99, 4)]
    #[case(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10, 1)]
    fn percentiles_are_nearest_rank(
        #[case] sorted: &[u64],
        #[case] percent: u64,
        #[case] expected: u64,
    ) {
        // Proves the percentile picks a measured value by nearest rank.
        assert_eq!(percentile(sorted, percent), expected);
    }

    #[rstest]
    #[case(1_000, 1_000, "1000.00")]
    #[case(1, 3, "333.33")]
    #[case(5, 0, "5000.00")]
    fn rates_are_exact_to_the_hundredth(
        #[case] count: u64,
        #[case] elapsed_ms: u64,
        #[case] text: &str,
    ) {
        // Proves integer rates print as the decimal they stand for.
        assert_eq!(PerSecond::of(count, elapsed_ms).to_string(), text);
    }
}
