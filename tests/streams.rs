//! Server streams through the real stack: a test Execution service streams
//! (WatchExecutions: an event every 50 ms; StreamLogs: 1 KiB lines as fast
//! as they are read), and the stream rules end its streams when the token
//! expires, the session ends, the caller's deadline passes or the server
//! shuts down, cap them per organization, and a slow reader holds the
//! producer back. `--request-timeout` does not cut them.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{LogoutRequest, SignUpRequest};
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis::execution::v1::execution_service_server::{ExecutionService, ExecutionServiceServer};
use trellis::execution::v1::{
    ExecutionEvent, LogLine, StreamLogsRequest, StreamLogsResponse, WatchExecutionsRequest,
    WatchExecutionsResponse,
};
use trellis_cli::ServiceName;
use trellis_runtime::{ServerLimits, ServiceSet};
use trellis_tenancy::{
    AccessClaims, AuthServiceJwks, AuthSessionCheck, BoxFuture, JwksCache, Principal, Role,
    SessionCheck, SessionGuard, SessionState, SigningKey, TokenVerifier, VerifierConfig,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams forever; counts the log lines it has made.
#[derive(Clone, Default)]
struct Streaming {
    lines_made: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl ExecutionService for Streaming {
    async fn watch_executions(
        &self,
        _: tonic::Request<WatchExecutionsRequest>,
    ) -> Result<tonic::Response<BoxStream<WatchExecutionsResponse>>, Status> {
        let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
            Duration::from_millis(50),
        ));
        let mut event_id = 0;
        let events = ticks.map(move |_| {
            event_id += 1;
            Ok(WatchExecutionsResponse {
                event: Some(ExecutionEvent {
                    event_id,
                    ..Default::default()
                }),
            })
        });
        Ok(tonic::Response::new(Box::pin(events)))
    }

    async fn stream_logs(
        &self,
        _: tonic::Request<StreamLogsRequest>,
    ) -> Result<tonic::Response<BoxStream<StreamLogsResponse>>, Status> {
        let made = self.lines_made.clone();
        let lines = tokio_stream::iter(0..).map(move |sequence| {
            made.fetch_add(1, Ordering::SeqCst);
            Ok(StreamLogsResponse {
                lines: vec![LogLine {
                    sequence,
                    line: "x".repeat(1024),
                    ..Default::default()
                }],
            })
        });
        Ok(tonic::Response::new(Box::pin(lines)))
    }
}

/// The streaming service behind the real stack, with a key of its own
/// and no clock-skew leeway, so a token's stream ends at its `exp`.
async fn streaming_server(service: Streaming, limits: ServerLimits) -> (SigningKey, TestServer) {
    let key = SigningKey::generate("key-a");
    let verifier = verifier_with_leeway(&key, 0).await;
    let server = spawn_server(streaming_set(service), verifier, limits).await;
    (key, server)
}

async fn stop(server: TestServer) {
    server.trigger.trigger();
    server.task.await.unwrap().unwrap();
}

fn token(key: &SigningKey, org: uuid::Uuid, lifetime_secs: i64) -> String {
    let claims = AccessClaims {
        exp: now() + lifetime_secs,
        ..claims(org, Role::Viewer)
    };
    key.sign(&claims).unwrap()
}

/// Says every session is live, counting the questions.
#[derive(Default)]
struct CountingCheck(AtomicU64);

impl SessionCheck for CountingCheck {
    fn check(
        &self,
        _: &Principal,
        _: http::HeaderValue,
    ) -> BoxFuture<Result<SessionState, Status>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(SessionState::Live(None))
        })
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        // Shorter than every stream below lives.
        request_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(10),
        ..ServerLimits::default()
    }
}

fn streaming_set(service: Streaming) -> ServiceSet {
    ServiceSet::new("streams").add_service(ExecutionServiceServer::new(service))
}

async fn watch(
    client: &mut ExecutionServiceClient<Channel>,
    token: &str,
) -> Result<tonic::Streaming<WatchExecutionsResponse>, Status> {
    client
        .watch_executions(authed(WatchExecutionsRequest::default(), token))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads until the stream ends: how many events came, and its status.
async fn drain(stream: &mut tonic::Streaming<WatchExecutionsResponse>) -> (usize, Status) {
    let mut events = 0;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(give_up, stream.message()).await {
            Ok(Ok(Some(_))) => events += 1,
            Ok(Ok(None)) => return (events, Status::ok("ended without an error")),
            Ok(Err(status)) => return (events, status),
            Err(_) => panic!("the stream did not end within 15 s ({events} events)"),
        }
    }
}

#[tokio::test]
async fn a_stream_outlives_the_request_timeout_and_ends_when_its_token_expires() {
    let (key, server) = streaming_server(Streaming::default(), limits()).await;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let opened = Instant::now();
    let mut stream = watch(&mut client, &token(&key, uuid::Uuid::new_v4(), 3))
        .await
        .unwrap();
    let (events, status) = drain(&mut stream).await;
    let lived = opened.elapsed();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    // exp is whole seconds: 2 to 3 s from now, well past the 1 s timeout.
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(4)).contains(&lived),
        "ended after {lived:?}"
    );
    assert!(events >= 30, "{events} events in {lived:?}");
    stop(server).await;
}

