//! Reconciliation on PostgreSQL: each silent failure, injected straight into
//! the tables as a bug or an operator's mistake would leave it, is reported
//! with the right ids and nothing else; a clean database reports nothing.

use std::str::FromStr;

use rstest::rstest;
use saldo_domain::decision::{Decision, Row};
use saldo_ledger::{AccountId, Book, ChainHash, Checkpoint, Entry, Memo, Posting};
use saldo_postgres::reconcile::{Reconciler, RunReport};
use saldo_reconcile::{FindingKind, Settings};
use saldo_types::{CustomerId, Id128, OrderId};
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::backends::{Backend, Driver, EUR, Kind, NOW, eur, line};

/// An hour after the flows: every order is past the grace period.
fn later() -> saldo_types::Timestamp {
    NOW.plus_ms(3_600_000)
}

/// o1 confirmed (alice, 2 apples = 600); o2 cancelled (bob has no wallet);
/// o3 cancelled (alice cannot afford 1,800); everything published.
async fn settled() -> Driver {
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(2_000), "top-up-1")
        .await
        .expect("top-up");
    driver.set_stock("apple", 10, eur(300)).await;
    driver.set_stock("pear", 1, eur(900)).await;
    driver
        .place("o1", "alice", vec![line("apple", 2)], "k1")
        .await
        .expect("placed");
    driver
        .place("o2", "bob", vec![line("apple", 1)], "k2")
        .await
        .expect("placed");
    driver
        .place("o3", "alice", vec![line("pear", 1), line("apple", 3)], "k3")
        .await
        .expect("placed");
    driver.pump(|_| false).await;
    admin(&driver, "UPDATE orders.outbox SET published_at = now(); UPDATE inventory.outbox SET published_at = now(); UPDATE payment.outbox SET published_at = now()").await;
    driver
}

