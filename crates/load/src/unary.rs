//! The client half of the auth-overhead benchmark: `WhoAmI` as fast as
//! `connections` × `streams` callers can go, with or without a bearer
//! token. Unlike h2load it is a real gRPC client: tonic's HPACK encoder,
//! its framing and its status checks. With `rate`, calls are paced instead
//! (a legitimate client beside an attack, in `bench/hostile.sh`), and each
//! latency counts from the call's planned start, so a stalled server shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use trellis::auth::v1::WhoAmIRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;

#[derive(Clone, Debug, Serialize)]
pub struct UnaryConfig {
    pub url: String,
    #[serde(skip)]
    pub token: Option<String>,
    pub connections: usize,
    pub streams: usize,
    pub requests: u64,
    pub warmup: u64,
    /// Calls per second across all callers; `None`: as fast as they go.
    pub rate: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct UnaryReport {
    pub config: UnaryConfig,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

struct Outcome {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

async fn round(
    clients: &[AuthServiceClient<Channel>],
    streams: usize,
    bearer: &Option<MetadataValue<Ascii>>,
    requests: u64,
    rate: Option<f64>,
) -> (Duration, Outcome) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate.max(0.001)));
    let mut callers = JoinSet::new();
    for client in clients {
        for _ in 0..streams {
            let (mut client, next, bearer) = (client.clone(), next.clone(), bearer.clone());
            callers.spawn(async move {
                let mut outcome = Outcome {
                    latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                    errors: BTreeMap::new(),
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        break;
                    }
                    let mut request = tonic::Request::new(WhoAmIRequest::default());
                    if let Some(bearer) = &bearer {
                        request
                            .metadata_mut()
                            .insert("authorization", bearer.clone());
                    }
                    let began = match interval {
                        Some(interval) => {
                            let planned = started + interval.mul_f64(index as f64);
                            tokio::time::sleep_until(planned.into()).await;
                            planned
                        }
                        None => Instant::now(),
                    };
                    match client.who_am_i(request).await {
                        Ok(_) => outcome
                            .latency
                            .saturating_record(began.elapsed().as_micros() as u64),
                        Err(status) => {
                            *outcome
                                .errors
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1
                        }
                    }
                }
                outcome
            });
        }
    }
    let mut total = Outcome {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        errors: BTreeMap::new(),
    };
    while let Some(done) = callers.join_next().await {
        let done = done.expect("a caller panicked");
        total.latency.add(&done.latency).expect("same bounds");
        for (code, n) in done.errors {
            *total.errors.entry(code).or_default() += n;
        }
    }
    (started.elapsed(), total)
}

pub async fn who_am_i(config: UnaryConfig) -> Result<UnaryReport, String> {
    let bearer = match &config.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token is not ASCII".to_owned())?,
        ),
        None => None,
    };
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let channel = Endpoint::from_shared(config.url.clone())
            .map_err(|e| format!("url {:?}: {e}", config.url))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", config.url))?;
        clients.push(AuthServiceClient::new(channel));
    }
    round(
        &clients,
        config.streams,
        &bearer,
        config.warmup,
        config.rate,
    )
    .await;
    let (elapsed, outcome) = round(
        &clients,
        config.streams,
        &bearer,
        config.requests,
        config.rate,
    )
    .await;
    let ok = outcome.latency.len();
    Ok(UnaryReport {
        ok,
        errors: outcome.errors,
        seconds: elapsed.as_secs_f64(),
        requests_per_second: ok as f64 / elapsed.as_secs_f64(),
        p50_us: outcome.latency.value_at_quantile(0.5),
        p99_us: outcome.latency.value_at_quantile(0.99),
        max_us: outcome.latency.max(),
        config,
    })
}
