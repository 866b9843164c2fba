//! Auth's signing keys: the only private keys in Trellis.
//!
//! A key directory holds one PKCS#8 file per key (`<kid>.pk8`, mode 0600)
//! and `keys.json`, which names the key that signs and the keys published in
//! the JWKS. A rotation publishes a new key before it signs: each
//! `rotate` promotes the key staged by the previous one and stages a fresh
//! one, and keeps the previous signer published for tokens still in flight.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Manifest {
    /// The key that signs new tokens.
    active: String,
    /// Keys in the JWKS, newest first: the staged key (if any), the active
    /// one, and the previous one.
    published: Vec<String>,
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

/// Writes `bytes` so that only the owner can read them, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
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
    /// Opens the key ring in `dir`. With `generate_if_missing` (embedded
    /// mode) an empty directory gets a first key; otherwise it is an error.
    pub fn open(
        dir: impl Into<PathBuf>,
        generate_if_missing: bool,
    ) -> Result<KeyStore, KeyStoreError> {
        let dir = dir.into();
        if generate_if_missing && read_manifest(&dir)?.is_none() {
            create_dir_private(&dir)?;
            let key = generate_key(&dir)?;
            write_manifest(
                &dir,
                &Manifest {
                    active: key.kid().to_owned(),
                    published: vec![key.kid().to_owned()],
                },
            )?;
            tracing::info!(kid = key.kid(), dir = %dir.display(), "generated the first signing key");
        }
        let ring = load_ring(&dir)?;
        Ok(KeyStore {
            dir,
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
        match load_keys(&self.dir, manifest) {
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
/// keys older than the previous signer. Run it again once verifiers have
/// refreshed their JWKS (at most `--jwks-refresh`) to start signing with the
/// staged key.
pub fn rotate(dir: &Path) -> Result<Rotation, KeyStoreError> {
    let manifest =
        read_manifest(dir)?.ok_or_else(|| KeyStoreError::Missing(dir.display().to_string()))?;
    let newest = manifest
        .published
        .first()
        .cloned()
        .unwrap_or_else(|| manifest.active.clone());
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

#[cfg(test)]
mod tests;
