//! Forwards a gRPC call (gRPC-web already turned into gRPC) to the server
//! owning its package, as it came: metadata, `grpc-timeout`, the body and the
//! trailers stream through untouched, except for what the gateway owns:
//! hop-by-hop headers and cookies are dropped, `x-forwarded-for` is the
//! client address the gateway saw, cookies become a bearer header (with
//! the CSRF check), and auth responses set or clear the cookies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{AUTHORIZATION, HeaderName, ORIGIN};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;
use trellis::MethodPolicy;
use trellis::auth::v1::{RefreshRequest, SignUpResponse};
use trellis::common::v1::Caller;
use trellis_tenancy::{
    CallContext, FORWARDED_FOR_HEADER, Principal, TokenVerifier, rate_limit_key,
};
use uuid::Uuid;

use crate::cookies::{self, CookieNames, Presented};
use crate::limits::{InFlight, InFlightGuard, RateLimit};

/// RPCs whose success starts or continues a login session: the response
/// (every one shares SignUpResponse's field numbers) sets the cookies.
const ISSUES_TOKENS: [&str; 4] = [
    "/trellis.auth.v1.AuthService/SignUp",
    "/trellis.auth.v1.AuthService/Login",
    "/trellis.auth.v1.AuthService/Refresh",
    "/trellis.auth.v1.OrganizationService/AcceptInvitation",
];
const REFRESH: &str = "/trellis.auth.v1.AuthService/Refresh";
/// Their success ends the cookies' session: the cookies are cleared.
const LOGOUTS: [&str; 2] = [
    "/trellis.auth.v1.AuthService/Logout",
    "/trellis.auth.v1.AuthService/LogoutAll",
];

/// Auth responses read whole are this small; anything larger is refused.
const MAX_BUFFERED: usize = 64 * 1024;
/// A request message at most (tonic's default limit on the servers).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How long a request's body may take to arrive.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers, as HTTP/2 counts them (32 bytes per field beside name
/// and value), well within what the servers accept.
const MAX_REQUEST_HEADER_BYTES: usize = 8 * 1024;

/// Request headers that belong to one hop (or to the gateway) and never
/// reach a server.
const DROPPED_REQUEST_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "cookie",
    cookies::CSRF_HEADER,
    FORWARDED_FOR_HEADER,
];

#[derive(Clone)]
pub struct Proxy {
    channels: HashMap<&'static str, Channel>,
    methods: HashMap<&'static str, &'static MethodPolicy>,
    names: CookieNames,
    clients: Arc<RateLimit<String>>,
    orgs: Arc<RateLimit<Uuid>>,
    in_flight: Arc<InFlight>,
    verifier: Arc<TokenVerifier>,
}

impl Proxy {
    pub fn new(
        channels: HashMap<&'static str, Channel>,
        names: CookieNames,
        clients: Arc<RateLimit<String>>,
        orgs: Arc<RateLimit<Uuid>>,
        in_flight: Arc<InFlight>,
        verifier: Arc<TokenVerifier>,
    ) -> Self {
        let methods = trellis::METHODS.iter().map(|m| (m.path, m)).collect();
        Proxy {
            channels,
            methods,
            names,
            clients,
            orgs,
            in_flight,
            verifier,
        }
    }
}

fn too_many(what: &str, wait: std::time::Duration) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "rate limit: too many calls {what}; retry in {} ms",
        wait.as_millis().max(1)
    ))
}

/// `auth` of `/trellis.auth.v1.AuthService/Login`.
fn area_of(path: &str) -> Option<&str> {
    path.strip_prefix("/trellis.")?.split('.').next()
}

fn refuse(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

impl tower::Service<http::Request<Body>> for Proxy {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await) })
    }
}

