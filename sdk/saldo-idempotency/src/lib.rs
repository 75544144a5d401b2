//! One idempotency decision for every entry point.
//!
//! The HTTP API (keyed by the `Idempotency-Key` header), the message inbox
//! (keyed by consumer and message id) and the payment service (keyed by order
//! and command) all ask the same question: *given what I stored for this key,
//! the fingerprint of this request and the time now, what do I do?*
//! [`decide`] answers it, in this precedence:
//!
//! 1. nothing stored: [`Verdict::Fresh`];
//! 2. stored but past its retention: [`Verdict::Expired`] (the caller treats
//!    the request as new and overwrites the record);
//! 3. a different fingerprint: [`Verdict::Mismatch`] (the key was reused for
//!    another request; HTTP answers 422);
//! 4. still in flight within its lease: [`Verdict::InFlight`] (HTTP answers
//!    409); an in-flight record whose lease ran out belongs to a crashed
//!    attempt and answers [`Verdict::Fresh`], so the request can take over;
//! 5. completed: [`Verdict::Replay`] with the stored outcome.
//!
//! Fingerprints hash a canonical encoding ([`Fingerprint::of_json`] sorts
//! object keys), so two requests that mean the same thing match.
//!
//! A client's [`IdempotencyKey`] is only unique among that client's requests,
//! so it is stored inside a [`Namespace`] as a [`ScopedKey`]: the
//! authenticated principal when the edge forwarded one, otherwise the
//! customer the request acts for ([`Namespace::of`]). Two namespaces never
//! share a record: the stored text of a scoped key is injective (its parts
//! are separated by a space, which neither part may contain).
//!
//! # Example
//!
//! ```
//! use saldo_idempotency::{Fingerprint, IdempotencyRecord, Verdict, decide};
//! use saldo_types::Timestamp;
//! use serde_json::json;
//!
//! let now = Timestamp::from_unix_ms(1_000);
//! let request = Fingerprint::of_json(&json!({ "sku": "book", "quantity": 2 }));
//! assert_eq!(decide::<&str>(None, &request, now), Verdict::Fresh);
//!
//! // Stored once the request completed: a retry replays the outcome.
//! let record = IdempotencyRecord::completed(request, "201 order-1", now, 86_400_000);
//! // Field order does not change the fingerprint.
//! let retry = Fingerprint::of_json(&json!({ "quantity": 2, "sku": "book" }));
//! assert_eq!(decide(Some(&record), &retry, now), Verdict::Replay(&"201 order-1"));
//!
//! // The same key for another request is refused.
//! let other = Fingerprint::of_json(&json!({ "sku": "book", "quantity": 3 }));
//! assert_eq!(decide(Some(&record), &other, now), Verdict::Mismatch);
//! ```

use std::fmt;

use saldo_types::{CustomerId, Principal, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The longest accepted idempotency key, in bytes.
pub const KEY_LENGTH_MAX: usize = 255;

/// A client-chosen idempotency key: 1 to [`KEY_LENGTH_MAX`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("idempotency key must not be empty")]
    Empty,
    /// The key is longer than [`KEY_LENGTH_MAX`].
    #[error("idempotency key is longer than {KEY_LENGTH_MAX} characters")]
    TooLong,
    /// The key has a character outside visible ASCII.
    #[error("idempotency key may only contain visible ASCII characters")]
    CharacterInvalid,
}

