use std::collections::{BTreeMap, BTreeSet};

use saldo_types::{Currency, Id128, Money};
use serde::{Deserialize, Serialize};

use crate::posting::{LEGS_MAX, PURPOSE_LENGTH_MAX};
use crate::{Account, AccountId, Memo, Posting, PostingId, Side};

/// A pending hold: money reserved on its debit accounts, not yet moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The held movement; its id is the hold's id.
    pub posting: Posting,
    /// Where the hold stands.
    pub state: HoldState,
}

/// The life of a hold: pending, then posted or voided, never both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HoldState {
    /// Money is reserved.
    Pending,
    /// The hold became the posting with this id.
    Posted {
        /// The id of the posting that settled it.
        posting_id: PostingId,
    },
    /// The reservation was released.
    Voided,
}

/// What a successful ledger operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The operation took effect now.
    Created,
    /// It had already taken effect with identical content; nothing changed.
    Exists,
}

/// Why a ledger operation was refused. Checks run in the order listed, so
/// the first applicable reason is the one reported: shape, then accounts,
/// then balance, then identity (`exists_with_different_*`), then links, then
/// funds. Identity comes before funds so that a retry of a posting that
/// already succeeded answers `Exists` even if the balance has moved since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    /// Fewer than two legs.
    #[error("a posting needs at least two legs")]
    LegsTooFew,
    /// More than [`LEGS_MAX`] legs.
    #[error("a posting has at most {LEGS_MAX} legs")]
    LegsTooMany,
    /// The purpose is longer than [`PURPOSE_LENGTH_MAX`] bytes.
    #[error("a purpose has at most {PURPOSE_LENGTH_MAX} bytes")]
    PurposeTooLong,
    /// A leg's amount is zero or negative.
    #[error("leg {leg} must move a positive amount")]
    AmountMustBePositive {
        /// The leg's index.
        leg: usize,
    },
    /// A leg names an account the ledger does not have.
    #[error("account {account} does not exist")]
    AccountNotFound {
        /// The missing account.
        account: AccountId,
    },
    /// A leg's currency differs from its account's.
    #[error("account {account} does not hold that currency")]
    CurrencyMismatch {
        /// The account.
        account: AccountId,
    },
    /// Debits and credits differ in some currency.
    #[error("debits and credits differ in {currency}")]
    Unbalanced {
        /// The currency that does not balance.
        currency: Currency,
    },
    /// The id exists with other accounts or sides.
    #[error("posting exists with different accounts")]
    ExistsWithDifferentAccounts,
    /// The id exists with other amounts.
    #[error("posting exists with different amounts")]
    ExistsWithDifferentAmounts,
    /// The id exists with a different reversal link.
    #[error("posting exists with a different reversal link")]
    ExistsWithDifferentReversal,
    /// The id exists with a memo of a different cause (purpose or order;
    /// see [`Memo::same_cause`](crate::Memo::same_cause)).
    #[error("posting exists with a different memo")]
    ExistsWithDifferentMemo,
    /// The id is already used by a hold (or a hold id by a posting).
    #[error("the id is already used by a hold or a posting of the other kind")]
    ExistsAsOtherKind,
    /// A reversal names a posting the ledger does not have.
    #[error("posting {posting} does not exist")]
    PostingNotFound {
        /// The missing posting.
        posting: PostingId,
    },
    /// A reversal of a reversal was asked for; post a new posting instead.
    #[error("a reversal cannot be reversed")]
    ReversalOfReversal,
    /// The posting was already reversed by another posting.
    #[error("posting was already reversed by {by}")]
    AlreadyReversed {
        /// The reversing posting.
        by: PostingId,
    },
    /// A hold operation names a hold the ledger does not have.
    #[error("hold {hold} does not exist")]
    HoldNotFound {
        /// The missing hold.
        hold: PostingId,
    },
    /// The hold was voided, so it cannot be posted.
    #[error("hold was already voided")]
    HoldAlreadyVoided,
    /// The hold was posted, so it cannot be voided.
    #[error("hold was already posted")]
    HoldAlreadyPosted,
    /// The debit would take the account below its rule.
    #[error("account {account} has {available} available, {required} required")]
    InsufficientFunds {
        /// The account.
        account: AccountId,
        /// What it has available.
        available: Money,
        /// What the posting needs from it.
        required: Money,
    },
    /// A balance would leave the 64-bit range.
    #[error("account {account} would overflow")]
    Overflow {
        /// The account.
        account: AccountId,
    },
}

