//! The `trellis` command: `up`, `serve <service>...`, `migrate`, `keys`,
//! `service-accounts`, `worker`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use trellis_auth::service_accounts::{self, ServiceAccountError, ServiceAccounts, ServiceScope};
use trellis_auth::{KeyStore, KeyStoreError};
use trellis_runtime::{
    Admin, ClientTls, ConfigError, JwtArgs, RedisKeyspace, ServerContext, ServerLimits, ServerTls,
    SetupError, Shutdown, ShutdownTrigger, TelemetryArgs, TlsArgs, UpstreamTarget, Upstreams,
};
use trellis_store::{
    Counters, Database, DatabaseOptions, FanOut, MemoryCounters, MemoryFanOut, PgFanOut,
    RedisCounters, RedisFanOut, StoreError,
};
use trellis_tenancy::{
    AuthServiceJwks, AuthSessionCheck, JwksCache, ServiceCredentials, ServiceTokens, SessionGuard,
    TokenVerifier,
};

mod servers;
pub mod worker;

pub use servers::{ServerArgs, ServiceName};

#[derive(Parser, Debug)]
#[command(
    name = "trellis",
    version,
    about = "Multi-tenant gRPC backend: auth, sessions, carts, orders, executions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start every server in one process, each on its own port: by
    /// default on the embedded backends (SQLite under the data dir,
    /// in-memory counters), or on --database-url / --redis-url.
    Up(ServeArgs),
    /// Start the named servers with the configured backends.
    Serve {
        /// Servers to start.
        #[arg(required = true, value_enum)]
        services: Vec<ServiceName>,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Apply every service's database migrations, then exit.
    Migrate(StorageArgs),
    /// Manage Auth's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage service accounts: the identities of workers and of Trellis's
    /// own servers (client credentials for IssueServiceToken).
    #[command(subcommand)]
    ServiceAccounts(ServiceAccountsCommand),
    /// Run executions of the named queues with a worker account: each
    /// execution's command, if --allow names its program (nothing runs by
    /// default), with its output as log lines.
    Worker(worker::WorkerArgs),
}

