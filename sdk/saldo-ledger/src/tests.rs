//! Rule tables and conservation properties for the ledger.

use quickcheck::{Arbitrary, Gen, QuickCheck};
use rstest::rstest;
use saldo_types::{Currency, CustomerId, Id128, Money, Timestamp};

use crate::*;

/// Cases each required property runs (the Foundation issue asks for 1,000).
const PROPERTY_CASES: u64 = 1_000;

pub(crate) const EUR: Currency = Currency::EUR;
pub(crate) const NOW: Timestamp = Timestamp::from_unix_ms(1_000);

pub(crate) fn eur(amount_minor: i64) -> Money {
    Money::from_minor(amount_minor, EUR)
}

pub(crate) fn wallet(name: &str) -> AccountId {
    AccountId::wallet(CustomerId::new(name).expect("valid"), EUR)
}

pub(crate) fn funding() -> AccountId {
    AccountId::Funding { currency: EUR }
}

pub(crate) fn revenue() -> AccountId {
    AccountId::MerchantRevenue { currency: EUR }
}

pub(crate) fn id(name: &str) -> PostingId {
    Id128::derive("test", &[name.as_bytes()])
}

pub(crate) fn memo(purpose: &str) -> Memo {
    Memo {
        purpose: purpose.to_owned(),
        ..Memo::default()
    }
}

/// A ledger where alice has 100.00 EUR and bob an empty wallet.
fn ledger() -> Ledger {
    let mut ledger = Ledger::new();
    for account in [wallet("alice"), wallet("bob"), funding(), revenue()] {
        ledger.open_account(account);
    }
    ledger
        .post(
            Posting::transfer(
                id("top-up"),
                funding(),
                wallet("alice"),
                eur(10_000),
                memo("top_up"),
            ),
            NOW,
        )
        .expect("top-up succeeds");
    ledger
}

fn charge(name: &str, amount_minor: i64) -> Posting {
    Posting::transfer(
        id(name),
        wallet("alice"),
        revenue(),
        eur(amount_minor),
        memo("charge"),
    )
}

pub(crate) fn leg(account: AccountId, side: Side, amount: Money) -> Leg {
    Leg {
        account,
        side,
        amount,
    }
}

#[rstest]
#[case::one_leg(Posting { legs: vec![leg(wallet("alice"), Side::Debit, eur(1))], ..charge("x", 1) }, Rejection::LegsTooFew)]
#[case::too_many_legs(Posting { legs: (0..LEGS_MAX + 1).map(|_| leg(wallet("alice"), Side::Debit, eur(1))).collect(), ..charge("x", 1) }, Rejection::LegsTooMany)]
#[case::purpose_too_long(Posting { memo: memo(&"p".repeat(PURPOSE_LENGTH_MAX + 1)), ..charge("x", 1) }, Rejection::PurposeTooLong)]
#[case::zero_amount(charge("x", 0), Rejection::AmountMustBePositive { leg: 0 })]
#[case::negative_amount(charge("x", -5), Rejection::AmountMustBePositive { leg: 0 })]
#[case::unknown_account(Posting::transfer(id("x"), wallet("carol"), revenue(), eur(1), memo("charge")), Rejection::AccountNotFound { account: wallet("carol") })]
#[case::currency_mismatch(Posting::transfer(id("x"), wallet("alice"), revenue(), Money::from_minor(1, Currency::USD), memo("charge")), Rejection::CurrencyMismatch { account: wallet("alice") })]
#[case::unbalanced(Posting { legs: vec![leg(wallet("alice"), Side::Debit, eur(2)), leg(revenue(), Side::Credit, eur(1))], ..charge("x", 1) }, Rejection::Unbalanced { currency: EUR })]
#[case::exists_with_different_accounts(
    Posting::transfer(id("top-up"), funding(), wallet("bob"), eur(10_000), memo("top_up")),
    Rejection::ExistsWithDifferentAccounts
)]
#[case::exists_with_different_amounts(
    Posting::transfer(id("top-up"), funding(), wallet("alice"), eur(1), memo("top_up")),
    Rejection::ExistsWithDifferentAmounts
)]
#[case::exists_with_different_memo(
    Posting::transfer(id("top-up"), funding(), wallet("alice"), eur(10_000), memo("gift")),
    Rejection::ExistsWithDifferentMemo
)]
#[case::reversal_of_unknown(Posting { reverses: Some(id("nothing")), ..charge("x", 1) }, Rejection::PostingNotFound { posting: id("nothing") })]
#[case::insufficient_funds(charge("x", 10_001), Rejection::InsufficientFunds { account: wallet("alice"), available: eur(10_000), required: eur(10_001) })]
#[case::overflow(Posting::transfer(id("x"), funding(), wallet("alice"), eur(i64::MAX), memo("top_up")), Rejection::Overflow { account: funding() })]
fn postings_are_refused_for_the_exact_reason(
    #[case] posting: Posting,
    #[case] expected: Rejection,
) {
    // Proves each rejection is reported, in precedence, and changes nothing.
    let mut ledger = ledger();
    let entries_before = ledger.entries().len();
    let accounts_before: Vec<Account> = ledger.book().accounts().cloned().collect();
    assert_eq!(ledger.post(posting, NOW), Err(expected));
    assert_eq!(ledger.entries().len(), entries_before);
    assert_eq!(
        ledger.book().accounts().cloned().collect::<Vec<_>>(),
        accounts_before
    );
}

