use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use tonic::Status;

use trellis::common::v1::Caller;

use crate::claims::Principal;
use crate::context::CallContext;
use crate::session_guard::{SessionGuard, SessionState};
use crate::verifier::{AuthError, TokenVerifier};

/// Optional tenant hint from clients; checked against the token, never
/// trusted on its own.
pub const ORG_HINT_HEADER: &str = "x-trellis-org-id";

/// Identity headers a client might send hoping a handler trusts them. They are
/// removed before any handler runs; identity comes from the token only.
const SPOOFABLE_PREFIXES: [&str; 2] = ["x-trellis-", "x-forwarded-user"];
const SPOOFABLE_NAMES: [&str; 5] = [
    "x-user-id",
    "x-org-id",
    "x-tenant-id",
    "x-role",
    "x-remote-user",
];

/// Which callers an RPC accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepts {
    /// No token needed.
    Public,
    Users,
    Workers,
    /// Other Trellis servers (internal RPCs).
    Services,
    /// Any authenticated caller.
    Anyone,
}

impl Accepts {
    fn declared(caller: Caller) -> Accepts {
        match caller {
            Caller::Public => Accepts::Public,
            Caller::Unspecified | Caller::User => Accepts::Users,
            Caller::Worker => Accepts::Workers,
            Caller::Service => Accepts::Services,
            Caller::Any => Accepts::Anyone,
        }
    }

    fn admits(self, principal: &Principal) -> bool {
        matches!(
            (self, principal),
            (Accepts::Public | Accepts::Anyone, _)
                | (Accepts::Users, Principal::User(_))
                | (Accepts::Workers, Principal::Worker(_))
                | (Accepts::Services, Principal::Service(_))
        )
    }

    /// What a caller of another kind is told.
    fn refusal(self) -> Status {
        Status::permission_denied(match self {
            Accepts::Users => "this method is for users: present a user's access token",
            Accepts::Workers => "this method is for workers: present a worker token",
            Accepts::Services => "this method is internal to Trellis",
            Accepts::Public | Accepts::Anyone => "not permitted",
        })
    }
}

/// Who may call each method: what `proto/` declares (the
/// `trellis.common.v1.caller` option), health and reflection public, and
/// users for any other path.
#[derive(Clone, Debug, Default)]
pub struct MethodCallers {
    methods: HashMap<String, Accepts>,
    public_services: Vec<String>,
}

impl MethodCallers {
    /// Health and both reflection versions public; users everywhere else.
    pub fn standard() -> Self {
        MethodCallers::default()
            .with_public_service("grpc.health.v1.Health")
            .with_public_service("grpc.reflection.v1.ServerReflection")
            .with_public_service("grpc.reflection.v1alpha.ServerReflection")
    }

    /// [`MethodCallers::standard`] with every Trellis RPC as declared.
    pub fn from_contract() -> Self {
        trellis::METHODS
            .iter()
            .fold(MethodCallers::standard(), |callers, method| {
                callers.with_method(method.path, Accepts::declared(method.caller))
            })
    }

    /// One method by its full path, e.g. `/trellis.auth.v1.AuthService/Login`.
    pub fn with_method(mut self, path: impl Into<String>, accepts: Accepts) -> Self {
        self.methods.insert(path.into(), accepts);
        self
    }

    /// Every method of a service, e.g. `grpc.health.v1.Health`, needs no token.
    pub fn with_public_service(mut self, service: &str) -> Self {
        self.public_services.push(format!("/{service}/"));
        self
    }

    pub fn accepts(&self, path: &str) -> Accepts {
        if let Some(accepts) = self.methods.get(path) {
            return *accepts;
        }
        if self
            .public_services
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            Accepts::Public
        } else {
            Accepts::Users
        }
    }
}

/// Verifies the bearer JWT of every non-public call and puts the caller's
/// [`Principal`] (and, for a user, its [`crate::TenantContext`]) in the
/// request extensions; refuses with `UNAUTHENTICATED` (no valid token) or
/// `PERMISSION_DENIED` (a caller of another kind than the method accepts)
/// before the handler runs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    callers: Arc<MethodCallers>,
    sessions: Option<Arc<SessionGuard>>,
    refusals: Arc<RefusalLog>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>, callers: MethodCallers) -> Self {
        AuthLayer {
            verifier,
            callers: Arc::new(callers),
            sessions: None,
            refusals: Arc::new(RefusalLog::default()),
        }
    }

    /// Also refuse tokens whose login session has ended (logout, revocation).
    pub fn with_session_guard(mut self, guard: Option<Arc<SessionGuard>>) -> Self {
        self.sessions = guard;
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
            callers: self.callers.clone(),
            sessions: self.sessions.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    callers: Arc<MethodCallers>,
    sessions: Option<Arc<SessionGuard>>,
    refusals: Arc<RefusalLog>,
}

