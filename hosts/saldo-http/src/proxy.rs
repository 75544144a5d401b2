//! `saldo gateway`'s reverse proxy: each resource goes to the service that
//! owns it (`/orders` to the order service, `/wallets` to payment, `/stock`
//! to inventory). The proxy adds the request's correlation id and trace
//! context when the client sent none, and never forwards the API key.
//!
//! An upstream may be `https://`: the proxy then verifies the service's
//! certificate against the CA it was given and, when configured, presents
//! its own client certificate (mTLS; see [`crate::tls`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use saldo_domain::messages::{MessageId, Service};
use saldo_domain::story::StoryPart;
use saldo_types::OrderId;
use serde_json::json;

use crate::api::{OPENAPI, method_not_allowed};
use crate::context::{RequestContext, observe};
use crate::gateway::{API_KEY, PRINCIPAL_HEADERS, Resource};
use crate::problem::Problem;

/// How long an upstream may take to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that describe one hop, not the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Where each resource's service listens (`http://host:port` or
/// `https://host:port`).
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The order service.
    pub order: Uri,
    /// The payment service.
    pub payment: Uri,
    /// The inventory service.
    pub inventory: Uri,
}

impl Upstreams {
    fn of(&self, resource: Resource) -> &Uri {
        match resource {
            Resource::Orders => &self.order,
            Resource::Wallets => &self.payment,
            Resource::Stock => &self.inventory,
            Resource::Admin(service) => self.of_service(service),
        }
    }

    fn of_service(&self, service: Service) -> &Uri {
        match service {
            Service::Order => &self.order,
            Service::Payment => &self.payment,
            Service::Inventory => &self.inventory,
        }
    }

    fn all(&self) -> [(&'static str, &Uri); 3] {
        [
            ("order", &self.order),
            ("payment", &self.payment),
            ("inventory", &self.inventory),
        ]
    }
}

struct Proxy {
    upstreams: Upstreams,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    metrics: Option<PrometheusHandle>,
}

/// The proxy's router: its own probes and metrics, everything else
/// forwarded, to `http://` upstreams only.
pub fn router(upstreams: Upstreams, metrics: Option<PrometheusHandle>) -> Router {
    let tls = crate::tls::client_config(None)
        .expect("rustls' safe default protocol versions exist in the ring provider");
    router_with_tls(upstreams, tls, metrics)
}

/// [`router`], reaching `https://` upstreams with `tls` (see
/// [`crate::tls::client_config`]).
pub fn router_with_tls(
    upstreams: Upstreams,
    tls: rustls::ClientConfig,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // The TLS layer above decides the scheme; the TCP connector must let
    // `https://` through.
    connector.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let proxy = Proxy {
        upstreams,
        client: Client::builder(TokioExecutor::new()).build(connector),
        metrics,
    };
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        // The API's route templates, so that metrics and logs name the
        // route; any other path is forwarded too and labelled `unmatched`.
        .route("/orders", any(forward))
        .route("/orders/{order_id}", any(forward))
        .route("/wallets/{customer}", any(forward))
        .route("/wallets/{customer}/top-ups", any(forward))
        .route("/stock/{sku}", any(forward))
        .route("/admin/orders/{order_id}/story", get(story))
        .route("/admin/orders/{order_id}/export", get(export))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(forward)
        .layer(axum::middleware::from_fn(observe))
        .with_state(Arc::new(proxy))
}

async fn metrics_page(State(proxy): State<Arc<Proxy>>) -> Response {
    crate::api::metrics_response(proxy.metrics.as_ref())
}

/// Ready when every upstream says it is ready. The answer (open to anyone)
/// names which upstream is not ready in words; the cause (addresses, error
/// text) goes to the log only.
async fn readyz(State(proxy): State<Arc<Proxy>>) -> Response {
    let mut failures = Vec::new();
    for (name, base) in proxy.upstreams.all() {
        let Some(uri) = upstream_uri(base, "/readyz") else {
            tracing::warn!(upstream = name, %base, "the upstream's address is not http(s)://HOST:PORT");
            failures.push(format!("{name}: misconfigured"));
            continue;
        };
        let request = Request::get(uri)
            .body(Body::empty())
            .expect("a GET with a parsed URI is valid");
        match tokio::time::timeout(Duration::from_secs(2), proxy.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                tracing::warn!(upstream = name, status = %response.status(), "the upstream is not ready");
                failures.push(format!("{name}: not ready"));
            }
            Ok(Err(error)) => {
                tracing::warn!(upstream = name, %error, "the upstream does not answer /readyz");
                failures.push(format!("{name}: unreachable"));
            }
            Err(_) => failures.push(format!("{name}: no answer within 2 s")),
        }
    }
    if failures.is_empty() {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "An upstream service is not ready",
            failures.join("; "),
        )
        .into_response()
    }
}