#[test]
fn retried_posting_answers_exists_even_when_funds_have_moved() {
    // Proves identity is checked before funds, so a retry of a posting that
    // succeeded answers `exists` rather than `insufficient_funds`.
    let mut ledger = ledger();
    assert_eq!(
        ledger.post(charge("order-1", 10_000), NOW),
        Ok(Applied::Created)
    );
    assert_eq!(
        ledger.post(charge("order-1", 10_000), NOW),
        Ok(Applied::Exists)
    );
    assert_eq!(ledger.entries().len(), 2);
    assert_eq!(
        ledger.book().account(&wallet("alice")).map(|a| a.balance),
        Some(eur(0))
    );
}

#[test]
fn reversal_is_a_new_linked_entry_and_happens_once() {
    // Proves a reversal restores balances by appending, never by editing, and
    // cannot be repeated or reversed itself.
    let mut ledger = ledger();
    ledger.post(charge("order-1", 2_500), NOW).expect("charge");
    let original = ledger.entries()[1].clone();
    assert_eq!(
        ledger.reverse(id("order-1"), memo("refund"), NOW),
        Ok(Applied::Created)
    );
    assert_eq!(
        ledger.reverse(id("order-1"), memo("refund"), NOW),
        Ok(Applied::Exists)
    );
    assert_eq!(
        ledger.entries()[1],
        original,
        "the original entry is untouched"
    );
    let reversal = ledger.entries()[2].posting.clone();
    assert_eq!(reversal.reverses, Some(id("order-1")));
    assert_eq!(
        ledger.book().account(&wallet("alice")).map(|a| a.balance),
        Some(eur(10_000))
    );
    assert_eq!(
        ledger.reverse(reversal.id, memo("undo"), NOW),
        Err(Rejection::ReversalOfReversal)
    );
    let other_reversal = Posting {
        id: id("second"),
        ..reversal.clone()
    };
    assert_eq!(
        ledger.post(other_reversal, NOW),
        Err(Rejection::AlreadyReversed { by: reversal.id })
    );
}

#[test]
fn holds_reserve_then_post_or_void_never_both() {
    // Proves a hold reduces what is available, settles into exactly one
    // posting, and cannot be both posted and voided.
    let mut ledger = ledger();
    assert_eq!(
        ledger.place_hold(charge("hold-1", 6_000)),
        Ok(Applied::Created)
    );
    assert_eq!(
        ledger.place_hold(charge("hold-1", 6_000)),
        Ok(Applied::Exists)
    );
    let alice = ledger
        .book()
        .account(&wallet("alice"))
        .cloned()
        .expect("exists");
    assert_eq!(
        (alice.balance, alice.held, alice.available()),
        (eur(10_000), eur(6_000), eur(4_000))
    );
    assert!(matches!(
        ledger.place_hold(charge("hold-2", 4_001)),
        Err(Rejection::InsufficientFunds { .. })
    ));
    assert_eq!(ledger.post_hold(id("hold-1"), NOW), Ok(Applied::Created));
    assert_eq!(ledger.post_hold(id("hold-1"), NOW), Ok(Applied::Exists));
    assert_eq!(
        ledger.void_hold(id("hold-1")),
        Err(Rejection::HoldAlreadyPosted)
    );
    let alice = ledger
        .book()
        .account(&wallet("alice"))
        .cloned()
        .expect("exists");
    assert_eq!((alice.balance, alice.held), (eur(4_000), eur(0)));

    ledger.place_hold(charge("hold-3", 1_000)).expect("hold");
    assert_eq!(ledger.void_hold(id("hold-3")), Ok(Applied::Created));
    assert_eq!(ledger.void_hold(id("hold-3")), Ok(Applied::Exists));
    assert_eq!(
        ledger.post_hold(id("hold-3"), NOW),
        Err(Rejection::HoldAlreadyVoided)
    );
    assert_eq!(
        ledger.post_hold(id("missing"), NOW),
        Err(Rejection::HoldNotFound {
            hold: id("missing")
        })
    );
    assert_eq!(
        ledger.place_hold(charge("top-up", 1)),
        Err(Rejection::ExistsAsOtherKind)
    );
    assert_eq!(
        ledger
            .book()
            .account(&wallet("alice"))
            .map(Account::available),
        Some(eur(4_000))
    );
}

