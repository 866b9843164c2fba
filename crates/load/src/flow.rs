//! One virtual user: its clients, its account and products, and the order
//! flow it loops: open a session, add three items with options, place an
//! order and follow WatchOrder to CONFIRMED.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use trellis::auth::v1 as auth;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::cart::v1 as cart;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::common::v1::Money;
use trellis::order::v1 as order;
use trellis::order::v1::order_service_client::OrderServiceClient;
use trellis::session::v1 as session;
use trellis::session::v1::session_service_client::SessionServiceClient;

use crate::stats::{Recorder, Step, truncate};

pub const PASSWORD: &str = "Load-Test-Horse-9";

/// Where each service is: one URL each, or the gateway's for all. A
/// comma-separated list balances over several replicas.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    pub auth: String,
    pub session: String,
    pub cart: String,
    pub order: String,
}

impl Targets {
    /// `trellis up`'s default ports on this host.
    pub fn local() -> Targets {
        Targets {
            auth: "http://127.0.0.1:50051".into(),
            session: "http://127.0.0.1:50052".into(),
            cart: "http://127.0.0.1:50053".into(),
            order: "http://127.0.0.1:50054".into(),
        }
    }

    /// Every call through the gateway's plain gRPC.
    pub fn gateway(url: &str) -> Targets {
        Targets {
            auth: url.into(),
            session: url.into(),
            cart: url.into(),
            order: url.into(),
        }
    }
}

/// How each user's calls behave, beyond where they go.
#[derive(Clone, Debug, Serialize)]
pub struct CallPolicy {
    /// Deadline of each unary call (sent as grpc-timeout).
    pub deadline: Duration,
    /// How long a flow waits for CONFIRMED.
    pub confirm_timeout: Duration,
    /// Retries of a call answered UNAVAILABLE (0: report and give up).
    /// PlaceOrder keeps its idempotency key, so a retry never orders twice;
    /// a broken WatchOrder is opened again.
    pub retries: u32,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            deadline: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            retries: 0,
        }
    }
}

