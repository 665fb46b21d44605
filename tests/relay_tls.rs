//! STARTTLS with a certificate made by rcgen; the client is tokio-rustls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{message, split_trace, start, Client, Sink};
use rustls::pki_types::ServerName;
use tokio::io::BufReader;

fn tls_client(cert_der: rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn starttls_upgrade_then_relay_and_require_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();

    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.server.tls_cert = Some(cert_path.clone());
        c.server.tls_key = Some(key_path.clone());
        c.server.require_tls = true;
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    c.expect("MAIL FROM:<a@example.com>", "530 5.7.0").await;
    // Anything pipelined after STARTTLS must be dropped, not run inside TLS.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("220 2.0.0"), "{r}");
    let tcp = c.io.into_inner();
    let tls = tls_client(ck.cert.der().clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Client {
        io: BufReader::new(tls),
    };
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS offered twice: {ehlo}");
    c.expect("STARTTLS", "503 5.5.1").await;
    let m = message("a@example.com", "b@example.org", "tls");
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.recv().await;
    let (trace, body) = split_trace(&got.data);
    assert!(trace.contains("with ESMTPS id"), "{trace}");
    assert_eq!(body, m);
    c.expect("QUIT", "221").await;
}

#[tokio::test]
async fn bad_certificate_files_are_refused_at_build() {
    let certs = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, "not a certificate").unwrap();
    std::fs::write(&key_path, "not a key").unwrap();
    let err = misdirect::tls::load_server_config(&cert_path, &key_path)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cert.pem"), "{err}");
}
