//! Saldo's HTTP edge.
//!
//! - [`api`]: the REST API (orders, wallets, stock, health, readiness,
//!   metrics, the OpenAPI document) over any [`saldo_engine::Store`],
//!   deciding through [`saldo_engine::execute`].
//! - [`gateway`]: the optional layer of API keys (stored hashed, compared in
//!   constant time), per-key token-bucket rate limits and request checks.
//! - [`proxy`]: `saldo gateway`'s routing of each resource to its service.
//! - [`problem`]: every error as `application/problem+json` with a stable code.
//!
//! Contract: handlers translate and carry; every decision about money,
//! stock and saga state is made by `saldo-domain`, and a request either
//! commits all of its decision or nothing (a refused or failed request
//! writes nothing). Responses are sent only after the commit.

pub mod api;
pub mod context;
pub mod gateway;
pub mod problem;
pub mod proxy;

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
