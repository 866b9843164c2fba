//! What a new session is made of, and the bounds on what a client may put
//! in one: its id and CSRF token from a CSPRNG, its expiries, and metadata
//! checked before it reaches the store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::store::{SessionKind, SessionRecord};

pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;

/// Why a request's metadata is refused (INVALID_ARGUMENT on `metadata`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("at most {MAX_METADATA_ENTRIES} entries, got {0}")]
    TooMany(usize),
    #[error(
        "keys must be 1 to {MAX_METADATA_KEY_BYTES} bytes of letters, digits and - _ . : (entry {0})"
    )]
    BadKey(usize),
    #[error(
        "values must be at most {MAX_METADATA_VALUE_BYTES} bytes without control characters (key {0:?})"
    )]
    BadValue(String),
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':')
}

/// The metadata as stored (sorted), once every entry is within bounds. The
/// count is checked first, so a huge map costs nothing more.
pub fn checked_metadata(
    metadata: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, MetadataError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(MetadataError::TooMany(metadata.len()));
    }
    let mut checked = BTreeMap::new();
    for (index, (key, value)) in metadata.iter().enumerate() {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES || !key.bytes().all(is_key_byte) {
            return Err(MetadataError::BadKey(index));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(MetadataError::BadValue(key.clone()));
        }
        checked.insert(key.clone(), value.clone());
    }
    Ok(checked)
}

/// 128 random bits, base64url: required as `x-csrf-token` on cookie calls
/// that change state.
pub fn csrf_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// How long sessions last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Since the last use (`--session-idle-ttl`).
    pub idle: Duration,
    /// Since creation, however active (`--session-absolute-ttl`).
    pub absolute: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            idle: Duration::from_secs(24 * 3600),
            absolute: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

use trellis_runtime::time::millis as ms;

/// Who opens a session, and what was seen of the client.
#[derive(Clone, Debug)]
pub struct Opening {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub kind: SessionKind,
    pub metadata: BTreeMap<String, String>,
    pub user_agent: String,
    pub client_address: String,
}

/// A new session at `now` (Unix ms), with a random v4 id and CSRF token.
pub fn new_session(opening: Opening, now: i64, lifetimes: Lifetimes) -> SessionRecord {
    let absolute_expires_at = now.saturating_add(ms(lifetimes.absolute));
    SessionRecord {
        id: Uuid::new_v4(),
        org_id: opening.org_id,
        user_id: opening.user_id,
        kind: opening.kind,
        created_at: now,
        last_activity_at: now,
        idle_expires_at: now
            .saturating_add(ms(lifetimes.idle))
            .min(absolute_expires_at),
        absolute_expires_at,
        metadata: opening.metadata,
        csrf_token: csrf_token(),
        user_agent: opening.user_agent,
        client_address: opening.client_address,
    }
}

/// A login session Auth kept before the Session service owned them, as it
/// is stored here: same id and times (`[created, last used, idle expiry,
/// absolute expiry]`, Unix ms), a new CSRF token. `None` if an id is not a
/// UUID.
pub fn imported_login_session(
    id: &str,
    org_id: &str,
    user_id: &str,
    [
        created_at,
        last_activity_at,
        idle_expires_at,
        absolute_expires_at,
    ]: [i64; 4],
    user_agent: &str,
    client_address: &str,
) -> Option<SessionRecord> {
    Some(SessionRecord {
        id: Uuid::parse_str(id).ok()?,
        org_id: Uuid::parse_str(org_id).ok()?,
        user_id: Uuid::parse_str(user_id).ok()?,
        kind: SessionKind::Login,
        created_at,
        last_activity_at,
        idle_expires_at: idle_expires_at.min(absolute_expires_at),
        absolute_expires_at,
        metadata: BTreeMap::new(),
        csrf_token: csrf_token(),
        user_agent: trellis_tenancy::bounded_user_agent(user_agent),
        client_address: client_address
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_within_bounds_is_kept_sorted() {
        let checked = checked_metadata(&map(&[("table", "7"), ("app.version", "1.2")])).unwrap();
        assert_eq!(checked.keys().collect::<Vec<_>>(), ["app.version", "table"]);
        let full: HashMap<_, _> = (0..MAX_METADATA_ENTRIES)
            .map(|n| (format!("k{n}"), "v".repeat(MAX_METADATA_VALUE_BYTES)))
            .collect();
        assert!(checked_metadata(&full).is_ok());
    }

    #[test]
    fn metadata_out_of_bounds_is_refused() {
        let many: HashMap<_, _> = (0..=MAX_METADATA_ENTRIES)
            .map(|n| (format!("k{n}"), String::new()))
            .collect();
        assert_eq!(checked_metadata(&many), Err(MetadataError::TooMany(33)));
        for key in [
            "",
            "with space",
            "é",
            &"k".repeat(MAX_METADATA_KEY_BYTES + 1),
        ] {
            assert!(
                matches!(
                    checked_metadata(&map(&[(key, "v")])),
                    Err(MetadataError::BadKey(_))
                ),
                "{key:?}"
            );
        }
        for value in ["line\nbreak", &"v".repeat(MAX_METADATA_VALUE_BYTES + 1)] {
            assert_eq!(
                checked_metadata(&map(&[("k", value)])),
                Err(MetadataError::BadValue("k".into()))
            );
        }
    }

    #[test]
    fn new_sessions_have_random_ids_and_tokens_and_capped_expiry() {
        let opening = Opening {
            org_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            kind: SessionKind::Work,
            metadata: BTreeMap::new(),
            user_agent: String::new(),
            client_address: String::new(),
        };
        let lifetimes = Lifetimes {
            idle: Duration::from_secs(3600),
            absolute: Duration::from_secs(60),
        };
        let a = new_session(opening.clone(), 1_000, lifetimes);
        let b = new_session(opening, 1_000, lifetimes);
        assert_ne!((a.id, &a.csrf_token), (b.id, &b.csrf_token));
        assert_eq!(a.id.get_version_num(), 4);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.csrf_token).unwrap().len(), 16);
        // The idle expiry never passes the absolute one.
        assert_eq!((a.idle_expires_at, a.absolute_expires_at), (61_000, 61_000));
    }
}
