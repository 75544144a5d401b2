//! PostgreSQL over TLS, configured through the URL alone (`sslmode`,
//! `sslrootcert`), as a managed PostgreSQL needs: the local server serves
//! TLS (Debian's `ssl = on` with its snakeoil certificate).

use saldo_postgres::PgStore;
use saldo_postgres::testing::TEST_DATABASE_URL;

fn admin_url() -> String {
    std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| panic!("{TEST_DATABASE_URL} is not set"))
}

fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

#[tokio::test]
async fn sslmode_require_encrypts_and_verify_full_refuses_a_server_of_another_ca() {
    // Proves sqlx is built with TLS: `sslmode=require` gives an encrypted
    // session, and `verify-full` against a CA that did not sign the
    // server's certificate refuses to connect.
    let url = admin_url();
    let store = PgStore::connect(&with_query(&url, "sslmode=require"), 1)
        .await
        .expect("sslmode=require connects to a server with ssl = on");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .expect("reads pg_stat_ssl");
    assert!(encrypted, "sslmode=require gave a plain session");

    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("a key");
    let other_ca = params.self_signed(&key).expect("a CA");
    let path = std::env::temp_dir().join(format!("saldo-pg-other-ca-{}.pem", std::process::id()));
    std::fs::write(&path, other_ca.pem()).expect("writes");
    let refused = PgStore::connect(
        &with_query(
            &url,
            &format!("sslmode=verify-full&sslrootcert={}", path.display()),
        ),
        1,
    )
    .await;
    let _ = std::fs::remove_file(&path);
    let error = refused.expect_err("a server certificate from another CA is refused");
    let text = error.to_string();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
}
