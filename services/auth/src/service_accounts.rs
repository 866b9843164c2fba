//! Service accounts: the identities of workers and of Trellis's own servers
//! (the OAuth 2.0 client-credentials grant, RFC 6749 section 4.4). The CLI
//! makes, lists and revokes them; `IssueServiceToken` exchanges their
//! credentials for a short-lived token. A secret is 256 random bits, shown
//! once and stored only as its SHA-256 (it is never a password a person
//! picked, so a slow hash would add nothing).

use trellis_store::{Database, StoreError};

pub use crate::store::{ServiceAccountRow, ServiceAccounts, ServiceScope};
use crate::tokens::{new_opaque_token, token_hash};

/// Longest account name.
pub const MAX_NAME_CHARS: usize = 100;

/// What `trellis service-accounts create` prints, the only time the secret
/// is seen.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("name: {0}")]
    InvalidName(&'static str),
    /// Credentials `register` cannot take.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("no active service account {0}")]
    NotFound(String),
    #[error("service account {0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("service-account file {path}: {message}")]
    File { path: String, message: String },
}

/// A name an operator can tell apart in `list`: 1 to 100 characters of
/// letters, digits, `-`, `_` and `.`.
fn check_name(name: &str) -> Result<(), ServiceAccountError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        Err(ServiceAccountError::InvalidName(
            "must be 1 to 100 characters",
        ))
    } else if !name.chars().all(allowed) {
        Err(ServiceAccountError::InvalidName(
            "only letters, digits, '-', '_' and '.'",
        ))
    } else {
        Ok(())
    }
}

/// Makes an account and its secret.
pub async fn create(
    database: &Database,
    name: &str,
    scope: ServiceScope,
) -> Result<Credentials, ServiceAccountError> {
    check_name(name)?;
    let client_secret = new_opaque_token();
    let account = ServiceAccounts::new(database.clone())
        .create(name, scope, &token_hash(&client_secret))
        .await?;
    Ok(Credentials {
        client_id: account.id,
        client_secret,
    })
}

/// Shortest secret `register` takes: as strong as the ones `create` makes.
pub const MIN_REGISTERED_SECRET_CHARS: usize = 32;

/// Longest: what IssueServiceToken accepts.
pub const MAX_REGISTERED_SECRET_BYTES: usize = crate::validate::MAX_OPAQUE_TOKEN_BYTES;

/// Different characters a registered secret must have (hex of 32 random
/// bytes has 16 at most, and almost always 12 or more).
const MIN_DISTINCT_SECRET_CHARS: usize = 12;

/// Makes the account `client_id` with `client_secret` chosen elsewhere (a
/// Secret of a deployment's own), so servers and the accounts table can be
/// set up from the same Secret. Registering it again with the same
/// credentials is a no-op; an account of that id with another secret or
/// scope, or revoked, is refused: a revoked id stays revoked.
pub async fn register(
    database: &Database,
    name: &str,
    scope: ServiceScope,
    client_id: &str,
    client_secret: &str,
) -> Result<(), ServiceAccountError> {
    check_name(name)?;
    let id = uuid::Uuid::parse_str(client_id)
        .map_err(|_| ServiceAccountError::Invalid("the client id must be a UUID"))?
        .to_string();
    // Stored as an unsalted SHA-256 like the generated ones, so it must be
    // as unguessable: long, printable, not a repeated pattern; and no
    // longer than IssueServiceToken accepts.
    let distinct: std::collections::HashSet<char> = client_secret.chars().collect();
    if client_secret.len() < MIN_REGISTERED_SECRET_CHARS
        || client_secret.len() > MAX_REGISTERED_SECRET_BYTES
        || !client_secret.chars().all(|c| c.is_ascii_graphic())
        || distinct.len() < MIN_DISTINCT_SECRET_CHARS
    {
        return Err(ServiceAccountError::Invalid(
            "the client secret must be 32 to 256 printable characters, at least 12 of them \
             different (e.g. `openssl rand -hex 32`)",
        ));
    }
    let hash = token_hash(client_secret);
    let row = ServiceAccounts::new(database.clone())
        .register(&id, name, scope, &hash)
        .await?;
    if row.revoked_at.is_some() {
        return Err(ServiceAccountError::Conflict(format!("{id} was revoked")));
    }
    if row.scope != scope || row.secret_hash != hash || row.name != name {
        return Err(ServiceAccountError::Conflict(format!(
            "{id} exists with another secret, scope or name"
        )));
    }
    Ok(())
}

/// Ends an account: its tokens stop working on every server within the
/// session-check interval.
pub async fn revoke(database: &Database, client_id: &str) -> Result<(), ServiceAccountError> {
    // Stored hyphenated and lower case: any other spelling of the same id
    // (upper case, braces, urn:uuid:) still names it.
    let known = match uuid::Uuid::parse_str(client_id) {
        Ok(id) => {
            ServiceAccounts::new(database.clone())
                .revoke(&id.to_string())
                .await?
        }
        Err(_) => false,
    };
    if known {
        Ok(())
    } else {
        Err(ServiceAccountError::NotFound(client_id.to_owned()))
    }
}

/// An account of a `trellis up` process (its servers', or its built-in
/// worker's), kept in `file` (mode 0600): the one made on first start while
/// it is still active with `scope`, else a new one named `name` (the file
/// is replaced).
pub async fn provision(
    database: &Database,
    file: &std::path::Path,
    name: &str,
    scope: ServiceScope,
) -> Result<Credentials, ServiceAccountError> {
    let failed = |message: String| ServiceAccountError::File {
        path: file.display().to_string(),
        message,
    };
    match std::fs::read(file) {
        Ok(bytes) => {
            let kept: Credentials =
                serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?;
            let accounts = ServiceAccounts::new(database.clone());
            let account = accounts.active(&kept.client_id).await?;
            if account.is_some_and(|account| account.scope == scope) {
                return Ok(kept);
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error.to_string())),
    }
    let credentials = create(database, name, scope).await?;
    write_private(
        file,
        &serde_json::to_vec(&credentials).expect("two strings serialize"),
    )
    .map_err(|e| failed(e.to_string()))?;
    Ok(credentials)
}

/// Written beside under a name of its own, then renamed over: never a
/// half-written or readable file, even with two processes at it.
fn write_private(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let staging = file.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&staging)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&staging, file)?;
    // The rename itself survives a crash only once the directory is synced.
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["worker-1", "trellis.order", "a", &"n".repeat(100)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", &"n".repeat(101), "two words", "tab\t", "new\nline", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