impl Proxy {
    async fn forward(&self, request: http::Request<Body>) -> http::Response<Body> {
        let path = request.uri().path().to_owned();
        // Internal RPCs are refused as unknown: from outside they do not
        // exist. So is anything that is no Trellis RPC (upstream health and
        // reflection included).
        let policy = match self.methods.get(path.as_str()) {
            Some(policy) if policy.caller != Caller::Service => *policy,
            _ => {
                return refuse(tonic::Status::not_found(format!(
                    "no such method through the gateway: {}",
                    trellis_tenancy::truncated(&path, 200)
                )));
            }
        };
        let Some(channel) = area_of(&path).and_then(|area| self.channels.get(area)) else {
            return refuse(tonic::Status::not_found("no server for this method"));
        };

        let client = request
            .extensions()
            .get::<CallContext>()
            .and_then(CallContext::client_address);
        let client_key = client.map(rate_limit_key);
        if let Some(key) = &client_key
            && let Err(wait) = self.clients.take(key)
        {
            return refuse(too_many("from this address", wait));
        }
        // One connection to each server carries every caller's calls: a
        // header block the server would refuse would close it for all.
        if header_bytes(request.headers()) > MAX_REQUEST_HEADER_BYTES {
            return refuse(tonic::Status::resource_exhausted(format!(
                "request headers over {MAX_REQUEST_HEADER_BYTES} bytes"
            )));
        }
        let Some(held) = self.in_flight.enter(client_key.as_deref()) else {
            return refuse(tonic::Status::resource_exhausted(
                "too many calls in progress from this address or in all",
            ));
        };
        let (mut parts, body) = request.into_parts();
        // Every Trellis RPC takes one request message: read it whole
        // (bounded, in bounded time) before asking a server, so a slow
        // sender holds a slot here, not a stream of the shared connection.
        let mut body = match read_request(body).await {
            Ok(body) => body,
            Err(status) => return refuse(status),
        };
        let presented = Presented::from_headers(&parts.headers, &self.names);
        let from_browser = parts.headers.contains_key(ORIGIN);
        let bearer = parts.headers.contains_key(AUTHORIZATION);
        let mut by_cookie = false;
        if !bearer
            && policy.caller != Caller::Public
            && let Some(access) = &presented.access
        {
            let Ok(value) = HeaderValue::from_str(&format!("Bearer {access}")) else {
                return refuse(tonic::Status::unauthenticated("malformed access cookie"));
            };
            parts.headers.insert(AUTHORIZATION, value);
            by_cookie = true;
        }
        let caller = self.principal_of(&parts.headers).await;
        // Cookies travel with every request the browser makes, forged ones
        // included: a state change needs the CSRF token of the cookie's own
        // login session too. (A cookie token that does not verify is left
        // to its server, which answers UNAUTHENTICATED.)
        if by_cookie
            && !policy.read_only
            && let Some(Principal::User(tenant)) = &caller
            && !cookies::csrf_matches(&parts.headers, &presented, &tenant.session_id.to_string())
        {
            return refuse(tonic::Status::permission_denied(
                "a call authenticated by cookie that changes state needs x-csrf-token \
                 (the csrf_token of the login session's auth response)",
            ));
        }
        if let Some(Principal::User(tenant)) = &caller
            && let Err(wait) = self.orgs.take(&tenant.org_id)
        {
            return refuse(too_many("for this organization", wait));
        }
        for name in DROPPED_REQUEST_HEADERS {
            parts.headers.remove(name);
        }
        if let Some(client) = client
            && let Ok(value) = HeaderValue::from_str(&client.to_string())
        {
            parts
                .headers
                .insert(HeaderName::from_static(FORWARDED_FOR_HEADER), value);
        }
        if path == REFRESH
            && !bearer
            && let Some(refresh) = &presented.refresh
        {
            body = match refresh_from_cookie(&body, refresh) {
                Ok(body) => body,
                Err(status) => return refuse(status),
            };
        }
        if ISSUES_TOKENS.contains(&path.as_str()) {
            // The answer is read whole and rewritten: no compressed frames.
            parts.headers.remove("grpc-accept-encoding");
        }
        parts.version = http::Version::HTTP_2;
        let forwarded =
            http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));

        let response = match channel.clone().oneshot(forwarded).await {
            Ok(response) => response,
            Err(error) => {
                // The access log has the call and its UNAVAILABLE.
                tracing::debug!(%error, path, "upstream call failed");
                return refuse(tonic::Status::unavailable(format!(
                    "the {} server is unreachable",
                    area_of(&path).unwrap_or("upstream")
                )));
            }
        };
        let response = if ISSUES_TOKENS.contains(&path.as_str()) {
            self.with_session_cookies(response, from_browser).await
        } else if LOGOUTS.contains(&path.as_str()) && by_cookie {
            self.clearing_cookies(response).await
        } else {
            response
        };
        // The slot is held until the answer ends (streams included).
        response.map(|body| Body::new(Held { body, _held: held }))
    }

    /// The verified caller of a bearer token, if it verifies.
    async fn principal_of(&self, headers: &HeaderMap) -> Option<Principal> {
        let token = headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.verifier.verify(token).await.ok()
    }

    /// Sets the cookies from a successful auth response; a browser's copy
    /// of the body no longer carries the tokens (they are in HttpOnly
    /// cookies, out of reach of the page's scripts).
    async fn with_session_cookies(
        &self,
        response: http::Response<Body>,
        from_browser: bool,
    ) -> http::Response<Body> {
        let (mut parts, body) = response.into_parts();
        let Some((data, trailers)) = read_whole(body).await else {
            return refuse(tonic::Status::internal("auth response too large"));
        };
        let status_ok = |headers: Option<&HeaderMap>| {
            headers
                .and_then(|h| h.get("grpc-status"))
                .is_some_and(|s| s == "0")
        };
        let mut data = data;
        if status_ok(trailers.as_ref()) {
            let Some(mut tokens) = message(&data).and_then(|m| SignUpResponse::decode(m).ok())
            else {
                // Never hand a browser tokens its scripts could read.
                return refuse(tonic::Status::internal("unreadable auth response"));
            };
            cookies::set_session_cookies(
                &mut parts.headers,
                &self.names,
                &tokens.access_token,
                tokens.expires_in,
                &tokens.refresh_token,
                &tokens.session_id,
                &tokens.csrf_token,
            );
            if from_browser {
                tokens.access_token.clear();
                tokens.refresh_token.clear();
                data = frame(&tokens.encode_to_vec());
            }
        }
        rebuilt(parts, data, trailers)
    }

    async fn clearing_cookies(&self, response: http::Response<Body>) -> http::Response<Body> {
        let (mut parts, body) = response.into_parts();
        let Some((data, trailers)) = read_whole(body).await else {
            return refuse(tonic::Status::internal("logout response too large"));
        };
        if trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0")
        {
            cookies::clear_session_cookies(&mut parts.headers, &self.names);
        }
        rebuilt(parts, data, trailers)
    }
}

