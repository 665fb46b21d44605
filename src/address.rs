//! Address normalisation: every address is normalised before it touches the
//! graph, the model or a log line.
//!
//! Rules (configurable in `[addresses]`): the domain is always lower-cased and
//! converted to ASCII (IDNA/punycode); the local part is lower-cased unless
//! `case_sensitive_local = true`; `+tag` sub-addresses are stripped when
//! `strip_plus_tags = true`; finally the alias map folds several addresses of
//! one person onto one canonical address.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Normalisation settings (`[addresses]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AddressConfig {
    /// Keep the local part's case (RFC 5321 allows case-sensitive local parts;
    /// practically no server uses them). Default: false (lower-case it).
    pub case_sensitive_local: bool,
    /// Strip `+tag` sub-addresses (`bob+news@x` becomes `bob@x`). Default: true.
    pub strip_plus_tags: bool,
    /// Several addresses of one person: alias -> canonical address.
    pub aliases: HashMap<String, String>,
}

impl Default for AddressConfig {
    fn default() -> Self {
        Self {
            case_sensitive_local: false,
            strip_plus_tags: true,
            aliases: HashMap::new(),
        }
    }
}

/// Why an address could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address has no '@'")]
    NoAt,
    #[error("address has an empty local part")]
    EmptyLocal,
    #[error("address has an invalid domain")]
    BadDomain,
}

/// Applies the configured normalisation rules.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    cfg: AddressConfig,
    /// Aliases with both sides already normalised (without the alias step).
    aliases: HashMap<String, String>,
}

impl Normalizer {
    pub fn new(cfg: AddressConfig) -> Self {
        let mut n = Normalizer {
            cfg,
            aliases: HashMap::new(),
        };
        let mut aliases = HashMap::new();
        for (alias, canonical) in &n.cfg.aliases {
            if let (Ok(a), Ok(c)) = (n.basic(alias), n.basic(canonical)) {
                aliases.insert(a, c);
            }
        }
        n.aliases = aliases;
        n
    }

    /// Normalise one address (angle brackets and surrounding white space are
    /// tolerated).
    pub fn normalize(&self, raw: &str) -> Result<String, AddressError> {
        let basic = self.basic(raw)?;
        Ok(match self.aliases.get(&basic) {
            Some(c) => c.clone(),
            None => basic,
        })
    }

    /// The rules without the alias step. A plain-ASCII address takes
    /// [`Normalizer::basic_ascii`], which builds the result in one
    /// allocation; any other one [`Normalizer::basic_general`].
    fn basic(&self, raw: &str) -> Result<String, AddressError> {
        if raw.is_ascii() {
            self.basic_ascii(raw)
        } else {
            self.basic_general(raw)
        }
    }

    /// [`Normalizer::basic_general`] for an ASCII address: ASCII
    /// lower-casing is Unicode lower-casing there and keeps every byte where
    /// it is, so the `+` is found before lower-casing, the domain needs no
    /// IDNA, and local part, `@` and domain are copied once into the result.
    /// It works on bytes: every byte of an ASCII string is a character.
    fn basic_ascii(&self, raw: &str) -> Result<String, AddressError> {
        let (mut local, domain) = split_at_sign_ascii(raw.as_bytes())?;
        if self.cfg.strip_plus_tags {
            if let Some(p) = memchr::memchr(b'+', local) {
                if p > 0 {
                    local = &local[..p];
                }
            }
        }
        if local.is_empty() {
            return Err(AddressError::EmptyLocal);
        }
        let mut d = trim_ascii_ws(domain);
        while let [rest @ .., b'.'] = d {
            d = rest;
        }
        // An empty label: a leading dot or two in a row (a trailing one
        // is gone).
        if d.is_empty() || d.first() == Some(&b'.') || d.windows(2).any(|w| w == b"..") {
            return Err(AddressError::BadDomain);
        }
        let mut out = Vec::with_capacity(local.len() + 1 + d.len());
        out.extend_from_slice(local);
        if !self.cfg.case_sensitive_local {
            out.make_ascii_lowercase();
        }
        out.push(b'@');
        out.extend_from_slice(d);
        if let Some(dom) = out.get_mut(local.len() + 1..) {
            dom.make_ascii_lowercase();
        }
        // ASCII in, ASCII out: never an error.
        String::from_utf8(out).map_err(|_| AddressError::BadDomain)
    }

