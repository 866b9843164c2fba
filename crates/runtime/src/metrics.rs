//! Per-RPC metrics in Prometheus text format: calls by final status, a
//! latency histogram and calls (and streams) in flight, per server and
//! method, plus gauges the servers register (database pools, queue depth).
//! The label space is fixed at start (the contract's methods, health and
//! reflection, one `other` for any other path), so no request can grow it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;

/// Upper bounds of the latency buckets, in microseconds (0.5 ms to 10 s).
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Methods every server answers besides the contract's.
const STANDARD_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Any path outside the fixed list, counted under one label.
const OTHER: &str = "other";

/// How long one gauge may take to read at a scrape.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(2);

const CODES: usize = 17;

#[derive(Default)]
struct MethodMetrics {
    /// By gRPC code; index [`CODES`]: ended without a status (client left).
    calls: [AtomicU64; CODES + 1],
    /// Not cumulative here; summed when rendered.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    in_flight: AtomicI64,
}

/// One server's RPC metrics.
pub struct RpcMetrics {
    server: &'static str,
    paths: Vec<&'static str>,
    index: HashMap<&'static str, usize>,
    methods: Vec<MethodMetrics>,
}

impl RpcMetrics {
    fn new(server: &'static str) -> Self {
        let paths: Vec<&'static str> = trellis::METHODS
            .iter()
            .map(|method| method.path)
            .chain(STANDARD_METHODS)
            .chain([OTHER])
            .collect();
        let index = paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let methods = paths.iter().map(|_| MethodMetrics::default()).collect();
        RpcMetrics {
            server,
            paths,
            index,
            methods,
        }
    }

    /// The slot of `path`; unknown paths share the `other` one.
    pub fn method(&self, path: &str) -> usize {
        self.index
            .get(path)
            .copied()
            .unwrap_or(self.paths.len() - 1)
    }

    /// The path a slot counts (`other` for any unknown one).
    pub fn path(&self, method: usize) -> &'static str {
        self.paths[method]
    }

    pub fn started(&self, method: usize) {
        self.methods[method].in_flight.fetch_add(1, Relaxed);
    }

    /// `status` None: the call ended without one (the client went away).
    pub fn finished(&self, method: usize, status: Option<Code>, latency: Duration) {
        let metrics = &self.methods[method];
        metrics.in_flight.fetch_sub(1, Relaxed);
        let code = status.map_or(CODES, |code| (code as usize).min(CODES - 1));
        metrics.calls[code].fetch_add(1, Relaxed);
        let micros = latency.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS_US.len());
        metrics.buckets[bucket].fetch_add(1, Relaxed);
        metrics.latency_sum_us.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut Sections) {
        let server = self.server;
        for (path, metrics) in self.paths.iter().zip(&self.methods) {
            let total: u64 = metrics.calls.iter().map(|c| c.load(Relaxed)).sum();
            let in_flight = metrics.in_flight.load(Relaxed);
            if total == 0 && in_flight == 0 {
                continue;
            }
            let (service, method) = split_path(path);
            let labels = format!("server=\"{server}\",service=\"{service}\",method=\"{method}\"");
            for (code, count) in metrics.calls.iter().enumerate() {
                let count = count.load(Relaxed);
                if count == 0 {
                    continue;
                }
                let code = match code {
                    CODES => "NONE".to_owned(),
                    code => code_name(code as i32).to_owned(),
                };
                out.add(
                    "trellis_rpc_requests_total",
                    "counter",
                    "RPCs finished, by final gRPC status (NONE: the client went away first).",
                    format!("trellis_rpc_requests_total{{{labels},code=\"{code}\"}} {count}"),
                );
            }
            let mut cumulative = 0;
            let mut lines = String::new();
            for (i, count) in metrics.buckets.iter().enumerate() {
                cumulative += count.load(Relaxed);
                let bound = match BUCKETS_US.get(i) {
                    Some(us) => format!("{}", *us as f64 / 1e6),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    lines,
                    "trellis_rpc_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let sum = metrics.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(lines, "trellis_rpc_duration_seconds_sum{{{labels}}} {sum}");
            let _ = write!(
                lines,
                "trellis_rpc_duration_seconds_count{{{labels}}} {cumulative}"
            );
            out.add(
                "trellis_rpc_duration_seconds",
                "histogram",
                "RPC latency, from the request's arrival to its final status (a stream's whole life).",
                lines,
            );
            out.add(
                "trellis_rpc_in_flight",
                "gauge",
                "RPCs in progress: unary calls being answered and server streams open.",
                format!("trellis_rpc_in_flight{{{labels}}} {in_flight}"),
            );
        }
    }
}

/// `/trellis.order.v1.OrderService/PlaceOrder` as its two labels.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((OTHER, OTHER))
}

