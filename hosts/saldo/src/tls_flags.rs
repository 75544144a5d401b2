//! The TLS flags every HTTP listener takes (`saldo order|payment|inventory
//! --http-address`, `saldo gateway`, `saldo dev`), and the gateway's flags
//! for reaching the services over TLS with a client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use saldo_http::tls::{ClientFiles, ServerFiles, TlsError};

/// Serve HTTPS instead of HTTP, optionally requiring client certificates.
#[derive(Debug, Clone, Args)]
pub struct ListenerTls {
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(
        long,
        value_name = "FILE",
        env = "SALDO_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "SALDO_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Require every client to present a certificate signed by this CA
    /// (PEM): mutual TLS. A client without one fails the TLS handshake.
    #[arg(
        long,
        value_name = "FILE",
        env = "SALDO_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Admit only client certificates valid for this DNS name (a subject
    /// alternative name, matched as TLS matches a server's name) besides
    /// being signed by --tls-client-ca; repeat it to admit several. Without
    /// it, every certificate the CA signed for client authentication is
    /// admitted. Any other client fails the handshake (alert access_denied).
    #[arg(
        long,
        value_name = "NAME",
        env = "SALDO_TLS_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "tls_client_ca"
    )]
    tls_client_name: Vec<String>,
}

impl ListenerTls {
    /// The listener's TLS configuration, or `None` for plain HTTP. Reads
    /// the files now, so that a missing one stops the process at start-up.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        let (Some(certificate), Some(private_key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        saldo_http::tls::server_config(&ServerFiles {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            client_names: self.tls_client_name.clone(),
        })
        .map(Some)
    }

    /// Whether only clients with a certificate naming one of
    /// --tls-client-name are admitted: the one way a service knows the
    /// forwarded principal headers come from the gateway.
    pub fn admits_only_named_clients(&self) -> bool {
        self.tls_client_ca.is_some() && !self.tls_client_name.is_empty()
    }

    /// `http` or `https`, for the banner.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether any of the flags is set.
    pub fn is_set(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_client_ca.is_some()
            || !self.tls_client_name.is_empty()
    }
}

/// How the gateway reaches `https://` services.
#[derive(Debug, Clone, Args)]
pub struct UpstreamTls {
    /// The CA (PEM) that signs the services' certificates; needed for
    /// https:// service URLs.
    #[arg(long, value_name = "FILE", env = "SALDO_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// The client certificate (PEM) the gateway presents to the services,
    /// for services started with --tls-client-ca.
    #[arg(
        long,
        value_name = "FILE",
        env = "SALDO_UPSTREAM_CLIENT_CERT",
        requires_all = ["upstream_client_key", "upstream_ca"]
    )]
    upstream_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --upstream-client-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "SALDO_UPSTREAM_CLIENT_KEY",
        requires = "upstream_client_cert"
    )]
    upstream_client_key: Option<PathBuf>,
}

impl UpstreamTls {
    /// Whether `https://` upstreams can be verified.
    pub fn has_ca(&self) -> bool {
        self.upstream_ca.is_some()
    }

    /// The proxy's client configuration. Reads the files now.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let files = self.upstream_ca.as_ref().map(|ca| ClientFiles {
            ca: ca.clone(),
            identity: self
                .upstream_client_cert
                .clone()
                .zip(self.upstream_client_key.clone()),
        });
        saldo_http::tls::client_config(files.as_ref())
    }
}
