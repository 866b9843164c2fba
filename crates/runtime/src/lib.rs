//! One way to start any Trellis server: typed configuration, the shared
//! server stack, health, reflection, limits, telemetry and graceful shutdown.
#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod config;
mod error;
pub mod metrics;
mod serve;
mod server;
mod shutdown;
mod stream;
mod tasks;
mod telemetry;
pub mod time;
pub mod tls;
mod upstreams;

pub use access_log::{AccessLog, AccessLogLayer};
pub use admin::Admin;
pub use config::{ConfigError, JwtArgs, LogFormat, ServerLimits, TelemetryArgs, parse_duration};
pub use error::{ServiceError, grpc_result, status_of};
pub use serve::{ServeError, ServiceSet, serve};
pub use server::{RedisKeyspace, Server, ServerContext, SetupError};
pub use shutdown::{Shutdown, ShutdownTrigger, wait_for_signal};
pub use stream::{StreamSender, TaskStream, spawn_stream};
pub use tasks::TaskError;
pub use telemetry::{Telemetry, init_tracing, init_tracing_with_exporter};
pub use tls::{ClientTls, ServerTls, TlsArgs};
pub use upstreams::{UpstreamTarget, Upstreams};
