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

    fn basic(&self, raw: &str) -> Result<String, AddressError> {
        let s = raw
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        let at = s.rfind('@').ok_or(AddressError::NoAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
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
}
