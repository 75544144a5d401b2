use saldo_types::{CorrelationId, Currency, Id128, Money, OrderId};
use serde::{Deserialize, Serialize};

use crate::AccountId;

/// Identifies a posting. Derived from its cause (for example
/// `PostingId::derive("posting", &[b"charge", order_id])`), so a retried
/// posting carries the same id and the ledger answers `Exists`.
pub type PostingId = Id128;

/// The most legs one posting may have.
pub const LEGS_MAX: usize = 16;

/// The longest purpose text, in bytes.
pub const PURPOSE_LENGTH_MAX: usize = 64;

/// Which side of an account a leg touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Lowers the (credit-normal) balance.
    Debit,
    /// Raises the balance.
    Credit,
}

impl Side {
    /// The stable name (`debit`, `credit`), as stores keep it.
    pub fn name(self) -> &'static str {
        match self {
            Side::Debit => "debit",
            Side::Credit => "credit",
        }
    }

    /// The other side; a reversal flips every leg.
    pub fn flipped(self) -> Side {
        match self {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        }
    }
}

/// One account movement inside a posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// The account moved.
    pub account: AccountId,
    /// Debit or credit.
    pub side: Side,
    /// How much; always positive.
    pub amount: Money,
}

/// Why a posting exists, carried into the entry for audit and tracing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memo {
    /// A short machine-readable purpose (`top_up`, `charge`, `refund`).
    pub purpose: String,
    /// The order it belongs to, if any.
    pub order_id: Option<OrderId>,
    /// The request that caused it.
    pub correlation_id: Option<CorrelationId>,
    /// The W3C trace context of that request.
    pub traceparent: Option<String>,
}

impl Memo {
    /// True when both memos name the same cause: the same purpose and order.
    /// The correlation id and traceparent say which request carried the
    /// posting, not what it is, so a retry sent with new ones (a client
    /// retrying after its idempotency record expired) is the same posting.
    /// Both are still part of the sealed entry's hash, as first recorded.
    pub fn same_cause(&self, other: &Memo) -> bool {
        self.purpose == other.purpose && self.order_id == other.order_id
    }
}

/// A balanced set of legs, recorded as one immutable entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// The deterministic id.
    pub id: PostingId,
    /// The movements; per currency, debits equal credits.
    pub legs: Vec<Leg>,
    /// For a reversal, the posting it undoes.
    pub reverses: Option<PostingId>,
    /// Why.
    pub memo: Memo,
}

impl Posting {
    /// What this posting does to `account`'s balance: credits raise it,
    /// debits lower it; zero when no leg touches the account. `None` only
    /// if the sum overflows, which a posting the ledger accepted cannot do.
    pub fn effect_on(&self, account: &AccountId) -> Option<Money> {
        let mut effect = Money::zero(account.currency());
        for leg in self.legs.iter().filter(|leg| &leg.account == account) {
            let signed = match leg.side {
                Side::Credit => leg.amount,
                Side::Debit => leg.amount.checked_neg().ok()?,
            };
            effect = effect.checked_add(signed).ok()?;
        }
        Some(effect)
    }

    /// A two-leg transfer of `amount` from `debit_account` to `credit_account`.
    pub fn transfer(
        id: PostingId,
        debit_account: AccountId,
        credit_account: AccountId,
        amount: Money,
        memo: Memo,
    ) -> Posting {
        Posting {
            id,
            legs: vec![
                Leg {
                    account: debit_account,
                    side: Side::Debit,
                    amount,
                },
                Leg {
                    account: credit_account,
                    side: Side::Credit,
                    amount,
                },
            ],
            reverses: None,
            memo,
        }
    }

    /// The id a reversal of `original` always has.
    pub fn reversal_id(original: PostingId) -> PostingId {
        Id128::derive("reversal", &[original.as_bytes()])
    }

    /// The posting that undoes `self`: every leg flipped, linked to `self`.
    pub fn reversal(&self, memo: Memo) -> Posting {
        Posting {
            id: Posting::reversal_id(self.id),
            legs: self
                .legs
                .iter()
                .map(|leg| Leg {
                    account: leg.account.clone(),
                    side: leg.side.flipped(),
                    amount: leg.amount,
                })
                .collect(),
            reverses: Some(self.id),
            memo,
        }
    }

    /// Appends the posting's canonical binary form: fixed field order,
    /// length-prefixed strings, big-endian numbers. The hash chain is
    /// computed over it, so it must never change for existing postings.
    pub fn canonical_bytes(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, value: &str) {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        fn optional(out: &mut Vec<u8>, value: Option<&str>) {
            match value {
                Some(value) => {
                    out.push(1);
                    text(out, value);
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(self.id.as_bytes());
        match self.reverses {
            Some(original) => {
                out.push(1);
                out.extend_from_slice(original.as_bytes());
            }
            None => out.push(0),
        }
        text(out, &self.memo.purpose);
        optional(out, self.memo.order_id.as_ref().map(OrderId::as_str));
        optional(
            out,
            self.memo.correlation_id.as_ref().map(CorrelationId::as_str),
        );
        optional(out, self.memo.traceparent.as_deref());
        out.extend_from_slice(&(self.legs.len() as u32).to_be_bytes());
        for leg in &self.legs {
            text(out, &leg.account.to_string());
            out.push(match leg.side {
                Side::Debit => 0,
                Side::Credit => 1,
            });
            out.extend_from_slice(&leg.amount.amount_minor().to_be_bytes());
            out.extend_from_slice(leg.amount.currency().code().as_bytes());
        }
    }

    /// True when, in every currency, debits equal credits.
    pub fn is_balanced(&self) -> bool {
        self.unbalanced_currency().is_none()
    }

    /// The first currency (in leg order) whose debits and credits differ,
    /// summed in 128 bits so no total can overflow.
    pub fn unbalanced_currency(&self) -> Option<Currency> {
        let mut totals: Vec<(Currency, i128)> = Vec::new();
        for leg in &self.legs {
            let signed = match leg.side {
                Side::Debit => -i128::from(leg.amount.amount_minor()),
                Side::Credit => i128::from(leg.amount.amount_minor()),
            };
            match totals
                .iter_mut()
                .find(|(currency, _)| *currency == leg.amount.currency())
            {
                Some((_, total)) => *total += signed,
                None => totals.push((leg.amount.currency(), signed)),
            }
        }
        totals
            .into_iter()
            .find(|(_, total)| *total != 0)
            .map(|(currency, _)| currency)
    }
}
