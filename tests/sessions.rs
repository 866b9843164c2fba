//! The Session service end to end, on every backend (SQLite, PostgreSQL,
//! Redis): what a user may see and do with sessions, what another user or
//! organization cannot, expiry that slides with use and stops at its cap,
//! and the upgrade that hands Auth's old login sessions over.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{RefreshRequest, SignUpRequest, SignUpResponse, WhoAmIRequest};
use trellis::session::v1 as pb;
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis_cli::{Running, ServiceName};

struct Fixture {
    running: Running,
    data_dir: std::path::PathBuf,
    auth: AuthServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
}

impl Fixture {
    async fn start(extra: &[&str]) -> Fixture {
        let data_dir = temp_dir("sessions");
        Self::start_in(data_dir, extra).await
    }

    async fn start_in(data_dir: std::path::PathBuf, extra: &[&str]) -> Fixture {
        let mut args = vec!["--session-check-ttl", "200ms"];
        args.extend_from_slice(extra);
        let running = trellis_cli::start(
            &[ServiceName::Auth, ServiceName::Session],
            &up_args(&data_dir, &args),
        )
        .await
        .unwrap();
        let address = |service| running.address(service).unwrap();
        let auth = AuthServiceClient::new(channel(address(ServiceName::Auth)).await);
        let sessions = SessionServiceClient::new(channel(address(ServiceName::Session)).await);
        Fixture {
            running,
            data_dir,
            auth,
            sessions,
        }
    }

    /// A new organization with its first user (an admin).
    async fn sign_up(&mut self, name: &str) -> SignUpResponse {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        self.auth
            .sign_up(SignUpRequest {
                email: format!("{name}.{unique}@example.com"),
                password: PASSWORD.into(),
                name: name.into(),
                organization_name: format!("{name} {unique}"),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A member of the token's organization, invited and accepted.
    async fn member(
        &mut self,
        admin_token: &str,
        role: trellis::auth::v1::Role,
        name: &str,
    ) -> trellis::auth::v1::AcceptInvitationResponse {
        use trellis::auth::v1::organization_service_client::OrganizationServiceClient;
        use trellis::auth::v1::{AcceptInvitationRequest, InviteUserRequest};
        let mut orgs = OrganizationServiceClient::new(
            channel(self.running.address(ServiceName::Auth).unwrap()).await,
        );
        let invited = orgs
            .invite_user(authed(
                InviteUserRequest {
                    email: format!("{name}.{}@example.com", uuid::Uuid::new_v4().simple()),
                    role: role as i32,
                },
                admin_token,
            ))
            .await
            .unwrap()
            .into_inner();
        orgs.accept_invitation(AcceptInvitationRequest {
            token: invited.invitation.unwrap().token,
            password: PASSWORD.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
    }

    async fn create(
        &mut self,
        token: &str,
        metadata: &[(&str, &str)],
    ) -> Result<pb::Session, tonic::Status> {
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(self
            .sessions
            .create_session(authed(pb::CreateSessionRequest { metadata }, token))
            .await?
            .into_inner()
            .session
            .unwrap())
    }

    async fn get(&mut self, token: &str, id: &str) -> Result<pb::Session, tonic::Status> {
        let request = pb::GetSessionRequest {
            session_id: id.into(),
        };
        Ok(self
            .sessions
            .get_session(authed(request, token))
            .await?
            .into_inner()
            .session
            .unwrap())
    }

    async fn list(&mut self, token: &str, user_id: &str) -> Result<Vec<String>, tonic::Status> {
        let request = pb::ListSessionsRequest {
            user_id: user_id.into(),
            ..Default::default()
        };
        Ok(self
            .sessions
            .list_sessions(authed(request, token))
            .await?
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| s.session_id)
            .collect())
    }

    async fn stats(&mut self, token: &str) -> pb::GetSessionStatsResponse {
        self.sessions
            .get_session_stats(authed(pb::GetSessionStatsRequest {}, token))
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }
}

const PASSWORD: &str = "Correct-Horse-9";

/// How Auth stores a refresh token: its SHA-256, hex.
fn refresh_token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs one statement on either backend.
async fn execute(db: &trellis_store::Database, sql: &str) -> Result<(), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        trellis_store::Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        trellis_store::Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
    }
}

fn not_found(result: Result<impl std::fmt::Debug, tonic::Status>, id: &str) {
    let status = result.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, format!("session not found: {id}").as_str())
    );
}