    /// The rules for any address (see the module documentation).
    fn basic_general(&self, raw: &str) -> Result<String, AddressError> {
        let (local, domain) = split_at_sign(raw)?;
        let mut local = if self.cfg.case_sensitive_local {
            local.to_string()
        } else {
            local.to_lowercase()
        };
        if self.cfg.strip_plus_tags {
            if let Some(p) = local.find('+') {
                if p > 0 {
                    local.truncate(p);
                }
            }
        }
        if local.is_empty() {
            return Err(AddressError::EmptyLocal);
        }
        let domain = normalize_domain(domain)?;
        Ok(format!("{local}@{domain}"))
    }
}

/// The local part and domain of an address as written, angle brackets and
/// surrounding white space removed, split at its last `@`.
fn split_at_sign(raw: &str) -> Result<(&str, &str), AddressError> {
    let s = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let at = s.rfind('@').ok_or(AddressError::NoAt)?;
    Ok((&s[..at], &s[at + 1..]))
}

/// [`split_at_sign`] for an ASCII address, on its bytes: the white space
/// `str::trim` removes is, in ASCII, tab, line feed, vertical tab, form
/// feed, carriage return and space.
fn split_at_sign_ascii(raw: &[u8]) -> Result<(&[u8], &[u8]), AddressError> {
    let mut s = trim_ascii_ws(raw);
    while let [b'<', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b'>'] = s {
        s = rest;
    }
    let s = trim_ascii_ws(s);
    let at = memchr::memrchr(b'@', s).ok_or(AddressError::NoAt)?;
    Ok((&s[..at], &s[at + 1..]))
}

/// `str::trim` for ASCII bytes.
fn trim_ascii_ws(mut s: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    while let [c, rest @ ..] = s {
        if !ws(c) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., c] = s {
        if !ws(c) {
            break;
        }
        s = rest;
    }
    s
}

/// Lower-case and IDNA-encode a domain (`bücher.de` becomes `xn--bcher-kva.de`).
pub fn normalize_domain(domain: &str) -> Result<String, AddressError> {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() {
        return Err(AddressError::BadDomain);
    }
    if d.is_ascii() {
        let d = d.to_ascii_lowercase();
        if d.split('.').any(|l| l.is_empty()) {
            return Err(AddressError::BadDomain);
        }
        return Ok(d);
    }
    idna::domain_to_ascii(d).map_err(|_| AddressError::BadDomain)
}

/// The domain part of a normalised address ("" when there is none).
pub fn domain_of(addr: &str) -> &str {
    addr.rfind('@').map(|i| &addr[i + 1..]).unwrap_or("")
}

