//! `trellis service-accounts` as an operator runs it: the binary, its
//! stdout and its exit codes.

use std::process::{Command, Output};

fn trellis(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TRELLIS_DATABASE_URL")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn create_prints_credentials_once_and_list_and_revoke_complete_the_set() {
    let data_dir = std::env::temp_dir().join(format!("trellis-cli-{}", std::process::id()));
    let created = trellis(
        &[
            "service-accounts",
            "create",
            "worker-1",
            "--scope",
            "worker",
        ],
        &data_dir,
    );
    assert!(created.status.success(), "{created:?}");
    // Exactly one JSON object on stdout, nothing else.
    let credentials: serde_json::Value = serde_json::from_str(&stdout(&created)).unwrap();
    let client_id = credentials["client_id"].as_str().unwrap().to_owned();
    let secret = credentials["client_secret"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(&client_id).is_ok());
    assert!(secret.len() >= 43, "256 random bits");

    let listed = stdout(&trellis(&["service-accounts", "list"], &data_dir));
    assert!(
        listed.contains(&client_id) && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(secret), "the secret is shown once");

    let revoked = trellis(&["service-accounts", "revoke", &client_id], &data_dir);
    assert!(revoked.status.success(), "{revoked:?}");
    let listed = stdout(&trellis(&["service-accounts", "list"], &data_dir));
    assert!(listed.contains("revoked"), "{listed}");
    let again = trellis(&["service-accounts", "revoke", &client_id], &data_dir);
    assert_eq!(again.status.code(), Some(1));

    let bad_name = trellis(
        &[
            "service-accounts",
            "create",
            "two words",
            "--scope",
            "worker",
        ],
        &data_dir,
    );
    assert_eq!(bad_name.status.code(), Some(2));
    assert!(stdout(&bad_name).is_empty());
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[test]
fn listing_where_there_is_no_data_is_an_error_that_creates_nothing() {
    let data_dir = std::env::temp_dir().join(format!("trellis-cli-empty-{}", std::process::id()));
    for args in [
        &["service-accounts", "list"][..],
        &[
            "service-accounts",
            "revoke",
            "00000000-0000-0000-0000-000000000000",
        ],
    ] {
        let listed = trellis(args, &data_dir);
        assert_eq!(listed.status.code(), Some(2), "{listed:?}");
        let said = String::from_utf8_lossy(&listed.stderr);
        assert!(said.contains("no Trellis data in"), "{said}");
        assert!(!data_dir.exists(), "made {}", data_dir.display());
    }
}