#[derive(Subcommand, Debug)]
pub enum ServiceAccountsCommand {
    /// Make an account; prints {"client_id", "client_secret"} as one JSON
    /// object. The secret is shown this once and stored only as a hash.
    Create {
        /// A name to tell it apart in `list` (letters, digits, - _ .).
        name: String,
        #[arg(long, value_enum)]
        scope: AccountScope,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Make the account named by --client-id with a secret chosen elsewhere
    /// (TRELLIS_REGISTER_CLIENT_SECRET), e.g. from the same Secret the
    /// servers read; again with the same credentials: nothing changes.
    Register {
        /// A name to tell it apart in `list` (letters, digits, - _ .).
        name: String,
        #[arg(long, value_enum)]
        scope: AccountScope,
        /// The account's id: a UUID (e.g. from /proc/sys/kernel/random/uuid).
        #[arg(long, env = "TRELLIS_REGISTER_CLIENT_ID")]
        client_id: String,
        /// 32 to 256 printable characters, at least 12 different (e.g.
        /// `openssl rand -hex 32`); prefer the variable to the flag.
        #[arg(long, env = "TRELLIS_REGISTER_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Secret,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Every account, revoked ones included.
    List(StorageArgs),
    /// End an account: its tokens stop working on every server within
    /// --session-check-ttl.
    Revoke {
        client_id: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// What an account's tokens may call.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountScope {
    /// WorkerService: leasing and running executions.
    Worker,
    /// Internal RPCs between Trellis servers.
    Service,
}

impl AccountScope {
    fn service_scope(self) -> ServiceScope {
        match self {
            AccountScope::Worker => ServiceScope::Worker,
            AccountScope::Service => ServiceScope::Service,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Promote the staged key to signer, stage a new one, retire the oldest.
    /// Run it twice, at least --jwks-refresh apart, to switch signers.
    Rotate(RotateArgs),
    /// Show which keys sign and which are published.
    List(KeyDirArgs),
}

#[derive(Args, Clone, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub keys: KeyDirArgs,
    /// The verifiers' JWKS refresh interval: a staged key is promoted no
    /// sooner than this after it was staged.
    #[arg(long, env = "TRELLIS_JWKS_REFRESH", default_value = "5m", value_parser = trellis_runtime::parse_duration)]
    pub jwks_refresh: Duration,
    /// Promote the staged key now, however recently it was staged:
    /// verifiers that have not fetched it yet refetch on its first token,
    /// at most every --jwks-min-refresh, and refuse it until then.
    #[arg(long, conflicts_with = "compromised")]
    pub force: bool,
    /// The signing key leaked: sign with a key made now and take every
    /// older key (the leaked one and the staged one beside it) out of the
    /// JWKS at once. Tokens they signed stop working at each server's next
    /// JWKS refresh.
    #[arg(long)]
    pub compromised: bool,
}

#[derive(Args, Clone, Debug)]
pub struct KeyDirArgs {
    #[arg(long, env = "TRELLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Key directory; unset = `<data-dir>/keys`, generated on first start.
    #[arg(long, env = "TRELLIS_SIGNING_KEYS_DIR")]
    pub signing_keys_dir: Option<PathBuf>,
}

impl KeyDirArgs {
    fn location(&self) -> (PathBuf, bool) {
        KeyStore::location(&self.data_dir, self.signing_keys_dir.as_deref())
    }
}

#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    /// Where embedded data lives (SQLite files, signing keys).
    #[arg(long, env = "TRELLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `postgres://...` for production; unset = one SQLite file per service
    /// under the data dir.
    #[arg(long, env = "TRELLIS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `redis://...` for sessions and for the login-throttle and rate-limit
    /// counters, shared by every replica; unset = sessions in the Session
    /// server's SQL database and counters in this process's memory.
    #[arg(long, env = "TRELLIS_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Namespace for this deployment's Redis keys.
    #[arg(long, env = "TRELLIS_REDIS_KEY_PREFIX", default_value = "trellis:")]
    pub redis_key_prefix: String,
}

impl StorageArgs {
    fn database_url(&self, service: ServiceName) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| trellis_store::default_sqlite_url(&self.data_dir, service.as_str()))
    }
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub servers: ServerArgs,
    /// This process's service account (client credentials for calls made
    /// as a service); in Kubernetes from a Secret. Unset on the embedded
    /// defaults with Auth in this process (`trellis up`): the account made
    /// on first start, kept in `<data-dir>/service-account.json`.
    #[arg(
        long,
        env = "TRELLIS_SERVICE_CLIENT_ID",
        requires = "service_client_secret"
    )]
    pub service_client_id: Option<String>,
    /// Prefer the variable to the flag: flags show in the process list.
    #[arg(
        long,
        env = "TRELLIS_SERVICE_CLIENT_SECRET",
        requires = "service_client_id",
        hide_env_values = true
    )]
    pub service_client_secret: Option<Secret>,
    /// The worker account of the Order server's built-in fulfillment
    /// worker (scope worker); in Kubernetes from a Secret. Unset with Auth
    /// in this process (`trellis up`): the account made on first start,
    /// kept in `<data-dir>/fulfillment-worker.json`.
    #[arg(
        long,
        env = "TRELLIS_FULFILLMENT_CLIENT_ID",
        requires = "fulfillment_client_secret"
    )]
    pub fulfillment_client_id: Option<String>,
    /// Prefer the variable to the flag: flags show in the process list.
    #[arg(
        long,
        env = "TRELLIS_FULFILLMENT_CLIENT_SECRET",
        requires = "fulfillment_client_id",
        hide_env_values = true
    )]
    pub fulfillment_client_secret: Option<Secret>,
    /// Leave migrations to `trellis migrate` (e.g. a Kubernetes Job).
    #[arg(long, env = "TRELLIS_SKIP_MIGRATIONS", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_migrations: bool,
    /// How long a server trusts a session-liveness answer from Auth: the
    /// most a logout can take to reach every server (100ms to 1h).
    #[arg(long, env = "TRELLIS_SESSION_CHECK_TTL", default_value = "5s", value_parser = trellis_runtime::parse_duration)]
    pub session_check_ttl: Duration,
    /// While Auth cannot be asked, how long past --session-check-ttl a
    /// session last seen live keeps being served; after that its calls get
    /// UNAVAILABLE. Also the most a logout can take while Auth is down.
    #[arg(long, env = "TRELLIS_SESSION_CHECK_GRACE", default_value = "60s", value_parser = trellis_runtime::parse_duration)]
    pub session_check_grace: Duration,
    /// Plaintext port for gRPC health (kubelet probes speak no TLS) and
    /// Prometheus `/metrics`, for every server of the process; unset, none.
    #[arg(long, env = "TRELLIS_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: ServerLimits,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A secret from a flag or variable: never in `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot listen on {address} for {service}: {source}")]
    Listen {
        service: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    ServiceAccount(#[from] ServiceAccountError),
    #[error("TLS: {0}")]
    Tls(#[from] trellis_runtime::tls::TlsError),
    #[error("admin port failed: {0}")]
    Admin(tonic::transport::Error),
    #[error("{service} server failed: {source}")]
    Serve {
        service: &'static str,
        source: trellis_runtime::ServeError,
    },
    /// A bug, not the operator's configuration.
    #[error("a server task panicked: {0}")]
    Panicked(String),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_)
            | CliError::Invalid(_)
            | CliError::Tls(_)
            | CliError::Setup(SetupError::Config(_))
            | CliError::ServiceAccount(
                ServiceAccountError::InvalidName(_) | ServiceAccountError::Invalid(_),
            ) => ExitCode::from(2),
            // EX_SOFTWARE (sysexits.h): an internal error.
            CliError::Panicked(_) => ExitCode::from(70),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Servers started by [`start`], running until [`Running::shutdown`].
pub struct Running {
    pub addresses: Vec<(ServiceName, SocketAddr)>,
    /// The admin port's address, with --admin-addr.
    pub admin_address: Option<SocketAddr>,
    trigger: ShutdownTrigger,
    tasks: JoinSet<Result<(), CliError>>,
    /// Serves until the last server has stopped.
    admin: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Running {
    pub fn address(&self, service: ServiceName) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, address)| *address)
    }

    /// Signals every server to stop and waits until all have.
    pub async fn shutdown(mut self) -> Result<(), CliError> {
        self.trigger.trigger();
        self.join().await
    }

    /// Waits for the servers; returns the first failure.
    pub async fn join(&mut self) -> Result<(), CliError> {
        let mut first_error = None;
        loop {
            let admin = async {
                match self.admin.as_mut() {
                    Some(admin) => admin.await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = self.tasks.join_next() => match result {
                    Some(result) => result.unwrap_or_else(|error| Err(CliError::Panicked(error.to_string()))),
                    None => break,
                },
                ended = admin => {
                    self.admin = None;
                    match ended {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(CliError::Admin(error)),
                        Err(error) => Err(CliError::Panicked(error.to_string())),
                    }
                }
            };
            if let Err(error) = result {
                // One failed server takes the process down with it.
                self.trigger.trigger();
                first_error.get_or_insert(error);
            }
        }
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn dedup(services: &[ServiceName]) -> Vec<ServiceName> {
    ServiceName::ALL
        .into_iter()
        .filter(|name| services.contains(name))
        .collect()
}

/// Opens each service's database, migrating it unless told not to.
async fn open_databases(
    storage: &StorageArgs,
    services: &[ServiceName],
    run_migrations: bool,
) -> Result<Vec<Database>, CliError> {
    let mut databases = Vec::with_capacity(services.len());
    for &service in services {
        let migrations = service.migrations();
        if migrations.sqlite.is_empty() && migrations.postgres.is_empty() {
            // No tables (the gateway): no file, no connection to PostgreSQL.
            let options = DatabaseOptions {
                max_connections: 1,
                ..DatabaseOptions::default()
            };
            databases.push(Database::connect("sqlite://:memory:", &options).await?);
            continue;
        }
        let url = storage.database_url(service);
        let database = Database::connect(&url, &DatabaseOptions::default()).await?;
        if run_migrations {
            trellis_store::migrate(&database, &service.migrations()).await?;
            tracing::info!(
                service = service.as_str(),
                backend = database.backend_name(),
                "migrations applied"
            );
        }
        databases.push(database);
    }
    Ok(databases)
}

/// Applies the migrations of `services` on their configured databases.
pub async fn migrate(storage: &StorageArgs, services: &[ServiceName]) -> Result<(), CliError> {
    let databases = open_databases(storage, services, true).await?;
    let redis = connect_redis(storage).await?;
    hand_over_login_sessions(services, &databases, redis.as_ref()).await?;
    for database in databases {
        database.close().await;
    }
    Ok(())
}

/// The process's Redis, when `--redis-url` is set.
async fn connect_redis(storage: &StorageArgs) -> Result<Option<RedisKeyspace>, CliError> {
    Ok(match &storage.redis_url {
        Some(url) => Some(RedisKeyspace {
            pool: trellis_store::connect_redis(url, REDIS_POOL_SIZE).await?,
            key_prefix: storage.redis_key_prefix.clone(),
        }),
        None => None,
    })
}

/// The process's fan-out: Redis pub/sub when it has Redis, PostgreSQL
/// LISTEN/NOTIFY when its databases are PostgreSQL (one database: every
/// replica listens on it), else in-process.
async fn fan_out(
    storage: &StorageArgs,
    redis: Option<&RedisKeyspace>,
    databases: &[Database],
) -> Result<Arc<dyn FanOut>, CliError> {
    let fanout: Arc<dyn FanOut> = match (redis, &storage.redis_url, databases.first()) {
        (Some(redis), Some(url), _) => Arc::new(
            RedisFanOut::start(
                url,
                redis.pool.clone(),
                &format!("{}fanout", redis.key_prefix),
            )
            .await?,
        ),
        (_, _, Some(Database::Postgres(pool))) => {
            Arc::new(PgFanOut::start(pool.clone(), FANOUT_CHANNEL).await?)
        }
        _ => Arc::new(MemoryFanOut::default()),
    };
    tracing::info!(backend = fanout.backend_name(), "fan-out");
    Ok(fanout)
}

/// The PostgreSQL channel every replica's fan-out listens on.
const FANOUT_CHANNEL: &str = "trellis_fanout";

/// Live sessions per handover round.
const HANDOVER_BATCH: i64 = 500;

/// The upgrade that made the Session service the owner of login sessions:
/// the live ones still in Auth's old table move to the Session store (same
/// ids, same times, so every token and refresh token keeps working), each
/// batch leaving the old table as it lands, then the table is dropped. Runs
/// where both Auth's and Session's storage are at hand (`trellis migrate`,
/// `trellis up`), with the servers' own `--redis-url`; a no-op once the
/// table is gone, and safe to resume if interrupted. Auth replicas of the
/// old version must be stopped first: a logout they record after its batch
/// moved would be lost.
async fn hand_over_login_sessions(
    services: &[ServiceName],
    databases: &[Database],
    redis: Option<&RedisKeyspace>,
) -> Result<(), CliError> {
    let position = |name| services.iter().position(|s| *s == name);
    let (Some(auth), Some(session)) = (position(ServiceName::Auth), position(ServiceName::Session))
    else {
        return Ok(());
    };
    let (auth, store) = (
        &databases[auth],
        trellis_session::open_store(redis, databases[session].clone()),
    );
    let mut moved = 0_u64;
    loop {
        let now = trellis_runtime::time::now_ms();
        // Each batch leaves the old table once moved: the next starts over.
        let Some(batch) =
            trellis_auth::legacy_login_sessions(auth, now, "", HANDOVER_BATCH).await?
        else {
            return Ok(());
        };
        if batch.is_empty() {
            break;
        }
        for legacy in &batch {
            let Some(record) = trellis_session::imported_login_session(
                &legacy.id,
                &legacy.org_id,
                &legacy.user_id,
                [
                    legacy.created_at,
                    legacy.last_used_at,
                    legacy.idle_expires_at,
                    legacy.absolute_expires_at,
                ],
                &legacy.user_agent,
                &legacy.client_address,
            ) else {
                tracing::warn!(session = %legacy.id, "login session with unreadable ids not handed over");
                continue;
            };
            if store.get(record.org_id, record.id, now).await?.is_none() {
                store.insert(&record).await?;
                moved += 1;
            }
        }
        let ids: Vec<String> = batch.into_iter().map(|legacy| legacy.id).collect();
        trellis_auth::remove_legacy_login_sessions(auth, &ids).await?;
    }
    trellis_auth::drop_legacy_login_sessions(auth).await?;
    // A new install has the old table from Auth's first migrations, empty.
    if moved > 0 {
        tracing::info!(
            moved,
            "login sessions handed over to the Session service; Auth's old table dropped"
        );
    }
    Ok(())
}

/// Binds, migrates and starts `services`; returns once all are accepting.
pub async fn start(services: &[ServiceName], args: &ServeArgs) -> Result<Running, CliError> {
    args.limits.validate()?;
    args.jwt.validate()?;
    args.servers.validate(&args.jwt)?;
    args.tls.validate()?;
    // The servers of a deployment call each other: serving TLS and calling
    // over it go together, or every call between them fails at run time.
    if args.tls.tls_cert.is_some() != args.tls.tls_ca.is_some() {
        return Err(CliError::Invalid(
            "tls-cert/tls-key and tls-ca go together: the servers call each other, over TLS \
             when they serve it (tls-ca: the CA the other servers' certificates are checked \
             against)"
                .into(),
        ));
    }
    // Streams look at their session every TTL: zero would spin.
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&args.session_check_ttl) {
        return Err(CliError::Invalid(format!(
            "session-check-ttl must be between 100ms and 1h, got {}ms",
            args.session_check_ttl.as_millis()
        )));
    }
    if args.session_check_grace > Duration::from_secs(3600) {
        return Err(CliError::Invalid(format!(
            "session-check-grace must be at most 1h, got {}s",
            args.session_check_grace.as_secs()
        )));
    }
    let services = dedup(services);

    let mut listeners = Vec::with_capacity(services.len());
    for &service in &services {
        let address = service.listen_address(&args.servers);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| CliError::Listen {
                service: service.as_str(),
                address,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| CliError::Listen {
            service: service.as_str(),
            address,
            source,
        })?;
        listeners.push((service, listener, bound));
    }
    let admin_listener = match args.admin_addr {
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| CliError::Listen {
                        service: "admin",
                        address,
                        source,
                    })?,
            )
        }
        None => None,
    };
    // Each server's files are read now, so a broken certificate stops the
    // start rather than the first handshake.
    let grpc_tls = ServerTls::load(&args.tls, &[b"h2"])?;
    // The gateway is the public front (browsers, an Ingress): TLS, but no
    // client certificate asked for; callers prove who they are by token.
    let public_tls = TlsArgs {
        tls_client_ca: None,
        ..args.tls.clone()
    };
    let http_tls = ServerTls::load(&public_tls, &[b"h2", b"http/1.1"])?;

    let databases = open_databases(&args.storage, &services, !args.skip_migrations).await?;
    let redis = connect_redis(&args.storage).await?;
    if !args.skip_migrations {
        hand_over_login_sessions(&services, &databases, redis.as_ref()).await?;
    }
    // Sessions and shared counters (failed logins, rate limits) live in
    // Redis when configured, so every replica sees the same; else counters
    // are this process's memory.
    let counters: Arc<dyn Counters> = match &redis {
        Some(redis) => Arc::new(RedisCounters::new(
            redis.pool.clone(),
            redis.key_prefix.clone(),
        )),
        None => Arc::new(MemoryCounters::default()),
    };

    let (channels, targets) = upstream_channels(args, &listeners)?;
    let auth = channels[ServiceName::Auth.as_str()].clone();
    let (verifier, session_guard) = build_verifier(args, auth.clone());
    let worker_tokens = fulfillment_credentials(args, &services, &databases)
        .await?
        .map(|credentials| {
            Arc::new(ServiceTokens::new(
                auth.clone(),
                credentials,
                Duration::from_secs(3),
            ))
        });
    let tokens = service_credentials(args, &services, &databases)
        .await?
        .map(|credentials| {
            Arc::new(ServiceTokens::new(
                auth,
                credentials,
                Duration::from_secs(3),
            ))
        });
    let upstreams = Upstreams::new(channels, tokens)
        .with_worker_tokens(worker_tokens)
        .with_targets(targets);
    let fanout = fan_out(&args.storage, redis.as_ref(), &databases).await?;
    let (trigger, shutdown) = Shutdown::new();
    let admin = Admin::default();
    let mut tasks = JoinSet::new();
    let mut addresses = Vec::new();
    for ((service, listener, bound), database) in listeners.into_iter().zip(databases) {
        // No pool to watch for a server without tables (the gateway).
        if !service.migrations().sqlite.is_empty() {
            admin.metrics.database_pool(service.as_str(), &database);
        }
        let context = ServerContext {
            limits: args.limits.clone(),
            jwt: args.jwt.clone(),
            data_dir: args.storage.data_dir.clone(),
            database,
            metrics: admin.metrics.clone(),
            counters: counters.clone(),
            upstreams: upstreams.clone(),
            redis: redis.clone(),
            fanout: fanout.clone(),
            verifier: verifier.clone(),
        };
        let set = service.create(&args.servers, context).await?;
        let tls = if service.serves_grpc_services() {
            grpc_tls.clone()
        } else {
            http_tls.clone()
        };
        let set = set.with_tls(tls.clone()).with_admin(admin.clone());
        let set = if service.answers_session_checks() {
            set
        } else {
            set.with_session_guard(Some(session_guard.clone()))
        };
        let serves = if service.serves_grpc_services() {
            set.service_names().join(", ")
        } else {
            "HTTP: gRPC-web and gRPC for every service above, /healthz, /readyz, \
             /.well-known/jwks.json"
                .to_owned()
        };
        let transport = match tls.as_ref() {
            None => "",
            Some(tls) if tls.requires_client_certificates() => "; mTLS",
            Some(_) => "; TLS",
        };
        say(&format!(
            "{:<10} listening on {bound}  ({serves}{transport})",
            service.as_str()
        ));
        addresses.push((service, bound));
        let limits = args.limits.clone();
        let verifier = verifier.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            trellis_runtime::serve(set, listener, &limits, verifier, shutdown)
                .await
                .map_err(|source| CliError::Serve {
                    service: service.as_str(),
                    source,
                })
        });
    }
    let admin_address = admin_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let admin = admin_listener.map(|listener| {
        if let Some(address) = admin_address {
            say(&format!(
                "{:<10} listening on {address}  (gRPC health, /metrics; plaintext)",
                "admin"
            ));
        }
        tokio::spawn(admin.serve(listener))
    });
    Ok(Running {
        addresses,
        admin_address,
        trigger,
        tasks,
        admin,
    })
}