impl IdempotencyKey {
    /// Validates a key.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > KEY_LENGTH_MAX {
            return Err(KeyError::TooLong);
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(KeyError::CharacterInvalid);
        }
        Ok(IdempotencyKey(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = KeyError;
    fn try_from(key: String) -> Result<Self, Self::Error> {
        IdempotencyKey::new(key)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

/// Whose idempotency keys a key belongs to. Records in different namespaces
/// never meet, so one client cannot replay, or collide with, another's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespace {
    /// The client the gateway authenticated.
    Principal(Principal),
    /// No gateway vouched for the client: the customer the request acts for.
    Customer(CustomerId),
}

impl Namespace {
    /// The namespacing rule: the authenticated principal when the edge
    /// forwarded one, otherwise the customer the request acts for.
    pub fn of(principal: Option<&Principal>, customer: &CustomerId) -> Namespace {
        match principal {
            Some(principal) => Namespace::Principal(principal.clone()),
            None => Namespace::Customer(customer.clone()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Namespace::Principal(_) => "principal",
            Namespace::Customer(_) => "customer",
        }
    }

    fn name(&self) -> &str {
        match self {
            Namespace::Principal(principal) => principal.as_str(),
            Namespace::Customer(customer) => customer.as_str(),
        }
    }
}

/// A client's key within its namespace: what a record is stored under.
///
/// Its text form (`Display`, serde, the database column) is
/// `KIND NAMESPACE KEY`, for example `principal shop-frontend order-17`. No
/// part may contain a space (kinds are fixed words, namespaces are text ids,
/// keys are visible ASCII), so different scoped keys never share a text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopedKey {
    namespace: Namespace,
    key: IdempotencyKey,
}

/// Why a stored scoped key could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a scoped idempotency key (KIND NAMESPACE KEY)")]
pub struct ScopedKeyError {
    /// The refused text.
    pub text: String,
}

impl ScopedKey {
    /// The client's `key` inside `namespace`.
    pub fn new(namespace: Namespace, key: IdempotencyKey) -> ScopedKey {
        ScopedKey { namespace, key }
    }

    /// Whose key it is.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The key as the client sent it.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// Reads back the text form written by `Display`.
    pub fn parse(text: &str) -> Result<ScopedKey, ScopedKeyError> {
        let refused = || ScopedKeyError {
            text: text.to_owned(),
        };
        let mut parts = text.splitn(3, ' ');
        let (Some(kind), Some(name), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(refused());
        };
        let namespace = match kind {
            "principal" => Namespace::Principal(Principal::new(name).map_err(|_| refused())?),
            "customer" => Namespace::Customer(CustomerId::new(name).map_err(|_| refused())?),
            _ => return Err(refused()),
        };
        let key = IdempotencyKey::new(key).map_err(|_| refused())?;
        Ok(ScopedKey { namespace, key })
    }
}

impl fmt::Display for ScopedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.namespace.kind(),
            self.namespace.name(),
            self.key.as_str()
        )
    }
}

impl Serialize for ScopedKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScopedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ScopedKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest of a request's canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Hashes length-prefixed byte parts (so `["ab","c"] != ["a","bc"]`).
    pub fn of_parts(parts: &[&[u8]]) -> Fingerprint {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// Hashes a JSON value in canonical form: object keys sorted, no
    /// insignificant white space. Field order in the request does not matter.
    pub fn of_json(value: &serde_json::Value) -> Fingerprint {
        // serde_json's default map is ordered by key, so serialising a Value
        // is canonical.
        let canonical = serde_json::to_vec(value).expect("a JSON value always serialises");
        Fingerprint::of_parts(&[&canonical])
    }

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The digest's bytes (how storage keeps it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A fingerprint read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = text.as_bytes();
        let nibble = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        if bytes.len() != 64 {
            return Err(serde::de::Error::custom("a fingerprint is 64 hex digits"));
        }
        let mut digest = [0u8; 32];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => digest[index] = (high << 4) | low,
                _ => return Err(serde::de::Error::custom("a fingerprint is 64 hex digits")),
            }
        }
        Ok(Fingerprint(digest))
    }
}

/// Where a stored request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordState<O> {
    /// Being processed; another attempt may take over after `lease_expires_at`.
    InFlight {
        /// When the processing attempt is presumed dead.
        lease_expires_at: Timestamp,
    },
    /// Finished with this outcome, which is replayed to retries.
    Completed {
        /// The stored outcome (an HTTP response, a reply message, ...).
        outcome: O,
    },
}

/// What is stored for one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord<O> {
    /// The fingerprint of the request that first used the key.
    pub fingerprint: Fingerprint,
    /// In flight or completed.
    pub state: RecordState<O>,
    /// When the key was first used.
    pub created_at: Timestamp,
    /// After this the record no longer counts and may be deleted.
    pub expires_at: Timestamp,
}

impl<O> IdempotencyRecord<O> {
    /// A record for a request being processed now.
    pub fn in_flight(
        fingerprint: Fingerprint,
        now: Timestamp,
        lease_ms: u64,
        retention_ms: u64,
    ) -> Self {
        IdempotencyRecord {
            fingerprint,
            state: RecordState::InFlight {
                lease_expires_at: now.plus_ms(lease_ms),
            },
            created_at: now,
            expires_at: now.plus_ms(retention_ms),
        }
    }

