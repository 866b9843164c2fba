//! Pools, migrations and failure modes on every backend available. SQLite
//! always runs; PostgreSQL and Redis run when TRELLIS_TEST_DATABASE_URL /
//! TRELLIS_TEST_REDIS_URL are set and say loudly when they are skipped.

use std::io::Write;
use std::time::Duration;

use trellis_store::{
    Database, DatabaseOptions, EmbeddedMigration, ServiceMigrations, StoreError, connect_redis,
    migrate,
};

/// Written past the test harness's capture, so a skip is never silent.
fn skipped(what: &str, variable: &str) {
    // CI sets this: there a missing backend is a failure, not a skip.
    assert!(
        std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
        "{what}: set {variable} (TRELLIS_REQUIRE_BACKENDS is set)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (set {variable})");
}

fn migrations(service: &'static str) -> ServiceMigrations {
    static V1: [EmbeddedMigration; 2] = [
        EmbeddedMigration {
            version: 1,
            description: "widgets",
            sql: "CREATE TABLE widgets_probe (id TEXT PRIMARY KEY, org_id TEXT NOT NULL)",
        },
        EmbeddedMigration {
            version: 2,
            description: "widget names",
            sql: "ALTER TABLE widgets_probe ADD COLUMN name TEXT",
        },
    ];
    ServiceMigrations {
        service,
        sqlite: &V1,
        postgres: &V1,
    }
}

async fn exercise_migrations(database: &Database, service: &'static str) {
    let set = migrations(service);
    migrate(database, &set).await.expect("first run applies");
    migrate(database, &set)
        .await
        .expect("second run is a no-op");
    // Another service's history is separate: same version numbers, own table.
    let other: &'static str = Box::leak(format!("{service}_other").into_boxed_str());
    let other_set = ServiceMigrations {
        service: other,
        sqlite: &[EmbeddedMigration {
            version: 1,
            description: "x",
            sql: "SELECT 1",
        }],
        postgres: &[EmbeddedMigration {
            version: 1,
            description: "x",
            sql: "SELECT 1",
        }],
    };
    migrate(database, &other_set)
        .await
        .expect("independent history");

    // An edited, already-applied migration is refused, not re-run.
    let edited = ServiceMigrations {
        service,
        sqlite: &[EmbeddedMigration {
            version: 1,
            description: "widgets",
            sql: "CREATE TABLE changed (id TEXT)",
        }],
        postgres: &[EmbeddedMigration {
            version: 1,
            description: "widgets",
            sql: "CREATE TABLE changed (id TEXT)",
        }],
    };
    let error = migrate(database, &edited).await.unwrap_err();
    assert!(matches!(error, StoreError::Migrate { .. }), "{error}");
    database.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_creates_its_file_and_migrates_per_service() {
    let dir = std::env::temp_dir().join(format!("trellis-store-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}/nested/probe.db", dir.display());
    let database = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap();
    assert_eq!(database.backend_name(), "sqlite");
    exercise_migrations(&database, "probe").await;
    if let Database::Sqlite(pool) = &database {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
    // Hashes of passwords and tokens: the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: std::path::PathBuf| {
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(dir.join("nested/probe.db")), 0o600);
        assert_eq!(mode(dir.join("nested")), 0o700);
    }
    database.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn postgres_migrates_per_service() {
    let Ok(url) = std::env::var("TRELLIS_TEST_DATABASE_URL") else {
        return skipped("PostgreSQL migration test", "TRELLIS_TEST_DATABASE_URL");
    };
    let database = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap();
    assert_eq!(database.backend_name(), "postgres");
    let service: &'static str =
        Box::leak(format!("probe_{}", uuid::Uuid::new_v4().simple()).into_boxed_str());
    let Database::Postgres(pool) = &database else {
        unreachable!()
    };
    sqlx::query("DROP TABLE IF EXISTS widgets_probe")
        .execute(pool)
        .await
        .unwrap();
    exercise_migrations(&database, service).await;
    for table in [
        "widgets_probe".to_owned(),
        format!("_trellis_{service}_migrations"),
        format!("_trellis_{service}_other_migrations"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn unreachable_or_unknown_backends_fail_clearly() {
    let options = DatabaseOptions {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(1),
    };
    let error = Database::connect("postgres://app:s3cret@127.0.0.1:1/test", &options)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("cannot open postgres://app:***@127.0.0.1:1/test"),
        "{message}"
    );
    assert!(!message.contains("s3cret"));
    assert!(error.is_unavailable());
    assert_eq!(
        trellis_runtime::status_of(error).code(),
        tonic::Code::Unavailable
    );

    let error = Database::connect("mysql://localhost/x", &options)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::UnsupportedUrl(_)), "{error}");

    let error = connect_redis("redis://127.0.0.1:1/", 1).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot reach Redis at redis://127.0.0.1:1/"),
        "{error}"
    );
}

#[tokio::test]
async fn redis_pool_round_trips() {
    let Ok(url) = std::env::var("TRELLIS_TEST_REDIS_URL") else {
        return skipped("Redis pool test", "TRELLIS_TEST_REDIS_URL");
    };
    let pool = connect_redis(&url, 4).await.unwrap();
    let key = format!("trellis:test:{}", uuid::Uuid::new_v4());
    let mut connection = pool.get().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("42")
        .arg("EX")
        .arg(30)
        .query_async(&mut *connection)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut *connection)
        .await
        .unwrap();
    assert_eq!(value, "42");
}