/// What a [`Book`] changed since it was loaded: exactly what must be committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The new state of every account that moved.
    pub accounts: Vec<Account>,
    /// New postings, in the order they were made; the store seals them into entries.
    pub postings: Vec<Posting>,
    /// Holds created or settled.
    pub holds: Vec<Hold>,
}

/// The ledger's rules over a set of accounts, postings and holds.
///
/// A `Book` may hold the whole ledger or only the part one decision needs
/// (the customer's wallet, the revenue account, the postings it refers to);
/// the rules are the same, and [`Book::take_changes`] returns what to commit.
/// Nothing here updates or deletes a posting: the only way to undo one is a
/// reversal, which is a new posting linked to the original.
#[derive(Debug, Clone, Default)]
pub struct Book {
    accounts: BTreeMap<AccountId, Account>,
    postings: BTreeMap<PostingId, Posting>,
    reversed_by: BTreeMap<PostingId, PostingId>,
    holds: BTreeMap<PostingId, Hold>,
    accounts_changed: BTreeSet<AccountId>,
    postings_new: Vec<PostingId>,
    holds_changed: BTreeSet<PostingId>,
}

impl Book {
    /// An empty book.
    pub fn new() -> Book {
        Book::default()
    }

    /// A book over loaded rows. Every loaded posting is checked to balance
    /// and every account to satisfy its rule: a violation means the storage
    /// was tampered with, and stops the decision.
    pub fn from_parts(
        accounts: impl IntoIterator<Item = Account>,
        postings: impl IntoIterator<Item = Posting>,
        holds: impl IntoIterator<Item = Hold>,
    ) -> Book {
        let mut book = Book::new();
        for account in accounts {
            assert!(
                account.within_rule(),
                "loaded account {} breaks its balance rule",
                account.id
            );
            book.accounts.insert(account.id.clone(), account);
        }
        for posting in postings {
            book.remember(posting);
        }
        for hold in holds {
            assert!(
                hold.posting.is_balanced(),
                "loaded hold {} does not balance",
                hold.posting.id
            );
            book.holds.insert(hold.posting.id, hold);
        }
        book
    }

    fn remember(&mut self, posting: Posting) {
        assert!(
            posting.is_balanced(),
            "loaded posting {} does not balance",
            posting.id
        );
        if let Some(original) = posting.reverses {
            self.reversed_by.insert(original, posting.id);
        }
        self.postings.insert(posting.id, posting);
    }

    /// Opens an account with a zero balance; opening it again changes nothing.
    pub fn open_account(&mut self, id: AccountId) -> Applied {
        if self.accounts.contains_key(&id) {
            return Applied::Exists;
        }
        self.accounts_changed.insert(id.clone());
        self.accounts.insert(id.clone(), Account::open(id));
        Applied::Created
    }

    /// The account, if the book has it.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Every account, ordered by id.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The posting, if the book has it.
    pub fn posting(&self, id: &PostingId) -> Option<&Posting> {
        self.postings.get(id)
    }

    /// The hold, if the book has it.
    pub fn hold(&self, id: &PostingId) -> Option<&Hold> {
        self.holds.get(id)
    }

    /// The posting that reversed `id`, if any.
    pub fn reversed_by(&self, id: &PostingId) -> Option<PostingId> {
        self.reversed_by.get(id).copied()
    }

    /// Records a posting. A posting whose id exists with the same content
    /// answers [`Applied::Exists`] and changes nothing.
    pub fn post(&mut self, posting: Posting) -> Result<Applied, Rejection> {
        self.check_shape(&posting)?;
        if self.holds.contains_key(&posting.id) {
            return Err(Rejection::ExistsAsOtherKind);
        }
        if let Some(existing) = self.postings.get(&posting.id) {
            return compare_existing(existing, &posting);
        }
        if let Some(original_id) = posting.reverses {
            let original = self
                .postings
                .get(&original_id)
                .ok_or(Rejection::PostingNotFound {
                    posting: original_id,
                })?;
            if original.reverses.is_some() {
                return Err(Rejection::ReversalOfReversal);
            }
            if let Some(by) = self.reversed_by.get(&original_id) {
                return Err(Rejection::AlreadyReversed { by: *by });
            }
        }
        let moved = self.apply_legs(&posting.legs, LegEffect::Post)?;
        self.commit_accounts(moved);
        self.postings_new.push(posting.id);
        self.remember(posting);
        Ok(Applied::Created)
    }

    /// Reverses a posting with a new, linked posting whose id is
    /// [`Posting::reversal_id`]; reversing again answers `Exists`.
    pub fn reverse(&mut self, original: PostingId, memo: Memo) -> Result<Applied, Rejection> {
        let reversal = self
            .postings
            .get(&original)
            .ok_or(Rejection::PostingNotFound { posting: original })?
            .reversal(memo);
        self.post(reversal)
    }

