//! TLS and mTLS with rustls: serving (`--tls-cert`/`--tls-key`, and
//! `--tls-client-ca` to require client certificates) and the settings every
//! outbound channel uses (`--tls-ca`, presenting the same certificate).
//! Certificate files are read again when they change, so a rotated Secret
//! takes effect on new connections without a restart.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Once, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::ConfigError;

/// A TLS handshake must finish within this, or the connection is dropped:
/// a client that connects and says nothing holds no task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress at once per listener; a connection past it is
/// closed at once rather than queued behind the others.
const MAX_HANDSHAKES: usize = 4096;

/// Of those, what one client address may hold: idle sockets from one
/// place cannot take the others' turn.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// One crypto provider for the whole process (tonic, sqlx and redis all
/// use rustls): aws-lc-rs, installed before the first TLS object is made.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only if another provider was installed first: keep that one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// TLS flags, shared by every server of the process.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain this process serves (and presents as a client
    /// to the other servers); with --tls-key turns TLS on.
    #[arg(long, env = "TRELLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRELLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    /// Not the gateway's: browsers present none, they bring tokens.
    #[arg(long, env = "TRELLIS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA bundle the other servers' certificates are checked against;
    /// set, every service-to-service call (JWKS, session checks, calls on a
    /// caller's behalf) is TLS and `--<name>-url`s are `https://`.
    #[arg(long, env = "TRELLIS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let files = [
            ("tls-cert", &self.tls_cert),
            ("tls-key", &self.tls_key),
            ("tls-client-ca", &self.tls_client_ca),
            ("tls-ca", &self.tls_ca),
        ];
        for (name, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} {}: no such file",
                    path.display()
                )));
            }
        }
        if self.tls_client_ca.is_some() && self.tls_ca.is_none() {
            // Servers that require client certificates of each other can
            // only be reached by clients that speak TLS to them.
            return Err(ConfigError::Invalid(
                "tls-client-ca (mTLS) needs tls-ca too: the other servers are called over TLS"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    path: String,
    reason: String,
}

fn tls_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certificates.is_empty() {
        return Err(tls_error(path, "no PEM certificate in the file"));
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_error(path, e))
}

fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|e| tls_error(path, e))?;
    }
    Ok(roots)
}

/// When each of a set of files last changed (and its size): a different
/// stamp means read them again.
pub type FileStamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[&Path]) -> FileStamp {
    paths
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A server's TLS settings, swapped whole when its files change;
/// connections already open keep the certificate they shook hands with.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<(FileStamp, Arc<rustls::ServerConfig>)>,
}

/// Where a server's TLS settings come from.
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    alpn: Vec<Vec<u8>>,
}

impl ServerTls {
    /// `alpn`: the protocols offered (`h2`; the gateway adds `http/1.1`).
    pub fn load(args: &TlsArgs, alpn: &[&[u8]]) -> Result<Option<Arc<ServerTls>>, TlsError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        install_crypto_provider();
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        };
        let current = RwLock::new((files.stamp(), Arc::new(files.build()?)));
        Ok(Some(Arc::new(ServerTls { files, current })))
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The settings for the next handshake, read again first if a file
    /// changed. A file caught half-written (or broken) keeps the last good
    /// settings, said once per change.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let files = self.files.stamp();
        {
            let current = self.current.read().expect("TLS settings lock");
            if current.0 == files {
                return current.1.clone();
            }
        }
        let mut current = self.current.write().expect("TLS settings lock");
        if current.0 != files {
            match self.files.build() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed: new connections use them");
                    current.1 = Arc::new(config);
                }
                Err(error) => {
                    tracing::warn!(%error, "TLS certificate files changed but do not load; keeping the previous ones");
                }
            }
            current.0 = files;
        }
        current.1.clone()
    }
}

impl ServerFiles {
    fn stamp(&self) -> FileStamp {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        stamp(&paths)
    }

    /// Reads the files now: a broken one is an error naming it.
    fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let chain = read_certificates(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(root_store(ca)?))
                        .build()
                        .map_err(|e| tls_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| tls_error(&self.key, e))?;
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}

