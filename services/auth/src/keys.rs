//! Auth's signing keys: the only private keys in Trellis.
//!
//! A key directory holds one PKCS#8 file per key (`<kid>.pk8`, mode 0600)
//! and `keys.json`, which names the key that signs and the keys published in
//! the JWKS. A rotation publishes a new key before it signs: each
//! `rotate` promotes the key staged by the previous one (once every verifier
//! has had time to fetch it) and stages a fresh one, and keeps the previous
//! signer published for tokens still in flight.
//!
//! Modes are checked whenever keys are read. A directory Trellis owns (the
//! generated `<data-dir>/keys`, or one `trellis keys rotate` writes) is
//! fixed to 0700 and its files to 0600, with a warning. A mounted Secret is
//! the operator's: a key file that others may read, or a directory others
//! may write, is refused (group read is allowed, since Kubernetes grants
//! access to a non-root container through its `fsGroup`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use trellis::auth::v1::Jwk;
use trellis_tenancy::SigningKey;

const MANIFEST: &str = "keys.json";

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error(
        "no signing keys in {0} (mount the signing-key Secret there, or run `trellis keys rotate --signing-keys-dir {0}`)"
    )]
    Missing(String),
    #[error("signing keys in {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("signing keys in {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:04o}: {rule} (mount the Secret with defaultMode 0400, or 0440 with an fsGroup)"
    )]
    Permissions {
        path: String,
        mode: u32,
        rule: &'static str,
    },
    #[error(
        "key {staged} was staged {staged_ago}s ago: promote it no sooner than --jwks-refresh ({gap}s) after staging, so every verifier has fetched it (wait {wait}s, or pass --force)"
    )]
    TooSoon {
        staged: String,
        staged_ago: u64,
        gap: u64,
        wait: u64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Manifest {
    /// The key that signs new tokens.
    active: String,
    /// Keys in the JWKS, newest first: the staged key (if any), the active
    /// one, and the previous one.
    published: Vec<String>,
    /// When the newest key was staged (Unix seconds); absent in manifests
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged_at: Option<u64>,
}

struct KeyRing {
    active: Arc<SigningKey>,
    published: Vec<Arc<SigningKey>>,
    manifest: Manifest,
}

/// The key ring of one directory, reloaded when `keys.json` changes (a
/// rotation by `trellis keys rotate`, or an updated Secret mount).
pub struct KeyStore {
    dir: PathBuf,
    ownership: Ownership,
    ring: RwLock<Arc<KeyRing>>,
    /// When `keys.json` was last read; it is read at most once per
    /// `recheck_every`, not on every login.
    checked: std::sync::Mutex<std::time::Instant>,
    recheck_every: std::time::Duration,
}

/// How stale the in-memory ring may be: far below the JWKS refresh interval
/// a rotation has to wait for anyway.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn io_error(dir: &Path) -> impl Fn(std::io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io {
        path: dir.display().to_string(),
        source,
    }
}

fn invalid(dir: &Path, message: impl Into<String>) -> KeyStoreError {
    KeyStoreError::Invalid {
        path: dir.display().to_string(),
        message: message.into(),
    }
}

fn new_kid() -> String {
    // Time-ordered, so listings read oldest to newest.
    format!("k-{}", uuid::Uuid::now_v7().simple())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `bytes` so that only the owner can read them, atomically. A
/// temporary file left by an interrupted write is replaced, never reused:
/// reusing it would keep whatever mode it had.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

/// Whether Trellis may fix a key directory's modes, or must refuse them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ownership {
    Owned,
    Mounted,
}

