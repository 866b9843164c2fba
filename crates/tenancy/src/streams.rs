//! The rules every server stream lives by, whatever its handler does. A
//! stream ends, with trailers the client can act on, when
//! - its access token expires (UNAUTHENTICATED: refresh and reopen),
//! - its login session ends or its service account is revoked
//!   (UNAUTHENTICATED; looked at at least every `--session-check-ttl`),
//! - its caller's `grpc-timeout` passes (DEADLINE_EXCEEDED; the server's
//!   `--request-timeout` bounds unary calls and a stream's first response,
//!   never a stream's life),
//! - the server stops taking calls (UNAVAILABLE: reconnect, which lands on
//!   another replica since this one has sent GOAWAY);
//!
//! and an organization (for workers and services: an account) holds at most
//! so many open streams per server (RESOURCE_EXHAUSTED).
//!
//! Back-pressure needs nothing here: hyper polls a response body only while
//! the client's HTTP/2 window has room, so a slow reader leaves at most one
//! window plus one encoded chunk waiting on the server. The same means a
//! reader that stops reading altogether is only ended once it reads again
//! (or resets, or its connection dies), and sends nothing past the end: its
//! stream keeps its slot, so it is counted against its organization's cap.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
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
use crate::context::CallContext;
use crate::jwks::BoxFuture;
use crate::session_guard::{SessionGuard, SessionState};

/// Streams that are not Trellis RPCs but live as long: health `Watch`
/// (public, so only the server-wide cap and shutdown apply) and reflection.
const OTHER_STREAMING_METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// How many streams may be open at once on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Per organization (users) or per account (workers, services).
    pub per_owner: usize,
    /// All callers together, public streams included.
    pub total: usize,
}

/// Applies the stream rules to the contract's streaming methods (and
/// health `Watch`, reflection); every other call passes untouched. Goes
/// inside [`crate::AuthLayer`], whose [`Principal`] it reads.
#[derive(Clone)]
pub struct StreamLayer {
    streaming: Arc<HashSet<&'static str>>,
    slots: Arc<StreamSlots>,
    sessions: Option<Arc<SessionGuard>>,
    closing: watch::Receiver<bool>,
    leeway_secs: i64,
}

