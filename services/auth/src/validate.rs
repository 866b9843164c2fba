//! Bounds and shapes of everything a request brings, checked before any of
//! it reaches a throttle key, the database, a hash or a log line. A
//! violation names its field (`INVALID_ARGUMENT` with `BadRequest`).

use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis_store::Page;
use trellis_tenancy::Role;

/// RFC 5321's limit on a forward path.
pub const MAX_EMAIL_BYTES: usize = 254;
/// Names of people and organizations.
pub const MAX_NAME_CHARS: usize = 200;
/// Refresh and invitation tokens are 43 characters; anything much longer is
/// not one of ours.
pub const MAX_OPAQUE_TOKEN_BYTES: usize = 256;

/// The email as stored: trimmed and lower-cased, at most 254 bytes. The
/// length is checked before anything is copied.
pub fn email(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let trimmed = raw.trim();
    if trimmed.len() > MAX_EMAIL_BYTES {
        return Err(FieldViolation::new(
            field,
            "must be at most 254 bytes (RFC 5321)",
        ));
    }
    let email = trimmed.to_lowercase();
    let plausible = email.len() <= MAX_EMAIL_BYTES
        && !email.contains(|c: char| c.is_whitespace() || is_unprintable(c))
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if plausible {
        Ok(email)
    } else {
        Err(FieldViolation::new(field, "must be an email address"))
    }
}

/// An email to look an account up by (Login): bounded, printable and
/// normalised; otherwise malformed ones are simply unknown.
pub fn login_email(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let too_long = || FieldViolation::new(field, "must be at most 254 bytes (RFC 5321)");
    let trimmed = raw.trim();
    if trimmed.len() > MAX_EMAIL_BYTES {
        return Err(too_long());
    }
    // PostgreSQL refuses a NUL in text: it would surface as INTERNAL.
    if trimmed.chars().any(is_unprintable) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    // Lower-casing can lengthen a string (some letters take more bytes).
    let email = trimmed.to_lowercase();
    if email.len() > MAX_EMAIL_BYTES {
        return Err(too_long());
    }
    Ok(email)
}

/// Control characters, and the invisible ones that reorder or break lines
/// where text is shown (bidi overrides and isolates, line and paragraph
/// separators).
fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// A person's or organization's name: trimmed, 1..=200 characters, no
/// control characters (they would forge lines wherever a name is shown).
pub fn name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    // Bytes first: counting characters of a huge string is work too.
    if raw.len() > 4 * MAX_NAME_CHARS + 64 {
        return Err(FieldViolation::new(field, "must be at most 200 characters"));
    }
    let value = raw.trim();
    if value.is_empty() {
        Err(FieldViolation::new(field, "must not be empty"))
    } else if value.chars().count() > MAX_NAME_CHARS {
        Err(FieldViolation::new(field, "must be at most 200 characters"))
    } else if value.chars().any(is_unprintable) {
        Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ))
    } else {
        Ok(value.to_owned())
    }
}

/// A refresh or invitation token: bounded before it is hashed or looked up.
pub fn opaque_token(field: &str, raw: &str) -> Result<(), FieldViolation> {
    if raw.len() > MAX_OPAQUE_TOKEN_BYTES {
        Err(FieldViolation::new(field, "must be at most 256 bytes"))
    } else {
        Ok(())
    }
}

/// Another organization's id and a missing one must look the same, so only
/// the format is checked here; the scoped query decides NOT_FOUND.
pub fn id(field: &str, value: &str) -> Result<String, FieldViolation> {
    uuid::Uuid::parse_str(value)
        .map(|id| id.to_string())
        .map_err(|_| FieldViolation::new(field, "must be a UUID"))
}

/// `page_size` and `page_token` of a list request.
pub fn page(page_size: i32, page_token: &str) -> Result<Page, FieldViolation> {
    Page::parse(page_size, page_token)
        .map_err(|error| FieldViolation::new(error.field(), error.to_string()))
}

/// A role a member may be given.
pub fn role(field: &str, role: i32) -> Result<Role, FieldViolation> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Developer) => Ok(Role::Developer),
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        _ => Err(FieldViolation::new(
            field,
            "must be ROLE_ADMIN, ROLE_DEVELOPER or ROLE_VIEWER",
        )),
    }
}

/// An organization's slug: lower-case ASCII letters and digits joined by
/// single dashes.
pub fn slug_of(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "org".to_owned()
    } else {
        slug.chars()
            .take(48)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_checked_and_bounded() {
        assert_eq!(
            email("email", "  Ana@Example.COM ").unwrap(),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a na@example.com",
            "ana@example.com\u{0}",
        ] {
            assert!(email("email", bad).is_err(), "{bad:?}");
        }
        let longest = format!("{}@example.com", "a".repeat(254 - 12));
        assert_eq!(longest.len(), 254);
        assert!(email("email", &longest).is_ok());
        let too_long = format!("a{longest}");
        let violation = email("email", &too_long).unwrap_err();
        assert_eq!(violation.field, "email");
        assert!(violation.description.contains("254"));
        assert!(login_email("email", &"x".repeat(3 << 20)).is_err());
        assert_eq!(login_email("email", " X@Y ").unwrap(), "x@y");
        assert!(login_email("email", "ana\u{0}@example.com").is_err());
        // 127 'İ' are 254 bytes, and 381 once lower-cased.
        let grows = "İ".repeat(127);
        assert_eq!(grows.len(), 254);
        assert!(login_email("email", &grows).is_err());
    }

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(name("name", "  Ana ").unwrap(), "Ana");
        assert!(name("name", &"é".repeat(200)).is_ok());
        assert!(name("name", &"é".repeat(201)).is_err());
        assert!(name("name", &"x".repeat(1 << 20)).is_err());
        assert!(name("name", " ").is_err());
        assert!(name("name", "Ana\nadmin=true").is_err());
        assert!(
            name("name", "Ana \u{202e}nimda").is_err(),
            "a bidi override"
        );
        assert!(name("name", "Ana\u{2028}Bob").is_err(), "a line separator");
    }

    #[test]
    fn slugs_are_lowercase_dashed_and_never_empty() {
        assert_eq!(slug_of("Taco Palace, Inc."), "taco-palace-inc");
        assert_eq!(slug_of("  ¡Hola!  "), "hola");
        assert_eq!(slug_of("***"), "org");
    }

    #[test]
    fn opaque_tokens_are_bounded() {
        assert!(opaque_token("token", &"x".repeat(256)).is_ok());
        assert!(opaque_token("token", &"x".repeat(257)).is_err());
    }
}