/// At most `per_second` lines a second from one kind of event, so a flood
/// of bad requests cannot fill the disk; the next line written says how
/// many were left out.
#[derive(Debug)]
pub struct LogBudget {
    /// `second << 16 | lines written in that second`, swapped as one.
    window: AtomicU64,
    suppressed: AtomicU64,
    per_second: u64,
}

impl LogBudget {
    pub const fn new(per_second: u16) -> Self {
        LogBudget {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            per_second: per_second as u64,
        }
    }

    /// `Some(lines left out since the last one)` if this line may be
    /// written now.
    pub fn admit(&self) -> Option<u64> {
        if self.admit_at(now_secs()) {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    fn admit_at(&self, now: u64) -> bool {
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, lines) = (current >> 16, current & 0xffff);
            let next = if second == now {
                if lines >= self.per_second {
                    return false;
                }
                current + 1
            } else {
                now << 16 | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Refused bearer tokens, logged at INFO so an operator sees an attack or a
/// broken client: the reason and the address, never the token, within a
/// budget of [`REFUSALS_LOGGED_PER_SECOND`].
#[derive(Debug)]
pub(crate) struct RefusalLog(LogBudget);

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog(LogBudget::new(REFUSALS_LOGGED_PER_SECOND))
    }
}

pub(crate) const REFUSALS_LOGGED_PER_SECOND: u16 = 10;
/// Longer method paths are cut in the log line.
const MAX_LOGGED_PATH: usize = 128;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RefusalLog {
    pub(crate) fn record(&self, reason: &str, path: &str, client: Option<IpAddr>) {
        let Some(suppressed) = self.0.admit() else {
            return;
        };
        let method = truncated(path, MAX_LOGGED_PATH);
        match client {
            Some(client) => tracing::info!(
                reason,
                client_address = %client,
                method,
                suppressed,
                "bearer token refused"
            ),
            None => tracing::info!(reason, method, suppressed, "bearer token refused"),
        }
    }
}

/// At most `limit` bytes of `text`, cut on a character boundary: for
/// request strings on their way into a log line.
pub fn truncated(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn client_address<B>(request: &http::Request<B>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<CallContext>()
        .and_then(CallContext::client_address)
}

fn strip_spoofable_headers(headers: &mut HeaderMap) -> Option<http::HeaderValue> {
    static ORG_HINT: http::HeaderName = http::HeaderName::from_static(ORG_HINT_HEADER);
    let hint = headers.get(&ORG_HINT).cloned();
    let spoofable: Vec<_> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            SPOOFABLE_PREFIXES.iter().any(|p| name.starts_with(p))
                || SPOOFABLE_NAMES.contains(&name)
        })
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    hint
}

/// The token of `authorization: Bearer <token>` (scheme case-insensitive).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token.trim())
}

/// The caller's kind against what the method accepts, then the tenant hint
/// against the token (a service account has no tenant to match).
fn check_caller(
    accepts: Accepts,
    hint: Option<&http::HeaderValue>,
    principal: &Principal,
) -> Result<(), Status> {
    if !accepts.admits(principal) {
        return Err(accepts.refusal());
    }
    let Some(hint) = hint else { return Ok(()) };
    let Principal::User(tenant) = principal else {
        return Err(Status::permission_denied(
            "x-trellis-org-id does not match the organization of the access token",
        ));
    };
    let matches = hint
        .to_str()
        .ok()
        .and_then(|h| uuid::Uuid::parse_str(h.trim()).ok())
        .is_some_and(|org| org == tenant.org_id);
    if matches {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "x-trellis-org-id does not match the organization of the access token",
        ))
    }
}