    /// A record for a request completed now with `outcome`.
    pub fn completed(
        fingerprint: Fingerprint,
        outcome: O,
        now: Timestamp,
        retention_ms: u64,
    ) -> Self {
        IdempotencyRecord {
            fingerprint,
            state: RecordState::Completed { outcome },
            created_at: now,
            expires_at: now.plus_ms(retention_ms),
        }
    }
}

/// The answer of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a, O> {
    /// Never seen (or a crashed attempt's lease ran out): process it.
    Fresh,
    /// Seen and finished: answer with the stored outcome, do nothing else.
    Replay(&'a O),
    /// Seen and still being processed: ask the client to retry later.
    InFlight {
        /// How long until the current attempt's lease runs out.
        retry_after_ms: u64,
    },
    /// The key was used for a different request.
    Mismatch,
    /// Seen, but so long ago that the record no longer counts: process it as new.
    Expired,
}

/// Decides what to do with a request, given the record stored under its key.
/// See the crate documentation for the precedence.
pub fn decide<'a, O>(
    stored: Option<&'a IdempotencyRecord<O>>,
    fingerprint: &Fingerprint,
    now: Timestamp,
) -> Verdict<'a, O> {
    let Some(record) = stored else {
        return Verdict::Fresh;
    };
    if now >= record.expires_at {
        return Verdict::Expired;
    }
    if record.fingerprint != *fingerprint {
        return Verdict::Mismatch;
    }
    match &record.state {
        RecordState::InFlight { lease_expires_at } if now < *lease_expires_at => {
            Verdict::InFlight {
                retry_after_ms: lease_expires_at.ms_since(now),
            }
        }
        RecordState::InFlight { .. } => Verdict::Fresh,
        RecordState::Completed { outcome } => Verdict::Replay(outcome),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn at(unix_ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(unix_ms)
    }

    fn print(text: &str) -> Fingerprint {
        Fingerprint::of_parts(&[text.as_bytes()])
    }

    #[derive(Debug, PartialEq)]
    enum Expected {
        Fresh,
        Replay(&'static str),
        InFlight(u64),
        Mismatch,
        Expired,
    }

    #[rstest]
    #[case::never_seen(None, "a", 100, Expected::Fresh)]
    #[case::completed_same_request(
        Some(IdempotencyRecord::completed(print("a"), "201 created", at(0), 1_000)),
        "a",
        100,
        Expected::Replay("201 created")
    )]
    #[case::completed_other_request(
        Some(IdempotencyRecord::completed(print("a"), "201 created", at(0), 1_000)),
        "b",
        100,
        Expected::Mismatch
    )]
    #[case::in_flight_within_lease(
        Some(IdempotencyRecord::in_flight(print("a"), at(0), 300, 1_000)),
        "a",
        100,
        Expected::InFlight(200)
    )]
    #[case::in_flight_other_request(
        Some(IdempotencyRecord::in_flight(print("a"), at(0), 300, 1_000)),
        "b",
        100,
        Expected::Mismatch
    )]
    #[case::in_flight_lease_ran_out(
        Some(IdempotencyRecord::in_flight(print("a"), at(0), 300, 1_000)),
        "a",
        300,
        Expected::Fresh
    )]
    #[case::expired_beats_mismatch(
        Some(IdempotencyRecord::completed(print("a"), "201 created", at(0), 1_000)),
        "b",
        1_000,
        Expected::Expired
    )]
    #[case::expired_same_request(
        Some(IdempotencyRecord::completed(print("a"), "201 created", at(0), 1_000)),
        "a",
        5_000,
        Expected::Expired
    )]
    fn verdicts_follow_the_documented_precedence(
        #[case] stored: Option<IdempotencyRecord<&'static str>>,
        #[case] request: &str,
        #[case] now_ms: u64,
        #[case] expected: Expected,
    ) {
        // Proves every combination of stored record, fingerprint and time
        // gives the documented verdict.
        let verdict = match decide(stored.as_ref(), &print(request), at(now_ms)) {
            Verdict::Fresh => Expected::Fresh,
            Verdict::Replay(outcome) => Expected::Replay(outcome),
            Verdict::InFlight { retry_after_ms } => Expected::InFlight(retry_after_ms),
            Verdict::Mismatch => Expected::Mismatch,
            Verdict::Expired => Expected::Expired,
        };
        assert_eq!(verdict, expected);
    }

    #[test]
    fn json_fingerprints_ignore_key_order_but_not_values() {
        // Proves requests that mean the same match and others do not.
        let first = json!({"customer": "alice", "lines": [{"sku": "a", "quantity": 1}]});
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"lines":[{"quantity":1,"sku":"a"}],"customer":"alice"}"#)
                .unwrap();
        let changed = json!({"customer": "alice", "lines": [{"sku": "a", "quantity": 2}]});
        assert_eq!(
            Fingerprint::of_json(&first),
            Fingerprint::of_json(&reordered)
        );
        assert_ne!(Fingerprint::of_json(&first), Fingerprint::of_json(&changed));
    }

    #[rstest]
    #[case("order-1", Ok(()))]
    #[case("", Err(KeyError::Empty))]
    #[case("with space", Err(KeyError::CharacterInvalid))]
    #[case("é", Err(KeyError::CharacterInvalid))]
    fn keys_are_validated(#[case] key: &str, #[case] expected: Result<(), KeyError>) {
        // Proves keys are refused for the exact reason.
        assert_eq!(IdempotencyKey::new(key).map(|_| ()), expected);
    }

    #[test]
    fn key_length_is_bounded() {
        // Proves the bound holds at exactly its limit.
        assert!(IdempotencyKey::new("k".repeat(KEY_LENGTH_MAX)).is_ok());
        assert_eq!(
            IdempotencyKey::new("k".repeat(KEY_LENGTH_MAX + 1)),
            Err(KeyError::TooLong)
        );
    }

    fn scoped(namespace: Namespace, key: &str) -> ScopedKey {
        ScopedKey::new(namespace, IdempotencyKey::new(key).expect("valid"))
    }

    fn principal(name: &str) -> Namespace {
        Namespace::Principal(Principal::new(name).expect("valid"))
    }

    fn customer(name: &str) -> Namespace {
        Namespace::Customer(CustomerId::new(name).expect("valid"))
    }

    #[test]
    fn the_namespace_is_the_principal_when_one_is_forwarded_else_the_customer() {
        // Proves the namespacing rule: a forwarded principal wins over the
        // customer the request names.
        let alice = CustomerId::new("alice").expect("valid");
        let shop = Principal::new("shop").expect("valid");
        assert_eq!(Namespace::of(Some(&shop), &alice), principal("shop"));
        assert_eq!(Namespace::of(None, &alice), customer("alice"));
    }

    #[rstest]
    #[case::same_key_other_principal(scoped(principal("a"), "k"), scoped(principal("b"), "k"))]
    #[case::principal_versus_customer(scoped(principal("a"), "k"), scoped(customer("a"), "k"))]
    #[case::key_cannot_shift_into_the_namespace(
        scoped(principal("a"), "b:k"),
        scoped(principal("a:b"), "k")
    )]
    fn scoped_keys_of_different_namespaces_never_share_a_text(
        #[case] first: ScopedKey,
        #[case] second: ScopedKey,
    ) {
        // Proves the stored text is injective: two namespaces, or a key
        // crafted to look like another namespace, never meet in storage.
        assert_ne!(first, second);
        assert_ne!(first.to_string(), second.to_string());
        for key in [first, second] {
            assert_eq!(ScopedKey::parse(&key.to_string()), Ok(key));
        }
    }

    #[rstest]
    #[case::bare_client_key("order-1")]
    #[case::unknown_kind("tenant a k")]
    #[case::namespace_invalid("customer a/b k")]
    #[case::key_with_space("customer a k k")]
    #[case::key_missing("principal a")]
    fn malformed_scoped_keys_are_refused(#[case] text: &str) {
        // Proves storage text that no scoped key writes is not read back as one.
        assert!(ScopedKey::parse(text).is_err(), "{text}");
    }

    #[test]
    fn records_round_trip_through_serde() {
        // Proves a stored record reads back identically.
        let record = IdempotencyRecord::completed(print("a"), "outcome".to_owned(), at(5), 10);
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<IdempotencyRecord<String>>(&text).unwrap(),
            record
        );
    }
}

#[cfg(test)]
mod mutants_tests;
