//! What a kind of server (Auth, Session, ...) declares so that one binary can
//! start it: its flags, its tables and how it builds its services. The CLI
//! keeps one table of these; everything else about a service's wiring lives
//! in the service's own crate (restate's `LogServerService::create` is the
//! model: the node decides whether a role is on, the role builds itself).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use trellis_store::{Counters, Database, FanOut, RedisPool, ServiceMigrations, StoreError};

use crate::config::{ConfigError, JwtArgs, ServerLimits};
use crate::serve::ServiceSet;
use crate::upstreams::Upstreams;
#[cfg(doc)]
use trellis_tenancy::SessionGuard;

/// One kind of Trellis server.
pub trait Server {
    /// The name operators type (`trellis serve auth`) and logs show.
    const NAME: &'static str;
    /// This server's tables, applied by `migrate` and at start.
    const MIGRATIONS: ServiceMigrations;
    /// This server's own flags, flattened into `serve` and `up`. Their ids
    /// must not clash with another server's: prefix them with the name
    /// (`--auth-addr`).
    type Args: clap::Args + clap::FromArgMatches + Clone + std::fmt::Debug;
    /// Whether this server decides itself whether a login session is live
    /// (Auth, which owns them). Every other server gets the process's
    /// [`SessionGuard`] in front of its handlers, from whoever starts it,
    /// so no server can forget it.
    const ANSWERS_SESSION_CHECKS: bool = false;
    /// Whether it answers HTTP itself ([`ServiceSet::http`], the gateway)
    /// rather than serving gRPC services with health and reflection.
    const HTTP_FRONT: bool = false;

    /// Where it listens (`--<name>-addr`).
    fn listen_address(args: &Self::Args) -> SocketAddr;

    /// Where the other servers reach it (`--<name>-url`); unset, the
    /// process's own address when it runs this server, else its listen
    /// address.
    fn upstream_url(args: &Self::Args) -> Option<&str>;

    /// Refuses flags that cannot work, before anything binds or connects.
    fn validate(_args: &Self::Args, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Builds the services this server exposes.
    fn create(
        args: &Self::Args,
        context: ServerContext,
    ) -> impl Future<Output = Result<ServiceSet, SetupError>> + Send;
}

/// What the process gives every server it starts.
pub struct ServerContext {
    pub limits: ServerLimits,
    pub jwt: JwtArgs,
    /// Where embedded data lives (SQLite files, generated keys).
    pub data_dir: PathBuf,
    /// This server's own database, migrated unless told not to.
    pub database: Database,
    /// Rate-limit counters shared by the servers of this process: Redis
    /// when configured (shared by every replica), else memory.
    pub counters: Arc<dyn Counters>,
    /// Clients to every server, on behalf of the caller or as this service.
    pub upstreams: Upstreams,
    /// The process's Redis (`--redis-url`), for servers that keep state
    /// there in production.
    pub redis: Option<RedisKeyspace>,
    /// Wake-ups across replicas (watch streams): Redis pub/sub with
    /// `--redis-url`, else PostgreSQL LISTEN/NOTIFY on PostgreSQL, else
    /// this process.
    pub fanout: Arc<dyn FanOut>,
    /// The process's token verifier (one JWKS cache, one verified-token
    /// cache), for a server that looks at tokens before the stack does
    /// (the gateway's per-organization limits).
    pub verifier: Arc<trellis_tenancy::TokenVerifier>,
    /// The process's metrics, for a server's own gauges (queue depth).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A Redis pool and the prefix every key of this deployment starts with.
#[derive(Clone)]
pub struct RedisKeyspace {
    pub pool: RedisPool,
    pub key_prefix: String,
}

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else the server needs and could not get (its keys, a
    /// thread), said in the server's own words.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl SetupError {
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SetupError::Other(Box::new(error))
    }
}