/// Checks (and, in a directory Trellis owns, fixes) the modes of the key
/// directory and of every key, manifest and temporary file in it.
#[cfg(unix)]
fn enforce_modes(dir: &Path, ownership: Ownership) -> Result<(), KeyStoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let refuse = |path: &Path, mode: u32, rule| KeyStoreError::Permissions {
        path: path.display().to_string(),
        mode,
        rule,
    };
    let set_mode = |path: &Path, from: u32, to: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(to)).map_err(io_error(dir))?;
        tracing::warn!(
            path = %path.display(),
            from = format!("{from:04o}"),
            to = format!("{to:04o}"),
            "signing keys: fixed a mode that let others in"
        );
        Ok::<(), KeyStoreError>(())
    };
    let dir_metadata = fs::metadata(dir).map_err(io_error(dir))?;
    let mode = dir_metadata.permissions().mode() & 0o7777;
    match ownership {
        Ownership::Owned if mode & 0o077 != 0 => set_mode(dir, mode, 0o700)?,
        // A sticky directory (a Secret volume's tmpfs) keeps others from
        // replacing our files even when they may write to it.
        Ownership::Mounted if mode & 0o022 != 0 && mode & 0o1000 == 0 => {
            return Err(refuse(dir, mode, "others may replace the keys in it"));
        }
        _ => {}
    }
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let holds_keys = name == MANIFEST || name.ends_with(".pk8") || name.ends_with(".tmp");
        if !holds_keys {
            continue;
        }
        let metadata = match ownership {
            // Secret files are symlinks into the volume's data: follow them.
            Ownership::Mounted => fs::metadata(&path),
            // Ours are written as plain files: a link, or a file someone
            // else owns, was planted, and changing its mode would change
            // whatever it points at.
            Ownership::Owned => fs::symlink_metadata(&path),
        }
        .map_err(io_error(dir))?;
        if ownership == Ownership::Owned
            && (!metadata.is_file() || metadata.uid() != dir_metadata.uid())
        {
            return Err(refuse(
                &path,
                metadata.permissions().mode() & 0o7777,
                "a key directory Trellis owns holds only plain files of its owner",
            ));
        }
        if !metadata.is_file() {
            continue;
        }
        let mode = metadata.permissions().mode() & 0o7777;
        match ownership {
            Ownership::Owned if mode & 0o077 != 0 => set_mode(&path, mode, 0o600)?,
            Ownership::Mounted if mode & 0o027 != 0 => {
                return Err(refuse(
                    &path,
                    mode,
                    "a key file must not be readable by others",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn enforce_modes(_: &Path, _: Ownership) -> Result<(), KeyStoreError> {
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, KeyStoreError> {
    match fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| invalid(dir, format!("{MANIFEST}: {e}"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(dir)(error)),
    }
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), KeyStoreError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    write_private(&dir.join(MANIFEST), &json).map_err(io_error(dir))
}

fn read_key(dir: &Path, kid: &str) -> Result<SigningKey, KeyStoreError> {
    if !kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(dir, format!("invalid key id {kid:?}")));
    }
    let der = fs::read(dir.join(format!("{kid}.pk8"))).map_err(io_error(dir))?;
    SigningKey::from_pkcs8_der(kid, &der).map_err(|e| invalid(dir, format!("{kid}: {e}")))
}

fn generate_key(dir: &Path) -> Result<SigningKey, KeyStoreError> {
    let key = SigningKey::generate(new_kid());
    write_private(&dir.join(format!("{}.pk8", key.kid())), key.pkcs8_der())
        .map_err(io_error(dir))?;
    Ok(key)
}

fn create_dir_private(dir: &Path) -> Result<(), KeyStoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

fn load_ring(dir: &Path) -> Result<KeyRing, KeyStoreError> {
    let manifest =
        read_manifest(dir)?.ok_or_else(|| KeyStoreError::Missing(dir.display().to_string()))?;
    load_keys(dir, manifest)
}

fn load_keys(dir: &Path, manifest: Manifest) -> Result<KeyRing, KeyStoreError> {
    if !manifest.published.contains(&manifest.active) {
        return Err(invalid(dir, "the active key is not published"));
    }
    let published = manifest
        .published
        .iter()
        .map(|kid| read_key(dir, kid).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let active = published
        .iter()
        .find(|key| key.kid() == manifest.active)
        .cloned()
        .expect("checked above");
    Ok(KeyRing {
        active,
        published,
        manifest,
    })
}

impl KeyStore {
    /// Where the keys are, and whether an empty directory may get a first
    /// key: only the embedded default `<data_dir>/keys`; an explicit
    /// directory is a mounted Secret.
    pub fn location(data_dir: &Path, signing_keys_dir: Option<&Path>) -> (PathBuf, bool) {
        match signing_keys_dir {
            Some(dir) => (dir.to_path_buf(), false),
            None => (data_dir.join("keys"), true),
        }
    }

    /// Opens the key ring in `dir`. With `generate_if_missing` (embedded
    /// mode) the directory is Trellis's own: an empty one gets a first key,
    /// and modes that let others in are fixed. Otherwise it is a mounted
    /// Secret: no keys, or modes that let others in, are errors.
    pub fn open(
        dir: impl Into<PathBuf>,
        generate_if_missing: bool,
    ) -> Result<KeyStore, KeyStoreError> {
        let dir = dir.into();
        if !generate_if_missing && !dir.is_dir() {
            return Err(KeyStoreError::Missing(dir.display().to_string()));
        }
        let ownership = if generate_if_missing {
            Ownership::Owned
        } else {
            Ownership::Mounted
        };
        if generate_if_missing && read_manifest(&dir)?.is_none() {
            create_dir_private(&dir)?;
            let key = generate_key(&dir)?;
            write_manifest(
                &dir,
                &Manifest {
                    active: key.kid().to_owned(),
                    published: vec![key.kid().to_owned()],
                    staged_at: None,
                },
            )?;
            tracing::info!(kid = key.kid(), dir = %dir.display(), "generated the first signing key");
        }
        enforce_modes(&dir, ownership)?;
        let ring = load_ring(&dir)?;
        Ok(KeyStore {
            dir,
            ownership,
            ring: RwLock::new(Arc::new(ring)),
            checked: std::sync::Mutex::new(std::time::Instant::now()),
            recheck_every: RECHECK_EVERY,
        })
    }

    /// Re-reads `keys.json` at most this often (tests use zero).
    pub fn with_recheck_interval(mut self, every: std::time::Duration) -> Self {
        self.recheck_every = every;
        self
    }

    /// The ring as `keys.json` names it, at most `recheck_every` old.
    /// Contents are compared, not mtimes (which can be coarse), so a rotation
    /// is never missed.
    fn current(&self) -> Arc<KeyRing> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner()).clone();
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.elapsed() < self.recheck_every {
                return ring;
            }
            *checked = std::time::Instant::now();
        }
        let manifest = match read_manifest(&self.dir) {
            Ok(Some(manifest)) if manifest == ring.manifest => return ring,
            Ok(Some(manifest)) => manifest,
            Ok(None) => return ring,
            Err(error) => {
                tracing::error!(%error, "reading signing keys failed; keeping the previous ones");
                return ring;
            }
        };
        let reloaded =
            enforce_modes(&self.dir, self.ownership).and_then(|()| load_keys(&self.dir, manifest));
        match reloaded {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                tracing::info!(active = fresh.active.kid(), "signing keys reloaded");
                *self.ring.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                fresh
            }
            Err(error) => {
                // Half-written Secret updates happen; keep signing with what works.
                tracing::error!(%error, "reloading signing keys failed; keeping the previous ones");
                ring
            }
        }
    }

    /// The key that signs new access tokens.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.current().active.clone()
    }

    /// Public halves of every published key.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.current()
            .published
            .iter()
            .map(|key| key.public_jwk())
            .collect()
    }
}

