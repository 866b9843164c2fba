use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use trellis_tenancy::{
    AuthLayer, MethodCallers, RequestContextLayer, SessionGuard, StreamLayer, TokenVerifier,
    TrustedProxies,
};

use crate::access_log::AccessLogLayer;
use crate::admin::Admin;
use crate::config::ServerLimits;
use crate::shutdown::Shutdown;
use crate::tasks::{BackgroundTask, RunningTasks, TaskError};
use crate::tls::ServerTls;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The gRPC services one server exposes. Who may call each method comes
/// from the contract (`trellis.common.v1.caller`), not from the server.
pub struct ServiceSet {
    name: &'static str,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    callers: MethodCallers,
    sessions: Option<Arc<SessionGuard>>,
    tasks: Vec<BackgroundTask>,
    /// An HTTP front (the gateway) instead of gRPC services, and whose
    /// `x-forwarded-for` it believes.
    http: Option<(axum::Router, TrustedProxies)>,
    tls: Option<Arc<ServerTls>>,
    /// The process's admin port (health mirrored there, metrics counted
    /// there); a server started alone gets one of its own, unserved.
    admin: Admin,
}

impl ServiceSet {
    /// `name` labels the server in logs, e.g. "auth".
    pub fn new(name: &'static str) -> Self {
        ServiceSet {
            name,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            callers: MethodCallers::from_contract(),
            sessions: None,
            tasks: Vec::new(),
            http: None,
            tls: None,
            admin: Admin::default(),
        }
    }

    /// Serve TLS (mTLS when it names a client CA) instead of plaintext.
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Report health to, and count calls in, the process's admin port.
    pub fn with_admin(mut self, admin: Admin) -> Self {
        self.admin = admin;
        self
    }

    /// A server that answers HTTP itself (the gateway: gRPC-web, CORS,
    /// cookies, its own limits) on HTTP/1.1 and HTTP/2: `router` gets every
    /// request after the request context and the access log, with no token
    /// check, no reflection and no request timeout in front of it (it
    /// proxies streams; the servers behind it apply their own rules).
    /// It believes `x-forwarded-for` from `trusted` only (a load balancer in
    /// front of it), not from the proxies the servers behind it trust.
    pub fn http(name: &'static str, router: axum::Router, trusted: TrustedProxies) -> Self {
        ServiceSet {
            http: Some((router, trusted)),
            ..ServiceSet::new(name)
        }
    }

    /// A task to run beside the RPCs for as long as the server serves.
    /// `start` gets the shutdown signal: the task should return soon after
    /// it fires (it has `--shutdown-drain` + `--shutdown-grace`, then it is
    /// aborted). A task that ends before shutdown, well or not, turns the
    /// server's health NOT_SERVING.
    pub fn with_background_task<F, Fut>(mut self, name: &'static str, start: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        self.tasks.push(BackgroundTask::new(name, start));
        self
    }

    /// Refuse tokens whose login session has ended, asking `guard`.
    pub fn with_session_guard(mut self, guard: Option<Arc<SessionGuard>>) -> Self {
        self.sessions = guard;
        self
    }

    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Fully-qualified names of the services, as health and reflection know them.
    pub fn service_names(&self) -> &[&'static str] {
        &self.service_names
    }
}

