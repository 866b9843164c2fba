//! Calls made *as this service* (not on behalf of a caller): a token from
//! Auth's `IssueServiceToken`, fetched once, shared by every call and renewed
//! before it expires, so no call fails across an expiry.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;
use tower::ServiceExt;
use trellis::auth::v1::IssueServiceTokenRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;

use crate::client::{DEFAULT_OUTBOUND_TIMEOUT, prepare_outbound, transport_failure};
use crate::context::CallContext;

/// A service account's client credentials.
#[derive(Clone)]
pub struct ServiceCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Renewed once this share of its lifetime has passed: early enough that
/// a slow Auth still answers before the old token expires.
const RENEW_AFTER: f64 = 0.8;

struct Held {
    authorization: HeaderValue,
    renew_at: Instant,
    expires_at: Instant,
}

/// After a failed fetch, calls are served from the held token (or refused)
/// this long before Auth is asked again: a down Auth or a revoked account
/// costs one request a second, not one per call.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Longest lifetime believed from an answer (the verifiers' ceiling).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct State {
    held: Option<Held>,
    failed_at: Option<Instant>,
    /// Closed when the renewal under way ends.
    renewing: Option<watch::Receiver<()>>,
}

/// This server's own token.
pub struct ServiceTokens {
    auth: AuthServiceClient<Channel>,
    credentials: ServiceCredentials,
    timeout: Duration,
    /// Never held across an await: renewals run in a task of their own.
    state: Mutex<State>,
    fetched: AtomicU64,
}

impl ServiceTokens {
    /// `auth` is a channel to Auth; each fetch waits at most `timeout`.
    pub fn new(auth: Channel, credentials: ServiceCredentials, timeout: Duration) -> Self {
        ServiceTokens {
            auth: AuthServiceClient::new(auth),
            credentials,
            timeout,
            state: Mutex::new(State::default()),
            fetched: AtomicU64::new(0),
        }
    }

    /// How many tokens were fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// `Bearer <token>` for the next call. A token due for renewal is still
    /// handed out while one renewal runs in the background; only a call
    /// with no unexpired token waits for it. The renewal is a task of its
    /// own, so a caller whose deadline passes stops waiting without
    /// stopping it. While Auth cannot renew, the held token serves until it
    /// expires; UNAVAILABLE after that.
    pub async fn authorization(self: &Arc<Self>) -> Result<HeaderValue, Status> {
        loop {
            let mut renewal = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let usable = state
                    .held
                    .as_ref()
                    .filter(|held| now < held.expires_at)
                    .map(|held| held.authorization.clone());
                let due = state.held.as_ref().is_none_or(|held| now >= held.renew_at);
                let resting = state
                    .failed_at
                    .is_some_and(|at| now.duration_since(at) < RETRY_AFTER_FAILURE);
                if !due || resting {
                    return usable.ok_or_else(|| {
                        Status::unavailable("cannot get this service's token from Auth")
                    });
                }
                let renewal = match &state.renewing {
                    Some(renewal) => renewal.clone(),
                    None => {
                        let (done, renewal) = watch::channel(());
                        state.renewing = Some(renewal.clone());
                        tokio::spawn(self.clone().renew(done));
                        renewal
                    }
                };
                if let Some(authorization) = usable {
                    return Ok(authorization);
                }
                renewal
            };
            // Ends when the renewal's sender is dropped; then look again.
            let _ = renewal.changed().await;
        }
    }

    async fn renew(self: Arc<Self>, _done: watch::Sender<()>) {
        let result = self.fetch().await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.renewing = None;
        match result {
            Ok(fresh) => {
                state.held = Some(fresh);
                state.failed_at = None;
            }
            Err(status) => {
                state.failed_at = Some(Instant::now());
                let held = state
                    .held
                    .as_ref()
                    .is_some_and(|held| Instant::now() < held.expires_at);
                if held {
                    tracing::warn!(code = ?status.code(), "renewing the service token failed; using the current one");
                } else {
                    tracing::warn!(code = ?status.code(), message = status.message(), "no service token");
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Held, Status> {
        let asked = Instant::now();
        let mut request = tonic::Request::new(IssueServiceTokenRequest {
            client_id: self.credentials.client_id.clone(),
            client_secret: self.credentials.client_secret.clone(),
        });
        request.set_timeout(self.timeout);
        let answer =
            tokio::time::timeout(self.timeout, self.auth.clone().issue_service_token(request))
                .await
                .map_err(|_| Status::unavailable("IssueServiceToken timed out"))??
                .into_inner();
        let authorization = HeaderValue::try_from(format!("Bearer {}", answer.access_token))
            .map_err(|_| Status::internal("Auth answered an unusable token"))?;
        let lifetime =
            Duration::from_secs(u64::try_from(answer.expires_in).unwrap_or(0)).min(MAX_LIFETIME);
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(Held {
            authorization,
            // Timed from the request: the token's clock started before the answer.
            renew_at: asked + lifetime.mul_f64(RENEW_AFTER),
            expires_at: asked + lifetime,
        })
    }
}

/// Client-side layer for calls made as this service: like
/// [`crate::PropagateLayer`] it forwards request id, trace context and the
/// remaining deadline of a [`CallContext`] attached by
/// [`CallContext::outbound`] (if any), but the credentials are this
/// service's token, never the caller's.
#[derive(Clone)]
pub struct AsServiceLayer {
    tokens: Arc<ServiceTokens>,
    default_timeout: Duration,
}

impl AsServiceLayer {
    pub fn new(tokens: Arc<ServiceTokens>) -> Self {
        AsServiceLayer {
            tokens,
            default_timeout: DEFAULT_OUTBOUND_TIMEOUT,
        }
    }
}

impl<S> tower::Layer<S> for AsServiceLayer {
    type Service = AsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AsService {
            inner,
            tokens: self.tokens.clone(),
            default_timeout: self.default_timeout,
        }
    }
}

#[derive(Clone)]
pub struct AsService<S> {
    inner: S,
    tokens: Arc<ServiceTokens>,
    default_timeout: Duration,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    /// Always ready: the inner service is made ready inside the call, once
    /// the token is in hand, so a call waiting for Auth holds no slot of
    /// the channel's buffer (the same channel serves the token fetch).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let tokens = self.tokens.clone();
        let default_timeout = self.default_timeout;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let context = request.extensions_mut().remove::<CallContext>();
            let timeout = match prepare_outbound(&mut request, context.as_ref(), default_timeout) {
                Ok(timeout) => timeout,
                Err(status) => return Ok(status.into_http()),
            };
            let path = request.uri().path().to_owned();
            let path_for_failure = path.clone();
            let call = async move {
                let authorization = match tokens.authorization().await {
                    Ok(authorization) => authorization,
                    Err(status) => return Ok(status.into_http()),
                };
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, authorization);
                match inner.ready().await {
                    Ok(ready) => match ready.call(request).await {
                        Ok(response) => Ok(response),
                        Err(error) => Ok(transport_failure(&path_for_failure, error)),
                    },
                    Err(error) => Ok(transport_failure(&path_for_failure, error)),
                }
            };
            // The deadline covers getting the token too.
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!("{path} timed out")).into_http()),
            }
        })
    }
}
