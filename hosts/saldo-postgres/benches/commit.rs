//! Decisions committed per second per service type, next to pgbench's one-insert
//! transaction on the same server in the same run.
//!
//! `SALDO_TEST_DATABASE_URL=... cargo bench -p saldo-postgres --bench commit`
//! (tests/run.sh prints how to set the URL). Each round runs every workload
//! for a few seconds with the same number of concurrent clients; rounds are
//! interleaved so noise hits all of them alike, and medians are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Envelope, OrderLine, Payload, SCHEMA_VERSION, Traceparent};
use saldo_domain::order::{PlaceOrder, decide_place_order, place_order_read_set};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::{Rules, decide_message, message_read_set};
use saldo_engine::ExecuteFailure;
use saldo_idempotency::IdempotencyKey;
use saldo_postgres::PgStore;
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku, Timestamp};

const CLIENTS: usize = 16;
const ROUND: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;
const SKUS: u64 = 2_000;
const WALLETS: u64 = 2_000;
const NOW: Timestamp = Timestamp::from_unix_ms(1_767_225_600_000);

#[derive(Clone, Copy, Debug)]
enum Workload {
    Order,
    Inventory,
    Payment,
}

fn eur(amount_minor: i64) -> Money {
    Money::from_minor(amount_minor, Currency::EUR)
}

fn envelope(id: u64, payload: Payload) -> Envelope {
    let message_id = Id128::derive("bench", &[&id.to_be_bytes()]);
    Envelope {
        message_id,
        schema_version: SCHEMA_VERSION,
        order_id: OrderId::new(format!("bench-{id}")).expect("valid"),
        correlation_id: CorrelationId::new(format!("bench-{id}")).expect("valid"),
        causation_id: None,
        occurred_at: NOW,
        traceparent: Traceparent::root(message_id),
        payload,
    }
}

/// Decisions per transaction in the batched runs: what a consumer's poll
/// or a group commit of concurrent requests hands the engine under load.
const BATCH: u64 = 32;

fn place_order(id: u64) -> PlaceOrder {
    PlaceOrder {
        order_id: OrderId::new(format!("bench-{id}")).expect("valid"),
        customer: CustomerId::new(format!("w{}", id % WALLETS)).expect("valid"),
        lines: vec![OrderLine {
            sku: Sku::new(format!("s{}", id % SKUS)).expect("valid"),
            quantity: 1,
        }],
        currency: Currency::EUR,
        idempotency_key: IdempotencyKey::new(format!("bench-{id}")).expect("valid"),
        principal: None,
        correlation_id: CorrelationId::new(format!("bench-{id}")).expect("valid"),
        traceparent: Traceparent::root(Id128::derive("bench", &[&id.to_be_bytes()])),
    }
}

fn message(workload: Workload, id: u64) -> Envelope {
    let payload = match workload {
        Workload::Inventory => Payload::ReserveStock {
            lines: vec![OrderLine {
                sku: Sku::new(format!("s{}", id % SKUS)).expect("valid"),
                quantity: 1,
            }],
            currency: Currency::EUR,
        },
        _ => Payload::ChargePayment {
            customer: CustomerId::new(format!("w{}", id % WALLETS)).expect("valid"),
            amount: eur(1),
        },
    };
    envelope(id, payload)
}

/// Commits the decisions `ids` of the workload as one batch through the
/// engine; inputs that lost a race are decided again until none is left.
async fn decisions(store: &PgStore, rules: &Rules, workload: Workload, ids: Vec<u64>) {
    let mut pending = ids;
    while !pending.is_empty() {
        let failures: Vec<Option<String>> = match workload {
            Workload::Order => {
                let requests: Vec<PlaceOrder> = pending.iter().map(|id| place_order(*id)).collect();
                saldo_engine::execute_batch(
                    store,
                    &requests,
                    NOW,
                    place_order_read_set,
                    |request, s| decide_place_order(&rules.order_saga, s, request, NOW),
                    |_| saldo_engine::telemetry::Parent::None,
                )
                .await
                .into_iter()
                .map(|result| result.err().map(|error| error.to_string()))
                .collect()
            }
            Workload::Inventory | Workload::Payment => {
                let messages: Vec<Envelope> =
                    pending.iter().map(|id| message(workload, *id)).collect();
                let consumer = messages[0].payload.consumer().expect("consumed");
                saldo_engine::execute_batch(
                    store,
                    &messages,
                    NOW,
                    |message| message_read_set(consumer, message),
                    |message, s| decide_message(rules, consumer, s, message, NOW),
                    |_| saldo_engine::telemetry::Parent::None,
                )
                .await
                .into_iter()
                .map(|result| result.err().map(|error| error.to_string()))
                .collect()
            }
        };
        let mut again = Vec::new();
        for (id, failure) in pending.into_iter().zip(failures) {
            match failure {
                None => {}
                Some(error) if error.contains("conflict") => again.push(id),
                Some(error) => panic!("{workload:?} decision failed: {error}"),
            }
        }
        pending = again;
    }
}

