//! Session server: `trellis.session.v1.SessionService` (users' LOGIN and
//! WORK sessions) and the internal `LoginSessionService` through which Auth
//! opens, checks and ends login sessions.
//!
//! Laid out as Auth is: `grpc` (tonic adapters), `api` (handlers), `error`
//! (the one error enum and its statuses), [`sessions`] (what a new session
//! is made of, metadata bounds) and [`store`] (one trait; SQL and Redis).
#![forbid(unsafe_code)]

mod api;
mod error;
mod grpc;
pub mod sessions;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trellis::session::v1::login_session_service_server::LoginSessionServiceServer;
use trellis::session::v1::session_service_server::SessionServiceServer;
use trellis_runtime::{
    ConfigError, JwtArgs, RedisKeyspace, Server, ServerContext, ServiceSet, SetupError, Shutdown,
    TaskError, parse_duration,
};
use trellis_store::{Database, ServiceMigrations};

pub use api::{ACTIVE_WINDOW, MAX_LOGIN_SESSIONS_PER_USER, MAX_WORK_SESSIONS_PER_USER};
pub use error::SessionServiceError;
pub use sessions::Lifetimes;
pub use sessions::imported_login_session;
pub use store::{MIGRATIONS, RedisSessions, SessionStore, SqlSessions};

/// Session's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct SessionArgs {
    /// Listen address of the Session server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_SESSION_ADDR", default_value = "127.0.0.1:50052")]
    pub session_addr: SocketAddr,
    /// Where the other servers reach the Session server; unset = this
    /// process's own when it runs one, else --session-addr.
    #[arg(long, env = "TRELLIS_SESSION_URL")]
    pub session_url: Option<String>,
    /// A session ends this long after its last use (sliding; uses are
    /// written back at most once a minute).
    #[arg(long, env = "TRELLIS_SESSION_IDLE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub session_idle_ttl: Duration,
    /// A session ends this long after it was opened, however active.
    #[arg(long, env = "TRELLIS_SESSION_ABSOLUTE_TTL", default_value = "720h", value_parser = parse_duration)]
    pub session_absolute_ttl: Duration,
    /// How often expired sessions are deleted from the SQL store (Redis
    /// expires its own).
    #[arg(long, env = "TRELLIS_SESSION_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub session_sweep_interval: Duration,
}

impl SessionArgs {
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            idle: self.session_idle_ttl,
            absolute: self.session_absolute_ttl,
        }
    }
}

/// Where sessions live: Redis when the process has it, else `database`.
pub fn open_store(redis: Option<&RedisKeyspace>, database: Database) -> Arc<dyn SessionStore> {
    match redis {
        Some(redis) => Arc::new(RedisSessions::new(redis.pool.clone(), &redis.key_prefix)),
        None => Arc::new(SqlSessions::new(database)),
    }
}

/// Expired sessions removed per sweep statement, so no sweep holds the
/// write lock for long.
const SWEEP_BATCH: i64 = 1000;

/// The Session server as `trellis serve session` starts it.
pub struct SessionServer;

impl Server for SessionServer {
    const NAME: &'static str = "session";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = SessionArgs;

    fn listen_address(args: &SessionArgs) -> SocketAddr {
        args.session_addr
    }

    fn upstream_url(args: &SessionArgs) -> Option<&str> {
        args.session_url.as_deref()
    }

    fn validate(args: &SessionArgs, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        let second = Duration::from_secs(1);
        if args.session_idle_ttl < second || args.session_absolute_ttl < second {
            return Err(ConfigError::Invalid(
                "session-idle-ttl and session-absolute-ttl must be at least 1s".into(),
            ));
        }
        if args.session_idle_ttl > args.session_absolute_ttl {
            return Err(ConfigError::Invalid(format!(
                "session-idle-ttl ({}s) must not exceed session-absolute-ttl ({}s)",
                args.session_idle_ttl.as_secs(),
                args.session_absolute_ttl.as_secs()
            )));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&args.session_sweep_interval)
        {
            return Err(ConfigError::Invalid(
                "session-sweep-interval must be between 100ms and 1h".into(),
            ));
        }
        Ok(())
    }

    /// Redis when the process has it (`--redis-url`), else this server's
    /// SQL database.
    async fn create(args: &SessionArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let store = open_store(context.redis.as_ref(), context.database.clone());
        let max_message_bytes = context.limits.max_message_bytes;
        let api = grpc::GrpcAdapter(Arc::new(api::SessionApi {
            store: store.clone(),
            lifetimes: args.lifetimes(),
        }));
        let mut set = ServiceSet::new(Self::NAME)
            .add_service(
                SessionServiceServer::new(api.clone()).max_decoding_message_size(max_message_bytes),
            )
            .add_service(
                LoginSessionServiceServer::new(api).max_decoding_message_size(max_message_bytes),
            );
        if !store.expires_entries_itself() {
            let interval = args.session_sweep_interval;
            set = set.with_background_task("session-sweeper", move |shutdown| {
                sweep(store, interval, shutdown)
            });
        }
        Ok(set)
    }
}

/// Deletes expired sessions every `interval` until shutdown. A failed sweep
/// (database briefly away) is logged and retried next round: expired
/// sessions are already refused on read, sweeping only reclaims space.
async fn sweep(
    store: Arc<dyn SessionStore>,
    interval: Duration,
    mut shutdown: Shutdown,
) -> Result<(), TaskError> {
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        loop {
            match store
                .sweep_expired(trellis_runtime::time::now_ms(), SWEEP_BATCH)
                .await
            {
                Ok(removed) if removed == SWEEP_BATCH as u64 => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "sweeping expired sessions failed; retrying next round");
                    break;
                }
            }
        }
    }
}