/// The local part of a normalised address.
pub fn local_of(addr: &str) -> &str {
    addr.rfind('@').map(|i| &addr[..i]).unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_plus_and_idn() {
        let n = Normalizer::new(AddressConfig::default());
        assert_eq!(
            n.normalize("<Bob+News@Example.COM>").unwrap(),
            "bob@example.com"
        );
        assert_eq!(
            n.normalize("anna@Bücher.de").unwrap(),
            "anna@xn--bcher-kva.de"
        );
        assert_eq!(n.normalize("nobody"), Err(AddressError::NoAt));
        assert_eq!(n.normalize("+x@a.b"), Ok("+x@a.b".to_string()));
        assert_eq!(n.normalize("a@b..c"), Err(AddressError::BadDomain));
    }

    #[test]
    fn case_sensitive_local_and_aliases() {
        let mut cfg = AddressConfig {
            case_sensitive_local: true,
            strip_plus_tags: false,
            ..Default::default()
        };
        let n = Normalizer::new(cfg.clone());
        assert_eq!(n.normalize("Bob+x@A.com").unwrap(), "Bob+x@a.com");
        cfg.case_sensitive_local = false;
        cfg.strip_plus_tags = true;
        cfg.aliases
            .insert("J..Kean@enron.com".into(), "steven.kean@enron.com".into());
        let n = Normalizer::new(cfg);
        assert_eq!(
            n.normalize("j..kean+x@ENRON.com").unwrap(),
            "steven.kean@enron.com"
        );
        assert_eq!(domain_of("a@b.c"), "b.c");
        assert_eq!(local_of("a@b.c"), "a");
    }

    /// Addresses from a small alphabet that hits every rule: case, plus
    /// tags, angle brackets, white space (vertical tab too, which `trim`
    /// removes), dots, several `@`, and non-ASCII letters (which take the
    /// general path in both cases).
    fn generated_addresses() -> Vec<String> {
        const PIECES: &[&str] = &[
            "a", "B", "z", "Q", "0", "9", ".", "..", "+", "+tag", "-", "_", "@", "@", "<", ">",
            " ", "\t", "\u{b}", "\u{c}", "\r\n", "ex", "COM", "org", "xn--", "ü", "İ", "ß", "Σ",
            "\u{a0}", "\"",
        ];
        let mut rnd = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let n = 1 + (rnd() % 12) as usize;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(PIECES[(rnd() % PIECES.len() as u64) as usize]);
            }
            out.push(s);
            // The shape of a real address, with case and tags varied.
            let local = ["Bob", "alice.smith", "J..Kean", "x+y", "+x", "a+b+c"];
            let dom = [
                "Example.COM",
                "enron.com.",
                "a..b",
                "",
                "ex.org ",
                "Bücher.de",
            ];
            out.push(format!(
                "{}<{}@{}>",
                [" ", "", "\t"][(rnd() % 3) as usize],
                local[(rnd() % local.len() as u64) as usize],
                dom[(rnd() % dom.len() as u64) as usize]
            ));
        }
        out.extend(
            [
                "",
                "@",
                "a@",
                "@b",
                "<>",
                "<a@b>",
                "a@b.",
                "a@.b",
                "a@b..",
                "A@B.C.",
                "+@x.y",
                "a+@x.y",
                "<<A@B>>",
                " <a@b> ",
                "a@b@C.D",
                "\u{b}a@b\u{b}",
            ]
            .map(String::from),
        );
        out
    }

    #[test]
    fn ascii_fast_path_equals_the_general_rules() {
        let mut aliases = HashMap::new();
        aliases.insert(
            "Alias@Example.com".to_string(),
            "Bob@Example.COM".to_string(),
        );
        aliases.insert(
            "j..kean@enron.com".to_string(),
            "steven.kean@enron.com".to_string(),
        );
        let addrs = generated_addresses();
        let mut ascii = 0;
        for cs in [false, true] {
            for strip in [false, true] {
                let n = Normalizer::new(AddressConfig {
                    case_sensitive_local: cs,
                    strip_plus_tags: strip,
                    aliases: aliases.clone(),
                });
                for a in &addrs {
                    let general = n.basic_general(a);
                    assert_eq!(n.basic(a), general, "{a:?} cs={cs} strip={strip}");
                    if a.is_ascii() {
                        ascii += 1;
                        assert_eq!(n.basic_ascii(a), general, "{a:?}");
                    }
                    let expected = general.map(|b| n.aliases.get(&b).cloned().unwrap_or(b));
                    assert_eq!(n.normalize(a), expected, "{a:?}");
                }
            }
        }
        // Both paths and every outcome were exercised.
        assert!(ascii > 40_000, "{ascii}");
        let n = Normalizer::new(AddressConfig {
            aliases,
            ..Default::default()
        });
        let results: Vec<_> = addrs.iter().map(|a| n.normalize(a)).collect();
        for e in [
            AddressError::NoAt,
            AddressError::EmptyLocal,
            AddressError::BadDomain,
        ] {
            assert!(results.contains(&Err(e.clone())), "{e:?} never produced");
        }
        assert!(results.iter().filter(|r| r.is_ok()).count() > 5_000);
        assert_eq!(
            n.normalize("alias+x@EXAMPLE.com").as_deref(),
            Ok("bob@example.com")
        );
    }
}