/// Decisions committed per second by `CLIENTS` clients, `batch` per transaction.
async fn run_workload(
    store: &PgStore,
    workload: Workload,
    batch: u64,
    next_id: &Arc<AtomicU64>,
) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (store, done, next_id) = (store.clone(), Arc::clone(&done), Arc::clone(next_id));
            tokio::spawn(async move {
                let rules = Rules::default();
                while Instant::now() < deadline {
                    let first = next_id.fetch_add(batch, Ordering::Relaxed);
                    decisions(&store, &rules, workload, (first..first + batch).collect()).await;
                    done.fetch_add(batch, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    done.load(Ordering::Relaxed) * 1_000 / ROUND.as_millis() as u64
}

fn pgbench(url: &str) -> u64 {
    let script = std::env::temp_dir().join(format!("saldo-one-insert-{}.sql", std::process::id()));
    std::fs::write(&script, "INSERT INTO bench_one_insert (v) VALUES (1);\n")
        .expect("writes the script");
    let output = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &ROUND.as_secs().to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .expect("pgbench runs (apt-get install postgresql-contrib or postgresql-client)");
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|line| line.starts_with("tps"))
        .unwrap_or_else(|| {
            panic!(
                "pgbench printed no tps: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let value: String = tps
        .split_whitespace()
        .nth(2)
        .unwrap_or("0")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    value.parse().expect("an integer part")
}

fn median(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let database = TestDatabase::create().await;
        let store = PgStore::connect(database.url(), CLIENTS as u32)
            .await
            .expect("connects");
        sqlx::query(
            "CREATE TABLE public.bench_one_insert (id bigserial PRIMARY KEY, v int NOT NULL)",
        )
        .execute(store.pool())
        .await
        .expect("creates");
        let rules = Rules::default();
        for index in 0..SKUS {
            let request = SetStock {
                sku: Sku::new(format!("s{index}")).expect("valid"),
                on_hand: 1_000_000,
                unit_price: eur(1),
            };
            saldo_engine::execute(&store, &set_stock_read_set(&request), NOW, |s| {
                decide_set_stock(s, &request)
            })
            .await
            .expect("stock");
        }
        for index in 0..WALLETS {
            let request = TopUp {
                customer: CustomerId::new(format!("w{index}")).expect("valid"),
                amount: eur(1_000_000),
                idempotency_key: IdempotencyKey::new(format!("setup-{index}")).expect("valid"),
                principal: None,
                correlation_id: CorrelationId::new("setup").expect("valid"),
                traceparent: Traceparent::root(Id128::derive("setup", &[&index.to_be_bytes()])),
            };
            let policy = rules.payment;
            match saldo_engine::execute(&store, &top_up_read_set(&request), NOW, |s| {
                decide_top_up(&policy, s, &request, NOW)
            })
            .await
            {
                Ok(_) => {}
                Err(ExecuteFailure::Conflict(_)) => panic!("setup conflicted"),
                Err(other) => panic!("setup failed: {other}"),
            }
        }
        let next_id = Arc::new(AtomicU64::new(0));
        let runs: Vec<(Workload, u64)> = [Workload::Order, Workload::Inventory, Workload::Payment]
            .into_iter()
            .flat_map(|workload| [(workload, 1), (workload, BATCH)])
            .collect();
        let mut rates: Vec<Vec<u64>> = vec![Vec::new(); runs.len() + 1];
        for _ in 0..ROUNDS {
            let url = database.url().to_owned();
            rates[0].push(
                tokio::task::spawn_blocking(move || pgbench(&url))
                    .await
                    .expect("pgbench"),
            );
            for (index, (workload, batch)) in runs.iter().enumerate() {
                rates[index + 1].push(run_workload(&store, *workload, *batch, &next_id).await);
            }
        }
        let reference = median(rates[0].clone());
        println!(
            "decisions committed per second, {CLIENTS} clients, median of {ROUNDS} interleaved rounds of {}s:",
            ROUND.as_secs()
        );
        println!(
            "  pgbench one-insert transaction        {reference:>7}/s   samples {:?}",
            rates[0]
        );
        for (index, (workload, batch)) in runs.iter().enumerate() {
            let rate = median(rates[index + 1].clone());
            println!(
                "  {:<37} {rate:>7}/s   {:>3}% of pgbench   samples {:?}",
                format!("{workload:?}, {batch} per transaction"),
                rate * 100 / reference.max(1),
                rates[index + 1]
            );
        }
    });
}
