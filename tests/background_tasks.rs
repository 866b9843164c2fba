//! Background tasks run beside a server's RPCs: one that dies turns the
//! server NOT_SERVING instead of stopping its work silently; on shutdown
//! they are told to stop, and one that does not is aborted within the grace.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_runtime::{ServerLimits, ServiceSet};
use trellis_tenancy::SigningKey;

async fn health(server: &TestServer, service: &str) -> i32 {
    HealthClient::new(channel(server.address).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

fn limits() -> ServerLimits {
    ServerLimits {
        shutdown_grace: Duration::from_millis(500),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_dead_background_task_makes_the_server_not_serving() {
    let key = SigningKey::generate("key-a");
    let set = ServiceSet::new("test")
        .with_background_task("relay", |_shutdown| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err("the database went away".into())
        })
        .with_background_task("sweeper", |mut shutdown| async move {
            shutdown.wait().await;
            Ok(())
        });
    let server = spawn_server(set, verifier_for(&key).await, limits()).await;
    assert_eq!(health(&server, "").await, ServingStatus::Serving as i32);
    let started = Instant::now();
    while health(&server, "").await == ServingStatus::Serving as i32 {
        assert!(started.elapsed() < Duration::from_secs(5), "still SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&server, "").await, ServingStatus::NotServing as i32);
    // The server itself goes on answering (here: health) until shut down.
    server.trigger.trigger();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn on_shutdown_tasks_are_told_to_stop_and_stubborn_ones_are_aborted() {
    let key = SigningKey::generate("key-a");
    let stopped_cleanly = Arc::new(AtomicBool::new(false));
    let flag = stopped_cleanly.clone();
    let set = ServiceSet::new("test")
        .with_background_task("polite", move |mut shutdown| async move {
            shutdown.wait().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        })
        .with_background_task("stubborn", |_shutdown| async {
            std::future::pending::<()>().await;
            Ok(())
        });
    let server = spawn_server(set, verifier_for(&key).await, limits()).await;
    assert_eq!(health(&server, "").await, ServingStatus::Serving as i32);
    let asked = Instant::now();
    server.trigger.trigger();
    server.task.await.unwrap().unwrap();
    assert!(stopped_cleanly.load(Ordering::SeqCst));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stopped within the grace (0.5 s) and a margin: {took:?}"
    );
}
