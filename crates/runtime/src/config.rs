use std::time::Duration;

use trellis_tenancy::{MAX_LEEWAY_SECS, StreamLimits, TrustedProxies, VerifierConfig};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} must be {rule}, got {value}")]
    OutOfRange {
        name: &'static str,
        rule: &'static str,
        value: String,
    },
    #[error("{name} must not be empty")]
    Empty { name: &'static str },
    /// Settings that are each fine but cannot work together.
    #[error("{0}")]
    Invalid(String),
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 30s, 5m, 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(amount)),
        "" | "s" => Ok(Duration::from_secs(amount)),
        "m" => Ok(Duration::from_secs(amount * 60)),
        "h" => Ok(Duration::from_secs(amount * 3600)),
        _ => Err(format!(
            "invalid duration unit {unit:?} in {text:?}: use ms, s, m or h"
        )),
    }
}

fn check(
    name: &'static str,
    ok: bool,
    rule: &'static str,
    value: impl std::fmt::Debug,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name,
            rule,
            value: format!("{value:?}"),
        })
    }
}

/// Limits every server enforces. Explicit, so an overload degrades into
/// clear statuses instead of unbounded memory or latency.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerLimits {
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRELLIS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests handled at once per server, across connections; more wait.
    #[arg(long, env = "TRELLIS_CONCURRENCY_LIMIT", default_value_t = 1024)]
    pub concurrency_limit: usize,
    /// HTTP/2 streams one connection may open at once.
    #[arg(long, env = "TRELLIS_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// Upper bound for a unary call, and for a stream's first response; a
    /// shorter client `grpc-timeout` wins. An open stream is not cut by it
    /// (only by its caller's own deadline, token, session or shutdown).
    #[arg(long, env = "TRELLIS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Server streams one organization (or worker account) may hold open on
    /// this server; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRELLIS_MAX_STREAMS_PER_ORG", default_value_t = 100)]
    pub max_streams_per_org: usize,
    /// Of those, what one user may hold; also what one client address may
    /// hold of public streams (health Watch, reflection).
    #[arg(long, env = "TRELLIS_MAX_STREAMS_PER_USER", default_value_t = 20)]
    pub max_streams_per_user: usize,
    /// Authenticated server streams open on this server from all callers
    /// together; public streams have a pool of a tenth of this beside it.
    #[arg(long, env = "TRELLIS_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// HTTP/2 PING interval that finds dead peers.
    #[arg(long, env = "TRELLIS_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "TRELLIS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// After SIGTERM, how long health reports NOT_SERVING while still serving,
    /// so load balancers stop routing here first.
    #[arg(long, env = "TRELLIS_SHUTDOWN_DRAIN", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,
    /// After the drain, how long in-flight calls may take before the process
    /// exits anyway.
    #[arg(long, env = "TRELLIS_SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose
    /// `x-forwarded-for` names the real client: the gateway's and the
    /// ingress's own addresses or subnet, never a range where other
    /// workloads run. Empty: the TCP peer is the client, the header ignored.
    #[arg(long, env = "TRELLIS_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: 4 * 1024 * 1024,
            concurrency_limit: 1024,
            max_concurrent_streams: 256,
            request_timeout: Duration::from_secs(30),
            max_streams_per_org: 100,
            max_streams_per_user: 20,
            max_streams: 10_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_drain: Duration::ZERO,
            shutdown_grace: Duration::from_secs(15),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl ServerLimits {
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            per_org: self.max_streams_per_org,
            per_user: self.max_streams_per_user,
            total: self.max_streams,
            public_total: (self.max_streams / 10).max(1),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "max-message-bytes",
            (1024..=64 * 1024 * 1024).contains(&self.max_message_bytes),
            "between 1 KiB and 64 MiB",
            self.max_message_bytes,
        )?;
        check(
            "concurrency-limit",
            (1..=1_000_000).contains(&self.concurrency_limit),
            "between 1 and 1000000",
            self.concurrency_limit,
        )?;
        check(
            "max-concurrent-streams",
            self.max_concurrent_streams >= 1,
            "at least 1",
            self.max_concurrent_streams,
        )?;
        check(
            "request-timeout",
            !self.request_timeout.is_zero(),
            "greater than zero",
            self.request_timeout,
        )?;
        // Each cap stands on its own: one above another is simply never
        // the one that refuses.
        for (name, value) in [
            ("max-streams", self.max_streams),
            ("max-streams-per-org", self.max_streams_per_org),
            ("max-streams-per-user", self.max_streams_per_user),
        ] {
            check(
                name,
                (1..=1_000_000).contains(&value),
                "between 1 and 1000000",
                value,
            )?;
        }
        check(
            "keepalive-interval",
            self.keepalive_interval >= Duration::from_secs(1),
            "at least 1s",
            self.keepalive_interval,
        )?;
        check(
            "keepalive-timeout",
            !self.keepalive_timeout.is_zero(),
            "greater than zero",
            self.keepalive_timeout,
        )?;
        check(
            "shutdown-grace",
            self.shutdown_grace <= Duration::from_secs(600),
            "at most 10m",
            self.shutdown_grace,
        )
    }
}