impl StreamLayer {
    /// `closing` turns true when the server stops taking calls; `leeway` is
    /// the verifier's, so a stream ends when its token would be refused.
    pub fn new(limits: StreamLimits, closing: watch::Receiver<bool>, leeway: Duration) -> Self {
        let streaming = trellis::METHODS
            .iter()
            .filter(|method| method.server_streaming)
            .map(|method| method.path)
            .chain(OTHER_STREAMING_METHODS)
            .collect();
        StreamLayer {
            streaming: Arc::new(streaming),
            slots: Arc::new(StreamSlots::new(limits)),
            sessions: None,
            closing,
            leeway_secs: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
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
        let slot = match self.layer.slots.acquire(principal.as_ref().map(owner_of)) {
            Ok(slot) => slot,
            Err(status) => {
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

/// Whose cap a stream counts against.
fn owner_of(principal: &Principal) -> Uuid {
    match principal {
        Principal::User(tenant) => tenant.org_id,
        Principal::Worker(identity) | Principal::Service(identity) => identity.account_id,
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
                let response = ready!(inner.poll(cx))?;
                let watch = watch.take();
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
        if let Some(status) = watch.poll_end(cx) {
            watch.ended = true;
            watch.log_end(&status);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers_of(&status)))));
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

/// The timers and checks of one open stream.
pub struct StreamWatch {
    method: &'static str,
    owner: Option<Uuid>,
    _slot: StreamSlot,
    /// The earliest of token expiry and the caller's deadline, and what the
    /// stream is told then.
    ends_at: Option<(Instant, fn() -> Status)>,
    session: Option<SessionWatch>,
    closing: BoxFuture<()>,
    timer: Pin<Box<Sleep>>,
    ended: bool,
}

struct SessionWatch {
    guard: Arc<SessionGuard>,
    principal: Principal,
    authorization: HeaderValue,
    next_check: Instant,
    pending: Option<BoxFuture<Result<(SessionState, Instant), Status>>>,
}

fn token_expired() -> Status {
    Status::unauthenticated("access token expired: refresh it and reopen the stream")
}

fn deadline_passed() -> Status {
    Status::deadline_exceeded("the caller's deadline passed")
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
            let left = principal.expires_at().saturating_add(layer.leeway_secs) - unix_now();
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
            Some((now.checked_add(left)?, token_expired as fn() -> Status))
        });
        let deadline = request
            .extensions()
            .get::<CallContext>()
            .and_then(CallContext::remaining)
            .and_then(|left| Some((now.checked_add(left)?, deadline_passed as fn() -> Status)));
        let ends_at = match (expiry, deadline) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
        let session = match (&layer.sessions, &principal, authorization) {
            (Some(guard), Some(principal), Some(authorization)) => Some(SessionWatch {
                guard: guard.clone(),
                principal: principal.clone(),
                authorization,
                // AuthLayer has just looked.
                next_check: now + guard.fresh_for(),
                pending: None,
            }),
            _ => None,
        };
        let mut closing = layer.closing.clone();
        StreamWatch {
            method,
            owner: principal.as_ref().map(owner_of),
            _slot: slot,
            ends_at,
            session,
            closing: Box::pin(async move {
                // The sender gone means the server is gone: stop too.
                let _ = closing.wait_for(|closing| *closing).await;
            }),
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            ended: false,
        }
    }

    /// The status to end the stream with, if a rule applies now; otherwise
    /// arranges to be woken when one might.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Option<Status> {
        if self.closing.as_mut().poll(cx).is_ready() {
            return Some(Status::unavailable(
                "server shutting down: reconnect to another replica",
            ));
        }
        loop {
            let now = Instant::now();
            if let Some((at, status)) = self.ends_at
                && at <= now
            {
                return Some(status());
            }
            if let Some(session) = &mut self.session {
                if session.pending.is_none() && session.next_check <= now {
                    let (guard, principal) = (session.guard.clone(), session.principal.clone());
                    let authorization = session.authorization.clone();
                    session.pending = Some(Box::pin(async move {
                        guard.recheck(&principal, authorization).await
                    }));
                }
                if let Some(pending) = &mut session.pending {
                    match pending.as_mut().poll(cx) {
                        Poll::Pending => {}
                        Poll::Ready(Ok((SessionState::Ended, _))) => {
                            return Some(Status::unauthenticated("session ended"));
                        }
                        Poll::Ready(Ok((SessionState::Live(_), next))) => {
                            session.pending = None;
                            session.next_check = next;
                        }
                        Poll::Ready(Err(status)) => return Some(status),
                    }
                }
            }
            let session_wake = self
                .session
                .as_ref()
                .filter(|session| session.pending.is_none())
                .map(|session| session.next_check);
            let wake = match (self.ends_at.map(|(at, _)| at), session_wake) {
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

    fn log_end(&self, status: &Status) {
        match self.owner {
            Some(owner) => tracing::info!(
                method = self.method,
                owner = %owner,
                code = ?status.code(),
                reason = status.message(),
                "stream ended by the server"
            ),
            None => tracing::info!(
                method = self.method,
                code = ?status.code(),
                reason = status.message(),
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

/// Open streams, per owner and in all. The map holds only owners with an
/// open stream, so it is bounded by `total`.
struct StreamSlots {
    limits: StreamLimits,
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    total: usize,
    per_owner: HashMap<Uuid, usize>,
}

impl StreamSlots {
    fn new(limits: StreamLimits) -> Self {
        StreamSlots {
            limits,
            open: Mutex::new(OpenStreams::default()),
        }
    }

    fn acquire(self: &Arc<Self>, owner: Option<Uuid>) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.total {
            return Err(Status::resource_exhausted(
                "too many open streams on this server: retry later",
            ));
        }
        if let Some(owner) = owner {
            let count = open.per_owner.entry(owner).or_default();
            if *count >= self.limits.per_owner {
                return Err(Status::resource_exhausted(format!(
                    "too many open streams for this organization on this server (at most {}): close one first",
                    self.limits.per_owner
                )));
            }
            *count += 1;
        }
        open.total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            owner,
        })
    }
}

/// One open stream's place; given back when the stream's body is dropped.
struct StreamSlot {
    slots: Arc<StreamSlots>,
    owner: Option<Uuid>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(owner) = self.owner
            && let Some(count) = open.per_owner.get_mut(&owner)
        {
            *count -= 1;
            if *count == 0 {
                open.per_owner.remove(&owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_owner_and_in_all_and_given_back() {
        let slots = Arc::new(StreamSlots::new(StreamLimits {
            per_owner: 2,
            total: 3,
        }));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = slots.acquire(Some(a)).unwrap();
        let _second = slots.acquire(Some(a)).unwrap();
        let refused = slots.acquire(Some(a)).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("at most 2"), "{refused:?}");
        let _other = slots.acquire(Some(b)).unwrap();
        // Three open: even a public stream waits now.
        assert!(slots.acquire(None).is_err());
        drop(first);
        let _again = slots.acquire(Some(a)).unwrap();
        assert_eq!(slots.open.lock().unwrap().per_owner.len(), 2);
    }

    #[test]
    fn owners_that_close_their_last_stream_leave_the_map() {
        let slots = Arc::new(StreamSlots::new(StreamLimits {
            per_owner: 1,
            total: 10,
        }));
        let held: Vec<_> = (0..5)
            .map(|_| slots.acquire(Some(Uuid::new_v4())).unwrap())
            .collect();
        assert_eq!(slots.open.lock().unwrap().per_owner.len(), 5);
        drop(held);
        let open = slots.open.lock().unwrap();
        assert_eq!((open.total, open.per_owner.len()), (0, 0));
    }

    #[test]
    fn the_contracts_streams_are_known() {
        let (_closing, watching) = watch::channel(false);
        let layer = StreamLayer::new(
            StreamLimits {
                per_owner: 1,
                total: 1,
            },
            watching,
            Duration::ZERO,
        );
        for path in [
            "/trellis.execution.v1.ExecutionService/WatchExecutions",
            "/trellis.execution.v1.ExecutionService/StreamLogs",
            "/trellis.order.v1.OrderService/WatchOrder",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(layer.streaming.contains(path), "{path}");
        }
        assert!(
            !layer
                .streaming
                .contains("/trellis.execution.v1.ExecutionService/GetExecution")
        );
    }
}
