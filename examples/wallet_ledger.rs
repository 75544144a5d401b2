//! A wallet service embedding `saldo-ledger`: top up, pay, refund, and prove
//! the books are intact. Run: `cargo run -p saldo-examples --example wallet_ledger`.

use saldo_ledger::{AccountId, Applied, Ledger, Memo, Posting, Rejection, verify_chain};
use saldo_types::{Currency, CustomerId, Id128, Money, Timestamp};

fn main() -> Result<(), Rejection> {
    // The embedder supplies time; the ledger never reads a clock.
    let now = Timestamp::from_unix_ms(1_764_000_000_000);
    let eur = Currency::EUR;
    let alice = AccountId::wallet(CustomerId::new("alice").expect("valid id"), eur);
    let revenue = AccountId::MerchantRevenue { currency: eur };
    let funding = AccountId::Funding { currency: eur };

    let mut ledger = Ledger::new();
    for account in [alice.clone(), revenue.clone(), funding.clone()] {
        ledger.open_account(account);
    }
    let memo = |purpose: &str| Memo {
        purpose: purpose.to_owned(),
        ..Memo::default()
    };

    // Ids come from the cause, so a retried request cannot move money twice.
    let top_up = Id128::derive("posting", &[b"top_up", b"alice", b"request-1"]);
    let posting = Posting::transfer(
        top_up,
        funding,
        alice.clone(),
        "50.00 EUR".parse().expect("amount"),
        memo("top_up"),
    );
    assert_eq!(ledger.post(posting.clone(), now)?, Applied::Created);
    assert_eq!(
        ledger.post(posting, now)?,
        Applied::Exists,
        "the retry is recognised"
    );

    let charge = Id128::derive("posting", &[b"charge", b"order-1"]);
    ledger.post(
        Posting::transfer(
            charge,
            alice.clone(),
            revenue.clone(),
            Money::parse("12.34", eur).expect("amount"),
            memo("charge"),
        ),
        now,
    )?;

    // Too much: refused with the exact reason, nothing written.
    let greedy = Posting::transfer(
        Id128::derive("posting", &[b"charge", b"order-2"]),
        alice.clone(),
        revenue,
        Money::parse("100", eur).expect("amount"),
        memo("charge"),
    );
    match ledger.post(greedy, now) {
        Err(Rejection::InsufficientFunds {
            available,
            required,
            ..
        }) => println!("refused: {available} available, {required} required"),
        other => panic!("expected insufficient funds, got {other:?}"),
    }

    // A refund is a new entry linked to the charge; the charge stays as it was.
    ledger.reverse(charge, memo("refund"), now)?;

    let balance = ledger
        .book()
        .account(&alice)
        .map(|account| account.balance)
        .expect("alice's wallet");
    println!("alice: {balance}; {} entries", ledger.entries().len());
    let verified = verify_chain(None, ledger.entries()).expect("the hash chain is intact");
    println!("hash chain verified over {verified} entries");
    assert_eq!(balance, Money::parse("50", eur).expect("amount"));
    Ok(())
}
