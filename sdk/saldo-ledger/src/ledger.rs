use saldo_types::Timestamp;

use crate::{AccountId, Applied, Book, Entry, Hold, Memo, Posting, PostingId, Rejection};

/// A whole ledger in memory: a [`Book`] plus the sealed, hash-chained
/// entries. For embedders who want the complete thing in one value; the
/// services use a partial [`Book`] per decision and let the store seal.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    book: Book,
    entries: Vec<Entry>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Opens an account; see [`Book::open_account`].
    pub fn open_account(&mut self, id: AccountId) -> Applied {
        let applied = self.book.open_account(id);
        self.book.take_changes();
        applied
    }

    /// Records a posting and seals it; see [`Book::post`].
    pub fn post(&mut self, posting: Posting, now: Timestamp) -> Result<Applied, Rejection> {
        let applied = self.book.post(posting)?;
        self.seal_new(now);
        Ok(applied)
    }

    /// Reverses a posting; see [`Book::reverse`].
    pub fn reverse(
        &mut self,
        original: PostingId,
        memo: Memo,
        now: Timestamp,
    ) -> Result<Applied, Rejection> {
        let applied = self.book.reverse(original, memo)?;
        self.seal_new(now);
        Ok(applied)
    }

    /// Places a hold; see [`Book::place_hold`].
    pub fn place_hold(&mut self, posting: Posting) -> Result<Applied, Rejection> {
        let applied = self.book.place_hold(posting)?;
        self.book.take_changes();
        Ok(applied)
    }

    /// Settles a hold into a posting; see [`Book::post_hold`].
    pub fn post_hold(&mut self, hold: PostingId, now: Timestamp) -> Result<Applied, Rejection> {
        let applied = self.book.post_hold(hold)?;
        self.seal_new(now);
        Ok(applied)
    }

    /// Releases a hold; see [`Book::void_hold`].
    pub fn void_hold(&mut self, hold: PostingId) -> Result<Applied, Rejection> {
        let applied = self.book.void_hold(hold)?;
        self.book.take_changes();
        Ok(applied)
    }

    /// The rules' view: accounts, postings, holds.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The hold, if any.
    pub fn hold(&self, id: &PostingId) -> Option<&Hold> {
        self.book.hold(id)
    }

    /// The sealed entries, in sequence.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn seal_new(&mut self, now: Timestamp) {
        for posting in self.book.take_changes().postings {
            let entry = Entry::seal(self.entries.last(), posting, now);
            self.entries.push(entry);
        }
    }
}
