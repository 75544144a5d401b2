//! Saldo's HTTP edge.
//!
//! - [`api`]: the REST API (orders, wallets, stock, health, readiness,
//!   metrics, the OpenAPI document) over any [`saldo_engine::Store`],
//!   deciding through [`saldo_engine::execute`].
//! - [`admin`]: the operator API under `/admin` (orders by state and age,
//!   one order's story, dead letters, audit, interventions with dry runs).
//! - [`gateway`]: the optional layer of API keys (stored hashed, compared in
//!   constant time), per-key token-bucket rate limits and request checks.
//! - [`proxy`]: `saldo gateway`'s routing of each resource to its service.
//! - [`problem`]: every error as `application/problem+json` with a stable code.
//! - [`tls`]: TLS on the listeners (optionally requiring client
//!   certificates) and from the gateway to the services.
//!
//! Contract: handlers translate and carry; every decision about money,
//! stock and saga state is made by `saldo-domain`, and a request either
//! commits all of its decision or nothing (a refused or failed request
//! writes nothing). Responses are sent only after the commit.

pub mod admin;
pub mod api;
pub mod context;
pub mod gateway;
pub mod problem;
pub mod proxy;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// How long a client may take to send a request's line and headers; past
/// it, the connection is closed. A slow client holds a connection, a task
/// and a buffer, so it gets seconds, not minutes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a whole request body (at most
/// [`context::BODY_BYTES_MAX`] bytes); past it, 408 and the connection closes.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed `accept` (for example, out of file
/// descriptors), so that the loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds a listener puts on each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`BODY_READ_TIMEOUT`]; handlers read it from the request's
    /// extensions (absent: the default).
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` with the default [`Limits`] until
/// `shutdown` resolves, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, Limits::default(), shutdown).await
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, router, limits, None, shutdown).await
}

/// [`serve_with`], over TLS when `tls` is set (see [`tls::server_config`]).
/// Every listener of Saldo (the services, dev mode, the gateway) goes
/// through here, so none of them can be held open by a client that sends
/// its request slowly: the TLS handshake, like the request's head, must end
/// within [`Limits::header_read_timeout`]. A connection whose handshake
/// fails (no client certificate where one is required, one from another
/// CA, plain HTTP on a TLS port) is closed before any request is read.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let service = TowerToHyperService::new(router.layer(axum::Extension(limits)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let Some(acceptor) = &acceptor else {
            let connection =
                graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    // Timeouts and clients that vanish end here; neither is ours.
                    tracing::debug!(%error, "connection closed with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task, so that a slow or
        // silent client holds up no one else; graceful shutdown waits only
        // for connections that completed it.
        let handshake = acceptor.accept(stream);
        let (http, service, watcher) = (http.clone(), service.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake took too long");
                    return;
                }
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