fn code_name(code: i32) -> &'static str {
    match Code::from_i32(code) {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A gauge read at each scrape; `None` when it cannot be read now.
pub type GaugeReader =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<f64>> + Send>> + Send + Sync>;

struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: String,
    read: GaugeReader,
}

/// Every server's metrics in this process, rendered at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    servers: Mutex<Vec<Arc<RpcMetrics>>>,
    gauges: Mutex<Vec<Arc<Gauge>>>,
}

impl Metrics {
    /// The RPC metrics of the server named `server`, made on first ask.
    pub fn rpc(&self, server: &'static str) -> Arc<RpcMetrics> {
        let mut servers = self.servers.lock().expect("metrics lock");
        if let Some(existing) = servers.iter().find(|m| m.server == server) {
            return existing.clone();
        }
        let metrics = Arc::new(RpcMetrics::new(server));
        servers.push(metrics.clone());
        metrics
    }

    /// A gauge with fixed `labels` (`key="value",...`, already safe).
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: String, read: GaugeReader) {
        self.gauges
            .lock()
            .expect("metrics lock")
            .push(Arc::new(Gauge {
                name,
                help,
                labels,
                read,
            }));
    }

    /// The database pool of `server`: connections open and idle.
    pub fn database_pool(&self, server: &'static str, database: &trellis_store::Database) {
        let backend = database.backend_name();
        for (name, help, idle) in [
            (
                "trellis_db_pool_connections",
                "Database connections open in the pool.",
                false,
            ),
            (
                "trellis_db_pool_idle_connections",
                "Database connections open and idle.",
                true,
            ),
        ] {
            let database = database.clone();
            self.gauge(
                name,
                help,
                format!("server=\"{server}\",backend=\"{backend}\""),
                Arc::new(move || {
                    let (size, free) = database.pool_stats();
                    let value = if idle { free as f64 } else { size as f64 };
                    Box::pin(async move { Some(value) })
                }),
            );
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub async fn render(&self) -> String {
        let mut out = Sections::default();
        let servers = self.servers.lock().expect("metrics lock").clone();
        for server in servers {
            server.render(&mut out);
        }
        let gauges = self.gauges.lock().expect("metrics lock").clone();
        for gauge in gauges {
            let value = tokio::time::timeout(GAUGE_TIMEOUT, (gauge.read)())
                .await
                .ok()
                .flatten();
            if let Some(value) = value {
                out.add(
                    gauge.name,
                    "gauge",
                    gauge.help,
                    format!("{}{{{}}} {value}", gauge.name, gauge.labels),
                );
            }
        }
        out.finish()
    }
}

/// Samples grouped by metric, each group under one HELP and TYPE.
#[derive(Default)]
struct Sections {
    order: Vec<&'static str>,
    by_name: HashMap<&'static str, (&'static str, &'static str, Vec<String>)>,
}

impl Sections {
    fn add(&mut self, name: &'static str, kind: &'static str, help: &'static str, lines: String) {
        let entry = self.by_name.entry(name).or_insert_with(|| {
            self.order.push(name);
            (kind, help, Vec::new())
        });
        entry.2.push(lines);
    }

    fn finish(self) -> String {
        let mut text = String::new();
        for name in self.order {
            let (kind, help, lines) = &self.by_name[name];
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for line in lines {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code_and_unknown_paths_share_one_label() {
        let metrics = Metrics::default();
        let auth = metrics.rpc("auth");
        let login = auth.method("/trellis.auth.v1.AuthService/Login");
        auth.started(login);
        auth.finished(login, Some(Code::Ok), Duration::from_millis(3));
        auth.started(login);
        auth.finished(login, Some(Code::Unauthenticated), Duration::from_secs(20));
        let junk = auth.method("/evil/\"path\n");
        assert_eq!(junk, auth.method("/another/unknown"));
        auth.started(junk);
        let text = metrics.render().await;
        let labels = r#"server="auth",service="trellis.auth.v1.AuthService",method="Login""#;
        assert!(
            text.contains(&format!(
                "trellis_rpc_requests_total{{{labels},code=\"OK\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "trellis_rpc_requests_total{{{labels},code=\"UNAUTHENTICATED\"}} 1"
        )));
        // 3 ms is in the 5 ms bucket; 20 s only in +Inf.
        assert!(text.contains(&format!(
            "trellis_rpc_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 0"
        )));
        assert!(text.contains(&format!(
            "trellis_rpc_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"
        )));
        assert!(text.contains(&format!(
            "trellis_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"
        )));
        assert!(
            text.contains(
                r#"trellis_rpc_in_flight{server="auth",service="other",method="other"} 1"#
            )
        );
        assert!(!text.contains("evil"));
        assert_eq!(text.matches("# TYPE trellis_rpc_requests_total").count(), 1);
    }
}
