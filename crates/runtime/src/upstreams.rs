//! Clients to the other Trellis servers: one pooled, lazily connected HTTP/2
//! channel per server, in the two modes a service calls in.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};
use trellis_tenancy::{AsService, AsServiceLayer, Propagate, PropagateLayer, ServiceTokens};

/// Where every server of the deployment is reached (`--<name>-url`, or this
/// process's own address for a server it runs), and this server's own
/// service token when it has credentials.
#[derive(Clone, Default)]
pub struct Upstreams {
    channels: HashMap<&'static str, Channel>,
    endpoints: HashMap<&'static str, Endpoint>,
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
            endpoints: HashMap::new(),
            tokens,
            worker_tokens: None,
        }
    }

    /// Also where each server is, for a caller that opens connections of
    /// its own (the gateway, which spreads its callers over several).
    pub fn with_endpoints(mut self, endpoints: HashMap<&'static str, Endpoint>) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// The address (and connection settings) of the server named `server`.
    pub fn endpoint(&self, server: &str) -> Option<Endpoint> {
        self.endpoints.get(server).cloned()
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
