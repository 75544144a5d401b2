//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): what the hash covers, totals, bounds, accessors, and the text
//! forms stores and operators read back. See `docs/testing.md`.

use rstest::rstest;
use saldo_types::{CorrelationId, Currency, CustomerId, Money, OrderId};

use crate::*;

// The fixtures of the ledger's rule tables.
use crate::tests::{EUR, NOW, eur, funding, id, leg, memo, revenue, wallet};

/// A charge of 25.00 EUR from alice's wallet with every memo field set.
fn charge() -> Posting {
    Posting::transfer(
        id("order-1"),
        wallet("alice"),
        revenue(),
        eur(2_500),
        Memo {
            purpose: "charge".to_owned(),
            order_id: Some(OrderId::new("order-1").expect("valid")),
            correlation_id: Some(CorrelationId::new("request-1").expect("valid")),
            traceparent: Some("00-trace-span-01".to_owned()),
        },
    )
}

/// A book where alice holds 100.00 EUR, funded from outside.
fn funded_book() -> Book {
    let mut book = Book::new();
    for account in [wallet("alice"), revenue(), funding()] {
        book.open_account(account);
    }
    book.post(Posting::transfer(
        id("top-up"),
        funding(),
        wallet("alice"),
        eur(10_000),
        memo("top_up"),
    ))
    .expect("top-up succeeds");
    book
}

fn canonical(posting: &Posting) -> Vec<u8> {
    let mut bytes = Vec::new();
    posting.canonical_bytes(&mut bytes);
    bytes
}

#[test]
fn canonical_bytes_of_a_posting_are_pinned_byte_for_byte() {
    // Proves the encoding the hash chain is computed over is exactly the
    // documented one (fixed order, u32 length prefixes, big-endian amounts),
    // so existing entries keep verifying.
    let posting = Posting {
        reverses: Some(id("original")),
        ..charge()
    };
    let mut expected = Vec::new();
    expected.extend_from_slice(id("order-1").as_bytes());
    expected.push(1);
    expected.extend_from_slice(id("original").as_bytes());
    expected.extend_from_slice(b"\0\0\0\x06charge");
    expected.extend_from_slice(b"\x01\0\0\0\x07order-1");
    expected.extend_from_slice(b"\x01\0\0\0\x09request-1");
    expected.extend_from_slice(b"\x01\0\0\0\x1000-trace-span-01");
    expected.extend_from_slice(b"\0\0\0\x02");
    expected.extend_from_slice(b"\0\0\0\x10wallet:alice:EUR\x00");
    expected.extend_from_slice(&2_500i64.to_be_bytes());
    expected.extend_from_slice(b"EUR");
    expected.extend_from_slice(b"\0\0\0\x14merchant_revenue:EUR\x01");
    expected.extend_from_slice(&2_500i64.to_be_bytes());
    expected.extend_from_slice(b"EUR");
    assert_eq!(canonical(&posting), expected);

    let plain = Posting::transfer(id("p"), funding(), wallet("bob"), eur(1), Memo::default());
    let mut expected = Vec::new();
    expected.extend_from_slice(id("p").as_bytes());
    expected.extend_from_slice(b"\0\0\0\0\0\0\0\0\0\0\0\x02");
    expected.extend_from_slice(b"\0\0\0\x0bfunding:EUR\x00");
    expected.extend_from_slice(&1i64.to_be_bytes());
    expected.extend_from_slice(b"EUR\0\0\0\x0ewallet:bob:EUR\x01");
    expected.extend_from_slice(&1i64.to_be_bytes());
    expected.extend_from_slice(b"EUR");
    assert_eq!(
        canonical(&plain),
        expected,
        "absent memo fields are one zero byte each"
    );
}

#[rstest]
#[case::id(|p: &mut Posting| p.id = id("other"))]
#[case::reverses(|p: &mut Posting| p.reverses = Some(id("original")))]
#[case::purpose(|p: &mut Posting| p.memo.purpose = "refund".to_owned())]
#[case::purpose_emptied(|p: &mut Posting| p.memo.purpose.clear())]
#[case::order_id(|p: &mut Posting| p.memo.order_id = Some(OrderId::new("order-2").expect("valid")))]
#[case::order_id_removed(|p: &mut Posting| p.memo.order_id = None)]
#[case::correlation_id(|p: &mut Posting| p.memo.correlation_id = Some(CorrelationId::new("request-2").expect("valid")))]
#[case::traceparent(|p: &mut Posting| p.memo.traceparent = Some("00-other-span-01".to_owned()))]
#[case::traceparent_removed(|p: &mut Posting| p.memo.traceparent = None)]
#[case::leg_account(|p: &mut Posting| p.legs[0].account = wallet("bob"))]
#[case::leg_side(|p: &mut Posting| { p.legs[0].side = Side::Credit; p.legs[1].side = Side::Debit; })]
#[case::leg_amount(|p: &mut Posting| { p.legs[0].amount = eur(2_501); p.legs[1].amount = eur(2_501); })]
#[case::leg_removed(|p: &mut Posting| { p.legs.pop(); })]
fn the_entry_hash_covers_every_field_of_the_posting(#[case] change: fn(&mut Posting)) {
    // Proves no field of a posting, text fields included, can be changed
    // behind the ledger's back without the sealed entry failing verification.
    let entry = Entry::seal(None, charge(), NOW);
    let mut tampered = entry.clone();
    change(&mut tampered.posting);
    assert_ne!(canonical(&tampered.posting), canonical(&entry.posting));
    assert_ne!(tampered.computed_hash(), entry.hash);
}

