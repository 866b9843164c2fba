//! The fan-out across replicas: two fan-outs on one PostgreSQL database (or
//! one Redis) stand for two replicas. What one publishes, the other's
//! subscribers of that topic hear, and only they; when the listening
//! connection is cut, subscribers are told to resync and messages flow
//! again. Runs when TRELLIS_TEST_DATABASE_URL / TRELLIS_TEST_REDIS_URL are
//! set, and says loudly when skipped.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use trellis_store::{Database, DatabaseOptions, FanOut, PgFanOut, RedisFanOut, Subscription, Wake};

fn url(variable: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).ok();
    if url.is_none() {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
            "{what}: set {variable} (TRELLIS_REQUIRE_BACKENDS is set)"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (set {variable})");
    }
    url
}

async fn next(subscription: &mut Subscription) -> Wake {
    tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("a wake-up within 5 s")
        .expect("the fan-out is alive")
}

/// Until a message (not a resync) arrives.
async fn next_message(subscription: &mut Subscription) -> Arc<str> {
    loop {
        if let Wake::Message(message) = next(subscription).await {
            return message;
        }
    }
}

/// Replica `a` publishes; replica `b`'s subscribers hear their topic only.
async fn crosses_replicas(a: &dyn FanOut, b: &dyn FanOut, unique: &str) {
    let (ours, theirs) = (format!("exec:{unique}-1"), format!("exec:{unique}-2"));
    let mut on_b = b.subscribe(&ours);
    let mut other_topic = b.subscribe(&theirs);
    let mut on_a = a.subscribe(&ours);
    a.publish(&ours, "42").await.unwrap();
    assert_eq!(&*next_message(&mut on_b).await, "42");
    assert_eq!(&*next_message(&mut on_a).await, "42", "its own replica too");
    b.publish(&theirs, "7").await.unwrap();
    assert_eq!(&*next_message(&mut other_topic).await, "7");
    // `on_b` heard nothing of the other topic: its next is the next on its own.
    a.publish(&ours, "43").await.unwrap();
    assert_eq!(&*next_message(&mut on_b).await, "43");
}

#[tokio::test]
async fn postgres_notify_reaches_every_replica_and_resyncs_after_a_cut() {
    let Some(url) = url("TRELLIS_TEST_DATABASE_URL", "fan-out on PostgreSQL") else {
        return;
    };
    let Database::Postgres(pool) = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap()
    else {
        panic!("not a PostgreSQL URL")
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let channel = format!("fanout_test_{unique}");
    let a = PgFanOut::start(pool.clone(), &channel).await.unwrap();
    let b = PgFanOut::start(pool.clone(), &channel).await.unwrap();
    crosses_replicas(&a, &b, &unique).await;

    // Cut b's listening connection: its subscribers are told to resync,
    // and what is published after the reconnect reaches them.
    let topic = format!("exec:{unique}-cut");
    let mut on_b = b.subscribe(&topic);
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = $1",
    )
    .bind(format!("LISTEN \"{channel}\""))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "found the listeners");
    assert_eq!(next(&mut on_b).await, Wake::Resync);
    let started = std::time::Instant::now();
    loop {
        a.publish(&topic, "after").await.unwrap();
        match tokio::time::timeout(Duration::from_millis(300), on_b.recv()).await {
            Ok(Some(Wake::Message(message))) => {
                assert_eq!(&*message, "after");
                break;
            }
            _ => assert!(started.elapsed() < Duration::from_secs(10), "no reconnect"),
        }
    }
}

#[tokio::test]
async fn redis_pubsub_reaches_every_replica() {
    let Some(url) = url("TRELLIS_TEST_REDIS_URL", "fan-out on Redis") else {
        return;
    };
    let pool = trellis_store::connect_redis(&url, 2).await.unwrap();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let channel = format!("trellis-test:{unique}:fanout");
    let a = RedisFanOut::start(&url, pool.clone(), &channel)
        .await
        .unwrap();
    let b = RedisFanOut::start(&url, pool, &channel).await.unwrap();
    crosses_replicas(&a, &b, &unique).await;
}