/// Redis connections of the process, shared by sessions and counters.
const REDIS_POOL_SIZE: u32 = 16;

/// Channels to every server and where each is, by server name.
type UpstreamAddresses = (
    HashMap<&'static str, Channel>,
    HashMap<&'static str, UpstreamTarget>,
);

/// A lazily connected channel to every server: its `--<name>-url`, else
/// this process's own listener when it runs that server, else its listen
/// address (an unspecified IP reached on loopback); TLS with --tls-ca.
fn upstream_channels(
    args: &ServeArgs,
    listeners: &[(ServiceName, TcpListener, SocketAddr)],
) -> Result<UpstreamAddresses, CliError> {
    let tls = ClientTls::from_args(&args.tls);
    if let Some(tls) = &tls {
        // Read now: a broken bundle stops the start, not every call.
        tls.check()?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let reachable = |address: SocketAddr| match address.ip().is_unspecified() {
        true => format!("{scheme}://127.0.0.1:{}", address.port()),
        false => format!("{scheme}://{address}"),
    };
    let mut channels = HashMap::new();
    let mut targets = HashMap::new();
    for service in ServiceName::ALL {
        let url = match service.upstream_url(&args.servers) {
            Some(url) => url.to_owned(),
            None => {
                let local = listeners
                    .iter()
                    .find(|(running, _, _)| *running == service)
                    .map(|(_, _, bound)| *bound);
                reachable(local.unwrap_or_else(|| service.listen_address(&args.servers)))
            }
        };
        let target = UpstreamTarget::new(&url, tls.clone())
            .map_err(|e| CliError::Invalid(format!("{}-url {e}", service.as_str())))?;
        // Lazy, so every server starts even while the others come up.
        channels.insert(service.as_str(), target.connect(1));
        targets.insert(service.as_str(), target);
    }
    Ok((channels, targets))
}

/// This process's service account: from the flags, or, when it runs Auth
/// itself (`trellis up`), the one it provisions on first start and keeps in
/// `<data-dir>/service-account.json`. In production the credentials come
/// from a Secret (k8s/base); without them no call can be made as a service,
/// and Auth, which keeps login sessions in the Session service, cannot start.
async fn service_credentials(
    args: &ServeArgs,
    services: &[ServiceName],
    databases: &[Database],
) -> Result<Option<ServiceCredentials>, CliError> {
    if let (Some(client_id), Some(client_secret)) =
        (&args.service_client_id, &args.service_client_secret)
    {
        return Ok(Some(ServiceCredentials {
            client_id: client_id.clone(),
            client_secret: client_secret.0.clone(),
        }));
    }
    let auth = services.iter().position(|s| *s == ServiceName::Auth);
    let Some(auth) = auth else {
        return Ok(None);
    };
    let file = args.storage.data_dir.join("service-account.json");
    let credentials =
        service_accounts::provision(&databases[auth], &file, "trellis-up", ServiceScope::Service)
            .await?;
    Ok(Some(ServiceCredentials {
        client_id: credentials.client_id,
        client_secret: credentials.client_secret,
    }))
}

/// The Order server's fulfillment worker account: from the flags, or, when
/// this process runs both Auth and Order, the one it provisions and keeps in
/// `<data-dir>/fulfillment-worker.json`. Only asked for when Order runs here.
async fn fulfillment_credentials(
    args: &ServeArgs,
    services: &[ServiceName],
    databases: &[Database],
) -> Result<Option<ServiceCredentials>, CliError> {
    if !services.contains(&ServiceName::Order) {
        return Ok(None);
    }
    if let (Some(client_id), Some(client_secret)) =
        (&args.fulfillment_client_id, &args.fulfillment_client_secret)
    {
        return Ok(Some(ServiceCredentials {
            client_id: client_id.clone(),
            client_secret: client_secret.0.clone(),
        }));
    }
    let Some(auth) = services.iter().position(|s| *s == ServiceName::Auth) else {
        return Ok(None);
    };
    let file = args.storage.data_dir.join("fulfillment-worker.json");
    let credentials = service_accounts::provision(
        &databases[auth],
        &file,
        "trellis-up-fulfillment",
        ServiceScope::Worker,
    )
    .await?;
    Ok(Some(ServiceCredentials {
        client_id: credentials.client_id,
        client_secret: credentials.client_secret,
    }))
}

/// One verifier (one JWKS cache, one verified-token cache) for every server
/// of the process.
fn build_verifier(args: &ServeArgs, auth: Channel) -> (Arc<TokenVerifier>, Arc<SessionGuard>) {
    let source = AuthServiceJwks::new(auth.clone(), Duration::from_secs(3));
    let jwks = Arc::new(JwksCache::new(Arc::new(source), args.jwt.jwks_min_refresh));
    jwks.spawn_background_refresh(args.jwt.jwks_refresh);
    let verifier = Arc::new(TokenVerifier::new(jwks, args.jwt.verifier_config()));
    let sessions = Arc::new(SessionGuard::new(
        Arc::new(AuthSessionCheck::new(auth, Duration::from_secs(3))),
        args.session_check_ttl,
        // Auth briefly unreachable: recent "live" verdicts keep serving.
        args.session_check_grace,
        args.jwt.token_cache,
    ));
    (verifier, sessions)
}

/// A line on stdout. A reader that went away (`trellis up | head`) is not
/// this process's failure: the line is dropped, the servers keep serving.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn keys_command(command: &KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Rotate(args) => {
            let (dir, _) = args.keys.location();
            // Rotating is the operator's explicit act, so an empty directory
            // (preparing a Secret) gets its first key here.
            KeyStore::open(&dir, true)?;
            let rotation = if args.compromised {
                trellis_auth::replace_compromised_signer(&dir)?
            } else if args.force {
                trellis_auth::rotate(&dir, Duration::ZERO)?
            } else {
                trellis_auth::rotate(&dir, args.jwks_refresh)?
            };
            say(&format!("signing:  {}", rotation.active));
            say(&format!(
                "staged:   {} (published now; signs after the next rotation)",
                rotation.staged
            ));
            for kid in rotation.retired {
                say(&format!("retired:  {kid}"));
            }
        }
        KeysCommand::List(args) => {
            // Read only: a mistyped directory is an error, not a new key.
            let (dir, _) = args.location();
            let keys = KeyStore::open(&dir, false)?;
            let signing = keys.signing_key().kid().to_owned();
            for (position, jwk) in keys.jwks().into_iter().enumerate() {
                // Published newest first: a newest key that does not sign
                // yet is the staged one.
                let state = match (jwk.kid == signing, position) {
                    (true, _) => "signing",
                    (false, 0) => "staged (published; signs after the next rotation)",
                    (false, _) => "published (the previous signer)",
                };
                say(&format!("{:<40} {state}", jwk.kid));
            }
        }
    }
    Ok(())
}

