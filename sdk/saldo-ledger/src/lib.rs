//! A pure double-entry ledger.
//!
//! Contract:
//! - Money moves only in [`Posting`]s whose debits equal their credits in
//!   every currency; every [`Account`] is credit-normal, so the balances of a
//!   currency always sum to zero (money is conserved).
//! - Entries are immutable. There is no API that updates or deletes one; a
//!   mistake is undone by a reversal, a new posting linked to the original.
//! - Holds reserve a debit (pending), then become a posting (posted) or are
//!   released (voided), never both.
//! - Accounts with [`BalanceRule::AvailableNeverNegative`] (wallets, revenue)
//!   never have balance minus holds below zero.
//! - Posting ids are derived from their cause, so a retried posting answers
//!   [`Applied::Exists`] when identical and `exists_with_different_*` when
//!   not ([`Rejection`] lists the precedence).
//! - Sealed [`Entry`]s form a SHA-256 hash chain; [`verify_chain`] detects
//!   any entry changed, removed or inserted behind the ledger's back.
//!
//! [`Book`] applies the rules to whatever part of the ledger a decision has
//! loaded and reports the [`Changes`] to commit; [`Ledger`] is a whole ledger
//! in memory. No I/O, no clock: time is a parameter.
//!
//! # Example
//!
//! ```
//! use saldo_ledger::{AccountId, Applied, Ledger, Memo, Posting, Rejection, verify_chain};
//! use saldo_types::{Currency, CustomerId, Id128, Money, Timestamp};
//!
//! let now = Timestamp::from_unix_ms(0);
//! let eur = Currency::EUR;
//! let wallet = AccountId::wallet(CustomerId::new("ada").expect("valid id"), eur);
//! let funding = AccountId::Funding { currency: eur };
//! let mut ledger = Ledger::new();
//! ledger.open_account(wallet.clone());
//! ledger.open_account(funding.clone());
//!
//! let top_up = Posting::transfer(
//!     Id128::derive("posting", &[b"top_up", b"ada", b"1"]),
//!     funding.clone(),
//!     wallet.clone(),
//!     Money::parse("20", eur).expect("amount"),
//!     Memo::default(),
//! );
//! assert_eq!(ledger.post(top_up.clone(), now), Ok(Applied::Created));
//! // The same posting again is recognised, not applied twice.
//! assert_eq!(ledger.post(top_up, now), Ok(Applied::Exists));
//!
//! // A wallet never goes below zero: the rejection says why.
//! let too_much = Posting::transfer(
//!     Id128::derive("posting", &[b"withdraw", b"ada", b"1"]),
//!     wallet.clone(),
//!     funding,
//!     Money::parse("25", eur).expect("amount"),
//!     Memo::default(),
//! );
//! assert!(matches!(ledger.post(too_much, now), Err(Rejection::InsufficientFunds { .. })));
//! assert_eq!(verify_chain(None, ledger.entries()), Ok(1));
//! ```

mod account;
mod book;
mod chain;
mod ledger;
mod posting;

pub use account::{Account, AccountId, AccountIdError, BalanceRule};
pub use book::{Applied, Book, Changes, Hold, HoldState, Rejection};
pub use chain::{ChainError, ChainHash, Checkpoint, Entry, StoredEntry, StoredLeg, verify_chain};
pub use ledger::Ledger;
pub use posting::{LEGS_MAX, Leg, Memo, PURPOSE_LENGTH_MAX, Posting, PostingId, Side};

#[cfg(test)]
mod mutants_tests;
#[cfg(test)]
mod tests;