#[test]
fn the_hash_chain_detects_every_kind_of_tampering() {
    // Proves changing, removing or inserting an entry breaks verification at that entry.
    let mut ledger = ledger();
    for index in 0..4 {
        ledger
            .post(charge(&format!("order-{index}"), 100), NOW)
            .expect("charge");
    }
    let entries = ledger.entries().to_vec();
    assert_eq!(verify_chain(None, &entries), Ok(5));

    let mut changed = entries.clone();
    changed[2].posting.legs[0].amount = eur(1);
    changed[2].posting.legs[1].amount = eur(1);
    assert_eq!(
        verify_chain(None, &changed),
        Err(ChainError::ContentChanged { sequence: 3 })
    );

    let mut resealed = entries.clone();
    resealed[2] = Entry::seal(Some(&entries[1]), changed[2].posting.clone(), NOW);
    assert_eq!(
        verify_chain(None, &resealed),
        Err(ChainError::LinkBroken { sequence: 4 })
    );

    let mut removed = entries.clone();
    removed.remove(1);
    assert_eq!(
        verify_chain(None, &removed),
        Err(ChainError::SequenceGap {
            expected: 2,
            found: 3
        })
    );

    let mut unbalanced = entries.clone();
    unbalanced[4].posting.legs[0].amount = eur(7);
    unbalanced[4].hash = unbalanced[4].computed_hash();
    assert_eq!(
        verify_chain(None, &unbalanced),
        Err(ChainError::Unbalanced { sequence: 5 })
    );

    assert_eq!(
        verify_chain(Some(&entries[1]), &entries[2..]),
        Ok(3),
        "verification resumes from a checkpoint"
    );
}

#[test]
fn a_partial_book_reports_exactly_what_to_commit() {
    // Proves a book loaded with only the rows a decision needs applies the
    // same rules and reports the changed accounts and new postings.
    let full = ledger();
    let accounts: Vec<Account> = [wallet("alice"), revenue()]
        .iter()
        .map(|account| full.book().account(account).cloned().expect("exists"))
        .collect();
    let mut partial = Book::from_parts(accounts, [], []);
    assert_eq!(partial.post(charge("order-9", 700)), Ok(Applied::Created));
    let changes = partial.take_changes();
    assert_eq!(
        changes
            .accounts
            .iter()
            .map(|a| a.balance)
            .collect::<Vec<_>>(),
        vec![eur(9_300), eur(700)]
    );
    assert_eq!(changes.postings, vec![charge("order-9", 700)]);
    assert!(
        partial.take_changes().postings.is_empty(),
        "changes are drained once"
    );
}

/// One operation in a random ledger history.
#[derive(Debug, Clone)]
enum Operation {
    TopUp {
        customer: u8,
        amount_minor: i64,
    },
    Charge {
        customer: u8,
        amount_minor: i64,
        key: u8,
    },
    Reverse {
        key: u8,
    },
    Hold {
        customer: u8,
        amount_minor: i64,
        key: u8,
    },
    PostHold {
        key: u8,
    },
    VoidHold {
        key: u8,
    },
    Garbage {
        customer: u8,
        debit_minor: i64,
        credit_minor: i64,
    },
}

impl Arbitrary for Operation {
    fn arbitrary(g: &mut Gen) -> Self {
        let customer = u8::arbitrary(g) % 3;
        let key = u8::arbitrary(g) % 8;
        let amount_minor = i64::from(u16::arbitrary(g)) - 100;
        match u8::arbitrary(g) % 7 {
            0 => Operation::TopUp {
                customer,
                amount_minor,
            },
            1 => Operation::Charge {
                customer,
                amount_minor,
                key,
            },
            2 => Operation::Reverse { key },
            3 => Operation::Hold {
                customer,
                amount_minor,
                key,
            },
            4 => Operation::PostHold { key },
            5 => Operation::VoidHold { key },
            _ => Operation::Garbage {
                customer,
                debit_minor: amount_minor,
                credit_minor: i64::from(u8::arbitrary(g)),
            },
        }
    }
}

fn customer_wallet(customer: u8) -> AccountId {
    wallet(&format!("customer-{customer}"))
}

