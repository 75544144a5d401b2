//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): the key's stored text and the fingerprint's stored bytes and
//! debug form. See `docs/testing.md`.

use super::*;

#[test]
fn a_key_converts_to_the_text_the_client_sent() {
    // Proves the `String` a key is stored as (its serde `into`) is the
    // client's key unchanged.
    let key = IdempotencyKey::new("order-17").expect("valid");
    assert_eq!(String::from(key.clone()), "order-17");
    assert_eq!(
        serde_json::to_string(&key).expect("serialises"),
        "\"order-17\""
    );
}

#[test]
fn fingerprint_bytes_round_trip_through_storage() {
    // Proves the bytes a store keeps are the digest itself, so a record read
    // back matches the request that wrote it and no other.
    let first = Fingerprint::of_parts(&[b"first"]);
    let second = Fingerprint::of_parts(&[b"second"]);
    assert_eq!(Fingerprint::from_bytes(*first.as_bytes()), first);
    assert_ne!(first.as_bytes(), second.as_bytes());
    assert_eq!(first.as_bytes().to_vec(), hex_to_bytes(&first.to_hex()));
}

#[test]
fn fingerprint_debug_shows_its_hex_digest() {
    // Proves logs and assertion messages show the digest, not an empty
    // string, so two fingerprints can be told apart when debugging.
    let fingerprint = Fingerprint::of_parts(&[b"request"]);
    assert_eq!(format!("{fingerprint:?}"), fingerprint.to_hex());
    assert_eq!(fingerprint.to_hex().len(), 64);
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).expect("hex"))
        .collect()
}
