//! Clients to the other Trellis servers: one pooled, lazily connected HTTP/2
//! channel per server, in the two modes a service calls in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::ClientTls;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use trellis_tenancy::{AsService, AsServiceLayer, Propagate, PropagateLayer, ServiceTokens};

/// Where every server of the deployment is reached (`--<name>-url`, or this
/// process's own address for a server it runs), and this server's own
/// service token when it has credentials.
#[derive(Clone, Default)]
pub struct Upstreams {
    channels: HashMap<&'static str, Channel>,
    targets: HashMap<&'static str, UpstreamTarget>,
    tokens: Option<Arc<ServiceTokens>>,
    worker_tokens: Option<Arc<ServiceTokens>>,
}

impl Upstreams {
    pub fn new(
        channels: HashMap<&'static str, Channel>,
        tokens: Option<Arc<ServiceTokens>>,
    ) -> Self {
        Upstreams {
            channels,
            targets: HashMap::new(),
            tokens,
            worker_tokens: None,
        }
    }

    /// Also where each server is, for a caller that opens connections of
    /// its own (the gateway, which spreads its callers over several).
    pub fn with_targets(mut self, targets: HashMap<&'static str, UpstreamTarget>) -> Self {
        self.targets = targets;
        self
    }

    /// A channel of its own to the server named `server`, with
    /// `per_address` connections to each of its replicas.
    pub fn connect(&self, server: &str, per_address: usize) -> Option<Channel> {
        Some(self.targets.get(server)?.connect(per_address))
    }

    /// Also a worker account's token, for a server's built-in worker (the
    /// Order server's fulfillment).
    pub fn with_worker_tokens(mut self, tokens: Option<Arc<ServiceTokens>>) -> Self {
        self.worker_tokens = tokens;
        self
    }

    /// The channel to the server named `server` ("auth", "cart", ...).
    pub fn channel(&self, server: &str) -> Option<Channel> {
        self.channels.get(server).cloned()
    }

    /// A client channel *on behalf of the caller*: the caller's credentials,
    /// request id, trace context and remaining deadline travel with each
    /// call that carries its `CallContext::outbound`.
    pub fn for_caller(&self, server: &str) -> Option<Propagate<Channel>> {
        let channel = self.channel(server)?;
        Some(tower::Layer::layer(&PropagateLayer::default(), channel))
    }

    /// A client channel *as this service*: this server's own token, renewed
    /// before it expires; no caller's token is involved. `None` without
    /// service-account credentials.
    pub fn as_service(&self, server: &str) -> Option<AsService<Channel>> {
        let tokens = self.tokens.clone()?;
        let channel = self.channel(server)?;
        Some(tower::Layer::layer(&AsServiceLayer::new(tokens), channel))
    }

    /// A client channel *as this process's worker account*, as any
    /// external worker calls; `None` without worker credentials.
    pub fn as_worker(&self, server: &str) -> Option<AsService<Channel>> {
        let tokens = self.worker_tokens.clone()?;
        let channel = self.channel(server)?;
        Some(tower::Layer::layer(&AsServiceLayer::new(tokens), channel))
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut servers: Vec<_> = self.channels.keys().collect();
        servers.sort();
        f.debug_struct("Upstreams")
            .field("servers", &servers)
            .field("as_service", &self.tokens.is_some())
            .field("as_worker", &self.worker_tokens.is_some())
            .finish()
    }
}

/// How often a server's name is resolved again (its replicas come and go)
/// and the client certificate files looked at.
const REFRESH: Duration = Duration::from_secs(5);

/// Where one server is reached: its URL (or a comma-separated list of
/// replicas' URLs, for hosts without a DNS name that lists them all) and,
/// with `--tls-ca`, TLS.
#[derive(Clone, Debug)]
pub struct UpstreamTarget {
    /// As configured, for logs.
    name: String,
    replicas: Vec<Replica>,
    tls: Option<ClientTls>,
}

