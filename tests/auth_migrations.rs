//! Auth's schema upgrades keep what is already stored: a database at
//! version 2 with users, live sessions and refresh tokens comes through
//! version 3 (refresh tokens carry their user; no foreign key to the session
//! table) with every row intact, on SQLite and (when
//! TRELLIS_TEST_DATABASE_URL is set) PostgreSQL.

mod common;

use trellis_store::{Database, ServiceMigrations};

/// Auth's history up to version 2.
fn before_boundary() -> ServiceMigrations {
    let all = trellis_auth::MIGRATIONS;
    ServiceMigrations {
        service: all.service,
        sqlite: &all.sqlite[..2],
        postgres: &all.postgres[..2],
    }
}

const SEED: [&str; 4] = [
    "INSERT INTO auth_organizations (id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at) \
     VALUES ('o1', 'Taco Palace', 'taco-palace', 'free', 3, 1, 100, 1)",
    "INSERT INTO auth_users (id, org_id, email, name, password_hash, role, status, created_at) \
     VALUES ('u1', 'o1', 'ana@example.com', 'Ana', 'hash', 'admin', 'active', 1)",
    "INSERT INTO auth_login_sessions (id, org_id, user_id, created_at, last_used_at, idle_expires_at, absolute_expires_at, user_agent, client_address) \
     VALUES ('s1', 'o1', 'u1', 1, 1, 9000000000000, 9000000000000, 'grpcurl', '127.0.0.1')",
    "INSERT INTO auth_refresh_tokens (token_hash, session_id, org_id, created_at, expires_at, rotated_at) \
     VALUES ('h1', 's1', 'o1', 1, 9000000000000, 5), ('h2', 's1', 'o1', 2, 9000000000000, NULL)",
];

macro_rules! check_upgrade {
    ($pool:expr, $database:expr) => {{
        let pool = $pool;
        trellis_store::migrate($database, &before_boundary())
            .await
            .unwrap();
        for statement in SEED {
            sqlx::query(statement).execute(pool).await.unwrap();
        }
        trellis_store::migrate($database, &trellis_auth::MIGRATIONS)
            .await
            .unwrap();

        let tokens: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT token_hash, session_id, user_id, rotated_at FROM auth_refresh_tokens ORDER BY token_hash",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            tokens,
            [
                ("h1".into(), "s1".into(), "u1".into(), Some(5)),
                ("h2".into(), "s1".into(), "u1".into(), None)
            ]
        );
        let sessions: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, user_id, user_agent FROM auth_login_sessions")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(sessions, [("s1".into(), "u1".into(), "grpcurl".into())]);
        // The boundary holds: a user goes without touching session rows.
        sqlx::query("DELETE FROM auth_refresh_tokens WHERE user_id = 'u1'")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM auth_users WHERE id = 'u1'")
            .execute(pool)
            .await
            .unwrap();
    }};
}

async fn version_3_keeps_sessions_and_tokens(database: &Database) {
    trellis_store::with_pool!(database, |pool| check_upgrade!(pool, database));
}

backend_suite!(database version_3_keeps_sessions_and_tokens, "Auth migrations": sqlite, postgres);