async fn admin(driver: &Driver, sql: &'static str) {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    database
        .store
        .pool()
        .execute(sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// A reconciler connected as the read-only `saldo_reconcile` role.
async fn reconciler(driver: &Driver) -> Reconciler {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    database
        .store
        .pool()
        .execute("GRANT saldo_reconcile TO CURRENT_USER")
        .await
        .expect("grants");
    let options = PgConnectOptions::from_str(database.url())
        .expect("url")
        .options([("role", "saldo_reconcile")]);
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .expect("connects");
    Reconciler::new(pool, Settings::default())
}

async fn reconcile(driver: &Driver) -> RunReport {
    reconciler(driver)
        .await
        .run(later())
        .await
        .expect("reconciles")
}

/// Commits a posting the way a buggy service (or a manual fix) would.
async fn post(
    driver: &Driver,
    from: AccountId,
    to: AccountId,
    amount_minor: i64,
    order: &str,
    purpose: &str,
    name: &[u8],
) {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    let read_set = saldo_domain::decision::ReadSet {
        rows: vec![
            saldo_domain::decision::RowKey::Account(from.clone()),
            saldo_domain::decision::RowKey::Account(to.clone()),
        ],
        ..Default::default()
    };
    let snapshot = database.store.load(&read_set).await.expect("loads");
    let mut book = Book::from_parts(snapshot.accounts().cloned(), [], []);
    let memo = Memo {
        purpose: purpose.to_owned(),
        order_id: Some(OrderId::new(order).expect("valid")),
        ..Memo::default()
    };
    book.post(Posting::transfer(
        Id128::derive("injected", &[name]),
        from,
        to,
        eur(amount_minor),
        memo,
    ))
    .expect("posts");
    let changes = book.take_changes();
    let mut decision = Decision::default();
    for account in changes.accounts {
        let version = snapshot.account(&account.id).0;
        decision.write(version, Row::Account(account));
    }
    decision.postings = changes.postings;
    database.store.commit(decision, NOW).await.expect("commits");
}

fn alice() -> AccountId {
    AccountId::wallet(CustomerId::new("alice").expect("valid"), EUR)
}

fn revenue() -> AccountId {
    AccountId::MerchantRevenue { currency: EUR }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_database_reports_nothing_and_later_runs_are_incremental() {
    // Proves a settled platform is clean, the first run is full, and a second
    // run looks only at what changed and resumes the chain at its watermark.
    let mut driver = settled().await;
    let mut reconciler = reconciler(&driver).await;
    let first = reconciler.run(later()).await.expect("reconciles");
    assert_eq!(first.findings, vec![]);
    assert!(first.full);
    assert_eq!(first.orders_checked, 3);
    assert_eq!(first.entries_verified, 2, "a top-up and a charge");
    let second = reconciler
        .run(later().plus_ms(3_600_000))
        .await
        .expect("reconciles");
    assert_eq!(second.findings, vec![]);
    assert!(!second.full);
    assert_eq!((second.orders_checked, second.entries_verified), (0, 0));
    // A new order two minutes before the third run: in flight, but its
    // command has waited in the outbox longer than a minute.
    driver.now = later().plus_ms(3_600_000 - 120_000);
    driver
        .place("o4", "alice", vec![line("apple", 1)], "k4")
        .await
        .expect("placed");
    let third = reconciler
        .run(later().plus_ms(3_600_000))
        .await
        .expect("reconciles");
    assert_eq!(third.orders_checked, 1, "only the new order");
    assert_eq!(
        third.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FindingKind::OutboxUnpublished],
        "its command waits in the outbox"
    );
}

#[derive(Debug, Clone, Copy)]
enum Injection {
    ConfirmedWithoutPayment,
    CapturedWithoutEntries,
    EntriesWithoutPayment,
    UnbalancedEntry,
    ChainBroken,
    DoubleCharge,
    CancelledWithCharge,
    CancelledWithHeldStock,
    StockDisagrees,
    HeldForConfirmedOrder,
    SagaStuck,
    AccountDisagrees,
    OutboxUnpublished,
    DeadLetters,
    OrderGone,
    ConfirmedWithReleasedStock,
    CancelledWithCommittedStock,
    ForgedLegs,
    ColumnDisagreesWithPosting,
    ReservationPricedOtherwise,
}

async fn inject(driver: &Driver, injection: Injection) {
    match injection {
        Injection::ConfirmedWithoutPayment => admin(driver, "UPDATE orders.orders SET status = 'CONFIRMED', cancel_reason = NULL WHERE order_id = 'o2'").await,
        Injection::CapturedWithoutEntries => admin(driver, "UPDATE payment.payments SET state = 'captured' WHERE order_id = 'o3'").await,
        Injection::EntriesWithoutPayment => post(driver, alice(), revenue(), 100, "ghost", "charge", b"ghost").await,
        Injection::UnbalancedEntry => {
            admin(
                driver,
                "ALTER TABLE payment.ledger_legs DISABLE TRIGGER ledger_legs_append_only; \
                 UPDATE payment.ledger_legs SET amount_minor = amount_minor + 1 WHERE sequence = 2 AND account_id = 'merchant_revenue:EUR'; \
                 ALTER TABLE payment.ledger_legs ENABLE TRIGGER ledger_legs_append_only; \
                 UPDATE payment.accounts SET balance_minor = balance_minor + 1 WHERE account_id = 'merchant_revenue:EUR'",
            )
            .await
        }
        Injection::ChainBroken => {
            admin(
                driver,
                "ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only; \
                 UPDATE payment.ledger_entries SET posting = jsonb_set(posting, '{memo,correlation_id}', '\"forged\"') WHERE sequence = 2; \
                 ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
            )
            .await
        }
        Injection::DoubleCharge => post(driver, alice(), revenue(), 600, "o1", "charge", b"second charge").await,
        Injection::CancelledWithCharge => post(driver, alice(), revenue(), 100, "o3", "charge", b"late charge").await,
        Injection::CancelledWithHeldStock => {
            admin(driver, "UPDATE inventory.reservations SET state = 'held' WHERE order_id = 'o2'; UPDATE inventory.stock SET reserved = reserved + 1 WHERE sku = 'apple'").await
        }
        Injection::StockDisagrees => admin(driver, "UPDATE inventory.stock SET reserved = reserved + 1 WHERE sku = 'pear'").await,
        Injection::HeldForConfirmedOrder => {
            admin(driver, "UPDATE inventory.reservations SET state = 'held' WHERE order_id = 'o1'; UPDATE inventory.stock SET reserved = reserved + 2 WHERE sku = 'apple'").await
        }
        Injection::SagaStuck => admin(driver, "UPDATE orders.orders SET status = 'PENDING', deadline_at = created_at + interval '10 seconds' WHERE order_id = 'o1'").await,
        Injection::AccountDisagrees => admin(driver, "UPDATE payment.accounts SET balance_minor = balance_minor + 5 WHERE account_id = 'wallet:alice:EUR'").await,
        Injection::OutboxUnpublished => admin(driver, "UPDATE payment.outbox SET published_at = NULL WHERE sequence = (SELECT min(sequence) FROM payment.outbox)").await,
        Injection::DeadLetters => {
            admin(driver, "INSERT INTO inventory.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ('m', 'ReserveStock', 'o9', 'malformed', '\\x00', now())").await
        }
        // A captured payment and sold stock whose order is gone.
        Injection::OrderGone => admin(driver, "DELETE FROM orders.orders WHERE order_id = 'o1'").await,
        Injection::ConfirmedWithReleasedStock => admin(driver, "UPDATE inventory.reservations SET state = 'released' WHERE order_id = 'o1'").await,
        Injection::CancelledWithCommittedStock => admin(driver, "UPDATE inventory.reservations SET state = 'committed' WHERE order_id = 'o2'").await,
        // The owner, behind the triggers' back, attaches a pair of legs to
        // the old top-up (entry 1) that moves revenue to a new wallet, and
        // adjusts both balances: every hash still verifies.
        Injection::ForgedLegs => {
            admin(
                driver,
                "INSERT INTO payment.accounts (account_id, version, kind, currency, balance_minor, held_minor) VALUES ('wallet:mallory:EUR', 1, 'wallet', 'EUR', 0, 0); \
                 ALTER TABLE payment.ledger_legs DISABLE TRIGGER ledger_legs_with_their_entry; \
                 INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) VALUES \
                     (1, 2, 'merchant_revenue:EUR', 'debit', 500, 'EUR'), (1, 3, 'wallet:mallory:EUR', 'credit', 500, 'EUR'); \
                 ALTER TABLE payment.ledger_legs ENABLE TRIGGER ledger_legs_with_their_entry; \
                 UPDATE payment.accounts SET balance_minor = balance_minor - 500 WHERE account_id = 'merchant_revenue:EUR'; \
                 UPDATE payment.accounts SET balance_minor = 500 WHERE account_id = 'wallet:mallory:EUR'",
            )
            .await
        }
        // The order was charged a total its reservation was not priced at
        // (what an operator inventing a reservation's reply would leave).
        Injection::ReservationPricedOtherwise => admin(driver, "UPDATE inventory.reservations SET body = jsonb_set(body, '{amount,amount_minor}', to_jsonb((body->'amount'->>'amount_minor')::bigint - 100)) WHERE order_id = 'o1'").await,
        // A column readers query, changed while the hashed posting is not.
        Injection::ColumnDisagreesWithPosting => {
            admin(
                driver,
                "ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only; \
                 UPDATE payment.ledger_entries SET purpose = 'refund' WHERE sequence = 2; \
                 ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
            )
            .await
        }
    }
}

#[rstest]
#[case::confirmed_without_payment(Injection::ConfirmedWithoutPayment, &[
    (FindingKind::ConfirmedWithoutCapturedPayment, "order:o2"),
    (FindingKind::ConfirmedWithoutCommittedStock, "order:o2"),
])]
#[case::captured_without_entries(Injection::CapturedWithoutEntries, &[(FindingKind::PaymentWithoutBalancedEntries, "order:o3")])]
#[case::entries_without_payment(Injection::EntriesWithoutPayment, &[(FindingKind::EntriesWithoutPayment, "order:ghost")])]
#[case::unbalanced_entry(Injection::UnbalancedEntry, &[
    (FindingKind::UnbalancedEntry, "entry:2"),
    (FindingKind::EntryRowsDisagreeWithPosting, "entry:2"),
])]
#[case::chain_broken(Injection::ChainBroken, &[(FindingKind::ChainBroken, "entry:2")])]
#[case::double_charge(Injection::DoubleCharge, &[
    (FindingKind::ConfirmedWithoutCapturedPayment, "order:o1"),
    (FindingKind::PaymentWithoutBalancedEntries, "order:o1"),
    (FindingKind::DoubleCharge, "order:o1"),
])]
#[case::cancelled_with_charge(Injection::CancelledWithCharge, &[
    (FindingKind::PaymentWithoutBalancedEntries, "order:o3"),
    (FindingKind::CancelledWithNetCharge, "order:o3"),
])]
#[case::cancelled_with_held_stock(Injection::CancelledWithHeldStock, &[(FindingKind::CancelledWithHeldStock, "order:o2")])]
#[case::stock_disagrees(Injection::StockDisagrees, &[(FindingKind::StockDisagreesWithReservations, "sku:pear")])]
#[case::held_for_confirmed_order(Injection::HeldForConfirmedOrder, &[(FindingKind::ReservationHeldForFinishedOrder, "order:o1")])]
#[case::saga_stuck(Injection::SagaStuck, &[(FindingKind::SagaStuck, "order:o1")])]
#[case::account_disagrees(Injection::AccountDisagrees, &[(FindingKind::AccountDisagreesWithEntries, "account:wallet:alice:EUR")])]
#[case::outbox_unpublished(Injection::OutboxUnpublished, &[(FindingKind::OutboxUnpublished, "outbox:payment:1")])]
#[case::dead_letters(Injection::DeadLetters, &[(FindingKind::DeadLettersPresent, "dead_letters:inventory")])]
#[case::order_gone(Injection::OrderGone, &[
    (FindingKind::PaymentWithoutOrder, "order:o1"),
    (FindingKind::StockCommittedWithoutOrder, "order:o1"),
])]
#[case::confirmed_with_released_stock(Injection::ConfirmedWithReleasedStock, &[(FindingKind::ConfirmedWithoutCommittedStock, "order:o1")])]
#[case::cancelled_with_committed_stock(Injection::CancelledWithCommittedStock, &[(FindingKind::CancelledWithCommittedStock, "order:o2")])]
#[case::reservation_priced_otherwise(Injection::ReservationPricedOtherwise, &[(FindingKind::OrderAmountDisagreesWithReservation, "order:o1")])]
#[case::forged_legs(Injection::ForgedLegs, &[(FindingKind::EntryRowsDisagreeWithPosting, "entry:1")])]
#[case::column_disagrees_with_posting(Injection::ColumnDisagreesWithPosting, &[
    (FindingKind::ConfirmedWithoutCapturedPayment, "order:o1"),
    (FindingKind::PaymentWithoutBalancedEntries, "order:o1"),
    (FindingKind::EntryRowsDisagreeWithPosting, "entry:2"),
])]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_injected_failure_is_reported_with_its_ids_and_nothing_else(
    #[case] injection: Injection,
    #[case] expected: &[(FindingKind, &str)],
) {
    // Proves every finding type is detected from data left in PostgreSQL, names
    // the ids involved, and nothing unrelated is reported alongside it.
    let driver = settled().await;
    assert_eq!(
        reconcile(&driver).await.findings,
        vec![],
        "the database starts clean"
    );
    inject(&driver, injection).await;
    let report = reconcile(&driver).await;
    let found: Vec<(FindingKind, String)> = report
        .findings
        .iter()
        .map(|finding| (finding.kind, finding.ids[0].clone()))
        .collect();
    let expected: Vec<(FindingKind, String)> = expected
        .iter()
        .map(|(kind, id)| (*kind, (*id).to_owned()))
        .collect();
    assert_eq!(found, expected, "{:#?}", report.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_levels_reported_while_they_hold_and_cleared_once_repaired() {
    // Proves a periodic reconciler keeps reporting what still holds: an order
    // whose finding is older than the incremental window, and a chain break
    // (which used to be reported once, after which the gauges fell to zero);
    // and that each clears once the data is repaired.
    let driver = settled().await;
    let mut periodic = reconciler(&driver).await;
    assert_eq!(periodic.run(later()).await.expect("runs").findings, vec![]);
    inject(&driver, Injection::ConfirmedWithReleasedStock).await;
    driver
        .top_up("alice", eur(100), "top-up-2")
        .await
        .expect("top-up");
    // Entry 3, the new top-up, changed before any run verified it.
    admin(
        &driver,
        "ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only; \
         UPDATE payment.ledger_entries SET posting = jsonb_set(posting, '{memo,purpose}', '\"forged\"') WHERE sequence = 3; \
         ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
    )
    .await;
    // The reservation changed without touching its updated_at, as a manual
    // fix would: only a full run sees it, and later runs must keep it.
    let mut full = reconciler(&driver).await;
    let kinds = |report: &RunReport| {
        report
            .findings
            .iter()
            .map(|finding| (finding.kind, finding.ids[0].clone()))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (FindingKind::ChainBroken, "entry:3".to_owned()),
        (
            FindingKind::ConfirmedWithoutCommittedStock,
            "order:o1".to_owned(),
        ),
    ];
    for hour in 1..=3 {
        let report = full
            .run(later().plus_ms(hour * 3_600_000))
            .await
            .expect("runs");
        assert_eq!(kinds(&report), expected, "run {hour}");
    }
    let report = periodic
        .run(later().plus_ms(3_600_000))
        .await
        .expect("runs");
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::ChainBroken, "entry:3".to_owned())],
        "the periodic reconciler had judged o1 clean before it changed"
    );
    let report = periodic
        .run(later().plus_ms(2 * 3_600_000))
        .await
        .expect("runs");
    assert_eq!(
        kinds(&report),
        vec![(FindingKind::ChainBroken, "entry:3".to_owned())],
        "a break stays reported"
    );
    admin(
        &driver,
        "UPDATE inventory.reservations SET state = 'committed' WHERE order_id = 'o1'; \
         ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only; \
         UPDATE payment.ledger_entries SET posting = jsonb_set(posting, '{memo,purpose}', to_jsonb(purpose)) WHERE sequence = 3; \
         ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
    )
    .await;
    let repaired = full
        .run(later().plus_ms(4 * 3_600_000))
        .await
        .expect("runs");
    assert_eq!(
        repaired.findings,
        vec![],
        "repaired data clears every finding"
    );
    assert_eq!(repaired.entries_verified, 1, "entry 3, judged again");
}

