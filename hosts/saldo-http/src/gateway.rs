//! The optional gateway: API keys, per-key rate limits, request validation
//! and size limits, as one layer in front of the API (dev mode) or of the
//! reverse proxy (`saldo gateway`). Deployments may bypass it.
//!
//! Keys are stored as SHA-256 hashes only; a presented key is hashed and
//! compared with every stored hash in constant time, so neither the stored
//! keys nor the comparison leak the secret. Checks run in this order:
//! authentication (401), scope (403), rate limit (429), body (413, 415, 400).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::IDEMPOTENCY_KEY;
use crate::context::{body_read_timeout, parse_json, read_body, require_json};
use crate::problem::Problem;

/// The API-key header (`Authorization: Bearer KEY` is accepted too).
pub const API_KEY: &str = "x-api-key";
/// Requests per second a key may make unless configured otherwise.
pub const RATE_PER_SECOND_DEFAULT: u32 = 100;
/// Requests a key may make in a burst unless configured otherwise.
pub const BURST_DEFAULT: u32 = 200;
/// Paths served without a key: probes, metrics and the API description.
pub const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
/// Requests per second all clients together may make to [`OPEN_PATHS`]:
/// far above what probes and scrapers need, far below what would let an
/// anonymous client keep `/readyz` querying the database.
pub const OPEN_RATE_PER_SECOND: u32 = 50;
/// The burst all clients together may make to [`OPEN_PATHS`].
pub const OPEN_BURST: u32 = 100;

/// What a key may do: read or write one resource, or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every route.
    All,
    /// GET on the resource.
    Read(Resource),
    /// Every method on the resource.
    Write(Resource),
}

/// The API's resources, by their first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `/orders`
    Orders,
    /// `/wallets`
    Wallets,
    /// `/stock`
    Stock,
}

impl Resource {
    /// The resource a path belongs to.
    pub fn of_path(path: &str) -> Option<Resource> {
        match path.trim_start_matches('/').split('/').next()? {
            "orders" => Some(Resource::Orders),
            "wallets" => Some(Resource::Wallets),
            "stock" => Some(Resource::Stock),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resource::Orders => "orders",
            Resource::Wallets => "wallets",
            Resource::Stock => "stock",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        if text == "*" {
            return Ok(Scope::All);
        }
        let (resource, access) = text
            .split_once(':')
            .ok_or_else(|| format!("scope {text:?} is not RESOURCE:read, RESOURCE:write or *"))?;
        let resource = [Resource::Orders, Resource::Wallets, Resource::Stock]
            .into_iter()
            .find(|candidate| candidate.name() == resource)
            .ok_or_else(|| format!("scope {text:?} names no resource (orders, wallets, stock)"))?;
        match access {
            "read" => Ok(Scope::Read(resource)),
            "write" => Ok(Scope::Write(resource)),
            _ => Err(format!("scope {text:?} must end in :read or :write")),
        }
    }
}

impl Scope {
    fn allows(self, method: &Method, resource: Resource) -> bool {
        match self {
            Scope::All => true,
            Scope::Write(granted) => granted == resource,
            Scope::Read(granted) => {
                granted == resource && (method == Method::GET || method == Method::HEAD)
            }
        }
    }
}

/// One API key as configured: its name, hash, scopes and rate.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Who holds it (logged; never the key itself).
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Sustained requests per second.
    pub rate_per_second: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Why a keys file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// Not TOML of the expected shape.
    #[error("keys file: {0}")]
    Malformed(String),
    /// A key entry is invalid.
    #[error("keys file, key {name:?}: {reason}")]
    Invalid {
        /// The entry's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    rate_per_second: Option<u32>,
    burst: Option<u32>,
}

/// SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hexadecimal of a hash.
pub fn to_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A new random key (`sk_` and 64 hex digits: 256 bits).
pub fn new_key() -> String {
    format!(
        "sk_{}{}",
        crate::context::random_id().to_hex(),
        crate::context::random_id().to_hex()
    )
}

/// Parses a keys file:
///
/// ```toml
/// [[key]]
/// name = "shop-frontend"
/// sha256 = "…64 hex digits…"
/// scopes = ["orders:write", "wallets:read"]
/// rate_per_second = 50
/// burst = 100
/// ```
pub fn parse_keys(text: &str) -> Result<Vec<ApiKey>, KeysError> {
    let file: KeysFile =
        toml::from_str(text).map_err(|error| KeysError::Malformed(error.message().to_owned()))?;
    let mut keys: Vec<ApiKey> = Vec::with_capacity(file.key.len());
    for entry in file.key {
        let invalid = |reason: String| KeysError::Invalid {
            name: entry.name.clone(),
            reason,
        };
        let digits = entry.sha256.as_bytes();
        if digits.len() != 64 || !entry.sha256.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(invalid("sha256 must be 64 hexadecimal digits".to_owned()));
        }
        let mut hash = [0_u8; 32];
        for (index, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
            hash[index] = u8::from_str_radix(text, 16).expect("checked hex");
        }
        let scopes = entry
            .scopes
            .iter()
            .map(|scope| scope.parse())
            .collect::<Result<Vec<Scope>, String>>()
            .map_err(invalid)?;
        let rate_per_second = entry.rate_per_second.unwrap_or(RATE_PER_SECOND_DEFAULT);
        let burst = entry.burst.unwrap_or(BURST_DEFAULT);
        if rate_per_second == 0 || burst == 0 {
            return Err(invalid(
                "rate_per_second and burst must be positive".to_owned(),
            ));
        }
        if keys.iter().any(|key| key.name == entry.name) {
            return Err(invalid("the name is used twice".to_owned()));
        }
        keys.push(ApiKey {
            name: entry.name,
            hash,
            scopes,
            rate_per_second,
            burst,
        });
    }
    Ok(keys)
}

