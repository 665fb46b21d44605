//! TLS for the listener: a rustls `ServerConfig` built from PEM files with
//! the ring provider (never the process-default provider).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Build a server configuration from PEM text.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: "certificate".into(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: "certificate".into(),
            msg: "no certificate in PEM".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::File {
        path: "key".into(),
        msg: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Read the PEM files and build a server configuration.
pub async fn load_server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |p: &Path| {
        let p = p.to_path_buf();
        async move {
            tokio::fs::read(&p).await.map_err(|e| TlsError::File {
                path: p.display().to_string(),
                msg: e.to_string(),
            })
        }
    };
    let c = read(cert).await?;
    let k = read(key).await?;
    server_config_from_pem(&c, &k).map_err(|e| match e {
        TlsError::File { path, msg } if path == "certificate" => TlsError::File {
            path: cert.display().to_string(),
            msg,
        },
        TlsError::File { msg, .. } => TlsError::File {
            path: key.display().to_string(),
            msg,
        },
        other => other,
    })
}