    /// Reserves the posting's debits without moving money.
    pub fn place_hold(&mut self, posting: Posting) -> Result<Applied, Rejection> {
        self.check_shape(&posting)?;
        if posting.reverses.is_some() {
            return Err(Rejection::ExistsWithDifferentReversal);
        }
        if self.postings.contains_key(&posting.id) {
            return Err(Rejection::ExistsAsOtherKind);
        }
        if let Some(existing) = self.holds.get(&posting.id) {
            return compare_existing(&existing.posting, &posting);
        }
        let moved = self.apply_legs(&posting.legs, LegEffect::Reserve)?;
        self.commit_accounts(moved);
        self.holds_changed.insert(posting.id);
        self.holds.insert(
            posting.id,
            Hold {
                posting,
                state: HoldState::Pending,
            },
        );
        Ok(Applied::Created)
    }

    /// The id the posting that settles hold `hold` always has.
    pub fn settlement_id(hold: PostingId) -> PostingId {
        Id128::derive("hold-settlement", &[hold.as_bytes()])
    }

    /// Turns a pending hold into a posting of the same legs.
    pub fn post_hold(&mut self, hold_id: PostingId) -> Result<Applied, Rejection> {
        let hold = self
            .holds
            .get(&hold_id)
            .ok_or(Rejection::HoldNotFound { hold: hold_id })?;
        match hold.state {
            HoldState::Posted { .. } => return Ok(Applied::Exists),
            HoldState::Voided => return Err(Rejection::HoldAlreadyVoided),
            HoldState::Pending => {}
        }
        let mut settlement = hold.posting.clone();
        settlement.id = Book::settlement_id(hold_id);
        // The money was reserved, so settling cannot run short.
        let moved = self.apply_legs(&settlement.legs, LegEffect::Settle)?;
        self.commit_accounts(moved);
        let hold = self.holds.get_mut(&hold_id).expect("checked above");
        hold.state = HoldState::Posted {
            posting_id: settlement.id,
        };
        self.holds_changed.insert(hold_id);
        self.postings_new.push(settlement.id);
        self.remember(settlement);
        Ok(Applied::Created)
    }

    /// Releases a pending hold.
    pub fn void_hold(&mut self, hold_id: PostingId) -> Result<Applied, Rejection> {
        let hold = self
            .holds
            .get(&hold_id)
            .ok_or(Rejection::HoldNotFound { hold: hold_id })?;
        match hold.state {
            HoldState::Voided => return Ok(Applied::Exists),
            HoldState::Posted { .. } => return Err(Rejection::HoldAlreadyPosted),
            HoldState::Pending => {}
        }
        let legs = hold.posting.legs.clone();
        let released = self.apply_legs(&legs, LegEffect::Release)?;
        self.commit_accounts(released);
        self.holds.get_mut(&hold_id).expect("checked above").state = HoldState::Voided;
        self.holds_changed.insert(hold_id);
        Ok(Applied::Created)
    }

    /// Everything changed since the book was built or last drained.
    pub fn take_changes(&mut self) -> Changes {
        let accounts = std::mem::take(&mut self.accounts_changed)
            .into_iter()
            .map(|id| self.accounts[&id].clone())
            .collect();
        let postings = std::mem::take(&mut self.postings_new)
            .into_iter()
            .map(|id| self.postings[&id].clone())
            .collect();
        let holds = std::mem::take(&mut self.holds_changed)
            .into_iter()
            .map(|id| self.holds[&id].clone())
            .collect();
        Changes {
            accounts,
            postings,
            holds,
        }
    }

    /// The sum of all balances in `currency`. Zero for a whole ledger, since
    /// every posting balances: this is money conservation.
    pub fn total(&self, currency: Currency) -> i128 {
        self.accounts
            .values()
            .filter(|account| account.id.currency() == currency)
            .map(|account| i128::from(account.balance.amount_minor()))
            .sum()
    }