/// What every outbound channel of the process uses: the CA to check
/// servers against and the certificate to present. Read per connection
/// generation: [`ClientTls::changed`] tells the channels to reconnect with
/// the new files.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    pub fn from_args(args: &TlsArgs) -> Option<ClientTls> {
        let ca = args.tls_ca.clone()?;
        install_crypto_provider();
        Some(ClientTls {
            ca,
            identity: args.tls_cert.clone().zip(args.tls_key.clone()),
        })
    }

    /// The files' stamp, to compare with a later one.
    pub fn stamp(&self) -> FileStamp {
        let mut paths = vec![self.ca.as_path()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.as_path(), key.as_path()]);
        }
        stamp(&paths)
    }

    /// Reads every file now: an error names the broken one.
    pub fn check(&self) -> Result<(), TlsError> {
        self.tonic_config("check").map(|_| ())
    }

    /// tonic's settings for a channel to `domain` (the name its certificate
    /// must carry).
    pub fn tonic_config(
        &self,
        domain: &str,
    ) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let ca = std::fs::read(&self.ca).map_err(|e| tls_error(&self.ca, e))?;
        // Parsed here too, so a broken bundle is an error now rather than a
        // refused handshake later.
        root_store(&self.ca)?;
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name(domain);
        if let Some((cert, key)) = &self.identity {
            read_certificates(cert)?;
            read_key(key)?;
            let cert_pem = std::fs::read(cert).map_err(|e| tls_error(cert, e))?;
            let key_pem = std::fs::read(key).map_err(|e| tls_error(key, e))?;
            config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        Ok(config)
    }
}

/// An accepted connection, plain or TLS. Either tells tonic its TCP peer
/// the same way: the request context reads the client address from it.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Connection::Plain(stream) => stream.connect_info(),
            Connection::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// What a server accepts connections from.
pub type Incoming =
    Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Connection>> + Send + 'static>>;

/// The connections of `listener`: with `tls`, those whose TLS handshake
/// succeeded; plain, those that sent their first bytes. Either way within
/// [`HANDSHAKE_TIMEOUT`], so a socket that never speaks is closed before
/// it holds anything of the server's, and does not hold up a shutdown (an
/// HTTP/2 connection still waiting for its preface does not end on
/// GOAWAY: hyper waits for the preface first). A connection that has
/// spoken and then stalls is the HTTP/2 keepalive's (and, at shutdown,
/// the grace period's) to end.
pub fn incoming(listener: TcpListener, tls: Option<Arc<ServerTls>>) -> Incoming {
    match tls {
        // A plain handshake costs one round trip, so the per-address bound
        // is wider: a client opening many channels at once is no attacker.
        None => Box::pin(accept(
            listener,
            MAX_PLAIN_OPENINGS_PER_ADDRESS,
            |stream| async move {
                first_bytes(&stream).await?;
                Ok(Connection::Plain(stream))
            },
        )),
        Some(tls) => Box::pin(accept(
            listener,
            MAX_HANDSHAKES_PER_ADDRESS,
            move |stream| {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                async move {
                    let inner = acceptor.accept(stream).await?;
                    Ok(Connection::Tls(Box::new(inner)))
                }
            },
        )),
    }
}

/// Of plaintext connections still to send their first bytes, what one
/// client address may hold.
const MAX_PLAIN_OPENINGS_PER_ADDRESS: usize = 256;

/// The HTTP/2 preface is 24 bytes; an HTTP/1.1 request (the gateway's)
/// is at least that long, or ends its headers sooner (`GET / HTTP/1.0`
/// and a blank line, as load balancers' health checks send).
const FIRST_BYTES: usize = 24;

