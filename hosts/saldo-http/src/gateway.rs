//! The optional gateway: API keys, their principals and scopes, per-key
//! rate limits, request validation and size limits, as one layer in front of
//! the API (dev mode) or of the reverse proxy (`saldo gateway`). Deployments
//! may bypass it (ADR 0013 says what that means).
//!
//! Keys are stored as SHA-256 hashes only; a presented key is hashed and
//! compared with every stored hash in constant time, so neither the stored
//! keys nor the comparison leak the secret. Each key is a principal (its
//! name) acting for a set of customers, or for all of them (a back-office
//! key), with scopes that mean exactly what they name ([`Scope`]). Checks
//! run in this order: authentication (401), scope (403 `scope_missing`),
//! rate limit (429), body (413, 415, 400), customer (403
//! `customer_forbidden`).
//!
//! The gateway forwards who the client is in [`PRINCIPAL`],
//! [`PRINCIPAL_CUSTOMERS`] and [`PRINCIPAL_SCOPES`], which it sets itself
//! after removing whatever the client sent under those names. The services
//! namespace idempotency keys by the principal and check the customers
//! again, including on the routes where only the stored row names the
//! customer (`GET /orders/{id}`), and check the scopes again with the same
//! table ([`Forwarded::allows`]; the operator API more strictly, in
//! `crate::admin`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use saldo_types::{CustomerId, Principal};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::IDEMPOTENCY_KEY;
use crate::context::{body_read_timeout, parse_json, read_body, require_json};
use crate::problem::Problem;

/// The API-key header (`Authorization: Bearer KEY` is accepted too).
pub const API_KEY: &str = "x-api-key";
/// Set by the gateway on every request it admits: the principal (the key's
/// name). A client's own header of this name is removed, never forwarded.
pub const PRINCIPAL: HeaderName = HeaderName::from_static("saldo-principal");
/// Set by the gateway with [`PRINCIPAL`]: the customers the principal acts
/// for, comma-separated, or `*` for all.
pub const PRINCIPAL_CUSTOMERS: HeaderName = HeaderName::from_static("saldo-principal-customers");
/// Set by the gateway with [`PRINCIPAL`]: the key's scopes by their names
/// ([`Scope::NAMES`]), comma-separated.
pub const PRINCIPAL_SCOPES: HeaderName = HeaderName::from_static("saldo-principal-scopes");
/// Every header the gateway sets about the principal, and so removes from
/// what a client sends.
pub const PRINCIPAL_HEADERS: [HeaderName; 3] = [PRINCIPAL, PRINCIPAL_CUSTOMERS, PRINCIPAL_SCOPES];
/// Requests per second a key may make unless configured otherwise.
pub const RATE_PER_SECOND_DEFAULT: u32 = 100;
/// Requests a key may make in a burst unless configured otherwise.
pub const BURST_DEFAULT: u32 = 200;
/// The most customers one key may act for; a longer list is a back-office
/// key in disguise (and would not fit in a header).
pub const KEY_CUSTOMERS_MAX: usize = 100;
/// Paths served without a key: probes, metrics and the API description.
pub const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
/// Requests per second all clients together may make to [`OPEN_PATHS`]:
/// far above what probes and scrapers need, far below what would let an
/// anonymous client keep `/readyz` querying the database.
pub const OPEN_RATE_PER_SECOND: u32 = 50;
/// The burst all clients together may make to [`OPEN_PATHS`].
pub const OPEN_BURST: u32 = 100;

/// What a key may do. Each scope grants exactly the operation it names: a
/// write grants no read, and top-ups are not wallet reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `*`: every operation, including routes no other scope names.
    All,
    /// `orders:read`: `GET /orders/{order_id}`.
    OrdersRead,
    /// `orders:write`: `POST /orders`.
    OrdersWrite,
    /// `wallets:read`: `GET /wallets/{customer}`.
    WalletsRead,
    /// `wallets:top-up`: `POST /wallets/{customer}/top-ups`.
    WalletsTopUp,
    /// `stock:read`: `GET /stock/{sku}`.
    StockRead,
    /// `stock:write`: `PUT /stock/{sku}`.
    StockWrite,
    /// `admin`: every route under `/admin` (ADR 0017), reads and
    /// interventions alike. Only this scope and `*` reach them, and only for
    /// a key that acts for every customer.
    Admin,
}

