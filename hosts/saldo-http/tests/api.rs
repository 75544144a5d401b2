//! The HTTP API in process: every route, every error shape, idempotency,
//! the gateway's checks, and the OpenAPI document against the router; on
//! the in-memory store and on PostgreSQL.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use saldo_domain::messages::Service;
use saldo_engine::{MemoryBackend, Store};
use saldo_http::admin::AdminAccess;
use saldo_http::api::Api;
use saldo_http::gateway::{Gateway, hash_key, parse_keys, to_hex};
use saldo_types::Timestamp;
use serde_json::{Value, json};
use tower::ServiceExt;

fn clock() -> Timestamp {
    Timestamp::from_unix_ms(1_800_000_000_000)
}

/// The API with its operator routes, on the in-memory store, open to
/// requests no gateway forwarded (as `saldo dev` without keys serves it).
fn admin_over(backend: MemoryBackend) -> Router {
    admin_with(backend, AdminAccess::WithoutGateway)
}

/// The API with its operator routes, on the in-memory store, as a service
/// started with `access` serves them.
fn admin_with(backend: MemoryBackend, access: AdminAccess) -> Router {
    let mut api = Api::new(clock);
    api.admin_access = access;
    let shared: Arc<dyn Store> = Arc::new(backend.clone());
    api.order = Some(shared.clone());
    api.payment = Some(shared.clone());
    api.inventory = Some(shared);
    api.operator = Some(Arc::new(backend));
    api.router()
}