/// A login is a LOGIN session the owner can read, with the CSRF token the
/// login answered; WORK sessions carry bounded metadata; listing, deleting
/// and the counts cover the caller's own sessions and organization only.
async fn a_user_sees_and_ends_only_its_own_sessions(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let ana = fx.sign_up("ana").await;
    let bob = fx.sign_up("bob").await;
    let (ana_token, bob_token) = (ana.access_token.clone(), bob.access_token.clone());
    assert_eq!(ana.csrf_token.len(), 22, "128 bits, base64url");

    let login = fx.get(&ana_token, &ana.session_id).await.unwrap();
    assert_eq!(login.kind, pb::SessionKind::Login as i32);
    assert_eq!(login.csrf_token, ana.csrf_token);

    let work = fx
        .create(&ana_token, &[("table", "12"), ("app.version", "1.2")])
        .await
        .unwrap();
    assert_eq!(work.kind, pb::SessionKind::Work as i32);
    assert_eq!(
        work.metadata,
        HashMap::from([
            ("table".to_string(), "12".to_string()),
            ("app.version".to_string(), "1.2".to_string())
        ])
    );
    assert_ne!(work.csrf_token, login.csrf_token);
    assert_eq!(
        uuid::Uuid::parse_str(&work.session_id)
            .unwrap()
            .get_version_num(),
        4
    );

    // Out-of-bounds metadata: INVALID_ARGUMENT, nothing created.
    let many: Vec<(String, String)> = (0..33).map(|n| (format!("k{n}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let long = "x".repeat(513);
    for metadata in [
        &many[..],
        &[("bad key", "v")],
        &[("k", long.as_str())],
        &[("k", "a\nb")],
    ] {
        let refused = fx.create(&ana_token, metadata).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let mut mine = fx.list(&ana_token, "").await.unwrap();
    mine.sort();
    let mut expected = vec![ana.session_id.clone(), work.session_id.clone()];
    expected.sort();
    assert_eq!(mine, expected, "newest first, and nothing half-created");

    // Another organization: NOT_FOUND on every RPC that names the session;
    // its list and counts are its own.
    not_found(fx.get(&bob_token, &work.session_id).await, &work.session_id);
    let deleted = fx
        .sessions
        .delete_session(authed(
            pb::DeleteSessionRequest {
                session_id: work.session_id.clone(),
            },
            &bob_token,
        ))
        .await;
    not_found(deleted, &work.session_id);
    let ana_user = ana.user.as_ref().unwrap().user_id.clone();
    let listed = fx.list(&bob_token, &ana_user).await;
    assert_eq!(
        listed.unwrap(),
        Vec::<String>::new(),
        "admin of another org"
    );
    let ana_stats = fx.stats(&ana_token).await;
    let bob_stats = fx.stats(&bob_token).await;
    assert_eq!(
        (ana_stats.total_sessions, ana_stats.active_sessions),
        (2, 2)
    );
    assert_eq!(
        (bob_stats.total_sessions, bob_stats.active_sessions),
        (1, 1)
    );
    assert!(ana_stats.oldest_session.unwrap().seconds <= ana_stats.newest_session.unwrap().seconds);

    // DeleteOtherSessions keeps the presented one; the WORK one is gone.
    let extra_work = fx.create(&ana_token, &[]).await.unwrap();
    let ended = fx
        .sessions
        .delete_other_sessions(authed(pb::DeleteOtherSessionsRequest {}, &ana_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.deleted_count, 2);
    not_found(
        fx.get(&ana_token, &extra_work.session_id).await,
        &extra_work.session_id,
    );
    assert_eq!(
        fx.list(&ana_token, "").await.unwrap(),
        std::slice::from_ref(&ana.session_id)
    );

    // Deleting the LOGIN session is a logout: the token stops working.
    fx.sessions
        .delete_session(authed(
            pb::DeleteSessionRequest {
                session_id: ana.session_id.clone(),
            },
            &ana_token,
        ))
        .await
        .unwrap();
    // Within the guard's --session-check-ttl (200 ms) plus the second Auth
    // reuses a live answer.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let refused = fx.get(&ana_token, &ana.session_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refreshed = fx
        .auth
        .refresh(RefreshRequest {
            refresh_token: ana.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refreshed.code(), Code::Unauthenticated);
    fx.stop().await;
}

backend_suite!(
    a_user_sees_and_ends_only_its_own_sessions,
    "SessionService": sqlite, postgres, redis
);

/// A member of the same organization: a non-admin cannot name another
/// user, reach another user's session, or open a WORK session as a viewer.
async fn members_of_one_organization_see_only_their_own(extra: &[&str]) {
    use trellis::auth::v1::Role;
    let mut fx = Fixture::start(extra).await;
    let admin = fx.sign_up("ana").await;
    let dev = fx.member(&admin.access_token, Role::Developer, "dev").await;
    let viewer = fx.member(&admin.access_token, Role::Viewer, "val").await;
    assert!(
        !dev.csrf_token.is_empty(),
        "AcceptInvitation answers the CSRF token"
    );

    let admin_work = fx.create(&admin.access_token, &[]).await.unwrap();
    not_found(
        fx.get(&dev.access_token, &admin_work.session_id).await,
        &admin_work.session_id,
    );
    let admin_id = admin.user.as_ref().unwrap().user_id.clone();
    let refused = fx.list(&dev.access_token, &admin_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let viewer_create = fx.create(&viewer.access_token, &[]).await.unwrap_err();
    assert_eq!(viewer_create.code(), Code::PermissionDenied);

    // An admin lists another member's sessions, without their CSRF tokens.
    let dev_id = dev.user.as_ref().unwrap().user_id.clone();
    let listed = fx
        .sessions
        .list_sessions(authed(
            pb::ListSessionsRequest {
                user_id: dev_id,
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, dev.session_id);
    assert_eq!(listed[0].csrf_token, "", "returned only to the owner");
    assert_eq!(fx.stats(&viewer.access_token).await.total_sessions, 4);
    fx.stop().await;
}

backend_suite!(
    members_of_one_organization_see_only_their_own,
    "SessionService": sqlite, redis
);

/// Short TTLs: an unused session expires (NOT_FOUND), a used one lives on
/// past its idle TTL, and none outlives the absolute cap.
async fn expiry_slides_with_use_up_to_the_cap(extra: &[&str]) {
    let mut args = vec!["--session-idle-ttl", "2s", "--session-absolute-ttl", "5s"];
    args.extend_from_slice(extra);
    let mut fx = Fixture::start(&args).await;
    let ana = fx.sign_up("ana").await;
    let token = ana.access_token.clone();
    let dev = fx
        .member(&token, trellis::auth::v1::Role::Developer, "dev")
        .await;
    let idle = fx.create(&token, &[]).await.unwrap();
    let used = fx.create(&token, &[]).await.unwrap();
    let started = std::time::Instant::now();
    // Use `used` (and the login) every 500 ms for 3.5 s: past the idle TTL.
    // Another member asking for `idle` as often does not keep it alive.
    while started.elapsed() < Duration::from_millis(3500) {
        fx.get(&token, &used.session_id).await.unwrap();
        not_found(
            fx.get(&dev.access_token, &idle.session_id).await,
            &idle.session_id,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    not_found(fx.get(&token, &idle.session_id).await, &idle.session_id);
    fx.get(&token, &used.session_id).await.unwrap();
    // The cap: 5 s after creation, however used.
    while started.elapsed() < Duration::from_millis(5300) {
        let _ = fx.get(&token, &used.session_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = fx.get(&token, &used.session_id).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::NotFound | Code::Unauthenticated),
        "past the absolute cap: {status:?}"
    );
    fx.stop().await;
}

backend_suite!(
    expiry_slides_with_use_up_to_the_cap,
    "session expiry": sqlite, postgres, redis
);

/// The upgrade: a login session and refresh token Auth kept in its own
/// table before keep working after `trellis up` hands them over, and Auth's
/// table is gone.
async fn auth_login_sessions_are_handed_over(extra: &[&str]) {
    // First start: the current schema, then a session written the old way.
    let data_dir = temp_dir("handover");
    let fx = Fixture::start_in(data_dir.clone(), extra).await;
    fx.running.shutdown().await.unwrap();
    let storage = up_args(&data_dir, extra).storage;
    let auth_url = storage
        .database_url
        .clone()
        .unwrap_or_else(|| trellis_store::default_sqlite_url(&data_dir, "auth"));
    let db = trellis_store::Database::connect(&auth_url, &Default::default())
        .await
        .unwrap();
    let (org, user, session) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let refresh_token = "legacy-refresh-token-0123456789abcdefghijklmnop";
    let far = now() * 1000 + 3_600_000;
    let statements = [
        "CREATE TABLE IF NOT EXISTS auth_login_sessions (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, \
         user_id TEXT NOT NULL, created_at BIGINT NOT NULL, last_used_at BIGINT NOT NULL, \
         idle_expires_at BIGINT NOT NULL, absolute_expires_at BIGINT NOT NULL, user_agent TEXT NOT NULL, \
         client_address TEXT NOT NULL, revoked_at BIGINT, revoke_reason TEXT)"
            .to_owned(),
        format!(
            "INSERT INTO auth_organizations (id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at) \
             VALUES ('{org}', 'Old Tacos', 'old-tacos-{}', 'free', 3, 1, 100, 1)",
            &org[..8]
        ),
        format!(
            "INSERT INTO auth_users (id, org_id, email, name, password_hash, role, status, created_at) \
             VALUES ('{user}', '{org}', 'old.{}@example.com', 'Old', 'hash', 'admin', 'active', 1)",
            &user[..8]
        ),
        format!(
            "INSERT INTO auth_login_sessions (id, org_id, user_id, created_at, last_used_at, idle_expires_at, absolute_expires_at, user_agent, client_address) \
             VALUES ('{session}', '{org}', '{user}', 1, 1, {far}, {far}, 'grpcurl/1.9', '127.0.0.1')"
        ),
        format!(
            "INSERT INTO auth_refresh_tokens (token_hash, session_id, org_id, user_id, created_at, expires_at) \
             VALUES ('{}', '{session}', '{org}', '{user}', 1, {far})",
            refresh_token_hash(refresh_token)
        ),
    ];
    for statement in &statements {
        execute(&db, statement).await.unwrap();
    }
    db.close().await;

    // Second start: the handover runs before anything serves.
    let mut fx = Fixture::start_in(data_dir, extra).await;
    let refreshed = fx
        .auth
        .refresh(RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .expect("the old refresh token still works")
        .into_inner();
    assert_eq!(refreshed.session_id, session);
    assert_eq!(refreshed.csrf_token.len(), 22);
    let who = fx
        .auth
        .who_am_i(authed(WhoAmIRequest {}, &refreshed.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.session_id, session);
    let moved = fx.get(&refreshed.access_token, &session).await.unwrap();
    assert_eq!(
        (moved.kind, moved.user_agent.as_str()),
        (pb::SessionKind::Login as i32, "grpcurl/1.9")
    );
    let db = trellis_store::Database::connect(&auth_url, &Default::default())
        .await
        .unwrap();
    let gone = execute(&db, "SELECT 1 FROM auth_login_sessions")
        .await
        .unwrap_err();
    assert!(gone.to_string().contains("auth_login_sessions"), "{gone}");
    db.close().await;
    fx.stop().await;
}

backend_suite!(
    auth_login_sessions_are_handed_over,
    "login-session handover": sqlite, postgres
);