impl Scope {
    /// The scope's name, as the keys file spells it.
    pub fn name(self) -> &'static str {
        Scope::NAMES
            .iter()
            .find(|(_, scope)| *scope == self)
            .map(|(name, _)| *name)
            .expect("every scope is named in Scope::NAMES")
    }

    /// Whether the scope grants the operator API (`admin` or `*`).
    pub fn grants_admin(self) -> bool {
        self.allows(&Operation::Admin)
    }

    /// Every scope with its name, as the keys file and `saldo api-key` spell it.
    pub const NAMES: [(&'static str, Scope); 8] = [
        ("*", Scope::All),
        ("orders:read", Scope::OrdersRead),
        ("orders:write", Scope::OrdersWrite),
        ("wallets:read", Scope::WalletsRead),
        ("wallets:top-up", Scope::WalletsTopUp),
        ("stock:read", Scope::StockRead),
        ("stock:write", Scope::StockWrite),
        ("admin", Scope::Admin),
    ];

    fn allows(self, operation: &Operation) -> bool {
        matches!(
            (self, operation),
            (Scope::All, _)
                | (Scope::OrdersRead, Operation::ReadOrder)
                | (Scope::OrdersWrite, Operation::PlaceOrder)
                | (Scope::WalletsRead, Operation::ReadWallet(_))
                | (Scope::WalletsTopUp, Operation::TopUp(_))
                | (Scope::StockRead, Operation::ReadStock)
                | (Scope::StockWrite, Operation::SetStock)
                | (Scope::Admin, Operation::Admin)
        )
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        if let Some((_, scope)) = Scope::NAMES.iter().find(|(name, _)| *name == text) {
            return Ok(*scope);
        }
        let names: Vec<&str> = Scope::NAMES.iter().map(|(name, _)| *name).collect();
        if text == "wallets:write" {
            return Err(
                "scope \"wallets:write\" no longer exists: use wallets:top-up to top up and wallets:read to read"
                    .to_owned(),
            );
        }
        Err(format!(
            "scope {text:?} is unknown; scopes are {}",
            names.join(", ")
        ))
    }
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
    /// `/admin/{service}/...`: that service's part of the operator API.
    Admin(saldo_domain::messages::Service),
}

impl Resource {
    /// The resource a path belongs to.
    pub fn of_path(path: &str) -> Option<Resource> {
        match path.trim_start_matches('/').split('/').next()? {
            "orders" => Some(Resource::Orders),
            "wallets" => Some(Resource::Wallets),
            "stock" => Some(Resource::Stock),
            "admin" => {
                let service = path.trim_start_matches('/').split('/').nth(1)?;
                saldo_domain::messages::Service::ALL
                    .into_iter()
                    .find(|candidate| candidate.name() == service)
                    .map(Resource::Admin)
            }
            _ => None,
        }
    }
}

/// What a request asks to do, read from its method and exact path. A path
/// segment is taken as sent (not percent-decoded): a customer-bound key only
/// reaches the literal customer ids it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    PlaceOrder,
    ReadOrder,
    TopUp(String),
    ReadWallet(String),
    SetStock,
    ReadStock,
    /// Anything under `/admin/`: the operator API.
    Admin,
    /// Anything else: only `*` reaches it (the service then answers 404 or 405).
    Other,
}

