//! Time and peak memory to reconcile 1,000,000 orders with their payments,
//! reservations and ledger entries.
//!
//! `SALDO_TEST_DATABASE_URL=... cargo bench -p saldo-postgres --bench reconcile`
//! (`SALDO_BENCH_ORDERS` changes the count). The data is generated in Rust
//! from templates of a real order flow (real row bodies, a real hash chain)
//! and loaded with COPY. Each measured run is a fresh child process doing one
//! full reconciliation as the read-only role and reporting its own peak
//! resident memory (VmHWM), so the figure is the reconciler's alone.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Instant;

use saldo_domain::decision::{Row, RowKey};
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{OrderLine, Service, Traceparent};
use saldo_domain::order::{PlaceOrder, decide_place_order, place_order_read_set};
use saldo_domain::payment::{TopUp, charge_id, decide_top_up, top_up_read_set};
use saldo_domain::store::execute;
use saldo_domain::{MemoryStore, Rules, decide_message, message_read_set};
use saldo_idempotency::IdempotencyKey;
use saldo_ledger::{AccountId, ChainHash, Entry, Memo, Posting};
use saldo_postgres::reconcile::Reconciler;
use saldo_postgres::testing::TestDatabase;
use saldo_reconcile::Settings;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};

const CUSTOMERS: u64 = 10_000;
const PRICE_MINOR: i64 = 250;
const TOP_UP_MINOR: i64 = 1_000_000;
const NOW: Timestamp = Timestamp::from_unix_ms(1_767_225_600_000);
const RUNS: usize = 3;

/// Row bodies of one real order flow, with its ids as placeholders.
struct Templates {
    order: String,
    payment: String,
    reservation: String,
}

