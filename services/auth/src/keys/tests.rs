use super::*;

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("trellis-keys-{}", uuid::Uuid::new_v4()))
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_generates_a_private_key_and_later_starts_reuse_it() {
    let dir = temp_dir();
    let store = KeyStore::open(&dir, true).unwrap();
    let kid = store.signing_key().kid().to_owned();
    assert_eq!(store.jwks().len(), 1);
    assert_eq!(store.jwks()[0].kid, kid);
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(format!("{kid}.pk8"))), 0o600);
        assert_eq!(mode(&dir.join(MANIFEST)), 0o600);
    }
    let again = KeyStore::open(&dir, true).unwrap();
    assert_eq!(again.signing_key().kid(), kid);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn only_the_embedded_key_directory_may_get_a_first_key() {
    let data_dir = Path::new("/srv/trellis");
    assert_eq!(
        KeyStore::location(data_dir, None),
        (data_dir.join("keys"), true)
    );
    let mounted = Path::new("/var/run/trellis/keys");
    assert_eq!(
        KeyStore::location(data_dir, Some(mounted)),
        (mounted.to_path_buf(), false),
        "a mounted Secret is never written to"
    );
}

/// What an operator's Secret holds: readable by its owner only.
fn write_secret(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    set_mode(path, 0o600);
}

