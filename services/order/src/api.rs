//! The handlers of OrderService. Placing an order: claim the idempotency
//! key, snapshot the cart (on the caller's behalf), reserve stock (as the
//! Order service), store the order with its outbox row, make its
//! fulfillment execution (the relay does it later if that fails), clear the
//! cart. Refusals give the key back; nothing is reserved without a claim
//! that a sweep would release.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use trellis::cart::v1 as cart;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::common::v1::Money;
use trellis::order::v1 as pb;
use trellis_runtime::time::{millis_of, now_ms, timestamp};
use trellis_runtime::{TaskStream, spawn_stream, status_of as status_of_error};
use trellis_store::Page;
use trellis_tenancy::{CallContext, Propagate, Role, TenantContext};
use uuid::Uuid;

use crate::error::{OrderServiceError, Result};
use crate::relay::Relay;
use crate::store::{
    Cancelled, Claim, Customer, Delivery, Item, ItemOption, OrderRecord, OrderState, Orders,
    RequestKey, order_topic,
};

const MAX_NAME_BYTES: usize = 200;
const MAX_PHONE_BYTES: usize = 32;
const MAX_EMAIL_BYTES: usize = 254;
const MAX_ADDRESS_BYTES: usize = 1000;
const MAX_KEY_BYTES: usize = 128;
const MAX_REASON_BYTES: usize = 500;
/// A second call with a key in flight waits this long for the first.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// First and longest wait between looks at a claim in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);
const IN_FLIGHT_POLL_MAX: Duration = Duration::from_millis(500);
/// A claim unplaced this long belongs to a call that died (calls end
/// within --request-timeout, 30 s by default): take it over. A slower call
/// that still runs loses its claim safely: it can neither place the order
/// nor give the key or the stock back.
const CLAIM_STALE_MS: i64 = 120_000;

pub struct OrderApi {
    pub orders: Orders,
    pub carts: CartServiceClient<Propagate<Channel>>,
    pub relay: std::sync::Arc<Relay>,
}

fn id(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(OrderServiceError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| OrderServiceError::invalid(field, "must be a UUID"))
}

/// Printable text of at most `max` bytes.
fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String> {
    if required && value.trim().is_empty() {
        return Err(OrderServiceError::invalid(field, "required"));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(OrderServiceError::invalid(
            field,
            format!("at most {max} bytes, without control characters"),
        ));
    }
    Ok(value.trim().to_owned())
}

fn writer(tenant: &TenantContext) -> Result<()> {
    match tenant.role {
        Role::Admin | Role::Developer => Ok(()),
        Role::Viewer => Err(OrderServiceError::WriteRoleRequired),
    }
}

fn customer_of(customer: Option<pb::Customer>) -> Result<Customer> {
    let customer = customer.ok_or_else(|| OrderServiceError::invalid("customer", "required"))?;
    let name = text("customer.name", &customer.name, MAX_NAME_BYTES, true)?;
    let phone = text("customer.phone", &customer.phone, MAX_PHONE_BYTES, false)?;
    if !phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')' | '.'))
    {
        return Err(OrderServiceError::invalid(
            "customer.phone",
            "digits, spaces and + - ( ) . only",
        ));
    }
    let email = text("customer.email", &customer.email, MAX_EMAIL_BYTES, false)?;
    if !email.is_empty() && !email.contains('@') {
        return Err(OrderServiceError::invalid(
            "customer.email",
            "not an email address",
        ));
    }
    if phone.is_empty() && email.is_empty() {
        return Err(OrderServiceError::invalid(
            "customer",
            "a phone number or an email address is required",
        ));
    }
    Ok(Customer { name, phone, email })
}

fn delivery_of(delivery: Option<pb::Delivery>) -> Result<Delivery> {
    let delivery = delivery.ok_or_else(|| OrderServiceError::invalid("delivery", "required"))?;
    let delivered = match pb::DeliveryType::try_from(delivery.r#type) {
        Ok(pb::DeliveryType::Delivery) => true,
        Ok(pb::DeliveryType::Pickup) => false,
        _ => {
            return Err(OrderServiceError::invalid(
                "delivery.type",
                "DELIVERY or PICKUP",
            ));
        }
    };
    let address = text(
        "delivery.address",
        &delivery.address,
        MAX_ADDRESS_BYTES,
        delivered,
    )?;
    let requested_for = delivery.requested_for.as_ref().map(millis_of);
    // Year 1970 to 9999: what a timestamp can say and a client meant.
    if requested_for.is_some_and(|at| !(0..=253_402_300_799_000).contains(&at)) {
        return Err(OrderServiceError::invalid(
            "delivery.requested_for",
            "not a valid time",
        ));
    }
    Ok(Delivery {
        delivered,
        address,
        requested_for,
    })
}