    fn check_shape(&self, posting: &Posting) -> Result<(), Rejection> {
        if posting.legs.len() < 2 {
            return Err(Rejection::LegsTooFew);
        }
        if posting.legs.len() > LEGS_MAX {
            return Err(Rejection::LegsTooMany);
        }
        if posting.memo.purpose.len() > PURPOSE_LENGTH_MAX {
            return Err(Rejection::PurposeTooLong);
        }
        if let Some(leg) = posting
            .legs
            .iter()
            .position(|leg| !leg.amount.is_positive())
        {
            return Err(Rejection::AmountMustBePositive { leg });
        }
        for leg in &posting.legs {
            if !self.accounts.contains_key(&leg.account) {
                return Err(Rejection::AccountNotFound {
                    account: leg.account.clone(),
                });
            }
            if leg.account.currency() != leg.amount.currency() {
                return Err(Rejection::CurrencyMismatch {
                    account: leg.account.clone(),
                });
            }
        }
        if let Some(currency) = posting.unbalanced_currency() {
            return Err(Rejection::Unbalanced { currency });
        }
        Ok(())
    }

    /// Computes the new state of every account the legs touch, without
    /// changing the book; all-or-nothing by construction.
    fn apply_legs(
        &self,
        legs: &[crate::Leg],
        effect: LegEffect,
    ) -> Result<Vec<Account>, Rejection> {
        let mut staged: BTreeMap<AccountId, Account> = BTreeMap::new();
        let mut required: BTreeMap<AccountId, Money> = BTreeMap::new();
        for leg in legs {
            let account = staged
                .entry(leg.account.clone())
                .or_insert_with(|| self.accounts[&leg.account].clone());
            let overflow = |_| Rejection::Overflow {
                account: leg.account.clone(),
            };
            match (effect, leg.side) {
                (LegEffect::Post, Side::Credit) => {
                    account.balance = account.balance.checked_add(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Post, Side::Debit) => {
                    account.balance = account.balance.checked_sub(leg.amount).map_err(overflow)?;
                    let needed = required
                        .entry(leg.account.clone())
                        .or_insert(Money::zero(leg.amount.currency()));
                    *needed = needed.checked_add(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Reserve, Side::Debit) => {
                    account.held = account.held.checked_add(leg.amount).map_err(overflow)?;
                    let needed = required
                        .entry(leg.account.clone())
                        .or_insert(Money::zero(leg.amount.currency()));
                    *needed = needed.checked_add(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Release, Side::Debit) => {
                    account.held = account.held.checked_sub(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Settle, Side::Debit) => {
                    account.held = account.held.checked_sub(leg.amount).map_err(overflow)?;
                    account.balance = account.balance.checked_sub(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Settle, Side::Credit) => {
                    account.balance = account.balance.checked_add(leg.amount).map_err(overflow)?;
                }
                (LegEffect::Reserve | LegEffect::Release, Side::Credit) => {}
            }
            // The arithmetic above is bounded, so available() cannot overflow
            // unless a balance is at the edge of the range; check it here.
            account
                .balance
                .checked_sub(account.held)
                .map_err(overflow)?;
        }
        for account in staged.values() {
            if !account.within_rule() {
                let before = &self.accounts[&account.id];
                return Err(Rejection::InsufficientFunds {
                    account: account.id.clone(),
                    available: before.available(),
                    required: required
                        .get(&account.id)
                        .copied()
                        .unwrap_or(Money::zero(account.id.currency())),
                });
            }
        }
        Ok(staged.into_values().collect())
    }

    fn commit_accounts(&mut self, accounts: Vec<Account>) {
        for account in accounts {
            assert!(
                account.within_rule(),
                "account {} breaks its rule after a checked change",
                account.id
            );
            self.accounts_changed.insert(account.id.clone());
            self.accounts.insert(account.id.clone(), account);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegEffect {
    /// Move money now.
    Post,
    /// Reserve the debits of a hold.
    Reserve,
    /// Release the debits of a hold.
    Release,
    /// Release a hold's debits and move its money, in one step.
    Settle,
}

/// Compares a retried posting with the stored one, in the documented precedence.
fn compare_existing(existing: &Posting, retried: &Posting) -> Result<Applied, Rejection> {
    let shape = |posting: &Posting| -> Vec<(AccountId, Side)> {
        posting
            .legs
            .iter()
            .map(|leg| (leg.account.clone(), leg.side))
            .collect()
    };
    let amounts =
        |posting: &Posting| -> Vec<Money> { posting.legs.iter().map(|leg| leg.amount).collect() };
    if shape(existing) != shape(retried) {
        return Err(Rejection::ExistsWithDifferentAccounts);
    }
    if amounts(existing) != amounts(retried) {
        return Err(Rejection::ExistsWithDifferentAmounts);
    }
    if existing.reverses != retried.reverses {
        return Err(Rejection::ExistsWithDifferentReversal);
    }
    if !existing.memo.same_cause(&retried.memo) {
        return Err(Rejection::ExistsWithDifferentMemo);
    }
    Ok(Applied::Exists)
}