/// Rewrites the whole chain as a table owner could: entry 1's purpose
/// changed in its posting and its column, every later hash recomputed and the
/// chain's end moved, so the chain verifies from its first entry.
async fn rewrite_chain(driver: &Driver) {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    let entries = database.store.entries().await.expect("reads");
    let pool = database.store.pool();
    admin(
        driver,
        "ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only",
    )
    .await;
    let mut previous = ChainHash::GENESIS;
    for entry in entries {
        let mut posting = entry.posting.clone();
        if entry.sequence == 1 {
            posting.memo.purpose = "rewritten".to_owned();
        }
        let sealed = Entry::seal_at(entry.sequence, previous, posting, entry.recorded_at);
        sqlx::query(
            "UPDATE payment.ledger_entries SET posting = $2::jsonb, purpose = $3, previous_hash = $4, hash = $5 WHERE sequence = $1",
        )
        .bind(i64::try_from(sealed.sequence).expect("small"))
        .bind(serde_json::to_string(&sealed.posting).expect("encodes"))
        .bind(&sealed.posting.memo.purpose)
        .bind(sealed.previous_hash.0.to_vec())
        .bind(sealed.hash.0.to_vec())
        .execute(pool)
        .await
        .expect("rewrites");
        previous = sealed.hash;
    }
    sqlx::query("UPDATE payment.chain_head SET hash = $1")
        .bind(previous.0.to_vec())
        .execute(pool)
        .await
        .expect("moves the head");
    admin(
        driver,
        "ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_chain_is_reported_against_checkpoints_and_by_the_reconciler_that_verified_it()
{
    // Proves the external anchor: a chain recomputed from its first entry
    // verifies on its own, but not against the operator's checkpoint, nor
    // for a periodic reconciler that had verified the old chain.
    let driver = settled().await;
    let mut periodic = reconciler(&driver).await;
    assert_eq!(periodic.run(later()).await.expect("runs").findings, vec![]);
    let (sequence, hash) = periodic.chain_watermark().expect("verified");
    let checkpoint = Checkpoint { sequence, hash };
    assert_eq!(checkpoint.to_string().parse(), Ok(checkpoint));
    rewrite_chain(&driver).await;
    assert_eq!(
        reconcile(&driver).await.findings,
        vec![],
        "without an anchor the rewrite is consistent"
    );
    let mut anchored = reconciler(&driver).await;
    anchored.expect_checkpoint(checkpoint);
    let rewritten = vec![(FindingKind::ChainRewritten, "entry:2".to_owned())];
    let found = |report: RunReport| {
        report
            .findings
            .into_iter()
            .map(|finding| (finding.kind, finding.ids[0].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(found(anchored.run(later()).await.expect("runs")), rewritten);
    for hour in 1..=2 {
        assert_eq!(
            found(
                periodic
                    .run(later().plus_ms(hour * 3_600_000))
                    .await
                    .expect("runs")
            ),
            vec![
                (
                    FindingKind::EntryRowsDisagreeWithPosting,
                    "entries_through:2".to_owned()
                ),
                (FindingKind::ChainRewritten, "entry:2".to_owned()),
            ],
            "run {hour} after the rewrite: the verified rows changed too"
        );
    }
    // A checkpoint past the chain's end is reported as gone.
    let mut ahead = reconciler(&driver).await;
    ahead.expect_checkpoint(Checkpoint {
        sequence: 9,
        hash: checkpoint.hash,
    });
    assert_eq!(
        found(ahead.run(later()).await.expect("runs")),
        vec![(FindingKind::ChainRewritten, "entry:9".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_behind_a_periodic_reconciler_are_reported_on_its_next_run() {
    // Proves a periodic reconciler, which only verifies new entries, still
    // sees an entry it verified earlier being changed behind the triggers'
    // back: a charge moved to another order in the column reconciliation
    // reads, while the hash and the posting are left alone.
    let driver = settled().await;
    let mut periodic = reconciler(&driver).await;
    assert_eq!(periodic.run(later()).await.expect("runs").findings, vec![]);
    admin(
        &driver,
        "ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only; \
         UPDATE payment.ledger_entries SET order_id = 'o3' WHERE sequence = 2; \
         ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only",
    )
    .await;
    for hour in 1..=2 {
        let report = periodic
            .run(later().plus_ms(hour * 3_600_000))
            .await
            .expect("runs");
        assert!(
            report.findings.iter().any(|finding| finding.kind
                == FindingKind::EntryRowsDisagreeWithPosting
                && finding.ids == vec!["entries_through:2".to_owned()]),
            "run {hour}: {:#?}",
            report.findings
        );
    }
}
