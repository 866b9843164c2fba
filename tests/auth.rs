//! Auth end to end: real servers, real clients, on SQLite and (when
//! TRELLIS_TEST_DATABASE_URL is set) PostgreSQL.

mod common;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{
    LoginRequest, LoginResponse, LogoutAllRequest, LogoutRequest, Plan, RefreshRequest, Role,
    SignUpRequest, SignUpResponse, WhoAmIRequest,
};
use trellis::cart::v1::{GetCartRequest, cart_service_client::CartServiceClient};
use trellis_cli::ServiceName;

const PASSWORD: &str = "Correct-Horse-9";

/// Auth and Cart on one backend, every server re-checking sessions each
/// second.
struct Fixture {
    running: trellis_cli::Running,
    data_dir: std::path::PathBuf,
    auth: AuthServiceClient<Channel>,
    cart: CartServiceClient<Channel>,
}

impl Fixture {
    async fn start(extra: &[&str]) -> Fixture {
        let data_dir = temp_dir("auth");
        let mut args = vec!["--session-check-ttl", "1s"];
        args.extend_from_slice(extra);
        let running = trellis_cli::start(
            &[ServiceName::Auth, ServiceName::Session, ServiceName::Cart],
            &up_args(&data_dir, &args),
        )
        .await
        .unwrap();
        let auth =
            AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
        let cart =
            CartServiceClient::new(channel(running.address(ServiceName::Cart).unwrap()).await);
        Fixture {
            running,
            data_dir,
            auth,
            cart,
        }
    }

    /// A new account: its email, and the sign-up's answer.
    async fn sign_up(&mut self) -> (String, SignUpResponse) {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let email = format!("ana.{unique}@example.com");
        let signed_up = self
            .auth
            .sign_up(SignUpRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                name: "Ana".into(),
                organization_name: format!("Taco Palace {unique}"),
            })
            .await
            .unwrap()
            .into_inner();
        (email, signed_up)
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }
}