async fn service_accounts_command(command: &ServiceAccountsCommand) -> Result<(), CliError> {
    let storage = match command {
        ServiceAccountsCommand::Create { storage, .. }
        | ServiceAccountsCommand::Register { storage, .. }
        | ServiceAccountsCommand::List(storage)
        | ServiceAccountsCommand::Revoke { storage, .. } => storage,
    };
    // Reading or revoking in a directory with no Trellis data is a mistyped
    // --data-dir (or the wrong working directory), not an empty list.
    let reads = !matches!(
        command,
        ServiceAccountsCommand::Create { .. } | ServiceAccountsCommand::Register { .. }
    );
    let sqlite_file = storage
        .data_dir
        .join(format!("{}.db", ServiceName::Auth.as_str()));
    if reads && storage.database_url.is_none() && !sqlite_file.exists() {
        return Err(CliError::Invalid(format!(
            "no Trellis data in {} (no {}): pass the --data-dir (or --database-url) the servers use",
            storage.data_dir.display(),
            sqlite_file.display()
        )));
    }
    let database = open_databases(storage, &[ServiceName::Auth], true)
        .await?
        .remove(0);
    let result = match command {
        ServiceAccountsCommand::Create { name, scope, .. } => {
            service_accounts::create(&database, name, scope.service_scope())
                .await
                .map(|credentials| {
                    say(&serde_json::to_string(&credentials).expect("two strings serialize"))
                })
        }
        ServiceAccountsCommand::Register {
            name,
            scope,
            client_id,
            client_secret,
            ..
        } => service_accounts::register(
            &database,
            name,
            scope.service_scope(),
            client_id,
            &client_secret.0,
        )
        .await
        .map(|()| say(&format!("registered {client_id} ({name})"))),
        ServiceAccountsCommand::List(_) => ServiceAccounts::new(database.clone())
            .list()
            .await
            .map_err(ServiceAccountError::from)
            .map(|accounts| {
                say(&format!(
                    "{:<36}  {:<8} {:<8} NAME",
                    "CLIENT_ID", "SCOPE", "STATE"
                ));
                for account in accounts {
                    let state = if account.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    say(&format!(
                        "{}  {:<8} {:<8} {}",
                        // as_str: Display of a stored name ignores padding.
                        account.id,
                        account.scope.as_str(),
                        state,
                        account.name
                    ));
                }
            }),
        ServiceAccountsCommand::Revoke { client_id, .. } => {
            service_accounts::revoke(&database, client_id)
                .await
                .map(|()| {
                    say(&format!(
                        "revoked {client_id}: its tokens stop working within --session-check-ttl"
                    ))
                })
        }
    };
    database.close().await;
    Ok(result?)
}