fn templates() -> Templates {
    let rules = Rules::default();
    let mut store = MemoryStore::new();
    let eur = |minor| Money::from_minor(minor, Currency::EUR);
    let trace = Traceparent::root(Id128::derive("bench", &[b"template"]));
    let top_up = TopUp {
        customer: CustomerId::new("c-template").expect("valid"),
        amount: eur(TOP_UP_MINOR),
        idempotency_key: IdempotencyKey::new("t").expect("valid"),
        principal: None,
        correlation_id: CorrelationId::new("t").expect("valid"),
        traceparent: trace.clone(),
    };
    execute(&mut store, &top_up_read_set(&top_up), NOW, |s| {
        decide_top_up(&rules.payment, s, &top_up, NOW)
    })
    .expect("top-up");
    let stock = SetStock {
        sku: Sku::new("s0").expect("valid"),
        on_hand: 1_000_000_000,
        unit_price: eur(PRICE_MINOR),
    };
    execute(&mut store, &set_stock_read_set(&stock), NOW, |s| {
        decide_set_stock(s, &stock)
    })
    .expect("stock");
    let place = PlaceOrder {
        order_id: OrderId::new("o-template").expect("valid"),
        customer: CustomerId::new("c-template").expect("valid"),
        lines: vec![OrderLine {
            sku: Sku::new("s0").expect("valid"),
            quantity: 1,
        }],
        currency: Currency::EUR,
        idempotency_key: IdempotencyKey::new("k").expect("valid"),
        principal: None,
        correlation_id: CorrelationId::new("r-template").expect("valid"),
        traceparent: trace,
    };
    execute(&mut store, &place_order_read_set(&place), NOW, |s| {
        decide_place_order(&rules.order_saga, s, &place, NOW)
    })
    .expect("placed");
    loop {
        let mut moved = false;
        for service in Service::ALL {
            for row in store.outbox_pending(service, 100) {
                store.mark_published(service, &[row.sequence]);
                if let Some(consumer) = row.envelope.payload.consumer() {
                    let envelope = row.envelope.clone();
                    execute(
                        &mut store,
                        &message_read_set(consumer, &envelope),
                        NOW,
                        |s| decide_message(&rules, consumer, s, &envelope, NOW),
                    )
                    .expect("handled");
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let body = |key: RowKey| match store.row(&key).map(|row| &row.value) {
        Some(Row::Order(row)) => serde_json::to_string(&**row).expect("json"),
        Some(Row::Payment(row)) => serde_json::to_string(row).expect("json"),
        Some(Row::Reservation(row)) => serde_json::to_string(row).expect("json"),
        other => panic!("unexpected {other:?}"),
    };
    let order_id = OrderId::new("o-template").expect("valid");
    Templates {
        order: body(RowKey::Order(order_id.clone())),
        payment: body(RowKey::Payment(order_id.clone())),
        reservation: body(RowKey::Reservation(order_id)),
    }
}

/// One CSV field: quoted, with quotes doubled.
fn csv(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("\\x");
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

async fn copy(connection: &mut PgConnection, statement: &'static str, data: String) {
    let mut sink = connection
        .copy_in_raw(statement)
        .await
        .expect("copy starts");
    sink.send(data.into_bytes()).await.expect("copy sends");
    sink.finish().await.expect("copy finishes");
}

async fn generate(url: &str, orders: u64) {
    let started = Instant::now();
    let templates = templates();
    let mut connection = PgConnection::connect(url).await.expect("connects");
    let at = "2026-01-01 00:00:00+00";
    let eur = |minor| Money::from_minor(minor, Currency::EUR);
    // Ledger: a top-up per customer, then a charge per order, sealed in order.
    let mut entries = String::new();
    let mut legs = String::new();
    let mut sequence = 0u64;
    let mut previous = ChainHash::GENESIS;
    let mut seal = |posting: Posting, entries: &mut String, legs: &mut String| {
        sequence += 1;
        let entry = Entry::seal_at(sequence, previous, posting, NOW);
        previous = entry.hash;
        let memo = &entry.posting.memo;
        let _ = writeln!(
            entries,
            "{},{},{at},,{},{},{},{},{},{},{}",
            entry.sequence,
            entry.posting.id,
            memo.order_id
                .as_ref()
                .map_or(String::new(), |id| id.to_string()),
            memo.purpose,
            memo.correlation_id
                .as_ref()
                .map_or(String::new(), |id| id.to_string()),
            memo.traceparent.clone().unwrap_or_default(),
            csv(&serde_json::to_string(&entry.posting).expect("json")),
            hex(&entry.previous_hash.0),
            hex(&entry.hash.0),
        );
        for (index, leg) in entry.posting.legs.iter().enumerate() {
            let side = match leg.side {
                saldo_ledger::Side::Debit => "debit",
                saldo_ledger::Side::Credit => "credit",
            };
            let _ = writeln!(
                legs,
                "{},{index},{},{side},{},EUR",
                entry.sequence,
                leg.account,
                leg.amount.amount_minor()
            );
        }
    };
    for customer in 0..CUSTOMERS {
        let wallet = AccountId::wallet(
            CustomerId::new(format!("c{customer}")).expect("valid"),
            Currency::EUR,
        );
        let memo = Memo {
            purpose: "top_up".to_owned(),
            ..Memo::default()
        };
        seal(
            Posting::transfer(
                Id128::derive("bench-top-up", &[&customer.to_be_bytes()]),
                AccountId::Funding {
                    currency: Currency::EUR,
                },
                wallet,
                eur(TOP_UP_MINOR),
                memo,
            ),
            &mut entries,
            &mut legs,
        );
    }
    let mut orders_csv = String::new();
    let mut payments_csv = String::new();
    let mut reservations_csv = String::new();
    for index in 0..orders {
        let order_id = format!("o{index:08}");
        let customer = format!("c{}", index % CUSTOMERS);
        let order_body = templates
            .order
            .replace("o-template", &order_id)
            .replace("c-template", &customer);
        let _ = writeln!(
            orders_csv,
            "{order_id},1,{customer},EUR,{PRICE_MINOR},CONFIRMED,,nothing,,{},{at},{at}",
            csv(&order_body)
        );
        let payment_body = templates
            .payment
            .replace("o-template", &order_id)
            .replace("c-template", &customer);
        let _ = writeln!(
            payments_csv,
            "{order_id},1,{customer},{PRICE_MINOR},EUR,captured,{},{at}",
            csv(&payment_body)
        );
        let reservation_body = templates.reservation.replace("o-template", &order_id);
        let _ = writeln!(
            reservations_csv,
            "{order_id},1,committed,{},{at}",
            csv(&reservation_body)
        );
        let memo = Memo {
            purpose: "charge".to_owned(),
            order_id: Some(OrderId::new(order_id.clone()).expect("valid")),
            correlation_id: Some(CorrelationId::new(format!("r{index}")).expect("valid")),
            traceparent: Some(
                Traceparent::root(Id128::derive("bench", &[order_id.as_bytes()]))
                    .as_str()
                    .to_owned(),
            ),
        };
        let wallet = AccountId::wallet(CustomerId::new(customer).expect("valid"), Currency::EUR);
        let order = OrderId::new(order_id).expect("valid");
        seal(
            Posting::transfer(
                charge_id(&order),
                wallet,
                AccountId::MerchantRevenue {
                    currency: Currency::EUR,
                },
                eur(PRICE_MINOR),
                memo,
            ),
            &mut entries,
            &mut legs,
        );
    }
    let mut accounts_csv = String::new();
    for customer in 0..CUSTOMERS {
        let charged =
            (orders / CUSTOMERS + u64::from(customer < orders % CUSTOMERS)) as i64 * PRICE_MINOR;
        let _ = writeln!(
            accounts_csv,
            "wallet:c{customer}:EUR,1,wallet,EUR,{},0",
            TOP_UP_MINOR - charged
        );
    }
    let _ = writeln!(
        accounts_csv,
        "merchant_revenue:EUR,1,merchant_revenue,EUR,{},0",
        orders as i64 * PRICE_MINOR
    );
    let _ = writeln!(
        accounts_csv,
        "funding:EUR,1,funding,EUR,{},0",
        -(CUSTOMERS as i64) * TOP_UP_MINOR
    );
    let generated = started.elapsed();
    copy(&mut connection, "COPY orders.orders (order_id, version, customer_id, currency, amount_minor, status, cancel_reason, awaiting, deadline_at, body, created_at, updated_at) FROM STDIN WITH (FORMAT csv)", orders_csv).await;
    copy(&mut connection, "COPY payment.payments (order_id, version, customer_id, amount_minor, currency, state, body, updated_at) FROM STDIN WITH (FORMAT csv)", payments_csv).await;
    copy(&mut connection, "COPY inventory.reservations (order_id, version, state, body, updated_at) FROM STDIN WITH (FORMAT csv)", reservations_csv).await;
    copy(&mut connection, "COPY payment.accounts (account_id, version, kind, currency, balance_minor, held_minor) FROM STDIN WITH (FORMAT csv)", accounts_csv).await;
    // A bulk load by the tables' owner, like a restore: entries and legs in
    // one transaction, so the legs pass the rule that they are written with
    // their entry (migration 20261201000001).
    connection.execute("BEGIN").await.expect("begins");
    copy(&mut connection, "COPY payment.ledger_entries (sequence, posting_id, recorded_at, reverses, order_id, purpose, correlation_id, traceparent, posting, previous_hash, hash) FROM STDIN WITH (FORMAT csv)", entries).await;
    copy(&mut connection, "COPY payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) FROM STDIN WITH (FORMAT csv)", legs).await;
    connection.execute("COMMIT").await.expect("commits");
    connection.execute(sqlx::AssertSqlSafe(format!("INSERT INTO inventory.stock (sku, version, on_hand, reserved, unit_price_minor, currency) VALUES ('s0', 1, 1000000000, 0, {PRICE_MINOR}, 'EUR')"))).await.expect("stock");
    connection
        .execute(sqlx::AssertSqlSafe(format!(
            "UPDATE payment.chain_head SET sequence = {sequence}, hash = '{}'",
            hex(&previous.0)
        )))
        .await
        .expect("head");
    connection
        .execute("VACUUM ANALYZE")
        .await
        .expect("analyses");
    println!(
        "generated {orders} orders and {sequence} ledger entries in {:.1?}, loaded in {:.1?}",
        generated,
        started.elapsed() - generated
    );
}

/// The child: one full reconciliation as the read-only role.
async fn child(url: &str) {
    let options = PgConnectOptions::from_str(url)
        .expect("url")
        .options([("role", "saldo_reconcile")]);
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .expect("connects");
    let started = Instant::now();
    let report = Reconciler::new(pool, Settings::default())
        .run(NOW.plus_ms(3_600_000))
        .await
        .expect("reconciles");
    let elapsed_ms = started.elapsed().as_millis();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!(
        "{elapsed_ms} {peak_kb} {} {} {}",
        report.orders_checked,
        report.entries_verified,
        report.findings.len()
    );
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(position) = arguments.iter().position(|argument| argument == "--child") {
        runtime.block_on(child(&arguments[position + 1]));
        return;
    }
    let orders: u64 = std::env::var("SALDO_BENCH_ORDERS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let url = runtime.block_on(async {
        let database = TestDatabase::create().await;
        database
            .store
            .pool()
            .execute("GRANT saldo_reconcile TO CURRENT_USER")
            .await
            .expect("grants");
        generate(database.url(), orders).await;
        database.url().to_owned()
    });
    let mut times = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..RUNS {
        let output = std::process::Command::new(std::env::current_exe().expect("self"))
            .args(["--child", &url])
            .output()
            .expect("child runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        assert_eq!(
            fields.len(),
            5,
            "child printed {text:?}, stderr {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(fields[2], orders, "every order was judged");
        assert_eq!(fields[4], 0, "generated data is clean");
        times.push(fields[0]);
        peaks.push(fields[1]);
        println!(
            "  run: {} ms, peak RSS {} MiB, {} orders, {} entries verified",
            fields[0],
            fields[1] / 1024,
            fields[2],
            fields[3]
        );
    }
    times.sort_unstable();
    peaks.sort_unstable();
    println!(
        "reconciled {orders} orders: median {} ms, peak RSS median {} MiB ({RUNS} runs)",
        times[RUNS / 2],
        peaks[RUNS / 2] / 1024
    );
}