/// Waits until the client has sent [`FIRST_BYTES`] or a whole short
/// HTTP/1 request head, without reading them (the server reads them
/// next). A peek does not consume, so readiness stays set while fewer have
/// come: the wait between looks grows instead.
async fn first_bytes(stream: &TcpStream) -> std::io::Result<()> {
    let mut buffer = [0u8; FIRST_BYTES];
    let mut pause = Duration::from_millis(1);
    loop {
        match stream.peek(&mut buffer).await? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before speaking",
                ));
            }
            n if n >= FIRST_BYTES => return Ok(()),
            n if buffer[..n].windows(4).any(|w| w == b"\r\n\r\n") => return Ok(()),
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Accepts connections on `listener` and hands over those whose
/// `handshake` succeeded, until tonic stops taking them (after the drain:
/// the stream is dropped then, and handshakes in progress with it).
/// Accepting never waits for a handshake: each runs on its own within
/// [`HANDSHAKE_TIMEOUT`]; past [`MAX_HANDSHAKES`] in progress, or
/// `per_address` from one address (an IPv6 /64 counts as one), a new
/// connection is closed at once, so idle sockets from one client cannot
/// keep others out; past [`MAX_HANDSHAKES`] in all (idle sockets from many
/// addresses), the oldest handshake in progress is dropped for the new
/// one, so the listener never stops taking connections. A refused
/// handshake (no client certificate, one from another CA) is logged at
/// DEBUG and dropped.
fn accept<H, F>(
    listener: TcpListener,
    per_address: usize,
    handshake: H,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>>
where
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = std::io::Result<Connection>> + Send + 'static,
{
    let (ready, incoming) = tokio::sync::mpsc::channel(1024);
    let pending = Arc::new(PendingHandshakes::default());
    tokio::spawn(async move {
        let mut in_progress = tokio::task::JoinSet::new();
        // Oldest first; finished ones are skipped when met.
        let mut oldest = std::collections::VecDeque::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
                // Reaps finished handshakes so the set stays small.
                Some(_) = in_progress.join_next(), if !in_progress.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match pending.clone().take(peer.ip(), per_address) {
                Ok(slot) => slot,
                Err(Full::Address) => {
                    tracing::debug!(%peer, "too many handshakes in progress from this address; connection closed");
                    continue;
                }
                Err(Full::Listener) => {
                    while let Some(handle) = oldest.pop_front() {
                        let handle: tokio::task::AbortHandle = handle;
                        if !handle.is_finished() {
                            handle.abort();
                            break;
                        }
                    }
                    tracing::debug!(%peer, "handshakes full; the oldest in progress dropped");
                    pending.clone().take_anyway(peer.ip())
                }
            };
            // tonic ignores its own tcp_nodelay for a listener it did not
            // bind: without it, Nagle holds a response's later frames for
            // the client's delayed ACK (tens of ms).
            let _ = stream.set_nodelay(true);
            let handshake = handshake(stream);
            let ready = ready.clone();
            // Finished handles are dropped as the queue is walked; it holds
            // at most the handshakes begun within the last timeout.
            if oldest.len() >= MAX_HANDSHAKES {
                oldest.retain(|handle: &tokio::task::AbortHandle| !handle.is_finished());
            }
            oldest.push_back(in_progress.spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
                drop(slot);
                match handshake {
                    Ok(Ok(connection)) => {
                        let _ = ready.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "handshake refused"),
                    Err(_) => tracing::debug!(%peer, "handshake timed out"),
                }
            }));
        }
        // Dropping the set on return aborts the handshakes still going.
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Handshakes in progress, in all and per client (about
/// [`MAX_HANDSHAKES`] entries at most, one per client with one in
/// progress).
#[derive(Default)]
struct PendingHandshakes {
    by_address: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// Which bound a new handshake met.
enum Full {
    Address,
    Listener,
}

/// What one client is counted as: its IPv4 address, or its IPv6 /64 (one
/// host's share of addresses).
fn client_of(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            std::net::IpAddr::V6(segments.into())
        }
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
        v4 => v4,
    }
}

impl PendingHandshakes {
    fn take(
        self: Arc<Self>,
        address: std::net::IpAddr,
        per_address: usize,
    ) -> Result<PendingSlot, Full> {
        let address = client_of(address);
        let mut guard = self.by_address.lock().expect("handshake counts lock");
        let (total, by_address) = &mut *guard;
        let mine = by_address.get(&address).copied().unwrap_or(0);
        if mine >= per_address {
            return Err(Full::Address);
        }
        if *total >= MAX_HANDSHAKES {
            return Err(Full::Listener);
        }
        drop(guard);
        Ok(self.take_anyway(address))
    }

    /// A slot past the listener's bound: taken once the oldest handshake
    /// was told to stop (its slot goes when its task does).
    fn take_anyway(self: Arc<Self>, address: std::net::IpAddr) -> PendingSlot {
        let address = client_of(address);
        let mut guard = self.by_address.lock().expect("handshake counts lock");
        let (total, by_address) = &mut *guard;
        *total += 1;
        *by_address.entry(address).or_default() += 1;
        drop(guard);
        PendingSlot {
            pending: self,
            address,
        }
    }
}

struct PendingSlot {
    pending: Arc<PendingHandshakes>,
    address: std::net::IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut guard = self
            .pending
            .by_address
            .lock()
            .expect("handshake counts lock");
        let (total, by_address) = &mut *guard;
        *total -= 1;
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_ipv4_address_or_its_ipv6_slash_64() {
        let v4: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_of(v4), v4);
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_of(mapped), v4);
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(other));
    }

    #[tokio::test]
    async fn a_short_http1_request_head_counts_as_spoken() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), first_bytes(&server)).await;
        assert!(waiting.is_err(), "half a request head is not enough");
        client.write_all(b"\r\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), first_bytes(&server))
            .await
            .expect("a whole head is")
            .unwrap();
    }
}