fn reject<B: Default>(status: Status) -> http::Response<B> {
    status.into_http()
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let hint = strip_spoofable_headers(request.headers_mut());
        let accepts = self.callers.accepts(request.uri().path());
        if accepts == Accepts::Public {
            return Box::pin(self.inner.call(request));
        }
        let token = match bearer_token(request.headers()) {
            Ok(token) => token,
            Err(error) => {
                self.refusals.record(
                    error.reason(),
                    request.uri().path(),
                    client_address(&request),
                );
                return Box::pin(std::future::ready(Ok(reject(error.to_status()))));
            }
        };

        // Fast path: a token verified before, of a session whose state is
        // cached, costs two cache lookups.
        let cached = self.verifier.cached(token);
        if let Some(principal) = &cached {
            if let Err(status) = check_caller(accepts, hint.as_ref(), principal) {
                let (path, client) = (request.uri().path(), client_address(&request));
                self.refusals.record("permission_denied", path, client);
                return Box::pin(std::future::ready(Ok(reject(status))));
            }
            let session = match &self.sessions {
                None => Some(None),
                Some(guard) => guard.cached(&principal.session_key()).known().map(Some),
            };
            if let Some(session) = session {
                return match admit(&mut request, principal.clone(), session, &self.refusals) {
                    Ok(()) => Box::pin(self.inner.call(request)),
                    Err(status) => Box::pin(std::future::ready(Ok(reject(status)))),
                };
            }
        }

        let token = token.to_owned();
        let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
        let verifier = self.verifier.clone();
        let sessions = self.sessions.clone();
        let refusals = self.refusals.clone();
        // The clone is not ready; keep the one poll_ready was called on.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let principal = match cached {
                Some(principal) => principal,
                None => match verifier.verify(&token).await {
                    Ok(principal) => principal,
                    Err(error) => {
                        refusals.record(
                            error.reason(),
                            request.uri().path(),
                            client_address(&request),
                        );
                        return Ok(reject(error.to_status()));
                    }
                },
            };
            if let Err(status) = check_caller(accepts, hint.as_ref(), &principal) {
                let (path, client) = (request.uri().path(), client_address(&request));
                refusals.record("permission_denied", path, client);
                return Ok(reject(status));
            }
            let session = match (sessions, authorization) {
                (Some(guard), Some(authorization)) => {
                    match guard.cached(&principal.session_key()).known() {
                        Some(known) => Some(known),
                        None => match guard.ask(&principal, authorization).await {
                            Ok(answer) => Some(answer),
                            Err(status) => return Ok(reject(status)),
                        },
                    }
                }
                _ => None,
            };
            match admit(&mut request, principal, session, &refusals) {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(reject(status)),
            }
        })
    }
}

/// The last step of both paths, once the session's state is known (`None`:
/// no session guard): an ended session is refused; otherwise the handler
/// gets the caller, a user with its role as of now when Auth said it.
fn admit<B>(
    request: &mut http::Request<B>,
    mut principal: Principal,
    session: Option<SessionState>,
    refusals: &RefusalLog,
) -> Result<(), Status> {
    match session {
        Some(SessionState::Ended) => {
            refusals.record(
                "session_ended",
                request.uri().path(),
                client_address(request),
            );
            return Err(session_ended(&principal));
        }
        Some(SessionState::Live(Some(role))) => {
            if let Principal::User(tenant) = &mut principal {
                tenant.role = role;
            }
        }
        Some(SessionState::Live(None)) | None => {}
    }
    record_caller(&principal);
    if let Principal::User(tenant) = &principal {
        request.extensions_mut().insert(tenant.clone());
    }
    request.extensions_mut().insert(principal);
    Ok(())
}

/// A user's login session, or a worker's or service's account, has ended.
pub(crate) fn session_ended(principal: &Principal) -> Status {
    Status::unauthenticated(match principal {
        Principal::User(_) => "session ended",
        Principal::Worker(_) | Principal::Service(_) => "service account revoked",
    })
}

