//! TLS for Saldo's HTTP listeners and for the gateway's requests to the
//! services (rustls with the ring provider).
//!
//! - [`server_config`]: a listener's certificate and key, and optionally
//!   the CA whose client certificates it requires (mTLS). With a client CA,
//!   a client without a certificate signed by it fails the handshake, so
//!   it never reaches a handler: a service behind the gateway cannot be
//!   sent a forged `Saldo-Principal` by anyone who lacks the gateway's key.
//!   With client names as well, the CA is not enough: the certificate must
//!   also be valid for one of the names (its subject alternative names, as
//!   rustls matches a server's name), else the handshake fails with the
//!   alert `access_denied`. rustls' own [`WebPkiClientVerifier`] checks the
//!   chain, the validity period and the `clientAuth` extended key usage (a
//!   certificate with an extended-key-usage extension that lacks it is
//!   refused; one without the extension is allowed, as RFC 5280 says); the
//!   name check runs only on a certificate it accepted.
//! - [`client_config`]: the CA that signs the services' certificates and,
//!   optionally, the client certificate the gateway presents to them.
//!
//! Every file is read once, at start-up; a file that is missing, unreadable
//! or holds no PEM item of the expected kind is a [`TlsError`] naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// The only protocol Saldo's listeners speak over TLS (ALPN).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing, unreadable or holds no PEM item of its kind.
    #[error("cannot read the {what} {}: {reason}", path.display())]
    File {
        /// What the file should hold ("certificate", "private key", "CA").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause, in words.
        reason: String,
    },
    /// The files were read but do not fit together (for example, the key is
    /// not the certificate's).
    #[error("the TLS settings are not usable: {0}")]
    Invalid(String),
}

/// Where a listener's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// When not empty (and `client_ca` is set), a client's certificate must
    /// also be valid for one of these DNS names: a certificate the CA issued
    /// to anyone else is refused.
    pub client_names: Vec<String>,
}

/// What the gateway trusts and presents towards the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA (PEM) that signs the services' certificates.
    pub ca: PathBuf,
    /// The gateway's client certificate and its key (PEM), for services
    /// that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    // Read first, so that a missing file says so rather than "no certificate".
    let bytes = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failed(error.to_string()))?;
    if certificates.is_empty() {
        return Err(failed("no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what: "private key",
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| failed(error.to_string()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for certificate in certificates("CA", path)? {
        store.add(certificate).map_err(|error| TlsError::File {
            what: "CA",
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// A client verifier that admits only what rustls' WebPKI verifier admits
/// and, of that, only certificates valid for one of `names`. It narrows the
/// inner verifier and never widens it: every other question (signatures,
/// schemes, hints) is the inner verifier's answer.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<DnsName<'static>>,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let allowed = self.names.iter().any(|name| {
            rustls::client::verify_server_name(&parsed, &ServerName::DnsName(name.clone())).is_ok()
        });
        if allowed {
            Ok(verified)
        } else {
            tracing::warn!(
                allowed = ?self.names.iter().map(DnsName::as_ref).collect::<Vec<_>>(),
                "refused a client certificate from the trusted CA: it names none of the allowed clients"
            );
            // Maps to the alert `access_denied`: the certificate is valid,
            // its holder is not admitted.
            Err(CertificateError::ApplicationVerificationFailure.into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The verifier of client certificates signed by the CA at `path`, narrowed
/// to `names` when there are any.
fn client_verifier(path: &Path, names: &[String]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(path)?, provider())
        .build()
        .map_err(|error| TlsError::Invalid(error.to_string()))?;
    if names.is_empty() {
        return Ok(inner);
    }
    let names = names
        .iter()
        .map(|name| {
            DnsName::try_from(name.as_str())
                .map(|name| name.to_owned())
                .map_err(|_| {
                    TlsError::Invalid(format!("the client name {name:?} is not a DNS name"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(NamedClientVerifier { inner, names }))
}

/// A listener's TLS configuration (HTTP/1.1 only).
pub fn server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("certificate", &files.certificate)?;
    let key = private_key(&files.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Invalid(error.to_string()))?;
    let builder = match &files.client_ca {
        Some(path) => {
            builder.with_client_cert_verifier(client_verifier(path, &files.client_names)?)
        }
        None if !files.client_names.is_empty() => {
            return Err(TlsError::Invalid(
                "client names need a client CA to verify the certificates against".to_owned(),
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Invalid(error.to_string()))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The gateway's TLS configuration towards the services. Without files it
/// trusts no CA, which is enough for `http://` upstreams.
pub fn client_config(files: Option<&ClientFiles>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Invalid(error.to_string()))?;
    let Some(files) = files else {
        return Ok(builder
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth());
    };
    let builder = builder.with_root_certificates(roots(&files.ca)?);
    match &files.identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(certificates("certificate", certificate)?, private_key(key)?)
            .map_err(|error| TlsError::Invalid(error.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_in_one_line() {
        // Proves a missing certificate file is refused with its path and kind.
        let files = ServerFiles {
            certificate: PathBuf::from("/nonexistent/saldo-cert.pem"),
            private_key: PathBuf::from("/nonexistent/saldo-key.pem"),
            client_ca: None,
            client_names: Vec::new(),
        };
        let error = server_config(&files).expect_err("refused").to_string();
        assert!(
            error.starts_with("cannot read the certificate /nonexistent/saldo-cert.pem"),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        // Proves a file that holds no certificate is refused, not served empty.
        let path = std::env::temp_dir().join(format!("saldo-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("writes");
        let error = client_config(Some(&ClientFiles {
            ca: path.clone(),
            identity: None,
        }))
        .expect_err("refused")
        .to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
}
