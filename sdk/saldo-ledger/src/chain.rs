use std::fmt;

use saldo_types::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::Posting;

/// A SHA-256 link of the entry chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The hash before the first entry.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Parses 64 lower-case hexadecimal digits.
    pub fn from_hex(text: &str) -> Option<ChainHash> {
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
        }
        Some(ChainHash(bytes))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ChainHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// An entry as a relational store keeps it beside the hashed posting: the
/// columns readers query (`posting_id`, `purpose`, `order_id`, ...) and one
/// row per leg. Stores write exactly this and reconciliation compares what
/// is stored with it, so a column or leg that differs from the hashed
/// posting is found even though the posting itself still verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The posting's id, in hexadecimal.
    pub posting_id: String,
    /// The reversed posting's id, in hexadecimal.
    pub reverses: Option<String>,
    /// The memo's purpose.
    pub purpose: String,
    /// The memo's order.
    pub order_id: Option<String>,
    /// The memo's correlation id.
    pub correlation_id: Option<String>,
    /// The memo's trace context.
    pub traceparent: Option<String>,
    /// The legs, in posting order.
    pub legs: Vec<StoredLeg>,
}

/// One leg row: its index in the posting, account, side and amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLeg {
    /// The leg's index in the posting, from 0.
    pub leg: i64,
    /// The account id as text (`wallet:alice:EUR`).
    pub account: String,
    /// `debit` or `credit`.
    pub side: String,
    /// The amount in minor units.
    pub amount_minor: i64,
    /// The currency code.
    pub currency: String,
}

impl StoredEntry {
    /// The rows `posting` is stored as.
    pub fn of(posting: &crate::Posting) -> StoredEntry {
        let memo = &posting.memo;
        StoredEntry {
            posting_id: posting.id.to_hex(),
            reverses: posting.reverses.map(|id| id.to_hex()),
            purpose: memo.purpose.clone(),
            order_id: memo.order_id.as_ref().map(|id| id.as_str().to_owned()),
            correlation_id: memo
                .correlation_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            traceparent: memo.traceparent.clone(),
            legs: posting
                .legs
                .iter()
                .enumerate()
                .map(|(index, leg)| StoredLeg {
                    leg: index as i64,
                    account: leg.account.to_string(),
                    side: leg.side.name().to_owned(),
                    amount_minor: leg.amount.amount_minor(),
                    currency: leg.amount.currency().code().to_owned(),
                })
                .collect(),
        }
    }

    /// The first column or leg in which `self` differs from the rows
    /// `posting` is stored as, named for a person; `None` when they agree.
    pub fn difference(&self, posting: &crate::Posting) -> Option<String> {
        let expected = StoredEntry::of(posting);
        let columns: [(&str, Option<&str>, Option<&str>); 6] = [
            (
                "posting_id",
                Some(&self.posting_id),
                Some(&expected.posting_id),
            ),
            (
                "reverses",
                self.reverses.as_deref(),
                expected.reverses.as_deref(),
            ),
            ("purpose", Some(&self.purpose), Some(&expected.purpose)),
            (
                "order_id",
                self.order_id.as_deref(),
                expected.order_id.as_deref(),
            ),
            (
                "correlation_id",
                self.correlation_id.as_deref(),
                expected.correlation_id.as_deref(),
            ),
            (
                "traceparent",
                self.traceparent.as_deref(),
                expected.traceparent.as_deref(),
            ),
        ];
        if let Some((name, stored, hashed)) =
            columns.iter().find(|(_, stored, hashed)| stored != hashed)
        {
            return Some(format!(
                "column {name} is {stored:?}, the hashed posting says {hashed:?}"
            ));
        }
        if self.legs.len() != expected.legs.len() {
            return Some(format!(
                "{} legs stored, the hashed posting has {}",
                self.legs.len(),
                expected.legs.len()
            ));
        }
        self.legs
            .iter()
            .zip(&expected.legs)
            .find(|(stored, hashed)| stored != hashed)
            .map(|(stored, hashed)| format!("leg {stored:?} differs from the hashed {hashed:?}"))
    }
}

/// A point of the chain an operator keeps outside the database: an entry's
/// sequence and hash. Rewriting anything at or before it (even recomputing
/// every later hash and the chain's end) changes that entry's hash, so a
/// chain that still matches its checkpoints was not rewritten behind them.
/// Written and parsed as `SEQUENCE:HASH` (`1234:9f86…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// The entry's sequence (from 1).
    pub sequence: u64,
    /// The entry's hash.
    pub hash: ChainHash,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sequence, self.hash.to_hex())
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Checkpoint, String> {
        let (sequence, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("checkpoint {text:?} is not SEQUENCE:HASH"))?;
        let sequence: u64 = sequence
            .parse()
            .ok()
            .filter(|sequence| *sequence > 0)
            .ok_or_else(|| format!("checkpoint {text:?}: the sequence must be a number from 1"))?;
        let hash = ChainHash::from_hex(hash).ok_or_else(|| {
            format!("checkpoint {text:?}: the hash must be 64 lower-case hexadecimal digits")
        })?;
        Ok(Checkpoint { sequence, hash })
    }
}

