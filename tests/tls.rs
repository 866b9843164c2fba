//! Every server over mTLS with certificates made here: the order flow works
//! end to end (JWKS, session checks and service calls all over mTLS); a
//! client without a certificate, with one from another CA, expecting
//! another server name or speaking plaintext is refused; health and
//! `/metrics` answer in plaintext on the admin port; a rotated certificate
//! is served on new connections without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis::auth::v1::WhoAmIRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::order::v1 as pb;
use trellis::order::v1::order_service_client::OrderServiceClient;
use trellis_cli::ServiceName;

struct Pki {
    dir: PathBuf,
    ca: String,
}

/// A CA and, signed by it, a certificate for `localhost` and 127.0.0.1
/// usable as server and client (what one Trellis process presents both
/// ways).
fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(dir: &Path) -> (Pki, CertifiedIssuer<'static, KeyPair>) {
        let ca = issuer("trellis test CA");
        let (cert, key) = leaf(&ca, "trellis");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.join("tls.key"), &key).unwrap();
        (
            Pki {
                dir: dir.to_owned(),
                ca: ca.pem(),
            },
            ca,
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A TLS channel to `port` expecting `domain`, presenting `identity`.
async fn tls_channel(
    port: u16,
    ca: &str,
    domain: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// The certificate a server presents on a new connection.
async fn presented_certificate(port: u16, ca: &str, identity: (String, String)) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(identity.0.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One plain HTTP/1.1 GET, read to the end.
async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn every_server_over_mtls_refusing_strangers() {
    let data_dir = temp_dir("tls");
    let (pki, ca) = Pki::new(&data_dir);
    let args = up_args(
        &data_dir,
        &[
            "--tls-cert",
            &pki.path("tls.crt"),
            "--tls-key",
            &pki.path("tls.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
            "--tls-ca",
            &pki.path("ca.pem"),
            "--admin-addr",
            "127.0.0.1:0",
            "--shutdown-drain",
            "1500ms",
        ],
    );
    let running = trellis_cli::start(&ServiceName::ALL, &args).await.unwrap();
    let addresses = running.addresses.clone();
    let port = |service| {
        addresses
            .iter()
            .find(|(name, _)| *name == service)
            .unwrap()
            .1
            .port()
    };
    let client = leaf(&ca, "a client");
    let connect = |service| {
        let client = client.clone();
        let ca = pki.ca.clone();
        async move {
            tls_channel(port(service), &ca, "localhost", Some(client))
                .await
                .unwrap()
        }
    };

    // The flow: every server checks tokens against a JWKS fetched from Auth
    // over mTLS, asks Auth about sessions, and Order calls Cart and
    // Execution as a service.
    let (token, session_id) = buyer_with_cart(
        connect(ServiceName::Auth).await,
        connect(ServiceName::Session).await,
        connect(ServiceName::Cart).await,
        "tls",
        2,
    )
    .await;
    AuthServiceClient::new(connect(ServiceName::Auth).await)
        .who_am_i(authed(WhoAmIRequest {}, &token))
        .await
        .unwrap();
    let mut orders = OrderServiceClient::new(connect(ServiceName::Order).await);
    let order = orders
        .place_order(authed(pickup_order(&session_id, "tls-1"), &token))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut status = pb::OrderStatus::Unspecified;
    for _ in 0..100 {
        status = orders
            .get_order(authed(
                pb::GetOrderRequest {
                    order_id: order.order_id.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .status();
        if status == pb::OrderStatus::Confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, pb::OrderStatus::Confirmed);

    // Strangers: each is refused at the handshake or on the first call.
    let auth_port = port(ServiceName::Auth);
    let refused = |channel: Result<Channel, tonic::transport::Error>| async move {
        match channel {
            Err(_) => true,
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_err(),
        }
    };
    let no_certificate = tls_channel(auth_port, &pki.ca, "localhost", None).await;
    assert!(refused(no_certificate).await, "no client certificate");
    let stranger_ca = issuer("another CA");
    let stranger = leaf(&stranger_ca, "stranger");
    let other_ca = tls_channel(auth_port, &pki.ca, "localhost", Some(stranger)).await;
    assert!(refused(other_ca).await, "a certificate of another CA");
    let wrong_name =
        tls_channel(auth_port, &pki.ca, "auth.example.com", Some(client.clone())).await;
    assert!(refused(wrong_name).await, "another server name expected");
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{auth_port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(refused(plaintext).await, "plaintext");
    // The gateway is the public front: TLS, no client certificate asked.
    let browser_like = tls_channel(port(ServiceName::Gateway), &pki.ca, "localhost", None)
        .await
        .unwrap();
    AuthServiceClient::new(browser_like)
        .who_am_i(authed(WhoAmIRequest {}, &token))
        .await
        .unwrap();
    // The legitimate client still gets in after all that.
    assert!(!refused(Ok(connect(ServiceName::Auth).await)).await);

    // The admin port: plaintext health for kubelet, and the metrics.
    let admin = running.admin_address.unwrap();
    let health = HealthClient::new(channel(admin).await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let health = HealthClient::new(channel(admin).await)
        .check(HealthCheckRequest {
            service: "trellis.order.v1.OrderService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let metrics = http_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for sample in [
        r#"trellis_rpc_requests_total{server="order",service="trellis.order.v1.OrderService",method="PlaceOrder",code="OK"} 1"#,
        r#"trellis_rpc_requests_total{server="auth",service="trellis.auth.v1.AuthService",method="SignUp",code="OK"} 1"#,
        r#"trellis_rpc_duration_seconds_count{server="order",service="trellis.order.v1.OrderService",method="PlaceOrder"} 1"#,
        r#"trellis_db_pool_connections{server="order",backend="sqlite"}"#,
        r#"trellis_execution_queue_pending{server="execution"} 0"#,
        "# TYPE trellis_rpc_duration_seconds histogram",
    ] {
        assert!(metrics.contains(sample), "{sample} not in\n{metrics}");
    }

    // Rotation: new files, served on the next connection, no restart.
    let before = presented_certificate(auth_port, &pki.ca, client.clone()).await;
    let (cert, key) = leaf(&ca, "trellis rotated");
    std::fs::write(data_dir.join("tls.key.new"), &key).unwrap();
    std::fs::write(data_dir.join("tls.crt.new"), &cert).unwrap();
    // Renamed into place, as a Secret's volume swaps its files.
    std::fs::rename(data_dir.join("tls.key.new"), data_dir.join("tls.key")).unwrap();
    std::fs::rename(data_dir.join("tls.crt.new"), data_dir.join("tls.crt")).unwrap();
    let after = presented_certificate(auth_port, &pki.ca, client.clone()).await;
    assert_ne!(before, after, "the rotated certificate is served");
    let rotated = rustls::pki_types::CertificateDer::from(after);
    use rustls::pki_types::pem::PemObject;
    assert_eq!(
        rotated,
        rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    );
    // Calls between the servers go on after the rotation.
    orders
        .get_order(authed(
            pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap();

    // Idle sockets from one address hold no one else's handshake: 40 from
    // 127.0.0.2 (its share is 16), then a real client from 127.0.0.1.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(
            socket
                .connect(([127, 0, 0, 1], auth_port).into())
                .await
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    assert!(!refused(Ok(connect(ServiceName::Auth).await)).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a handshake waited {:?} behind idle sockets",
        started.elapsed()
    );
    drop(idle);

    // Shutdown drains over TLS too: NOT_SERVING at once, new connections
    // still served during the drain.
    let admin_channel = channel(admin).await;
    let stopping = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = HealthClient::new(admin_channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::NotServing);
    assert!(
        !refused(Ok(connect(ServiceName::Auth).await)).await,
        "a new TLS connection during the drain is served"
    );
    stopping.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Serving TLS without calling over it (or the reverse), or a CA bundle
/// that does not load, stops the start with a message naming the setting.
#[tokio::test]
async fn half_a_tls_setup_or_a_broken_bundle_refuses_to_start() {
    let data_dir = temp_dir("tls-half");
    let (pki, _) = Pki::new(&data_dir);
    std::fs::write(data_dir.join("broken.pem"), "not a certificate").unwrap();
    let (cert, key, ca, broken) = (
        pki.path("tls.crt"),
        pki.path("tls.key"),
        pki.path("ca.pem"),
        pki.path("broken.pem"),
    );
    for (flags, expected) in [
        (vec!["--tls-cert", &cert, "--tls-key", &key], "go together"),
        (vec!["--tls-ca", &ca], "go together"),
        (
            vec!["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &broken],
            "broken.pem",
        ),
    ] {
        let error = match trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &flags)).await {
            Ok(running) => {
                running.shutdown().await.unwrap();
                panic!("{flags:?} started");
            }
            Err(error) => error.to_string(),
        };
        assert!(error.contains(expected), "{flags:?}: {error}");
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
