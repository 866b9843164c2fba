//! `AuthSessionCheck` against a real gRPC server standing in for Auth: what
//! each answer of `CheckSession` becomes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::{CheckSessionRequest, CheckSessionResponse, Role as PbRole};
use trellis_tenancy::{
    AuthSessionCheck, Principal, Role, SessionCheck, SessionState, TenantContext,
};

/// Answers CheckSession with whatever the test put in `answer`.
#[derive(Clone)]
struct FakeAuth {
    answer: Arc<Mutex<Result<CheckSessionResponse, Code>>>,
    delay: Duration,
}

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn check_session(
        &self,
        request: Request<CheckSessionRequest>,
    ) -> Result<Response<CheckSessionResponse>, Status> {
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer the-callers-token",
            "asked with the caller's own credentials"
        );
        tokio::time::sleep(self.delay).await;
        let answer = *self.answer.lock().unwrap();
        answer
            .map(Response::new)
            .map_err(|code| Status::new(code, "scripted"))
    }
}

async fn fake_auth(delay: Duration) -> (AuthSessionCheck, FakeAuth) {
    let fake = FakeAuth {
        answer: Arc::new(Mutex::new(Err(Code::Internal))),
        delay,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = fake.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    // Long enough for a cold connection on a loaded CI machine (500 ms was
    // not), short of the slow fake's 5 s.
    (
        AuthSessionCheck::new(channel, Duration::from_millis(1500)),
        fake,
    )
}

fn user() -> Principal {
    Principal::User(TenantContext {
        org_id: uuid::Uuid::new_v4(),
        user_id: uuid::Uuid::new_v4(),
        role: Role::Admin,
        session_id: uuid::Uuid::new_v4(),
        token_id: uuid::Uuid::new_v4(),
        expires_at: 0,
    })
}

async fn ask(check: &AuthSessionCheck) -> Result<SessionState, Status> {
    check
        .check(&user(), "Bearer the-callers-token".parse().unwrap())
        .await
}

fn live(role: PbRole) -> Result<CheckSessionResponse, Code> {
    Ok(CheckSessionResponse {
        live: true,
        role: role as i32,
    })
}

#[tokio::test]
async fn answers_become_verdicts_and_refusals_never_end_a_session() {
    let (check, fake) = fake_auth(Duration::ZERO).await;
    for (role, expected) in [
        (PbRole::Admin, Some(Role::Admin)),
        (PbRole::Developer, Some(Role::Developer)),
        (PbRole::Viewer, Some(Role::Viewer)),
        (PbRole::Unspecified, None),
    ] {
        *fake.answer.lock().unwrap() = live(role);
        assert_eq!(ask(&check).await.unwrap(), SessionState::Live(expected));
    }
    *fake.answer.lock().unwrap() = Ok(CheckSessionResponse {
        live: false,
        role: PbRole::Admin as i32,
    });
    assert_eq!(ask(&check).await.unwrap(), SessionState::Ended);
    for code in [Code::Unauthenticated, Code::Unavailable, Code::Internal] {
        *fake.answer.lock().unwrap() = Err(code);
        let failed = ask(&check).await.unwrap_err();
        assert_eq!(failed.code(), code, "a failed check, not a verdict");
    }
}

#[tokio::test]
async fn a_slow_auth_is_unavailable_within_the_timeout() {
    let (check, fake) = fake_auth(Duration::from_secs(5)).await;
    *fake.answer.lock().unwrap() = live(PbRole::Admin);
    let started = std::time::Instant::now();
    let failed = ask(&check).await.unwrap_err();
    assert!(
        matches!(
            failed.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{failed:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
