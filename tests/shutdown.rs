//! SIGTERM to a real server process: health flips, in-flight calls finish,
//! and the process exits within the configured bound.
//!
//! The server is this test binary re-run as a child (`server_process`), using
//! the same `serve` and signal handling as the `trellis` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use tonic::{Request, Response, Status};
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::{WhoAmIRequest, WhoAmIResponse};
use trellis_runtime::{ServerLimits, ServiceSet, Shutdown};
use trellis_tenancy::{Role, SigningKey, TenantContext};

/// An authenticated RPC that takes a while, so calls are in flight at SIGTERM.
struct Slow(Duration);

#[tonic::async_trait]
impl AuthService for Slow {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let tenant = TenantContext::from_request(&request)?.clone();
        tokio::time::sleep(self.0).await;
        Ok(Response::new(WhoAmIResponse {
            session_id: tenant.session_id.to_string(),
            ..Default::default()
        }))
    }
}

#[test]
#[ignore = "the server half of the SIGTERM tests; they run it as a child process"]
fn server_process() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let key =
        SigningKey::from_pkcs8_der("key-1", &STANDARD.decode(env("TRELLIS_TEST_KEY")).unwrap())
            .unwrap();
    let slow = Duration::from_millis(env("TRELLIS_TEST_SLOW_MS").parse().unwrap());
    let limits = ServerLimits {
        shutdown_grace: Duration::from_millis(env("TRELLIS_TEST_GRACE_MS").parse().unwrap()),
        ..ServerLimits::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            trellis_runtime::wait_for_signal().await;
            trigger.trigger();
        });
        let set = ServiceSet::new("slow").add_service(AuthServiceServer::new(Slow(slow)));
        trellis_runtime::serve(set, listener, &limits, verifier_for(&key).await, shutdown)
            .await
            .unwrap();
        println!("stopped");
    });
    std::process::exit(0);
}

struct ServerProcess {
    child: Child,
    address: std::net::SocketAddr,
    /// The rest of the child's stdout, read to the end so its pipe stays open.
    output: std::thread::JoinHandle<String>,
}

fn spawn_server_process(key: &SigningKey, slow: Duration, grace: Duration) -> ServerProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "server_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TRELLIS_TEST_KEY", STANDARD.encode(key.pkcs8_der()))
        .env("TRELLIS_TEST_SLOW_MS", slow.as_millis().to_string())
        .env("TRELLIS_TEST_GRACE_MS", grace.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        // libtest prints its own prefix on the same line.
        if let Some((_, address)) = line.split_once("listening on ") {
            break address.trim().parse().unwrap();
        }
    };
    let output =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    ServerProcess {
        child,
        address,
        output,
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (off the runtime) for a successful exit within `limit`, or fails
/// with `held`; how long it took.
async fn exits_cleanly(mut child: Child, limit: Duration, held: &'static str) -> Duration {
    let (took, status) = tokio::task::spawn_blocking(move || wait_exit(&mut child, limit))
        .await
        .unwrap()
        .expect(held);
    assert!(status.success(), "{status:?}");
    took
}

/// Waits for exit, returning how long it took, or None past `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((started.elapsed(), status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_then_exits() {
    let key = SigningKey::generate("key-1");
    let server = spawn_server_process(&key, Duration::from_millis(800), Duration::from_secs(5));
    let client = AuthServiceClient::new(channel(server.address).await);
    let token = bearer(&key, &claims(uuid::Uuid::new_v4(), Role::Viewer));

    let calls: Vec<_> = (0..24)
        .map(|_| {
            let mut client = client.clone();
            let request = with_metadata(WhoAmIRequest {}, &[("authorization", &token)]);
            tokio::spawn(async move { client.who_am_i(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    sigterm(&server.child);
    let signalled = Instant::now();

    for call in calls {
        let result = call.await.unwrap();
        assert!(
            result.is_ok(),
            "an in-flight call failed during shutdown: {:?}",
            result.err()
        );
    }
    let took = exits_cleanly(
        server.child,
        Duration::from_secs(6),
        "server did not exit within its grace period",
    )
    .await;
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {took:?}"
    );
    assert!(
        server.output.join().unwrap().contains("stopped"),
        "serve returned cleanly"
    );

    // Gone: new calls are refused, not hung.
    let mut fresh = client.clone();
    let status = fresh
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &token)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_call_longer_than_the_grace_period_does_not_hold_the_exit() {
    let key = SigningKey::generate("key-1");
    let server = spawn_server_process(&key, Duration::from_secs(60), Duration::from_millis(500));
    let mut client = AuthServiceClient::new(channel(server.address).await);
    let token = bearer(&key, &claims(uuid::Uuid::new_v4(), Role::Viewer));
    let stuck = tokio::spawn(async move {
        client
            .who_am_i(with_metadata(
                WhoAmIRequest {},
                &[("authorization", &token)],
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&server.child);
    let took = exits_cleanly(
        server.child,
        Duration::from_secs(5),
        "server ignored its grace period",
    )
    .await;
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} with a 500 ms grace"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the over-long call is cut, not answered"
    );
}

/// A socket that connects and never speaks (a stalled client connection,
/// a slowloris) is closed before it reaches the server, so it neither
/// holds the exit for the grace period nor keeps a descriptor for long.
#[tokio::test]
async fn a_socket_that_never_speaks_holds_no_shutdown() {
    let key = SigningKey::generate("key-1");
    let server = spawn_server_process(&key, Duration::ZERO, Duration::from_secs(30));
    let _silent = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    // A real call on another connection still works beside it.
    let mut client = AuthServiceClient::new(channel(server.address).await);
    let token = bearer(&key, &claims(uuid::Uuid::new_v4(), Role::Viewer));
    client
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &token)],
        ))
        .await
        .unwrap();
    drop(client);
    sigterm(&server.child);
    let took = exits_cleanly(
        server.child,
        Duration::from_secs(20),
        "a silent socket held the exit",
    )
    .await;
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?}: it waited for a socket that never spoke"
    );
}

#[tokio::test]
async fn health_reports_not_serving_at_once_while_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let key = SigningKey::generate("key-1");
    let limits = ServerLimits {
        shutdown_drain: Duration::from_millis(1500),
        ..ServerLimits::default()
    };
    let server = spawn_server(
        ServiceSet::new("slow").add_service(AuthServiceServer::new(Slow(Duration::ZERO))),
        verifier_for(&key).await,
        limits,
    )
    .await;
    let mut health = HealthClient::new(channel(server.address).await);
    let check = |name: &str| HealthCheckRequest {
        service: name.into(),
    };
    assert_eq!(
        health.check(check("")).await.unwrap().into_inner().status,
        ServingStatus::Serving as i32
    );

    server.trigger.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for name in ["", "trellis.auth.v1.AuthService"] {
        let status = health.check(check(name)).await.unwrap().into_inner().status;
        assert_eq!(
            status,
            ServingStatus::NotServing as i32,
            "{name:?} during drain"
        );
    }
    // Still answering real calls while load balancers catch up.
    let mut client = AuthServiceClient::new(channel(server.address).await);
    let token = bearer(&key, &claims(uuid::Uuid::new_v4(), Role::Viewer));
    client
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &token)],
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