/// An immutable, sealed ledger entry: a posting, its place in the sequence,
/// and its link in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the ledger, from 1, without gaps.
    pub sequence: u64,
    /// When the entry was committed (the caller's clock).
    pub recorded_at: Timestamp,
    /// The posting recorded.
    pub posting: Posting,
    /// The previous entry's hash ([`ChainHash::GENESIS`] for the first).
    pub previous_hash: ChainHash,
    /// This entry's hash over all of the above.
    pub hash: ChainHash,
}

impl Entry {
    /// Seals `posting` as the entry after `previous` (or the first entry).
    pub fn seal(previous: Option<&Entry>, posting: Posting, recorded_at: Timestamp) -> Entry {
        assert!(
            posting.is_balanced(),
            "only balanced postings are sealed: {}",
            posting.id
        );
        let (sequence, previous_hash) = match previous {
            Some(previous) => (previous.sequence + 1, previous.hash),
            None => (1, ChainHash::GENESIS),
        };
        let hash = content_hash(sequence, recorded_at, &posting, &previous_hash);
        Entry {
            sequence,
            recorded_at,
            posting,
            previous_hash,
            hash,
        }
    }

    /// Seals `posting` at `sequence`, linked to `previous_hash`: for stores
    /// that keep the chain's end in a row of their own rather than the entry.
    pub fn seal_at(
        sequence: u64,
        previous_hash: ChainHash,
        posting: Posting,
        recorded_at: Timestamp,
    ) -> Entry {
        assert!(
            posting.is_balanced(),
            "only balanced postings are sealed: {}",
            posting.id
        );
        assert!(sequence > 0, "sequences start at 1");
        let hash = content_hash(sequence, recorded_at, &posting, &previous_hash);
        Entry {
            sequence,
            recorded_at,
            posting,
            previous_hash,
            hash,
        }
    }

    /// This entry as a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            sequence: self.sequence,
            hash: self.hash,
        }
    }

    /// The hash the entry's content should have.
    pub fn computed_hash(&self) -> ChainHash {
        content_hash(
            self.sequence,
            self.recorded_at,
            &self.posting,
            &self.previous_hash,
        )
    }
}

fn content_hash(
    sequence: u64,
    recorded_at: Timestamp,
    posting: &Posting,
    previous_hash: &ChainHash,
) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous_hash.0);
    hasher.update(sequence.to_be_bytes());
    hasher.update(recorded_at.unix_ms().to_be_bytes());
    let mut canonical = Vec::with_capacity(256);
    posting.canonical_bytes(&mut canonical);
    hasher.update(&canonical);
    ChainHash(hasher.finalize().into())
}

/// Why a chain of entries failed verification, at the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Sequence numbers skip or repeat.
    #[error("expected entry {expected}, found {found}")]
    SequenceGap {
        /// The sequence number that should come next.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The entry does not point at its predecessor's hash.
    #[error("entry {sequence} does not link to its predecessor")]
    LinkBroken {
        /// The entry.
        sequence: u64,
    },
    /// The entry's content does not match its hash: it was changed.
    #[error("entry {sequence} was changed after it was sealed")]
    ContentChanged {
        /// The entry.
        sequence: u64,
    },
    /// The entry's posting does not balance.
    #[error("entry {sequence} does not balance")]
    Unbalanced {
        /// The entry.
        sequence: u64,
    },
}

/// Verifies a chain from its first entry, or from a checkpoint: pass the last
/// verified entry as `after` to continue incrementally.
pub fn verify_chain<'a>(
    after: Option<&Entry>,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<u64, ChainError> {
    let (mut expected, mut previous_hash) = match after {
        Some(entry) => (entry.sequence + 1, entry.hash),
        None => (1, ChainHash::GENESIS),
    };
    let mut verified = 0;
    for entry in entries {
        if entry.sequence != expected {
            return Err(ChainError::SequenceGap {
                expected,
                found: entry.sequence,
            });
        }
        if entry.previous_hash != previous_hash {
            return Err(ChainError::LinkBroken {
                sequence: entry.sequence,
            });
        }
        if entry.computed_hash() != entry.hash {
            return Err(ChainError::ContentChanged {
                sequence: entry.sequence,
            });
        }
        if !entry.posting.is_balanced() {
            return Err(ChainError::Unbalanced {
                sequence: entry.sequence,
            });
        }
        previous_hash = entry.hash;
        expected += 1;
        verified += 1;
    }
    Ok(verified)
}