async fn log_in(auth: &mut AuthServiceClient<Channel>, email: &str) -> LoginResponse {
    auth.login(LoginRequest {
        email: email.to_owned(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Every violation at once, named in the message and in BadRequest.
async fn sign_up_names_every_violation_at_once(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let auth = &mut fx.auth;
    let refused = auth
        .sign_up(SignUpRequest {
            email: "not-an-email".into(),
            password: "short".into(),
            name: " ".into(),
            organization_name: "Taco Palace".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        ["email", "name", "password", "password", "password"]
    );
    assert!(
        refused.message().contains("password: must contain a digit"),
        "{}",
        refused.message()
    );

    fx.stop().await;
}

backend_suite!(sign_up_names_every_violation_at_once, "Auth": sqlite, postgres);

/// The email is trimmed and lower-cased, the slug derived from the name;
/// an email registered already is ALREADY_EXISTS.
async fn sign_up_normalizes_the_email_and_starts_on_the_free_plan(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let auth = &mut fx.auth;
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("ana.{unique}@example.com");
    let signed_up = auth
        .sign_up(SignUpRequest {
            email: format!("  ANA.{unique}@Example.com "),
            password: PASSWORD.into(),
            name: "Ana".into(),
            organization_name: format!("Taco Palace {unique}"),
        })
        .await
        .unwrap()
        .into_inner();
    let user = signed_up.user.clone().unwrap();
    let org = signed_up.organization.clone().unwrap();
    assert_eq!(user.email, email, "trimmed and lower-cased");
    assert_eq!(user.role, Role::Admin as i32);
    assert_eq!(org.plan, Plan::Free as i32);
    assert_eq!(org.slug, format!("taco-palace-{unique}"));
    let limits = org.limits.unwrap();
    assert_eq!(
        (
            limits.max_users,
            limits.max_concurrent_runs,
            limits.max_runs_per_month
        ),
        (3, 1, 100)
    );
    assert_eq!(signed_up.expires_in, 900);

    let duplicate = auth
        .sign_up(SignUpRequest {
            email: email.to_uppercase(),
            password: PASSWORD.into(),
            name: "Ana".into(),
            organization_name: "Other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    fx.stop().await;
}

backend_suite!(sign_up_normalizes_the_email_and_starts_on_the_free_plan, "Auth": sqlite, postgres);

/// A wrong password and an unknown email get the same answer.
async fn wrong_password_and_unknown_email_answer_alike(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let (email, _) = fx.sign_up().await;
    let auth = &mut fx.auth;
    let unique = uuid::Uuid::new_v4().simple().to_string();
    // The same answer, byte for byte.
    let wrong_password = auth
        .login(LoginRequest {
            email: email.clone(),
            password: "Wrong-Horse-9".into(),
        })
        .await
        .unwrap_err();
    let unknown_email = auth
        .login(LoginRequest {
            email: format!("nobody.{unique}@example.com"),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(
        (
            wrong_password.code(),
            wrong_password.message(),
            wrong_password.details()
        ),
        (
            unknown_email.code(),
            unknown_email.message(),
            unknown_email.details()
        )
    );
    assert_eq!(wrong_password.message(), "invalid credentials");

    fx.stop().await;
}

backend_suite!(wrong_password_and_unknown_email_answer_alike, "Auth": sqlite, postgres);

/// A login answers with its own session and time, and its token works on
/// every server.
async fn a_login_is_its_own_session_and_other_servers_trust_its_token(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let (email, signed_up) = fx.sign_up().await;
    let org = signed_up.organization.unwrap();
    let auth = &mut fx.auth;
    let cart = &mut fx.cart;
    let logging_in = std::time::SystemTime::now();
    let login = log_in(auth, &email).await;
    let me = auth
        .who_am_i(authed(WhoAmIRequest {}, &login.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().email, email);
    assert_eq!(
        me.organization.unwrap().organization_id,
        org.organization_id
    );
    assert_eq!(me.session_id, login.session_id);
    // This login, not the sign-up's.
    let last_login = login.user.unwrap().last_login_at.unwrap();
    let last_login = std::time::UNIX_EPOCH
        + std::time::Duration::new(last_login.seconds as u64, last_login.nanos as u32);
    assert!(last_login >= logging_in - std::time::Duration::from_millis(1));

    // Other servers trust Auth's tokens through the JWKS.
    let cart_of_login = cart
        .get_cart(authed(
            GetCartRequest {
                session_id: login.session_id.clone(),
            },
            &login.access_token,
        ))
        .await
        .expect("past the tenancy layer: the login session's (empty) cart")
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(
        (cart_of_login.session_id.as_str(), cart_of_login.items.len()),
        (login.session_id.as_str(), 0)
    );

    fx.stop().await;
}

backend_suite!(
    a_login_is_its_own_session_and_other_servers_trust_its_token,
    "Auth": sqlite, postgres
);

/// Refresh rotates the token; presenting a rotated one again revokes the
/// whole session.
async fn refresh_rotates_and_a_reused_token_revokes_the_session(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let (email, _) = fx.sign_up().await;
    let auth = &mut fx.auth;
    let login = log_in(auth, &email).await;
    let refreshed = auth
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refreshed.session_id, login.session_id);
    assert_ne!(refreshed.refresh_token, login.refresh_token);
    auth.who_am_i(authed(WhoAmIRequest {}, &refreshed.access_token))
        .await
        .unwrap();
    let reuse = auth
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let family = auth
        .refresh(RefreshRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        family.code(),
        Code::Unauthenticated,
        "the whole session is revoked"
    );
    let ended = auth
        .who_am_i(authed(WhoAmIRequest {}, &refreshed.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        (ended.code(), ended.message()),
        (Code::Unauthenticated, "session ended")
    );
    let garbage = auth
        .refresh(RefreshRequest {
            refresh_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);

    fx.stop().await;
}

backend_suite!(refresh_rotates_and_a_reused_token_revokes_the_session, "Auth": sqlite, postgres);

/// Logout ends the caller's session everywhere within the check TTL;
/// LogoutAll ends every other one, the sign-up's included.
async fn logout_ends_one_session_and_logout_all_the_rest(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let (email, signed_up) = fx.sign_up().await;
    let auth = &mut fx.auth;
    let cart = &mut fx.cart;
    let first = log_in(auth, &email).await;
    let second = log_in(auth, &email).await;
    let third = log_in(auth, &email).await;
    let on_cart = |token: &str| {
        authed(
            GetCartRequest {
                // Refused by the handler, past the tenancy layer.
                session_id: "s".into(),
            },
            token,
        )
    };
    assert_eq!(
        cart.get_cart(on_cart(&first.access_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    auth.logout(authed(LogoutRequest {}, &first.access_token))
        .await
        .unwrap();
    // Other servers stop accepting the token within --session-check-ttl.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let ended = cart
        .get_cart(on_cart(&first.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        (ended.code(), ended.message()),
        (Code::Unauthenticated, "session ended")
    );
    assert_eq!(
        cart.get_cart(on_cart(&second.access_token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument,
        "other sessions unaffected"
    );
    assert_eq!(
        auth.who_am_i(authed(WhoAmIRequest {}, &first.access_token))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        auth.refresh(RefreshRequest {
            refresh_token: first.refresh_token
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );
    auth.who_am_i(authed(WhoAmIRequest {}, &second.access_token))
        .await
        .unwrap();
    let all = auth
        .logout_all(authed(LogoutAllRequest {}, &second.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.revoked_sessions, 3,
        "second, third and the original sign-up session"
    );
    assert_eq!(
        auth.who_am_i(authed(WhoAmIRequest {}, &third.access_token))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // The signed-up session was revoked too.
    assert_eq!(
        auth.refresh(RefreshRequest {
            refresh_token: signed_up.refresh_token
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );

    fx.stop().await;
}

backend_suite!(logout_ends_one_session_and_logout_all_the_rest, "Auth": sqlite, postgres);

async fn brute_force_is_throttled(extra: &[&str]) {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    let data_dir = temp_dir("auth-throttle");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, extra),
    )
    .await
    .unwrap();
    let address = running.address(ServiceName::Auth).unwrap();
    let mut attacker = AuthServiceClient::new(channel(address).await);
    let from_elsewhere = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))))
        .connect()
        .await
        .unwrap();
    let mut real_user = AuthServiceClient::new(from_elsewhere);

    let email = format!("target.{}@example.com", uuid::Uuid::new_v4().simple());
    attacker
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            name: "T".into(),
            organization_name: "T".into(),
        })
        .await
        .unwrap();
    let unknown = format!("ghost.{}@example.com", uuid::Uuid::new_v4().simple());
    let mut answers = Vec::new();
    for target in [&email, &unknown] {
        for attempt in 1..=5 {
            let started = Instant::now();
            let status = attacker
                .login(LoginRequest {
                    email: target.clone(),
                    password: "Wrong-Horse-1".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), status.message()),
                (Code::Unauthenticated, "invalid credentials")
            );
            if attempt == 5 {
                assert!(
                    started.elapsed() >= Duration::from_millis(400),
                    "failures past the third are slowed"
                );
            }
        }
        // Now refused before the password is even checked, right or wrong.
        let throttled = attacker
            .login(LoginRequest {
                email: target.clone(),
                password: PASSWORD.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(throttled.code(), Code::ResourceExhausted);
        let retry = throttled
            .get_details_retry_info()
            .expect("RetryInfo")
            .retry_delay
            .unwrap();
        assert!(
            retry > Duration::from_secs(60) && retry <= Duration::from_secs(15 * 60),
            "{retry:?}"
        );
        answers.push((throttled.code(), throttled.message().to_owned()));
    }
    assert_eq!(
        answers[0], answers[1],
        "known and unknown accounts throttle alike"
    );

    // The real user, from another address, is not locked out.
    let login = real_user
        .login(LoginRequest {
            email: email.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!login.access_token.is_empty());
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(brute_force_is_throttled, "login throttling": memory, redis);

/// Sign-ups at the same moment, for organizations of the same name, all
/// succeed with slugs of their own.
async fn concurrent_sign_ups_get_unique_slugs(extra: &[&str]) {
    let data_dir = temp_dir("auth-sign-ups");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, extra),
    )
    .await
    .unwrap();
    let auth = AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let mut sign_ups = tokio::task::JoinSet::new();
    for n in 0..8 {
        let mut auth = auth.clone();
        let unique = unique.clone();
        sign_ups.spawn(async move {
            auth.sign_up(SignUpRequest {
                email: format!("founder.{n}.{unique}@example.com"),
                password: PASSWORD.into(),
                name: "Founder".into(),
                organization_name: format!("Same Name {unique}"),
            })
            .await
        });
    }
    let mut slugs = Vec::new();
    for answer in sign_ups.join_all().await {
        let signed_up = answer.expect("every sign-up succeeds").into_inner();
        slugs.push(signed_up.organization.unwrap().slug);
    }
    slugs.sort();
    let base = format!("same-name-{unique}");
    let mut expected: Vec<String> = (1..=8)
        .map(|n| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .collect();
    expected.sort();
    assert_eq!(slugs, expected);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(concurrent_sign_ups_get_unique_slugs, "concurrent sign-ups": sqlite, postgres);

/// Guesses sent all at once get no more tries than guesses sent one by one:
/// attempts hold their place in the count while their password is checked.
async fn concurrent_guesses_are_bounded(extra: &[&str]) {
    let data_dir = temp_dir("auth-concurrent");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, extra),
    )
    .await
    .unwrap();
    let auth = AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let email = format!("target.{}@example.com", uuid::Uuid::new_v4().simple());
    auth.clone()
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            name: "T".into(),
            organization_name: "T".into(),
        })
        .await
        .unwrap();

    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..20 {
        let mut auth = auth.clone();
        let email = email.clone();
        guesses.spawn(async move {
            auth.login(LoginRequest {
                email,
                password: format!("Wrong-Horse-{n}"),
            })
            .await
            .unwrap_err()
        });
    }
    let answers = guesses.join_all().await;
    let checked = answers
        .iter()
        .filter(|status| status.code() == Code::Unauthenticated)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|status| status.code() == Code::ResourceExhausted)
        .collect();
    assert_eq!(
        (checked, refused.len()),
        (5, 15),
        "5 guesses per account and address: {answers:?}"
    );
    for status in refused {
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
    // The limit holds afterwards too, for the right password as well.
    let after = auth
        .clone()
        .login(LoginRequest {
            email,
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::ResourceExhausted);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(concurrent_guesses_are_bounded, "concurrent login throttling": memory, redis);

#[tokio::test]
async fn a_hash_made_with_older_parameters_is_upgraded_at_login() {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

    let data_dir = temp_dir("auth-rehash");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, &[]),
    )
    .await
    .unwrap();
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let email = format!("old.{}@example.com", uuid::Uuid::new_v4().simple());
    auth.sign_up(SignUpRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        name: "Old".into(),
        organization_name: "Old".into(),
    })
    .await
    .unwrap();

    // As if stored years ago with weaker parameters.
    let weak = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(8 * 1024, 1, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes())
    .unwrap()
    .to_string();
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data_dir.join("auth.db").display()))
        .await
        .unwrap();
    sqlx::query("UPDATE auth_users SET password_hash = $1 WHERE email = $2")
        .bind(&weak)
        .bind(&email)
        .execute(&db)
        .await
        .unwrap();

    auth.login(LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM auth_users WHERE email = $1")
            .bind(&email)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    // And the upgraded hash still accepts the password.
    auth.login(LoginRequest {
        email,
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    db.close().await;
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// One authenticated call to `service`, with an empty request: past the
/// tenancy layer the handler refuses it (INVALID_ARGUMENT, or UNIMPLEMENTED
/// until the service lands), never as UNAUTHENTICATED. `None` for Auth,
/// which checks sessions itself. Exhaustive, so a new server joins the test
/// below.
async fn call_past_the_tenancy_layer(
    service: ServiceName,
    channel: Channel,
    token: &str,
) -> Option<tonic::Status> {
    use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
    use trellis::order::v1::order_service_client::OrderServiceClient;
    use trellis::session::v1::session_service_client::SessionServiceClient;
    let answer = match service {
        ServiceName::Auth => return None,
        ServiceName::Session => SessionServiceClient::new(channel)
            .get_session(authed(Default::default(), token))
            .await
            .map(drop),
        ServiceName::Cart => CartServiceClient::new(channel)
            .get_cart(authed(Default::default(), token))
            .await
            .map(drop),
        ServiceName::Order => OrderServiceClient::new(channel)
            .get_order(authed(Default::default(), token))
            .await
            .map(drop),
        ServiceName::Execution => ExecutionServiceClient::new(channel)
            .get_execution(authed(Default::default(), token))
            .await
            .map(drop),
        // Answers HTTP and forwards; the servers behind it guard.
        ServiceName::Gateway => return None,
    };
    Some(answer.unwrap_err())
}

/// Every server but Auth puts the session guard in front of its handlers:
/// a logged-out token stops working on each within --session-check-ttl.
#[tokio::test]
async fn every_server_refuses_the_token_of_an_ended_session() {
    let data_dir = temp_dir("auth-everywhere");
    let running = trellis_cli::start(
        &ServiceName::ALL,
        &up_args(&data_dir, &["--session-check-ttl", "1s"]),
    )
    .await
    .unwrap();
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let signed_up = auth
        .sign_up(SignUpRequest {
            email: format!("ana.{unique}@example.com"),
            password: PASSWORD.into(),
            name: "Ana".into(),
            organization_name: format!("Taco Palace {unique}"),
        })
        .await
        .unwrap()
        .into_inner();
    let token = signed_up.access_token;
    let mut guarded = Vec::new();
    let grpc_servers: Vec<ServiceName> = ServiceName::ALL
        .into_iter()
        .filter(|s| s.serves_grpc_services())
        .collect();
    for &service in &grpc_servers {
        let channel = channel(running.address(service).unwrap()).await;
        if let Some(status) = call_past_the_tenancy_layer(service, channel.clone(), &token).await {
            assert!(
                matches!(status.code(), Code::Unimplemented | Code::InvalidArgument),
                "{service:?}: {status:?}"
            );
            guarded.push((service, channel));
        }
    }
    assert_eq!(guarded.len(), grpc_servers.len() - 1, "all but Auth");

    auth.logout(authed(LogoutRequest {}, &token)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    for (service, channel) in guarded {
        let status = call_past_the_tenancy_layer(service, channel, &token)
            .await
            .unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "session ended"),
            "{service:?}"
        );
    }
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
