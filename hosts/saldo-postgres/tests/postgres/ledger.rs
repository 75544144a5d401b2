//! The ledger is append-only in the database, and tampering is detectable.

use saldo_ledger::{ChainError, verify_chain};
use sqlx::{Connection, Executor, PgConnection};

use crate::backends::{Driver, Kind, eur, line};

/// A connection to the test database acting as `role` (SET ROLE), so the
/// role's own privileges apply.
async fn connection_as(driver: &Driver, role: &str) -> PgConnection {
    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    let mut connection = PgConnection::connect(database.url())
        .await
        .expect("connects");
    connection
        .execute(sqlx::AssertSqlSafe(format!("GRANT {role} TO CURRENT_USER")))
        .await
        .expect("the test role may grant service roles");
    connection
        .execute(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
        .await
        .expect("sets role");
    connection
}

pub(crate) async fn error_of(connection: &mut PgConnection, sql: &'static str) -> String {
    match connection.execute(sql).await {
        Ok(_) => String::from("succeeded"),
        Err(sqlx::Error::Database(error)) => {
            format!("{} {}", error.code().unwrap_or_default(), error.message())
        }
        Err(other) => panic!("unexpected failure: {other}"),
    }
}

/// A database with a top-up and a confirmed order: three ledger entries.
async fn ledger_with_entries() -> Driver {
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(5_000), "top-up-1")
        .await
        .expect("top-up");
    driver.set_stock("apple", 5, eur(300)).await;
    driver
        .place("o1", "alice", vec![line("apple", 2)], "k1")
        .await
        .expect("placed");
    driver.pump(|_| false).await;
    driver
        .top_up("alice", eur(100), "top-up-2")
        .await
        .expect("top-up");
    driver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_role_cannot_change_the_ledger_and_the_trigger_stops_everyone_else() {
    // Proves the ledger is append-only twice over in the database: the payment
    // role has no UPDATE or DELETE privilege, and even the owner is stopped by
    // the trigger.
    let driver = ledger_with_entries().await;
    let mut payment = connection_as(&driver, "saldo_payment").await;
    assert!(
        error_of(
            &mut payment,
            "UPDATE payment.ledger_entries SET purpose = 'gift'"
        )
        .await
        .starts_with("42501 permission denied")
    );
    assert!(
        error_of(&mut payment, "DELETE FROM payment.ledger_legs")
            .await
            .starts_with("42501 permission denied")
    );
    assert!(
        error_of(&mut payment, "TRUNCATE payment.ledger_entries CASCADE")
            .await
            .starts_with("42501 permission denied")
    );
    assert_eq!(
        error_of(&mut payment, "SELECT count(*) FROM payment.ledger_entries").await,
        "succeeded"
    );

    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        unreachable!()
    };
    let mut owner = PgConnection::connect(database.url())
        .await
        .expect("connects");
    for statement in [
        "UPDATE payment.ledger_entries SET purpose = 'gift'",
        "DELETE FROM payment.ledger_entries WHERE sequence = 3",
        "UPDATE payment.ledger_legs SET amount_minor = 1",
        "TRUNCATE payment.ledger_entries CASCADE",
    ] {
        let refused = error_of(&mut owner, statement).await;
        assert!(
            refused.contains("the ledger is append-only"),
            "{statement}: {refused}"
        );
    }
    let entries = database.store.entries().await.expect("reads");
    assert_eq!(entries.len(), 3);
    assert_eq!(verify_chain(None, &entries), Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_are_written_only_with_their_entry_and_only_as_its_posting_states() {
    // Proves the attack of issue #14 is refused by the database: the payment
    // role may append entries, but not attach a forged pair of legs to an old
    // top-up (moving revenue into a new wallet), nor store an entry whose legs
    // differ from its hashed posting or leave one out.
    let driver = ledger_with_entries().await;
    let mut payment = connection_as(&driver, "saldo_payment").await;
    payment
        .execute("INSERT INTO payment.accounts (account_id, version, kind, currency, balance_minor, held_minor) VALUES ('wallet:mallory:EUR', 1, 'wallet', 'EUR', 0, 0)")
        .await
        .expect("the payment role opens accounts");
    let refused = error_of(
        &mut payment,
        "INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) VALUES \
         (1, 2, 'merchant_revenue:EUR', 'debit', 500, 'EUR'), (1, 3, 'wallet:mallory:EUR', 'credit', 500, 'EUR')",
    )
    .await;
    assert!(
        refused.starts_with("42501") && refused.contains("legs are written only with their entry"),
        "{refused}"
    );
    // A new entry (copied from entry 1 at the next sequence, with its hash
    // bytes changed so they stay unique) whose legs do not match it.
    let copy_entry = "INSERT INTO payment.ledger_entries (sequence, posting_id, recorded_at, reverses, order_id, purpose, correlation_id, traceparent, posting, previous_hash, hash) \
         SELECT 4, 'forged', recorded_at, reverses, order_id, purpose, correlation_id, traceparent, posting, previous_hash, sha256(hash) FROM payment.ledger_entries WHERE sequence = 1";
    for (legs, refusal) in [
        (
            "INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) \
             SELECT 4, leg, CASE side WHEN 'credit' THEN 'wallet:mallory:EUR' ELSE account_id END, side, amount_minor, currency FROM payment.ledger_legs WHERE sequence = 1",
            "it is not the leg its posting states",
        ),
        (
            "INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) \
             SELECT 4, leg, account_id, side, amount_minor, currency FROM payment.ledger_legs WHERE sequence = 1 AND leg = 0",
            "1 legs stored, its posting has 2",
        ),
        // jsonb reads a negative index from the end: leg -2 is the posting's
        // leg 0, so without a bound this stored two debits and no credit.
        (
            "INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) \
             SELECT 4, i.leg, account_id, side, amount_minor, currency FROM payment.ledger_legs, (VALUES (0), (-2)) AS i(leg) \
             WHERE sequence = 1 AND ledger_legs.leg = 0",
            "it is not the leg its posting states",
        ),
    ] {
        payment.execute("BEGIN").await.expect("begins");
        payment.execute(copy_entry).await.expect("appends an entry");
        let mut refused = error_of(&mut payment, legs).await;
        if refused == "succeeded" {
            refused = error_of(&mut payment, "COMMIT").await;
        }
        let _ = payment.execute("ROLLBACK").await;
        assert!(refused.contains(refusal), "{legs}: {refused}");
    }
    // Nothing of it landed; the chain and every leg are as committed.
    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        unreachable!()
    };
    let legs: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.ledger_legs")
        .fetch_one(database.store.pool())
        .await
        .expect("counts");
    assert_eq!(legs, 6, "three entries of two legs");
    let entries = database.store.entries().await.expect("reads");
    assert_eq!(verify_chain(None, &entries), Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_changed_behind_the_triggers_back_breaks_the_chain() {
    // Proves that someone who disables the trigger (an owner or superuser) and
    // rewrites an entry is caught by the hash chain at exactly that entry.
    let driver = ledger_with_entries().await;
    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        unreachable!()
    };
    let mut owner = PgConnection::connect(database.url())
        .await
        .expect("connects");
    owner
        .execute("ALTER TABLE payment.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
        .await
        .expect("owner may");
    // Halve the charge, keeping it balanced so only the hash can tell.
    owner
        .execute(
            "UPDATE payment.ledger_entries SET posting = jsonb_set(jsonb_set(posting, '{legs,0,amount,amount_minor}', '300'), '{legs,1,amount,amount_minor}', '300') WHERE sequence = 2",
        )
        .await
        .expect("tampers");
    owner
        .execute("ALTER TABLE payment.ledger_entries ENABLE TRIGGER ledger_entries_append_only")
        .await
        .expect("owner may");
    let entries = database.store.entries().await.expect("reads");
    assert!(entries[1].posting.is_balanced(), "the forgery balances");
    assert_eq!(
        verify_chain(None, &entries),
        Err(ChainError::ContentChanged { sequence: 2 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_role_reaches_only_its_own_schema_and_reconciliation_only_reads() {
    // Proves the role separation: no service reads another's schema, and the
    // reconciliation role reads everything and writes nothing.
    let driver = ledger_with_entries().await;
    let mut order = connection_as(&driver, "saldo_order").await;
    assert_eq!(
        error_of(&mut order, "SELECT count(*) FROM orders.orders").await,
        "succeeded"
    );
    assert!(
        error_of(&mut order, "SELECT count(*) FROM payment.accounts")
            .await
            .starts_with("42501")
    );
    assert!(
        error_of(&mut order, "SELECT count(*) FROM inventory.stock")
            .await
            .starts_with("42501")
    );
    let mut inventory = connection_as(&driver, "saldo_inventory").await;
    assert_eq!(
        error_of(
            &mut inventory,
            "UPDATE inventory.stock SET on_hand = on_hand"
        )
        .await,
        "succeeded"
    );
    assert!(
        error_of(&mut inventory, "SELECT count(*) FROM orders.orders")
            .await
            .starts_with("42501")
    );
    let mut reconcile = connection_as(&driver, "saldo_reconcile").await;
    for readable in [
        "SELECT count(*) FROM orders.orders",
        "SELECT count(*) FROM inventory.reservations",
        "SELECT count(*) FROM payment.ledger_legs",
    ] {
        assert_eq!(
            error_of(&mut reconcile, readable).await,
            "succeeded",
            "{readable}"
        );
    }
    assert!(
        error_of(
            &mut reconcile,
            "UPDATE inventory.stock SET on_hand = on_hand"
        )
        .await
        .starts_with("42501")
    );
    assert!(
        error_of(&mut reconcile, "DELETE FROM orders.inbox")
            .await
            .starts_with("42501")
    );
}
