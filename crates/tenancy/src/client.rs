use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

use crate::context::{CallContext, GRPC_TIMEOUT, format_grpc_timeout};

/// Deadline of an outbound call whose caller sent none: no call may hang.
pub const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Client-side layer for service-to-service channels: forwards the
/// [`CallContext`] attached by [`CallContext::outbound`] as `authorization`,
/// `x-request-id`, `traceparent`/`tracestate`, and the remaining deadline as
/// `grpc-timeout`, and enforces that deadline locally.
#[derive(Clone, Copy, Debug)]
pub struct PropagateLayer {
    default_timeout: Duration,
}

impl PropagateLayer {
    pub fn new(default_timeout: Duration) -> Self {
        PropagateLayer { default_timeout }
    }
}

impl Default for PropagateLayer {
    fn default() -> Self {
        PropagateLayer::new(DEFAULT_OUTBOUND_TIMEOUT)
    }
}

impl<S> tower::Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagate {
            inner,
            default_timeout: self.default_timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Propagate<S> {
    inner: S,
    default_timeout: Duration,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Propagate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let context = request.extensions_mut().remove::<CallContext>();
        let timeout = match prepare_outbound(&mut request, context.as_ref(), self.default_timeout) {
            Ok(timeout) => timeout,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let path = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => Ok(result.unwrap_or_else(|error| transport_failure(&path, error))),
                Err(_) => Ok(Status::deadline_exceeded(format!("{path} timed out")).into_http()),
            }
        })
    }
}

/// A call the connection failed (refused, reset, or closed by a server
/// going away with the call queued on it) is UNAVAILABLE, as gRPC's own
/// clients say: tonic would call a request its connection dropped before
/// sending CANCELLED, which every caller reads as "given up", not "retry".
pub(crate) fn transport_failure<E: std::fmt::Display, B: Default>(
    path: &str,
    error: E,
) -> http::Response<B> {
    Status::unavailable(format!("{path}: transport: {error}")).into_http()
}

/// Where a server's current span can be read as a `traceparent`: set once
/// by the process when it exports spans, so every outbound call (on a
/// caller's behalf or as a service) names the span it was made in as the
/// next hop's parent.
static CURRENT_TRACEPARENT: std::sync::OnceLock<fn() -> Option<http::HeaderValue>> =
    std::sync::OnceLock::new();

/// Installs the reader of the current span's `traceparent`.
pub fn set_current_traceparent(read: fn() -> Option<http::HeaderValue>) {
    let _ = CURRENT_TRACEPARENT.set(read);
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// What every outbound call carries: the context's request id, trace
/// context and credentials (a service call replaces the latter), and the
/// deadline left (at most `default_timeout`) as `grpc-timeout`. The
/// deadline to enforce, or DEADLINE_EXCEEDED when none is left.
pub(crate) fn prepare_outbound<B>(
    request: &mut http::Request<B>,
    context: Option<&CallContext>,
    default_timeout: Duration,
) -> Result<Duration, Status> {
    let mut timeout = default_timeout;
    if let Some(context) = context {
        context.stamp(request.headers_mut());
        if let Some(remaining) = context.remaining() {
            timeout = timeout.min(remaining);
        }
    }
    if let Some(traceparent) = CURRENT_TRACEPARENT.get().and_then(|read| read()) {
        request
            .headers_mut()
            .insert(TRACEPARENT.clone(), traceparent);
    }
    if timeout.is_zero() {
        return Err(Status::deadline_exceeded(format!(
            "deadline exceeded before calling {}",
            request.uri().path()
        )));
    }
    request
        .headers_mut()
        .insert(GRPC_TIMEOUT.clone(), format_grpc_timeout(timeout));
    Ok(timeout)
}
