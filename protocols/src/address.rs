//! Mail addresses as SMTP carries them: `<local@domain>` paths, the null path `<>`.

use std::fmt;

/// A mailbox `local@domain`. Comparison and storage use [`canonical`](Mailbox::canonical).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    pub fn domain_lowercase(&self) -> String {
        self.domain.to_ascii_lowercase()
    }

    /// The key a mailbox is stored under: the whole address in lower case.
    pub fn canonical(&self) -> String {
        format!("{}@{}", self.local, self.domain).to_lowercase()
    }

    /// Parses a bare `local@domain`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let at = text.rfind('@').ok_or(AddressError)?;
        let (local, domain) = (&text[..at], &text[at + 1..]);
        if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.len() > 255 {
            return Err(AddressError);
        }
        // Lower case can be longer than the text (Ⱦ is two bytes, ⱦ three): the limits hold
        // for the canonical form too, which is what is stored (found by the fuzzer).
        if !text.is_ascii()
            && (local.to_lowercase().len() > 64 || domain.to_lowercase().len() > 255)
        {
            return Err(AddressError);
        }
        let bad = |c: char| c.is_control() || c == ' ' || c == '<' || c == '>' || c == ',';
        if local.starts_with('"') {
            if !(local.len() >= 2 && local.ends_with('"')) || local.chars().any(|c| c.is_control())
            {
                return Err(AddressError);
            }
        } else if local.chars().any(|c| bad(c) || c == '@')
            || local.starts_with('.')
            || local.ends_with('.')
        {
            return Err(AddressError);
        }
        let literal = domain.starts_with('[') && domain.ends_with(']');
        if !literal
            && (domain
                .chars()
                .any(|c| bad(c) || c == '@' || c == '[' || c == ']')
                || domain.starts_with('.')
                || domain.ends_with('.')
                || domain.contains(".."))
        {
            return Err(AddressError);
        }
        Ok(Self {
            local: local.to_owned(),
            domain: domain.to_owned(),
        })
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address")]
pub struct AddressError;

/// Parses a reverse or forward path: `<addr>`, `<>` (when `allow_null`), a source route
/// `<@a,@b:addr>` (ignored, RFC 5321 §C), or a bare address (tolerated).
pub fn parse_path(text: &str, allow_null: bool) -> Result<Option<Mailbox>, AddressError> {
    let text = text.trim();
    let inner = if let Some(inner) = text.strip_prefix('<') {
        inner.strip_suffix('>').ok_or(AddressError)?
    } else {
        text
    };
    if inner.is_empty() {
        return if allow_null {
            Ok(None)
        } else {
            Err(AddressError)
        };
    }
    let inner = match (inner.starts_with('@'), inner.find(':')) {
        (true, Some(colon)) => &inner[colon + 1..],
        _ => inner,
    };
    Mailbox::parse(inner).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("<>", true), Ok(None));
        assert!(parse_path("<>", false).is_err());
        let m = parse_path("<Alice@Example.COM>", false).unwrap().unwrap();
        assert_eq!(m.canonical(), "alice@example.com");
        assert_eq!(
            parse_path("<@relay,@other:bob@x>", false)
                .unwrap()
                .unwrap()
                .local,
            "bob"
        );
        assert!(parse_path("<no-at-sign>", false).is_err());
        assert!(parse_path("<a b@x>", false).is_err());
        assert!(parse_path("<a@x", false).is_err());
        assert!(parse_path("<.a@x>", false).is_err());
        assert_eq!(
            parse_path("<\"odd name\"@x>", false)
                .unwrap()
                .unwrap()
                .local,
            "\"odd name\""
        );
        assert_eq!(
            parse_path("<δοκιμή@παράδειγμα.δοκιμή>", false)
                .unwrap()
                .unwrap()
                .local,
            "δοκιμή"
        );
        // 255 bytes of domain whose lower case is 256: its canonical form could not be stored.
        let domain = format!("{}\u{23e}", "o".repeat(253));
        assert_eq!(domain.len(), 255);
        assert!(Mailbox::parse(&format!("a@{domain}")).is_err());
    }
}