fn api_over(backend: Arc<dyn Store>) -> Router {
    let mut api = Api::new(clock);
    api.order = Some(backend.clone());
    api.payment = Some(backend.clone());
    api.inventory = Some(backend);
    api.router()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(
    router: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("a request");
    raw(router, request).await
}

async fn raw(router: &Router, request: Request<Body>) -> Answer {
    // A HEAD answer has no body, so no problem document to check.
    let head = request.method() == axum::http::Method::HEAD;
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if !status.is_success() {
        assert_eq!(
            headers.get("content-type").map(|value| value.as_bytes()),
            Some(&b"application/problem+json"[..]),
            "every error is a problem: {body}"
        );
        if !head {
            assert_documented(&body);
        }
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts that a problem's `code` is one the OpenAPI document lists.
fn assert_documented(problem: &Value) {
    let document: Value = serde_json::from_str(saldo_http::api::OPENAPI).expect("valid JSON");
    let codes = &document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"];
    assert!(
        codes
            .as_array()
            .expect("a list of codes")
            .contains(&problem["code"]),
        "the code of {problem} is not listed in openapi.json"
    );
}

fn order(customer: &str, sku: &str, quantity: u32) -> Value {
    json!({ "customer": customer, "currency": "EUR", "lines": [{ "sku": sku, "quantity": quantity }] })
}

async fn seed(router: &Router) {
    let answer = send(
        router,
        "PUT",
        "/stock/book",
        &[],
        Some(json!({ "on_hand": 10, "unit_price_minor": 1500, "currency": "EUR" })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let answer = send(
        router,
        "POST",
        "/wallets/alice/top-ups",
        &[("idempotency-key", "seed-alice")],
        Some(json!({ "amount_minor": 10_000, "currency": "EUR" })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

#[tokio::test]
async fn an_order_is_accepted_once_and_its_key_replays_the_same_answer() {
    // Proves POST /orders: 201 with Location; the same key and body replay
    // the same response; the same key with another body is 422; no key is 400.
    let backend = MemoryBackend::new();
    let router = api_over(Arc::new(backend.clone()));
    seed(&router).await;
    let first = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "k1")],
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let order_id = first.body["order_id"].as_str().expect("an id").to_owned();
    assert_eq!(
        first.headers["location"].to_str().expect("ascii"),
        format!("/orders/{order_id}")
    );
    assert_eq!(first.headers["idempotent-replayed"], "false");
    let again = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "k1")],
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "k1")],
        Some(order("alice", "book", 3)),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    assert_eq!(other.body["field"], "Idempotency-Key");
    let keyless = send(
        &router,
        "POST",
        "/orders",
        &[],
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(keyless.status, StatusCode::BAD_REQUEST);
    assert_eq!(keyless.body["code"], "idempotency_key_missing");
    assert_eq!(
        backend.lock().outbox_pending(Service::Order, 100).len(),
        1,
        "one order, one command: replays and refusals wrote nothing"
    );

    let shown = send(&router, "GET", &format!("/orders/{order_id}"), &[], None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["status"], "PENDING");
    assert_eq!(shown.body["customer"], "alice");
    assert_eq!(
        shown.body["lines"],
        json!([{ "sku": "book", "quantity": 2 }])
    );
    assert_eq!(shown.body["history"][0]["event"], "sent");
    assert_eq!(shown.body["history"][0]["step_name"], "reserve_stock");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    // Proves that racing duplicates of one request serialise on the key:
    // every answer names the same order and only one order exists.
    let backend = MemoryBackend::new();
    let router = api_over(Arc::new(backend.clone()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &router,
                "POST",
                "/orders",
                &[("idempotency-key", "race")],
                Some(order("alice", "book", 1)),
            )
            .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let answer = task.await.expect("joins");
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        ids.insert(answer.body["order_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(backend.lock().outbox_pending(Service::Order, 100).len(), 1);
}

#[rstest::rstest]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 0 }] }), "quantity_must_be_positive", "lines[0].quantity")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [] }), "lines_empty", "lines")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 1 }, { "sku": "book", "quantity": 1 }] }), "sku_duplicated", "lines[1].sku")]
#[case(json!({ "customer": "alice", "currency": "XYZ", "lines": [{ "sku": "book", "quantity": 1 }] }), "field_invalid", "currency")]
#[case(json!({ "customer": "al ice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 1 }] }), "field_invalid", "customer")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "b/k", "quantity": 1 }] }), "field_invalid", "lines[0].sku")]
// Regression (issue #14.14): a negative quantity was `field_invalid`, zero `quantity_must_be_positive`.
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": -1 }] }), "quantity_must_be_positive", "lines[0].quantity")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 1.5 }] }), "field_invalid", "lines[0].quantity")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 1, "gift": true }] }), "field_invalid", "lines[0].gift")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [], "coupon": "x" }), "field_invalid", "coupon")]
#[case(json!({ "currency": "EUR", "lines": [] }), "field_invalid", "customer")]
#[case(json!({ "customer": "alice", "currency": "EUR", "lines": [{ "sku": "book", "quantity": 10_001 }] }), "quantity_too_large", "lines[0].quantity")]
#[tokio::test]
async fn invalid_orders_are_422_naming_the_field_and_write_nothing(
    #[case] body: Value,
    #[case] code: &str,
    #[case] field: &str,
) {
    // Proves every invalid order is refused with its code and field, and
    // leaves no trace in the store.
    let backend = MemoryBackend::new();
    let router = api_over(Arc::new(backend.clone()));
    let answer = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "k")],
        Some(body),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["field"], field, "{}", answer.body);
    let store = backend.lock();
    assert_eq!(store.rows().count(), 0);
    assert_eq!(store.idempotency_records().count(), 0);
}

#[tokio::test]
async fn malformed_oversized_and_non_json_bodies_are_refused() {
    // Proves 400 for broken JSON, 413 above the size limit, 415 for other
    // media types, and problem bodies for unknown routes and methods.
    let router = api_over(Arc::new(MemoryBackend::new()));
    let broken = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(Body::from("{\"customer\": "))
        .expect("request");
    let answer = raw(&router, broken).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["code"], "json_malformed");
    let huge = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(Body::from(format!("\"{}\"", "x".repeat(70_000))))
        .expect("request");
    let answer = raw(&router, huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["code"], "body_too_large");
    let text = Request::post("/orders")
        .header("content-type", "text/plain")
        .header("idempotency-key", "k")
        .body(Body::from("hello"))
        .expect("request");
    let answer = raw(&router, text).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = send(&router, "GET", "/nowhere", &[], None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["code"], "route_not_found");
    let answer = send(&router, "DELETE", "/orders/x", &[], None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.body["code"], "method_not_allowed");
    let answer = send(&router, "GET", "/orders/nope", &[], None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["code"], "order_not_found");
    let answer = send(
        &router,
        "GET",
        "/orders/x",
        &[("x-correlation-id", "bad id!")],
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["field"], "X-Correlation-Id");
}

#[tokio::test]
async fn wallets_and_stock_answer_with_balances_entries_and_levels() {
    // Proves top-ups (with replay and refusals), the wallet view with its
    // signed ledger entries, and setting and reading stock.
    let router = api_over(Arc::new(MemoryBackend::new()));
    let missing = send(&router, "GET", "/wallets/carol", &[], None).await;
    assert_eq!(missing.body["code"], "wallet_not_found");
    seed(&router).await;
    let replay = send(
        &router,
        "POST",
        "/wallets/alice/top-ups",
        &[("idempotency-key", "seed-alice")],
        Some(json!({ "amount_minor": 10_000, "currency": "EUR" })),
    )
    .await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    for (body, code, field) in [
        (
            json!({ "amount_minor": 0, "currency": "EUR" }),
            "amount_must_be_positive",
            "amount_minor",
        ),
        (
            json!({ "amount_minor": 5, "currency": "USD" }),
            "currency_mismatch",
            "currency",
        ),
        (
            json!({ "amount_minor": 1.5, "currency": "EUR" }),
            "field_invalid",
            "amount_minor",
        ),
    ] {
        let answer = send(
            &router,
            "POST",
            "/wallets/alice/top-ups",
            &[("idempotency-key", code)],
            Some(body),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            answer.body
        );
        assert_eq!(
            (answer.body["code"].as_str(), answer.body["field"].as_str()),
            (Some(code), Some(field))
        );
    }
    let wallet = send(
        &router,
        "GET",
        "/wallets/alice",
        &[("x-correlation-id", "look-1")],
        None,
    )
    .await;
    assert_eq!(wallet.status, StatusCode::OK);
    assert_eq!(wallet.headers["x-correlation-id"], "look-1");
    assert_eq!(wallet.body["balance_minor"], 10_000);
    assert_eq!(wallet.body["available_minor"], 10_000);
    assert_eq!(wallet.body["entries"][0]["purpose"], "top_up");
    assert_eq!(wallet.body["entries"][0]["amount_minor"], 10_000);

    let stock = send(&router, "GET", "/stock/book", &[], None).await;
    assert_eq!(
        stock.body,
        json!({ "sku": "book", "on_hand": 10, "reserved": 0, "available": 10, "unit_price_minor": 1500, "currency": "EUR" })
    );
    assert_eq!(stock.headers["etag"], "\"1\"");
    let bad = send(
        &router,
        "PUT",
        "/stock/book",
        &[("if-match", "\"1\"")],
        Some(json!({ "on_hand": 1, "unit_price_minor": 0, "currency": "EUR" })),
    )
    .await;
    assert_eq!(bad.body["code"], "price_must_be_positive");
    let unknown = send(&router, "GET", "/stock/chair", &[], None).await;
    assert_eq!(unknown.body["code"], "sku_not_found");
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_is_served() {
    // Proves the checked-in OpenAPI document and the router agree: each
    // documented path and method reaches a handler (no 404/405 route problem),
    // and the router serves no API path the document lacks.
    let router = admin_over(MemoryBackend::new());
    let document: Value = serde_json::from_str(saldo_http::api::OPENAPI).expect("valid JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let served = send(&router, "GET", "/openapi.json", &[], None).await;
    assert_eq!(served.body, document);
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            operations += 1;
            let concrete = path
                .replace("{order_id}", "x")
                .replace("{customer}", "x")
                .replace("{sku}", "x")
                .replace("{id}", "1");
            let body = matches!(method.as_str(), "post" | "put").then(|| json!({}));
            let answer = send(
                &router,
                &method.to_uppercase(),
                &concrete,
                &[("idempotency-key", "k")],
                body,
            )
            .await;
            assert!(
                !matches!(
                    answer.body["code"].as_str(),
                    Some("route_not_found" | "method_not_allowed")
                ),
                "{method} {path} is documented but not served"
            );
        }
    }
    assert_eq!(
        operations, 26,
        "the document lists every operation the router serves"
    );
}

fn gateway_router(backend: MemoryBackend, key: &str) -> Router {
    let keys = format!(
        "[[key]]\nname = \"shop\"\nsha256 = \"{}\"\ncustomers = [\"alice\"]\nscopes = [\"orders:write\", \"wallets:read\"]\nrate_per_second = 1\nburst = 3\n",
        to_hex(&hash_key(key))
    );
    Gateway::new(parse_keys(&keys).expect("valid")).protect(api_over(Arc::new(backend)))
}

#[tokio::test]
async fn the_gateway_authenticates_authorises_limits_and_validates() {
    // Proves the gateway's order of checks: 401 without or with a wrong key,
    // 403 outside the key's scopes, 429 with Retry-After past the burst,
    // and 400/413 for bad bodies; probes stay open.
    let backend = MemoryBackend::new();
    let router = gateway_router(backend.clone(), "sk_right");
    let open = send(&router, "GET", "/healthz", &[], None).await;
    assert_eq!(open.status, StatusCode::OK);
    let none = send(&router, "GET", "/orders/x", &[], None).await;
    assert_eq!(
        (none.status, none.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("api_key_missing"))
    );
    let wrong = send(
        &router,
        "GET",
        "/orders/x",
        &[("x-api-key", "sk_wrong")],
        None,
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("api_key_invalid"))
    );
    let scope = send(
        &router,
        "PUT",
        "/stock/x",
        &[("authorization", "Bearer sk_right")],
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (scope.status, scope.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("scope_missing"))
    );
    // The 403 above used no token; three fit in the burst.
    let keyless = send(
        &router,
        "POST",
        "/orders",
        &[("x-api-key", "sk_right")],
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(keyless.body["code"], "idempotency_key_missing");
    let huge = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .header("x-api-key", "sk_right")
        .body(Body::from(format!("\"{}\"", "x".repeat(70_000))))
        .expect("request");
    assert_eq!(
        raw(&router, huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let placed = send(
        &router,
        "POST",
        "/orders",
        &[("x-api-key", "sk_right"), ("idempotency-key", "g1")],
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let limited = send(
        &router,
        "GET",
        "/wallets/alice",
        &[("x-api-key", "sk_right")],
        None,
    )
    .await;
    assert_eq!(
        (limited.status, limited.body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    assert_eq!(
        backend.lock().outbox_pending(Service::Order, 100).len(),
        1,
        "only the admitted order was written"
    );
}

#[tokio::test]
async fn the_api_on_postgresql_answers_like_the_api_in_memory() {
    // Proves the same handlers over PostgreSQL: seed, place, replay, read,
    // refuse; the database holds exactly the accepted order.
    let database = saldo_postgres::testing::TestDatabase::create().await;
    let router = api_over(Arc::new(database.store.clone()));
    seed(&router).await;
    let first = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "pg-1")],
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "pg-1")],
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let reused = send(
        &router,
        "POST",
        "/orders",
        &[("idempotency-key", "pg-1")],
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    let order_id = first.body["order_id"].as_str().expect("id");
    let shown = send(&router, "GET", &format!("/orders/{order_id}"), &[], None).await;
    assert_eq!(shown.body["status"], "PENDING");
    let wallet = send(&router, "GET", "/wallets/alice", &[], None).await;
    assert_eq!(wallet.body["balance_minor"], 10_000);
    assert_eq!(wallet.body["entries"].as_array().map(Vec::len), Some(1));
    let ready = send(&router, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(database.store.pool())
        .await
        .expect("counts");
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_topping_up_sixty_four_wallets_on_postgresql_meet_no_contention() {
    // Proves no hot row: every top-up debits the one funding account, yet 64
    // concurrent top-ups of 64 different wallets on PostgreSQL all succeed
    // (no 503 contention), and the ledger holds exactly their sum.
    const CLIENTS: usize = 64;
    let database = saldo_postgres::testing::TestDatabase::create().await;
    let router = api_over(Arc::new(database.store.clone()));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let router = router.clone();
            tokio::spawn(async move {
                let key = format!("top-up-{client}");
                send(
                    &router,
                    "POST",
                    &format!("/wallets/w{client}/top-ups"),
                    &[("idempotency-key", key.as_str())],
                    Some(json!({ "amount_minor": 100 + client, "currency": "EUR" })),
                )
                .await
            })
        })
        .collect();
    for (client, task) in tasks.into_iter().enumerate() {
        let answer = task.await.expect("the client ran");
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "w{client}: {}",
            answer.body
        );
    }
    let funding: i64 = sqlx::query_scalar(
        "SELECT balance_minor FROM payment.accounts WHERE account_id = 'funding:EUR'",
    )
    .fetch_one(database.store.pool())
    .await
    .expect("reads");
    let expected: i64 = (0..CLIENTS as i64).map(|client| 100 + client).sum();
    assert_eq!(
        funding, -expected,
        "the funding account counts every top-up once"
    );
}

#[tokio::test]
async fn a_stale_stock_write_is_refused_and_an_unconditional_one_only_creates() {
    // Regression (issue #14.11): PUT /stock/{sku} without a precondition let
    // a stale writer overwrite on_hand after sales. Now GET and PUT return the
    // row's version as ETag, an existing row needs If-Match (428 without),
    // and a version other than the stored one is 412.
    let backend = MemoryBackend::new();
    let router = api_over(Arc::new(backend.clone()));
    seed(&router).await;
    let level = |on_hand: u64| {
        Some(json!({ "on_hand": on_hand, "unit_price_minor": 1500, "currency": "EUR" }))
    };
    let read = send(&router, "GET", "/stock/book", &[], None).await;
    let etag = read.headers["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(etag, "\"1\"");
    let blind = send(&router, "PUT", "/stock/book", &[], level(50)).await;
    assert_eq!(
        (
            blind.status,
            blind.body["code"].as_str(),
            blind.body["field"].as_str()
        ),
        (
            StatusCode::PRECONDITION_REQUIRED,
            Some("precondition_required"),
            Some("If-Match")
        )
    );
    // Two writers read version 1; the first to write wins.
    let recount = send(
        &router,
        "PUT",
        "/stock/book",
        &[("if-match", &etag)],
        level(9),
    )
    .await;
    assert_eq!(recount.status, StatusCode::OK, "{}", recount.body);
    let fresh = recount.headers["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(fresh, "\"2\"");
    let stale = send(
        &router,
        "PUT",
        "/stock/book",
        &[("if-match", &etag)],
        level(50),
    )
    .await;
    assert_eq!(
        (stale.status, stale.body["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    for (if_match, status) in [
        ("W/\"2\"", StatusCode::PRECONDITION_FAILED),
        ("\"other\"", StatusCode::PRECONDITION_FAILED),
        // Strong comparison is character by character (review of #14.11):
        // "02" and "+2" are other tags than "2", and a comma inside quotes
        // belongs to the tag.
        ("\"02\"", StatusCode::PRECONDITION_FAILED),
        ("\"+2\"", StatusCode::PRECONDITION_FAILED),
        ("\"2,3\"", StatusCode::PRECONDITION_FAILED),
        ("\"2\"x", StatusCode::UNPROCESSABLE_ENTITY),
        ("\"2", StatusCode::UNPROCESSABLE_ENTITY),
        ("2", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let answer = send(
            &router,
            "PUT",
            "/stock/book",
            &[("if-match", if_match)],
            level(50),
        )
        .await;
        assert_eq!(
            answer.status, status,
            "If-Match: {if_match}: {}",
            answer.body
        );
    }
    let listed = send(
        &router,
        "PUT",
        "/stock/book",
        &[("if-match", "\"7\", \"2\"")],
        level(9),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let absent = send(
        &router,
        "PUT",
        "/stock/lamp",
        &[("if-match", "*")],
        level(1),
    )
    .await;
    assert_eq!(
        absent.status,
        StatusCode::PRECONDITION_FAILED,
        "If-Match names an existing row"
    );
    let created = send(&router, "PUT", "/stock/lamp", &[], level(1)).await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.headers["etag"], "\"1\"");
    let read = send(&router, "GET", "/stock/book", &[], None).await;
    assert_eq!(
        read.body["on_hand"], 9,
        "the stale writer's 50 never landed"
    );
}

#[rstest::rstest]
#[case("GET", "/stock/%ff", "sku")]
#[case("PUT", "/stock/%ff", "sku")]
#[case("GET", "/orders/%ff%fe", "order_id")]
#[case("GET", "/wallets/a%ff", "customer")]
#[case("POST", "/wallets/%ff/top-ups", "customer")]
#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_problem(
    #[case] method: &str,
    #[case] path: &str,
    #[case] field: &str,
) {
    // Regression (issue #14.13): `/stock/%ff` got axum's `400 text/plain`;
    // now it is a documented problem naming the parameter.
    let router = api_over(Arc::new(MemoryBackend::new()));
    let body = matches!(method, "PUT" | "POST").then(|| json!({}));
    let answer = send(&router, method, path, &[("idempotency-key", "k")], body).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(
        (answer.body["code"].as_str(), answer.body["field"].as_str()),
        (Some("field_invalid"), Some(field))
    );
}

/// A store that is down, with an error text full of internals.
struct DownStore;

const INTERNALS: &str = "connection to 10.20.30.40:5432 refused while loading stock:book";

#[async_trait::async_trait]
impl Store for DownStore {
    async fn load(
        &self,
        _: &saldo_domain::batch::BatchReadSet,
    ) -> Result<saldo_domain::batch::Loaded, saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
    async fn commit(
        &self,
        _: saldo_domain::batch::Commit,
        _: Timestamp,
    ) -> Result<(), saldo_engine::CommitFailure> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()).into())
    }
    async fn due_timers(
        &self,
        _: Timestamp,
        _: usize,
    ) -> Result<Vec<saldo_types::OrderId>, saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
    async fn entries_of(
        &self,
        _: &saldo_ledger::AccountId,
        _: usize,
    ) -> Result<Vec<saldo_ledger::Entry>, saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
    async fn record_dead_letter(
        &self,
        _: Service,
        _: &saldo_engine::DeadLetter,
    ) -> Result<(), saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
    async fn purge(
        &self,
        _: Service,
        _: &saldo_domain::retention::Horizons,
        _: Timestamp,
        _: usize,
    ) -> Result<saldo_domain::store::Purged, saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
    async fn ready(&self) -> Result<(), saldo_engine::Unavailable> {
        Err(saldo_engine::Unavailable(INTERNALS.to_owned()))
    }
}

#[tokio::test]
async fn a_store_that_is_down_is_told_in_words_without_its_internals() {
    // Regression (issue #14.12): 503 bodies and the unauthenticated /readyz
    // carried the database's error text and row keys; now they say what
    // happened and the detail goes to the log.
    let router = api_over(Arc::new(DownStore));
    let level = json!({ "on_hand": 1, "unit_price_minor": 1, "currency": "EUR" });
    for (method, path, body, code) in [
        ("GET", "/stock/book", None, "service_unavailable"),
        ("PUT", "/stock/book", Some(level), "service_unavailable"),
        ("GET", "/wallets/alice", None, "service_unavailable"),
        ("GET", "/orders/ord_1", None, "service_unavailable"),
        ("GET", "/readyz", None, "not_ready"),
    ] {
        let answer = send(&router, method, path, &[], body).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(answer.body["code"], code, "{path}");
        let text = answer.body.to_string();
        assert!(
            !text.contains("10.20.30.40") && !text.contains("stock:book"),
            "{method} {path} leaks internals: {text}"
        );
    }
    let ready = send(&router, "GET", "/readyz", &[], None).await;
    assert!(
        ready.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("inventory_database")),
        "{}",
        ready.body
    );
}

fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    // One recorder per process (nextest runs each test in its own).
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this process")
        })
        .clone()
}