fn money(minor: i64, currency: &str) -> Money {
    Money {
        amount_minor: minor,
        currency: currency.to_owned(),
    }
}

fn status_of(state: OrderState) -> pb::OrderStatus {
    match state {
        OrderState::Pending => pb::OrderStatus::Pending,
        OrderState::Confirmed => pb::OrderStatus::Confirmed,
        OrderState::Failed => pb::OrderStatus::Failed,
        OrderState::Cancelled => pb::OrderStatus::Cancelled,
    }
}

fn state_of(status: i32) -> Option<OrderState> {
    Some(match pb::OrderStatus::try_from(status).ok()? {
        pb::OrderStatus::Unspecified => return None,
        pb::OrderStatus::Pending => OrderState::Pending,
        pb::OrderStatus::Confirmed => OrderState::Confirmed,
        pb::OrderStatus::Failed => OrderState::Failed,
        pb::OrderStatus::Cancelled => OrderState::Cancelled,
    })
}

pub fn order_message(order: &OrderRecord) -> pb::Order {
    let currency = order.currency.as_str();
    pb::Order {
        order_id: order.id.to_string(),
        number: order.number,
        status: status_of(order.state) as i32,
        user_id: order.user_id.to_string(),
        organization_id: order.org_id.to_string(),
        session_id: order.session_id.to_string(),
        items: order
            .items
            .iter()
            .map(|item| pb::OrderItem {
                product_id: item.product_id.clone(),
                sku: item.sku.clone(),
                name: item.name.clone(),
                quantity: item.quantity,
                options: item
                    .options
                    .iter()
                    .map(|o| cart::ItemOption {
                        group: o.group.clone(),
                        value: o.value.clone(),
                        quantity: o.quantity,
                    })
                    .collect(),
                unit_price: Some(money(item.unit_price_minor, currency)),
                line_total: Some(money(item.line_total_minor, currency)),
            })
            .collect(),
        total: Some(money(order.total_minor, currency)),
        customer: Some(pb::Customer {
            name: order.customer.name.clone(),
            phone: order.customer.phone.clone(),
            email: order.customer.email.clone(),
        }),
        delivery: Some(pb::Delivery {
            r#type: if order.delivery.delivered {
                pb::DeliveryType::Delivery
            } else {
                pb::DeliveryType::Pickup
            } as i32,
            address: order.delivery.address.clone(),
            requested_for: order.delivery.requested_for.map(timestamp),
        }),
        execution_id: order
            .execution_id
            .map(|e| e.to_string())
            .unwrap_or_default(),
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
        failure_reason: order.failure_reason.clone(),
        cancel_reason: order.cancel_reason.clone(),
    }
}

/// The cart as ordered: its lines, total and currency; refused when empty
/// or mixing currencies.
fn snapshot(cart: &cart::Cart) -> Result<(Vec<Item>, i64, String)> {
    if cart.items.is_empty() {
        return Err(OrderServiceError::EmptyCart);
    }
    let mut currencies: Vec<&str> = cart
        .items
        .iter()
        .map(|i| i.unit_price.as_ref().map_or("", |m| m.currency.as_str()))
        .collect();
    currencies.sort_unstable();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(OrderServiceError::MixedCurrencies(currencies.join(", ")));
    }
    let mut total: i64 = 0;
    let mut items = Vec::with_capacity(cart.items.len());
    for line in &cart.items {
        let unit = line.unit_price.as_ref().map_or(0, |m| m.amount_minor);
        let line_total = unit
            .checked_mul(i64::from(line.quantity))
            .and_then(|t| total.checked_add(t).map(|sum| (t, sum)));
        let Some((line_total, sum)) = line_total else {
            return Err(OrderServiceError::invalid("cart", "the total is too large"));
        };
        total = sum;
        items.push(Item {
            product_id: line.product_id.clone(),
            sku: line.sku.clone(),
            name: line.name.clone(),
            quantity: line.quantity,
            options: line
                .options
                .iter()
                .map(|o| ItemOption {
                    group: o.group.clone(),
                    value: o.value.clone(),
                    quantity: o.quantity,
                })
                .collect(),
            unit_price_minor: unit,
            line_total_minor: line_total,
        });
    }
    Ok((items, total, currencies[0].to_owned()))
}