#[derive(Clone, Debug)]
struct Replica {
    url: http::Uri,
    host: String,
    port: u16,
}

/// More replica URLs than this in one setting is a mistake, not a fleet.
const MAX_REPLICA_URLS: usize = 64;

impl Replica {
    fn parse(url: &str, tls: bool) -> Result<Replica, String> {
        let parsed: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let secure = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: use http:// or https://")),
        };
        if secure != tls {
            return Err(format!(
                "{url:?}: https:// URLs go with --tls-ca, http:// ones without"
            ));
        }
        let host = parsed
            .host()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Replica {
            url: parsed,
            host,
            port,
        })
    }

    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let mut addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((self.host.as_str(), self.port))
                .await?
                .collect();
        // `localhost` is often ::1 and 127.0.0.1 while servers listen on
        // one: with any IPv4 address, keep those only.
        if addresses.iter().any(SocketAddr::is_ipv4) {
            addresses.retain(SocketAddr::is_ipv4);
        }
        Ok(addresses)
    }
}

impl UpstreamTarget {
    /// Every URL must be `https://` exactly when `tls` is set.
    pub fn new(url: &str, tls: Option<ClientTls>) -> Result<Self, String> {
        let replicas = url
            .split(',')
            .map(|one| Replica::parse(one.trim(), tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if replicas.len() > MAX_REPLICA_URLS {
            return Err(format!(
                "{} URLs in one setting; at most {MAX_REPLICA_URLS}",
                replicas.len()
            ));
        }
        Ok(UpstreamTarget {
            name: url.to_owned(),
            replicas,
            tls,
        })
    }

    /// A channel spread over every address the names resolve to (a
    /// headless Service's pods, or the replicas listed), `per_address`
    /// connections each, each call to the less loaded of two: client-side
    /// balancing, so one long-lived HTTP/2 connection does not tie a caller
    /// to one replica. Addresses are resolved again every [`REFRESH`];
    /// rotated client certificate files reconnect everything, new
    /// connections first.
    pub fn connect(&self, per_address: usize) -> Channel {
        let (channel, changes) = Channel::balance_channel(64);
        tokio::spawn(keep_endpoints(self.clone(), per_address.max(1), changes));
        channel
    }

    fn endpoint(&self, address: SocketAddr, replica: usize) -> Result<Endpoint, String> {
        let replica = &self.replicas[replica];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| e.to_string())?
            // Requests still name the server as configured (:authority).
            .origin(replica.url.clone())
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let config = tls.tonic_config(&replica.host).map_err(|e| e.to_string())?;
            endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
        }
        Ok(endpoint)
    }

    /// Every address of every replica, with the replica it came from. One
    /// replica's name failing to resolve fails the round: the caller keeps
    /// what it had rather than dropping that replica's connections.
    async fn resolve(&self) -> std::io::Result<Vec<(SocketAddr, usize)>> {
        let mut addresses = Vec::new();
        for (index, replica) in self.replicas.iter().enumerate() {
            for address in replica.resolve().await? {
                if !addresses.iter().any(|(known, _)| *known == address) {
                    addresses.push((address, index));
                }
            }
        }
        addresses.sort();
        Ok(addresses)
    }
}

type EndpointKey = (u64, SocketAddr, usize);

/// Whether a connection made to `endpoint` now completes its handshake.
async fn accepted(endpoint: &Endpoint) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), endpoint.connect()).await,
        Ok(Ok(_))
    )
}