#[tokio::test]
async fn invented_methods_and_paths_do_not_grow_the_metrics() {
    // Regression (issue #14.9): each invented method (`MXYZ /healthz`) and
    // path added a label set to /metrics; now methods outside RFC 9110 are
    // `other` and unmatched paths are one route.
    let mut api = Api::new(clock);
    api.inventory = Some(Arc::new(MemoryBackend::new()));
    api.metrics = Some(metrics_handle());
    let router = api.router();
    const INVENTED: usize = 300;
    for index in 0..INVENTED {
        send(&router, &format!("MXYZ{index}"), "/healthz", &[], None).await;
        send(&router, "GET", &format!("/nowhere/{index}"), &[], None).await;
        send(
            &router,
            &format!("MXYZ{index}"),
            &format!("/x{index}"),
            &[],
            None,
        )
        .await;
    }
    let page = send(&router, "GET", "/metrics", &[], None).await;
    let page = page.body.as_str().expect("text").to_owned();
    let series: Vec<&str> = page
        .lines()
        .filter(|line| line.starts_with("saldo_http_requests_total{"))
        .collect();
    assert!(series.len() <= 4, "{}", series.join("\n"));
    assert!(page.contains(r#"method="other""#), "{page}");
    assert!(page.contains(r#"route="unmatched""#), "{page}");
    assert!(page.len() < 16 * 1024, "{} bytes", page.len());
}

#[tokio::test]
async fn the_gateway_rate_limits_its_open_paths() {
    // Proves the unauthenticated paths have a bound: past their shared
    // burst, 429 with Retry-After (issue #14.9).
    let router = gateway_router(MemoryBackend::new(), "sk_right");
    let mut admitted = 0;
    let mut limited = None;
    // In process, requests come far faster than the refill; the bound on
    // attempts only keeps a broken limit from looping forever.
    for _ in 0..100_000 {
        let answer = send(&router, "GET", "/healthz", &[], None).await;
        if answer.status == StatusCode::OK {
            admitted += 1;
        } else {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the open paths are limited");
    assert_eq!(
        (limited.status, limited.body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(limited.headers.contains_key("retry-after"));
    assert!(admitted >= saldo_http::gateway::OPEN_BURST, "{admitted}");
}

/// Serves `router` on a free port with short read bounds; returns its address.
async fn listen(router: Router, limits: saldo_http::Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(saldo_http::serve_with(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    address
}

/// Generous room on top of a bound, for a loaded two-core machine.
const SLACK: std::time::Duration = std::time::Duration::from_secs(15);

const SHORT: saldo_http::Limits = saldo_http::Limits {
    header_read_timeout: std::time::Duration::from_secs(1),
    body_read_timeout: std::time::Duration::from_secs(1),
};

/// Sends `bytes` and reads until the server closes, within `within`.
async fn answer_before_close(
    address: std::net::SocketAddr,
    bytes: &[u8],
    within: std::time::Duration,
) -> Result<String, &'static str> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    stream.write_all(bytes).await.expect("sends");
    let mut received = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut received)).await {
        Ok(_) => Ok(String::from_utf8_lossy(&received).into_owned()),
        Err(_) => Err("the server neither answered nor closed the connection in time"),
    }
}

fn request_head(target: &str) -> (Router, String) {
    match target {
        "api" => (
            api_over(Arc::new(MemoryBackend::new())),
            "PUT /stock/book HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n".to_owned(),
        ),
        _ => (
            gateway_router(MemoryBackend::new(), "sk_right"),
            "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-api-key: sk_right\r\nidempotency-key: k\r\n".to_owned(),
        ),
    }
}

#[rstest::rstest]
#[case("api")]
#[case("gateway")]
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected(#[case] target: &str) {
    // Regression (issue #14.8): partial headers held the connection for
    // 35 s and more; now it closes once the header bound has passed.
    let (router, head) = request_head(target);
    let address = listen(router, SHORT).await;
    let answer =
        answer_before_close(address, head.as_bytes(), SHORT.header_read_timeout + SLACK).await;
    let answer = answer.expect("closed within the bound");
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[rstest::rstest]
#[case("api")]
#[case("gateway")]
#[tokio::test]
async fn a_body_shorter_than_its_length_gets_408_within_the_bound(#[case] target: &str) {
    // Regression (issue #14.8): a body shorter than its Content-Length got
    // no answer; now 408 once the body bound has passed.
    let (router, head) = request_head(target);
    let address = listen(router, SHORT).await;
    let request = format!("{head}content-length: 100\r\n\r\n{{\"on_hand\"");
    let answer =
        answer_before_close(address, request.as_bytes(), SHORT.body_read_timeout + SLACK).await;
    let answer = answer.expect("answered or closed within the bound");
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"),
        "{answer}"
    );
}

#[rstest::rstest]
#[case("api")]
#[case("gateway")]
#[tokio::test]
async fn a_declared_length_above_the_limit_is_refused_before_the_body(#[case] target: &str) {
    // Regression (issue #14.8): a Content-Length above the limit was not
    // refused up front; now 413 comes at once, with no byte of the body
    // sent and long read bounds that cannot be what answers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (router, head) = request_head(target);
    let patient = saldo_http::Limits {
        header_read_timeout: std::time::Duration::from_secs(600),
        body_read_timeout: std::time::Duration::from_secs(600),
    };
    let address = listen(router, patient).await;
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let request = format!("{head}content-length: 10000000\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut received = Vec::new();
    let head = tokio::time::timeout(SLACK, async {
        let mut buffer = [0_u8; 4096];
        while !String::from_utf8_lossy(&received).contains("body_too_large") {
            let read = stream.read(&mut buffer).await.expect("reads");
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&received).into_owned()
    })
    .await
    .expect("the refusal comes without waiting for the body");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.contains("application/problem+json") && head.contains("body_too_large"),
        "{head}"
    );
}

#[test]
fn the_openapi_document_names_whichever_server_serves_it() {
    // Regression (issue #16.8): the served document always named
    // http://127.0.0.1:8080, whatever --listen said; a relative server URL
    // is the one that served it, behind a gateway too.
    let document: Value = serde_json::from_str(saldo_http::api::OPENAPI).expect("valid JSON");
    assert_eq!(document["servers"][0]["url"], "/");
}

#[test]
fn the_openapi_document_states_the_bounds_the_sdk_enforces() {
    // Regression (issue #14.13): path parameters and fields were bare
    // strings and integers, so a fuzzer generating from the document wrote
    // invalid requests; now their patterns and bounds are the sdk's.
    let document: Value = serde_json::from_str(saldo_http::api::OPENAPI).expect("valid JSON");
    let schemas = &document["components"]["schemas"];
    let mut accepted = Vec::new();
    for first in b'A'..=b'Z' {
        for second in b'A'..=b'Z' {
            for third in b'A'..=b'Z' {
                let code = String::from_utf8(vec![first, second, third]).expect("ASCII");
                if saldo_types::Currency::from_code(&code).is_ok() {
                    accepted.push(Value::String(code));
                }
            }
        }
    }
    for schema in ["OrderRequest", "TopUpRequest", "StockRequest"] {
        assert_eq!(
            schemas[schema]["properties"]["currency"]["enum"],
            Value::Array(accepted.clone()),
            "{schema}"
        );
    }
    let identifier = json!("^[A-Za-z0-9._:-]{1,64}$");
    // The pattern's length is the sdk's bound on every textual id.
    assert!(saldo_types::Sku::new("a".repeat(64)).is_ok());
    assert!(saldo_types::Sku::new("a".repeat(65)).is_err());
    assert!(saldo_types::Sku::new("a/b").is_err());
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for operation in operations.as_object().expect("operations").values() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "path" {
                    assert_eq!(parameter["schema"]["pattern"], identifier, "{path}");
                    assert_eq!(parameter["schema"]["maxLength"], 64, "{path}");
                }
            }
        }
    }
    let order = &schemas["OrderRequest"]["properties"];
    assert_eq!(order["customer"]["pattern"], identifier);
    assert_eq!(
        order["lines"]["items"]["properties"]["sku"]["pattern"],
        identifier
    );
    assert_eq!(
        order["lines"]["maxItems"],
        saldo_domain::order::ORDER_LINES_MAX
    );
    let quantity = &order["lines"]["items"]["properties"]["quantity"];
    assert_eq!(
        (&quantity["minimum"], &quantity["maximum"]),
        (&json!(1), &json!(saldo_domain::order::LINE_QUANTITY_MAX))
    );
    assert_eq!(
        schemas["StockRequest"]["properties"]["on_hand"]["maximum"],
        saldo_domain::inventory::ON_HAND_MAX
    );
    assert_eq!(
        schemas["TopUpRequest"]["properties"]["amount_minor"]["maximum"],
        saldo_domain::Rules::default().payment.top_up_max_minor
    );
}

/// A gateway in front of the API on `backend`, admitting each
/// `(name, key, customers, scopes)`.
fn keys_router(backend: Arc<dyn Store>, keys: &[(&str, &str, &[&str], &[&str])]) -> Router {
    let mut text = String::new();
    for (name, key, customers, scopes) in keys {
        text.push_str(&format!(
            "[[key]]\nname = {name:?}\nsha256 = \"{}\"\ncustomers = {customers:?}\nscopes = {scopes:?}\n",
            to_hex(&hash_key(key))
        ));
    }
    Gateway::new(parse_keys(&text).expect("valid")).protect(api_over(backend))
}

#[tokio::test]
async fn the_gateway_forwards_only_its_own_principal_headers_whatever_the_client_sent() {
    // Proves a client's Saldo-Principal* headers (any spelling, repeated)
    // never pass the gateway: the service behind it sees exactly one of
    // each, holding the key's name, customers and scopes.
    let echo = Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let seen = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|value| value.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
        };
        axum::Json(json!({
            "principal": seen("saldo-principal"),
            "customers": seen("saldo-principal-customers"),
            "scopes": seen("saldo-principal-scopes"),
        }))
    });
    let text = format!(
        "[[key]]\nname = \"alice-app\"\nsha256 = \"{}\"\ncustomers = [\"alice\"]\nscopes = [\"*\"]\n",
        to_hex(&hash_key(ALICE_APP))
    );
    let router = Gateway::new(parse_keys(&text).expect("valid")).protect(echo);
    let request = Request::get("/anything")
        .header("x-api-key", ALICE_APP)
        .header("Saldo-Principal", "back-office")
        .header("saldo-principal", "ops")
        .header("SALDO-PRINCIPAL-CUSTOMERS", "*")
        .header("saldo-principal-scopes", "admin")
        .header("saldo-principal-scopes", "*")
        .body(Body::empty())
        .expect("a request");
    let answer = raw(&router, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "principal": ["alice-app"], "customers": ["alice"], "scopes": ["*"] })
    );
}

