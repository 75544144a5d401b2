//! The REST API: orders, wallets, stock, health, readiness and metrics.
//!
//! Handlers only translate: JSON and headers into the sdk's requests, the
//! sdk's answers and refusals into JSON and problems. Every rule about
//! money, stock and saga state is decided by `saldo-domain`; writes go
//! through the engine's [`GroupCommit`], which gathers concurrent requests
//! into one transaction and commits all of each decision or none of it.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use saldo_domain::Rules;
use saldo_domain::decision::Versioned;
use saldo_domain::decision::{ReadSet, RowKey};
use saldo_domain::inventory::{
    IfMatch, PutStock, PutStockError, SetStock, SetStockError, StockRow, decide_put_stock,
    put_stock_read_set,
};
use saldo_domain::messages::OrderLine;
use saldo_domain::order::{
    OrderAccepted, OrderRequestError, OrderRow, PlaceOrder, PlaceOrderError, decide_place_order,
    line_quantity, place_order_read_set,
};
use saldo_domain::payment::{TopUp, TopUpApplied, TopUpError, decide_top_up, top_up_read_set};
use saldo_idempotency::IdempotencyKey;
use saldo_ledger::{AccountId, Entry};
use saldo_types::{Currency, CustomerId, Money, OrderId, Principal, Sku, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::context::{JsonBody, PathParam, RequestContext, observe, random_id};
use crate::gateway::Forwarded;
use crate::problem::Problem;
use saldo_engine::{Decider, ExecuteFailure, GroupCommit, Store, Unavailable, read};

/// The header naming a request's idempotency key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a response that replays a stored one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The most ledger entries `GET /wallets/{customer}` lists.
pub const WALLET_ENTRIES_MAX: usize = 100;
/// The OpenAPI document, served at `/openapi.json` and checked in.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A dependency `/readyz` checks besides the stores (the broker).
#[async_trait]
pub trait Check: Send + Sync + 'static {
    /// Its name in the readiness report.
    fn name(&self) -> &'static str;
    /// Ok when reachable.
    async fn check(&self) -> Result<(), String>;
}

/// What one process serves. A service process sets its own backend; dev
/// mode sets all three on one shared store.
#[derive(Clone)]
pub struct Api {
    /// Serves `/orders` when set.
    pub order: Option<Arc<dyn Store>>,
    /// Serves `/wallets` when set.
    pub payment: Option<Arc<dyn Store>>,
    /// Serves `/stock` when set.
    pub inventory: Option<Arc<dyn Store>>,
    /// The deciders' configuration.
    pub rules: Arc<Rules>,
    /// Extra readiness checks (the broker).
    pub checks: Vec<Arc<dyn Check>>,
    /// Renders `/metrics`; `None` serves an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// The wall clock (a parameter so that tests can pin it).
    pub clock: fn() -> Timestamp,
    /// Serves `/admin` for the services above when set (ADR 0017).
    pub operator: Option<Arc<dyn saldo_engine::OperatorStore>>,
    /// Who may call `/admin`: by default only principals the gateway
    /// forwarded with the `admin` scope.
    pub admin_access: crate::admin::AdminAccess,
}

impl Api {
    /// An API serving nothing yet, with default rules.
    pub fn new(clock: fn() -> Timestamp) -> Api {
        Api {
            order: None,
            payment: None,
            inventory: None,
            rules: Arc::new(Rules::default()),
            checks: Vec::new(),
            metrics: None,
            clock,
            operator: None,
            admin_access: crate::admin::AdminAccess::Gateway,
        }
    }

