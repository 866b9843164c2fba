use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::client_address::TrustedProxies;

/// Correlates a call across services; generated when absent or unusable.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
// Pre-parsed names: a `&str` lookup re-parses and re-hashes the name per call.
static REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// What a service must forward when it calls another on a caller's behalf.
/// [`RequestContextLayer`] puts one in every request's extensions.
#[derive(Clone, Debug)]
pub struct CallContext {
    request_id: HeaderValue,
    authorization: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
    deadline: Option<Instant>,
    /// The caller's address: the TCP peer, or the client a trusted proxy
    /// forwarded. `None` for calls that start here.
    client_address: Option<IpAddr>,
}

impl CallContext {
    /// A context for a call that starts here (a background job, a test).
    pub fn new_root() -> Self {
        CallContext {
            request_id: new_request_id(),
            authorization: None,
            traceparent: None,
            tracestate: None,
            deadline: None,
            client_address: None,
        }
    }

    fn from_headers(headers: &HeaderMap, client_address: Option<IpAddr>) -> Self {
        let request_id = headers
            .get(&REQUEST_ID)
            .filter(|v| is_usable_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        CallContext {
            request_id,
            authorization: headers.get(http::header::AUTHORIZATION).cloned(),
            traceparent: headers.get(&TRACEPARENT).cloned(),
            tracestate: headers.get(&TRACESTATE).cloned(),
            deadline: headers
                .get(&GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
                .map(|timeout| Instant::now() + timeout),
            client_address,
        }
    }

    /// The context of an incoming request, or a fresh root one when the
    /// layer was not installed.
    pub fn from_request<T>(request: &tonic::Request<T>) -> CallContext {
        request
            .extensions()
            .get::<CallContext>()
            .cloned()
            .unwrap_or_else(CallContext::new_root)
    }

    /// The caller's `user-agent`, made safe to store and log: printable
    /// ASCII only (a newline could forge a log entry), at most
    /// [`MAX_USER_AGENT_BYTES`].
    pub fn user_agent_of<T>(request: &tonic::Request<T>) -> String {
        request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(bounded_user_agent)
            .unwrap_or_default()
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// Who is calling from where, as throttles and audit logs should see it.
    pub fn client_address(&self) -> Option<IpAddr> {
        self.client_address
    }

    /// Names another span as the parent of the calls made with this
    /// context: the server's own RPC span, so each hop is a child of the
    /// one before instead of all hanging off the first caller's.
    pub fn set_traceparent(&mut self, traceparent: HeaderValue) {
        self.traceparent = Some(traceparent);
    }

    pub fn request_id_header(&self) -> &HeaderValue {
        &self.request_id
    }

    /// Time left before the caller's deadline, if it sent one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Wraps `message` for a downstream call; [`crate::PropagateLayer`] on the
    /// client's channel turns this context into metadata and a deadline.
    pub fn outbound<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.clone());
        request
    }

    pub(crate) fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(REQUEST_ID.clone(), self.request_id.clone());
        let optional = [
            (&http::header::AUTHORIZATION, &self.authorization),
            (&TRACEPARENT, &self.traceparent),
            (&TRACESTATE, &self.tracestate),
        ];
        for (name, value) in optional {
            match value {
                Some(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// A random (v4) UUID from the thread-local CSPRNG: `Uuid::new_v4` reads the
/// OS entropy source on every call, ~1.4 µs here, on every request.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .expect("a UUID is a valid header value")
}

/// Client ids are echoed into logs and headers: keep them short and plain.
fn is_usable_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes a timeout with the finest unit that fits in 8 digits.
pub(crate) fn format_grpc_timeout(timeout: Duration) -> HeaderValue {
    let micros = timeout.as_micros();
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else if timeout.as_millis() < 100_000_000 {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit are a valid header value")
}

/// Captures request id, trace context, deadline, credentials and the
/// client's address into a [`CallContext`] and echoes the request id in the
/// response headers.
#[derive(Clone, Debug, Default)]
pub struct RequestContextLayer {
    trusted_proxies: TrustedProxies,
}

impl RequestContextLayer {
    /// `x-forwarded-for` is believed only from `trusted_proxies`.
    pub fn new(trusted_proxies: TrustedProxies) -> Self {
        RequestContextLayer { trusted_proxies }
    }
}

impl<S> tower::Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestContext<S> {
    inner: S,
    trusted_proxies: TrustedProxies,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RequestContext<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|address| address.ip());
        let client_address =
            peer.map(|peer| self.trusted_proxies.client_address(peer, request.headers()));
        let context = CallContext::from_headers(request.headers(), client_address);
        let mut request_id = context.request_id.clone();
        // A value unique to each response would churn the HPACK dynamic
        // table and push out the headers that do repeat; never index it.
        request_id.set_sensitive(true);
        request.extensions_mut().insert(context);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            response
                .headers_mut()
                .insert(REQUEST_ID.clone(), request_id);
            Ok(response)
        })
    }
}

/// What a stored or logged user agent may hold.
pub const MAX_USER_AGENT_BYTES: usize = 256;

/// `raw` as [`CallContext::user_agent_of`] keeps it.
pub fn bounded_user_agent(raw: &str) -> String {
    raw.chars()
        .take(MAX_USER_AGENT_BYTES)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_lose_control_characters_and_length() {
        assert_eq!(bounded_user_agent("grpc-go/1.60"), "grpc-go/1.60");
        assert_eq!(bounded_user_agent("a\nb\u{1b}[31m"), "a?b?[31m");
        assert_eq!(bounded_user_agent(&"x".repeat(5000)).len(), 256);
        assert_eq!(bounded_user_agent("ñ"), "?");
    }

    #[test]
    fn grpc_timeout_round_trips() {
        for timeout in [
            Duration::from_millis(1),
            Duration::from_secs(5),
            Duration::from_secs(3 * 3600),
        ] {
            let encoded = format_grpc_timeout(timeout);
            let decoded = parse_grpc_timeout(encoded.as_bytes()).unwrap();
            assert!(decoded <= timeout && timeout - decoded < Duration::from_millis(1));
        }
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"5x"), None);
    }

    #[test]
    fn unusable_request_ids_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        let kept = CallContext::from_headers(&headers, None);
        assert_eq!(kept.request_id(), "abc-123");

        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_static("bad id\twith spaces"),
        );
        let replaced = CallContext::from_headers(&headers, None);
        assert_eq!(replaced.request_id().len(), 36);
        let parsed = uuid::Uuid::parse_str(replaced.request_id()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        let other = CallContext::from_headers(&HeaderMap::new(), None);
        assert_ne!(other.request_id(), replaced.request_id());
    }
}
