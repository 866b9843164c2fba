//! The gateway's own HTTP endpoints: `/healthz` (the process is up),
//! `/readyz` (every upstream answers its health check SERVING) and
//! `/.well-known/jwks.json` (Auth's public keys, for anyone verifying
//! Trellis tokens).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use trellis::auth::v1::GetJwksRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis_tenancy::{CallContext, rate_limit_key};

use crate::limits::RateLimit;

/// How long one upstream question may take before it counts as down.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

type Channels = HashMap<&'static str, Channel>;

pub fn router(channels: Channels, clients: Arc<RateLimit<String>>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(channels)
        // The same per-address limit as RPCs, as HTTP 429.
        .route_layer(axum::middleware::from_fn_with_state(clients, limited))
}

async fn limited(
    State(clients): State<Arc<RateLimit<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = request
        .extensions()
        .get::<CallContext>()
        .and_then(CallContext::client_address);
    if let Some(client) = client
        && let Err(wait) = clients.take(&rate_limit_key(client))
    {
        let seconds = wait.as_secs().max(1).to_string();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds)],
            "rate limit: too many requests from this address\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn readyz(State(channels): State<Channels>) -> Response {
    // Every server at once: the answer takes one timeout at most.
    let mut asking = tokio::task::JoinSet::new();
    for (&name, channel) in &channels {
        let mut health = HealthClient::new(channel.clone());
        asking.spawn(async move {
            let asked = tokio::time::timeout(
                UPSTREAM_TIMEOUT,
                health.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await;
            let serving = matches!(asked, Ok(Ok(ref answer)) if answer.get_ref().status == ServingStatus::Serving as i32);
            (name, serving)
        });
    }
    let mut down = Vec::new();
    while let Some(answer) = asking.join_next().await {
        match answer {
            Ok((_, true)) => {}
            Ok((name, false)) => down.push(name),
            Err(_) => down.push("?"),
        }
    }
    down.sort_unstable();
    if down.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not serving: {}\n", down.join(", ")),
        )
            .into_response()
    }
}

async fn jwks(State(channels): State<Channels>) -> Response {
    let mut auth = AuthServiceClient::new(channels["auth"].clone());
    let asked = tokio::time::timeout(UPSTREAM_TIMEOUT, auth.get_jwks(GetJwksRequest {})).await;
    let keys = match asked {
        Ok(Ok(answer)) => answer.into_inner().keys,
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the Auth server is unreachable\n",
            )
                .into_response();
        }
    };
    let keys: Vec<serde_json::Value> = keys
        .into_iter()
        .map(|key| {
            let mut jwk = serde_json::json!({
                "kty": key.kty, "crv": key.crv, "alg": key.alg, "kid": key.kid,
                "use": key.r#use, "x": key.x,
            });
            if !key.y.is_empty() {
                jwk["y"] = key.y.into();
            }
            jwk
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        serde_json::json!({ "keys": keys }).to_string(),
    )
        .into_response()
}