/// A token bucket in thousandths of a token, so that integer arithmetic
/// refills it smoothly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    tokens_milli: u64,
    updated_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens_milli: u64::from(burst) * 1_000,
            updated_ms: now_ms,
        }
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, rate_per_second: u32, burst: u32, now_ms: u64) -> Result<(), u64> {
        let elapsed_ms = now_ms.saturating_sub(self.updated_ms);
        // rate tokens per second = rate milli-tokens per millisecond.
        let refill = elapsed_ms.saturating_mul(u64::from(rate_per_second));
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(refill)
            .min(u64::from(burst) * 1_000);
        self.updated_ms = self.updated_ms.max(now_ms);
        if self.tokens_milli >= 1_000 {
            self.tokens_milli -= 1_000;
            Ok(())
        } else {
            Err((1_000 - self.tokens_milli).div_ceil(u64::from(rate_per_second)))
        }
    }
}

/// The gateway's state: the keys and one bucket per key.
#[derive(Debug)]
pub struct Gateway {
    keys: Vec<ApiKey>,
    buckets: Mutex<HashMap<usize, Bucket>>,
    /// The one bucket of the unauthenticated [`OPEN_PATHS`].
    open_bucket: Mutex<Bucket>,
    started: Instant,
}

impl Gateway {
    /// A gateway admitting `keys`.
    pub fn new(keys: Vec<ApiKey>) -> Gateway {
        Gateway {
            keys,
            buckets: Mutex::new(HashMap::new()),
            open_bucket: Mutex::new(Bucket::full(OPEN_BURST, 0)),
            started: Instant::now(),
        }
    }

    /// Puts the gateway's checks in front of `router`.
    pub fn protect(self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(Arc::new(self), gate))
    }

    /// The index of the key whose hash matches, compared with every stored
    /// hash in constant time.
    fn authenticate(&self, presented: &str) -> Option<usize> {
        let digest = hash_key(presented);
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if bool::from(key.hash.ct_eq(&digest)) {
                found = Some(index);
            }
        }
        found
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn take_open_token(&self) -> Result<(), u64> {
        let now_ms = self.now_ms();
        self.open_bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take(OPEN_RATE_PER_SECOND, OPEN_BURST, now_ms)
    }

    fn take_token(&self, index: usize) -> Result<(), u64> {
        let key = &self.keys[index];
        let now_ms = self.now_ms();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        buckets
            .entry(index)
            .or_insert_with(|| Bucket::full(key.burst, now_ms))
            .take(key.rate_per_second, key.burst, now_ms)
    }
}

fn presented_key(request: &Request) -> Option<&str> {
    let headers = request.headers();
    if let Some(value) = headers.get(API_KEY) {
        return value.to_str().ok();
    }
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn gate(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if OPEN_PATHS.contains(&path.as_str()) {
        return match gateway.take_open_token() {
            Ok(()) => next.run(request).await,
            Err(retry_after_ms) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests to the open paths",
                format!(
                    "all clients together may make {OPEN_RATE_PER_SECOND} requests per second (burst {OPEN_BURST}) to {}",
                    OPEN_PATHS.join(", ")
                ),
            )
            .retry_after_ms(retry_after_ms)
            .into_response(),
        };
    }
    match check(&gateway, request).await {
        Ok(request) => next.run(request).await,
        Err(problem) => problem.into_response(),
    }
}

