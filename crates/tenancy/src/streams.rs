//! The rules every server stream lives by, whatever its handler does. A
//! stream ends, with trailers the client can act on, when
//! - its access token expires or stops verifying (its key retired)
//!   (UNAUTHENTICATED: refresh and reopen),
//! - its login session ends or its service account is revoked
//!   (UNAUTHENTICATED; looked at at least every `--session-check-ttl`),
//! - its caller's `grpc-timeout` passes (DEADLINE_EXCEEDED; the server's
//!   `--request-timeout` bounds unary calls and a stream's first response,
//!   never a stream's life),
//! - the server stops taking calls (UNAVAILABLE: reconnect, which lands on
//!   another replica since this one has sent GOAWAY);
//!
//! and an organization, a user within it, a worker account, and a client
//! address for public streams each hold at most so many open streams per
//! server (RESOURCE_EXHAUSTED). Public streams (health `Watch`, reflection)
//! have a pool of their own and a lifetime, so holding them open costs
//! users nothing.
//!
//! Back-pressure needs nothing here: hyper polls a response body only while
//! the client's HTTP/2 window has room, so a slow reader leaves at most one
//! window plus one encoded chunk waiting on the server. The same means a
//! reader that stops reading altogether is only ended once it reads again
//! (or resets, or its connection dies), and sends nothing past the end: its
//! stream keeps its slot meanwhile (a logout does not free it), which keeps
//! the memory such streams hold within the caps; one user's stalled streams
//! take at most its per-user share of the organization's.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Sleep;
use tonic::Status;
use uuid::Uuid;

use crate::claims::Principal;
use crate::client_address::client_network;
use crate::context::CallContext;
use crate::jwks::BoxFuture;
use crate::server::{LogBudget, bearer_token, session_ended};
use crate::session_guard::{SessionGuard, SessionState};
use crate::verifier::TokenVerifier;

/// Streams that are not Trellis RPCs but live as long: health `Watch` and
/// reflection. Public: no token, so they count per client address, in a
/// pool of their own, and end after [`PUBLIC_STREAM_LIFETIME`].
const PUBLIC_STREAMING_METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// A public stream ends (UNAVAILABLE, reconnect) after this long, so one
/// cannot be held for ever.
const PUBLIC_STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// How often a stream's token is verified again on a server without a
/// session guard (Auth's own).
const RECHECK_WITHOUT_GUARD: Duration = Duration::from_secs(5);

/// Lines a second about streams ended by the rules, and about streams
/// refused at a cap, per process.
static STREAM_ENDS_LOGGED: LogBudget = LogBudget::new(10);
static STREAM_REFUSALS_LOGGED: LogBudget = LogBudget::new(10);

/// In a stream's response extensions: set once the rules end it, so the
/// access log does not report the end (a shutdown's UNAVAILABLE, say) as a
/// server fault; the rules log it themselves.
#[derive(Clone, Debug, Default)]
pub struct EndedByRules(Arc<AtomicBool>);

impl EndedByRules {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How many streams may be open at once on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Per organization (users), and per worker account.
    pub per_org: usize,
    /// Per user within an organization; and per client address for public
    /// streams.
    pub per_user: usize,
    /// Authenticated streams of all callers together.
    pub total: usize,
    /// Public streams of all clients together, counted apart.
    pub public_total: usize,
}

/// Applies the stream rules to the contract's streaming methods (and
/// health `Watch`, reflection); every other call passes untouched. Goes
/// inside [`crate::AuthLayer`], whose [`Principal`] it reads.
#[derive(Clone)]
pub struct StreamLayer {
    streaming: Arc<HashSet<&'static str>>,
    slots: Arc<StreamSlots>,
    verifier: Arc<TokenVerifier>,
    sessions: Option<Arc<SessionGuard>>,
    closing: watch::Receiver<bool>,
}