/// The addresses that accept a TCP connection now, and whether any did
/// not. A stopped replica (a process restarting, a pod not yet gone from
/// DNS) would otherwise get its share of calls, each failing at once. When
/// none accepts, all stay: calls then fail fast rather than wait for one.
async fn reachable(addresses: Vec<(SocketAddr, usize)>) -> (Vec<(SocketAddr, usize)>, bool) {
    let mut probes = tokio::task::JoinSet::new();
    for (index, (address, _)) in addresses.iter().enumerate() {
        let address = *address;
        probes.spawn(async move {
            let answered = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(address),
            )
            .await;
            (index, matches!(answered, Ok(Ok(_))))
        });
    }
    let mut accepting = vec![false; addresses.len()];
    while let Some(Ok((index, open))) = probes.join_next().await {
        accepting[index] = open;
    }
    let open: Vec<_> = addresses
        .iter()
        .zip(&accepting)
        .filter(|(_, open)| **open)
        .map(|(address, _)| *address)
        .collect();
    let some_unreachable = open.len() < addresses.len();
    if open.is_empty() {
        (addresses, some_unreachable)
    } else {
        (open, some_unreachable)
    }
}

/// Keeps the balanced channel's endpoints to the addresses the target
/// resolves to, until the channel is dropped.
async fn keep_endpoints(
    target: UpstreamTarget,
    per_address: usize,
    changes: tokio::sync::mpsc::Sender<Change<EndpointKey, Endpoint>>,
) {
    let mut generation = 0_u64;
    let mut certificates = target.tls.as_ref().map(ClientTls::stamp);
    // Address -> the generation its connections were made with.
    let mut current: HashMap<SocketAddr, u64> = HashMap::new();
    let mut warned = false;
    loop {
        let stamp = target.tls.as_ref().map(ClientTls::stamp);
        if stamp != certificates {
            certificates = stamp;
            generation += 1;
        }
        let mut some_unreachable = false;
        match target.resolve().await {
            Ok(addresses) if !addresses.is_empty() => {
                let addresses = reachable(addresses).await;
                some_unreachable = addresses.1;
                let addresses = addresses.0;
                warned = false;
                let mut added = Vec::new();
                for (address, replica) in &addresses {
                    if current.get(address) == Some(&generation) {
                        continue;
                    }
                    let rotated = current.contains_key(address);
                    match target.endpoint(*address, *replica) {
                        // Rotated files replace working connections only
                        // once one made with them is accepted: a peer that
                        // does not trust them yet keeps the old ones.
                        Ok(endpoint) if rotated && !accepted(&endpoint).await => {
                            tracing::warn!(upstream = %target.name, %address, "the rotated TLS files are not accepted yet; keeping the connections made before");
                        }
                        Ok(endpoint) => {
                            for slot in 0..per_address {
                                let change =
                                    Change::Insert((generation, *address, slot), endpoint.clone());
                                if changes.send(change).await.is_err() {
                                    return;
                                }
                            }
                            added.push(*address);
                        }
                        Err(error) => {
                            tracing::warn!(upstream = %target.name, %error, "cannot make a connection; keeping the previous ones");
                        }
                    }
                }
                // New connections are in before old ones go: no gap.
                let stale: Vec<(SocketAddr, u64)> = current
                    .iter()
                    .filter(|(address, made)| {
                        !addresses.iter().any(|(known, _)| known == *address)
                            || (added.contains(address) && **made != generation)
                    })
                    .map(|(address, made)| (*address, *made))
                    .collect();
                for (address, made) in stale {
                    for slot in 0..per_address {
                        if changes
                            .send(Change::Remove((made, address, slot)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    current.remove(&address);
                }
                for address in added {
                    current.insert(address, generation);
                }
            }
            outcome => {
                // Keep what we have: a DNS hiccup is no reason to drop
                // working connections.
                if !warned {
                    let error = match outcome {
                        Err(error) => error.to_string(),
                        Ok(_) => "no addresses".to_owned(),
                    };
                    tracing::warn!(upstream = %target.name, %error, "cannot resolve; keeping the previous addresses");
                    warned = true;
                }
            }
        }
        // A replica that is away is looked at again soon: it rejoins
        // within half a second of listening again.
        let wait = if current.is_empty() || some_unreachable {
            Duration::from_millis(500)
        } else {
            REFRESH
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changes.closed() => return,
        }
    }
}