async fn check(gateway: &Gateway, request: Request) -> Result<Request, Problem> {
    let Some(presented) = presented_key(&request) else {
        return Err(unauthorized(
            "api_key_missing",
            "send the key in X-Api-Key or Authorization: Bearer",
        ));
    };
    let index = gateway
        .authenticate(presented)
        .ok_or_else(|| unauthorized("api_key_invalid", "the API key is not known"))?;
    let key = &gateway.keys[index];
    let method = request.method().clone();
    let resource = Resource::of_path(request.uri().path());
    let allowed = resource.is_some_and(|resource| {
        key.scopes
            .iter()
            .any(|scope| scope.allows(&method, resource))
    });
    if !allowed {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "scope_missing",
            "The API key may not do this",
            format!(
                "key {:?} has no scope for {method} {}",
                key.name,
                request.uri().path()
            ),
        ));
    }
    gateway.take_token(index).map_err(|retry_after_ms| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests for this API key",
            format!(
                "key {:?} is limited to {} requests per second (burst {})",
                key.name, key.rate_per_second, key.burst
            ),
        )
        .retry_after_ms(retry_after_ms)
    })?;
    tracing::debug!(key = %key.name, "admitted");
    validate(request).await
}

fn unauthorized(code: &'static str, detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        code,
        "A valid API key is required",
        detail,
    )
}

/// Body checks: writes carry JSON of bounded size that parses, and POSTs
/// carry an idempotency key. The services check all of this again; the
/// gateway refuses early so that bad traffic never reaches them.
async fn validate(request: Request) -> Result<Request, Problem> {
    let method = request.method().clone();
    if method != Method::POST && method != Method::PUT {
        return Ok(request);
    }
    if method == Method::POST && !request.headers().contains_key(&IDEMPOTENCY_KEY) {
        return Err(Problem::idempotency_key_missing());
    }
    require_json(request.headers())?;
    let (mut parts, body) = request.into_parts();
    let bytes = read_body(body, body_read_timeout(&parts.extensions)).await?;
    parse_json::<serde::de::IgnoredAny>(&bytes)?;
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(u64::try_from(bytes.len()).unwrap_or(u64::MAX)),
    );
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry() {
        // Proves the token bucket: burst at once, then `rate` per second,
        // with the wait until the next token.
        let mut bucket = Bucket::full(3, 0);
        for _ in 0..3 {
            assert_eq!(bucket.take(2, 3, 0), Ok(()));
        }
        assert_eq!(bucket.take(2, 3, 0), Err(500));
        assert_eq!(bucket.take(2, 3, 499), Err(1));
        assert_eq!(bucket.take(2, 3, 500), Ok(()));
        // A long quiet period refills only up to the burst.
        for _ in 0..3 {
            assert_eq!(bucket.take(2, 3, 100_000), Ok(()));
        }
        assert!(bucket.take(2, 3, 100_000).is_err());
    }

    #[rstest::rstest]
    #[case("*", Method::POST, "/stock/x", true)]
    #[case("orders:read", Method::GET, "/orders/1", true)]
    #[case("orders:read", Method::POST, "/orders", false)]
    #[case("orders:write", Method::POST, "/orders", true)]
    #[case("orders:write", Method::GET, "/wallets/a", false)]
    #[case("stock:write", Method::PUT, "/stock/a", true)]
    fn scopes_allow_what_they_name(
        #[case] scope: &str,
        #[case] method: Method,
        #[case] path: &str,
        #[case] allowed: bool,
    ) {
        // Proves the scope table: read is GET only, write is any method, * is all.
        let scope: Scope = scope.parse().expect("valid");
        let resource = Resource::of_path(path).expect("an API path");
        assert_eq!(scope.allows(&method, resource), allowed);
    }

    #[rstest::rstest]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"00\"\nscopes = [\"*\"]",
        "64 hexadecimal"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"orders:delete\"]",
        ":read or :write"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"*\"]\nrate_per_second = 0",
        "positive"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = []\ncolour = 1",
        "unknown field"
    )]
    fn bad_keys_files_are_refused_with_the_reason(#[case] text: &str, #[case] reason: &str) {
        // Proves a keys file with a mistake is refused, naming the mistake.
        let text = text.replace("{h}", &to_hex(&hash_key("k")));
        let error = parse_keys(&text).expect_err("refused").to_string();
        assert!(error.contains(reason), "{error}");
    }

    #[test]
    fn only_the_hash_of_a_key_authenticates_it() {
        // Proves a key is found by its hash and a near miss is not.
        let key = new_key();
        let text = format!(
            "[[key]]\nname = \"shop\"\nsha256 = \"{}\"\nscopes = [\"orders:write\"]",
            to_hex(&hash_key(&key))
        );
        let gateway = Gateway::new(parse_keys(&text).expect("valid"));
        assert_eq!(
            gateway
                .authenticate(&key)
                .map(|index| gateway.keys[index].name.as_str()),
            Some("shop")
        );
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push('x');
        assert!(gateway.authenticate(&wrong).is_none());
        assert!(gateway.authenticate("").is_none());
    }
}
