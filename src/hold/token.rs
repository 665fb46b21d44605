//! Release tokens: `<hold id>.<expiry, hex Unix seconds>.<MAC>`.
//!
//! The MAC is HMAC-SHA256 over a version tag, the hold id, the original
//! sender's normalised address and the expiry, truncated to 80 bits and
//! written in lower-case base32, so the whole token is lower-case letters,
//! digits, `-` and `.` and fits an address local part (at most 64
//! characters with a prefix of up to 10). A token is only checked online
//! (each guess is one SMTP message), where 80 bits are far beyond reach.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::graph::Ts;

const MAC_BYTES: usize = 10;
const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed release token")]
    Malformed,
    #[error("release token signature does not match")]
    BadSignature,
    #[error("release token expired")]
    Expired,
}

/// The parts of a token, before its MAC is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub hold_id: String,
    pub expires_at: Ts,
    mac: [u8; MAC_BYTES],
}

/// Issues and checks release tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        TokenKey {
            secret: secret.into(),
        }
    }

    fn mac(&self, id: &str, sender: &str, expires_at: Ts) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => <Hmac<Sha256> as Mac>::new(&Default::default()),
        };
        m.update(b"misdirect-release-v1\0");
        m.update(id.as_bytes());
        m.update(b"\0");
        m.update(sender.as_bytes());
        m.update(b"\0");
        m.update(&expires_at.to_be_bytes());
        m
    }

    /// A token for hold `id`, valid for `sender` (normalised) until `expires_at`.
    pub fn issue(&self, id: &str, sender: &str, expires_at: Ts) -> String {
        let tag = self.mac(id, sender, expires_at).finalize().into_bytes();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&tag[..MAC_BYTES]);
        format!("{id}.{:x}.{}", expires_at.max(0), b32(&mac))
    }

    /// Split a token (case-insensitive) without checking it.
    pub fn parse(token: &str) -> Result<ParsedToken, TokenError> {
        let token = token.to_ascii_lowercase();
        let mut it = token.split('.');
        let (Some(id), Some(exp), Some(mac), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(TokenError::Malformed);
        };
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(TokenError::Malformed);
        }
        let expires_at = i64::from_str_radix(exp, 16).map_err(|_| TokenError::Malformed)?;
        let mac = unb32(mac).ok_or(TokenError::Malformed)?;
        Ok(ParsedToken {
            hold_id: id.to_string(),
            expires_at,
            mac,
        })
    }

    /// Check a parsed token's MAC for `sender` (constant time), then its expiry.
    pub fn verify(&self, t: &ParsedToken, sender: &str, now: Ts) -> Result<(), TokenError> {
        self.mac(&t.hold_id, sender, t.expires_at)
            .verify_truncated_left(&t.mac)
            .map_err(|_| TokenError::BadSignature)?;
        if now >= t.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn b32(bytes: &[u8; MAC_BYTES]) -> String {
    let mut out = String::with_capacity(16);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

fn unb32(s: &str) -> Option<[u8; MAC_BYTES]> {
    if s.len() != MAC_BYTES * 8 / 5 {
        return None;
    }
    let mut out = [0u8; MAC_BYTES];
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut i = 0;
    for c in s.bytes() {
        let v = B32.iter().position(|x| *x == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(i)? = ((acc >> bits) & 0xff) as u8;
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn issue_verify_and_refuse() {
        let k = TokenKey::new(b"0123456789abcdef0123".to_vec());
        let id = crate::outbound::spool::new_id(1_700_000_000);
        let t = k.issue(&id, "alice@acme.com", 1_700_000_100);
        assert!(t.len() + "release+".len() <= 64, "{t}");
        let p = TokenKey::parse(&t).unwrap();
        assert_eq!(p.hold_id, id);
        assert_eq!(k.verify(&p, "alice@acme.com", 1_700_000_099), Ok(()));
        // Upper-cased in transit: still the same token.
        let p2 = TokenKey::parse(&t.to_ascii_uppercase()).unwrap();
        assert_eq!(k.verify(&p2, "alice@acme.com", 1_700_000_000), Ok(()));
        assert_eq!(
            k.verify(&p, "alice@acme.com", 1_700_000_100),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(&p, "mallory@acme.com", 0),
            Err(TokenError::BadSignature)
        );
        let other = TokenKey::new(b"another secret, also long".to_vec());
        assert_eq!(
            other.verify(&p, "alice@acme.com", 0),
            Err(TokenError::BadSignature)
        );
        // Extending the expiry breaks the MAC.
        let forged = t.replacen(
            &format!(".{:x}.", 1_700_000_100),
            &format!(".{:x}.", 1_900_000_000),
            1,
        );
        let pf = TokenKey::parse(&forged).unwrap();
        assert_eq!(
            k.verify(&pf, "alice@acme.com", 0),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "a.b",
            "x.zz.aaaaaaaaaaaaaaaa",
            "x.10.aaaa",
            "../x.10.aaaaaaaaaaaaaaaa",
            "a.1.b.c",
        ] {
            assert_eq!(TokenKey::parse(bad), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn base32_roundtrip() {
        let m = [0u8, 1, 2, 250, 251, 252, 253, 254, 255, 7];
        assert_eq!(unb32(&b32(&m)), Some(m));
    }
}