/// `trellis up` runs everything on this machine, for development: the
/// gateway's cookies work on plain-HTTP localhost (no `Secure`), and the
/// servers believe the client address the gateway forwards from loopback
/// (where the gateway is), unless --trusted-proxies says otherwise.
pub fn for_up(args: &ServeArgs) -> ServeArgs {
    let mut args = args.clone();
    args.servers.gateway.gateway_insecure_cookies = true;
    if args.limits.trusted_proxies.is_empty() {
        args.limits.trusted_proxies =
            trellis_tenancy::TrustedProxies::parse("127.0.0.1/32,::1/128")
                .expect("loopback CIDRs parse");
    }
    args
}

async fn serve_until_signal(services: &[ServiceName], args: &ServeArgs) -> Result<(), CliError> {
    let mut running = start(services, args).await?;
    let trigger = running.trigger.clone();
    tokio::select! {
        () = trellis_runtime::wait_for_signal() => {
            trigger.trigger();
            running.join().await
        }
        result = running.join() => result,
    }
}

/// Parses `args` and runs the command; the `trellis` binary is just this.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let telemetry = match &cli.command {
        Command::Up(args) | Command::Serve { args, .. } => args.telemetry.clone(),
        Command::Migrate(_) | Command::Keys(_) | Command::Worker(_) => TelemetryArgs {
            log: "info".into(),
            ..TelemetryArgs::default()
        },
        // Its stdout is the answer (one JSON object for `create`): only
        // what went wrong is logged.
        Command::ServiceAccounts(_) => TelemetryArgs {
            log: "warn".into(),
            ..TelemetryArgs::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("trellis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Traces name the server they come from: one per process in production.
    let service_name = match &cli.command {
        Command::Serve { services, .. } => {
            let names: Vec<&str> = dedup(services).iter().map(|s| s.as_str()).collect();
            format!("trellis-{}", names.join("-"))
        }
        Command::Worker(_) => "trellis-worker".to_owned(),
        _ => "trellis".to_owned(),
    };
    // Inside the runtime: the OTLP exporter's channel lives on it.
    let telemetry = {
        let _entered = runtime.enter();
        trellis_runtime::init_tracing(&telemetry, &service_name)
    };
    let mut telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("trellis: {message}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Up(args) => serve_until_signal(&ServiceName::ALL, &for_up(args)).await,
            Command::Serve { services, args } => serve_until_signal(services, args).await,
            Command::Migrate(storage) => migrate(storage, &ServiceName::ALL).await,
            Command::Keys(command) => keys_command(command),
            Command::ServiceAccounts(command) => service_accounts_command(command).await,
            Command::Worker(args) => {
                worker::run(args, async {
                    trellis_runtime::wait_for_signal().await;
                })
                .await
            }
        }
    });
    {
        let _entered = runtime.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trellis: {error}");
            error.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_secret_never_shows_in_debug_output() {
        let cli = Cli::parse_from([
            "trellis",
            "up",
            "--service-client-id",
            "0b6f3a52-8a8e-4c47-9d0e-3f1c2a7b5e11",
            "--service-client-secret",
            "s3cr3t-value",
        ]);
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
    }

    #[tokio::test]
    async fn a_panicked_server_is_a_bug_not_a_configuration_error() {
        let (trigger, _) = Shutdown::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(async { panic!("boom") });
        let mut running = Running {
            addresses: Vec::new(),
            admin_address: None,
            trigger,
            tasks,
            admin: None,
        };
        let error = running.join().await.unwrap_err();
        assert!(matches!(error, CliError::Panicked(_)), "{error}");
        assert!(error.to_string().contains("panicked"), "{error}");
        assert_eq!(error.exit_code(), ExitCode::from(70));
    }
}
