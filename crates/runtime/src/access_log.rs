use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tracing::{Instrument, Span};
use trellis_tenancy::{CallContext, EndedByRules};

use crate::metrics::RpcMetrics;

/// Unknown methods are logged too; their paths are cut to this many bytes.
const MAX_LOGGED_METHOD: usize = 128;

/// tonic reports an over-size request as OUT_OF_RANGE; gRPC clients expect
/// RESOURCE_EXHAUSTED for a message over the server's limit.
const OVERSIZE_PREFIX: &str = "Error, decoded message length too large";

/// Logs each RPC's final gRPC status and latency with its method and request
/// id (server faults at WARN, everything else at DEBUG), and opens a DEBUG
/// span per RPC (method, request id, organization and
/// user) that handler logs nest in. The span is DEBUG because the fmt
/// subscriber formats span fields eagerly: at INFO it cost ~4.6 µs per call,
/// more than the rest of the stack (see bench/auth_overhead.sh).
///
/// It also counts each call in the server's [`RpcMetrics`] and, when spans
/// are exported, makes the RPC span a child of the caller's `traceparent`
/// and hands this span's own id to every call made on the caller's behalf.
#[derive(Clone)]
pub struct AccessLogLayer {
    server: &'static str,
    metrics: Arc<RpcMetrics>,
    public_front: bool,
}

impl AccessLogLayer {
    pub fn new(server: &'static str, metrics: Arc<RpcMetrics>) -> Self {
        AccessLogLayer {
            server,
            metrics,
            public_front: false,
        }
    }

    /// For the gateway: traces start here, whatever the caller sent.
    pub fn public_front(mut self) -> Self {
        self.public_front = true;
        self
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            server: self.server,
            metrics: self.metrics.clone(),
            public_front: self.public_front,
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    server: &'static str,
    metrics: Arc<RpcMetrics>,
    public_front: bool,
}

/// A call counted in flight until it finishes; one dropped unfinished (its
/// handler's future cancelled) counts as ended without a status.
struct Counted {
    metrics: Arc<RpcMetrics>,
    method: usize,
    started: Instant,
    done: bool,
}

impl Counted {
    fn finish(mut self, status: Option<Code>) {
        self.done = true;
        self.metrics
            .finished(self.method, status, self.started.elapsed());
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .finished(self.method, None, self.started.elapsed());
        }
    }
}

struct Completion {
    span: Span,
    counted: Counted,
    method: PathAndQuery,
    request_id: HeaderValue,
    /// A stream's; set when the stream rules ended it.
    ended_by_rules: Option<EndedByRules>,
}

impl Completion {
    fn finish(self, status: Option<Code>) {
        let latency_us = self.counted.started.elapsed().as_micros() as u64;
        self.counted.finish(status);
        let _entered = self.span.enter();
        let method = trellis_tenancy::truncated(self.method.path(), MAX_LOGGED_METHOD);
        let request_id = self.request_id.to_str().unwrap_or("");
        if self.ended_by_rules.is_some_and(|ended| ended.is_set()) {
            // Not a fault: the stream rules ended it and logged why.
            tracing::debug!(method, request_id, status = ?status, latency_us, "stream ended by the rules");
            return;
        }
        match status {
            Some(Code::Ok) => {
                tracing::debug!(
                    method,
                    request_id,
                    status = "OK",
                    latency_us,
                    "rpc finished"
                )
            }
            Some(code @ (Code::Unknown | Code::Internal | Code::Unavailable | Code::DataLoss)) => {
                tracing::warn!(method, request_id, status = ?code, latency_us, "rpc failed")
            }
            // A client's own mistakes and refusals: a flood of them must not
            // fill the disk at INFO. Refused tokens and throttled logins
            // have their own budgeted INFO and audit lines.
            Some(code) => {
                tracing::debug!(method, request_id, status = ?code, latency_us, "rpc finished")
            }
            None => tracing::debug!(
                method,
                request_id,
                latency_us,
                "rpc ended without a status (client went away)"
            ),
        }
    }
}