/// What the caller asked for, as compared between calls with one key.
fn fingerprint(session_id: Uuid, customer: &Customer, delivery: &Delivery) -> String {
    serde_json::json!({
        "session_id": session_id,
        "customer": customer,
        "delivery": delivery,
    })
    .to_string()
}

/// One stock line per cart line: the catalog adds up a product's lines
/// (each within its per-line bound).
fn stock_lines(items: &[Item]) -> Vec<cart::StockLine> {
    items
        .iter()
        .map(|item| cart::StockLine {
            product_id: item.product_id.clone(),
            quantity: item.quantity,
        })
        .collect()
}

impl OrderApi {
    fn visible(tenant: &TenantContext, order: &OrderRecord) -> bool {
        tenant.role == Role::Admin || order.user_id == tenant.user_id
    }

    async fn visible_order(&self, tenant: &TenantContext, order_id: Uuid) -> Result<OrderRecord> {
        match self.orders.get(tenant.org_id, order_id).await? {
            Some(order) if Self::visible(tenant, &order) => Ok(order),
            _ => Err(OrderServiceError::NotFound(order_id)),
        }
    }

    pub async fn place(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        request: pb::PlaceOrderRequest,
    ) -> Result<pb::Order> {
        writer(tenant)?;
        let session_id = id("session_id", &request.session_id)?;
        let customer = customer_of(request.customer)?;
        let delivery = delivery_of(request.delivery)?;
        let mut key = match request.idempotency_key.as_str() {
            "" => None,
            key => Some(RequestKey {
                org_id: tenant.org_id,
                user_id: tenant.user_id,
                key: text("idempotency_key", key, MAX_KEY_BYTES, true)?,
                claimed_at: 0,
            }),
        };
        let mut order_id = Uuid::new_v4();
        if let Some(key) = &mut key {
            let print = fingerprint(session_id, &customer, &delivery);
            match self.claim(key, &print, order_id).await? {
                Claim::New(claimed) => order_id = claimed,
                Claim::Placed(placed) => {
                    return Ok(order_message(&self.visible_order(tenant, placed).await?));
                }
                Claim::Mismatch => return Err(OrderServiceError::KeyReused),
                Claim::InFlight { .. } => return Err(OrderServiceError::InFlight),
            }
        }
        let placed = self
            .make(
                context,
                tenant,
                order_id,
                session_id,
                customer,
                delivery,
                key.as_ref(),
            )
            .await;
        match placed {
            Ok(order) => Ok(order),
            Err(unplaced) => {
                if !unplaced.holds_stock
                    && let Some(key) = &key
                    && let Err(error) = self.orders.unclaim(key).await
                {
                    // The sweep gives it back later.
                    tracing::warn!(%error, "giving an idempotency key back failed");
                }
                Err(unplaced.error)
            }
        }
    }

