//! Service-to-service calls forward the caller's credentials, request id,
//! trace context and remaining deadline; the tenant comes from the token.

mod common;

use std::time::Duration;

use common::*;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tower::ServiceBuilder;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::{User, WhoAmIRequest, WhoAmIResponse};
use trellis_runtime::{ServerLimits, ServiceSet};
use trellis_tenancy::{CallContext, Propagate, PropagateLayer, Role, SigningKey, TenantContext};

/// Downstream: reports what arrived, in a User message.
struct Echo;

#[tonic::async_trait]
impl AuthService for Echo {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let tenant = TenantContext::from_request(&request)?.clone();
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        Ok(Response::new(WhoAmIResponse {
            user: Some(User {
                user_id: tenant.user_id.to_string(),
                organization_id: tenant.org_id.to_string(),
                name: header("authorization"),
                email: header("x-request-id"),
                r#role: 0,
                ..Default::default()
            }),
            // Smuggle the rest through fields the echo does not otherwise use.
            session_id: format!("{}|{}", header("traceparent"), header("grpc-timeout")),
            organization: None,
        }))
    }
}

/// Upstream: calls downstream on the caller's behalf.
struct Relay {
    downstream: AuthServiceClient<Propagate<Channel>>,
}

#[tonic::async_trait]
impl AuthService for Relay {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        TenantContext::from_request(&request)?;
        let context = CallContext::from_request(&request);
        self.downstream
            .clone()
            .who_am_i(context.outbound(WhoAmIRequest {}))
            .await
    }
}

fn parse_timeout(text: &str) -> Duration {
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().unwrap();
    match unit {
        "u" => Duration::from_micros(amount),
        "m" => Duration::from_millis(amount),
        "S" => Duration::from_secs(amount),
        other => panic!("unexpected unit {other}"),
    }
}

#[tokio::test]
async fn outbound_calls_carry_the_callers_context() {
    let key = SigningKey::generate("key-1");
    let verifier = verifier_for(&key).await;
    let downstream = spawn_server(
        ServiceSet::new("echo").add_service(AuthServiceServer::new(Echo)),
        verifier.clone(),
        ServerLimits::default(),
    )
    .await;
    // As a service's handler gets it: ServerContext::upstreams.
    let upstreams =
        trellis_runtime::Upstreams::new([("echo", channel(downstream.address).await)].into(), None);
    let downstream_channel = upstreams.for_caller("echo").unwrap();
    assert!(upstreams.for_caller("nowhere").is_none());
    let upstream = spawn_server(
        ServiceSet::new("relay").add_service(AuthServiceServer::new(Relay {
            downstream: AuthServiceClient::new(downstream_channel),
        })),
        verifier,
        ServerLimits::default(),
    )
    .await;
    let mut client = AuthServiceClient::new(channel(upstream.address).await);

    let org = uuid::Uuid::new_v4();
    let token = bearer(&key, &claims(org, Role::Developer));
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = with_metadata(
        WhoAmIRequest {},
        &[
            ("authorization", &token),
            ("x-request-id", "req-abc-123"),
            ("traceparent", traceparent),
            ("x-trellis-user-id", "forged"),
        ],
    );
    request.set_timeout(Duration::from_secs(2));
    let response = client.who_am_i(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-abc-123"
    );
    let body = response.into_inner();
    let user = body.user.unwrap();
    assert_eq!(user.name, token, "credentials forwarded");
    assert_eq!(user.email, "req-abc-123", "request id forwarded");
    assert_eq!(
        user.organization_id,
        org.to_string(),
        "downstream tenant from the forwarded token"
    );
    let (seen_traceparent, seen_timeout) = body.session_id.split_once('|').unwrap();
    assert_eq!(seen_traceparent, traceparent);
    let remaining = parse_timeout(seen_timeout);
    assert!(
        remaining <= Duration::from_secs(2) && remaining > Duration::from_millis(1500),
        "{remaining:?}"
    );

    // No caller deadline: the outbound call still gets one (10 s).
    let request = with_metadata(WhoAmIRequest {}, &[("authorization", &token)]);
    let body = client.who_am_i(request).await.unwrap().into_inner();
    let (seen_traceparent, seen_timeout) = body.session_id.split_once('|').unwrap();
    assert_eq!(seen_traceparent, "", "no trace context invented");
    let remaining = parse_timeout(seen_timeout);
    assert!(
        remaining <= Duration::from_secs(10) && remaining > Duration::from_secs(9),
        "{remaining:?}"
    );
    assert_eq!(
        body.user.unwrap().email.len(),
        36,
        "generated request id forwarded"
    );
}

#[tokio::test]
async fn an_org_hint_that_disagrees_with_the_token_is_refused() {
    let key = SigningKey::generate("key-1");
    let server = spawn_server(
        ServiceSet::new("echo").add_service(AuthServiceServer::new(Echo)),
        verifier_for(&key).await,
        ServerLimits::default(),
    )
    .await;
    let mut client = AuthServiceClient::new(channel(server.address).await);
    let org = uuid::Uuid::new_v4();
    let token = bearer(&key, &claims(org, Role::Viewer));
    let other_org = uuid::Uuid::new_v4().to_string();
    let status = client
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &token), ("x-trellis-org-id", &other_org)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let matching = client
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[
                ("authorization", &token),
                ("x-trellis-org-id", &org.to_string()),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        matching.into_inner().user.unwrap().organization_id,
        org.to_string()
    );
}

#[tokio::test]
async fn an_unreachable_dependency_is_unavailable_within_the_deadline() {
    let key = SigningKey::generate("key-1");
    // Nothing listens here.
    let dead = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let relay = Relay {
        downstream: AuthServiceClient::new(
            ServiceBuilder::new()
                .layer(PropagateLayer::default())
                .service(dead),
        ),
    };
    let server = spawn_server(
        ServiceSet::new("relay").add_service(AuthServiceServer::new(relay)),
        verifier_for(&key).await,
        ServerLimits::default(),
    )
    .await;
    let mut client = AuthServiceClient::new(channel(server.address).await);
    let token = bearer(&key, &claims(uuid::Uuid::new_v4(), Role::Admin));
    let started = std::time::Instant::now();
    let status = client
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &token)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