impl Operation {
    fn of(method: &Method, path: &str) -> Operation {
        let read = method == Method::GET || method == Method::HEAD;
        let segments: Vec<&str> = match path.strip_prefix('/') {
            Some(rest) => rest.split('/').collect(),
            None => return Operation::Other,
        };
        match (segments.as_slice(), read) {
            (["orders"], false) if method == Method::POST => Operation::PlaceOrder,
            (["orders", id], true) if !id.is_empty() => Operation::ReadOrder,
            (["wallets", customer], true) if !customer.is_empty() => {
                Operation::ReadWallet((*customer).to_owned())
            }
            (["wallets", customer, "top-ups"], false)
                if method == Method::POST && !customer.is_empty() =>
            {
                Operation::TopUp((*customer).to_owned())
            }
            (["stock", sku], true) if !sku.is_empty() => Operation::ReadStock,
            (["stock", sku], false) if method == Method::PUT && !sku.is_empty() => {
                Operation::SetStock
            }
            (["admin", rest @ ..], _)
                if !rest.is_empty() && rest.iter().all(|segment| !segment.is_empty()) =>
            {
                Operation::Admin
            }
            _ => Operation::Other,
        }
    }

    /// The customer named by the path, if the operation has one there.
    fn path_customer(&self) -> Option<&str> {
        match self {
            Operation::TopUp(customer) | Operation::ReadWallet(customer) => Some(customer),
            _ => None,
        }
    }
}

/// The customers a principal acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Customers {
    /// Every customer: a back-office key.
    All,
    /// Only these.
    Only(BTreeSet<CustomerId>),
}

impl Customers {
    /// Whether a request for `customer` is allowed.
    pub fn permit(&self, customer: &str) -> bool {
        match self {
            Customers::All => true,
            Customers::Only(customers) => customers.iter().any(|known| known.as_str() == customer),
        }
    }

    /// The header form: `*`, or the ids joined by commas (ids have no commas).
    fn to_header(&self) -> String {
        match self {
            Customers::All => "*".to_owned(),
            Customers::Only(customers) => customers
                .iter()
                .map(CustomerId::as_str)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn from_header(text: &str) -> Option<Customers> {
        if text == "*" {
            return Some(Customers::All);
        }
        let customers = text
            .split(',')
            .map(|id| CustomerId::new(id).ok())
            .collect::<Option<BTreeSet<CustomerId>>>()?;
        (!customers.is_empty() && customers.len() <= KEY_CUSTOMERS_MAX)
            .then_some(Customers::Only(customers))
    }
}

/// The header form of scopes: their names joined by commas (no name has one).
fn scopes_to_header(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn scopes_from_header(text: &str) -> Option<Vec<Scope>> {
    let scopes = text
        .split(',')
        .map(|name| name.parse::<Scope>().ok())
        .collect::<Option<Vec<Scope>>>()?;
    (!scopes.is_empty()).then_some(scopes)
}

/// Who the gateway says the client is, as the services read it from
/// [`PRINCIPAL`], [`PRINCIPAL_CUSTOMERS`] and [`PRINCIPAL_SCOPES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The authenticated principal.
    pub principal: Principal,
    /// The customers it acts for.
    pub customers: Customers,
    /// What its key may do.
    pub scopes: Vec<Scope>,
}

impl Forwarded {
    /// Reads the forwarded principal: `None` when no gateway is in front
    /// (none of the headers), 400 `principal_header_invalid` when the three
    /// headers are not all present, single and well-formed.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Forwarded>, Problem> {
        let [principal, customers, scopes] =
            PRINCIPAL_HEADERS.map(|name| headers.get_all(name).iter().collect::<Vec<_>>());
        if principal.is_empty() && customers.is_empty() && scopes.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "principal_header_invalid",
                "The forwarded principal is malformed",
                format!(
                    "{PRINCIPAL}, {PRINCIPAL_CUSTOMERS} and {PRINCIPAL_SCOPES} are set by the gateway, once each and together"
                ),
            )
        };
        let ([principal], [customers], [scopes]) = (
            principal.as_slice(),
            customers.as_slice(),
            scopes.as_slice(),
        ) else {
            return Err(invalid());
        };
        let principal = principal
            .to_str()
            .ok()
            .and_then(|text| Principal::new(text).ok())
            .ok_or_else(invalid)?;
        let customers = customers
            .to_str()
            .ok()
            .and_then(Customers::from_header)
            .ok_or_else(invalid)?;
        let scopes = scopes
            .to_str()
            .ok()
            .and_then(scopes_from_header)
            .ok_or_else(invalid)?;
        Ok(Some(Forwarded {
            principal,
            customers,
            scopes,
        }))
    }

    /// Whether the forwarded scopes grant `method path`, by the gateway's
    /// own table ([`Scope`]).
    pub fn allows(&self, method: &Method, path: &str) -> bool {
        let operation = Operation::of(method, path);
        self.scopes.iter().any(|scope| scope.allows(&operation))
    }

    /// Whether the principal may use the operator API: a scope granting it
    /// and every customer (ADR 0017).
    pub fn is_admin(&self) -> bool {
        self.customers == Customers::All && self.scopes.iter().any(|scope| scope.grants_admin())
    }

    /// Replaces whatever `headers` say about the principal with this one.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        for name in PRINCIPAL_HEADERS {
            headers.remove(name);
        }
        headers.insert(
            PRINCIPAL,
            HeaderValue::from_str(self.principal.as_str()).expect("a principal is a header value"),
        );
        headers.insert(
            PRINCIPAL_CUSTOMERS,
            HeaderValue::from_str(&self.customers.to_header())
                .expect("customer ids are header values"),
        );
        headers.insert(
            PRINCIPAL_SCOPES,
            HeaderValue::from_str(&scopes_to_header(&self.scopes))
                .expect("scope names are header values"),
        );
    }
}