#[test]
fn a_mounted_directory_without_keys_is_a_clear_error() {
    let dir = temp_dir();
    fs::create_dir_all(&dir).unwrap();
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(
        error.to_string().starts_with("no signing keys in"),
        "{error}"
    );
    write_secret(
        &dir.join(MANIFEST),
        br#"{"active":"k-1","published":["k-1"]}"#,
    );
    write_secret(&dir.join("k-1.pk8"), b"not a key");
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("k-1: invalid Ed25519 PKCS#8 key"),
        "{error}"
    );
    write_secret(
        &dir.join(MANIFEST),
        br#"{"active":"../etc/passwd","published":["../etc/passwd"]}"#,
    );
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(error.to_string().contains("invalid key id"), "{error}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rotation_publishes_before_signing_and_retires_the_oldest() {
    let dir = temp_dir();
    let store = KeyStore::open(&dir, true)
        .unwrap()
        .with_recheck_interval(std::time::Duration::ZERO);
    let first = store.signing_key().kid().to_owned();

    // Stage: published, not yet signing.
    let one = rotate(&dir, Duration::ZERO).unwrap();
    assert_eq!(one.active, first);
    assert!(one.retired.is_empty());
    let kids = |store: &KeyStore| store.jwks().into_iter().map(|k| k.kid).collect::<Vec<_>>();
    assert_eq!(kids(&store), vec![one.staged.clone(), first.clone()]);
    assert_eq!(
        store.signing_key().kid(),
        first,
        "a staged key does not sign"
    );

    // Promote: the staged key signs, the old one stays published.
    let two = rotate(&dir, Duration::ZERO).unwrap();
    assert_eq!(two.active, one.staged);
    assert_eq!(
        kids(&store),
        vec![two.staged.clone(), one.staged.clone(), first.clone()]
    );
    assert_eq!(store.signing_key().kid(), one.staged);

    // Again: the first key is retired and its file removed.
    let three = rotate(&dir, Duration::ZERO).unwrap();
    assert_eq!(three.retired, vec![first.clone()]);
    assert_eq!(
        kids(&store),
        vec![three.staged.clone(), two.staged.clone(), one.staged.clone()]
    );
    assert!(!dir.join(format!("{first}.pk8")).exists());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unchanged_manifest_keeps_the_loaded_keys() {
    let dir = temp_dir();
    let store = KeyStore::open(&dir, true)
        .unwrap()
        .with_recheck_interval(Duration::ZERO);
    let before = store.current();
    // Re-read, found the same: no reload (no new ring, no "reloaded" log).
    assert!(Arc::ptr_eq(&before, &store.current()));
    rotate(&dir, Duration::ZERO).unwrap();
    assert!(!Arc::ptr_eq(&before, &store.current()));
    fs::remove_dir_all(dir).unwrap();
}

/// A generated key directory and the file of its signing key.
#[cfg(unix)]
fn directory_with_a_key() -> (PathBuf, PathBuf) {
    let dir = temp_dir();
    let kid = KeyStore::open(&dir, true)
        .unwrap()
        .signing_key()
        .kid()
        .to_owned();
    let key = dir.join(format!("{kid}.pk8"));
    (dir, key)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn modes_that_let_others_in_are_fixed_in_our_own_directory() {
    let (dir, key) = directory_with_a_key();
    // A copy by hand, a lax umask, a write interrupted before its rename.
    let leftover = dir.join("keys.tmp");
    fs::write(&leftover, b"half a manifest").unwrap();
    set_mode(&leftover, 0o644);
    set_mode(&key, 0o644);
    set_mode(&dir.join(MANIFEST), 0o664);
    set_mode(&dir, 0o755);
    KeyStore::open(&dir, true).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.join(MANIFEST)), 0o600);
    assert_eq!(mode(&leftover), 0o600);
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_mounted_directory_that_lets_others_in_is_refused() {
    let (dir, key) = directory_with_a_key();
    // What Kubernetes mounts with defaultMode 0440 and an fsGroup: fine.
    set_mode(&key, 0o440);
    set_mode(&dir.join(MANIFEST), 0o440);
    set_mode(&dir, 0o1777);
    KeyStore::open(&dir, false).unwrap();
    set_mode(&key, 0o444);
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(
        matches!(error, KeyStoreError::Permissions { mode: 0o444, .. }),
        "{error}"
    );
    assert_eq!(mode(&key), 0o444, "a mounted Secret is not ours to change");
    set_mode(&key, 0o600);
    set_mode(&dir, 0o777);
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(error.to_string().contains("others may replace"), "{error}");
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_mounted_key_made_readable_later_is_not_reloaded() {
    let dir = temp_dir();
    KeyStore::open(&dir, true).unwrap();
    let store = KeyStore::open(&dir, false)
        .unwrap()
        .with_recheck_interval(Duration::ZERO);
    let first = store.signing_key().kid().to_owned();
    rotate(&dir, Duration::ZERO).unwrap();
    let promoted = rotate(&dir, Duration::ZERO).unwrap();
    set_mode(&dir.join(format!("{}.pk8", promoted.staged)), 0o644);
    assert_eq!(
        store.signing_key().kid(),
        first,
        "the previous keys keep signing"
    );
    set_mode(&dir.join(format!("{}.pk8", promoted.staged)), 0o600);
    assert_eq!(store.signing_key().kid(), promoted.active);
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_left_over_temporary_file_is_replaced_not_reused() {
    let dir = temp_dir();
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join("k-1.pk8");
    let temporary = dir.join("k-1.tmp");
    fs::write(&temporary, b"stale").unwrap();
    set_mode(&temporary, 0o666);
    write_private(&target, b"secret").unwrap();
    assert_eq!(mode(&target), 0o600);
    assert_eq!(fs::read(&target).unwrap(), b"secret");
    assert!(!temporary.exists());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_staged_key_is_promoted_only_after_the_jwks_refresh_gap() {
    let dir = temp_dir();
    KeyStore::open(&dir, true).unwrap();
    let gap = Duration::from_secs(300);
    let staged = rotate(&dir, gap).unwrap();
    let staged_at = read_manifest(&dir).unwrap().unwrap().staged_at.unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(staged_at) <= 5,
        "staged at {staged_at}, now {now}"
    );
    let error = rotate(&dir, gap).unwrap_err();
    assert!(
        matches!(&error, KeyStoreError::TooSoon { staged: kid, wait, .. } if *kid == staged.staged && *wait > 290),
        "{error}"
    );
    assert!(error.to_string().contains("--jwks-refresh"), "{error}");
    // Nothing changed: the staged key is still only staged.
    let manifest = read_manifest(&dir).unwrap().unwrap();
    assert_eq!(manifest.published[0], staged.staged);
    assert_eq!(manifest.active, staged.active);
    // Staged 100 s ago: about 200 s to go.
    write_manifest(
        &dir,
        &Manifest {
            staged_at: Some(staged_at - 100),
            ..manifest.clone()
        },
    )
    .unwrap();
    let error = rotate(&dir, gap).unwrap_err();
    assert!(
        matches!(&error, KeyStoreError::TooSoon { wait, staged_ago, .. }
            if (195..=200).contains(wait) && *staged_ago >= 100),
        "{error}"
    );
    // A manifest from before staging times were kept does not block.
    write_manifest(
        &dir,
        &Manifest {
            staged_at: None,
            ..manifest
        },
    )
    .unwrap();
    assert_eq!(rotate(&dir, gap).unwrap().active, staged.staged);
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_link_planted_in_our_own_directory_is_refused_not_followed() {
    let (dir, key) = directory_with_a_key();
    let elsewhere = dir.with_extension("elsewhere");
    fs::write(&elsewhere, b"someone else's file").unwrap();
    set_mode(&elsewhere, 0o644);
    let planted = dir.join("planted.tmp");
    std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
    let error = KeyStore::open(&dir, true).err().unwrap();
    assert!(error.to_string().contains("only plain files"), "{error}");
    // The link's own permission bits, without its file type.
    assert!(error.to_string().contains("has mode 0777"), "{error}");
    assert_eq!(mode(&elsewhere), 0o644, "the link's target is left alone");
    fs::remove_file(&planted).unwrap();
    assert_eq!(mode(&key), 0o600);
    KeyStore::open(&dir, true).unwrap();
    fs::remove_dir_all(dir).unwrap();
    fs::remove_file(elsewhere).unwrap();
}

#[test]
fn a_compromised_signer_is_replaced_and_retired_at_once() {
    let dir = temp_dir();
    let store = KeyStore::open(&dir, true)
        .unwrap()
        .with_recheck_interval(Duration::ZERO);
    let leaked = store.signing_key().kid().to_owned();
    // A key staged beside the leaked one leaked with it: it goes too.
    let staged = rotate(&dir, Duration::ZERO).unwrap().staged;
    let replaced = replace_compromised_signer(&dir).unwrap();
    assert!(![&leaked, &staged].contains(&&replaced.active));
    let mut retired = replaced.retired.clone();
    retired.sort();
    let mut expected = vec![leaked.clone(), staged.clone()];
    expected.sort();
    assert_eq!(retired, expected);
    assert_eq!(store.signing_key().kid(), replaced.active);
    let kids: Vec<String> = store.jwks().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec![replaced.staged.clone(), replaced.active.clone()]);
    assert!(!dir.join(format!("{leaked}.pk8")).exists());
    assert!(!dir.join(format!("{staged}.pk8")).exists());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unreadable_manifest_is_an_error_never_a_reason_to_make_new_keys() {
    let dir = temp_dir();
    fs::create_dir_all(dir.join(MANIFEST)).unwrap();
    let error = KeyStore::open(&dir, true).err().unwrap();
    assert!(matches!(error, KeyStoreError::Io { .. }), "{error}");
    let made: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "pk8"))
        .collect();
    assert!(made.is_empty(), "no key was generated");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_key_directory_is_read_again_only_after_the_recheck_interval() {
    let dir = temp_dir();
    let store = KeyStore::open(&dir, true)
        .unwrap()
        .with_recheck_interval(Duration::from_secs(3600));
    let first = store.signing_key().kid().to_owned();
    rotate(&dir, Duration::ZERO).unwrap();
    rotate(&dir, Duration::ZERO).unwrap();
    assert_eq!(store.signing_key().kid(), first, "not read again yet");
    fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn right_modes_are_left_alone_without_a_warning() {
    use tracing_subscriber::layer::SubscriberExt;
    let (dir, _) = directory_with_a_key();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || CapturedLog(writer.clone())),
    );
    tracing::subscriber::with_default(subscriber, || {
        // Another test thread may have cached "no one listens" for this
        // callsite while no subscriber of its own was set: ask again.
        tracing::callsite::rebuild_interest_cache();
        KeyStore::open(&dir, true).unwrap();
        set_mode(&dir, 0o750);
        KeyStore::open(&dir, true).unwrap();
    });
    let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("fixed a mode").count(),
        1,
        "one warning, for the one lax mode: {text}"
    );
    fs::remove_dir_all(dir).unwrap();
}

struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