    /// Claims the key (setting its token), waiting a little, with growing
    /// pauses, for a call already placing it; takes over a claim whose call
    /// died.
    async fn claim(&self, key: &mut RequestKey, print: &str, order_id: Uuid) -> Result<Claim> {
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        let mut pause = IN_FLIGHT_POLL;
        loop {
            key.claimed_at = now_ms();
            match self.orders.claim(key, print, order_id).await? {
                Claim::InFlight {
                    order_id,
                    claimed_at,
                } => {
                    if key.claimed_at - claimed_at > CLAIM_STALE_MS
                        && self.orders.take_over(key, claimed_at).await?
                    {
                        return Ok(Claim::New(order_id));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(Claim::InFlight {
                            order_id,
                            claimed_at,
                        });
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(IN_FLIGHT_POLL_MAX);
                }
                settled => return Ok(settled),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn make(
        &self,
        context: &CallContext,
        tenant: &TenantContext,
        order_id: Uuid,
        session_id: Uuid,
        customer: Customer,
        delivery: Delivery,
        key: Option<&RequestKey>,
    ) -> Result<pb::Order, Unplaced> {
        let cart = self
            .carts
            .clone()
            .get_cart(context.outbound(cart::GetCartRequest {
                session_id: session_id.to_string(),
            }))
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => OrderServiceError::SessionNotFound(session_id),
                _ => OrderServiceError::upstream("cart", &status),
            })?
            .into_inner()
            .cart
            .unwrap_or_default();
        let (items, total_minor, currency) = snapshot(&cart)?;
        if let Err(error) = self.reserve(tenant.org_id, order_id, &items).await {
            // Cart may have reserved before the answer was lost: give it
            // back, and keep the key claimed (for the sweep of abandoned
            // placements, which releases by order id) if that fails too.
            let unknown = matches!(
                error,
                OrderServiceError::Unavailable { .. } | OrderServiceError::Upstream { .. }
            );
            let holds_stock = unknown
                && match self.relay.release(tenant.org_id, order_id).await {
                    Ok(()) => false,
                    Err(release) => {
                        tracing::warn!(%release, %order_id, "giving back a reservation of unknown outcome failed");
                        true
                    }
                };
            return Err(Unplaced { error, holds_stock });
        }
        let now = now_ms();
        let order = OrderRecord {
            id: order_id,
            org_id: tenant.org_id,
            user_id: tenant.user_id,
            number: 0,
            state: OrderState::Pending,
            session_id,
            items,
            total_minor,
            currency,
            customer,
            delivery,
            execution_id: None,
            failure_reason: String::new(),
            cancel_reason: String::new(),
            created_at: now,
            updated_at: now,
        };
        let placed = match self.orders.place(&order, key).await {
            Ok(Some(placed)) => placed,
            // Taken over by a retry, whose order (and reservation) it is.
            Ok(None) => return Err(OrderServiceError::InFlight.into()),
            Err(error) => {
                // Only while the claim is still this call's: else the stock
                // is the order's of whoever took it over.
                let ours = match key {
                    Some(key) => self.orders.unclaim(key).await.unwrap_or(false),
                    None => true,
                };
                if ours && let Err(release) = self.relay.release(tenant.org_id, order_id).await {
                    // Left to the sweep of abandoned claims (keyed orders).
                    tracing::warn!(%release, "giving back the stock of an unstored order failed");
                }
                return Err(OrderServiceError::from(error).into());
            }
        };
        // The relay does it when this fails: the outbox row stays.
        if let Err(error) = self.relay.enqueue_and_record(&placed).await {
            tracing::info!(%error, order_id = %placed.id, "fulfillment left to the outbox relay");
            self.relay.outbox_ready.notify_one();
        }
        self.clear_cart(context, &cart).await;
        let stored = self
            .orders
            .get(tenant.org_id, order_id)
            .await
            .map_err(OrderServiceError::from)?;
        Ok(order_message(stored.as_ref().unwrap_or(&placed)))
    }

    async fn reserve(&self, org_id: Uuid, order_id: Uuid, items: &[Item]) -> Result<()> {
        let mut request = tonic::Request::new(cart::ReserveStockRequest {
            organization_id: org_id.to_string(),
            order_id: order_id.to_string(),
            lines: stock_lines(items),
        });
        request.set_timeout(Duration::from_secs(3));
        match self.relay.catalog.clone().reserve_stock(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::FailedPrecondition => {
                Err(OrderServiceError::ShortStock(status.message().to_owned()))
            }
            Err(status) if status.code() == Code::NotFound => {
                Err(OrderServiceError::ShortStock(status.message().to_owned()))
            }
            // Released already: an abandoned placement of this key was
            // given up while this call still ran.
            Err(status) if status.code() == Code::Aborted => Err(OrderServiceError::InFlight),
            Err(status) => Err(OrderServiceError::upstream("cart", &status)),
        }
    }

    /// Empties the cart as it was ordered: lines added since stay.
    async fn clear_cart(&self, context: &CallContext, ordered: &cart::Cart) {
        let mut carts = self.carts.clone();
        let cleared = carts
            .clear_cart(context.outbound(cart::ClearCartRequest {
                session_id: ordered.session_id.clone(),
                expected_version: Some(ordered.version),
            }))
            .await;
        match cleared {
            Ok(_) => {}
            Err(status) if status.code() == Code::Aborted => {
                for item in &ordered.items {
                    let removed = carts
                        .remove_item(context.outbound(cart::RemoveItemRequest {
                            session_id: ordered.session_id.clone(),
                            item_id: item.item_id.clone(),
                            expected_version: None,
                        }))
                        .await;
                    if let Err(status) = removed
                        && status.code() != Code::NotFound
                    {
                        tracing::warn!(code = ?status.code(), "removing an ordered line from the cart failed");
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "clearing the cart after an order failed")
            }
        }
    }

    pub async fn get(&self, tenant: &TenantContext, order_id: &str) -> Result<pb::Order> {
        let order_id = id("order_id", order_id)?;
        Ok(order_message(&self.visible_order(tenant, order_id).await?))
    }

    pub async fn list(
        &self,
        tenant: &TenantContext,
        request: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse> {
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| OrderServiceError::invalid(e.field(), e.to_string()))?;
        let user = (tenant.role != Role::Admin).then_some(tenant.user_id);
        let found = self
            .orders
            .list(tenant.org_id, user, state_of(request.status), &page)
            .await?;
        let cursors: Vec<(i64, String)> = found
            .iter()
            .map(|o| (o.created_at, o.id.to_string()))
            .collect();
        Ok(pb::ListOrdersResponse {
            next_page_token: page.next_token(&cursors, |(at, id)| (*at, id.as_str())),
            orders: found.iter().map(order_message).collect(),
        })
    }

    pub async fn cancel(
        &self,
        tenant: &TenantContext,
        request: pb::CancelOrderRequest,
    ) -> Result<pb::Order> {
        writer(tenant)?;
        let order_id = id("order_id", &request.order_id)?;
        let reason = text("reason", &request.reason, MAX_REASON_BYTES, false)?;
        // Visibility first: another user's order is not found, not refused.
        self.visible_order(tenant, order_id).await?;
        match self
            .orders
            .cancel(tenant.org_id, order_id, &reason, now_ms())
            .await?
        {
            Cancelled::Now(order) => {
                self.relay.outbox_ready.notify_one();
                Ok(order_message(&order))
            }
            Cancelled::NotPending(order) => Err(OrderServiceError::NotPending(
                order_id,
                match order.state {
                    OrderState::Confirmed => "confirmed",
                    OrderState::Failed => "failed",
                    _ => "cancelled",
                },
            )),
            Cancelled::NotFound => Err(OrderServiceError::NotFound(order_id)),
        }
    }
}

/// WatchOrder: the order now, then after every change, until final. Waits
/// on the order's fan-out topic (subscribed before the first read), and
/// reads the database each time, so a change on any replica is seen.
pub async fn watch(
    orders: &Orders,
    tenant: &TenantContext,
    request: pb::WatchOrderRequest,
) -> Result<TaskStream<pb::WatchOrderResponse>> {
    let order_id = id("order_id", &request.order_id)?;
    let mut subscription = orders
        .fanout()
        .subscribe(&order_topic(tenant.org_id, order_id));
    let first = match orders.get(tenant.org_id, order_id).await? {
        Some(order) if OrderApi::visible(tenant, &order) => order,
        _ => return Err(OrderServiceError::NotFound(order_id)),
    };
    let orders = orders.clone();
    let org_id = tenant.org_id;
    Ok(spawn_stream(move |sender| async move {
        let mut current = first;
        loop {
            let message = pb::WatchOrderResponse {
                order: Some(order_message(&current)),
            };
            if !sender.send(message).await || current.state.is_final() {
                return;
            }
            loop {
                tokio::select! {
                    () = sender.closed() => return,
                    wake = subscription.recv() => {
                        if wake.is_none() {
                            return;
                        }
                        subscription.clear();
                    }
                }
                match orders.get(org_id, order_id).await {
                    Ok(Some(now)) if now != current => {
                        current = now;
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(error) => {
                        return sender
                            .fail(status_of_error(OrderServiceError::from(error)))
                            .await;
                    }
                }
            }
        }
    }))
}

/// Why an order was not placed, and whether its placement may still hold
/// stock: then its key stays claimed, for the sweep of abandoned ones.
struct Unplaced {
    error: OrderServiceError,
    holds_stock: bool,
}

impl From<OrderServiceError> for Unplaced {
    fn from(error: OrderServiceError) -> Self {
        Unplaced {
            error,
            holds_stock: false,
        }
    }
}