/// One API key as configured: its principal, hash, customers, scopes and rate.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Who holds it: logged, forwarded to the services as [`PRINCIPAL`],
    /// and the namespace of its idempotency keys (never the key itself).
    pub name: Principal,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Whom it acts for.
    pub customers: Customers,
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
    /// Not TOML of the expected shape (the text names the line).
    #[error("keys file{0}")]
    Malformed(String),
    /// No `[[key]]` entry at all: a gateway started on it would admit nobody.
    #[error(
        "keys file has no [[key]] entry, so the gateway would admit nobody (issue keys with saldo api-key)"
    )]
    Empty,
    /// A key entry is invalid.
    #[error("keys file line {line}, key {name:?}: {reason}")]
    Invalid {
        /// The line (from 1) of the offending value.
        line: usize,
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
    name: toml::Spanned<String>,
    sha256: toml::Spanned<String>,
    customers: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
    scopes: Vec<toml::Spanned<String>>,
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
/// customers = ["alice", "bob"]   # or ["*"] for a back-office key
/// scopes = ["orders:write", "orders:read", "wallets:read"]
/// rate_per_second = 50
/// burst = 100
/// ```
///
/// A mistake is refused with the line it is on; there is no default for
/// `customers`, so a key written before keys had principals is refused
/// rather than silently acting for everyone.
pub fn parse_keys(text: &str) -> Result<Vec<ApiKey>, KeysError> {
    let line_of = |span: std::ops::Range<usize>| {
        1 + text.as_bytes()[..span.start.min(text.len())]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count()
    };
    let file: KeysFile = toml::from_str(text).map_err(|error| {
        let message = error.message().to_owned();
        KeysError::Malformed(match error.span() {
            Some(span) => format!(" line {}: {message}", line_of(span)),
            None => format!(": {message}"),
        })
    })?;
    if file.key.is_empty() {
        return Err(KeysError::Empty);
    }
    let mut keys: Vec<ApiKey> = Vec::with_capacity(file.key.len());
    for entry in file.key {
        let name_text = entry.name.get_ref().clone();
        let invalid = |span: std::ops::Range<usize>, reason: String| KeysError::Invalid {
            line: line_of(span),
            name: name_text.clone(),
            reason,
        };
        let name = Principal::new(name_text.as_str())
            .map_err(|error| invalid(entry.name.span(), format!("name: {error}")))?;
        let hash = parse_hash(entry.sha256.get_ref()).ok_or_else(|| {
            invalid(
                entry.sha256.span(),
                "sha256 must be 64 hexadecimal digits".to_owned(),
            )
        })?;
        let Some(customers) = &entry.customers else {
            return Err(invalid(
                entry.name.span(),
                "customers is missing: list the customers the key acts for, or [\"*\"] for a back-office key".to_owned(),
            ));
        };
        let customers =
            parse_customers(customers).map_err(|(span, reason)| invalid(span, reason))?;
        let mut scopes = Vec::with_capacity(entry.scopes.len());
        for scope in &entry.scopes {
            scopes.push(
                scope
                    .get_ref()
                    .parse()
                    .map_err(|reason| invalid(scope.span(), reason))?,
            );
        }
        if scopes.is_empty() {
            return Err(invalid(
                entry.name.span(),
                "scopes must name at least one scope".to_owned(),
            ));
        }
        let rate_per_second = entry.rate_per_second.unwrap_or(RATE_PER_SECOND_DEFAULT);
        let burst = entry.burst.unwrap_or(BURST_DEFAULT);
        if rate_per_second == 0 || burst == 0 {
            return Err(invalid(
                entry.name.span(),
                "rate_per_second and burst must be positive".to_owned(),
            ));
        }
        if keys.iter().any(|key| key.name == name) {
            return Err(invalid(
                entry.name.span(),
                "the name is used twice".to_owned(),
            ));
        }
        // One key, one principal: a copied entry whose hash was not changed
        // would otherwise give the key whichever entry comes last.
        if let Some(other) = keys.iter().find(|key| key.hash == hash) {
            return Err(invalid(
                entry.sha256.span(),
                format!(
                    "the same key (sha256) is already the key of {:?}",
                    other.name.as_str()
                ),
            ));
        }
        keys.push(ApiKey {
            name,
            hash,
            customers,
            scopes,
            rate_per_second,
            burst,
        });
    }
    Ok(keys)
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut hash = [0_u8; 32];
    for (index, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
        hash[index] = u8::from_str_radix(text, 16).expect("checked hex");
    }
    Some(hash)
}

type Spanned<T> = toml::Spanned<T>;

fn parse_customers(
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<Customers, (std::ops::Range<usize>, String)> {
    let entries = list.get_ref();
    if entries.iter().any(|entry| entry.get_ref() == "*") {
        return if entries.len() == 1 {
            Ok(Customers::All)
        } else {
            Err((
                list.span(),
                "customers is either [\"*\"] or a list of customer ids, not both".to_owned(),
            ))
        };
    }
    if entries.is_empty() {
        return Err((
            list.span(),
            "customers must not be empty (use [\"*\"] for a back-office key)".to_owned(),
        ));
    }
    if entries.len() > KEY_CUSTOMERS_MAX {
        return Err((
            list.span(),
            format!(
                "customers lists more than {KEY_CUSTOMERS_MAX} ids; use [\"*\"] for a back-office key"
            ),
        ));
    }
    let mut customers = BTreeSet::new();
    for entry in entries {
        let customer = CustomerId::new(entry.get_ref().as_str())
            .map_err(|error| (entry.span(), format!("customers: {error}")))?;
        if !customers.insert(customer) {
            return Err((
                entry.span(),
                format!("customers lists {:?} twice", entry.get_ref()),
            ));
        }
    }
    Ok(Customers::Only(customers))
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

async fn check(gateway: &Gateway, mut request: Request) -> Result<Request, Problem> {
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
    let operation = Operation::of(&method, request.uri().path());
    if !key.scopes.iter().any(|scope| scope.allows(&operation)) {
        return Err(scope_missing(&key.name, &method, request.uri().path()));
    }
    gateway.take_token(index).map_err(|retry_after_ms| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests for this API key",
            format!(
                "key {:?} is limited to {} requests per second (burst {})",
                key.name.as_str(),
                key.rate_per_second,
                key.burst
            ),
        )
        .retry_after_ms(retry_after_ms)
    })?;
    tracing::debug!(key = %key.name, "admitted");
    // The client's own principal headers are replaced, never forwarded.
    Forwarded {
        principal: key.name.clone(),
        customers: key.customers.clone(),
        scopes: key.scopes.clone(),
    }
    .write_to(request.headers_mut());
    let (request, body_customer) = validate(request, &operation).await?;
    let customer = operation.path_customer().or(body_customer.as_deref());
    let acts_for_customer = matches!(
        operation,
        Operation::PlaceOrder | Operation::TopUp(_) | Operation::ReadWallet(_)
    );
    if operation == Operation::Admin && key.customers != Customers::All {
        return Err(Problem::customer_forbidden(format!(
            "key {:?} acts for some customers only; the operator API needs a key for all of them",
            key.name.as_str(),
        )));
    }
    if acts_for_customer && !customer.is_some_and(|customer| key.customers.permit(customer)) {
        return Err(Problem::customer_forbidden(format!(
            "key {:?} does not act for customer {:?}",
            key.name.as_str(),
            customer.unwrap_or("")
        )));
    }
    Ok(request)
}

/// 403 `scope_missing`: `principal`'s scopes do not grant `method path`.
pub(crate) fn scope_missing(principal: &Principal, method: &Method, path: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "scope_missing",
        "The API key may not do this",
        format!(
            "key {:?} has no scope for {method} {path}",
            principal.as_str()
        ),
    )
}

