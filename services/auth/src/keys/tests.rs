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
fn a_mounted_directory_without_keys_is_a_clear_error() {
    let dir = temp_dir();
    fs::create_dir_all(&dir).unwrap();
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(
        error.to_string().starts_with("no signing keys in"),
        "{error}"
    );
    fs::write(
        dir.join(MANIFEST),
        br#"{"active":"k-1","published":["k-1"]}"#,
    )
    .unwrap();
    fs::write(dir.join("k-1.pk8"), b"not a key").unwrap();
    let error = KeyStore::open(&dir, false).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("k-1: invalid Ed25519 PKCS#8 key"),
        "{error}"
    );
    fs::write(
        dir.join(MANIFEST),
        br#"{"active":"../etc/passwd","published":["../etc/passwd"]}"#,
    )
    .unwrap();
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
    let one = rotate(&dir).unwrap();
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
    let two = rotate(&dir).unwrap();
    assert_eq!(two.active, one.staged);
    assert_eq!(
        kids(&store),
        vec![two.staged.clone(), one.staged.clone(), first.clone()]
    );
    assert_eq!(store.signing_key().kid(), one.staged);

    // Again: the first key is retired and its file removed.
    let three = rotate(&dir).unwrap();
    assert_eq!(three.retired, vec![first.clone()]);
    assert_eq!(
        kids(&store),
        vec![three.staged.clone(), two.staged.clone(), one.staged.clone()]
    );
    assert!(!dir.join(format!("{first}.pk8")).exists());
    fs::remove_dir_all(dir).unwrap();
}