/// A unary body read whole (bounded), with its trailers.
async fn read_whole(body: Body) -> Option<(Bytes, Option<HeaderMap>)> {
    let limited = http_body_util::Limited::new(body, MAX_BUFFERED);
    let collected = limited.collect().await.ok()?;
    let trailers = collected.trailers().cloned();
    Some((collected.to_bytes(), trailers))
}

fn rebuilt(
    mut parts: http::response::Parts,
    data: Bytes,
    trailers: Option<HeaderMap>,
) -> http::Response<Body> {
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if data.is_empty() && trailers.is_none() {
        // Trailers-only (a refusal: grpc-status in the headers): the body
        // must end with the headers, as one HEADERS frame with END_STREAM.
        return http::Response::from_parts(parts, Body::empty());
    }
    let mut frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = Vec::with_capacity(2);
    if !data.is_empty() {
        frames.push(Ok(http_body::Frame::data(data)));
    }
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    http::Response::from_parts(parts, Body::new(body))
}

/// The message of a body holding exactly one uncompressed gRPC frame.
fn message(data: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = data.split_first()?;
    let (length, message) = rest.split_at_checked(4)?;
    let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
    (compressed == 0 && message.len() == length).then_some(message)
}

fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// A Refresh whose body names no refresh token takes the cookie's.
fn refresh_from_cookie(data: &Bytes, refresh: &str) -> Result<Bytes, tonic::Status> {
    let mut request = if data.is_empty() {
        RefreshRequest::default()
    } else {
        message(data)
            .and_then(|m| RefreshRequest::decode(m).ok())
            .ok_or_else(|| tonic::Status::invalid_argument("malformed refresh request"))?
    };
    if request.refresh_token.is_empty() {
        request.refresh_token = refresh.to_owned();
    }
    Ok(frame(&request.encode_to_vec()))
}

/// The request body whole, within [`MAX_REQUEST_BYTES`] and
/// [`REQUEST_BODY_TIMEOUT`].
async fn read_request(body: Body) -> Result<Bytes, tonic::Status> {
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BYTES);
    match tokio::time::timeout(REQUEST_BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(
            tonic::Status::resource_exhausted(format!("request over {MAX_REQUEST_BYTES} bytes")),
        ),
        Ok(Err(_)) => Err(tonic::Status::cancelled("the request body was cut off")),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the request body took over {} s",
            REQUEST_BODY_TIMEOUT.as_secs()
        ))),
    }
}

/// Header bytes as HTTP/2 counts them.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// A response body that holds its call's in-flight slot until it ends.
struct Held {
    body: Body,
    _held: InFlightGuard,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_package_area() {
        assert_eq!(
            area_of("/trellis.cart.v1.CatalogService/ListProducts"),
            Some("cart")
        );
        assert_eq!(
            area_of("/trellis.auth.v1.OrganizationService/GetOrganization"),
            Some("auth")
        );
        assert_eq!(area_of("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"abc");
        assert_eq!(message(&framed), Some(&b"abc"[..]));
        assert_eq!(message(&framed[..6]), None);
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert_eq!(message(&compressed), None);
    }

    #[test]
    fn every_public_and_user_method_has_an_upstream() {
        for method in trellis::METHODS {
            let area = area_of(method.path).expect("a trellis method");
            assert!(crate::UPSTREAMS.contains(&area), "{}", method.path);
        }
    }
}