#[test]
fn a_memo_field_cannot_shift_into_its_neighbour() {
    // Proves the length prefixes keep text fields apart: moving characters
    // from the purpose into the trace context changes the bytes.
    let first = Posting {
        memo: Memo {
            purpose: "ab".to_owned(),
            traceparent: Some("c".to_owned()),
            ..Memo::default()
        },
        ..charge()
    };
    let second = Posting {
        memo: Memo {
            purpose: "a".to_owned(),
            traceparent: Some("bc".to_owned()),
            ..Memo::default()
        },
        ..charge()
    };
    assert_ne!(canonical(&first), canonical(&second));
}

#[test]
fn total_sums_the_balances_of_one_currency_only() {
    // Proves `Book::total` is the sum of the balances in the asked currency
    // (not zero by construction), ignoring other currencies.
    let usd_wallet = AccountId::wallet(CustomerId::new("alice").expect("valid"), Currency::USD);
    let book = Book::from_parts(
        [
            Account {
                balance: eur(10_000),
                ..Account::open(wallet("alice"))
            },
            Account {
                balance: eur(700),
                ..Account::open(revenue())
            },
            Account {
                balance: Money::from_minor(5, Currency::USD),
                ..Account::open(usd_wallet)
            },
        ],
        [],
        [],
    );
    assert_eq!(book.total(EUR), 10_700);
    assert_eq!(book.total(Currency::USD), 5);
    assert_eq!(book.total(Currency::JPY), 0);
    assert_eq!(
        funded_book().total(EUR),
        0,
        "a whole ledger conserves money"
    );
}

#[test]
fn shape_bounds_accept_exactly_their_limit() {
    // Proves a posting of exactly LEGS_MAX legs and a purpose of exactly
    // PURPOSE_LENGTH_MAX bytes are accepted: the bounds are inclusive.
    let mut book = funded_book();
    let half = LEGS_MAX / 2;
    let legs = (0..half)
        .map(|_| leg(wallet("alice"), Side::Debit, eur(1)))
        .chain((0..half).map(|_| leg(revenue(), Side::Credit, eur(1))))
        .collect::<Vec<_>>();
    assert_eq!(legs.len(), LEGS_MAX);
    let widest = Posting {
        id: id("widest"),
        legs,
        reverses: None,
        memo: memo(&"p".repeat(PURPOSE_LENGTH_MAX)),
    };
    assert_eq!(book.post(widest), Ok(Applied::Created));
    assert_eq!(
        book.account(&wallet("alice"))
            .map(|account| account.balance),
        Some(eur(10_000 - half as i64))
    );
}

#[rstest]
#[case::wallet(wallet("alice"), false)]
#[case::merchant_revenue(revenue(), true)]
#[case::funding(funding(), true)]
fn only_shared_accounts_commute(#[case] account: AccountId, #[case] commutes: bool) {
    // Proves wallets keep their version checks (their debits depend on the
    // balance) while revenue and funding may be applied as increments.
    assert_eq!(account.commutes(), commutes);
}

