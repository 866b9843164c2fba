//! Load client of `bench/gateway.sh`, against a running `trellis up`: one
//! authenticated unary RPC (CheckSession, as bench/auth_overhead.sh uses) direct to Auth over gRPC and through the
//! gateway over gRPC-web (HTTP/1.1, the browser's protocol) in the same
//! run, every status checked; then one WatchExecutions stream direct and one
//! through the gateway, both seeing the same events: the extra delay of the
//! gateway per event.
//!
//! ```text
//! gateway_bench <auth_url> <execution_url> <gateway_url> <seconds> <concurrency> <events>
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{CheckSessionRequest, SignUpRequest};
use trellis::execution::v1 as exec;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;

fn fail(message: &str) -> ! {
    eprintln!("gateway_bench: {message}");
    std::process::exit(1)
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap_or_else(|e| fail(&format!("url {url:?}: {e}")))
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}: {e}")))
}

type WebService = tonic_web::GrpcWebClientService<
    Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

/// A gRPC-web client over a pool of HTTP/1.1 connections, as a browser has.
fn web_channel() -> WebService {
    // Browsers send without Nagle's delay too.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(client)
}

struct Figures {
    calls: u64,
    errors: u64,
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `concurrency` loops calling `call` for `seconds`; every answer checked.
async fn drive<F, Fut>(seconds: u64, concurrency: usize, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, errors) = (call.clone(), errors.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let begun = Instant::now();
                if !call().await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(begun.elapsed().as_micros() as u64);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap_or_else(|e| fail(&format!("a load task: {e}"))));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        calls: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        per_second: latencies.len() as f64 / elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

fn report(label: &str, figures: &Figures) {
    println!(
        "{label:<30} {:>8.0} calls/s  p50 {:>6} us  p99 {:>6} us  ({} calls, {} errors)",
        figures.per_second, figures.p50_us, figures.p99_us, figures.calls, figures.errors
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        fail(
            "usage: gateway_bench <auth_url> <execution_url> <gateway_url> <seconds> <concurrency> <events>",
        );
    }
    let (auth_url, execution_url, gateway_url) = (&args[1], &args[2], &args[3]);
    let seconds: u64 = args[4].parse().unwrap_or_else(|_| fail("seconds"));
    let concurrency: usize = args[5].parse().unwrap_or_else(|_| fail("concurrency"));
    let events: usize = args[6].parse().unwrap_or_else(|_| fail("events"));

    let direct = connect(auth_url).await;
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let token = AuthServiceClient::new(direct.clone())
        .sign_up(SignUpRequest {
            email: format!("bench.{unique}@example.com"),
            password: "Correct-Horse-9".into(),
            name: "Bench".into(),
            organization_name: format!("Gateway bench {unique}"),
        })
        .await
        .unwrap_or_else(|s| fail(&format!("sign up: {s}")))
        .into_inner()
        .access_token;
    let token = Arc::<str>::from(token);
    let origin: http::Uri = gateway_url.parse().unwrap_or_else(|_| fail("gateway url"));

    let direct_call = {
        let (channel, token) = (direct.clone(), token.clone());
        move || {
            let (channel, token) = (channel.clone(), token.clone());
            async move {
                AuthServiceClient::new(channel)
                    .check_session(authed(CheckSessionRequest {}, &token))
                    .await
                    .is_ok_and(|answer| answer.into_inner().live)
            }
        }
    };
    let web = web_channel();
    let web_call = {
        let (web, token, origin) = (web.clone(), token.clone(), origin.clone());
        move || {
            let (web, token, origin) = (web.clone(), token.clone(), origin.clone());
            async move {
                AuthServiceClient::with_origin(web, origin)
                    .check_session(authed(CheckSessionRequest {}, &token))
                    .await
                    .is_ok_and(|answer| answer.into_inner().live)
            }
        }
    };
    // Warm both paths (connections, caches) before measuring.
    drive(1, concurrency, direct_call.clone()).await;
    drive(1, concurrency, web_call.clone()).await;
    let bare = drive(seconds, concurrency, direct_call).await;
    let through = drive(seconds, concurrency, web_call).await;
    report("CheckSession direct (gRPC)", &bare);
    report("CheckSession gateway (gRPC-web)", &through);
    if bare.errors + through.errors > 0 {
        fail("calls failed");
    }
    println!(
        "ratio: gateway {:.2}x direct (goal >= 0.60x)",
        through.per_second / bare.per_second
    );

    // Streams: the same organization's events, direct and through the
    // gateway; each event's arrival on both is compared.
    let watch = exec::WatchExecutionsRequest::default();
    let mut direct_stream = ExecutionServiceClient::new(connect(execution_url).await)
        .watch_executions(authed(watch.clone(), &token))
        .await
        .unwrap_or_else(|s| fail(&format!("watch direct: {s}")))
        .into_inner();
    let mut web_stream = ExecutionServiceClient::with_origin(web_channel(), origin)
        .watch_executions(authed(watch, &token))
        .await
        .unwrap_or_else(|s| fail(&format!("watch through the gateway: {s}")))
        .into_inner();
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(bool, i64, Instant)>();
    let tx = arrivals_tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(answer)) = direct_stream.message().await {
            let id = answer.event.map_or(0, |e| e.event_id);
            let _ = tx.send((false, id, Instant::now()));
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(answer)) = web_stream.message().await {
            let id = answer.event.map_or(0, |e| e.event_id);
            let _ = arrivals_tx.send((true, id, Instant::now()));
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut executions = ExecutionServiceClient::new(connect(execution_url).await);
    // A create and a cancel each make an event: half as many executions
    // as events, within the free plan's month.
    for n in 0..events.div_ceil(2) {
        let created = executions
            .create_execution(authed(
                exec::CreateExecutionRequest {
                    queue: "gateway-bench".into(),
                    image: "bench".into(),
                    idempotency_key: format!("bench-{unique}-{n}"),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_or_else(|s| fail(&format!("create: {s}")))
            .into_inner()
            .execution
            .unwrap_or_else(|| fail("create answered no execution"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        executions
            .cancel_execution(authed(
                exec::CancelExecutionRequest {
                    execution_id: created.execution_id,
                },
                &token,
            ))
            .await
            .unwrap_or_else(|s| fail(&format!("cancel: {s}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = events.div_ceil(2) * 2;
    let mut seen: std::collections::HashMap<i64, (Option<Instant>, Option<Instant>)> =
        std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen
        .values()
        .filter(|(d, w)| d.is_some() && w.is_some())
        .count()
        < events
    {
        let Ok(Some((through_gateway, id, at))) =
            tokio::time::timeout_at(deadline, arrivals.recv()).await
        else {
            fail("not every event arrived on both streams within 10 s");
        };
        let entry = seen.entry(id).or_default();
        if through_gateway {
            entry.1 = Some(at);
        } else {
            entry.0 = Some(at);
        }
    }
    let mut extra: Vec<i64> = seen
        .values()
        .filter_map(|(d, w)| {
            Some(
                w.as_ref()?
                    .saturating_duration_since(*d.as_ref()?)
                    .as_micros() as i64,
            )
        })
        .collect();
    extra.sort_unstable();
    let at = |q: f64| extra[((extra.len() as f64 * q) as usize).min(extra.len() - 1)];
    println!(
        "stream: {} events on both; through the gateway later than direct by p50 {} us, p99 {} us, max {} us (goal p99 <= 50 ms)",
        extra.len(),
        at(0.50),
        at(0.99),
        extra[extra.len() - 1]
    );
}