    /// The router: the configured services' routes plus health, readiness,
    /// metrics and (when it serves a service) the OpenAPI document; unknown
    /// routes and methods answer with problems. With no service set it is
    /// the probes and metrics of a process that takes no requests (an
    /// outbox publisher, the reconciler).
    pub fn router(self) -> Router {
        let mut router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_page));
        if self.order.is_some() || self.payment.is_some() || self.inventory.is_some() {
            router = router.route("/openapi.json", get(openapi));
        }
        if self.order.is_some() {
            router = router
                .route("/orders", axum::routing::post(post_order))
                .route("/orders/{order_id}", get(get_order));
        }
        if self.payment.is_some() {
            router = router
                .route(
                    "/wallets/{customer}/top-ups",
                    axum::routing::post(post_top_up),
                )
                .route("/wallets/{customer}", get(get_wallet));
        }
        if self.inventory.is_some() {
            router = router.route("/stock/{sku}", get(get_stock).put(put_stock));
        }
        let admin = self.admin();
        let served = Served::start(self);
        let router = router
            .route_layer(axum::middleware::from_fn(forwarded_scopes))
            .fallback(route_not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn(observe))
            .with_state(Arc::new(served));
        match admin {
            Some(admin) => router.merge(admin.router()),
            None => router,
        }
    }

    /// The operator API over this process's services, when it has a reader.
    fn admin(&self) -> Option<crate::admin::Admin> {
        let reader = self.operator.clone()?;
        let stores = [
            (saldo_domain::messages::Service::Order, &self.order),
            (saldo_domain::messages::Service::Inventory, &self.inventory),
            (saldo_domain::messages::Service::Payment, &self.payment),
        ]
        .into_iter()
        .filter_map(|(service, store)| Some((service, store.clone()?)))
        .collect();
        Some(crate::admin::Admin {
            reader,
            stores,
            rules: self.rules.clone(),
            clock: self.clock,
            access: self.admin_access,
        })
    }
}

/// An API being served: its configuration and the group committers of its
/// writes (started with the router, on the current runtime).
struct Served {
    api: Api,
    place_order: Option<GroupCommit<PlaceOrder, OrderAccepted, PlaceOrderError>>,
    top_up: Option<GroupCommit<TopUp, TopUpApplied, TopUpError>>,
    put_stock: Option<GroupCommit<PutStock, Versioned<StockRow>, PutStockError>>,
}

impl Served {
    fn start(api: Api) -> Served {
        let clock = api.clock;
        let place_order = api.order.clone().map(|store| {
            let rules = api.rules.clone();
            let decide: Arc<Decider<PlaceOrder, OrderAccepted, PlaceOrderError>> =
                Arc::new(move |request, snapshot, now| {
                    decide_place_order(&rules.order_saga, snapshot, request, now)
                });
            GroupCommit::start(store, clock, place_order_read_set, decide)
        });
        let top_up = api.payment.clone().map(|store| {
            let rules = api.rules.clone();
            let decide: Arc<Decider<TopUp, TopUpApplied, TopUpError>> =
                Arc::new(move |request, snapshot, now| {
                    decide_top_up(&rules.payment, snapshot, request, now)
                });
            GroupCommit::start(store, clock, top_up_read_set, decide)
        });
        let put_stock = api.inventory.clone().map(|store| {
            let decide: Arc<Decider<PutStock, Versioned<StockRow>, PutStockError>> =
                Arc::new(|request, snapshot, _now| decide_put_stock(snapshot, request));
            GroupCommit::start(store, clock, put_stock_read_set, decide)
        });
        Served {
            api,
            place_order,
            top_up,
            put_stock,
        }
    }
}

impl std::ops::Deref for Served {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

fn committer<T>(committer: &Option<T>) -> &T {
    // Routes are only registered when their store is configured.
    committer
        .as_ref()
        .expect("a write route is served only with its store")
}

type Shared = State<Arc<Served>>;

/// 404 for a path no route serves.
pub async fn route_not_found() -> Problem {
    Problem::not_found("route_not_found", "no resource lives at this path")
}

/// 405 for a method a route does not serve.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "this resource does not support the method",
    )
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// What `/readyz` says of a dependency that did not answer.
const UNREACHABLE: &str = "unreachable";

async fn readyz(State(api): Shared) -> Response {
    let mut checks = serde_json::Map::new();
    let mut failures = Vec::new();
    let stores = [
        ("order_database", &api.order),
        ("payment_database", &api.payment),
        ("inventory_database", &api.inventory),
    ];
    for (name, backend) in stores {
        if let Some(backend) = backend {
            match backend.ready().await {
                Ok(()) => checks.insert(name.to_owned(), json!("ok")),
                Err(error) => {
                    // The cause is for operators; an anonymous prober learns
                    // only which dependency is down.
                    tracing::warn!(dependency = name, %error, "not ready");
                    failures.push(name);
                    checks.insert(name.to_owned(), json!(UNREACHABLE))
                }
            };
        }
    }
    for check in &api.checks {
        match check.check().await {
            Ok(()) => checks.insert(check.name().to_owned(), json!("ok")),
            Err(error) => {
                tracing::warn!(dependency = check.name(), %error, "not ready");
                failures.push(check.name());
                checks.insert(check.name().to_owned(), json!(UNREACHABLE))
            }
        };
    }
    if failures.is_empty() {
        axum::Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "A dependency is unreachable",
            format!("unreachable: {}", failures.join(", ")),
        )
        .into_response()
    }
}