async fn exercise_counters(counters: &dyn trellis_store::Counters) {
    let key = format!("test:{}", uuid::Uuid::new_v4());
    let window = Duration::from_millis(400);
    assert_eq!(counters.get(&key).await.unwrap().count, 0);
    assert_eq!(counters.increment(&key, window).await.unwrap().count, 1);
    let second = counters.increment(&key, window).await.unwrap();
    assert_eq!(second.count, 2);
    assert!(
        second.resets_in <= window && second.resets_in > Duration::ZERO,
        "{second:?}"
    );
    assert_eq!(counters.get(&key).await.unwrap().count, 2);
    // The window does not slide with later increments: it expires.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counters.get(&key).await.unwrap().count, 0);
    assert_eq!(counters.increment(&key, window).await.unwrap().count, 1);
    counters.delete(&key).await.unwrap();
    assert_eq!(counters.get(&key).await.unwrap().count, 0);
}

async fn exercise_gates(counters: &dyn trellis_store::Counters) {
    use trellis_store::Gate;
    let (narrow, wide) = (
        format!("test:{}", uuid::Uuid::new_v4()),
        format!("test:{}", uuid::Uuid::new_v4()),
    );
    let gates = [
        Gate {
            key: &narrow,
            limit: 2,
        },
        Gate {
            key: &wide,
            limit: 2,
        },
    ];
    let hold = Duration::from_secs(60);
    counters
        .increment(&narrow, Duration::from_secs(60))
        .await
        .unwrap();
    // One settled and one in flight fill the narrow gate.
    assert_eq!(counters.enter("a", &gates, hold).await.unwrap(), Ok(()));
    let full = counters
        .enter("b", &gates, hold)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((full.gate, full.settled.count, full.in_flight), (0, 1, 1));
    assert!(full.settled.resets_in > Duration::from_secs(50), "{full:?}");
    // All or none: the refused attempt took no slot on the wide gate.
    assert_eq!(
        counters.enter("c", &gates[1..], hold).await.unwrap(),
        Ok(())
    );
    let full = counters
        .enter("d", &gates[1..], hold)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (full.gate, full.settled.count, full.in_flight),
        (0, 0, 2),
        "a and c fill the wide gate"
    );
    counters.leave("a", &[&narrow, &wide]).await.unwrap();
    assert_eq!(counters.enter("e", &gates, hold).await.unwrap(), Ok(()));

    // A holder that never leaves loses its slot when its hold ends.
    let lone = format!("test:{}", uuid::Uuid::new_v4());
    let gate = [Gate {
        key: &lone,
        limit: 1,
    }];
    let short = Duration::from_millis(200);
    assert_eq!(counters.enter("f", &gate, short).await.unwrap(), Ok(()));
    assert!(counters.enter("g", &gate, short).await.unwrap().is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counters.enter("g", &gate, short).await.unwrap(), Ok(()));
}

#[tokio::test]
async fn memory_counters_count_within_a_window() {
    exercise_counters(&trellis_store::MemoryCounters::default()).await;
}

#[tokio::test]
async fn memory_gates_count_attempts_in_flight() {
    exercise_gates(&trellis_store::MemoryCounters::default()).await;
}

#[tokio::test]
async fn redis_gates_count_attempts_in_flight() {
    let Ok(url) = std::env::var("TRELLIS_TEST_REDIS_URL") else {
        return skipped("Redis gates test", "TRELLIS_TEST_REDIS_URL");
    };
    let pool = connect_redis(&url, 2).await.unwrap();
    exercise_gates(&trellis_store::RedisCounters::new(
        pool,
        format!("trellis:test:{}:", uuid::Uuid::new_v4().simple()),
    ))
    .await;
}

#[tokio::test]
async fn redis_counters_count_within_a_window() {
    let Ok(url) = std::env::var("TRELLIS_TEST_REDIS_URL") else {
        return skipped("Redis counters test", "TRELLIS_TEST_REDIS_URL");
    };
    let pool = connect_redis(&url, 2).await.unwrap();
    exercise_counters(&trellis_store::RedisCounters::new(pool, "trellis:test:")).await;
}
