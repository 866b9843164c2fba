//! Cart server: `trellis.cart.v1.CatalogService` (products and stock, with
//! the internal reservations orders take) and `CartService` (one cart per
//! session).
//!
//! Laid out as Auth is: `grpc` (tonic adapters), `catalog` and `carts`
//! (handlers), `error` (the one error enum and its statuses), `model`
//! (records, bounds, messages) and `store` (its tables).
#![forbid(unsafe_code)]

mod carts;
mod catalog;
mod error;
mod grpc;
mod model;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trellis::cart::v1::cart_service_server::CartServiceServer;
use trellis::cart::v1::catalog_service_server::CatalogServiceServer;
use trellis_runtime::{
    ConfigError, JwtArgs, Server, ServerContext, ServiceSet, SetupError, Shutdown, TaskError,
    parse_duration,
};
use trellis_store::ServiceMigrations;

pub use error::CartServiceError;
pub use model::{MAX_LINES, MAX_QUANTITY};
pub use store::MIGRATIONS;

use carts::{CartApi, MAX_CHECKED_SESSIONS, SessionOwners};
use store::{Carts, Catalog};

/// Cart's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct CartArgs {
    /// Listen address of the Cart server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_CART_ADDR", default_value = "127.0.0.1:50053")]
    pub cart_addr: SocketAddr,
    /// Where the other servers reach the Cart server; unset = this
    /// process's own when it runs one, else --cart-addr.
    #[arg(long, env = "TRELLIS_CART_URL")]
    pub cart_url: Option<String>,
    /// How long the Session service's word that a session is the caller's
    /// is trusted before asking again.
    #[arg(long, env = "TRELLIS_CART_SESSION_CHECK_TTL", default_value = "5s", value_parser = parse_duration)]
    pub cart_session_check_ttl: Duration,
    /// How often carts of ended sessions are removed: no cart outlives its
    /// session by more than this.
    #[arg(long, env = "TRELLIS_CART_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub cart_sweep_interval: Duration,
}

/// The Cart server as `trellis serve cart` starts it.
pub struct CartServer;

impl Server for CartServer {
    const NAME: &'static str = "cart";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = CartArgs;

    fn listen_address(args: &CartArgs) -> SocketAddr {
        args.cart_addr
    }

    fn upstream_url(args: &CartArgs) -> Option<&str> {
        args.cart_url.as_deref()
    }

    fn validate(args: &CartArgs, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        if args.cart_session_check_ttl > Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "cart-session-check-ttl must be at most 60s".into(),
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&args.cart_sweep_interval)
        {
            return Err(ConfigError::Invalid(
                "cart-sweep-interval must be between 100ms and 1h".into(),
            ));
        }
        Ok(())
    }

    async fn create(args: &CartArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        let on_behalf = context.upstreams.for_caller("session").ok_or_else(|| {
            ConfigError::Invalid("the Cart server needs the Session server's address".into())
        })?;
        let directory = context.upstreams.as_service("session");
        if directory.is_none() {
            tracing::warn!(
                "no service credentials: carts of ended sessions are not removed \
                 (set --service-client-id and --service-client-secret)"
            );
        }
        let owners = Arc::new(SessionOwners::new(
            on_behalf,
            directory.clone(),
            args.cart_session_check_ttl,
        ));
        let catalog = Catalog::new(context.database.clone());
        let carts = Carts::new(context.database.clone());
        let cart_api = Arc::new(CartApi {
            carts: carts.clone(),
            catalog: catalog.clone(),
            sessions: owners.clone(),
        });
        let catalog_api = Arc::new(catalog::CatalogApi { catalog });
        let mut set = ServiceSet::new(Self::NAME)
            .add_service(
                CatalogServiceServer::new(grpc::CatalogAdapter(catalog_api))
                    .max_decoding_message_size(max_message_bytes),
            )
            .add_service(
                CartServiceServer::new(grpc::CartAdapter(cart_api))
                    .max_decoding_message_size(max_message_bytes),
            );
        if directory.is_some() {
            let interval = args.cart_sweep_interval;
            set = set.with_background_task("cart-sweeper", move |shutdown| {
                sweep(carts, owners, interval, shutdown)
            });
        }
        Ok(set)
    }
}

/// Every `interval`, walks every cart and removes those whose session the
/// Session service no longer has. A round that cannot reach it (or the
/// database) is logged and tried again next time.
async fn sweep(
    carts: Carts,
    owners: Arc<SessionOwners>,
    interval: Duration,
    mut shutdown: Shutdown,
) -> Result<(), TaskError> {
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = sweep_once(&carts, &owners).await {
            tracing::warn!(%error, "sweeping carts of ended sessions failed; retrying next round");
        }
    }
}

async fn sweep_once(carts: &Carts, owners: &SessionOwners) -> Result<(), CartServiceError> {
    let mut after = (String::new(), String::new());
    loop {
        let page = carts
            .page(after.clone(), MAX_CHECKED_SESSIONS as i64)
            .await?;
        let Some(&(last_org, last_session)) = page.last() else {
            return Ok(());
        };
        // A page may span organizations: one check per organization.
        let mut start = 0;
        while start < page.len() {
            let org_id = page[start].0;
            let end = page[start..]
                .iter()
                .position(|(org, _)| *org != org_id)
                .map_or(page.len(), |n| start + n);
            let sessions: Vec<_> = page[start..end].iter().map(|(_, s)| *s).collect();
            if let Some(live) = owners.live_among(org_id, &sessions).await? {
                let ended: Vec<_> = sessions.into_iter().filter(|s| !live.contains(s)).collect();
                if !ended.is_empty() {
                    let removed = carts.delete(org_id, &ended).await?;
                    tracing::info!(org = %org_id, removed, "carts of ended sessions removed");
                }
            }
            start = end;
        }
        if page.len() < MAX_CHECKED_SESSIONS {
            return Ok(());
        }
        after = (last_org.to_string(), last_session.to_string());
    }
}
