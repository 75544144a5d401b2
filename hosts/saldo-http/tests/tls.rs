//! TLS on the listeners and mTLS from the gateway to a service, over real
//! sockets with certificates generated here: a request through the gateway
//! reaches the service; a client without the gateway's certificate does not
//! get past the service's handshake, so it cannot send it a forged
//! `Saldo-Principal`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use saldo_engine::{MemoryBackend, Store};
use saldo_http::api::Api;
use saldo_http::gateway::{Gateway, hash_key, parse_keys, to_hex};
use saldo_http::tls::{ClientFiles, ServerFiles};
use saldo_types::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// Generous room for a handshake or an answer on a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(15);
const KEY: &str = "sk_tls_test";

fn clock() -> Timestamp {
    Timestamp::from_unix_ms(1_800_000_000_000)
}

/// A certificate authority of the test.
struct Authority {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a key");
        let certificate = params.self_signed(&key).expect("a CA certificate");
        Authority { certificate, key }
    }

    /// A leaf for `localhost` for `purpose`, written as PEM files in `dir`:
    /// (certificate, key).
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        purpose: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        self.issue_for(dir, name, "localhost", vec![purpose])
    }

    /// A leaf for the DNS name `subject_name` with exactly `purposes` as
    /// its extended key usages (none: no such extension), written as PEM
    /// files in `dir`: (certificate, key).
    fn issue_for(
        &self,
        dir: &Path,
        name: &str,
        subject_name: &str,
        purposes: Vec<ExtendedKeyUsagePurpose>,
    ) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![subject_name.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = purposes;
        let key = KeyPair::generate().expect("a key");
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .expect("a leaf certificate");
        let certificate_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&certificate_path, certificate.pem()).expect("writes");
        std::fs::write(&key_path, key.serialize_pem()).expect("writes");
        (certificate_path, key_path)
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.certificate.pem()).expect("writes");
        path
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("saldo-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

async fn listen(router: Router, tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(saldo_http::serve_with_tls(
        listener,
        router,
        saldo_http::Limits::default(),
        Some(tls),
        std::future::pending(),
    ));
    address
}

/// A TLS handshake with `localhost` at `address`, then `GET path`; the
/// answer's text, or the error that ended the exchange.
async fn exchange(
    config: rustls::ClientConfig,
    address: SocketAddr,
    path: &str,
) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| error.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|error| error.to_string())?;
        // With TLS 1.3 the server judges the client's certificate after the
        // client has finished its side, so a refusal shows on first read.
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY}\r\nsaldo-principal: mallory\r\nconnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|error| error.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1") {
            Ok(answer)
        } else {
            Err(format!("no HTTP answer: {answer:?}"))
        }
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "neither an answer nor an error in time".to_owned())?
}