impl StreamLayer {
    /// `closing` turns true when the server stops taking calls; `verifier`
    /// is the server's, so a stream ends when its token would be refused.
    pub fn new(
        limits: StreamLimits,
        closing: watch::Receiver<bool>,
        verifier: Arc<TokenVerifier>,
    ) -> Self {
        let streaming = trellis::METHODS
            .iter()
            .filter(|method| method.server_streaming)
            .map(|method| method.path)
            .chain(PUBLIC_STREAMING_METHODS)
            .collect();
        StreamLayer {
            streaming: Arc::new(streaming),
            slots: Arc::new(StreamSlots::new(limits)),
            verifier,
            sessions: None,
            closing,
        }
    }

    /// Also end streams whose session ends, asking `guard`.
    pub fn with_session_guard(mut self, guard: Option<Arc<SessionGuard>>) -> Self {
        self.sessions = guard;
        self
    }
}

impl<S> tower::Layer<S> for StreamLayer {
    type Service = StreamRules<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamRules {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StreamRules<S> {
    inner: S,
    layer: StreamLayer,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for StreamRules<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<StreamBody<ResBody>>;
    type Error = S::Error;
    type Future = RulesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(&method) = self.layer.streaming.get(request.uri().path()) else {
            return RulesFuture::Admitted {
                inner: self.inner.call(request),
                watch: None,
            };
        };
        let principal = request.extensions().get::<Principal>().cloned();
        let client = request
            .extensions()
            .get::<CallContext>()
            .and_then(CallContext::client_address);
        let slot = match self.layer.slots.acquire(principal.as_ref(), client) {
            Ok(slot) => slot,
            Err(status) => {
                if let Some(suppressed) = STREAM_REFUSALS_LOGGED.admit() {
                    tracing::info!(
                        method,
                        reason = status.message(),
                        suppressed,
                        "stream refused: a cap is reached"
                    );
                }
                return RulesFuture::Refused {
                    status: Some(status),
                };
            }
        };
        let watch = StreamWatch::new(method, slot, principal, &request, &self.layer);
        RulesFuture::Admitted {
            inner: self.inner.call(request),
            watch: Some(Box::new(watch)),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = RulesFutureProjection]
    pub enum RulesFuture<F> {
        Refused { status: Option<Status> },
        Admitted { #[pin] inner: F, watch: Option<Box<StreamWatch>> },
    }
}

impl<F, ResBody, E> Future for RulesFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = Result<http::Response<StreamBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RulesFutureProjection::Refused { status } => {
                let status = status
                    .take()
                    .unwrap_or_else(|| Status::internal("polled after completion"));
                Poll::Ready(Ok(status.into_http::<ResBody>().map(StreamBody::plain)))
            }
            RulesFutureProjection::Admitted { inner, watch } => {
                let mut response = ready!(inner.poll(cx))?;
                let watch = watch.take();
                if let Some(watch) = &watch {
                    response
                        .extensions_mut()
                        .insert(watch.ended_by_rules.clone());
                }
                Poll::Ready(Ok(response.map(|inner| StreamBody { inner, watch })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body; for a stream, ended by the rules when one applies.
    pub struct StreamBody<B> {
        #[pin]
        inner: B,
        watch: Option<Box<StreamWatch>>,
    }
}

impl<B: Default> Default for StreamBody<B> {
    fn default() -> Self {
        StreamBody::plain(B::default())
    }
}

impl<B> StreamBody<B> {
    fn plain(inner: B) -> Self {
        StreamBody { inner, watch: None }
    }
}

impl<B: Body> Body for StreamBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(watch) = this.watch else {
            return this.inner.poll_frame(cx);
        };
        if watch.ended {
            return Poll::Ready(None);
        }
        // Before any data: nothing goes out once a rule says the stream is over.
        if let Some(ending) = watch.poll_end(cx) {
            watch.ended = true;
            watch.ended_by_rules.0.store(true, Ordering::Relaxed);
            watch.log_end(&ending);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers_of(&ending.status)))));
        }
        let frame = ready!(this.inner.poll_frame(cx));
        let last = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        watch.ended |= last;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.watch.as_ref().is_some_and(|watch| watch.ended) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.watch {
            // Trailers of its own may still come.
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

fn trailers_of(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    trailers
}

/// Why the rules end a stream.
struct Ending {
    status: Status,
    /// The caller's own doing or plain housekeeping (its deadline, a public
    /// stream's lifetime): logged at DEBUG only.
    routine: bool,
}

#[derive(Clone, Copy)]
enum Timed {
    TokenExpiry,
    CallerDeadline,
    PublicLifetime,
}

impl Timed {
    fn ending(self) -> Ending {
        match self {
            Timed::TokenExpiry => Ending {
                status: Status::unauthenticated(
                    "access token expired: refresh it and reopen the stream",
                ),
                routine: false,
            },
            Timed::CallerDeadline => Ending {
                status: Status::deadline_exceeded("the caller's deadline passed"),
                routine: true,
            },
            Timed::PublicLifetime => Ending {
                status: Status::unavailable("stream lifetime reached: reconnect"),
                routine: true,
            },
        }
    }
}

/// The timers and checks of one open stream.
pub struct StreamWatch {
    method: &'static str,
    /// The organization or account, for the log line.
    owner: Option<Uuid>,
    _slot: StreamSlot,
    /// The earliest timed end, and which it is.
    ends_at: Option<(Instant, Timed)>,
    recheck: Option<Recheck>,
    closing: BoxFuture<()>,
    timer: Pin<Box<Sleep>>,
    ended: bool,
    ended_by_rules: EndedByRules,
}

/// Verifies the token again, and asks about the session, every so often.
struct Recheck {
    verifier: Arc<TokenVerifier>,
    guard: Option<Arc<SessionGuard>>,
    principal: Principal,
    token: Arc<str>,
    authorization: HeaderValue,
    next: Instant,
    pending: Option<BoxFuture<Result<Instant, Status>>>,
}

impl Recheck {
    fn start(&self) -> BoxFuture<Result<Instant, Status>> {
        let verifier = self.verifier.clone();
        let guard = self.guard.clone();
        let principal = self.principal.clone();
        let token = self.token.clone();
        let authorization = self.authorization.clone();
        Box::pin(async move {
            // A retired or replaced key ends the stream as it would a call.
            verifier
                .verify(&token)
                .await
                .map_err(|error| error.to_status())?;
            let Some(guard) = guard else {
                return Ok(Instant::now() + RECHECK_WITHOUT_GUARD);
            };
            match guard.recheck(&principal, authorization).await? {
                (SessionState::Ended, _) => Err(session_ended(&principal)),
                (SessionState::Live(_), next) => Ok(next),
            }
        })
    }
}

fn earliest(a: Option<(Instant, Timed)>, b: Option<(Instant, Timed)>) -> Option<(Instant, Timed)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl StreamWatch {
    fn new<B>(
        method: &'static str,
        slot: StreamSlot,
        principal: Option<Principal>,
        request: &http::Request<B>,
        layer: &StreamLayer,
    ) -> StreamWatch {
        let now = Instant::now();
        // Beyond what an Instant can hold is never.
        let expiry = principal.as_ref().and_then(|principal| {
            let leeway = i64::try_from(layer.verifier.leeway().as_secs()).unwrap_or(i64::MAX);
            let left = principal.expires_at().saturating_add(leeway) - unix_now();
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
            Some((now.checked_add(left)?, Timed::TokenExpiry))
        });
        let lifetime = principal
            .is_none()
            .then(|| (now + PUBLIC_STREAM_LIFETIME, Timed::PublicLifetime));
        let deadline = request
            .extensions()
            .get::<CallContext>()
            .and_then(CallContext::remaining)
            .and_then(|left| Some((now.checked_add(left)?, Timed::CallerDeadline)));
        let recheck = principal.as_ref().and_then(|principal| {
            let token = bearer_token(request.headers()).ok()?;
            let authorization = request.headers().get(http::header::AUTHORIZATION)?;
            let guard = layer.sessions.clone();
            Some(Recheck {
                verifier: layer.verifier.clone(),
                // When the verdict the stream was admitted on goes stale.
                next: guard.as_ref().map_or(now + RECHECK_WITHOUT_GUARD, |guard| {
                    guard.next_check(&principal.session_key())
                }),
                guard,
                principal: principal.clone(),
                token: Arc::from(token),
                authorization: authorization.clone(),
                pending: None,
            })
        });
        let mut closing = layer.closing.clone();
        StreamWatch {
            method,
            owner: principal.as_ref().map(|principal| match principal {
                Principal::User(tenant) => tenant.org_id,
                Principal::Worker(identity) | Principal::Service(identity) => identity.account_id,
            }),
            _slot: slot,
            ends_at: earliest(earliest(expiry, lifetime), deadline),
            recheck,
            closing: Box::pin(async move {
                // The sender gone means the server is gone: stop too.
                let _ = closing.wait_for(|closing| *closing).await;
            }),
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            ended: false,
            ended_by_rules: EndedByRules::default(),
        }
    }

    /// Why the stream must end now, if a rule says so; otherwise arranges
    /// to be woken when one might.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Option<Ending> {
        if self.closing.as_mut().poll(cx).is_ready() {
            return Some(Ending {
                status: Status::unavailable("server shutting down: reconnect to another replica"),
                routine: false,
            });
        }
        loop {
            let now = Instant::now();
            if let Some((at, timed)) = self.ends_at
                && at <= now
            {
                return Some(timed.ending());
            }
            if let Some(recheck) = &mut self.recheck {
                if recheck.pending.is_none() && recheck.next <= now {
                    recheck.pending = Some(recheck.start());
                }
                if let Some(pending) = &mut recheck.pending {
                    match pending.as_mut().poll(cx) {
                        Poll::Pending => {}
                        Poll::Ready(Ok(next)) => {
                            recheck.pending = None;
                            // Never sooner than a tick from now: no spinning.
                            recheck.next = next.max(now + Duration::from_millis(50));
                        }
                        Poll::Ready(Err(status)) => {
                            return Some(Ending {
                                status,
                                routine: false,
                            });
                        }
                    }
                }
            }
            let recheck_at = self
                .recheck
                .as_ref()
                .filter(|recheck| recheck.pending.is_none())
                .map(|recheck| recheck.next);
            let wake = match (self.ends_at.map(|(at, _)| at), recheck_at) {
                (Some(a), Some(b)) => a.min(b),
                // Nothing timed: only shutdown (or a pending check) can end it.
                (a, b) => a.or(b)?,
            };
            if self.timer.deadline() != wake.into() {
                self.timer.as_mut().reset(wake.into());
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }

    fn log_end(&self, ending: &Ending) {
        let (code, reason) = (ending.status.code(), ending.status.message());
        if ending.routine {
            tracing::debug!(
                method = self.method,
                ?code,
                reason,
                "stream ended by the server"
            );
            return;
        }
        let Some(suppressed) = STREAM_ENDS_LOGGED.admit() else {
            return;
        };
        match self.owner {
            Some(owner) => tracing::info!(
                method = self.method,
                owner = %owner,
                ?code,
                reason,
                suppressed,
                "stream ended by the server"
            ),
            None => tracing::info!(
                method = self.method,
                ?code,
                reason,
                suppressed,
                "stream ended by the server"
            ),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// What a stream counts against, beside its pool's total.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Counted {
    Organization(Uuid),
    User(Uuid),
    Account(Uuid),
    Client(IpAddr),
}

impl Counted {
    fn refusal(self, limit: usize) -> Status {
        let whose = match self {
            Counted::Organization(_) => "this organization",
            Counted::User(_) => "this user",
            Counted::Account(_) => "this account",
            Counted::Client(_) => "this address",
        };
        Status::resource_exhausted(format!(
            "too many open streams for {whose} on this server (at most {limit}): close one first"
        ))
    }
}

/// Open streams, per pool and per what they count against. The map holds
/// only keys with an open stream, so it is bounded by the pools' totals.
struct StreamSlots {
    limits: StreamLimits,
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    authenticated: usize,
    public: usize,
    per_key: HashMap<Counted, usize>,
}

impl StreamSlots {
    fn new(limits: StreamLimits) -> Self {
        StreamSlots {
            limits,
            open: Mutex::new(OpenStreams::default()),
        }
    }

    /// The caps a caller's stream counts against. Trellis's own servers
    /// (service tokens) count in the total only: they act for many
    /// organizations at once.
    fn caps(
        &self,
        principal: Option<&Principal>,
        client: Option<IpAddr>,
    ) -> [Option<(Counted, usize)>; 2] {
        let StreamLimits {
            per_org, per_user, ..
        } = self.limits;
        match principal {
            Some(Principal::User(tenant)) => [
                Some((Counted::Organization(tenant.org_id), per_org)),
                Some((Counted::User(tenant.user_id), per_user)),
            ],
            Some(Principal::Worker(identity)) => {
                [Some((Counted::Account(identity.account_id), per_org)), None]
            }
            Some(Principal::Service(_)) => [None, None],
            None => [
                client.map(|client| (Counted::Client(client_network(client)), per_user)),
                None,
            ],
        }
    }

    fn acquire(
        self: &Arc<Self>,
        principal: Option<&Principal>,
        client: Option<IpAddr>,
    ) -> Result<StreamSlot, Status> {
        let public = principal.is_none();
        let caps = self.caps(principal, client);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (count, limit) = if public {
            (open.public, self.limits.public_total)
        } else {
            (open.authenticated, self.limits.total)
        };
        if count >= limit {
            return Err(Status::resource_exhausted(
                "too many open streams on this server: retry later",
            ));
        }
        for (key, limit) in caps.iter().flatten() {
            if open.per_key.get(key).copied().unwrap_or(0) >= *limit {
                return Err(key.refusal(*limit));
            }
        }
        for (key, _) in caps.iter().flatten() {
            *open.per_key.entry(*key).or_default() += 1;
        }
        if public {
            open.public += 1;
        } else {
            open.authenticated += 1;
        }
        Ok(StreamSlot {
            slots: self.clone(),
            public,
            keys: caps.map(|cap| cap.map(|(key, _)| key)),
        })
    }
}

/// One open stream's place; given back when the stream's body is dropped.
struct StreamSlot {
    slots: Arc<StreamSlots>,
    public: bool,
    keys: [Option<Counted>; 2],
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.public {
            open.public -= 1;
        } else {
            open.authenticated -= 1;
        }
        for key in self.keys.iter().flatten() {
            if let Some(count) = open.per_key.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.per_key.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Role, ServiceIdentity, ServiceKind, TenantContext};

    fn user(org: Uuid, user: Uuid) -> Principal {
        Principal::User(TenantContext {
            org_id: org,
            user_id: user,
            role: Role::Viewer,
            session_id: Uuid::new_v4(),
            token_id: Uuid::new_v4(),
            expires_at: 0,
        })
    }

    fn limited(
        per_org: usize,
        per_user: usize,
        total: usize,
        public_total: usize,
    ) -> Arc<StreamSlots> {
        Arc::new(StreamSlots::new(StreamLimits {
            per_org,
            per_user,
            total,
            public_total,
        }))
    }

    #[test]
    fn slots_are_capped_per_organization_per_user_and_in_all_and_given_back() {
        let slots = limited(3, 2, 4, 1);
        let (org, other_org) = (Uuid::new_v4(), Uuid::new_v4());
        let (ana, bea) = (user(org, Uuid::new_v4()), user(org, Uuid::new_v4()));
        let first = slots.acquire(Some(&ana), None).unwrap();
        let _second = slots.acquire(Some(&ana), None).unwrap();
        let refused = slots.acquire(Some(&ana), None).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("this user"), "{refused:?}");
        let _third = slots.acquire(Some(&bea), None).unwrap();
        let refused = slots.acquire(Some(&bea), None).err().unwrap();
        assert!(
            refused
                .message()
                .contains("this organization on this server (at most 3)"),
            "{refused:?}"
        );
        let _elsewhere = slots
            .acquire(Some(&user(other_org, Uuid::new_v4())), None)
            .unwrap();
        // Four open: the server's total is reached...
        let refused = slots.acquire(Some(&user(Uuid::new_v4(), Uuid::new_v4())), None);
        assert!(refused.err().unwrap().message().contains("on this server"));
        // ...which public streams do not share.
        let _public = slots
            .acquire(None, Some("10.0.0.1".parse().unwrap()))
            .unwrap();
        drop(first);
        let _again = slots.acquire(Some(&ana), None).unwrap();
    }

    #[test]
    fn public_streams_count_per_address_apart_from_users() {
        let slots = limited(10, 2, 10, 10);
        let address: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        let _a = slots.acquire(None, Some(address)).unwrap();
        let _b = slots.acquire(None, Some(neighbour)).unwrap();
        // One /64, one client.
        let refused = slots.acquire(None, Some(address)).err().unwrap();
        assert!(refused.message().contains("this address"), "{refused:?}");
        let _c = slots
            .acquire(None, Some("2001:db8:1::1".parse().unwrap()))
            .unwrap();
        let _user = slots
            .acquire(Some(&user(Uuid::new_v4(), Uuid::new_v4())), None)
            .unwrap();
    }

    #[test]
    fn service_streams_count_in_the_total_only_and_workers_per_account() {
        let slots = limited(1, 1, 3, 1);
        let identity = |kind| ServiceIdentity {
            account_id: Uuid::new_v4(),
            kind,
            token_id: Uuid::new_v4(),
            expires_at: 0,
        };
        let service = Principal::Service(identity(ServiceKind::Service));
        let _one = slots.acquire(Some(&service), None).unwrap();
        let _two = slots.acquire(Some(&service), None).unwrap();
        let worker = Principal::Worker(identity(ServiceKind::Worker));
        let _three = slots.acquire(Some(&worker), None).unwrap();
        assert!(slots.acquire(Some(&worker), None).is_err());
    }

    #[test]
    fn keys_that_close_their_last_stream_leave_the_map_and_refusals_add_none() {
        let slots = limited(1, 1, 10, 10);
        let held: Vec<_> = (0..5)
            .map(|_| {
                slots
                    .acquire(Some(&user(Uuid::new_v4(), Uuid::new_v4())), None)
                    .unwrap()
            })
            .collect();
        assert_eq!(slots.open.lock().unwrap().per_key.len(), 10);
        drop(held);
        let open = slots.open.lock().unwrap();
        assert_eq!((open.authenticated, open.per_key.len()), (0, 0));
        drop(open);
        let none = limited(0, 0, 10, 10);
        for _ in 0..5 {
            assert!(
                none.acquire(Some(&user(Uuid::new_v4(), Uuid::new_v4())), None)
                    .is_err()
            );
        }
        assert_eq!(none.open.lock().unwrap().per_key.len(), 0);
    }

    #[test]
    fn the_contracts_streams_are_known() {
        let streaming: HashSet<&str> = trellis::METHODS
            .iter()
            .filter(|method| method.server_streaming)
            .map(|method| method.path)
            .collect();
        for path in [
            "/trellis.execution.v1.ExecutionService/WatchExecutions",
            "/trellis.execution.v1.ExecutionService/StreamLogs",
            "/trellis.order.v1.OrderService/WatchOrder",
        ] {
            assert!(streaming.contains(path), "{path}");
        }
        assert!(!streaming.contains("/trellis.execution.v1.ExecutionService/GetExecution"));
    }
}
