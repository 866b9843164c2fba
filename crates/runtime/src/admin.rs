//! The admin port: gRPC health for kubelet probes (which speak no TLS, so
//! it stays plaintext when the servers serve TLS) and `/metrics` in
//! Prometheus text format, for every server of the process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::Metrics;

/// What the admin port answers, shared by the servers of the process.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    health: HealthReporter,
    health_service:
        tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
}

impl Default for Admin {
    fn default() -> Self {
        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        Admin {
            metrics: Arc::new(Metrics::default()),
            health,
            health_service,
        }
    }
}

impl Admin {
    /// Every server's health changes are told here too; "" is the
    /// process: NOT_SERVING as soon as any of its servers is.
    pub(crate) async fn set_status(&self, service: &str, status: ServingStatus) {
        self.health.set_service_status(service, status).await;
    }

    /// Serves until the task is dropped or aborted: the process's last
    /// server to stop ends it, so probes see NOT_SERVING through the drain.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let address: Option<SocketAddr> = listener.local_addr().ok();
        let metrics = self.metrics.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render().await,
                    )
                }
            }),
        );
        // Reflection of health alone, so `grpcurl -plaintext` needs no proto.
        // Both versions: grpcurl before 1.9 asks v1alpha only.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
        };
        let routes = tonic::service::Routes::from(router)
            .add_service(self.health_service)
            .add_service(
                reflection()
                    .build_v1()
                    .expect("the health descriptor set is valid"),
            )
            .add_service(
                reflection()
                    .build_v1alpha()
                    .expect("the health descriptor set is valid"),
            );
        tracing::info!(address = ?address, "admin port: gRPC health and /metrics (plaintext)");
        tonic::transport::Server::builder()
            .accept_http1(true)
            // A scrape or a probe is small: few at once.
            .concurrency_limit_per_connection(16)
            .add_routes(routes)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
    }
}