/// What a rotation did.
#[derive(Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Now signing (unchanged when nothing was staged).
    pub active: String,
    /// Published, signing after the next rotation.
    pub staged: String,
    /// No longer published.
    pub retired: Vec<String>,
}

/// Promotes the staged key (if any) to signer, stages a new key, and retires
/// keys older than the previous signer. A staged key is promoted only once
/// `min_gap` (the verifiers' `--jwks-refresh`) has passed since it was
/// staged, so no verifier meets a token signed by a key it has not fetched;
/// `Duration::ZERO` skips the wait (an emergency, or a test).
pub fn rotate(dir: &Path, min_gap: Duration) -> Result<Rotation, KeyStoreError> {
    enforce_modes(dir, Ownership::Owned)?;
    let manifest =
        read_manifest(dir)?.ok_or_else(|| KeyStoreError::Missing(dir.display().to_string()))?;
    let newest = manifest
        .published
        .first()
        .cloned()
        .unwrap_or_else(|| manifest.active.clone());
    let now = unix_now();
    if newest != manifest.active {
        let staged_ago = manifest
            .staged_at
            .map_or(u64::MAX, |at| now.saturating_sub(at));
        if staged_ago < min_gap.as_secs() {
            return Err(KeyStoreError::TooSoon {
                staged: newest,
                staged_ago,
                gap: min_gap.as_secs(),
                wait: min_gap.as_secs() - staged_ago,
            });
        }
    }
    let (active, previous) = if newest != manifest.active {
        (newest, Some(manifest.active.clone()))
    } else {
        (manifest.active.clone(), None)
    };
    let staged = generate_key(dir)?;
    let mut published = vec![staged.kid().to_owned(), active.clone()];
    published.extend(previous);
    let retired: Vec<String> = manifest
        .published
        .iter()
        .filter(|kid| !published.contains(kid))
        .cloned()
        .collect();
    write_manifest(
        dir,
        &Manifest {
            active: active.clone(),
            published,
            staged_at: Some(now),
        },
    )?;
    for kid in &retired {
        // The manifest no longer names it; a leftover file is harmless.
        let _ = fs::remove_file(dir.join(format!("{kid}.pk8")));
    }
    Ok(Rotation {
        active,
        staged: staged.kid().to_owned(),
        retired,
    })
}

/// For a signer that leaked: a key made now signs from now on, another new
/// one is staged, and every older key, the leaked one and the staged one
/// (which sat beside it in the same directory or Secret) alike, leaves the
/// JWKS at once. Verifiers drop them at their next refresh
/// (`--jwks-refresh`), and with them every token they signed: users
/// refresh (refresh tokens are not signed) or log in again. The new signer
/// is fetched by each verifier on its first token.
pub fn replace_compromised_signer(dir: &Path) -> Result<Rotation, KeyStoreError> {
    enforce_modes(dir, Ownership::Owned)?;
    let manifest =
        read_manifest(dir)?.ok_or_else(|| KeyStoreError::Missing(dir.display().to_string()))?;
    let active = generate_key(dir)?.kid().to_owned();
    let staged = generate_key(dir)?;
    let published = vec![staged.kid().to_owned(), active.clone()];
    let retired: Vec<String> = manifest
        .published
        .iter()
        .filter(|kid| !published.contains(kid))
        .cloned()
        .collect();
    write_manifest(
        dir,
        &Manifest {
            active: active.clone(),
            published,
            staged_at: Some(unix_now()),
        },
    )?;
    for kid in &retired {
        let _ = fs::remove_file(dir.join(format!("{kid}.pk8")));
    }
    Ok(Rotation {
        active,
        staged: staged.kid().to_owned(),
        retired,
    })
}

#[cfg(test)]
mod tests;