#[tokio::test]
async fn the_gateway_reaches_a_service_over_mtls_and_nobody_else_does() {
    // Proves mTLS between the gateway and a service: through the gateway a
    // request is answered; directly, without a client certificate, with one
    // from another CA, or over plain HTTP, the service answers nothing.
    let dir = scratch_dir("mtls");
    let ca = Authority::new("saldo test CA");
    let rogue = Authority::new("rogue CA");
    let ca_path = ca.write(&dir, "ca");
    let (service_cert, service_key) =
        ca.issue(&dir, "service", ExtendedKeyUsagePurpose::ServerAuth);
    let (gateway_cert, gateway_key) =
        ca.issue(&dir, "gateway", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) =
        ca.issue(&dir, "gateway-client", ExtendedKeyUsagePurpose::ClientAuth);
    let (rogue_cert, rogue_key) =
        rogue.issue(&dir, "rogue-client", ExtendedKeyUsagePurpose::ClientAuth);

    // The payment service, requiring client certificates from the CA.
    let backend: Arc<dyn Store> = Arc::new(MemoryBackend::new());
    let mut api = Api::new(clock);
    api.payment = Some(backend);
    let service_router = api.router();
    let top_up = Request::post("/wallets/alice/top-ups")
        .header("content-type", "application/json")
        .header("idempotency-key", "tls-seed")
        .body(Body::from(r#"{"amount_minor":4200,"currency":"EUR"}"#))
        .expect("a request");
    let seeded = service_router
        .clone()
        .oneshot(top_up)
        .await
        .expect("answers");
    assert_eq!(seeded.status(), StatusCode::CREATED);
    let service_tls = saldo_http::tls::server_config(&ServerFiles {
        certificate: service_cert,
        private_key: service_key,
        client_ca: Some(ca_path.clone()),
        client_names: Vec::new(),
    })
    .expect("the service's TLS settings");
    let service = listen(service_router, service_tls).await;

    // The gateway: HTTPS for clients, its client certificate towards the service.
    let upstream: axum::http::Uri = format!("https://localhost:{}", service.port())
        .parse()
        .expect("a URI");
    let upstream_tls = saldo_http::tls::client_config(Some(&ClientFiles {
        ca: ca_path.clone(),
        identity: Some((client_cert.clone(), client_key.clone())),
    }))
    .expect("the gateway's client TLS settings");
    let keys = format!(
        "[[key]]\nname = \"shop\"\nsha256 = \"{}\"\ncustomers = [\"alice\"]\nscopes = [\"wallets:read\"]\n",
        to_hex(&hash_key(KEY))
    );
    let proxy = saldo_http::proxy::router_with_tls(
        saldo_http::proxy::Upstreams {
            order: upstream.clone(),
            payment: upstream.clone(),
            inventory: upstream,
        },
        upstream_tls,
        None,
    );
    let gateway_router = Gateway::new(parse_keys(&keys).expect("keys")).protect(proxy);
    let gateway_tls = saldo_http::tls::server_config(&ServerFiles {
        certificate: gateway_cert,
        private_key: gateway_key,
        client_ca: None,
        client_names: Vec::new(),
    })
    .expect("the gateway's TLS settings");
    let gateway = listen(gateway_router, gateway_tls).await;

    // A client that trusts the CA and has no certificate of its own.
    let anonymous = || {
        saldo_http::tls::client_config(Some(&ClientFiles {
            ca: ca_path.clone(),
            identity: None,
        }))
        .expect("a client")
    };
    let through = exchange(anonymous(), gateway, "/wallets/alice")
        .await
        .expect("the gateway answers over TLS");
    assert!(through.starts_with("HTTP/1.1 200"), "{through}");
    assert!(through.contains("\"balance_minor\":4200"), "{through}");

    let direct = exchange(anonymous(), service, "/wallets/alice").await;
    let refused = direct.expect_err("no client certificate, no answer");
    assert!(refused.contains("CertificateRequired"), "{refused}");

    let forged = saldo_http::tls::client_config(Some(&ClientFiles {
        ca: ca_path.clone(),
        identity: Some((rogue_cert, rogue_key)),
    }))
    .expect("a client");
    let refused = exchange(forged, service, "/wallets/alice")
        .await
        .expect_err("a certificate from another CA, no answer");
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );

    // The gateway's own certificate, presented directly, is admitted: the
    // service trusts the CA, not an address.
    let gateway_identity = saldo_http::tls::client_config(Some(&ClientFiles {
        ca: ca_path,
        identity: Some((client_cert, client_key)),
    }))
    .expect("a client");
    let admitted = exchange(gateway_identity, service, "/healthz")
        .await
        .expect("the CA's client certificate is admitted");
    assert!(admitted.starts_with("HTTP/1.1 200"), "{admitted}");

    // Plain HTTP to the TLS port: closed without an HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(gateway)
        .await
        .expect("connects");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("sends");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_err() || !answer.contains("HTTP/1.1"),
        "plain HTTP got {answer:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_service_with_client_names_admits_only_certificates_for_those_names() {
    // Regression: with --tls-client-ca alone a service admitted every
    // certificate its CA signed. With client names it admits a certificate
    // of the CA only when it is valid for one of them and, if it has an
    // extended-key-usage extension, that lists clientAuth; everyone else
    // fails the handshake before any HTTP is read.
    let dir = scratch_dir("names");
    let ca = Authority::new("saldo test CA");
    let ca_path = ca.write(&dir, "ca");
    let (service_cert, service_key) =
        ca.issue(&dir, "service", ExtendedKeyUsagePurpose::ServerAuth);
    let client_auth = || vec![ExtendedKeyUsagePurpose::ClientAuth];
    let gateway = ca.issue_for(&dir, "gateway", "gateway.saldo.internal", client_auth());
    let second = ca.issue_for(&dir, "second", "gateway-b.saldo.internal", client_auth());
    let without_usage = ca.issue_for(&dir, "no-eku", "gateway.saldo.internal", Vec::new());
    let other = ca.issue_for(
        &dir,
        "reconciler",
        "reconciler.saldo.internal",
        client_auth(),
    );
    let server_only = ca.issue_for(
        &dir,
        "server-only",
        "gateway.saldo.internal",
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );

    let service_tls = saldo_http::tls::server_config(&ServerFiles {
        certificate: service_cert,
        private_key: service_key,
        client_ca: Some(ca_path.clone()),
        client_names: vec![
            "gateway.saldo.internal".to_owned(),
            "gateway-b.saldo.internal".to_owned(),
        ],
    })
    .expect("the service's TLS settings");
    let service = listen(Api::new(clock).router(), service_tls).await;
    let client = |(certificate, key): (PathBuf, PathBuf)| {
        saldo_http::tls::client_config(Some(&ClientFiles {
            ca: ca_path.clone(),
            identity: Some((certificate, key)),
        }))
        .expect("a client")
    };

    for (what, identity) in [
        ("the first allowed name", gateway),
        ("the second allowed name", second),
        ("an allowed name without extended key usages", without_usage),
    ] {
        let admitted = exchange(client(identity), service, "/healthz")
            .await
            .unwrap_or_else(|error| panic!("{what} is admitted: {error}"));
        assert!(admitted.starts_with("HTTP/1.1 200"), "{what}: {admitted}");
    }

    let refused = exchange(client(other), service, "/healthz")
        .await
        .expect_err("a certificate of the CA for another name, no answer");
    assert!(refused.contains("AccessDenied"), "{refused}");

    let refused = exchange(client(server_only), service, "/healthz")
        .await
        .expect_err("an allowed name without the clientAuth usage, no answer");
    assert!(!refused.contains("HTTP/1.1"), "{refused}");

    let unnamed = saldo_http::tls::client_config(Some(&ClientFiles {
        ca: ca_path.clone(),
        identity: None,
    }))
    .expect("a client");
    let refused = exchange(unnamed, service, "/healthz")
        .await
        .expect_err("no client certificate, no answer");
    assert!(refused.contains("CertificateRequired"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_names_are_refused_when_they_cannot_be_checked() {
    // Proves a client name that is not a DNS name, or client names without
    // a client CA, stop the listener at start-up instead of admitting anyone.
    let dir = scratch_dir("bad-names");
    let ca = Authority::new("saldo test CA");
    let ca_path = ca.write(&dir, "ca");
    let (certificate, private_key) = ca.issue(&dir, "service", ExtendedKeyUsagePurpose::ServerAuth);
    let refusal = |client_ca: Option<PathBuf>, name: &str| {
        saldo_http::tls::server_config(&ServerFiles {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
            client_ca,
            client_names: vec![name.to_owned()],
        })
        .expect_err("refused")
        .to_string()
    };
    let error = refusal(Some(ca_path), "not a name!");
    assert!(
        error.contains("\"not a name!\" is not a DNS name"),
        "{error}"
    );
    let error = refusal(None, "gateway.saldo.internal");
    assert!(error.contains("need a client CA"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