async fn metrics_page(State(api): Shared) -> Response {
    metrics_response(api.metrics.as_ref())
}

/// The Prometheus page, empty when no recorder is installed.
pub fn metrics_response(metrics: Option<&PrometheusHandle>) -> Response {
    let body = metrics.map(PrometheusHandle::render).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The required `Idempotency-Key` header, exactly once.
fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let value = values.next().ok_or_else(Problem::idempotency_key_missing)?;
    if values.next().is_some() {
        return Err(Problem::idempotency_key_repeated());
    }
    value
        .to_str()
        .ok()
        .and_then(|text| IdempotencyKey::new(text).ok())
        .ok_or_else(|| {
            Problem::invalid_field(
                "Idempotency-Key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })
}

/// The scopes the gateway forwarded, checked again for the request: a
/// principal reaches only the operations its key's scopes name, whichever
/// customers it acts for, so no deployment relies on the gateway alone. A
/// request without a forwarded principal (no gateway) and the open paths
/// pass; malformed principal headers are 400 here, for every route (a
/// handler that never reads them must not let them through unchecked).
async fn forwarded_scopes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if crate::gateway::OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    match Forwarded::from_headers(request.headers()) {
        Err(problem) => return problem.into_response(),
        Ok(Some(forwarded)) if !forwarded.allows(request.method(), path) => {
            return crate::gateway::scope_missing(&forwarded.principal, request.method(), path)
                .into_response();
        }
        Ok(_) => {}
    }
    next.run(request).await
}

/// The principal the gateway forwarded, after checking that it acts for
/// `customer`; `None` without a gateway. The gateway checked this already;
/// the service checks again so that no deployment depends on one layer.
fn principal_for(headers: &HeaderMap, customer: &CustomerId) -> Result<Option<Principal>, Problem> {
    let Some(forwarded) = Forwarded::from_headers(headers)? else {
        return Ok(None);
    };
    if !forwarded.customers.permit(customer.as_str()) {
        return Err(Problem::customer_forbidden(format!(
            "key {:?} does not act for customer {customer:?}",
            forwarded.principal.as_str(),
        )));
    }
    Ok(Some(forwarded.principal))
}

fn parse_field<T, E: std::fmt::Display>(
    field: impl Into<String>,
    parsed: Result<T, E>,
) -> Result<T, Problem> {
    let field = field.into();
    parsed.map_err(|error| Problem::invalid_field(field.clone(), format!("{field}: {error}")))
}

fn currency(field: &str, code: &str) -> Result<Currency, Problem> {
    parse_field(field, Currency::from_code(code))
}

/// The answer to a conflict storm or a store failure. Nothing was written.
fn store_problem<E>(failure: ExecuteFailure<E>, reject: impl FnOnce(E) -> Problem) -> Problem {
    match failure {
        ExecuteFailure::Rejected(error) => reject(error),
        ExecuteFailure::Conflict(conflict) => {
            tracing::warn!(%conflict, "contention outlasted the decide attempts");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "contention",
                "Too many concurrent changes to the same rows; nothing was written",
                "other requests kept changing the rows this one needs; retry later",
            )
            .retry_after_ms(1_000)
        }
        ExecuteFailure::Unavailable(error) => Problem::unavailable(error),
        ExecuteFailure::Refused(reason) => {
            tracing::error!(alert = true, %reason, "the store refused a decided commit");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "commit_refused",
                "The request was decided but could not be stored; nothing was written",
                "the store refused the commit; operators have the details",
            )
        }
    }
}

fn backend(backend: &Option<Arc<dyn Store>>) -> &dyn Store {
    // Routes are only registered when their backend is configured.
    backend
        .as_deref()
        .expect("a route is served only with its backend")
}

fn created(location: String, replayed: bool, body: Value) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(
        IDEMPOTENT_REPLAYED,
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    );
    response
}

/// `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    customer: String,
    currency: String,
    lines: Vec<LineRequest>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    sku: String,
    // Any integer, so that a negative quantity is refused by the sdk like
    // zero is, not by the JSON parser under another code.
    quantity: i64,
}