/// Serves `services` on `listener` until `shutdown` fires, then reports
/// NOT_SERVING, lets in-flight calls finish and returns within
/// `limits.shutdown_drain + limits.shutdown_grace`.
pub async fn serve(
    services: ServiceSet,
    listener: TcpListener,
    limits: &ServerLimits,
    verifier: Arc<TokenVerifier>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let ServiceSet {
        name,
        mut routes,
        service_names,
        callers,
        sessions,
        tasks,
        http,
        tls,
        admin,
    } = services;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        own: reporter,
        admin: admin.clone(),
    };
    for service in &service_names {
        health.set(service, ServingStatus::Serving).await;
    }
    let metrics = admin.metrics.rpc(name);

    // Reflection lists exactly what this server serves, from the same
    // descriptor set the code was generated from.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(trellis::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.RetryInfo, BadRequest, ...: so reflection clients
            // (grpcurl) can decode the details of an error, not only show
            // them as bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for service in &service_names {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let routes: Routes = routes.routes();
    // Turns true when the drain ends, as the server sends GOAWAY: open
    // streams end then with UNAVAILABLE, so a client's reconnect goes to a
    // new connection, to another replica.
    let (close_streams, streams_closing) = tokio::sync::watch::channel(false);
    let address = listener.local_addr().ok();
    let watcher = watch_background_tasks(
        name,
        RunningTasks::start(tasks, &shutdown),
        health.clone(),
        service_names.clone(),
        shutdown.clone(),
    );
    let incoming = crate::tls::incoming(listener, tls.clone());
    let mut on_signal = shutdown.clone();
    let drain = limits.shutdown_drain;
    let stop_accepting = async move {
        on_signal.wait().await;
        // Load balancers see NOT_SERVING at once; new calls are still served
        // during the drain so none are refused while routing catches up.
        health.set("", ServingStatus::NotServing).await;
        for service in &service_names {
            health.set(service, ServingStatus::NotServing).await;
        }
        tracing::info!(server = name, "shutting down: health NOT_SERVING, draining");
        tokio::time::sleep(drain).await;
        close_streams.send_replace(true);
    };

    // Whose x-forwarded-for this server believes: the gateway has its own.
    let believed = match &http {
        Some((_, trusted)) => trusted.clone(),
        None => limits.trusted_proxies.clone(),
    };
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match http {
        None => {
            // The stack, outermost first. Outside it all, tonic applies the request
            // timeout (the shorter of `--request-timeout` and the client's
            // grpc-timeout) around the whole stack, so time spent waiting for a
            // concurrency slot or a session check counts against the deadline.
            let stack = ServiceBuilder::new()
                // First, so every later layer, the handler and every outbound call
                // see one request id, trace context, deadline and client address
                // (x-forwarded-for believed from trusted proxies only); echoes
                // x-request-id even on calls refused further in.
                .layer(RequestContextLayer::new(limits.trusted_proxies.clone()))
                // Outside the limit and the token check: calls that wait for a slot
                // or are refused (UNAUTHENTICATED, RESOURCE_EXHAUSTED) are logged
                // too, with the waiting counted in their latency.
                .layer(AccessLogLayer::new(name, metrics.clone()))
                // Bounds work in progress across all connections; excess calls wait
                // (until their deadline). Before the token check on purpose: a
                // signature check is work (~40 us uncached), so a flood of forged
                // or unauthenticated calls holds slots like any other instead of
                // spending CPU outside the bound; public methods (Login) are bounded
                // the same way.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.concurrency_limit,
                ))
                // Innermost: verifies the bearer JWT (cached verdicts; public
                // methods pass without one), refuses a caller of another kind than
                // the contract declares for the method (a user on WorkerService, a
                // worker on a user RPC, anyone but a service on an internal one)
                // before asking Auth anything, and, with a session guard, refuses
                // tokens whose login session or service account has ended; then
                // hands the handler its Principal. Nothing after it runs for a
                // refused call.
                .layer(
                    AuthLayer::new(verifier.clone(), callers).with_session_guard(sessions.clone()),
                )
                // Innermost, for server streams only (unary calls pass untouched):
                // a stream ends when its token expires or stops verifying, its
                // session ends (looked at every --session-check-ttl), its caller's
                // deadline passes or the server stops taking calls, each with a
                // status the client can act on; open streams are capped per
                // organization, per user and in all, public ones in a pool apart.
                // Streams hold no concurrency slot once their first response is out,
                // and --request-timeout does not cut them.
                .layer(
                    StreamLayer::new(limits.stream_limits(), streams_closing, verifier.clone())
                        .with_session_guard(sessions),
                )
                .into_inner();

            let server = tonic::transport::Server::builder()
                .timeout(limits.request_timeout)
                .max_concurrent_streams(limits.max_concurrent_streams)
                .http2_keepalive_interval(Some(limits.keepalive_interval))
                .http2_keepalive_timeout(Some(limits.keepalive_timeout))
                .tcp_nodelay(true)
                .layer(stack)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop_accepting);

            Box::pin(server)
        }
        Some((router, trusted)) => {
            drop((streams_closing, routes));
            drop(verifier);
            drop(callers);
            drop(sessions);
            // The gateway: the request context (request id, the client
            // address believed from its own trusted proxies only) and the
            // access log, then its own router, which does the rest.
            let stack = ServiceBuilder::new()
                .layer(RequestContextLayer::new(trusted))
                .layer(AccessLogLayer::new(name, metrics.clone()).public_front())
                .into_inner();
            let server = tonic::transport::Server::builder()
                .accept_http1(true)
                .max_concurrent_streams(limits.max_concurrent_streams)
                .http2_keepalive_interval(Some(limits.keepalive_interval))
                .http2_keepalive_timeout(Some(limits.keepalive_timeout))
                .tcp_nodelay(true)
                .layer(stack)
                .add_routes(Routes::from(router))
                .serve_with_incoming_shutdown(incoming, stop_accepting);
            Box::pin(server)
        }
    };
    let transport = match &tls {
        None => "plaintext",
        Some(tls) if tls.requires_client_certificates() => "mTLS",
        Some(_) => "TLS",
    };
    if believed.is_empty() {
        tracing::info!(server = name, address = ?address, transport, "serving");
    } else {
        tracing::info!(
            server = name,
            address = ?address,
            transport,
            trusted_proxies = %believed,
            "serving; x-forwarded-for believed from the trusted proxies"
        );
    }
    let mut deadline = shutdown;
    let bound = limits.shutdown_drain + limits.shutdown_grace;
    tokio::select! {
        result = server => result?,
        () = async move {
            deadline.wait().await;
            tokio::time::sleep(bound).await;
        } => {
            tracing::warn!(server = name, "shutdown grace exceeded; closing remaining calls");
        }
    }
    // Told to stop when shutdown fired; most are done by now.
    if let Ok(tasks) = watcher.await {
        tasks.stop(name, limits.shutdown_grace).await;
    }
    tracing::info!(server = name, "stopped");
    Ok(())
}

/// The server's own health service and the admin port's, told the same.
#[derive(Clone)]
struct Health {
    own: tonic_health::server::HealthReporter,
    admin: Admin,
}

impl Health {
    async fn set(&self, service: &str, status: ServingStatus) {
        self.own.set_service_status(service, status).await;
        self.admin.set_status(service, status).await;
    }
}

/// Until shutdown: a background task that ends is logged and makes every
/// service of the server (and the server) NOT_SERVING; RPCs go on being
/// served for the clients already connected. Hands the tasks back to be
/// stopped.
fn watch_background_tasks(
    server: &'static str,
    mut tasks: RunningTasks,
    health: Health,
    service_names: Vec<&'static str>,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<RunningTasks> {
    tokio::spawn(async move {
        tokio::select! {
            // Shutdown first: tasks end when it fires, and that is no failure.
            biased;
            () = shutdown.wait() => {}
            ended = tasks.first_to_end() => {
                tracing::error!(server, task = %ended, "background task ended before shutdown; health NOT_SERVING");
                for service in service_names.iter().copied().chain([""]) {
                    health.set(service, ServingStatus::NotServing).await;
                }
                shutdown.wait().await;
            }
        }
        tasks
    })
}
