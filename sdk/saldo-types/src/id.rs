use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of identifier.
        kind: &'static str,
    },
    /// The identifier is longer than [`TEXT_ID_LENGTH_MAX`] bytes.
    #[error("{kind} is longer than {TEXT_ID_LENGTH_MAX} characters")]
    TooLong {
        /// Which kind of identifier.
        kind: &'static str,
    },
    /// The identifier has a character outside `A-Z a-z 0-9 . _ : -`.
    #[error("{kind} {value:?} may only contain letters, digits and . _ : -")]
    CharacterInvalid {
        /// Which kind of identifier.
        kind: &'static str,
        /// The refused value.
        value: String,
    },
    /// A 128-bit identifier is not 32 lower-case hexadecimal digits.
    #[error("{0:?} is not 32 lower-case hexadecimal digits")]
    HexMalformed(String),
}

/// The longest accepted textual identifier, in bytes. Identifiers end up in
/// Kafka keys, database keys and log lines; a bound keeps all three small.
pub const TEXT_ID_LENGTH_MAX: usize = 64;

fn validate_text_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > TEXT_ID_LENGTH_MAX {
        return Err(IdError::TooLong { kind });
    }
    let allowed =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-');
    if !value.bytes().all(allowed) {
        return Err(IdError::CharacterInvalid {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Shared text: cloning one (as every row key, message and trace
        /// line does) costs a reference count, not an allocation.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_text_id($kind, &value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?.into_owned();
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// Identifies an order; also the Kafka partition key of every message about it.
    OrderId,
    "order id"
);
text_id!(
    /// Identifies a customer, who owns one wallet per currency.
    CustomerId,
    "customer id"
);
text_id!(
    /// A stock-keeping unit: what inventory counts.
    Sku,
    "sku"
);
text_id!(
    /// Who an authenticated client is: the name of its API key, which the
    /// gateway forwards to the services. Idempotency keys are kept apart per
    /// principal (see `saldo_idempotency::Namespace`).
    Principal,
    "principal"
);
text_id!(
    /// Ties together every message, row and log line caused by one client request.
    CorrelationId,
    "correlation id"
);

/// A 128-bit identifier derived from its cause (message ids, posting ids).
///
/// Derivation hashes the cause with SHA-256, so a decision that is retried from
/// the same input produces the same id, which is what lets inboxes and the
/// ledger recognise the retry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id128([u8; 16]);

impl Id128 {
    /// Derives an id from a namespace and the parts of its cause.
    ///
    /// Each part is length-prefixed before hashing, so `["ab", "c"]` and
    /// `["a", "bc"]` give different ids.
    pub fn derive(namespace: &str, parts: &[&[u8]]) -> Id128 {
        let mut hasher = Sha256::new();
        for part in std::iter::once(namespace.as_bytes()).chain(parts.iter().copied()) {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Id128(bytes)
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Id128 {
        Id128(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 32-digit lower-case hexadecimal form.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(32);
        for byte in self.0 {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        text
    }

    /// Parses the 32-digit lower-case hexadecimal form.
    pub fn from_hex(text: &str) -> Result<Id128, IdError> {
        let malformed = || IdError::HexMalformed(text.to_owned());
        let nibble = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(malformed());
        }
        let mut id = [0u8; 16];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            let high = nibble(pair[0]).ok_or_else(malformed)?;
            let low = nibble(pair[1]).ok_or_else(malformed)?;
            id[index] = (high << 4) | low;
        }
        Ok(Id128(id))
    }
}

impl fmt::Debug for Id128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Id128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Id128 {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Id128::from_hex(text)
    }
}

impl Serialize for Id128 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id128 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Id128::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::quickcheck;
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("order-1", Ok(()))]
    #[case("a.b_c:d-E9", Ok(()))]
    #[case("", Err(IdError::Empty { kind: "order id" }))]
    #[case("has space", Err(IdError::CharacterInvalid { kind: "order id", value: "has space".into() }))]
    #[case("ümlaut", Err(IdError::CharacterInvalid { kind: "order id", value: "ümlaut".into() }))]
    fn text_ids_are_validated(#[case] value: &str, #[case] expected: Result<(), IdError>) {
        // Proves identifiers are refused with the exact reason.
        assert_eq!(OrderId::new(value).map(|_| ()), expected);
    }

    #[test]
    fn text_ids_have_a_length_bound() {
        // Proves the length bound is enforced at exactly its limit.
        assert!(Sku::new("x".repeat(TEXT_ID_LENGTH_MAX)).is_ok());
        assert_eq!(
            Sku::new("x".repeat(TEXT_ID_LENGTH_MAX + 1)),
            Err(IdError::TooLong { kind: "sku" })
        );
    }

    #[test]
    fn derivation_is_stable_and_unambiguous() {
        // Proves derived ids are deterministic and length-prefixing separates parts.
        let first = Id128::derive("message", &[b"ab", b"c"]);
        assert_eq!(first, Id128::derive("message", &[b"ab", b"c"]));
        assert_ne!(first, Id128::derive("message", &[b"a", b"bc"]));
        assert_ne!(first, Id128::derive("posting", &[b"ab", b"c"]));
    }

    #[rstest]
    #[case("0123456789abcdef0123456789ABCDEF")]
    #[case("0123")]
    #[case("0123456789abcdef0123456789abcdeg")]
    fn malformed_hex_is_refused(#[case] text: &str) {
        // Proves only the canonical lower-case form parses.
        assert_eq!(
            Id128::from_hex(text),
            Err(IdError::HexMalformed(text.into()))
        );
    }

    quickcheck! {
        fn hex_round_trips(high: u64, low: u64) -> bool {
            // Proves every id survives its textual form.
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&high.to_be_bytes());
            bytes[8..].copy_from_slice(&low.to_be_bytes());
            let id = Id128::from_bytes(bytes);
            Id128::from_hex(&id.to_hex()) == Ok(id)
        }
    }
}