async fn post_order(
    State(api): Shared,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<OrderRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let mut lines = Vec::with_capacity(body.lines.len());
    for (index, line) in body.lines.into_iter().enumerate() {
        lines.push(OrderLine {
            sku: parse_field(format!("lines[{index}].sku"), Sku::new(line.sku))?,
            quantity: line_quantity(index, line.quantity)
                .map_err(|invalid| place_order_problem(PlaceOrderError::Invalid(invalid)))?,
        });
    }
    let customer = parse_field("customer", CustomerId::new(body.customer))?;
    let principal = principal_for(&headers, &customer)?;
    let request = PlaceOrder {
        order_id: OrderId::new(format!("ord_{}", random_id().to_hex()))
            .expect("a generated id is valid"),
        customer,
        lines,
        currency: currency("currency", &body.currency)?,
        idempotency_key: key,
        principal,
        correlation_id: context.correlation_id,
        traceparent: context.traceparent,
    };
    let accepted = committer(&api.place_order)
        .submit(request)
        .await
        .map_err(|failure| store_problem(failure, place_order_problem))?;
    if !accepted.replayed {
        metrics::counter!("saldo_orders_placed_total").increment(1);
        tracing::info!(order_id = %accepted.order_id, "order placed");
    }
    let location = format!("/orders/{}", accepted.order_id);
    Ok(created(
        location.clone(),
        accepted.replayed,
        json!({ "order_id": accepted.order_id, "links": { "self": location } }),
    ))
}

fn place_order_problem(error: PlaceOrderError) -> Problem {
    let detail = error.to_string();
    match error {
        PlaceOrderError::Invalid(invalid) => {
            let (code, field) = match invalid {
                OrderRequestError::LinesEmpty => ("lines_empty", "lines".to_owned()),
                OrderRequestError::LinesTooMany => ("lines_too_many", "lines".to_owned()),
                OrderRequestError::QuantityMustBePositive { line } => (
                    "quantity_must_be_positive",
                    format!("lines[{line}].quantity"),
                ),
                OrderRequestError::QuantityTooLarge { line } => {
                    ("quantity_too_large", format!("lines[{line}].quantity"))
                }
                OrderRequestError::SkuDuplicated { line } => {
                    ("sku_duplicated", format!("lines[{line}].sku"))
                }
            };
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                "The order is invalid",
                detail,
            )
            .field(field)
        }
        PlaceOrderError::IdempotencyKeyReused => idempotency_key_reused(detail),
        PlaceOrderError::IdempotencyKeyInFlight { retry_after_ms } => {
            idempotency_key_in_flight(detail, retry_after_ms)
        }
        PlaceOrderError::OrderIdTaken(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "order_id_collision",
            "A generated order id collided; nothing was written",
            "retry the request with the same Idempotency-Key",
        )
        .retry_after_ms(0),
    }
}

fn idempotency_key_reused(detail: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "The idempotency key was used for a different request",
        detail,
    )
    .field("Idempotency-Key")
}

fn idempotency_key_in_flight(detail: String, retry_after_ms: u64) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_flight",
        "A request with this idempotency key is still being processed",
        detail,
    )
    .field("Idempotency-Key")
    .retry_after_ms(retry_after_ms)
}

/// `GET /orders/{order_id}`: the order with its saga history. An order of a
/// customer the forwarded principal does not act for is answered exactly
/// like one that does not exist, so a key cannot probe for others' orders.
async fn get_order(
    State(api): Shared,
    PathParam(order_id): PathParam,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let forwarded = Forwarded::from_headers(&headers)?;
    let order_id = parse_field("order_id", OrderId::new(order_id))?;
    let snapshot = read(
        backend(&api.order),
        &ReadSet {
            rows: vec![RowKey::Order(order_id.clone())],
            ..ReadSet::default()
        },
    )
    .await
    .map_err(Problem::unavailable)?;
    let (_, row) = snapshot.order(&order_id);
    let visible = |row: &&OrderRow| {
        forwarded
            .as_ref()
            .is_none_or(|forwarded| forwarded.customers.permit(row.customer.as_str()))
    };
    let row = row.filter(visible).ok_or_else(|| {
        Problem::not_found(
            "order_not_found",
            format!("order {order_id} does not exist"),
        )
    })?;
    Ok(axum::Json(saldo_domain::order::view(&api.rules.order_saga, row)).into_response())
}

/// `POST /wallets/{customer}/top-ups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpRequest {
    amount_minor: i64,
    currency: String,
}