/// `path_and_query` on the upstream at `base` (its scheme and authority).
fn upstream_uri(base: &Uri, path_and_query: &str) -> Option<Uri> {
    format!(
        "{}://{}{path_and_query}",
        base.scheme_str().unwrap_or("http"),
        base.authority()?.as_str()
    )
    .parse()
    .ok()
}

async fn forward(
    State(proxy): State<Arc<Proxy>>,
    Extension(context): Extension<RequestContext>,
    request: Request,
) -> Response {
    let Some(resource) = Resource::of_path(request.uri().path()) else {
        return crate::api::route_not_found().await.into_response();
    };
    let base = proxy.upstreams.of(resource);
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |value| value.as_str());
    let Some(uri) = upstream_uri(base, path_and_query) else {
        return crate::api::route_not_found().await.into_response();
    };
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove(API_KEY);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::HOST);
    // The service sees the same correlation id and trace as the gateway logs.
    context.write_to(&mut parts.headers);
    let upstream = Request::from_parts(parts, body);
    match tokio::time::timeout(UPSTREAM_TIMEOUT, proxy.client.request(upstream)).await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, resource = ?resource, "the upstream did not answer");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "The service behind the gateway did not answer",
                "The service is unreachable; try again shortly.".to_owned(),
            )
            .retry_after_ms(1_000)
            .into_response()
        }
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "The service behind the gateway took too long",
            format!("no answer within {} s", UPSTREAM_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

/// The most bytes of one story part the gateway reads from a service.
pub const STORY_PART_BYTES_MAX: usize = 4 * 1024 * 1024;

/// `GET /admin/orders/{order_id}/story`: each service's part fetched with
/// the caller's principal, merged by the sdk (ADR 0017).
async fn story(
    State(proxy): State<Arc<Proxy>>,
    Extension(context): Extension<RequestContext>,
    crate::context::PathParam(order_id): crate::context::PathParam,
    request: Request,
) -> Response {
    match gathered(proxy, context, order_id, request).await {
        Ok(story) => {
            axum::Json(crate::admin::story_view(&story, saldo_engine::wall_clock())).into_response()
        }
        Err(response) => response,
    }
}

/// `GET /admin/orders/{order_id}/export`: the gathered story as a
/// recording (see [`crate::admin::export_response`]).
async fn export(
    State(proxy): State<Arc<Proxy>>,
    Extension(context): Extension<RequestContext>,
    crate::context::PathParam(order_id): crate::context::PathParam,
    request: Request,
) -> Response {
    match gathered(proxy, context, order_id, request).await {
        Ok(story) => crate::admin::export_response(&story).into_response(),
        Err(response) => response,
    }
}

async fn gathered(
    proxy: Arc<Proxy>,
    context: RequestContext,
    order_id: String,
    request: Request,
) -> Result<saldo_domain::story::Story, Response> {
    let Ok(order_id) = OrderId::new(order_id) else {
        return Err(
            Problem::invalid_field("order_id", "order_id is not a valid id").into_response(),
        );
    };
    let headers = request.headers().clone();
    let fetch = |service: Service, received: Vec<MessageId>| {
        let proxy = proxy.clone();
        let headers = headers.clone();
        let context = context.clone();
        let order_id = order_id.clone();
        async move {
            let ids: Vec<String> = received.iter().map(MessageId::to_hex).collect();
            let path = format!(
                "/admin/{}/orders/{}/story?received={}",
                service.name(),
                order_id,
                ids.join(",")
            );
            let uri = upstream_uri(proxy.upstreams.of_service(service), &path)
                .ok_or_else(|| format!("{service}: misconfigured"))?;
            let mut upstream = Request::get(uri)
                .body(Body::empty())
                .map_err(|error| error.to_string())?;
            for name in PRINCIPAL_HEADERS {
                if let Some(value) = headers.get(&name) {
                    upstream.headers_mut().insert(name, value.clone());
                }
            }
            context.write_to(upstream.headers_mut());
            let response = tokio::time::timeout(UPSTREAM_TIMEOUT, proxy.client.request(upstream))
                .await
                .map_err(|_| format!("{service}: no answer"))?
                .map_err(|error| format!("{service}: {error}"))?;
            if !response.status().is_success() {
                return Err(format!("{service}: status {}", response.status()));
            }
            let body = http_body_util::Limited::new(response.into_body(), STORY_PART_BYTES_MAX);
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|error| format!("{service}: {error}"))?
                .to_bytes();
            serde_json::from_slice::<StoryPart>(&bytes)
                .map_err(|error| format!("{service}: {error}"))
        }
    };
    let story = crate::admin::gather(order_id.clone(), fetch).await;
    if story.rows.is_empty() && story.messages.is_empty() && story.missing.is_empty() {
        return Err(Problem::not_found(
            "order_not_found",
            format!("no service knows order {order_id}"),
        )
        .into_response());
    }
    Ok(story)
}
