//! CartService's handlers. Every call first makes sure the session is the
//! caller's (asking the Session service with the caller's credentials,
//! remembered briefly); a session found ended takes its cart with it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use trellis::cart::v1 as pb;
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis::session::v1::{CheckSessionsRequest, GetSessionRequest};
use trellis_tenancy::{AsService, CallContext, Propagate, Role, TenantContext};
use uuid::Uuid;

use crate::error::{CartServiceError, Result};
use crate::model::{CartState, Line, MAX_LINES, checked_options, checked_quantity, id, now_ms};
use crate::store::{Carts, Catalog, ChangeRefused, Edit};

/// Sessions one CheckSessions call may name (the Session service's bound).
pub const MAX_CHECKED_SESSIONS: usize = 500;

/// Sessions whose owner is remembered at once; beyond it the least used go.
const OWNER_CACHE_CAPACITY: usize = 100_000;

pub struct CartApi {
    pub carts: Carts,
    pub catalog: Catalog,
    pub sessions: std::sync::Arc<SessionOwners>,
}

/// Whose each session is, as the Session service last said, for `ttl`.
pub struct SessionOwners {
    /// With the caller's credentials: answers for the caller's own only.
    client: SessionServiceClient<Propagate<Channel>>,
    /// As this service: which sessions exist at all, whoever owns them.
    directory: Option<SessionServiceClient<AsService<Channel>>>,
    ttl: Duration,
    /// (organization, session) -> (owner, remembered until).
    known: quick_cache::sync::Cache<(Uuid, Uuid), (Uuid, Instant)>,
}

impl SessionOwners {
    pub fn new(
        channel: Propagate<Channel>,
        directory: Option<AsService<Channel>>,
        ttl: Duration,
    ) -> Self {
        SessionOwners {
            client: SessionServiceClient::new(channel),
            directory: directory.map(SessionServiceClient::new),
            ttl,
            known: quick_cache::sync::Cache::new(OWNER_CACHE_CAPACITY),
        }
    }

