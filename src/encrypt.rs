//! S/MIME encryption (RFC 8551): the whole original message becomes the
//! content of a CMS EnvelopedData (AES-256-CBC, the key transported to each
//! recipient with RSA PKCS#1 v1.5), sent as `application/pkcs7-mime;
//! smime-type=enveloped-data`. The outer message repeats the original's
//! address, subject, date and threading headers so it can be routed and
//! listed; decrypting yields the original message byte for byte.
//!
//! Certificates are read from `[encrypt] cert_dir`, one PEM file per
//! recipient named `<address>.pem` (the address in lower case), at the time
//! of each message, so adding a certificate needs no restart.
//!
//! Entry point: [`Encryptor::prepare`].

use std::path::PathBuf;

use base64::Engine;
use cms::builder::{
    ContentEncryptionAlgorithm, EnvelopedDataBuilder, KeyEncryptionInfo,
    KeyTransRecipientInfoBuilder,
};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::enveloped_data::RecipientIdentifier;
use rsa::pkcs8::DecodePublicKey;
use x509_cert::der::{Any, Decode, DecodePem, Encode};
use x509_cert::Certificate;

use crate::config::{EncryptConfig, EncryptFallback};
use crate::envelope::Envelope;

/// Header saying how a message left misdirect when encryption was asked for.
pub const ENCRYPTION_HEADER: &str = "X-Misdirect-Encryption";

/// Original headers repeated on the outer (encrypted) message.
const OUTER_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
];

/// Encryption errors.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("certificate {path}: {msg}")]
    Cert { path: String, msg: String },
    #[error("certificate directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("CMS: {0}")]
    Cms(String),
    #[error("encryption task failed: {0}")]
    Join(String),
}

/// One recipient's certificate with its RSA key.
#[derive(Debug, Clone)]
pub struct RecipientCert {
    pub address: String,
    cert: Certificate,
    key: rsa::RsaPublicKey,
}

impl RecipientCert {
    /// Parse a PEM certificate; it must carry an RSA key.
    pub fn from_pem(address: &str, pem: &[u8], origin: &str) -> Result<Self, EncryptError> {
        let err = |msg: String| EncryptError::Cert {
            path: origin.to_string(),
            msg,
        };
        let cert = Certificate::from_pem(pem).map_err(|e| err(e.to_string()))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| err(e.to_string()))?;
        let key = rsa::RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| err(format!("not an RSA key: {e}")))?;
        Ok(RecipientCert {
            address: address.to_string(),
            cert,
            key,
        })
    }
}

/// The message split by what can be done for each recipient.
#[derive(Debug)]
pub struct EncryptPlan {
    /// Encrypted copy for the recipients that have a certificate.
    pub encrypted: Option<(Envelope, Vec<u8>)>,
    /// Recipients without a certificate, with the message for them: the
    /// original when the fallback is `hold` (the pipeline holds it), the
    /// original with `X-Misdirect-Encryption: none` when it is `tag` (the
    /// pipeline delivers it).
    pub fallback: Option<(Envelope, Vec<u8>)>,
    pub fallback_action: EncryptFallback,
}

/// Encrypts messages for recipients whose certificate is in the directory.
#[derive(Debug, Clone)]
pub struct Encryptor {
    cfg: EncryptConfig,
}

fn bare(a: &str) -> String {
    a.trim().trim_matches(['<', '>']).to_lowercase()
}

impl Encryptor {
    pub fn new(cfg: EncryptConfig) -> Self {
        Encryptor { cfg }
    }

    fn cert_path(&self, rcpt: &str) -> Option<PathBuf> {
        let a = bare(rcpt);
        if a.is_empty() || a.starts_with('.') || a.contains(['/', '\\', '\0']) || !a.contains('@') {
            return None;
        }
        Some(self.cfg.cert_dir.join(format!("{a}.pem")))
    }

