//! Input rules of the source specification: email format, full name ≤ 100 characters, local
//! passwords ≥ 12 characters with upper, lower, digit and special character. Each check names
//! the field it refuses, so the client gets a problem with the field and a message.

use crate::error::ApiError;

/// Longest accepted full name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Shortest accepted local password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// An email address: RFC 5322's address syntax (checked by the `email_address` crate) with a
/// plain local part (no quoted strings, no display name) and a real host name as the domain (no
/// domain literals such as `[127.0.0.1]`), at most 254 characters. Lower-cased. The one rule for
/// every way an address enters: the API, sign-in forms and OpenID Connect.
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    use email_address::{EmailAddress, Options};
    let value = value.trim();
    let bad = || ApiError::invalid(field, "must be a valid email address");
    if value.len() > 254 || value.contains('"') {
        return Err(bad());
    }
    let options = Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    let parsed = EmailAddress::parse_with_options(value, options).map_err(|_| bad())?;
    host_name(field, parsed.domain()).map_err(|_| bad())?;
    Ok(value.to_lowercase())
}

/// A non-blank full name of at most [`MAX_NAME_CHARS`] characters.
pub fn full_name(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// A local password that meets the rules.
pub fn password(field: &str, value: &str) -> Result<(), ApiError> {
    let mut missing = Vec::new();
    if value.chars().count() < MIN_PASSWORD_CHARS {
        missing.push(format!("at least {MIN_PASSWORD_CHARS} characters"));
    }
    type Rule = (&'static str, fn(char) -> bool);
    let rules: [Rule; 4] = [
        ("an uppercase letter", char::is_uppercase),
        ("a lowercase letter", char::is_lowercase),
        ("a digit", |c| c.is_ascii_digit()),
        ("a special character", |c| !c.is_alphanumeric()),
    ];
    for (what, rule) in rules {
        if !value.chars().any(rule) {
            missing.push(what.to_owned());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must contain {}", missing.join(", ")),
        ))
    }
}

/// A DNS label for a subdomain: lowercase letters, digits and hyphens, 1–63 characters.
pub fn subdomain(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    let ok = (1..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1-63 lowercase letters, digits or inner hyphens",
        ))
    }
}

/// A public DNS host name for a custom domain: 2–127 dot-separated labels of lowercase letters,
/// digits and inner hyphens (1–63 each, at most 253 in all), a top-level label that is not all
/// digits (no IP addresses), and never `localhost`. A trailing dot is dropped.
pub fn host_name(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = value.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = value.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
        && labels.last() != Some(&"localhost");
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            field,
            "must be a host name such as crm.example.com (letters, digits, inner hyphens, dots)",
        ))
    }
}

/// A non-blank short text (names of tenants, roles, plans) of at most `max` characters.
pub fn short_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be 1-{max} characters"),
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "Ada.Lovelace+x@acme.test"] {
            assert!(email("email", ok).is_ok(), "{ok}");
        }
        for ok in ["o'brien@acme.test", "x_y-z@sub.acme.test"] {
            assert!(email("email", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.co",
            "a@@b.co",
            "a b@c.co",
            "a@.co",
            "a@b..co",
            "<script>@acme.test",
            "a,b@acme.test",
            "\"a b\"@acme.test",
            "Ada <ada@acme.test>",
            "a@[127.0.0.1]",
            "a@127.0.0.1",
            "a\0@acme.test",
            "a@acme.test\nb",
            ".a@acme.test",
            "a..b@acme.test",
            "a@-acme.test",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
        assert_eq!(email("email", " A@B.Co ").unwrap(), "a@b.co");
    }

    #[test]
    fn names() {
        assert!(full_name("fullName", &"x".repeat(100)).is_ok());
        assert!(full_name("fullName", &"é".repeat(100)).is_ok());
        assert!(full_name("fullName", &"x".repeat(101)).is_err());
        assert!(full_name("fullName", "   ").is_err());
    }

    #[test]
    fn passwords() {
        assert!(password("password", "Correct-Horse-9").is_ok());
        for bad in [
            "Short-1a",
            "alllowercase-12",
            "ALLUPPERCASE-12",
            "NoDigitsHere-x",
            "NoSpecial12345a",
        ] {
            let err = password("password", bad).unwrap_err().to_string();
            assert!(err.contains("password"), "{bad}: {err}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(
            host_name("domain", "CRM.Example.com.").unwrap(),
            "crm.example.com"
        );
        assert!(host_name("domain", "xn--bcher-kva.example").is_ok());
        for bad in [
            "",
            "example",
            "127.0.0.1",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b.com",
            "http://a.com",
            "a.com/x",
            "a.com:80",
            "foo.localhost",
            "a\0.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(host_name("domain", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert_eq!(subdomain("subdomain", "Acme-2").unwrap(), "acme-2");
        for bad in ["", "-acme", "acme-", "ac.me", "ac me", &"a".repeat(64)] {
            assert!(subdomain("subdomain", bad).is_err(), "{bad}");
        }
    }
}