/// Fills the caller fields of the per-RPC span opened by the runtime.
fn record_caller(principal: &Principal) {
    let span = tracing::Span::current();
    match principal {
        Principal::User(tenant) => {
            span.record("org", tracing::field::display(tenant.org_id));
            span.record("user", tracing::field::display(tenant.user_id));
        }
        Principal::Worker(identity) | Principal::Service(identity) => {
            span.record(
                "user",
                tracing::field::display(format_args!(
                    "{}:{}",
                    identity.kind.scope(),
                    identity.account_id
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_come_from_the_contract_by_exact_path_and_default_to_users() {
        let callers = MethodCallers::from_contract();
        for (path, accepts) in [
            ("/trellis.auth.v1.AuthService/Login", Accepts::Public),
            (
                "/trellis.auth.v1.OrganizationService/AcceptInvitation",
                Accepts::Public,
            ),
            (
                "/trellis.auth.v1.AuthService/IssueServiceToken",
                Accepts::Public,
            ),
            ("/trellis.auth.v1.AuthService/CheckSession", Accepts::Anyone),
            (
                "/trellis.execution.v1.WorkerService/Lease",
                Accepts::Workers,
            ),
            (
                "/trellis.session.v1.LoginSessionService/OpenLoginSession",
                Accepts::Services,
            ),
            ("/trellis.auth.v1.AuthService/WhoAmI", Accepts::Users),
            ("/grpc.health.v1.Health/Check", Accepts::Public),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Accepts::Public,
            ),
            // Near misses are nobody's public method.
            ("/trellis.auth.v1.AuthService/LoginX", Accepts::Users),
            ("/grpc.health.v1.HealthX/Check", Accepts::Users),
            ("/no.such.Service/Method", Accepts::Users),
        ] {
            assert_eq!(callers.accepts(path), accepts, "{path}");
        }
        assert_eq!(
            MethodCallers::standard().accepts("/trellis.auth.v1.AuthService/Login"),
            Accepts::Users
        );
    }

    #[test]
    fn log_lines_are_budgeted_per_second() {
        let budget = LogBudget::new(10);
        let admitted = (0..50).filter(|_| budget.admit_at(1_000)).count();
        assert_eq!(admitted, 10);
        assert!(budget.admit_at(1_001), "a new second, a new budget");
        assert_eq!((0..50).filter(|_| budget.admit_at(1_001)).count(), 9);
        // What was left out is told on the next line written.
        let budget = LogBudget::new(1);
        assert_eq!(budget.admit(), Some(0));
        let left_out = (0..5).filter(|_| budget.admit().is_none()).count();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(budget.admit(), Some(left_out as u64));
    }

    /// Ready only every other poll, counting the polls.
    #[derive(Clone, Default)]
    struct Reluctant(Arc<std::sync::atomic::AtomicUsize>);

    impl tower::Service<http::Request<()>> for Reluctant {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let polls = self.0.fetch_add(1, Ordering::SeqCst);
            if polls.is_multiple_of(2) {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(String::new())))
        }
    }

    #[test]
    fn readiness_is_the_inner_services() {
        use tower::Layer;
        let jwks = Arc::new(crate::JwksCache::new(
            Arc::new(crate::StaticJwks::default()),
            std::time::Duration::ZERO,
        ));
        let verifier = Arc::new(TokenVerifier::new(
            jwks,
            crate::VerifierConfig {
                issuer: "trellis".into(),
                audience: "trellis".into(),
                leeway_secs: 0,
                max_lifetime_secs: 60,
                cache_capacity: 1,
            },
        ));
        let inner = Reluctant::default();
        let polls = inner.0.clone();
        let mut service = AuthLayer::new(verifier, MethodCallers::standard()).layer(inner);
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        assert!(tower::Service::poll_ready(&mut service, &mut context).is_pending());
        assert!(tower::Service::poll_ready(&mut service, &mut context).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_caller_is_recorded_on_the_rpc_span() {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || Captured(writer.clone())),
        );
        let tenant = crate::TenantContext {
            org_id: uuid::Uuid::new_v4(),
            user_id: uuid::Uuid::new_v4(),
            role: crate::Role::Viewer,
            session_id: uuid::Uuid::new_v4(),
            token_id: uuid::Uuid::new_v4(),
            expires_at: 0,
        };
        tracing::subscriber::with_default(subscriber, || {
            // Interest another thread cached without a subscriber: ask again.
            tracing::callsite::rebuild_interest_cache();
            let span = tracing::info_span!(
                "rpc",
                org = tracing::field::Empty,
                user = tracing::field::Empty
            );
            let _entered = span.enter();
            record_caller(&Principal::User(tenant.clone()));
            tracing::info!("handled");
        });
        let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
        assert!(text.contains(&format!("org={}", tenant.org_id)), "{text}");
        assert!(text.contains(&format!("user={}", tenant.user_id)), "{text}");
    }

    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logged_paths_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("/a/b", 128), "/a/b");
        assert_eq!(truncated("ééé", 3), "é");
        assert_eq!(truncated(&"x".repeat(1000), 128).len(), 128);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthError::MalformedHeader));
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthError::MalformedHeader));
        headers.remove("authorization");
        assert_eq!(bearer_token(&headers), Err(AuthError::Missing));
    }
}