    /// The recipient's certificate, `None` when there is no file for it.
    pub async fn cert_for(&self, rcpt: &str) -> Result<Option<RecipientCert>, EncryptError> {
        let Some(path) = self.cert_path(rcpt) else {
            return Ok(None);
        };
        match tokio::fs::read(&path).await {
            Ok(pem) => {
                RecipientCert::from_pem(&bare(rcpt), &pem, &path.display().to_string()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Split a message to encrypt: one encrypted copy for every recipient
    /// with a certificate, and the fallback for the others. A certificate
    /// file that cannot be used is an error (nothing is sent unencrypted by
    /// mistake).
    pub async fn prepare(
        &self,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<EncryptPlan, EncryptError> {
        let mut certs = Vec::new();
        let mut without = Vec::new();
        for r in &envelope.rcpt_to {
            match self.cert_for(r).await? {
                Some(c) => certs.push((r.clone(), c)),
                None => without.push(r.clone()),
            }
        }
        let encrypted = if certs.is_empty() {
            None
        } else {
            let rcpts: Vec<String> = certs.iter().map(|(r, _)| r.clone()).collect();
            let keys: Vec<RecipientCert> = certs.into_iter().map(|(_, c)| c).collect();
            let owned = raw.to_vec();
            let out = tokio::task::spawn_blocking(move || encrypt_message(&owned, &keys))
                .await
                .map_err(|e| EncryptError::Join(e.to_string()))??;
            Some((
                Envelope {
                    rcpt_to: rcpts,
                    // The outer message is 7-bit (base64) apart from copied
                    // headers, which may be UTF-8 under SMTPUTF8.
                    body_8bit: false,
                    ..envelope.clone()
                },
                out,
            ))
        };
        let fallback = if without.is_empty() {
            None
        } else {
            let msg = match self.cfg.fallback {
                EncryptFallback::Hold => raw.to_vec(),
                EncryptFallback::Tag => {
                    let mut m =
                        format!("{ENCRYPTION_HEADER}: none; no certificate for recipient\r\n")
                            .into_bytes();
                    m.extend_from_slice(raw);
                    m
                }
            };
            Some((
                Envelope {
                    rcpt_to: without,
                    ..envelope.clone()
                },
                msg,
            ))
        };
        Ok(EncryptPlan {
            encrypted,
            fallback,
            fallback_action: self.cfg.fallback,
        })
    }
}

/// Header fields of a raw message, each as its full bytes (with folded
/// continuation lines and line ending), plus the offset of the body.
fn header_fields(raw: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(raw.len());
        let line = &raw[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && pos > start {
            fields.push(&raw[start..pos]);
            start = pos;
        }
        pos = end;
    }
    if pos > start {
        fields.push(&raw[start..pos]);
    }
    fields
}

/// Encrypt `raw` for every certificate; returns the complete outer S/MIME
/// message (CRLF line endings).
pub fn encrypt_message(raw: &[u8], certs: &[RecipientCert]) -> Result<Vec<u8>, EncryptError> {
    let cms_err = |e: &dyn std::fmt::Display| EncryptError::Cms(e.to_string());
    let mut rng = rand::rngs::OsRng;
    let mut key_rngs: Vec<rand::rngs::OsRng> = certs.iter().map(|_| rand::rngs::OsRng).collect();
    let mut builder =
        EnvelopedDataBuilder::new(None, raw, ContentEncryptionAlgorithm::Aes256Cbc, None)
            .map_err(|e| cms_err(&e))?;
    for (c, r) in certs.iter().zip(key_rngs.iter_mut()) {
        let rid = RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: c.cert.tbs_certificate.issuer.clone(),
            serial_number: c.cert.tbs_certificate.serial_number.clone(),
        });
        let ri = KeyTransRecipientInfoBuilder::new(rid, KeyEncryptionInfo::Rsa(c.key.clone()), r)
            .map_err(|e| cms_err(&e))?;
        builder.add_recipient_info(ri).map_err(|e| cms_err(&e))?;
    }
    let enveloped = builder.build_with_rng(&mut rng).map_err(|e| cms_err(&e))?;
    let ci = ContentInfo {
        content_type: x509_cert::der::oid::db::rfc5911::ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(|e| cms_err(&e))?,
    };
    let der = ci.to_der().map_err(|e| cms_err(&e))?;
    // Round-trip check: what we send must parse as CMS.
    ContentInfo::from_der(&der).map_err(|e| cms_err(&e))?;

    let mut out: Vec<u8> = Vec::with_capacity(der.len() * 4 / 3 + 1024);
    for f in header_fields(raw) {
        let name = f
            .iter()
            .position(|b| *b == b':')
            .map(|i| String::from_utf8_lossy(&f[..i]).trim().to_ascii_lowercase());
        if name.is_some_and(|n| OUTER_HEADERS.contains(&n.as_str())) {
            out.extend_from_slice(f);
            if !f.ends_with(b"\r\n") {
                if f.ends_with(b"\n") {
                    out.pop();
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(
        format!(
            "{ENCRYPTION_HEADER}: smime\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
             Content-Description: S/MIME Encrypted Message\r\n\r\n"
        )
        .as_bytes(),
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    for chunk in b64.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_keep_folding() {
        let raw = b"From: a@x\r\nSubject: one\r\n two\r\nTo: b@y\r\n\r\nbody: x\r\n";
        let f = header_fields(raw);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1], b"Subject: one\r\n two\r\n");
    }
}