fn channel(url: &str) -> Result<Channel, String> {
    let endpoints = url
        .split(',')
        .map(|one| {
            Endpoint::from_shared(one.trim().to_owned())
                .map(|e| {
                    e.connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                })
                .map_err(|e| format!("url {one:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match endpoints.as_slice() {
        [one] => one.connect_lazy(),
        _ => Channel::balance_list(endpoints.into_iter()),
    })
}

/// One connection per distinct URL: through the gateway a user has one.
#[derive(Clone)]
pub struct Clients {
    auth: AuthServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    cart: CartServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

impl Clients {
    pub fn connect(targets: &Targets) -> Result<Clients, String> {
        let mut channels: HashMap<String, Channel> = HashMap::new();
        let mut get = |target: &str| -> Result<Channel, String> {
            if let Some(existing) = channels.get(target) {
                return Ok(existing.clone());
            }
            let made = channel(target)?;
            channels.insert(target.to_owned(), made.clone());
            Ok(made)
        };
        let auth = get(&targets.auth)?;
        let sessions = get(&targets.session)?;
        let cart = get(&targets.cart)?;
        let orders = get(&targets.order)?;
        Ok(Clients {
            auth: AuthServiceClient::new(auth),
            sessions: SessionServiceClient::new(sessions),
            catalog: CatalogServiceClient::new(cart.clone()),
            cart: CartServiceClient::new(cart),
            orders: OrderServiceClient::new(orders),
        })
    }
}

/// What a later run needs to log the same user in again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub email: String,
    pub products: Vec<String>,
}

pub struct User {
    pub index: usize,
    pub account: Account,
    clients: Clients,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    pub access_token: String,
}

/// The three lines of every order: (sku, name, category, price, options).
const MENU: [(&str, &str, &str, i64); 3] = [
    ("TACO-PASTOR", "Taco al pastor", "taco", 350),
    ("TACO-CARNITAS", "Taco de carnitas", "taco", 375),
    ("AGUA-JAMAICA", "Agua de jamaica", "drink", 250),
];

fn options(line: usize) -> Vec<cart::ItemOption> {
    let option = |group: &str, value: &str, quantity: i32| cart::ItemOption {
        group: group.into(),
        value: value.into(),
        quantity,
    };
    match line {
        0 => vec![
            option("salsa", "verde", 1),
            option("garnish", "cilantro", 2),
        ],
        1 => vec![option("salsa", "roja", 1), option("extra", "queso", 1)],
        _ => vec![option("size", "large", 1)],
    }
}

/// A failed step: its record is already made; the flow stops here.
pub struct Failed;

/// The code a call failed with, as a gRPC client would say it: tonic calls
/// a call its connection dropped before sending it (a server going away)
/// CANCELLED or UNKNOWN, where grpc-go and grpc-java say UNAVAILABLE. Such
/// a status has the transport error as its source; a server's never does.
fn code_of(status: &Status) -> Code {
    let from_transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Cancelled | Code::Unknown if from_transport => Code::Unavailable,
        code => code,
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .fold(String::new(), |mut name, c| {
            if c.is_uppercase() && !name.is_empty() {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
            name
        })
}

async fn timed<T, F>(recorder: &Recorder, step: Step, call: F) -> Result<T, Failed>
where
    F: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let started = Instant::now();
    match call.await {
        Ok(response) => {
            recorder.ok(step, started.elapsed());
            Ok(response.into_inner())
        }
        Err(status) => {
            recorder.error(step, &code_name(code_of(&status)), status.message());
            Err(Failed)
        }
    }
}

/// An answer that came back OK but is not what the contract promises.
fn wrong(recorder: &Recorder, step: Step, what: &str) -> Failed {
    recorder.error(step, "WRONG_ANSWER", what);
    Failed
}

impl User {
    fn request<T>(&self, message: T, deadline: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.set_timeout(deadline);
        request
    }

    /// Signs up a new organization (its admin, with three products), or
    /// logs in to `known`.
    pub async fn set_up(
        index: usize,
        targets: &Targets,
        tag: &str,
        known: Option<Account>,
        recorder: &Recorder,
    ) -> Result<User, Failed> {
        let clients = Clients::connect(targets).map_err(|e| wrong(recorder, Step::SignUp, &e))?;
        let mut auth = clients.auth.clone();
        let (access_token, account) = match known {
            Some(account) => {
                let login = timed(
                    recorder,
                    Step::Login,
                    auth.login(auth::LoginRequest {
                        email: account.email.clone(),
                        password: PASSWORD.into(),
                    }),
                )
                .await?;
                (login.access_token, account)
            }
            None => {
                let email = format!("load.{tag}.{index}@example.com");
                let signed_up = timed(
                    recorder,
                    Step::SignUp,
                    auth.sign_up(auth::SignUpRequest {
                        email: email.clone(),
                        password: PASSWORD.into(),
                        name: format!("Load user {index}"),
                        organization_name: format!("Load {tag} {index}"),
                    }),
                )
                .await?;
                (
                    signed_up.access_token,
                    Account {
                        email,
                        products: Vec::new(),
                    },
                )
            }
        };
        let bearer = format!("Bearer {access_token}")
            .parse()
            .map_err(|_| wrong(recorder, Step::Login, "access token is not ASCII"))?;
        let mut user = User {
            index,
            account,
            clients,
            bearer,
            access_token,
        };
        if user.account.products.is_empty() {
            for (sku, name, category, price) in MENU {
                let request = user.request(
                    cart::CreateProductRequest {
                        sku: sku.into(),
                        name: name.into(),
                        category: category.into(),
                        price: Some(Money {
                            amount_minor: price,
                            currency: "USD".into(),
                        }),
                        // Tracked, so every order takes the reservation path.
                        stock: Some(1_000_000_000),
                        ..Default::default()
                    },
                    Duration::from_secs(10),
                );
                let mut catalog = user.clients.catalog.clone();
                let made = timed(
                    recorder,
                    Step::CreateProduct,
                    catalog.create_product(request),
                )
                .await?
                .product
                .ok_or_else(|| wrong(recorder, Step::CreateProduct, "no product"))?;
                user.account.products.push(made.product_id);
            }
        }
        Ok(user)
    }

    /// Retries `call` on UNAVAILABLE (each attempt recorded), up to the policy.
    async fn with_retries<T, F, Fut>(
        &self,
        recorder: &Recorder,
        policy: &CallPolicy,
        step: Step,
        mut call: F,
    ) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match call().await {
                Ok(response) => {
                    recorder.ok(step, started.elapsed());
                    return Ok(response.into_inner());
                }
                Err(status) => {
                    recorder.error(step, &code_name(code_of(&status)), status.message());
                    if code_of(&status) != Code::Unavailable || attempt >= policy.retries {
                        return Err(Failed);
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// One iteration. Returns the order id once it is CONFIRMED; `placed`
    /// gets the id as soon as PlaceOrder acknowledged it.
    pub async fn flow(
        &self,
        recorder: &Recorder,
        policy: &CallPolicy,
        placed: &mut Option<String>,
    ) -> Result<String, Failed> {
        let flow_started = Instant::now();
        let mut metadata = HashMap::new();
        metadata.insert("channel".to_owned(), "load".to_owned());
        let session_id = self
            .with_retries(recorder, policy, Step::CreateSession, || {
                let mut sessions = self.clients.sessions.clone();
                let request = self.request(
                    session::CreateSessionRequest {
                        metadata: metadata.clone(),
                    },
                    policy.deadline,
                );
                async move { sessions.create_session(request).await }
            })
            .await?
            .session
            .map(|s| s.session_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| wrong(recorder, Step::CreateSession, "no session id"))?;

        for (line, product_id) in self.account.products.iter().enumerate() {
            let added = self
                .with_retries(recorder, policy, Step::AddItem, || {
                    let mut carts = self.clients.cart.clone();
                    let request = self.request(
                        cart::AddItemRequest {
                            session_id: session_id.clone(),
                            product_id: product_id.clone(),
                            quantity: 1 + line as i32,
                            options: options(line),
                            expected_version: None,
                        },
                        policy.deadline,
                    );
                    async move { carts.add_item(request).await }
                })
                .await?;
            let lines = added.cart.map_or(0, |c| c.items.len());
            if added.item.is_none() || lines != line + 1 {
                return Err(wrong(
                    recorder,
                    Step::AddItem,
                    &format!("cart has {lines} lines after adding line {}", line + 1),
                ));
            }
        }

        let idempotency_key = uuid::Uuid::new_v4().to_string();
        let place_started = Instant::now();
        let order = self
            .with_retries(recorder, policy, Step::PlaceOrder, || {
                let mut orders = self.clients.orders.clone();
                let request = self.request(
                    order::PlaceOrderRequest {
                        session_id: session_id.clone(),
                        customer: Some(order::Customer {
                            name: format!("Load customer {}", self.index),
                            phone: "+1 555 0100".into(),
                            email: String::new(),
                        }),
                        delivery: Some(order::Delivery {
                            r#type: order::DeliveryType::Pickup as i32,
                            address: String::new(),
                            requested_for: None,
                        }),
                        idempotency_key: idempotency_key.clone(),
                    },
                    policy.deadline,
                );
                async move { orders.place_order(request).await }
            })
            .await?
            .order
            .ok_or_else(|| wrong(recorder, Step::PlaceOrder, "no order"))?;
        if order.order_id.is_empty() || order.items.len() != self.account.products.len() {
            return Err(wrong(
                recorder,
                Step::PlaceOrder,
                &format!("order {:?} has {} lines", order.order_id, order.items.len()),
            ));
        }
        *placed = Some(order.order_id.clone());

        self.until_confirmed(recorder, policy, &order.order_id, place_started)
            .await?;
        recorder.ok(Step::Flow, flow_started.elapsed());
        Ok(order.order_id)
    }

    /// Follows WatchOrder to a final status; opens it again after a broken
    /// stream (the first message is the order as it is now, so nothing is
    /// missed).
    async fn until_confirmed(
        &self,
        recorder: &Recorder,
        policy: &CallPolicy,
        order_id: &str,
        place_started: Instant,
    ) -> Result<(), Failed> {
        let deadline = place_started + policy.confirm_timeout;
        let mut reopened = 0;
        loop {
            let mut orders = self.clients.orders.clone();
            let request = self.request(
                order::WatchOrderRequest {
                    order_id: order_id.to_owned(),
                },
                policy.confirm_timeout,
            );
            let opened = Instant::now();
            let watched = tokio::time::timeout_at(deadline.into(), async {
                let mut stream = orders.watch_order(request).await?.into_inner();
                let mut first = true;
                while let Some(message) = stream.message().await? {
                    if first {
                        recorder.ok(Step::WatchOrder, opened.elapsed());
                        first = false;
                    }
                    let status = message.order.map_or(0, |o| o.status);
                    if status != order::OrderStatus::Pending as i32 {
                        return Ok(Some(status));
                    }
                }
                Ok::<_, Status>(None)
            })
            .await;
            let status = match watched {
                Err(_) => {
                    recorder.error(
                        Step::PlaceToConfirmed,
                        "NOT_CONFIRMED_IN_TIME",
                        &format!(
                            "order {order_id} not final within {:?}",
                            policy.confirm_timeout
                        ),
                    );
                    return Err(Failed);
                }
                Ok(Err(status)) => {
                    recorder.error(
                        Step::WatchOrder,
                        &code_name(code_of(&status)),
                        status.message(),
                    );
                    // A watch has no side effects: after a broken stream
                    // (a server stopped or killed) it is opened again.
                    let broken = matches!(
                        code_of(&status),
                        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
                    );
                    if broken && reopened < policy.retries {
                        reopened += 1;
                        tokio::time::sleep(backoff(reopened)).await;
                        continue;
                    }
                    return Err(Failed);
                }
                Ok(Ok(None)) => {
                    return Err(wrong(
                        recorder,
                        Step::WatchOrder,
                        "stream ended before a final status",
                    ));
                }
                Ok(Ok(Some(status))) => status,
            };
            if status == order::OrderStatus::Confirmed as i32 {
                recorder.ok(Step::PlaceToConfirmed, place_started.elapsed());
                return Ok(());
            }
            let name = order::OrderStatus::try_from(status)
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_else(|_| status.to_string());
            return Err(wrong(
                recorder,
                Step::PlaceToConfirmed,
                truncate(&format!("order {order_id} ended {name}"), 120),
            ));
        }
    }

    /// The order as the server has it now (for the fault checks).
    pub async fn order_status(&self, order_id: &str) -> Result<i32, Status> {
        let mut orders = self.clients.orders.clone();
        let request = self.request(
            order::GetOrderRequest {
                order_id: order_id.to_owned(),
            },
            Duration::from_secs(10),
        );
        Ok(orders
            .get_order(request)
            .await?
            .into_inner()
            .order
            .map_or(0, |o| o.status))
    }
}

/// 100 ms, 200 ms, ... up to 2 s, with jitter so retries do not march.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    Duration::from_millis(base / 2 + rand::random::<u64>() % (base / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_grpc_ones() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn a_dropped_connection_is_unavailable_but_a_servers_cancel_is_not() {
        let server_said = Status::cancelled("the caller went away");
        assert_eq!(code_of(&server_said), Code::Cancelled);
        let transport = Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert_eq!(transport.code(), Code::Unknown);
        assert_eq!(code_of(&transport), Code::Unavailable);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..20 {
            let wait = backoff(attempt);
            assert!(wait <= Duration::from_secs(2), "{wait:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(200));
    }
}