/// The caller's `traceparent` becomes this span's parent (at a public
/// front, never: a browser would choose what is sampled and which trace its
/// calls join; its trace context is dropped there), and this span the
/// parent of every hop after it: the request's header (what the gateway
/// forwards) and its [`CallContext`] (what a handler's outbound calls send)
/// now name it.
fn follow_trace<B>(span: &Span, request: &mut http::Request<B>, public_front: bool) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if public_front {
        request.headers_mut().remove(&TRACEPARENT);
        request.headers_mut().remove(&TRACESTATE);
    }
    if !crate::telemetry::exporting() {
        return;
    }
    if let Some(parent) = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|value| crate::telemetry::parse_traceparent(value.as_bytes()))
    {
        let _ = span.set_parent(parent);
    }
    if let Some(own) = crate::telemetry::traceparent_of(span) {
        if let Some(context) = request.extensions_mut().get_mut::<CallContext>() {
            context.set_traceparent(own.clone());
        }
        request.headers_mut().insert(TRACEPARENT.clone(), own);
    }
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Reads `grpc-status`, rewriting tonic's over-size OUT_OF_RANGE.
fn final_status(headers: &mut HeaderMap) -> Option<Code> {
    let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    let oversize = code == Code::OutOfRange
        && headers
            .get("grpc-message")
            .is_some_and(|m| percent_decode(m.as_bytes()).starts_with(OVERSIZE_PREFIX.as_bytes()));
    if oversize {
        headers.insert("grpc-status", (Code::ResourceExhausted as i32).into());
        return Some(Code::ResourceExhausted);
    }
    Some(code)
}

/// `grpc-message` is percent-encoded on the wire.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AccessLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let request_id = request
            .extensions()
            .get::<CallContext>()
            .map(|context| context.request_id_header().clone())
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let method = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let started = Instant::now();
        let slot = self.metrics.method(method.path());
        self.metrics.started(slot);
        let counted = Counted {
            metrics: self.metrics.clone(),
            method: slot,
            started,
            done: false,
        };
        let logged_method = trellis_tenancy::truncated(method.path(), MAX_LOGGED_METHOD);
        let span = tracing::debug_span!(
            "rpc",
            // Display, not Debug: no per-character escaping on every call.
            method = %logged_method,
            request_id = request_id.to_str().unwrap_or(""),
            org = tracing::field::Empty,
            user = tracing::field::Empty,
            server = self.server,
            // The contract's name, or "other": no caller can add names
            // to the trace backend's index.
            otel.name = self.metrics.path(slot),
            otel.kind = "server",
        );
        follow_trace(&span, &mut request, self.public_front);
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // Entered only while polled: a guard held across `.await` would leave
        // the span on this thread's stack while other calls run.
        let response = response.instrument(span.clone());
        Box::pin(async move {
            let response = response.await?;
            let (mut parts, body) = response.into_parts();
            let completion = Completion {
                span,
                counted,
                method,
                request_id,
                ended_by_rules: parts.extensions.get::<EndedByRules>().cloned(),
            };
            // Trailers-only responses (every error) carry the status here;
            // successful ones carry it in the trailers.
            let pending = match final_status(&mut parts.headers) {
                Some(code) => {
                    completion.finish(Some(code));
                    None
                }
                None => Some(completion),
            };
            Ok(http::Response::from_parts(
                parts,
                LoggedBody {
                    inner: body,
                    pending,
                },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the status found in its trailers.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        pending: Option<Completion>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(completion) = this.project().pending.take() {
                completion.finish(None);
            }
        }
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match frame {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    let code = final_status(trailers);
                    if let Some(completion) = this.pending.take() {
                        completion.finish(code);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oversize_out_of_range_is_rewritten() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "11".parse().unwrap());
        headers.insert(
            "grpc-message",
            "Error,%20decoded%20message%20length%20too%20large:%20found%2070004%20bytes"
                .parse()
                .unwrap(),
        );
        assert_eq!(final_status(&mut headers), Some(Code::ResourceExhausted));
        assert_eq!(headers["grpc-status"], "8");

        headers.insert("grpc-status", "11".parse().unwrap());
        headers.insert("grpc-message", "page%20token%20expired".parse().unwrap());
        assert_eq!(final_status(&mut headers), Some(Code::OutOfRange));
        assert_eq!(percent_decode(b"a%2Fb%zz"), b"a/b%zz");
    }
}
