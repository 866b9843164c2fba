//! The gateway: one HTTP port for browsers and other clients. It takes
//! gRPC-web (binary and text) over HTTP/1.1 and HTTP/2 and plain gRPC over
//! HTTP/2, and forwards every call to the server that owns its
//! `/<package>.<Service>/` prefix over that server's pooled HTTP/2 channel,
//! streams included. Internal RPCs are never routed (`NOT_FOUND`, as if they
//! did not exist). Browsers may keep their tokens in HttpOnly cookies
//! ([`cookies`]); the servers behind verify every token as usual.
#![forbid(unsafe_code)]

mod cookies;
mod endpoints;
mod limits;
mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use trellis_runtime::{ConfigError, JwtArgs, Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;
use trellis_tenancy::TrustedProxies;

use crate::cookies::CookieNames;

/// Servers whose RPCs the gateway routes, by the area of their package
/// (`trellis.<area>.v1`).
pub const UPSTREAMS: [&str; 5] = ["auth", "session", "cart", "order", "execution"];

/// Connections the gateway keeps to each server.
const UPSTREAM_CONNECTIONS: usize = 8;

#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Listen address of the gateway (HTTP/1.1 and HTTP/2).
    #[arg(long, env = "TRELLIS_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,
    /// Browser origins allowed to call with credentials (CORS), comma
    /// separated, e.g. `https://shop.example.com`; none by default.
    #[arg(long, env = "TRELLIS_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub gateway_allowed_origins: Vec<String>,
    /// Development only, for plain-HTTP localhost: cookies without `Secure`
    /// (and so without the `__Host-` prefix, which requires it). `trellis
    /// up` sets it; never set it in production.
    #[arg(long, env = "TRELLIS_GATEWAY_INSECURE_COOKIES", value_parser = clap::builder::BoolishValueParser::new())]
    pub gateway_insecure_cookies: bool,
    /// Load balancers in front of the gateway whose `x-forwarded-for` it
    /// believes (CIDRs, comma separated); none by default: the client
    /// address is the connection's peer.
    #[arg(long, env = "TRELLIS_GATEWAY_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub gateway_trusted_proxies: TrustedProxies,
    /// Calls per second one client address (an IPv6 client's /64) may make,
    /// with bursts of twice that; 0 = no limit. Per gateway replica.
    #[arg(long, env = "TRELLIS_GATEWAY_CLIENT_RATE", default_value_t = 200)]
    pub gateway_client_rate: u32,
    /// Calls per second one organization's users may make through this
    /// replica, with bursts of twice that; 0 = no limit.
    #[arg(long, env = "TRELLIS_GATEWAY_ORG_RATE", default_value_t = 1000)]
    pub gateway_org_rate: u32,
    /// Calls one client address may have in progress at once (server
    /// streams until they end).
    #[arg(long, env = "TRELLIS_GATEWAY_CLIENT_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_client_concurrency: u32,
    /// Calls in progress through this gateway at once, in all.
    #[arg(long, env = "TRELLIS_GATEWAY_CONCURRENCY", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_concurrency: u32,
}

/// Origins a browser sends: scheme, host and optional port, nothing else.
fn parse_origin(origin: &str) -> Result<HeaderValue, ConfigError> {
    let invalid = || {
        ConfigError::Invalid(format!(
            "gateway-allowed-origins: {origin:?} is not an origin like https://shop.example.com"
        ))
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(invalid)?;
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !matches!(scheme, "http" | "https") || !host_ok {
        return Err(invalid());
    }
    HeaderValue::from_str(origin).map_err(|_| invalid())
}

pub struct GatewayServer;

impl Server for GatewayServer {
    const NAME: &'static str = "gateway";
    /// No tables: the gateway keeps nothing.
    const MIGRATIONS: ServiceMigrations = ServiceMigrations {
        service: "gateway",
        sqlite: &[],
        postgres: &[],
    };
    type Args = GatewayArgs;
    const HTTP_FRONT: bool = true;

    fn listen_address(args: &GatewayArgs) -> SocketAddr {
        args.gateway_addr
    }

    /// Nothing calls the gateway from inside.
    fn upstream_url(_args: &GatewayArgs) -> Option<&str> {
        None
    }

    fn validate(args: &GatewayArgs, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        for origin in &args.gateway_allowed_origins {
            parse_origin(origin)?;
        }
        Ok(())
    }

    async fn create(args: &GatewayArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let mut channels = HashMap::new();
        for server in UPSTREAMS {
            // Several HTTP/2 connections to each server, the less busy of
            // two picked per call: one connection's stream limit (256 at
            // the servers' defaults) is not a ceiling for every caller.
            let channel = match context.upstreams.connect(server, UPSTREAM_CONNECTIONS) {
                Some(channel) => channel,
                None => context.upstreams.channel(server).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "the gateway has no channel to the {server} server"
                    ))
                })?,
            };
            channels.insert(server, channel);
        }
        let names = if args.gateway_insecure_cookies {
            CookieNames::DEVELOPMENT
        } else {
            CookieNames::SECURE
        };
        let clients = Arc::new(limits::RateLimit::new(args.gateway_client_rate));
        let proxy = proxy::Proxy::new(
            channels.clone(),
            names,
            clients.clone(),
            Arc::new(limits::RateLimit::new(args.gateway_org_rate)),
            Arc::new(limits::InFlight::new(
                args.gateway_client_concurrency as usize,
                args.gateway_concurrency as usize,
            )),
            context.verifier.clone(),
        );
        let origins = args
            .gateway_allowed_origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        // Outermost: CORS answers preflights itself (no upstream is asked)
        // and grants only the allow-listed origins, with credentials so
        // cookies travel; a disallowed origin gets no grant headers.
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-grpc-web"),
                HeaderName::from_static("x-user-agent"),
                HeaderName::from_static("grpc-timeout"),
                HeaderName::from_static(cookies::CSRF_HEADER),
                HeaderName::from_static(trellis_tenancy::REQUEST_ID_HEADER),
            ])
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
                HeaderName::from_static(trellis_tenancy::REQUEST_ID_HEADER),
            ])
            .max_age(Duration::from_secs(600));
        let grpc = tower::ServiceBuilder::new()
            // gRPC-web in and out (trailers in the body, base64 for -text);
            // plain gRPC over HTTP/2 passes through untouched.
            .layer(tonic_web::GrpcWebLayer::new())
            .service(proxy);
        let router = endpoints::router(channels, clients)
            .fallback_service(grpc)
            .layer(cors);
        Ok(ServiceSet::http(
            Self::NAME,
            router,
            args.gateway_trusted_proxies.clone(),
        ))
    }
}
