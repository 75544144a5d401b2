use std::fmt;
use std::str::FromStr;

use saldo_types::{Currency, CustomerId, Money};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identifies a ledger account. There is one account of each kind per
/// currency (and per customer, for wallets).
///
/// The textual form (`wallet:alice:EUR`, `merchant_revenue:EUR`,
/// `funding:EUR`) is the database key and the serde form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountId {
    /// A customer's prepaid wallet, which pays for orders.
    Wallet {
        /// The owner.
        customer: CustomerId,
        /// The wallet's currency.
        currency: Currency,
    },
    /// Where captured payments go.
    MerchantRevenue {
        /// The account's currency.
        currency: Currency,
    },
    /// The outside world: top-ups are debited here. Its balance goes below
    /// zero by exactly the money that entered the platform.
    Funding {
        /// The account's currency.
        currency: Currency,
    },
}

impl AccountId {
    /// The wallet of `customer` in `currency`.
    pub fn wallet(customer: CustomerId, currency: Currency) -> AccountId {
        AccountId::Wallet { customer, currency }
    }

    /// The account's currency.
    pub fn currency(&self) -> Currency {
        match self {
            AccountId::Wallet { currency, .. }
            | AccountId::MerchantRevenue { currency }
            | AccountId::Funding { currency } => *currency,
        }
    }

    /// The balance rule that holds for accounts of this kind.
    pub fn balance_rule(&self) -> BalanceRule {
        match self {
            AccountId::Wallet { .. } | AccountId::MerchantRevenue { .. } => {
                BalanceRule::AvailableNeverNegative
            }
            AccountId::Funding { .. } => BalanceRule::Unrestricted,
        }
    }

    /// True for the accounts that every order or top-up of a currency moves
    /// (merchant revenue, funding): their changes commute, so a store may
    /// apply them as increments without a version check instead of
    /// serialising every payment on one row.
    ///
    /// That is safe because no change to them can break their rule on a
    /// stale read: funding has no floor, revenue is only credited by charges
    /// and debited by the refund of a charge that credited it first (the
    /// payment row allows one refund per charge), so its balance never falls
    /// below the unrefunded charges. A wallet's debits depend on its current
    /// balance, so wallets keep their version checks.
    pub fn commutes(&self) -> bool {
        match self {
            AccountId::Wallet { .. } => false,
            AccountId::MerchantRevenue { .. } | AccountId::Funding { .. } => true,
        }
    }
}

/// Why an account id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an account id (wallet:CUSTOMER:CCY, merchant_revenue:CCY or funding:CCY)")]
pub struct AccountIdError(pub String);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::Wallet { customer, currency } => write!(f, "wallet:{customer}:{currency}"),
            AccountId::MerchantRevenue { currency } => write!(f, "merchant_revenue:{currency}"),
            AccountId::Funding { currency } => write!(f, "funding:{currency}"),
        }
    }
}

impl FromStr for AccountId {
    type Err = AccountIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || AccountIdError(text.to_owned());
        // The currency is always the last part; customer ids may contain ':'.
        let (head, code) = text.rsplit_once(':').ok_or_else(error)?;
        let currency = Currency::from_code(code).map_err(|_| error())?;
        match head.split_once(':') {
            Some(("wallet", customer)) => Ok(AccountId::Wallet {
                customer: CustomerId::new(customer).map_err(|_| error())?,
                currency,
            }),
            None if head == "merchant_revenue" => Ok(AccountId::MerchantRevenue { currency }),
            None if head == "funding" => Ok(AccountId::Funding { currency }),
            _ => Err(error()),
        }
    }
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an account's balance may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceRule {
    /// Balance minus holds never drops below zero (wallets, revenue).
    AvailableNeverNegative,
    /// No limit (the funding source).
    Unrestricted,
}

/// An account's running totals.
///
/// Every account is credit-normal: a credit raises `balance`, a debit lowers
/// it. Because every posting balances, the balances of all accounts in a
/// currency always sum to zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account.
    pub id: AccountId,
    /// Posted credits minus posted debits.
    pub balance: Money,
    /// Debits reserved by pending holds.
    pub held: Money,
}

impl Account {
    /// A new account with zero balance.
    pub fn open(id: AccountId) -> Account {
        let currency = id.currency();
        Account {
            id,
            balance: Money::zero(currency),
            held: Money::zero(currency),
        }
    }

    /// What can still be debited: balance minus holds.
    pub fn available(&self) -> Money {
        // Both are bounded by the checks at posting time, so this cannot overflow.
        self.balance
            .checked_sub(self.held)
            .expect("balance and holds stay within range")
    }

    /// True when the account satisfies its balance rule.
    pub fn within_rule(&self) -> bool {
        match self.id.balance_rule() {
            BalanceRule::AvailableNeverNegative => {
                !self.available().is_negative() && !self.held.is_negative()
            }
            BalanceRule::Unrestricted => !self.held.is_negative(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("wallet:alice:EUR")]
    #[case("wallet:tenant:7:EUR")]
    #[case("merchant_revenue:JPY")]
    #[case("funding:USD")]
    fn account_ids_round_trip(#[case] text: &str) {
        // Proves the textual key form parses back to the same id.
        let id: AccountId = text.parse().expect("valid id");
        assert_eq!(id.to_string(), text);
    }

    #[rstest]
    #[case("wallet:EUR")]
    #[case("wallet:alice:XXX")]
    #[case("savings:EUR")]
    #[case("funding:")]
    fn malformed_account_ids_are_refused(#[case] text: &str) {
        // Proves unknown kinds and currencies are refused.
        assert_eq!(
            text.parse::<AccountId>(),
            Err(AccountIdError(text.to_owned()))
        );
    }
}