async fn post_top_up(
    State(api): Shared,
    Extension(context): Extension<RequestContext>,
    PathParam(customer): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TopUpRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let customer = parse_field("customer", CustomerId::new(customer))?;
    let principal = principal_for(&headers, &customer)?;
    let request = TopUp {
        amount: Money::from_minor(body.amount_minor, currency("currency", &body.currency)?),
        customer,
        idempotency_key: key,
        principal,
        correlation_id: context.correlation_id,
        traceparent: context.traceparent,
    };
    let applied = committer(&api.top_up)
        .submit(request)
        .await
        .map_err(|failure| store_problem(failure, top_up_problem))?;
    let location = format!("/wallets/{}", applied.customer);
    Ok(created(
        location,
        applied.replayed,
        json!({
            "customer": applied.customer,
            "posting_id": applied.posting_id.to_hex(),
            "amount_minor": applied.amount.amount_minor(),
            "currency": applied.amount.currency().code(),
        }),
    ))
}

fn top_up_problem(error: TopUpError) -> Problem {
    let detail = error.to_string();
    let unprocessable = |code, field: &str| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "The top-up is invalid",
            detail.clone(),
        )
        .field(field)
    };
    match error {
        TopUpError::AmountMustBePositive => {
            unprocessable("amount_must_be_positive", "amount_minor")
        }
        TopUpError::AmountOverLimit => unprocessable("amount_over_limit", "amount_minor"),
        TopUpError::CurrencyMismatch { .. } => unprocessable("currency_mismatch", "currency"),
        TopUpError::Ledger(_) => unprocessable("ledger_refused", "amount_minor"),
        TopUpError::IdempotencyKeyReused => idempotency_key_reused(detail),
        TopUpError::IdempotencyKeyInFlight { retry_after_ms } => {
            idempotency_key_in_flight(detail, retry_after_ms)
        }
    }
}

