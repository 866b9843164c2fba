//! Service accounts end to end: credentials made as `trellis
//! service-accounts create` makes them, tokens from IssueServiceToken, the
//! callers each RPC accepts as the contract declares them, and revocation;
//! on SQLite and (when configured) PostgreSQL.

mod common;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{IssueServiceTokenRequest, SignUpRequest};
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis::session::v1::login_session_service_client::LoginSessionServiceClient;
use trellis_auth::service_accounts::{self, Credentials, ServiceScope};
use trellis_cli::ServiceName;
use trellis_runtime::Upstreams;
use trellis_store::{Database, DatabaseOptions};
use trellis_tenancy::{ServiceCredentials, ServiceTokens};

/// Every server, re-checking sessions (and service accounts) each second,
/// and Auth's database as the CLI opens it.
struct Fixture {
    running: trellis_cli::Running,
    data_dir: std::path::PathBuf,
    auth_database: Database,
    auth: AuthServiceClient<Channel>,
}

impl Fixture {
    async fn start(extra: &[&str]) -> Fixture {
        let data_dir = temp_dir("service-accounts");
        let mut args = vec!["--session-check-ttl", "1s"];
        args.extend_from_slice(extra);
        let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &args))
            .await
            .unwrap();
        let url = match extra.iter().position(|flag| *flag == "--database-url") {
            Some(at) => extra[at + 1].to_owned(),
            None => trellis_store::default_sqlite_url(&data_dir, "auth"),
        };
        let auth_database = Database::connect(&url, &DatabaseOptions::default())
            .await
            .unwrap();
        let auth =
            AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
        Fixture {
            running,
            data_dir,
            auth_database,
            auth,
        }
    }

    async fn channel(&self, service: ServiceName) -> Channel {
        channel(self.running.address(service).unwrap()).await
    }

    async fn account(&self, scope: ServiceScope) -> Credentials {
        service_accounts::create(&self.auth_database, "test-account", scope)
            .await
            .unwrap()
    }

    async fn token(&mut self, credentials: &Credentials) -> Result<String, tonic::Status> {
        self.auth
            .issue_service_token(IssueServiceTokenRequest {
                client_id: credentials.client_id.clone(),
                client_secret: credentials.client_secret.clone(),
            })
            .await
            .map(|answer| answer.into_inner().access_token)
    }

    async fn user_token(&mut self) -> String {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        self.auth
            .sign_up(SignUpRequest {
                email: format!("ana.{unique}@example.com"),
                password: "Correct-Horse-9".into(),
                name: "Ana".into(),
                organization_name: format!("Taco Palace {unique}"),
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    async fn stop(self) {
        self.auth_database.close().await;
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }
}

async fn lease(channel: Channel, token: &str) -> Code {
    WorkerServiceClient::new(channel)
        .lease(authed(Default::default(), token))
        .await
        .unwrap_err()
        .code()
}

async fn get_cart(channel: Channel, token: &str) -> Code {
    CartServiceClient::new(channel)
        .get_cart(authed(Default::default(), token))
        .await
        .unwrap_err()
        .code()
}

/// A session nobody opened, in an organization nobody made.
fn unknown_login_session() -> trellis::session::v1::CheckLoginSessionRequest {
    trellis::session::v1::CheckLoginSessionRequest {
        organization_id: uuid::Uuid::new_v4().to_string(),
        session_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// OK (the unknown session is not live) once past the tenancy layer.
async fn internal_call(channel: Channel, token: &str) -> Code {
    match LoginSessionServiceClient::new(channel)
        .check_login_session(authed(unknown_login_session(), token))
        .await
    {
        Ok(answer) => {
            assert!(!answer.into_inner().live);
            Code::Ok
        }
        Err(status) => status.code(),
    }
}

/// Each kind of token passes the layer only where the contract admits it
/// (past the layer, the handlers refuse the empty requests).
async fn each_kind_of_token_reaches_only_its_own_rpcs(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let worker = fx.account(ServiceScope::Worker).await;
    let worker = fx.token(&worker).await.unwrap();
    let service = fx.account(ServiceScope::Service).await;
    let service = fx.token(&service).await.unwrap();
    let user = fx.user_token().await;
    let execution = fx.channel(ServiceName::Execution).await;
    let cart = fx.channel(ServiceName::Cart).await;
    let session = fx.channel(ServiceName::Session).await;

    assert_eq!(
        lease(execution.clone(), &worker).await,
        Code::InvalidArgument
    );
    assert_eq!(
        get_cart(cart.clone(), &worker).await,
        Code::PermissionDenied
    );
    assert_eq!(
        internal_call(session.clone(), &worker).await,
        Code::PermissionDenied
    );

    assert_eq!(
        lease(execution.clone(), &user).await,
        Code::PermissionDenied
    );
    // Past the layer: the handler refuses the empty session id.
    assert_eq!(get_cart(cart.clone(), &user).await, Code::InvalidArgument);
    assert_eq!(
        internal_call(session.clone(), &user).await,
        Code::PermissionDenied
    );

    assert_eq!(lease(execution, &service).await, Code::PermissionDenied);
    assert_eq!(get_cart(cart, &service).await, Code::PermissionDenied);
    assert_eq!(internal_call(session, &service).await, Code::Ok);
    fx.stop().await;
}

backend_suite!(
    each_kind_of_token_reaches_only_its_own_rpcs,
    "service accounts": sqlite, postgres
);

/// Wrong secrets, unknown clients and revoked accounts get one answer; a
/// revoked account's tokens stop working on every server within
/// --session-check-ttl.
async fn revoked_accounts_and_wrong_secrets_get_no_token(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let credentials = fx.account(ServiceScope::Worker).await;
    let token = fx.token(&credentials).await.unwrap();
    let execution = fx.channel(ServiceName::Execution).await;
    assert_eq!(
        lease(execution.clone(), &token).await,
        Code::InvalidArgument
    );

    let refused = |status: tonic::Status| (status.code(), status.message().to_owned());
    let invalid = (
        Code::Unauthenticated,
        "invalid client credentials".to_owned(),
    );
    let wrong_secret = Credentials {
        client_secret: format!("{}x", credentials.client_secret),
        ..credentials.clone()
    };
    assert_eq!(refused(fx.token(&wrong_secret).await.unwrap_err()), invalid);
    let unknown = Credentials {
        client_id: uuid::Uuid::new_v4().to_string(),
        ..credentials.clone()
    };
    assert_eq!(refused(fx.token(&unknown).await.unwrap_err()), invalid);
    let malformed = Credentials {
        client_id: "worker-1".into(),
        ..credentials.clone()
    };
    assert_eq!(
        fx.token(&malformed).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Any spelling of the id names the account.
    service_accounts::revoke(&fx.auth_database, &credentials.client_id.to_uppercase())
        .await
        .unwrap();
    assert_eq!(refused(fx.token(&credentials).await.unwrap_err()), invalid);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let ended = WorkerServiceClient::new(execution)
        .lease(authed(Default::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(
        (ended.code(), ended.message()),
        (Code::Unauthenticated, "service account revoked")
    );
    assert!(
        service_accounts::revoke(&fx.auth_database, &credentials.client_id)
            .await
            .is_err(),
        "revoked once"
    );
    fx.stop().await;
}

/// `trellis service-accounts register`: credentials chosen elsewhere (a
/// deployment's Secret) work; registering again is a no-op; another secret
/// or scope for the id, a weak secret or a revoked id is refused.
async fn registered_accounts_take_their_credentials_from_outside(extra: &[&str]) {
    let mut fx = Fixture::start(extra).await;
    let credentials = Credentials {
        client_id: uuid::Uuid::new_v4().to_string(),
        client_secret: "dev-only-secret-0123456789abcdefghijkl".into(),
    };
    let auth_database = fx.auth_database.clone();
    let register = |scope, secret: &str| {
        let database = auth_database.clone();
        let id = credentials.client_id.clone();
        let secret = secret.to_owned();
        async move { service_accounts::register(&database, "from-secret", scope, &id, &secret).await }
    };
    register(ServiceScope::Worker, &credentials.client_secret)
        .await
        .unwrap();
    register(ServiceScope::Worker, &credentials.client_secret)
        .await
        .unwrap();
    let token = fx.token(&credentials).await.unwrap();
    assert_eq!(
        lease(fx.channel(ServiceName::Execution).await, &token).await,
        Code::InvalidArgument,
        "a worker token reaches WorkerService"
    );
    let other_secret = register(
        ServiceScope::Worker,
        "another-secret-0123456789abcdefghijkl",
    )
    .await;
    assert!(other_secret.is_err(), "another secret for the same id");
    let other_scope = register(ServiceScope::Service, &credentials.client_secret).await;
    assert!(other_scope.is_err(), "another scope for the same id");
    let weak = service_accounts::register(
        &fx.auth_database,
        "weak",
        ServiceScope::Worker,
        &uuid::Uuid::new_v4().to_string(),
        "short",
    )
    .await;
    assert!(weak.is_err(), "a weak secret");
    for weak in ["a".repeat(40), "ab".repeat(20), "x".repeat(300)] {
        let refused = service_accounts::register(
            &fx.auth_database,
            "weak",
            ServiceScope::Worker,
            &uuid::Uuid::new_v4().to_string(),
            &weak,
        )
        .await;
        assert!(refused.is_err(), "{weak}");
    }
    let renamed = service_accounts::register(
        &fx.auth_database,
        "another-name",
        ServiceScope::Worker,
        &credentials.client_id,
        &credentials.client_secret,
    )
    .await;
    assert!(renamed.is_err(), "the same id under another name");
    service_accounts::revoke(&fx.auth_database, &credentials.client_id)
        .await
        .unwrap();
    let revoked = register(ServiceScope::Worker, &credentials.client_secret).await;
    assert!(revoked.is_err(), "a revoked id stays revoked");
    assert!(fx.token(&credentials).await.is_err());
    fx.stop().await;
}

backend_suite!(
    registered_accounts_take_their_credentials_from_outside,
    "service account registration": sqlite, postgres
);

backend_suite!(
    revoked_accounts_and_wrong_secrets_get_no_token,
    "service accounts": sqlite, postgres
);

/// A client calling as this service (no caller's token) fetches one token,
/// shares it between calls and renews it before it expires: with 5 s tokens,
/// 7 s of calls all pass, on two or three tokens.
#[tokio::test]
async fn a_service_client_renews_its_token_before_it_expires() {
    use std::time::{Duration, Instant};
    let fx = Fixture::start(&["--service-token-ttl", "5s"]).await;
    let credentials = fx.account(ServiceScope::Service).await;
    let tokens = std::sync::Arc::new(ServiceTokens::new(
        fx.channel(ServiceName::Auth).await,
        ServiceCredentials {
            client_id: credentials.client_id,
            client_secret: credentials.client_secret,
        },
        Duration::from_secs(2),
    ));
    // As a service's handler gets it: ServerContext::upstreams.
    let upstreams = Upstreams::new(
        [("session", fx.channel(ServiceName::Session).await)].into(),
        Some(tokens.clone()),
    );
    let channel = upstreams.as_service("session").unwrap();
    assert!(
        Upstreams::new(
            [("session", fx.channel(ServiceName::Session).await)].into(),
            None
        )
        .as_service("session")
        .is_none(),
        "no credentials, no calls as a service"
    );
    let mut internal = LoginSessionServiceClient::new(channel);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let answer = internal.check_login_session(unknown_login_session()).await;
        assert!(
            answer.as_ref().is_ok_and(|a| !a.get_ref().live),
            "call {calls} at {:?}: {answer:?}",
            started.elapsed()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls > 50, "{calls}");
    let fetched = tokens.fetched();
    assert!(
        (2..=3).contains(&fetched),
        "{fetched} tokens for {calls} calls"
    );
    fx.stop().await;
}

/// `trellis up` needs no manual step: on first start it makes a service
/// account for its own servers and keeps its credentials in the data dir
/// (0600); later starts reuse it while it is active.
#[tokio::test]
async fn trellis_up_provisions_its_own_service_account_once() {
    use trellis_auth::service_accounts::ServiceAccounts;
    let data_dir = temp_dir("service-accounts-up");
    let file = data_dir.join("service-account.json");
    let mut client_ids = Vec::new();
    for _start in 0..2 {
        let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
            .await
            .unwrap();
        let kept: Credentials = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let mut auth =
            AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
        let token = auth
            .issue_service_token(IssueServiceTokenRequest {
                client_id: kept.client_id.clone(),
                client_secret: kept.client_secret.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(token.scope, "service");
        let session = channel(running.address(ServiceName::Session).unwrap()).await;
        assert_eq!(
            internal_call(session, &token.access_token).await,
            Code::Ok,
            "an internal RPC takes it"
        );
        client_ids.push(kept.client_id);
        running.shutdown().await.unwrap();
    }
    assert_eq!(client_ids[0], client_ids[1], "made once, then reused");
    let url = trellis_store::default_sqlite_url(&data_dir, "auth");
    let database = Database::connect(&url, &DatabaseOptions::default())
        .await
        .unwrap();
    // The servers' account, and the built-in fulfillment worker's.
    let accounts = ServiceAccounts::new(database.clone()).list().await.unwrap();
    let mut names: Vec<(&str, ServiceScope)> = accounts
        .iter()
        .map(|a| (a.name.as_str(), a.scope))
        .collect();
    names.sort_by_key(|(name, _)| *name);
    assert_eq!(
        names,
        [
            ("trellis-up", ServiceScope::Service),
            ("trellis-up-fulfillment", ServiceScope::Worker)
        ]
    );
    database.close().await;
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// Service-token requests are limited per client address (every call
/// counts), with no per-account limit anyone could fill.
#[tokio::test]
async fn service_token_requests_are_limited_per_address() {
    // Without the built-in worker, whose own token would count here too.
    let mut fx = Fixture::start(&[
        "--issue-service-token-rate",
        "3/1m",
        "--fulfillment-workers",
        "0",
    ])
    .await;
    let credentials = fx.account(ServiceScope::Worker).await;
    let wrong = Credentials {
        client_secret: "wrong".into(),
        ..credentials.clone()
    };
    assert_eq!(
        fx.token(&wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    fx.token(&credentials).await.unwrap();
    fx.token(&credentials).await.unwrap();
    let limited = fx.token(&credentials).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    fx.stop().await;
}

/// Answers IssueServiceToken after 300 ms with tokens of `lifetime_secs`,
/// counting the questions.
#[derive(Clone)]
struct SlowAuth {
    asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    lifetime_secs: i64,
}

#[tonic::async_trait]
impl trellis::auth::v1::auth_service_server::AuthService for SlowAuth {
    async fn issue_service_token(
        &self,
        _: tonic::Request<trellis::auth::v1::IssueServiceTokenRequest>,
    ) -> Result<tonic::Response<trellis::auth::v1::IssueServiceTokenResponse>, tonic::Status> {
        let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Ok(tonic::Response::new(
            trellis::auth::v1::IssueServiceTokenResponse {
                access_token: format!("token-{n}"),
                expires_in: self.lifetime_secs,
                ..Default::default()
            },
        ))
    }
}

/// Renewal runs on its own: callers whose deadlines are shorter than Auth's
/// answer stop waiting without cancelling it, and a token due for renewal
/// keeps being handed out, at once, until the new one arrives.
#[tokio::test]
async fn renewing_the_service_token_neither_blocks_nor_is_cancelled_by_callers() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let auth = SlowAuth {
        asked: asked.clone(),
        lifetime_secs: 2,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(trellis::auth::v1::auth_service_server::AuthServiceServer::new(auth))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tokens = std::sync::Arc::new(ServiceTokens::new(
        channel(address).await,
        ServiceCredentials {
            client_id: "id".into(),
            client_secret: "secret".into(),
        },
        Duration::from_secs(2),
    ));
    let started = Instant::now();
    for _ in 0..20 {
        let hurried = tokio::time::timeout(Duration::from_millis(10), tokens.authorization());
        assert!(hurried.await.is_err(), "no token can be had in 10 ms");
    }
    let first = tokens.authorization().await.unwrap();
    assert_eq!(first, "Bearer token-0");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "one fetch, never cancelled"
    );

    // Due for renewal 1.6 s after it was asked for, expiring at 2 s: in
    // between, the held token still comes at once.
    tokio::time::sleep(Duration::from_millis(1700).saturating_sub(started.elapsed())).await;
    let due = Instant::now();
    assert_eq!(tokens.authorization().await.unwrap(), "Bearer token-0");
    assert!(
        due.elapsed() < Duration::from_millis(50),
        "{:?}",
        due.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(tokens.authorization().await.unwrap(), "Bearer token-1");
    assert_eq!(tokens.fetched(), 2);
    server.abort();
}