#[test]
fn book_and_ledger_lookups_return_what_was_recorded() {
    // Proves the read accessors see the accounts, postings, holds and
    // reversal links the book recorded, and nothing it did not.
    let mut ledger = Ledger::new();
    for account in [wallet("alice"), revenue(), funding()] {
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
        .expect("top-up");
    ledger.post(charge(), NOW).expect("charge");
    ledger
        .reverse(id("order-1"), memo("refund"), NOW)
        .expect("refund");
    let hold = Posting::transfer(
        id("hold-1"),
        wallet("alice"),
        revenue(),
        eur(300),
        memo("hold"),
    );
    ledger.place_hold(hold.clone()).expect("hold");

    let book = ledger.book();
    assert_eq!(
        book.accounts()
            .map(|account| account.id.clone())
            .collect::<Vec<_>>(),
        vec![wallet("alice"), revenue(), funding()],
        "every account, ordered by id"
    );
    assert_eq!(book.posting(&id("order-1")), Some(&charge()));
    assert_eq!(book.posting(&id("hold-1")), None, "a hold is not a posting");
    assert_eq!(
        book.reversed_by(&id("order-1")),
        Some(Posting::reversal_id(id("order-1")))
    );
    assert_eq!(book.reversed_by(&id("top-up")), None);
    let expected_hold = Hold {
        posting: hold,
        state: HoldState::Pending,
    };
    assert_eq!(book.hold(&id("hold-1")), Some(&expected_hold));
    assert_eq!(ledger.hold(&id("hold-1")), Some(&expected_hold));
    assert_eq!(ledger.hold(&id("order-1")), None);
}

#[test]
fn chain_hashes_round_trip_through_hex_and_serde() {
    // Proves a stored hash reads back as the same 32 bytes, in every byte
    // position, through hex, `Debug` and serde.
    let hash = ChainHash(std::array::from_fn(|index| (index as u8) * 8 + 1));
    let hex = "0109111921293139414951596169717981899199a1a9b1b9c1c9d1d9e1e9f1f9";
    assert_eq!(hash.to_hex(), hex);
    assert_eq!(ChainHash::from_hex(hex), Some(hash));
    assert_eq!(format!("{hash:?}"), hex);
    assert_eq!(deserialize_hash(hex), Ok(hash));
    assert!(deserialize_hash("0109").is_err());
}

/// Reads a hash through its serde `Deserialize`, as a store's JSON would.
fn deserialize_hash(text: &str) -> Result<ChainHash, serde::de::value::Error> {
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    ChainHash::deserialize(text.into_deserializer())
}

#[rstest]
#[case::too_short(&"ab".repeat(31))]
#[case::odd_length(&"a".repeat(63))]
#[case::too_long(&"a".repeat(65))]
#[case::upper_case(&"AB".repeat(32))]
#[case::not_hex(&"g".repeat(64))]
#[case::sign(&format!("+{}", "a".repeat(63)))]
fn chain_hashes_refuse_anything_but_64_lower_case_hex_digits(#[case] text: &str) {
    // Proves the one text form is enforced: no other length, case or digit.
    assert_eq!(ChainHash::from_hex(text), None, "{text}");
}

#[test]
fn checkpoints_round_trip_and_start_at_sequence_one() {
    // Proves an operator's `SEQUENCE:HASH` reads back as written, and a
    // sequence of 0 (before the first entry) is refused.
    let hash = ChainHash([0xab; 32]);
    let checkpoint = Checkpoint { sequence: 7, hash };
    let text = format!("7:{}", "ab".repeat(32));
    assert_eq!(checkpoint.to_string(), text);
    assert_eq!(text.parse::<Checkpoint>(), Ok(checkpoint));
    assert_eq!(
        format!("1:{}", "ab".repeat(32)).parse::<Checkpoint>(),
        Ok(Checkpoint { sequence: 1, hash })
    );
    assert!(
        format!("0:{}", "ab".repeat(32))
            .parse::<Checkpoint>()
            .is_err()
    );
}

#[rstest]
#[case::debit(Side::Debit, "debit")]
#[case::credit(Side::Credit, "credit")]
fn sides_have_stable_names(#[case] side: Side, #[case] name: &str) {
    // Proves the names stores keep in the side column.
    assert_eq!(side.name(), name);
}

#[test]
fn stored_rows_that_agree_with_the_hashed_posting_show_no_difference() {
    // Proves the rows a store writes for a posting reconcile with it.
    let posting = charge();
    let stored = StoredEntry::of(&posting);
    assert_eq!(stored.legs[0].side, "debit");
    assert_eq!(stored.legs[1].side, "credit");
    assert_eq!(stored.difference(&posting), None);
}

#[rstest]
#[case::purpose(|s: &mut StoredEntry| s.purpose = "gift".to_owned(), "column purpose")]
#[case::order_id(|s: &mut StoredEntry| s.order_id = None, "column order_id")]
#[case::traceparent(|s: &mut StoredEntry| s.traceparent = Some("x".to_owned()), "column traceparent")]
#[case::leg_missing(|s: &mut StoredEntry| { s.legs.pop(); }, "1 legs stored, the hashed posting has 2")]
#[case::leg_amount(|s: &mut StoredEntry| s.legs[1].amount_minor = 1, "leg StoredLeg { leg: 1")]
fn stored_rows_that_disagree_name_the_first_difference(
    #[case] change: fn(&mut StoredEntry),
    #[case] named: &str,
) {
    // Proves reconciliation names the column or leg a store changed even
    // though the hashed posting itself still verifies.
    let posting = charge();
    let mut stored = StoredEntry::of(&posting);
    change(&mut stored);
    let difference = stored.difference(&posting).expect("a difference");
    assert!(difference.contains(named), "{difference}");
}