/// `GET /wallets/{customer}`: balance and newest entries.
async fn get_wallet(
    State(api): Shared,
    PathParam(customer): PathParam,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let customer = parse_field("customer", CustomerId::new(customer))?;
    principal_for(&headers, &customer)?;
    let store = backend(&api.payment);
    let unavailable = |error: Unavailable| Problem::unavailable(error);
    let snapshot = read(
        store,
        &ReadSet {
            rows: vec![RowKey::Wallet(customer.clone())],
            ..ReadSet::default()
        },
    )
    .await
    .map_err(unavailable)?;
    let wallet = snapshot.wallet(&customer).1.cloned().ok_or_else(|| {
        Problem::not_found(
            "wallet_not_found",
            format!("{customer} has no wallet; a top-up opens one"),
        )
    })?;
    let account_id = wallet.account();
    let snapshot = read(
        store,
        &ReadSet {
            rows: vec![RowKey::Account(account_id.clone())],
            ..ReadSet::default()
        },
    )
    .await
    .map_err(unavailable)?;
    let account = snapshot.account(&account_id).1.cloned();
    let entries = store
        .entries_of(&account_id, WALLET_ENTRIES_MAX)
        .await
        .map_err(unavailable)?;
    let zero = Money::zero(wallet.currency);
    let (balance, held, available) = account.map_or((zero, zero, zero), |account| {
        (account.balance, account.held, account.available())
    });
    Ok(axum::Json(json!({
        "customer": customer,
        "currency": wallet.currency.code(),
        "balance_minor": balance.amount_minor(),
        "held_minor": held.amount_minor(),
        "available_minor": available.amount_minor(),
        "charge_limit_minor": wallet.charge_limit.amount_minor(),
        "entries": entries.iter().map(|entry| entry_view(&account_id, entry)).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// One ledger entry as seen from `account`: credits positive, debits negative.
fn entry_view(account: &AccountId, entry: &Entry) -> Value {
    let posting = &entry.posting;
    let amount_minor = posting
        .effect_on(account)
        .expect("a sealed posting's legs sum within range")
        .amount_minor();
    json!({
        "sequence": entry.sequence,
        "posting_id": posting.id.to_hex(),
        "purpose": posting.memo.purpose,
        "order_id": posting.memo.order_id,
        "amount_minor": amount_minor,
        "reverses": posting.reverses.map(|id| id.to_hex()),
        "recorded_at": entry.recorded_at.to_string(),
        "correlation_id": posting.memo.correlation_id,
        "traceparent": posting.memo.traceparent,
        "hash": entry.hash.to_hex(),
    })
}

/// `PUT /stock/{sku}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockRequest {
    on_hand: u64,
    unit_price_minor: i64,
    currency: String,
}

async fn put_stock(
    State(api): Shared,
    PathParam(sku): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StockRequest>,
) -> Result<Response, Problem> {
    let request = PutStock {
        set: SetStock {
            sku: parse_field("sku", Sku::new(sku))?,
            on_hand: body.on_hand,
            unit_price: Money::from_minor(
                body.unit_price_minor,
                currency("currency", &body.currency)?,
            ),
        },
        if_match: if_match(&headers)?,
    };
    let written = committer(&api.put_stock)
        .submit(request)
        .await
        .map_err(|failure| store_problem(failure, put_stock_problem))?;
    Ok(stock_response(&written.value, written.version))
}

/// The `If-Match` header as the sdk's precondition. Only strong tags of
/// this service's form (`"7"`) can match; other well-formed tags are kept
/// out, so a list of only those never matches (RFC 9110 13.1.1).
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, Problem> {
    let malformed = || {
        Problem::invalid_field(
            "If-Match",
            "If-Match must be * or entity tags such as \"7\" (the ETag of GET /stock/{sku})",
        )
    };
    let mut versions = Vec::new();
    let mut present = false;
    for value in headers.get_all(header::IF_MATCH) {
        present = true;
        let text = value.to_str().map_err(|_| malformed())?;
        let mut rest = text;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if rest.starts_with('*') {
                return Ok(Some(IfMatch::Any));
            }
            let weak = rest.starts_with("W/");
            let quoted = rest
                .strip_prefix("W/")
                .unwrap_or(rest)
                .strip_prefix('"')
                .ok_or_else(malformed)?;
            // An entity tag is everything up to the closing quote, commas
            // included (RFC 9110 8.8.3).
            let end = quoted.find('"').ok_or_else(malformed)?;
            let (tag, after) = (&quoted[..end], &quoted[end + 1..]);
            if !after.is_empty() && !after.starts_with([' ', '\t', ',']) {
                return Err(malformed());
            }
            rest = after;
            // Strong comparison is character by character: only this
            // service's own form of a version ("7", not "07" or "+7")
            // matches, and a weak tag never does.
            if let (false, Ok(version)) = (weak, tag.parse::<u64>())
                && version.to_string() == tag
            {
                versions.push(version);
            }
        }
    }
    Ok(present.then_some(IfMatch::Versions(versions)))
}

fn put_stock_problem(error: PutStockError) -> Problem {
    let detail = error.to_string();
    match error {
        PutStockError::PreconditionRequired { .. } => Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "Changing existing stock needs the version you read",
            detail,
        )
        .field("If-Match"),
        PutStockError::PreconditionFailed { .. } => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "The stock changed since you read it",
            detail,
        )
        .field("If-Match"),
        PutStockError::Set(error) => set_stock_problem(error),
    }
}

fn set_stock_problem(error: SetStockError) -> Problem {
    let detail = error.to_string();
    match error {
        SetStockError::OnHandTooLarge => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "on_hand_too_large",
            "The stock level is invalid",
            detail,
        )
        .field("on_hand"),
        SetStockError::PriceMustBePositive => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "price_must_be_positive",
            "The stock level is invalid",
            detail,
        )
        .field("unit_price_minor"),
        SetStockError::OnHandBelowReserved { .. } => Problem::new(
            StatusCode::CONFLICT,
            "on_hand_below_reserved",
            "More units are promised to open orders",
            detail,
        )
        .field("on_hand"),
    }
}

/// `GET /stock/{sku}`.
async fn get_stock(State(api): Shared, PathParam(sku): PathParam) -> Result<Response, Problem> {
    let sku = parse_field("sku", Sku::new(sku))?;
    let snapshot = read(
        backend(&api.inventory),
        &ReadSet {
            rows: vec![RowKey::Stock(sku.clone())],
            ..ReadSet::default()
        },
    )
    .await
    .map_err(Problem::unavailable)?;
    let (version, row) = snapshot.stock(&sku);
    let row =
        row.ok_or_else(|| Problem::not_found("sku_not_found", format!("{sku} is not stocked")))?;
    Ok(stock_response(row, version))
}

/// A stock row with its version as a strong entity tag, the value a later
/// `PUT` sends back in `If-Match`.
fn stock_response(row: &StockRow, version: u64) -> Response {
    let mut response = axum::Json(stock_view(row)).into_response();
    response.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\""))
            .expect("a quoted number is a header value"),
    );
    response
}

fn stock_view(row: &StockRow) -> Value {
    json!({
        "sku": row.sku,
        "on_hand": row.on_hand,
        "reserved": row.reserved,
        "available": row.available(),
        "unit_price_minor": row.unit_price.amount_minor(),
        "currency": row.unit_price.currency().code(),
    })
}