    /// Which of `session_ids` (at most [`MAX_CHECKED_SESSIONS`]) of one
    /// organization are live; `None` without service credentials.
    pub async fn live_among(
        &self,
        org_id: Uuid,
        session_ids: &[Uuid],
    ) -> Result<Option<HashSet<Uuid>>> {
        let Some(directory) = &self.directory else {
            return Ok(None);
        };
        let answer = directory
            .clone()
            .check_sessions(CheckSessionsRequest {
                organization_id: org_id.to_string(),
                session_ids: session_ids.iter().map(Uuid::to_string).collect(),
            })
            .await
            .map_err(|status| {
                CartServiceError::SessionsUnavailable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?;
        Ok(Some(
            answer
                .into_inner()
                .live
                .iter()
                .filter_map(|live| Uuid::parse_str(&live.session_id).ok())
                .collect(),
        ))
    }

    /// `Ok(true)` when the session is the caller's and live (as of at most
    /// `ttl` ago); `Ok(false)` when it is not (ended, another user's or
    /// organization's). Asking records a use of the session.
    async fn is_callers(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        session_id: Uuid,
    ) -> Result<bool> {
        let key = (tenant.org_id, session_id);
        if let Some((owner, until)) = self.known.get(&key)
            && Instant::now() < until
        {
            return Ok(owner == tenant.user_id);
        }
        let asked = self
            .client
            .clone()
            .get_session(context.outbound(GetSessionRequest {
                session_id: session_id.to_string(),
            }))
            .await;
        match asked {
            Ok(found) => {
                // Never past the session's own end.
                let left = found
                    .into_inner()
                    .session
                    .and_then(|s| s.expires_at)
                    .map(|at| {
                        let left = trellis_runtime::time::millis_of(&at).saturating_sub(now_ms());
                        Duration::from_millis(u64::try_from(left).unwrap_or(0))
                    })
                    .unwrap_or_default();
                self.known
                    .insert(key, (tenant.user_id, Instant::now() + self.ttl.min(left)));
                Ok(true)
            }
            Err(status) if status.code() == Code::NotFound => {
                self.known.remove(&key);
                Ok(false)
            }
            Err(status) => Err(CartServiceError::SessionsUnavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

fn writer(tenant: &TenantContext) -> Result<()> {
    match tenant.role {
        Role::Admin | Role::Developer => Ok(()),
        Role::Viewer => Err(CartServiceError::WriteRoleRequired),
    }
}

fn line_index(lines: &[Line], item_id: Uuid) -> Result<usize> {
    lines
        .iter()
        .position(|l| l.id == item_id)
        .ok_or(CartServiceError::ItemNotFound(item_id))
}

/// A tracked stock must cover what the whole cart would hold of the
/// product: `line` (new or changed) plus its other lines of it.
fn within_stock(lines: &[Line], line: &Line, stock: Option<i64>) -> Result<()> {
    let Some(available) = stock else {
        return Ok(());
    };
    let held: i64 = lines
        .iter()
        .filter(|l| l.product_id == line.product_id && l.id != line.id)
        .map(|l| l.quantity)
        .sum();
    if held + line.quantity > available {
        return Err(CartServiceError::InsufficientStock {
            product_id: line.product_id,
            available,
        });
    }
    Ok(())
}

/// UpdateItem (options replaced) and UpdateItemQuantity (options kept).
pub struct ItemEdit {
    pub session_id: String,
    pub item_id: String,
    pub quantity: i32,
    /// `None` keeps the line's options.
    pub options: Option<Vec<pb::ItemOption>>,
    pub expected_version: Option<i64>,
}

/// The line a change answers, and the cart after it.
pub struct Changed {
    pub item: Option<pb::CartItem>,
    pub cart: pb::Cart,
}

impl CartApi {
    /// The session's id, once it is known to be the caller's. An ended
    /// session's cart goes now (lazily; the sweeper catches the rest).
    async fn owned(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        session_id: &str,
    ) -> Result<Uuid> {
        let session_id = id("session_id", session_id)?;
        if self
            .sessions
            .is_callers(context, tenant, session_id)
            .await?
        {
            return Ok(session_id);
        }
        // Not the caller's: ended, or another user's (whose cart stays).
        // Only a session the Session service no longer has loses its cart,
        // and only a cart that exists costs the question.
        if !self.carts.exists(tenant.org_id, session_id).await? {
            return Err(CartServiceError::SessionNotFound(session_id));
        }
        match self.sessions.live_among(tenant.org_id, &[session_id]).await {
            Ok(Some(live)) if !live.contains(&session_id) => {
                if let Err(error) = self.carts.delete(tenant.org_id, &[session_id]).await {
                    tracing::warn!(%error, "removing the cart of an ended session");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "cannot tell whether the session ended"),
        }
        Err(CartServiceError::SessionNotFound(session_id))
    }

    pub async fn get(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        session_id: &str,
    ) -> Result<pb::Cart> {
        let session_id = self.owned(context, tenant, session_id).await?;
        Ok(self.carts.get(tenant.org_id, session_id).await?.message())
    }

    pub async fn item(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        request: pb::GetItemRequest,
    ) -> Result<pb::CartItem> {
        let session_id = self.owned(context, tenant, &request.session_id).await?;
        let item_id = id("item_id", &request.item_id)?;
        let cart = self.carts.get(tenant.org_id, session_id).await?;
        let index = line_index(&cart.lines, item_id)?;
        Ok(cart.lines[index].message())
    }

    /// The session of a change, once the caller may change carts and the
    /// session is theirs: checked before anything else about the request,
    /// so another user's session answers only NOT_FOUND.
    async fn writable(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        session_id: &str,
    ) -> Result<Uuid> {
        writer(tenant)?;
        self.owned(context, tenant, session_id).await
    }

    /// One change of a writable session's cart: `decide` runs on its lines
    /// inside the store's write transaction.
    async fn change(
        &self,
        tenant: &TenantContext,
        session_id: Uuid,
        expected_version: Option<i64>,
        decide: impl FnOnce(&[Line]) -> Result<(Edit, Option<Uuid>)>,
    ) -> Result<Changed> {
        let changed = self
            .carts
            .change(
                tenant.org_id,
                session_id,
                tenant.user_id,
                expected_version,
                now_ms(),
                decide,
            )
            .await?;
        let (item_id, cart): (Option<Uuid>, CartState) = match changed {
            Ok(done) => done,
            Err(ChangeRefused::Stale { expected, current }) => {
                return Err(CartServiceError::VersionMismatch { expected, current });
            }
            Err(ChangeRefused::NotOwner) => {
                return Err(CartServiceError::SessionNotFound(session_id));
            }
            Err(ChangeRefused::Decided(error)) => return Err(error),
        };
        let item = item_id
            .and_then(|id| cart.lines.iter().find(|l| l.id == id))
            .map(Line::message);
        Ok(Changed {
            item,
            cart: cart.message(),
        })
    }

    /// The product a line may hold: this organization's, active, with
    /// stock for `quantity`.
    async fn orderable(
        &self,
        tenant: &TenantContext,
        product_id: Uuid,
        quantity: i64,
    ) -> Result<crate::model::Product> {
        let product = self
            .catalog
            .get(tenant.org_id, product_id)
            .await?
            .filter(|p| p.active)
            .ok_or(CartServiceError::ProductNotFound(product_id))?;
        if let Some(available) = product.stock.filter(|s| *s < quantity) {
            return Err(CartServiceError::InsufficientStock {
                product_id,
                available,
            });
        }
        Ok(product)
    }

    pub async fn add(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        request: pb::AddItemRequest,
    ) -> Result<Changed> {
        let session_id = self.writable(context, tenant, &request.session_id).await?;
        let product_id = id("product_id", &request.product_id)?;
        let quantity = checked_quantity("quantity", request.quantity)?;
        let options = checked_options(&request.options)?;
        let product = self.orderable(tenant, product_id, quantity).await?;
        let stock = product.stock;
        let line = Line {
            id: Uuid::new_v4(),
            product_id,
            sku: product.sku,
            name: product.name,
            quantity,
            options,
            unit_price: product.price,
            added_at: now_ms(),
        };
        self.change(tenant, session_id, request.expected_version, move |lines| {
            if lines.len() >= MAX_LINES {
                return Err(CartServiceError::TooManyLines);
            }
            within_stock(lines, &line, stock)?;
            let item_id = line.id;
            Ok((Edit::Add(line), Some(item_id)))
        })
        .await
    }

    pub async fn update(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        edit: ItemEdit,
    ) -> Result<Changed> {
        let ItemEdit {
            session_id,
            item_id,
            quantity,
            options,
            expected_version,
        } = edit;
        let session_id = self.writable(context, tenant, &session_id).await?;
        let item_id = id("item_id", &item_id)?;
        let quantity = checked_quantity("quantity", quantity)?;
        let options = options.as_deref().map(checked_options).transpose()?;
        // Stock is checked against the line's product, read before the
        // change; the line is found (or not) again inside it.
        let current = {
            let cart = self.carts.get(tenant.org_id, session_id).await?;
            cart.lines[line_index(&cart.lines, item_id)?].product_id
        };
        let stock = self.orderable(tenant, current, quantity).await?.stock;
        self.change(tenant, session_id, expected_version, move |lines| {
            let mut line = lines[line_index(lines, item_id)?].clone();
            line.quantity = quantity;
            if let Some(options) = options {
                line.options = options;
            }
            within_stock(lines, &line, stock)?;
            Ok((Edit::Replace(line), Some(item_id)))
        })
        .await
    }

    pub async fn remove(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        request: pb::RemoveItemRequest,
    ) -> Result<pb::Cart> {
        let session_id = self.writable(context, tenant, &request.session_id).await?;
        let item_id = id("item_id", &request.item_id)?;
        let changed = self
            .change(tenant, session_id, request.expected_version, move |lines| {
                line_index(lines, item_id)?;
                Ok((Edit::Remove(item_id), None))
            })
            .await?;
        Ok(changed.cart)
    }

    pub async fn clear(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        request: pb::ClearCartRequest,
    ) -> Result<pb::Cart> {
        let session_id = self.writable(context, tenant, &request.session_id).await?;
        let changed = self
            .change(tenant, session_id, request.expected_version, |_| {
                Ok((Edit::Clear, None))
            })
            .await?;
        Ok(changed.cart)
    }
}