/// How access tokens are checked by every server.
#[derive(clap::Args, Clone, Debug)]
pub struct JwtArgs {
    /// Expected `iss` of access tokens.
    #[arg(long, env = "TRELLIS_JWT_ISSUER", default_value = "trellis")]
    pub jwt_issuer: String,
    /// Expected `aud` of access tokens.
    #[arg(long, env = "TRELLIS_JWT_AUDIENCE", default_value = "trellis")]
    pub jwt_audience: String,
    /// Clock skew tolerated on `exp`/`nbf`; at most 30s.
    #[arg(long, env = "TRELLIS_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// How often the JWKS is fetched from Auth in the background.
    #[arg(long, env = "TRELLIS_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwks_refresh: Duration,
    /// Least time between two on-demand JWKS fetches (unknown `kid`).
    #[arg(long, env = "TRELLIS_JWKS_MIN_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub jwks_min_refresh: Duration,
    /// Longest lifetime (`exp - iat`) of a token accepted; at least the
    /// access-token TTL.
    #[arg(long, env = "TRELLIS_JWT_MAX_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,
    /// Verified tokens remembered per server.
    #[arg(long, env = "TRELLIS_TOKEN_CACHE", default_value_t = 100_000)]
    pub token_cache: usize,
}

impl Default for JwtArgs {
    fn default() -> Self {
        JwtArgs {
            jwt_issuer: "trellis".into(),
            jwt_audience: "trellis".into(),
            jwt_leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            jwt_max_lifetime: Duration::from_secs(3600),
            token_cache: 100_000,
        }
    }
}

impl JwtArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_issuer.trim().is_empty() {
            return Err(ConfigError::Empty { name: "jwt-issuer" });
        }
        if self.jwt_audience.trim().is_empty() {
            return Err(ConfigError::Empty {
                name: "jwt-audience",
            });
        }
        check(
            "jwt-leeway",
            self.jwt_leeway <= Duration::from_secs(MAX_LEEWAY_SECS),
            "at most 30s",
            self.jwt_leeway,
        )?;
        check(
            "jwks-refresh",
            self.jwks_refresh >= Duration::from_secs(1),
            "at least 1s",
            self.jwks_refresh,
        )?;
        check(
            "jwt-max-lifetime",
            (Duration::from_secs(60)..=Duration::from_secs(24 * 3600))
                .contains(&self.jwt_max_lifetime),
            "between 1m and 24h",
            self.jwt_max_lifetime,
        )?;
        check(
            "token-cache",
            (1..=10_000_000).contains(&self.token_cache),
            "between 1 and 10000000",
            self.token_cache,
        )
    }

    pub fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway.as_secs(),
            max_lifetime_secs: self.jwt_max_lifetime.as_secs(),
            cache_capacity: self.token_cache,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info,trellis_tenancy=debug`.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    pub log: String,
    /// Share of new traces exported (0 to 1) when OTEL_EXPORTER_OTLP_ENDPOINT
    /// is set; a caller's sampled `traceparent` is always followed.
    #[arg(long, env = "TRELLIS_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        TelemetryArgs {
            log_format: LogFormat::Human,
            log: "info".into(),
            trace_sample_ratio: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ServerLimits::default().validate().unwrap();
        JwtArgs::default().validate().unwrap();
        let too_lenient = JwtArgs {
            jwt_leeway: Duration::from_secs(120),
            ..JwtArgs::default()
        };
        let error = too_lenient.validate().unwrap_err().to_string();
        assert!(error.contains("jwt-leeway must be at most 30s"), "{error}");
        let tiny = ServerLimits {
            max_message_bytes: 10,
            ..ServerLimits::default()
        };
        assert!(
            tiny.validate()
                .unwrap_err()
                .to_string()
                .contains("max-message-bytes")
        );
    }
}
