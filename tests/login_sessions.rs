//! Auth reaches login sessions only through `LoginSessions`: a real Auth
//! server runs here with sessions kept in a test double, and every call it
//! makes is seen.

mod common;

use std::sync::Arc;

use common::*;
use tonic::Code;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{
    CheckSessionRequest, LogoutRequest, RefreshRequest, SignUpRequest, WhoAmIRequest,
};
use trellis_auth::{AuthDeps, AuthSettings, KeyStore, Passwords, Throttle, ThrottlePolicy};
use trellis_runtime::ServerLimits;
use trellis_store::{Database, DatabaseOptions, MemoryCounters};

#[tokio::test]
async fn auth_keeps_login_sessions_only_through_the_trait() {
    let data_dir = temp_dir("login-sessions");
    let keys = Arc::new(KeyStore::open(data_dir.join("keys"), true).unwrap());
    let url = trellis_store::default_sqlite_url(&data_dir, "auth");
    let database = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap();
    trellis_store::migrate(&database, &trellis_auth::MIGRATIONS)
        .await
        .unwrap();
    let sessions = RecordingSessions::default();
    let limits = ServerLimits::default();
    let set = trellis_auth::service_set(
        &limits,
        AuthDeps {
            keys: keys.clone(),
            database: database.clone(),
            sessions: Arc::new(sessions.clone()),
            passwords: Arc::new(Passwords::new(1).unwrap()),
            settings: AuthSettings::default(),
            throttle: Throttle::new(
                Arc::new(MemoryCounters::default()),
                ThrottlePolicy::default(),
            ),
        },
    );
    let server = spawn_server(set, verifier_for(&keys.signing_key()).await, limits).await;
    let mut auth = AuthServiceClient::new(channel(server.address).await);

    let signed_up = auth
        .sign_up(SignUpRequest {
            email: "ana@example.com".into(),
            password: "Correct-Horse-9".into(),
            name: "Ana".into(),
            organization_name: "Taco Palace".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let session_id = signed_up.session_id.clone();
    assert!(sessions.live(&session_id));

    let who = auth
        .who_am_i(authed(WhoAmIRequest {}, &signed_up.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.session_id, session_id);

    let refreshed = auth
        .refresh(RefreshRequest {
            refresh_token: signed_up.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refreshed.session_id, session_id);

    auth.logout(authed(LogoutRequest {}, &refreshed.access_token))
        .await
        .unwrap();
    assert!(!sessions.live(&session_id));
    let checked = auth
        .check_session(authed(CheckSessionRequest {}, &refreshed.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.live, "the trait's answer is Auth's answer");
    let refused = auth
        .refresh(RefreshRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A rotated token presented again ends its session through the trait.
    let reused = auth
        .refresh(RefreshRequest {
            refresh_token: signed_up.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);

    assert_eq!(
        sessions.calls(),
        [
            "open",
            "is_live",
            "touch",
            "end: logout",
            "touch",
            "touch",
            "end: refresh token reused"
        ]
    );
    let Database::Sqlite(pool) = &database else {
        unreachable!()
    };
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM auth_login_sessions")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no session was written past the trait");
    server.trigger.trigger();
}