/// Places an order for `customer` straight at the API (no gateway); its id.
async fn place_directly(router: &Router, customer: &str, key: &str) -> String {
    let answer = send(
        router,
        "POST",
        "/orders",
        &[("idempotency-key", key)],
        Some(order(customer, "book", 1)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["order_id"].as_str().expect("an id").to_owned()
}

fn code(answer: &Answer) -> (StatusCode, Option<&str>) {
    (answer.status, answer.body["code"].as_str())
}

const ALICE_APP: &str = "sk_alice_app";
const ALICE_SCOPES: &[&str] = &[
    "orders:write",
    "orders:read",
    "wallets:read",
    "wallets:top-up",
];

#[tokio::test]
async fn a_key_bound_to_one_customer_can_neither_act_for_nor_read_another() {
    // Regression for issue #14.5 (keys not bound to customers): a key for
    // alice placed orders as bob, spent and topped up bob's wallet and read
    // bob's orders. Now every route refuses, forged principal headers
    // included, and bob's order answers exactly like a missing one.
    let backend = MemoryBackend::new();
    let direct = api_over(Arc::new(backend.clone()));
    seed(&direct).await;
    let bob_top_up = send(
        &direct,
        "POST",
        "/wallets/bob/top-ups",
        &[("idempotency-key", "seed-bob")],
        Some(json!({ "amount_minor": 5_000, "currency": "EUR" })),
    )
    .await;
    assert_eq!(bob_top_up.status, StatusCode::CREATED);
    let bob_order = place_directly(&direct, "bob", "bob-1").await;
    let router = keys_router(
        Arc::new(backend.clone()),
        &[("alice-app", ALICE_APP, &["alice"], ALICE_SCOPES)],
    );
    let key = ("x-api-key", ALICE_APP);
    let forged = [
        key,
        ("saldo-principal", "back-office"),
        ("saldo-principal-customers", "*"),
    ];
    for headers in [&[key][..], &forged[..]] {
        let mut with_key = headers.to_vec();
        with_key.push(("idempotency-key", "attack"));
        let placed = send(
            &router,
            "POST",
            "/orders",
            &with_key,
            Some(order("bob", "book", 1)),
        )
        .await;
        assert_eq!(
            code(&placed),
            (StatusCode::FORBIDDEN, Some("customer_forbidden"))
        );
        for path in ["/wallets/bob/top-ups", "/wallets/%62ob/top-ups"] {
            let topped = send(
                &router,
                "POST",
                path,
                &with_key,
                Some(json!({ "amount_minor": 1, "currency": "EUR" })),
            )
            .await;
            assert_eq!(
                code(&topped),
                (StatusCode::FORBIDDEN, Some("customer_forbidden")),
                "{path}"
            );
        }
        let wallet = send(&router, "GET", "/wallets/bob", headers, None).await;
        assert_eq!(
            code(&wallet),
            (StatusCode::FORBIDDEN, Some("customer_forbidden"))
        );
        let theirs = send(
            &router,
            "GET",
            &format!("/orders/{bob_order}"),
            headers,
            None,
        )
        .await;
        let missing = send(&router, "GET", "/orders/ord_missing", headers, None).await;
        assert_eq!(
            code(&theirs),
            (StatusCode::NOT_FOUND, Some("order_not_found"))
        );
        assert_eq!(code(&theirs), code(&missing));
        assert_eq!(theirs.body["title"], missing.body["title"]);
        let head = send(
            &router,
            "HEAD",
            &format!("/orders/{bob_order}"),
            headers,
            None,
        )
        .await;
        assert_eq!(head.status, StatusCode::NOT_FOUND);
    }
    // A body naming the customer twice cannot show the gateway one customer
    // and the service another.
    let twice = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", "twice")
        .header("x-api-key", ALICE_APP)
        .body(Body::from(
            r#"{"customer":"alice","customer":"bob","currency":"EUR","lines":[{"sku":"book","quantity":1}]}"#,
        ))
        .expect("request");
    assert_ne!(raw(&router, twice).await.status, StatusCode::CREATED);
    // Alice's own key still does all of this for alice.
    let own = send(
        &router,
        "POST",
        "/orders",
        &[key, ("idempotency-key", "alice-1")],
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let own_id = own.body["order_id"].as_str().expect("an id");
    let shown = send(&router, "GET", &format!("/orders/{own_id}"), &[key], None).await;
    assert_eq!(shown.status, StatusCode::OK);
    let wallet = send(&router, "GET", "/wallets/alice", &[key], None).await;
    assert_eq!(wallet.status, StatusCode::OK);
    let bob = send(&direct, "GET", "/wallets/bob", &[], None).await;
    assert_eq!(
        bob.body["balance_minor"], 5_000,
        "bob's wallet is untouched"
    );
    assert_eq!(
        backend.lock().outbox_pending(Service::Order, 100).len(),
        2,
        "only bob's own order and alice's were placed"
    );
}

#[tokio::test]
async fn a_service_refuses_customers_outside_the_forwarded_principal() {
    // Proves the second line of defence: a service behind `saldo gateway`
    // checks the forwarded customers itself on every customer route, and
    // refuses a malformed forwarded principal.
    let backend = MemoryBackend::new();
    let direct = api_over(Arc::new(backend.clone()));
    seed(&direct).await;
    let bob_order = place_directly(&direct, "bob", "bob-1").await;
    let forwarded = [
        ("saldo-principal", "alice-app"),
        ("saldo-principal-customers", "alice,carol"),
        ("saldo-principal-scopes", "*"),
    ];
    let theirs = send(
        &direct,
        "GET",
        &format!("/orders/{bob_order}"),
        &forwarded,
        None,
    )
    .await;
    assert_eq!(
        code(&theirs),
        (StatusCode::NOT_FOUND, Some("order_not_found"))
    );
    let wallet = send(&direct, "GET", "/wallets/bob", &forwarded, None).await;
    assert_eq!(
        code(&wallet),
        (StatusCode::FORBIDDEN, Some("customer_forbidden"))
    );
    let mut writing = forwarded.to_vec();
    writing.push(("idempotency-key", "attack"));
    let placed = send(
        &direct,
        "POST",
        "/orders",
        &writing,
        Some(order("bob", "book", 1)),
    )
    .await;
    assert_eq!(
        code(&placed),
        (StatusCode::FORBIDDEN, Some("customer_forbidden"))
    );
    let topped = send(
        &direct,
        "POST",
        "/wallets/bob/top-ups",
        &writing,
        Some(json!({ "amount_minor": 1, "currency": "EUR" })),
    )
    .await;
    assert_eq!(
        code(&topped),
        (StatusCode::FORBIDDEN, Some("customer_forbidden"))
    );
    let own = send(&direct, "GET", "/wallets/alice", &forwarded, None).await;
    assert_eq!(own.status, StatusCode::OK);
    let half = send(
        &direct,
        "GET",
        "/wallets/alice",
        &[("saldo-principal", "alice-app")],
        None,
    )
    .await;
    assert_eq!(
        code(&half),
        (StatusCode::BAD_REQUEST, Some("principal_header_invalid"))
    );
    // Also on a route whose handler never reads the principal (stock).
    let stock = send(
        &direct,
        "GET",
        "/stock/apple",
        &[("saldo-principal", "alice-app")],
        None,
    )
    .await;
    assert_eq!(
        code(&stock),
        (StatusCode::BAD_REQUEST, Some("principal_header_invalid"))
    );
}

#[tokio::test]
async fn a_service_refuses_operations_outside_the_forwarded_scopes() {
    // Regression: a service checked a forwarded principal's customers but
    // not its scopes, so a principal acting for every customer (an admin
    // key's, say) could do anything on the customer API once past the
    // gateway. The service now checks the forwarded scopes as well.
    let backend = MemoryBackend::new();
    let direct = api_over(Arc::new(backend.clone()));
    seed(&direct).await;
    let alice_order = place_directly(&direct, "alice", "alice-1").await;
    let operator = [
        ("saldo-principal", "ops"),
        ("saldo-principal-customers", "*"),
        ("saldo-principal-scopes", "admin"),
    ];
    let reader = [
        ("saldo-principal", "reader"),
        ("saldo-principal-customers", "*"),
        ("saldo-principal-scopes", "orders:read,wallets:read"),
    ];
    let order_path = format!("/orders/{alice_order}");
    let writes: [(&str, &str, Value); 3] = [
        ("POST", "/orders", order("alice", "book", 1)),
        (
            "POST",
            "/wallets/alice/top-ups",
            json!({ "amount_minor": 1, "currency": "EUR" }),
        ),
        (
            "PUT",
            "/stock/book",
            json!({ "on_hand": 1, "unit_price_minor": 1, "currency": "EUR" }),
        ),
    ];
    for headers in [&operator[..], &reader[..]] {
        for (method, path, body) in &writes {
            let mut with_key = headers.to_vec();
            with_key.push(("idempotency-key", "scoped"));
            let refused = send(&direct, method, path, &with_key, Some(body.clone())).await;
            assert_eq!(
                code(&refused),
                (StatusCode::FORBIDDEN, Some("scope_missing")),
                "{method} {path} as {:?}",
                headers[0].1
            );
        }
        let stock = send(&direct, "GET", "/stock/book", headers, None).await;
        assert_eq!(code(&stock), (StatusCode::FORBIDDEN, Some("scope_missing")));
    }
    for path in [order_path.as_str(), "/wallets/alice"] {
        let refused = send(&direct, "GET", path, &operator, None).await;
        assert_eq!(
            code(&refused),
            (StatusCode::FORBIDDEN, Some("scope_missing")),
            "{path}"
        );
        let read = send(&direct, "GET", path, &reader, None).await;
        assert_eq!(read.status, StatusCode::OK, "{path}: {}", read.body);
    }
    let health = send(&direct, "GET", "/healthz", &operator, None).await;
    assert_eq!(health.status, StatusCode::OK, "the open paths stay open");
    assert_eq!(
        backend.lock().outbox_pending(Service::Order, 100).len(),
        1,
        "only the order placed directly"
    );
}

#[tokio::test]
async fn write_scopes_grant_no_reads() {
    // Regression for issue #14.6 (a write scope also granted reads):
    // orders:write read orders, the wallet write scope read wallets and
    // stock:write read stock. Each scope now grants only its operation.
    let backend = MemoryBackend::new();
    let router = keys_router(
        Arc::new(backend.clone()),
        &[(
            "writer",
            "sk_writer",
            &["*"],
            &["orders:write", "wallets:top-up", "stock:write"],
        )],
    );
    let key = ("x-api-key", "sk_writer");
    let stock = send(
        &router,
        "PUT",
        "/stock/book",
        &[key],
        Some(json!({ "on_hand": 10, "unit_price_minor": 1500, "currency": "EUR" })),
    )
    .await;
    assert_eq!(stock.status, StatusCode::OK, "{}", stock.body);
    let topped = send(
        &router,
        "POST",
        "/wallets/alice/top-ups",
        &[key, ("idempotency-key", "t1")],
        Some(json!({ "amount_minor": 10_000, "currency": "EUR" })),
    )
    .await;
    assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.body);
    let placed = send(
        &router,
        "POST",
        "/orders",
        &[key, ("idempotency-key", "o1")],
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let order_id = placed.body["order_id"].as_str().expect("an id");
    for path in [
        format!("/orders/{order_id}"),
        "/wallets/alice".to_owned(),
        "/stock/book".to_owned(),
    ] {
        let read = send(&router, "GET", &path, &[key], None).await;
        assert_eq!(
            code(&read),
            (StatusCode::FORBIDDEN, Some("scope_missing")),
            "{path}"
        );
    }
}

async fn clients_never_see_each_others_idempotent_answers(backend: Arc<dyn Store>) {
    let direct = api_over(backend.clone());
    seed(&direct).await;
    let router = keys_router(
        backend,
        &[
            ("shop-a", "sk_a", &["alice"], ALICE_SCOPES),
            ("shop-b", "sk_b", &["alice"], ALICE_SCOPES),
        ],
    );
    let as_client = |key: &'static str, idempotency: &'static str| {
        [("x-api-key", key), ("idempotency-key", idempotency)]
    };
    let first = send(
        &router,
        "POST",
        "/orders",
        &as_client("sk_a", "k"),
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The same key and body from another client is that client's own order.
    let other = send(
        &router,
        "POST",
        "/orders",
        &as_client("sk_b", "k"),
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    assert_eq!(other.headers["idempotent-replayed"], "false");
    assert_ne!(other.body["order_id"], first.body["order_id"]);
    // The same key with another body is not refused because of someone else.
    let fresh = send(
        &router,
        "POST",
        "/orders",
        &as_client("sk_b", "k2"),
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    let first_a = send(
        &router,
        "POST",
        "/orders",
        &as_client("sk_a", "k2"),
        Some(order("alice", "book", 2)),
    )
    .await;
    assert_eq!(first_a.status, StatusCode::CREATED, "{}", first_a.body);
    assert_eq!(first_a.headers["idempotent-replayed"], "false");
    // Each client's own retry still replays its own answer.
    let retry = send(
        &router,
        "POST",
        "/orders",
        &as_client("sk_a", "k"),
        Some(order("alice", "book", 1)),
    )
    .await;
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body["order_id"], first.body["order_id"]);
    // Without a gateway the customer is the namespace: alice's key is not
    // shop-a's, and bob may use a key alice used.
    let keyed_directly = place_directly(&direct, "alice", "k").await;
    assert_ne!(json!(keyed_directly), first.body["order_id"]);
    place_directly(&direct, "bob", "seed-alice").await;
    // Two clients topping up one wallet with one key both move money.
    for client in ["sk_a", "sk_b"] {
        let topped = send(
            &router,
            "POST",
            "/wallets/alice/top-ups",
            &as_client(client, "t"),
            Some(json!({ "amount_minor": 500, "currency": "EUR" })),
        )
        .await;
        assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.body);
        assert_eq!(topped.headers["idempotent-replayed"], "false");
    }
    let wallet = send(&direct, "GET", "/wallets/alice", &[], None).await;
    assert_eq!(wallet.body["balance_minor"], 11_000);
}

#[tokio::test]
async fn two_clients_sending_one_idempotency_key_never_see_each_others_answers() {
    // Regression for issue #14.7 (idempotency keys shared across clients):
    // client B sending client A's key with A's body got A's order id, and
    // with another body a 422. Keys are now namespaced by principal (and by
    // customer without a gateway).
    let backend = MemoryBackend::new();
    clients_never_see_each_others_idempotent_answers(Arc::new(backend.clone())).await;
    let mut stored: Vec<String> = backend
        .lock()
        .idempotency_records()
        .filter(|(service, _, _)| *service == Service::Order)
        .map(|(_, key, _)| key.to_string())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            "customer alice k",
            "customer bob seed-alice",
            "principal shop-a k",
            "principal shop-a k2",
            "principal shop-b k",
            "principal shop-b k2",
        ]
    );
}

#[tokio::test]
async fn two_clients_sending_one_idempotency_key_never_meet_in_postgresql() {
    // Regression for issue #14.7 on PostgreSQL: the stored key is the
    // namespaced one, so the clients' records are different rows.
    let database = saldo_postgres::testing::TestDatabase::create().await;
    clients_never_see_each_others_idempotent_answers(Arc::new(database.store.clone())).await;
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT key FROM orders.idempotency_keys ORDER BY key")
            .fetch_all(database.store.pool())
            .await
            .expect("reads");
    assert_eq!(
        stored,
        [
            "customer alice k",
            "customer bob seed-alice",
            "principal shop-a k",
            "principal shop-a k2",
            "principal shop-b k",
            "principal shop-b k2",
        ]
    );
    let top_ups: Vec<String> =
        sqlx::query_scalar("SELECT key FROM payment.idempotency_keys ORDER BY key")
            .fetch_all(database.store.pool())
            .await
            .expect("reads");
    assert_eq!(
        top_ups,
        [
            "customer alice seed-alice",
            "principal shop-a t",
            "principal shop-b t"
        ]
    );
}

#[tokio::test]
async fn a_request_with_two_idempotency_keys_is_refused() {
    // Regression for issue #14.14: two different Idempotency-Key headers
    // were accepted (the first won). Now 400 idempotency_key_repeated, at
    // the service and at the gateway, and nothing is written.
    let backend = MemoryBackend::new();
    let direct = api_over(Arc::new(backend.clone()));
    let router = keys_router(
        Arc::new(backend.clone()),
        &[("shop", "sk_shop", &["alice"], ALICE_SCOPES)],
    );
    for (router, key) in [(&direct, None), (&router, Some("sk_shop"))] {
        for (path, body) in [
            ("/orders", order("alice", "book", 1)),
            (
                "/wallets/alice/top-ups",
                json!({ "amount_minor": 1, "currency": "EUR" }),
            ),
        ] {
            let mut headers = vec![("idempotency-key", "first"), ("idempotency-key", "second")];
            if let Some(key) = key {
                headers.push(("x-api-key", key));
            }
            let answer = send(router, "POST", path, &headers, Some(body)).await;
            assert_eq!(
                code(&answer),
                (StatusCode::BAD_REQUEST, Some("idempotency_key_repeated")),
                "{path} via gateway: {}",
                key.is_some()
            );
            assert_eq!(answer.body["field"], "Idempotency-Key");
        }
    }
    let store = backend.lock();
    assert_eq!(store.rows().count(), 0);
    assert_eq!(store.idempotency_records().count(), 0);
}

#[tokio::test]
async fn the_gateway_tells_an_unreachable_upstream_in_words_without_its_internals() {
    // Regression (issue #14.12): the gateway's 502 carried the HTTP client's
    // error text and its open /readyz the upstreams' addresses and errors.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let uri: axum::http::Uri = format!("http://{address}").parse().expect("uri");
    let router = saldo_http::proxy::router(
        saldo_http::proxy::Upstreams {
            order: uri.clone(),
            payment: uri.clone(),
            inventory: uri,
        },
        Some(metrics_handle()),
    );
    let forwarded = send(&router, "GET", "/orders/ord_1", &[], None).await;
    assert_eq!(
        code(&forwarded),
        (StatusCode::BAD_GATEWAY, Some("upstream_unavailable"))
    );
    let ready = send(&router, "GET", "/readyz", &[], None).await;
    assert_eq!(
        code(&ready),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
    );
    assert_eq!(
        ready.body["detail"],
        "order: unreachable; payment: unreachable; inventory: unreachable"
    );
    for answer in [&forwarded, &ready] {
        let text = answer.body.to_string().to_lowercase();
        for internal in [
            address.port().to_string().as_str(),
            "127.0.0.1",
            "refused",
            "error",
        ] {
            assert!(!text.contains(internal), "{internal} in {text}");
        }
    }
    // Forwarded requests are labelled by the API's route template.
    let page = send(&router, "GET", "/metrics", &[], None).await;
    let page = page.body.as_str().expect("text").to_owned();
    assert!(page.contains(r#"route="/orders/{order_id}""#), "{page}");
}

mod admin {
    //! The operator API (ADR 0017) in process, on the in-memory store.

    use super::*;

    const OPS: &str = "sk_ops";
    const SHOP: &str = "sk_shop";

    /// The operator API behind a gateway with an `admin` key and a shop key
    /// that has every other scope.
    fn guarded(backend: MemoryBackend) -> Router {
        let text = format!(
            "[[key]]\nname = \"ops\"\nsha256 = \"{}\"\ncustomers = [\"*\"]\nscopes = [\"admin\"]\n\
             [[key]]\nname = \"shop\"\nsha256 = \"{}\"\ncustomers = [\"*\"]\n\
             scopes = [\"orders:write\", \"orders:read\", \"wallets:read\", \"wallets:top-up\", \"stock:read\", \"stock:write\"]\n",
            to_hex(&hash_key(OPS)),
            to_hex(&hash_key(SHOP))
        );
        Gateway::new(parse_keys(&text).expect("valid"))
            .protect(admin_with(backend, AdminAccess::Gateway))
    }

    /// Every operator route of a process with all three services, with a
    /// body for the interventions.
    fn operator_routes(order_id: &str) -> Vec<(&'static str, String, Option<Value>)> {
        let retry = Some(json!({ "action": "retry_now", "dry_run": true }));
        let discard = Some(json!({ "action": "discard", "reason": "r", "dry_run": true }));
        vec![
            ("GET", "/admin/order/orders".to_owned(), None),
            ("POST", format!("/admin/order/orders/{order_id}"), retry),
            ("GET", format!("/admin/orders/{order_id}/story"), None),
            ("GET", format!("/admin/orders/{order_id}/export"), None),
            (
                "GET",
                format!("/admin/payment/orders/{order_id}/story"),
                None,
            ),
            ("GET", "/admin/inventory/dead-letters".to_owned(), None),
            (
                "POST",
                "/admin/inventory/dead-letters/1".to_owned(),
                discard,
            ),
            ("GET", "/admin/order/audit".to_owned(), None),
        ]
    }

    #[tokio::test]
    async fn a_service_serves_the_operator_api_only_to_an_admin_the_gateway_forwarded() {
        // Regression: a service answered /admin to anyone who reached it,
        // recording them as "direct". Now a request without a forwarded
        // principal, or with one lacking the admin scope or acting for some
        // customers only, is refused before any handler reads or writes.
        let backend = MemoryBackend::new();
        let router = admin_with(backend.clone(), AdminAccess::Gateway);
        let order_id = stuck_order(&router).await;
        let shop = [
            ("saldo-principal", "shop"),
            ("saldo-principal-customers", "*"),
            ("saldo-principal-scopes", "orders:read,orders:write"),
        ];
        let narrow_admin = [
            ("saldo-principal", "ops"),
            ("saldo-principal-customers", "alice"),
            ("saldo-principal-scopes", "admin"),
        ];
        let admin = [
            ("saldo-principal", "ops"),
            ("saldo-principal-customers", "*"),
            ("saldo-principal-scopes", "orders:read,admin"),
        ];
        for (method, path, body) in operator_routes(&order_id) {
            let direct = send(&router, method, &path, &[], body.clone()).await;
            assert_eq!(
                code(&direct),
                (StatusCode::FORBIDDEN, Some("admin_scope_required")),
                "{method} {path} without a gateway"
            );
            let detail = direct.body["detail"].as_str().unwrap_or("");
            assert!(detail.contains("--admin-without-gateway"), "{detail}");
            let without_scope = send(&router, method, &path, &shop, body.clone()).await;
            assert_eq!(
                code(&without_scope),
                (StatusCode::FORBIDDEN, Some("admin_scope_required")),
                "{method} {path} without the admin scope"
            );
            let some_customers = send(&router, method, &path, &narrow_admin, body.clone()).await;
            assert_eq!(
                code(&some_customers),
                (StatusCode::FORBIDDEN, Some("customer_forbidden")),
                "{method} {path} for some customers"
            );
            // The forwarded headers are trusted (ADR 0013): mTLS with client
            // names is what keeps anyone but the gateway from writing them.
            let admitted = send(&router, method, &path, &admin, body).await;
            assert_ne!(admitted.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(
                admitted.status.is_success() || admitted.status == StatusCode::NOT_FOUND,
                "{method} {path}: {} {}",
                admitted.status,
                admitted.body
            );
        }
        let audit = send(&router, "GET", "/admin/order/audit", &admin, None).await;
        assert_eq!(audit.body["items"], json!([]), "dry runs wrote nothing");
        let real = send(
            &router,
            "POST",
            &format!("/admin/order/orders/{order_id}"),
            &[],
            Some(json!({ "action": "retry_now" })),
        )
        .await;
        assert_eq!(real.status, StatusCode::FORBIDDEN);
        let audit = send(&router, "GET", "/admin/order/audit", &admin, None).await;
        assert_eq!(
            audit.body["items"],
            json!([]),
            "a refused intervention wrote nothing"
        );
    }

    #[tokio::test]
    async fn without_a_gateway_only_the_explicit_setting_serves_the_operator_api_directly() {
        // Proves --admin-without-gateway (AdminAccess::WithoutGateway) admits
        // requests that carry no forwarded principal, audited as "direct",
        // and still refuses a forwarded principal without the admin scope.
        let backend = MemoryBackend::new();
        let router = admin_with(backend, AdminAccess::WithoutGateway);
        let order_id = stuck_order(&router).await;
        for (method, path, body) in operator_routes(&order_id) {
            let direct = send(&router, method, &path, &[], body).await;
            assert_ne!(direct.status, StatusCode::FORBIDDEN, "{method} {path}");
        }
        let shop = [
            ("saldo-principal", "shop"),
            ("saldo-principal-customers", "*"),
            ("saldo-principal-scopes", "*,orders:read"),
        ];
        let all_scopes = send(&router, "GET", "/admin/order/orders", &shop, None).await;
        assert_eq!(
            all_scopes.status,
            StatusCode::OK,
            "* grants the operator API"
        );
        let reader = [
            ("saldo-principal", "shop"),
            ("saldo-principal-customers", "*"),
            ("saldo-principal-scopes", "orders:read"),
        ];
        let refused = send(&router, "GET", "/admin/order/orders", &reader, None).await;
        assert_eq!(
            code(&refused),
            (StatusCode::FORBIDDEN, Some("admin_scope_required"))
        );
        let applied = send(
            &router,
            "POST",
            &format!("/admin/order/orders/{order_id}"),
            &[],
            Some(json!({ "action": "retry_now", "expected_version": seen_version(&router, &order_id, &[]).await })),
        )
        .await;
        assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
        let audit = send(&router, "GET", "/admin/order/audit", &[], None).await;
        assert_eq!(
            audit.body["items"][0]["actor"],
            json!({ "principal": "direct", "key": "none" })
        );
    }

    #[tokio::test]
    async fn principal_headers_a_client_sends_never_reach_the_operator_api() {
        // Proves the gateway replaces forged Saldo-Principal* headers on the
        // operator API: a shop key claiming admin is refused, and the admin
        // key's intervention is audited under its own name, not the forged one.
        let backend = MemoryBackend::new();
        let router = guarded(backend.clone());
        let shop = ("x-api-key", SHOP);
        seed_with(&router, &[shop]).await;
        let placed = send(
            &router,
            "POST",
            "/orders",
            &[shop, ("idempotency-key", "o-1")],
            Some(order("alice", "book", 1)),
        )
        .await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
        let order_id = placed.body["order_id"].as_str().expect("an id").to_owned();
        let forged = [
            ("saldo-principal", "mallory"),
            ("Saldo-Principal-Customers", "*"),
            ("SALDO-PRINCIPAL-SCOPES", "admin"),
        ];
        let mut as_shop = vec![shop];
        as_shop.extend(forged);
        let refused = send(&router, "GET", "/admin/order/orders", &as_shop, None).await;
        assert_eq!(
            code(&refused),
            (StatusCode::FORBIDDEN, Some("scope_missing"))
        );
        let mut as_ops = vec![("x-api-key", OPS)];
        as_ops.extend(forged);
        let applied = send(
            &router,
            "POST",
            &format!("/admin/order/orders/{order_id}"),
            &as_ops,
            Some(json!({ "action": "retry_now", "expected_version": seen_version(&router, &order_id, &as_ops).await })),
        )
        .await;
        assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
        let audit = send(&router, "GET", "/admin/order/audit", &as_ops, None).await;
        assert_eq!(
            audit.body["items"][0]["actor"],
            json!({ "principal": "ops", "key": "ops" })
        );
    }

    /// An order placed with nothing delivering its messages: it waits for
    /// the inventory's answer, as with a participant that is down.
    async fn stuck_order(router: &Router) -> String {
        seed(router).await;
        place_directly(router, "alice", "stuck-1").await
    }

    #[tokio::test]
    async fn a_dry_run_shows_the_decision_and_writes_nothing_then_the_same_intervention_commits_once()
     {
        // Proves the dry run answers the decision as data without writing (no version change, no audit row), the real run commits it with its audit record, and a stale version is refused with 409.
        let backend = MemoryBackend::new();
        let router = admin_over(backend.clone());
        let order_id = stuck_order(&router).await;
        let listed = send(
            &router,
            "GET",
            "/admin/order/orders?status=PENDING&awaiting=action_reply",
            &[],
            None,
        )
        .await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(listed.body["items"][0]["order_id"], order_id.as_str());
        assert_eq!(listed.body["items"][0]["step_name"], "reserve_stock");
        let version = listed.body["items"][0]["version"]
            .as_u64()
            .expect("a version");
        let path = format!("/admin/order/orders/{order_id}");
        let dry = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "retry_now", "dry_run": true })),
        )
        .await;
        assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
        assert_eq!(dry.body["dry_run"], true);
        assert_eq!(dry.body["expected_version"], version);
        assert_eq!(
            dry.body["decision"]["outbox"].as_array().map(Vec::len),
            Some(1)
        );
        let after_dry = send(&router, "GET", "/admin/order/orders", &[], None).await;
        assert_eq!(
            after_dry.body["items"][0]["version"], version,
            "a dry run writes nothing"
        );
        let audit = send(&router, "GET", "/admin/order/audit", &[], None).await;
        assert_eq!(
            audit.body["items"],
            json!([]),
            "a dry run writes no audit record"
        );
        let unseen = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "retry_now" })),
        )
        .await;
        assert_eq!(
            code(&unseen),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("version_required")),
            "a real run names the version the operator saw"
        );
        for (resolution, expected) in [
            (
                json!({ "step": "take_payment", "phase": "action", "outcome": "failed" }),
                (StatusCode::CONFLICT, Some("step_not_awaited")),
            ),
            (
                json!({ "step": "reserve_stock", "phase": "compensation", "outcome": "succeeded" }),
                (StatusCode::CONFLICT, Some("step_not_awaited")),
            ),
            (
                json!({ "step": "reserve_stock", "phase": "action", "outcome": "succeeded" }),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some("needs_participant_reply"),
                ),
            ),
            (
                json!({ "step": "ship", "phase": "action", "outcome": "failed" }),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_step")),
            ),
        ] {
            let mut body = resolution.clone();
            body["action"] = json!("resolve");
            body["expected_version"] = json!(version);
            let refused = send(&router, "POST", &path, &[], Some(body)).await;
            assert_eq!(code(&refused), expected, "{resolution}");
        }
        let applied = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "retry_now", "expected_version": version })),
        )
        .await;
        assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
        assert_eq!(
            applied.body["decision"]["outbox"],
            dry.body["decision"]["outbox"]
        );
        let audit = send(&router, "GET", "/admin/order/audit", &[], None).await;
        assert_eq!(audit.body["items"][0]["action"], "retry_now");
        assert_eq!(
            audit.body["items"][0]["target"],
            format!("order:{order_id}")
        );
        assert_eq!(audit.body["items"][0]["actor"]["principal"], "direct");
        let stale = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "retry_now", "expected_version": version })),
        )
        .await;
        assert_eq!(
            code(&stale),
            (StatusCode::CONFLICT, Some("version_changed"))
        );
        let past = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "resolve", "outcome": "maybe" })),
        )
        .await;
        assert_eq!(
            code(&past),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("field_invalid"))
        );
    }

    #[tokio::test]
    async fn the_story_shows_the_rows_and_messages_in_causal_order_with_findings() {
        // Proves the gathered story of a stuck order holds its order row, each message once after its cause, with its bytes and ids, and the audit of an intervention.
        let backend = MemoryBackend::new();
        let router = admin_over(backend.clone());
        let order_id = stuck_order(&router).await;
        let path = format!("/admin/order/orders/{order_id}");
        let forced = send(
            &router,
            "POST",
            &path,
            &[],
            Some(json!({ "action": "force_compensation", "expected_version": seen_version(&router, &order_id, &[]).await })),
        )
        .await;
        assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
        let story = send(
            &router,
            "GET",
            &format!("/admin/orders/{order_id}/story"),
            &[],
            None,
        )
        .await;
        assert_eq!(story.status, StatusCode::OK, "{}", story.body);
        let messages = story.body["messages"].as_array().expect("messages");
        let types: Vec<&str> = messages
            .iter()
            .filter_map(|m| m["message_type"].as_str())
            .collect();
        assert_eq!(types, ["ReserveStock", "ReleaseStock"]);
        assert!(messages[1]["causation_id"].as_str().is_some());
        assert!(
            messages
                .iter()
                .all(|m| m["bytes"].as_str().is_some_and(|b| !b.is_empty()))
        );
        assert_eq!(story.body["rows"][0][0], "order");
        assert_eq!(story.body["audit"][0]["action"], "force_compensation");
        assert!(story.body["findings"].is_array());
        let missing = send(&router, "GET", "/admin/orders/nobody/story", &[], None).await;
        assert_eq!(
            code(&missing),
            (StatusCode::NOT_FOUND, Some("order_not_found"))
        );
        // The same story as a recording: the forced compensation replays
        // exactly through the deciders.
        let exported = send(
            &router,
            "GET",
            &format!("/admin/orders/{order_id}/export"),
            &[],
            None,
        )
        .await;
        assert_eq!(exported.status, StatusCode::OK, "{}", exported.body);
        let header: saldo_sim::recorded::RecordingHeader =
            serde_json::from_value(exported.body.clone()).expect("a recording");
        let player = saldo_sim::recorded::RecordedPlayer::new(header).expect("replayable");
        assert!(player.verification().exact(), "{:?}", player.verification());
        let mut replayed = player.clone();
        replayed.run_to_end();
        let events: Vec<&str> = replayed
            .trace()
            .records()
            .expect("kept")
            .iter()
            .map(|record| match &record.event {
                saldo_sim::trace::TraceEvent::OrderRequested { .. } => "placed",
                saldo_sim::trace::TraceEvent::Intervened { action, .. } => action.as_str(),
                saldo_sim::trace::TraceEvent::Emitted { .. } => "emitted",
                _ => "other",
            })
            .collect();
        assert_eq!(
            events,
            ["placed", "emitted", "force_compensation", "emitted"],
            "the placement, the intervention and the command of each"
        );
        let missing = send(&router, "GET", "/admin/orders/nobody/export", &[], None).await;
        assert_eq!(
            code(&missing),
            (StatusCode::NOT_FOUND, Some("order_not_found"))
        );
    }

    #[tokio::test]
    async fn only_a_key_with_the_admin_scope_reaches_the_operator_api_and_is_audited_as_itself() {
        // Proves a second principal without admin gets 403 scope_missing on every operator route, and the admin key's interventions are audited under its name.
        let backend = MemoryBackend::new();
        let router = guarded(backend.clone());
        let shop = [("x-api-key", SHOP)];
        let ops = [("x-api-key", OPS)];
        seed_with(&router, &shop).await;
        let placed = send(
            &router,
            "POST",
            "/orders",
            &[shop[0], ("idempotency-key", "o-1")],
            Some(order("alice", "book", 1)),
        )
        .await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
        let order_id = placed.body["order_id"].as_str().expect("an id").to_owned();
        for (method, path) in [
            ("GET", "/admin/order/orders".to_owned()),
            ("GET", format!("/admin/orders/{order_id}/story")),
            ("GET", format!("/admin/orders/{order_id}/export")),
            ("GET", "/admin/payment/dead-letters".to_owned()),
            ("POST", format!("/admin/order/orders/{order_id}")),
        ] {
            let body = (method == "POST").then(|| json!({ "action": "retry_now" }));
            let refused = send(&router, method, &path, &shop, body).await;
            assert_eq!(
                code(&refused),
                (StatusCode::FORBIDDEN, Some("scope_missing")),
                "{method} {path}"
            );
        }
        let no_orders_for_ops =
            send(&router, "GET", &format!("/orders/{order_id}"), &ops, None).await;
        assert_eq!(
            code(&no_orders_for_ops),
            (StatusCode::FORBIDDEN, Some("scope_missing"))
        );
        let path = format!("/admin/order/orders/{order_id}");
        let dry = send(
            &router,
            "POST",
            &path,
            &ops,
            Some(json!({ "action": "retry_now", "dry_run": true })),
        )
        .await;
        let applied = send(
            &router,
            "POST",
            &path,
            &ops,
            Some(
                json!({ "action": "retry_now", "expected_version": dry.body["expected_version"] }),
            ),
        )
        .await;
        assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
        let audit = send(&router, "GET", "/admin/order/audit", &ops, None).await;
        assert_eq!(
            audit.body["items"][0]["actor"],
            json!({ "principal": "ops", "key": "ops" })
        );
    }

    /// The order's version as an operator's listing shows it.
    async fn seen_version(router: &Router, order_id: &str, headers: &[(&str, &str)]) -> u64 {
        let listed = send(router, "GET", "/admin/order/orders", headers, None).await;
        listed.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|order| order["order_id"] == order_id)
            .and_then(|order| order["version"].as_u64())
            .expect("the order is listed with its version")
    }

    async fn seed_with(router: &Router, key: &[(&str, &str)]) {
        let mut with_key = key.to_vec();
        with_key.push(("idempotency-key", "seed-stock"));
        let stock = send(
            router,
            "PUT",
            "/stock/book",
            &with_key,
            Some(json!({ "on_hand": 10, "unit_price_minor": 1500, "currency": "EUR" })),
        )
        .await;
        assert_eq!(stock.status, StatusCode::OK, "{}", stock.body);
        let mut headers = key.to_vec();
        headers.push(("idempotency-key", "seed-alice"));
        let top_up = send(
            router,
            "POST",
            "/wallets/alice/top-ups",
            &headers,
            Some(json!({ "amount_minor": 10_000, "currency": "EUR" })),
        )
        .await;
        assert_eq!(top_up.status, StatusCode::CREATED, "{}", top_up.body);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_redriven_through_their_consumers_outbox_or_discarded_with_a_reason()
     {
        // Proves a dead letter is listed with its bytes, a dry-run redrive leaves it in place, a redrive queues the same envelope in its consumer's outbox and deletes it, and a discard needs a reason.
        use saldo_engine::{DeadLetter, Store as _};
        let backend = MemoryBackend::new();
        let router = admin_over(backend.clone());
        let order_id = stuck_order(&router).await;
        let envelope = backend
            .lock()
            .outbox_pending(Service::Order, 10)
            .first()
            .map(|row| (*row.envelope).clone())
            .expect("the reserve command waits in the outbox");
        for error in ["poison one", "poison two"] {
            let letter = DeadLetter {
                message_id: Some(envelope.message_id),
                message_type: Some("ReserveStock"),
                order_id: Some(order_id.clone()),
                error: error.to_owned(),
                key: order_id.clone(),
                payload: envelope.encode(),
                origin: "test".to_owned(),
            };
            backend
                .record_dead_letter(Service::Inventory, &letter)
                .await
                .expect("recorded");
        }
        let listed = send(
            &router,
            "GET",
            "/admin/inventory/dead-letters?limit=1",
            &[],
            None,
        )
        .await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(listed.body["items"][0]["error"], "poison one");
        assert_eq!(listed.body["next"], 1);
        let dry = send(
            &router,
            "POST",
            "/admin/inventory/dead-letters/1",
            &[],
            Some(json!({ "action": "redrive", "dry_run": true })),
        )
        .await;
        assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
        assert_eq!(backend.dead_letters().len(), 2, "a dry run deletes nothing");
        let redriven = send(
            &router,
            "POST",
            "/admin/inventory/dead-letters/1",
            &[],
            Some(json!({ "action": "redrive" })),
        )
        .await;
        assert_eq!(redriven.status, StatusCode::OK, "{}", redriven.body);
        let queued = backend.lock().outbox_pending(Service::Inventory, 10);
        assert_eq!(
            queued
                .iter()
                .map(|row| (*row.envelope).clone())
                .collect::<Vec<_>>(),
            vec![envelope]
        );
        let again = send(
            &router,
            "POST",
            "/admin/inventory/dead-letters/1",
            &[],
            Some(json!({ "action": "redrive" })),
        )
        .await;
        assert_eq!(
            code(&again),
            (StatusCode::NOT_FOUND, Some("dead_letter_not_found"))
        );
        let no_reason = send(
            &router,
            "POST",
            "/admin/inventory/dead-letters/2",
            &[],
            Some(json!({ "action": "discard" })),
        )
        .await;
        assert_eq!(
            code(&no_reason),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("reason_required"))
        );
        let discarded = send(
            &router,
            "POST",
            "/admin/inventory/dead-letters/2",
            &[],
            Some(json!({ "action": "discard", "reason": "a test letter" })),
        )
        .await;
        assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.body);
        assert!(backend.dead_letters().is_empty());
        let audit = send(&router, "GET", "/admin/inventory/audit", &[], None).await;
        assert_eq!(audit.body["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(audit.body["items"][1]["dry_run"]["reason"], "a test letter");
    }
}