#[tokio::test]
async fn a_stream_ends_at_its_callers_deadline() {
    let (key, server) = streaming_server(Streaming::default(), limits()).await;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let mut request = authed(
        WatchExecutionsRequest::default(),
        &token(&key, uuid::Uuid::new_v4(), 600),
    );
    request.set_timeout(Duration::from_millis(1500));
    let opened = Instant::now();
    let mut stream = client.watch_executions(request).await.unwrap().into_inner();
    let (events, status) = drain(&mut stream).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let lived = opened.elapsed();
    assert!(
        (Duration::from_millis(1400)..Duration::from_secs(3)).contains(&lived),
        "ended after {lived:?}"
    );
    assert!(events >= 20, "{events} events");
    stop(server).await;
}

#[tokio::test]
async fn streams_end_with_unavailable_when_the_drain_ends_and_the_server_stops_promptly() {
    let (key, server) = streaming_server(
        Streaming::default(),
        ServerLimits {
            shutdown_drain: Duration::from_millis(500),
            ..limits()
        },
    )
    .await;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let token = token(&key, uuid::Uuid::new_v4(), 600);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = watch(&mut client, &token).await.unwrap();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    let signalled = Instant::now();
    server.trigger.trigger();
    for mut stream in streams {
        let (events, status) = drain(&mut stream).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("reconnect"), "{status:?}");
        // Served through the drain (0.5 s of 50 ms events), then ended.
        assert!(events >= 5, "{events} events during the drain");
    }
    let ended = signalled.elapsed();
    assert!(
        (Duration::from_millis(450)..Duration::from_millis(1500)).contains(&ended),
        "streams ended {ended:?} after the signal (drain 0.5 s)"
    );
    server.task.await.unwrap().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the server waited for its streams instead of ending them (grace 10 s)"
    );
}

#[tokio::test]
async fn each_organization_holds_at_most_its_cap_of_open_streams() {
    let (key, server) = streaming_server(
        Streaming::default(),
        ServerLimits {
            max_streams_per_org: 3,
            ..limits()
        },
    )
    .await;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let (crowded, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // Two users of one organization share its cap.
    let (ana, bea) = (token(&key, crowded, 600), token(&key, crowded, 600));
    let mut open = Vec::new();
    for token in [&ana, &bea, &ana] {
        let mut stream = watch(&mut client, token).await.unwrap();
        stream.message().await.unwrap().unwrap();
        open.push(stream);
    }
    let refused = watch(&mut client, &bea).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("this organization on this server (at most 3)"),
        "{refused:?}"
    );

    // Another organization is not held back by it.
    let mut theirs = watch(&mut client, &token(&key, other, 600)).await.unwrap();
    theirs.message().await.unwrap().unwrap();
    // Unary calls are not streams: not counted.
    let unary = client
        .get_execution(authed(Default::default(), &ana))
        .await
        .unwrap_err();
    assert_eq!(unary.code(), Code::Unimplemented);

    // Closing one gives its place back (once the server sees the reset).
    drop(open.pop());
    let started = Instant::now();
    loop {
        match watch(&mut client, &bea).await {
            Ok(mut stream) => {
                stream.message().await.unwrap().unwrap();
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(started.elapsed() < Duration::from_secs(3), "never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    stop(server).await;
}

#[tokio::test]
async fn a_slow_reader_holds_the_producer_back() {
    let service = Streaming::default();
    let made = service.lines_made.clone();
    let (key, server) = streaming_server(service, limits()).await;
    // A 64 KiB receive window, as a careful client would set.
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    let mut client = ExecutionServiceClient::new(channel);
    let request = authed(
        StreamLogsRequest::default(),
        &token(&key, uuid::Uuid::new_v4(), 600),
    );
    let mut lines = client.stream_logs(request).await.unwrap().into_inner();
    lines.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let while_stalled = made.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        made.load(Ordering::SeqCst),
        while_stalled,
        "the server went on making lines nobody read"
    );
    // One 64 KiB window of 1 KiB lines, plus one 32 KiB encoder chunk.
    assert!(while_stalled < 200, "{while_stalled} lines made ahead");
    // Reading again lets it go on.
    for _ in 0..500 {
        lines.message().await.unwrap().unwrap();
    }
    assert!(made.load(Ordering::SeqCst) > 500);
    drop(lines);
    stop(server).await;
}

#[tokio::test]
async fn one_user_takes_at_most_its_share_and_public_streams_have_a_pool_of_their_own() {
    let (key, server) = streaming_server(
        Streaming::default(),
        ServerLimits {
            max_streams_per_org: 10,
            max_streams_per_user: 2,
            // Public pool: a tenth, 2.
            max_streams: 20,
            ..limits()
        },
    )
    .await;
    let channel = channel(server.address).await;
    let mut client = ExecutionServiceClient::new(channel.clone());
    let org = uuid::Uuid::new_v4();
    let stalling = token(&key, org, 600);
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(watch(&mut client, &stalling).await.unwrap());
    }
    let refused = watch(&mut client, &stalling).await.unwrap_err();
    assert!(refused.message().contains("this user"), "{refused:?}");
    // A colleague still gets in.
    let mut colleague = watch(&mut client, &token(&key, org, 600)).await.unwrap();
    colleague.message().await.unwrap().unwrap();

    // Anyone can open health watches, without a token: they fill a pool
    // (and a per-address share) of their own.
    let mut health = HealthClient::new(channel);
    let mut watches = Vec::new();
    for _ in 0..2 {
        let mut stream = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        watches.push(stream);
    }
    let refused = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let mut user = watch(&mut client, &token(&key, uuid::Uuid::new_v4(), 600))
        .await
        .unwrap();
    user.message().await.unwrap().unwrap();
    stop(server).await;
}

/// The streams of one session share its checks: one question to Auth per
/// TTL, not one per stream.
#[tokio::test]
async fn streams_of_one_session_share_its_checks() {
    let key = SigningKey::generate("key-a");
    let check = Arc::new(CountingCheck::default());
    let guard = Arc::new(SessionGuard::new(
        check.clone(),
        Duration::from_millis(300),
        Duration::from_secs(60),
        100,
    ));
    let set = streaming_set(Streaming::default()).with_session_guard(Some(guard));
    let server = spawn_server(set, verifier_with_leeway(&key, 0).await, limits()).await;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let token = token(&key, uuid::Uuid::new_v4(), 600);
    let mut open = Vec::new();
    for _ in 0..20 {
        open.push(watch(&mut client, &token).await.unwrap());
    }
    let before = check.0.load(Ordering::SeqCst);
    // Keep them flowing, so each is polled and looks at its session.
    let reading = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            for stream in &mut open {
                stream.message().await.unwrap().unwrap();
            }
        }
        open
    });
    let open = reading.await.unwrap();
    let asked = check.0.load(Ordering::SeqCst) - before;
    // 3 s / 0.3 s = 10 checks for the session, give or take the edges.
    assert!(
        (5..=14).contains(&asked),
        "{asked} checks for 20 streams in 3 s"
    );
    drop(open);
    stop(server).await;
}