fn apply(ledger: &mut Ledger, operation: &Operation) {
    // Refusals are expected; the property is about what holds afterwards.
    let _refused_or_applied = match *operation {
        Operation::TopUp {
            customer,
            amount_minor,
        } => ledger.post(
            Posting::transfer(
                id(&format!("top-up-{customer}-{amount_minor}")),
                funding(),
                customer_wallet(customer),
                eur(amount_minor),
                memo("top_up"),
            ),
            NOW,
        ),
        Operation::Charge {
            customer,
            amount_minor,
            key,
        } => ledger.post(
            Posting::transfer(
                id(&format!("charge-{key}")),
                customer_wallet(customer),
                revenue(),
                eur(amount_minor),
                memo("charge"),
            ),
            NOW,
        ),
        Operation::Reverse { key } => {
            ledger.reverse(id(&format!("charge-{key}")), memo("refund"), NOW)
        }
        Operation::Hold {
            customer,
            amount_minor,
            key,
        } => ledger.place_hold(Posting::transfer(
            id(&format!("hold-{key}")),
            customer_wallet(customer),
            revenue(),
            eur(amount_minor),
            memo("hold"),
        )),
        Operation::PostHold { key } => ledger.post_hold(id(&format!("hold-{key}")), NOW),
        Operation::VoidHold { key } => ledger.void_hold(id(&format!("hold-{key}"))),
        Operation::Garbage {
            customer,
            debit_minor,
            credit_minor,
        } => ledger.post(
            Posting {
                id: id(&format!("garbage-{debit_minor}")),
                legs: vec![
                    leg(customer_wallet(customer), Side::Debit, eur(debit_minor)),
                    leg(revenue(), Side::Credit, eur(credit_minor)),
                ],
                reverses: None,
                memo: memo("garbage"),
            },
            NOW,
        ),
    };
}

fn postings_and_reversals_conserve_money(operations: Vec<Operation>) -> bool {
    let mut ledger = Ledger::new();
    ledger.open_account(funding());
    ledger.open_account(revenue());
    for customer in 0..3 {
        ledger.open_account(customer_wallet(customer));
    }
    operations.iter().all(|operation| {
        apply(&mut ledger, operation);
        let book = ledger.book();
        let conserved = book.total(EUR) == 0;
        let within_rules = book.accounts().all(Account::within_rule);
        let balanced = ledger
            .entries()
            .iter()
            .all(|entry| entry.posting.is_balanced());
        let chained = verify_chain(None, ledger.entries()).is_ok();
        conserved && within_rules && balanced && chained
    })
}

#[test]
fn property_postings_and_reversals_conserve_money_and_keep_wallets_non_negative() {
    // Proves that any sequence of postings, reversals and holds keeps every
    // entry balanced, the total of all balances zero, no wallet below zero,
    // and the hash chain intact.
    QuickCheck::new()
        .tests(PROPERTY_CASES)
        .quickcheck(postings_and_reversals_conserve_money as fn(Vec<Operation>) -> bool);
}

#[test]
fn effect_on_is_signed_by_side_and_zero_for_untouched_accounts() {
    // Proves a posting's effect on an account is +credit, -debit, 0 when absent.
    let posting = Posting::transfer(
        id("t"),
        wallet("alice"),
        revenue(),
        eur(250),
        memo("charge"),
    );
    assert_eq!(posting.effect_on(&wallet("alice")), Some(eur(-250)));
    assert_eq!(posting.effect_on(&revenue()), Some(eur(250)));
    assert_eq!(posting.effect_on(&wallet("bob")), Some(eur(0)));
}

#[test]
fn retried_posting_with_new_trace_context_is_the_same_posting() {
    // Regression (#14 point 10): a retry carrying a new correlation id and
    // traceparent was refused as `exists_with_different_memo`; it is the
    // same posting, answers `exists`, and the first entry keeps its memo and hash.
    let mut ledger = ledger();
    let traced = |correlation: &str, trace: &str| Posting {
        memo: Memo {
            purpose: "charge".to_owned(),
            order_id: None,
            correlation_id: Some(saldo_types::CorrelationId::new(correlation).expect("id")),
            traceparent: Some(trace.to_owned()),
        },
        ..charge("order-1", 2_500)
    };
    assert_eq!(
        ledger.post(traced("first-request", "trace-1"), NOW),
        Ok(Applied::Created)
    );
    let sealed = ledger.entries()[1].clone();
    assert_eq!(
        ledger.post(traced("second-request", "trace-2"), NOW),
        Ok(Applied::Exists)
    );
    assert_eq!(ledger.entries().len(), 2, "no second entry");
    assert_eq!(
        ledger.entries()[1],
        sealed,
        "the entry keeps its first memo"
    );
    assert_eq!(
        ledger.post(
            Posting {
                memo: memo("gift"),
                ..charge("order-1", 2_500)
            },
            NOW
        ),
        Err(Rejection::ExistsWithDifferentMemo),
        "another purpose is still another posting"
    );
}
