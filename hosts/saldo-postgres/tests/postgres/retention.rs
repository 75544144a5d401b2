//! Retention on the real server (ADR 0015): each service purges its own
//! receipts and records under its own role, in bounded statements, and
//! what arrives after the horizon is absorbed.

use saldo_domain::MessageOutcome;
use saldo_domain::messages::{Envelope, Service};
use saldo_domain::retention::{Horizons, IDEMPOTENCY_RETENTION_MS, INBOX_RETENTION_MS};
use saldo_domain::store::Purged;
use saldo_engine::Store;

use crate::backends::{Backend, Driver, Kind, eur, line};
use crate::concurrency::store_as;

/// Deletes the outbox rows, as the publisher does an hour after publishing
/// them (long before any receipt reaches its horizon).
async fn publish_and_forget(driver: &Driver) {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    for schema in ["orders", "inventory", "payment"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {schema}.outbox")))
            .execute(database.store.pool())
            .await
            .expect("outbox emptied");
    }
}

/// One order of `apples` by a funded alice, run to its end on PostgreSQL;
/// the driver and every message the run delivered.
async fn one_order_run(apples: u32) -> (Driver, Vec<Envelope>) {
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(1_000), "seed")
        .await
        .expect("funded");
    driver.set_stock("apple", 10, eur(100)).await;
    driver
        .place("o-1", "alice", vec![line("apple", apples)], "k")
        .await
        .expect("placed");
    driver.pump(|_| false).await;
    let delivered = driver.pending().await;
    (driver, delivered)
}

#[tokio::test]
async fn a_flow_redelivered_after_each_service_purged_as_its_role_has_no_second_effect() {
    // Proves every service's role may purge its own inbox and idempotency
    // rows, that a purge takes only rows past their horizon and at most its
    // limit, and that every message redelivered afterwards is absorbed.
    let (mut driver, delivered) = one_order_run(2).await;
    assert!(delivered.len() >= 5, "{delivered:?}");
    publish_and_forget(&driver).await;
    let before = driver.backend.dump().await;
    let horizons = Horizons::default();
    let within = driver.now.plus_ms(IDEMPOTENCY_RETENTION_MS - 1);
    let past = driver.now.plus_ms(INBOX_RETENTION_MS + 1);
    for (service, role) in [
        (Service::Order, "saldo_order"),
        (Service::Inventory, "saldo_inventory"),
        (Service::Payment, "saldo_payment"),
    ] {
        let store = store_as(&driver, role).await;
        let held = before
            .inbox
            .iter()
            .filter(|receipt| receipt.consumer == service)
            .count();
        assert_eq!(
            Store::purge(&store, service, &horizons, within, 1_000).await,
            Ok(Purged::default()),
            "{service}: nothing is past its horizon yet"
        );
        let first = Store::purge(&store, service, &horizons, past, 1)
            .await
            .expect("purges");
        assert_eq!(first.inbox, 1, "{service}: at most the limit");
        let rest = Store::purge(&store, service, &horizons, past, 1_000)
            .await
            .expect("purges");
        assert_eq!(first.inbox + rest.inbox, held, "{service}");
    }
    let after_purge = driver.backend.dump().await;
    assert!(after_purge.inbox.is_empty() && after_purge.idempotency.is_empty());
    driver.now = past;
    for envelope in &delivered {
        let outcome = driver.deliver(envelope).await;
        assert!(
            matches!(
                outcome,
                Ok(MessageOutcome::Applied | MessageOutcome::Ignored(_))
            ),
            "{} absorbed: {outcome:?}",
            envelope.message_type()
        );
    }
    let after = driver.backend.dump().await;
    assert_eq!(after.rows, before.rows, "no row changed");
    assert_eq!(after.entries, before.entries, "no ledger entry added");
    for reply in driver.pending().await {
        let original = delivered
            .iter()
            .find(|first| first.message_id == reply.message_id)
            .expect("only replies sent before are sent again");
        assert_eq!(reply.payload, original.payload, "the same reply, re-sent");
        assert_eq!(driver.deliver(&reply).await, Ok(MessageOutcome::Duplicate));
    }
}

#[tokio::test]
async fn a_message_redelivered_after_its_receipt_expired_is_a_duplicate_on_postgres() {
    // Regression: past the receipt's expiry the stored receipt collided
    // with the new one ("already handled") until the message was dead-lettered.
    let (mut driver, delivered) = one_order_run(1).await;
    driver.now = driver.now.plus_ms(INBOX_RETENTION_MS + 1);
    for envelope in &delivered {
        assert_eq!(
            driver.deliver(envelope).await,
            Ok(MessageOutcome::Duplicate),
            "{}",
            envelope.message_type()
        );
    }
}