/// With real Auth: a logout ends the user's open stream within
/// --session-check-ttl (1 s here) with UNAUTHENTICATED "session ended".
#[tokio::test]
async fn a_stream_ends_when_its_session_ends() {
    let data_dir = temp_dir("streams-session");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, &[]),
    )
    .await
    .unwrap();
    let auth_channel = channel(running.address(ServiceName::Auth).unwrap()).await;
    let jwks = Arc::new(JwksCache::new(
        Arc::new(AuthServiceJwks::new(
            auth_channel.clone(),
            Duration::from_secs(3),
        )),
        Duration::from_secs(10),
    ));
    jwks.refresh().await.unwrap();
    let verifier = Arc::new(TokenVerifier::new(
        jwks,
        VerifierConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_secs: 30,
            max_lifetime_secs: 3600,
            cache_capacity: 100,
        },
    ));
    let guard = Arc::new(SessionGuard::new(
        Arc::new(AuthSessionCheck::new(
            auth_channel.clone(),
            Duration::from_secs(3),
        )),
        Duration::from_secs(1),
        Duration::from_secs(60),
        100,
    ));
    let set = streaming_set(Streaming::default()).with_session_guard(Some(guard));
    let server = spawn_server(set, verifier, limits()).await;

    let mut auth = AuthServiceClient::new(auth_channel);
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let signed_up = auth
        .sign_up(SignUpRequest {
            email: format!("ana.{unique}@example.com"),
            password: "Correct-Horse-9".into(),
            name: "Ana".into(),
            organization_name: format!("Taco Palace {unique}"),
        })
        .await
        .unwrap()
        .into_inner();
    let token = signed_up.access_token;
    let mut client = ExecutionServiceClient::new(channel(server.address).await);
    let mut stream = watch(&mut client, &token).await.unwrap();
    // Alive across several session checks while the session is live.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream.message().await.unwrap().unwrap();

    auth.logout(authed(LogoutRequest {}, &token)).await.unwrap();
    let logged_out = Instant::now();
    let (_, status) = drain(&mut stream).await;
    let noticed = logged_out.elapsed();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "session ended"),
        "{status:?}"
    );
    // Buffered events are read first; the end comes within the TTL.
    assert!(
        noticed < Duration::from_millis(1600),
        "noticed after {noticed:?}"
    );
    let reopened = watch(&mut client, &token).await.unwrap_err();
    assert_eq!(reopened.code(), Code::Unauthenticated);

    server.trigger.trigger();
    server.task.await.unwrap().unwrap();
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