fn unauthorized(code: &'static str, detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        code,
        "A valid API key is required",
        detail,
    )
}

/// The one body field the gateway reads: whom a new order is for. Like
/// the service's own parse, a repeated `customer` member is refused, so the
/// gateway and the service never read different customers from one body.
#[derive(Deserialize)]
struct OrderCustomer {
    customer: Option<String>,
}

/// Body checks: writes carry JSON of bounded size that parses, and POSTs
/// carry exactly one idempotency key. The services check all of this again;
/// the gateway refuses early so that bad traffic never reaches them. Returns
/// the request and, for `POST /orders`, the customer its body names.
async fn validate(
    request: Request,
    operation: &Operation,
) -> Result<(Request, Option<String>), Problem> {
    let method = request.method().clone();
    if method != Method::POST && method != Method::PUT {
        return Ok((request, None));
    }
    // Interventions need no idempotency key: a repeat is refused by the
    // order's version check (`expected_version`) or finds its dead letter
    // already settled (ADR 0017).
    if method == Method::POST && *operation != Operation::Admin {
        match request.headers().get_all(&IDEMPOTENCY_KEY).iter().count() {
            0 => return Err(Problem::idempotency_key_missing()),
            1 => {}
            _ => return Err(Problem::idempotency_key_repeated()),
        }
    }
    require_json(request.headers())?;
    let (mut parts, body) = request.into_parts();
    let bytes = read_body(body, body_read_timeout(&parts.extensions)).await?;
    parse_json::<serde::de::IgnoredAny>(&bytes)?;
    let customer = match operation {
        Operation::PlaceOrder => serde_json::from_slice::<OrderCustomer>(&bytes)
            .ok()
            .and_then(|body| body.customer),
        _ => None,
    };
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(u64::try_from(bytes.len()).unwrap_or(u64::MAX)),
    );
    Ok((Request::from_parts(parts, Body::from(bytes)), customer))
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
    #[case("*", Method::DELETE, "/orders/1", true)]
    #[case("orders:read", Method::GET, "/orders/1", true)]
    #[case("orders:read", Method::HEAD, "/orders/1", true)]
    #[case("orders:read", Method::POST, "/orders", false)]
    #[case("orders:write", Method::POST, "/orders", true)]
    #[case::a_write_grants_no_read("orders:write", Method::GET, "/orders/1", false)]
    #[case("orders:write", Method::GET, "/wallets/a", false)]
    #[case::write_is_not_every_method("orders:write", Method::DELETE, "/orders/1", false)]
    #[case("wallets:top-up", Method::POST, "/wallets/a/top-ups", true)]
    #[case::a_top_up_grants_no_read("wallets:top-up", Method::GET, "/wallets/a", false)]
    #[case("wallets:read", Method::GET, "/wallets/a", true)]
    #[case("wallets:read", Method::POST, "/wallets/a/top-ups", false)]
    #[case("stock:write", Method::PUT, "/stock/a", true)]
    #[case::stock_write_grants_no_read("stock:write", Method::GET, "/stock/a", false)]
    #[case("stock:read", Method::GET, "/stock/a", true)]
    #[case::paths_are_exact("wallets:read", Method::GET, "//wallets/a", false)]
    #[case::no_extra_segments("wallets:read", Method::GET, "/wallets/a/..", false)]
    #[case("admin", Method::GET, "/admin/order/orders", true)]
    #[case("admin", Method::POST, "/admin/order/orders/o1", true)]
    #[case::admin_grants_nothing_else("admin", Method::GET, "/orders/o1", false)]
    #[case::no_other_scope_grants_admin("orders:read", Method::GET, "/admin/order/orders", false)]
    #[case::not_even_a_write("orders:write", Method::POST, "/admin/order/orders/o1", false)]
    #[case::admin_paths_are_exact("admin", Method::GET, "/admin//orders", false)]
    fn scopes_allow_exactly_what_they_name(
        #[case] scope: &str,
        #[case] method: Method,
        #[case] path: &str,
        #[case] allowed: bool,
    ) {
        // Proves the scope table: each scope grants its one operation, no
        // write grants a read, and only * reaches anything else.
        let scope: Scope = scope.parse().expect("valid");
        assert_eq!(scope.allows(&Operation::of(&method, path)), allowed);
    }

    #[rstest::rstest]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"00\"\ncustomers = [\"*\"]\nscopes = [\"*\"]",
        "line 3, key \"a\": sha256 must be 64 hexadecimal"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = [\"orders:delete\"]",
        "line 5, key \"a\": scope \"orders:delete\" is unknown; scopes are *, orders:read"
    )]
    #[case::old_wallet_scope_is_refused_with_its_replacement(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = [\"orders:read\",\n  \"wallets:write\"]",
        "line 6, key \"a\": scope \"wallets:write\" no longer exists: use wallets:top-up"
    )]
    #[case::a_key_without_customers_is_refused(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"*\"]",
        "line 2, key \"a\": customers is missing"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = []\nscopes = [\"*\"]",
        "customers must not be empty"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"*\", \"bob\"]\nscopes = [\"*\"]",
        "either [\"*\"] or a list"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"bob\", \"bo b\"]\nscopes = [\"*\"]",
        "line 4, key \"a\": customers: customer id \"bo b\""
    )]
    #[case(
        "[[key]]\nname = \"a b\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = [\"*\"]",
        "name: principal \"a b\" may only contain"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = [\"*\"]\nrate_per_second = 0",
        "positive"
    )]
    #[case(
        "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = []\ncolour = 1",
        "line 6: unknown field `colour`"
    )]
    #[case("", "no [[key]] entry, so the gateway would admit nobody")]
    #[case(
        "[[key]]\nname = \"narrow\"\nsha256 = \"{h}\"\ncustomers = [\"alice\"]\nscopes = [\"orders:read\"]\n[[key]]\nname = \"wide\"\nsha256 = \"{h}\"\ncustomers = [\"*\"]\nscopes = [\"*\"]",
        "line 8, key \"wide\": the same key (sha256) is already the key of \"narrow\""
    )]
    #[case("# keys come later\n", "no [[key]] entry")]
    fn bad_keys_files_are_refused_with_the_line_and_the_reason(
        #[case] text: &str,
        #[case] reason: &str,
    ) {
        // Proves a keys file with a mistake is refused in one line naming
        // the line, the key and the mistake.
        let text = text.replace("{h}", &to_hex(&hash_key("k")));
        let error = parse_keys(&text).expect_err("refused").to_string();
        assert!(error.contains(reason), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn the_forwarded_principal_reads_back_what_the_gateway_writes() {
        // Proves the principal headers round-trip, a client's own copy is
        // replaced, and a partial or repeated pair is refused.
        let forwarded = Forwarded {
            principal: Principal::new("shop").expect("valid"),
            customers: Customers::Only(
                ["alice", "bob"]
                    .into_iter()
                    .map(|id| CustomerId::new(id).expect("valid"))
                    .collect(),
            ),
            scopes: vec![Scope::OrdersRead, Scope::WalletsTopUp],
        };
        let mut headers = HeaderMap::new();
        headers.insert(PRINCIPAL, HeaderValue::from_static("forged"));
        headers.insert(PRINCIPAL_CUSTOMERS, HeaderValue::from_static("*"));
        headers.insert(PRINCIPAL_SCOPES, HeaderValue::from_static("admin"));
        headers.append(PRINCIPAL_SCOPES, HeaderValue::from_static("*"));
        forwarded.write_to(&mut headers);
        assert_eq!(
            headers.get(PRINCIPAL_SCOPES).expect("set"),
            "orders:read,wallets:top-up"
        );
        assert!(!forwarded.is_admin());
        assert_eq!(
            Forwarded::from_headers(&headers).expect("valid"),
            Some(forwarded)
        );
        assert_eq!(
            Forwarded::from_headers(&HeaderMap::new()).expect("valid"),
            None
        );
        let mut unknown_scope = headers.clone();
        unknown_scope.insert(
            PRINCIPAL_SCOPES,
            HeaderValue::from_static("orders:read,root"),
        );
        assert!(Forwarded::from_headers(&unknown_scope).is_err());
        let mut without_scopes = headers.clone();
        without_scopes.remove(PRINCIPAL_SCOPES);
        assert!(Forwarded::from_headers(&without_scopes).is_err());
        headers.append(PRINCIPAL, HeaderValue::from_static("other"));
        assert!(Forwarded::from_headers(&headers).is_err());
        headers.remove(PRINCIPAL);
        assert!(Forwarded::from_headers(&headers).is_err());
    }

    #[rstest::rstest]
    #[case::admin_for_everyone("*", "admin", true)]
    #[case::all_scopes_for_everyone("*", "*", true)]
    #[case::admin_for_some_customers("alice", "admin", false)]
    #[case::no_admin_scope("*", "orders:read,wallets:read", false)]
    fn only_an_admin_scope_for_every_customer_is_an_admin(
        #[case] customers: &str,
        #[case] scopes: &str,
        #[case] admin: bool,
    ) {
        // Proves the services' reading of the operator API's rule: the
        // `admin` scope or `*`, and a principal acting for every customer.
        let mut headers = HeaderMap::new();
        headers.insert(PRINCIPAL, HeaderValue::from_static("ops"));
        headers.insert(
            PRINCIPAL_CUSTOMERS,
            HeaderValue::from_str(customers).expect("a value"),
        );
        headers.insert(
            PRINCIPAL_SCOPES,
            HeaderValue::from_str(scopes).expect("a value"),
        );
        let forwarded = Forwarded::from_headers(&headers)
            .expect("well-formed")
            .expect("forwarded");
        assert_eq!(forwarded.is_admin(), admin);
    }

    #[test]
    fn only_the_hash_of_a_key_authenticates_it() {
        // Proves a key is found by its hash and a near miss is not.
        let key = new_key();
        let text = format!(
            "[[key]]\nname = \"shop\"\nsha256 = \"{}\"\ncustomers = [\"*\"]\nscopes = [\"orders:write\"]",
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
