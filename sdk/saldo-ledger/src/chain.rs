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
