//! Memory per session at scale: inserts N sessions (default 100 000; 100
//! organizations, 2 sessions per user, realistic fields) into Redis and into
//! a fresh SQLite file, and reports Redis `used_memory` growth and SQLite
//! file bytes per session. Its keys live under a prefix of their own and are
//! removed after.
//!
//!   REDIS_URL=redis://127.0.0.1:6379/ cargo run --release -p trellis-session --example session_memory
//!   SESSIONS=10000 ... (fewer)

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use trellis_session::store::{
    RedisSessions, SessionKind, SessionRecord, SessionStore, SqlSessions,
};
use trellis_store::{Database, DatabaseOptions};
use uuid::Uuid;

const ORGS: usize = 100;
const HOUR: i64 = 3_600_000;

fn sessions(count: usize, now: i64) -> Vec<SessionRecord> {
    let orgs: Vec<Uuid> = (0..ORGS).map(|_| Uuid::new_v4()).collect();
    let mut user = Uuid::new_v4();
    (0..count)
        .map(|n| {
            if n % 2 == 0 {
                user = Uuid::new_v4();
            }
            SessionRecord {
                id: Uuid::new_v4(),
                org_id: orgs[n % ORGS],
                user_id: user,
                kind: if n % 2 == 0 { SessionKind::Login } else { SessionKind::Work },
                created_at: now,
                last_activity_at: now,
                idle_expires_at: now + 24 * HOUR,
                absolute_expires_at: now + 30 * 24 * HOUR,
                metadata: if n % 2 == 0 {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([("table".to_owned(), "12".to_owned())])
                },
                // 128 random bits, base64url.
                csrf_token: "q3Zl9w1bX0kQ2mV7c8yF4A".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36".into(),
                client_address: "203.0.113.42".into(),
            }
        })
        .collect()
}

async fn used_memory(pool: &trellis_store::RedisPool) -> i64 {
    let mut connection = pool.get().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut *connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

async fn insert_all(store: &dyn SessionStore, all: &[SessionRecord]) -> f64 {
    let started = Instant::now();
    for session in all {
        store.insert(session).await.unwrap();
    }
    all.len() as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let all = sessions(count, now);

    if let Ok(url) = std::env::var("REDIS_URL") {
        let pool = trellis_store::connect_redis(&url, 4).await.unwrap();
        let prefix = format!("trellis-bench:{}:", Uuid::new_v4().simple());
        let before = used_memory(&pool).await;
        let rate = insert_all(&RedisSessions::new(pool.clone(), prefix.clone()), &all).await;
        let after = used_memory(&pool).await;
        println!(
            "redis:  {count} sessions, used_memory +{} B = {:.0} B per session ({rate:.0} inserts/s, one connection)",
            after - before,
            (after - before) as f64 / count as f64
        );
        trellis_store::remove_keys_under(&pool, &prefix)
            .await
            .unwrap();
    } else {
        println!("redis:  skipped (set REDIS_URL)");
    }

    let dir = std::env::temp_dir().join(format!("trellis-session-memory-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = trellis_store::default_sqlite_url(&dir, "session");
    let database = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap();
    trellis_store::migrate(&database, &trellis_session::MIGRATIONS)
        .await
        .unwrap();
    let file_bytes = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum::<u64>() as i64
    };
    let before = file_bytes();
    let rate = insert_all(&SqlSessions::new(database.clone()), &all).await;
    database.close().await;
    let after = file_bytes();
    println!(
        "sqlite: {count} sessions, files +{} B = {:.0} B per session ({rate:.0} inserts/s)",
        after - before,
        (after - before) as f64 / count as f64
    );
    std::fs::remove_dir_all(dir).unwrap();
}
