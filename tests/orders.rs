//! The Order server end to end with every server it relies on, on SQLite
//! and PostgreSQL: placing from a cart (stock taken, cart cleared, the
//! fulfillment execution made and run by the built-in worker, the order
//! watched to CONFIRMED), idempotency (100 concurrent calls with one key
//! make one order and one execution), the refusals, cancellation with its
//! reason, visibility, gapless numbers, and orders placed while the
//! Execution server is down reaching CONFIRMED once it returns.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::cart::v1 as cart;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::common::v1::Money;
use trellis::execution::v1 as exec;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis::order::v1 as pb;
use trellis::order::v1::order_service_client::OrderServiceClient;
use trellis::session::v1::CreateSessionRequest;
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis_cli::{Running, ServiceName};

#[derive(Clone)]
struct Buyer {
    token: String,
    session_id: String,
}

struct Clients {
    auth: AuthServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    carts: CartServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

impl Clients {
    async fn of(running: &Running) -> Clients {
        let at = |service| running.address(service).unwrap();
        let cart_channel = channel(at(ServiceName::Cart)).await;
        Clients {
            auth: AuthServiceClient::new(channel(at(ServiceName::Auth)).await),
            sessions: SessionServiceClient::new(channel(at(ServiceName::Session)).await),
            catalog: CatalogServiceClient::new(cart_channel.clone()),
            carts: CartServiceClient::new(cart_channel),
            orders: OrderServiceClient::new(channel(at(ServiceName::Order)).await),
        }
    }

    /// A new organization's admin, in a new WORK session.
    async fn sign_up(&mut self, name: &str) -> Buyer {
        let token = sign_up(&mut self.auth, name).await.access_token;
        self.session_of(token).await
    }

    async fn session_of(&mut self, token: String) -> Buyer {
        let session = self
            .sessions
            .create_session(authed(CreateSessionRequest::default(), &token))
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        Buyer {
            token,
            session_id: session.session_id,
        }
    }

    async fn product(
        &mut self,
        who: &Buyer,
        sku: &str,
        price: Money,
        stock: Option<i64>,
    ) -> String {
        self.catalog
            .create_product(authed(
                cart::CreateProductRequest {
                    sku: sku.into(),
                    name: sku.to_lowercase(),
                    category: "food".into(),
                    price: Some(price),
                    stock,
                    ..Default::default()
                },
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .product_id
    }

    async fn add(&mut self, who: &Buyer, product_id: &str, quantity: i32) {
        self.carts
            .add_item(authed(
                cart::AddItemRequest {
                    session_id: who.session_id.clone(),
                    product_id: product_id.into(),
                    quantity,
                    options: vec![cart::ItemOption {
                        group: "salsa".into(),
                        value: "verde".into(),
                        quantity: 1,
                    }],
                    expected_version: None,
                },
                &who.token,
            ))
            .await
            .unwrap();
    }

    async fn cart_lines(&mut self, who: &Buyer) -> usize {
        self.carts
            .get_cart(authed(
                cart::GetCartRequest {
                    session_id: who.session_id.clone(),
                },
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap()
            .items
            .len()
    }

    async fn stock(&mut self, who: &Buyer, product_id: &str) -> i64 {
        self.catalog
            .get_stock(authed(
                cart::GetStockRequest {
                    product_ids: vec![product_id.into()],
                },
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .levels[0]
            .stock
            .unwrap()
    }

    async fn place(&mut self, who: &Buyer, key: &str) -> Result<pb::Order, tonic::Status> {
        self.orders
            .place_order(authed(place_request(who, key, "Ana"), &who.token))
            .await
            .map(|r| r.into_inner().order.unwrap())
    }

    async fn get(&mut self, who: &Buyer, order_id: &str) -> Result<pb::Order, tonic::Status> {
        self.orders
            .get_order(authed(
                pb::GetOrderRequest {
                    order_id: order_id.into(),
                },
                &who.token,
            ))
            .await
            .map(|r| r.into_inner().order.unwrap())
    }

    /// Follows WatchOrder to its end; the statuses seen.
    async fn watch(&mut self, who: &Buyer, order_id: &str) -> Vec<pb::OrderStatus> {
        let mut stream = self
            .orders
            .watch_order(authed(
                pb::WatchOrderRequest {
                    order_id: order_id.into(),
                },
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(next) = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the order reached a final status in time")
            .unwrap()
        {
            seen.push(next.order.unwrap().status());
        }
        seen
    }

    async fn wait_for(
        &mut self,
        who: &Buyer,
        order_id: &str,
        status: pb::OrderStatus,
    ) -> pb::Order {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let order = self.get(who, order_id).await.unwrap();
            if order.status() == status {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} stayed {:?}",
                order.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn usd(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: "USD".into(),
    }
}

fn place_request(who: &Buyer, key: &str, customer: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        session_id: who.session_id.clone(),
        customer: Some(pb::Customer {
            name: customer.into(),
            phone: "+1 555 0100".into(),
            email: String::new(),
        }),
        delivery: Some(pb::Delivery {
            r#type: pb::DeliveryType::Delivery as i32,
            address: "1 Main St".into(),
            requested_for: None,
        }),
        idempotency_key: key.into(),
    }
}

async fn orders_place_confirm_and_refuse(flags: &[&str]) {
    let data_dir = temp_dir("orders");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, flags))
        .await
        .unwrap();
    let mut c = Clients::of(&running).await;
    let ana = c.sign_up("ana").await;
    let taco = c.product(&ana, "TACO", usd(350), Some(100)).await;
    let drink = c.product(&ana, "HORCHATA", usd(250), None).await;

    // Placed: stock taken, cart cleared, watched to CONFIRMED.
    c.add(&ana, &taco, 2).await;
    c.add(&ana, &taco, 1).await;
    c.add(&ana, &drink, 1).await;
    let order = c.place(&ana, "first").await.unwrap();
    assert_eq!(order.number, 1);
    assert_eq!(order.items.len(), 3);
    assert_eq!(order.total, Some(usd(3 * 350 + 250)));
    assert_eq!(c.stock(&ana, &taco).await, 97);
    assert_eq!(c.cart_lines(&ana).await, 0);
    let seen = c.watch(&ana, &order.order_id).await;
    assert_eq!(seen.last(), Some(&pb::OrderStatus::Confirmed), "{seen:?}");
    let confirmed = c.get(&ana, &order.order_id).await.unwrap();
    assert!(!confirmed.execution_id.is_empty());
    // The fulfillment ran as an execution of the organization, and passed.
    let mut executions = ExecutionServiceClient::new(
        channel(running.address(ServiceName::Execution).unwrap()).await,
    );
    // The worker confirms the order, then completes its execution: the
    // execution may still read RUNNING for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let execution = executions
            .get_execution(authed(
                exec::GetExecutionRequest {
                    execution_id: confirmed.execution_id.clone(),
                },
                &ana.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        if execution.status() == exec::ExecutionStatus::Passed {
            break;
        }
        assert_eq!(execution.status(), exec::ExecutionStatus::Running);
        assert!(tokio::time::Instant::now() < deadline, "execution passed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same key and request: the same order. Another request: refused.
    let again = c.place(&ana, "first").await.unwrap();
    assert_eq!(again.order_id, order.order_id);
    let other_customer = c
        .orders
        .place_order(authed(place_request(&ana, "first", "Bea"), &ana.token))
        .await
        .unwrap_err();
    assert_eq!(other_customer.code(), Code::FailedPrecondition);

    // Refusals leave stock and key alone.
    let empty = c.place(&ana, "empty").await.unwrap_err();
    assert_eq!(empty.code(), Code::FailedPrecondition, "{empty:?}");
    c.add(&ana, &taco, 1).await;
    let euro = c
        .product(
            &ana,
            "CHURRO",
            Money {
                amount_minor: 300,
                currency: "EUR".into(),
            },
            None,
        )
        .await;
    c.add(&ana, &euro, 1).await;
    let mixed = c.place(&ana, "mixed").await.unwrap_err();
    assert_eq!(mixed.code(), Code::FailedPrecondition);
    assert!(mixed.message().contains("currenc"), "{mixed:?}");
    // Stock fell behind the cart since the items were added.
    let mut adjust = c.catalog.clone();
    adjust
        .adjust_stock(authed(
            cart::AdjustStockRequest {
                product_id: taco.clone(),
                delta: -90,
            },
            &ana.token,
        ))
        .await
        .unwrap();
    c.carts
        .clear_cart(authed(
            cart::ClearCartRequest {
                session_id: ana.session_id.clone(),
                expected_version: None,
            },
            &ana.token,
        ))
        .await
        .unwrap();
    c.add(&ana, &taco, 5).await;
    adjust
        .adjust_stock(authed(
            cart::AdjustStockRequest {
                product_id: taco.clone(),
                delta: -4,
            },
            &ana.token,
        ))
        .await
        .unwrap();
    let short = c.place(&ana, "short").await.unwrap_err();
    assert_eq!(short.code(), Code::FailedPrecondition, "{short:?}");
    assert_eq!(c.stock(&ana, &taco).await, 3);
    let unknown_session = c
        .orders
        .place_order(authed(
            place_request(
                &Buyer {
                    token: ana.token.clone(),
                    session_id: uuid::Uuid::new_v4().to_string(),
                },
                "",
                "Ana",
            ),
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown_session.code(), Code::NotFound);
    let mut no_customer = place_request(&ana, "", "Ana");
    no_customer.customer = None;
    let invalid = c
        .orders
        .place_order(authed(no_customer, &ana.token))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let mut no_address = place_request(&ana, "", "Ana");
    no_address.delivery.as_mut().unwrap().address.clear();
    assert_eq!(
        c.orders
            .place_order(authed(no_address, &ana.token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // 100 concurrent calls with one key: one order, one execution.
    c.carts
        .clear_cart(authed(
            cart::ClearCartRequest {
                session_id: ana.session_id.clone(),
                expected_version: None,
            },
            &ana.token,
        ))
        .await
        .unwrap();
    c.add(&ana, &drink, 2).await;
    let mut calls = Vec::new();
    for _ in 0..100 {
        let mut orders = c.orders.clone();
        let request = place_request(&ana, "burst", "Ana");
        let token = ana.token.clone();
        calls.push(tokio::spawn(async move {
            orders.place_order(authed(request, &token)).await
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner().order.unwrap());
    }
    let first = &answers[0];
    for answer in &answers {
        assert_eq!(
            (
                &answer.order_id,
                answer.number,
                &answer.items,
                &answer.total,
                &answer.created_at
            ),
            (
                &first.order_id,
                first.number,
                &first.items,
                &first.total,
                &first.created_at
            ),
        );
    }
    assert_eq!(first.number, 2, "numbers have no gaps: refusals took none");
    let burst = c
        .wait_for(&ana, &first.order_id, pb::OrderStatus::Confirmed)
        .await;
    let listed = executions
        .list_executions(authed(
            exec::ListExecutionsRequest {
                queue: "trellis.order-fulfillment".into(),
                ..Default::default()
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .executions;
    assert_eq!(listed.len(), 2, "one execution per order");
    assert!(listed.iter().any(|e| e.execution_id == burst.execution_id));
    let all = c
        .orders
        .list_orders(authed(pb::ListOrdersRequest::default(), &ana.token))
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(
        all.iter().map(|o| o.number).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    // Nor cancel the platform's execution behind an order (CancelOrder is
    // the way).
    let platform = executions
        .cancel_execution(authed(
            exec::CancelExecutionRequest {
                execution_id: burst.execution_id.clone(),
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(platform.code(), Code::FailedPrecondition, "{platform:?}");
    // Users cannot make executions in the platform's queue.
    let reserved = executions
        .create_execution(authed(
            exec::CreateExecutionRequest {
                queue: "trellis.order-fulfillment".into(),
                image: "x".into(),
                ..Default::default()
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument);

    // Another organization sees none of it.
    let bea = c.sign_up("bea").await;
    for id in [&order.order_id, &first.order_id] {
        assert_eq!(c.get(&bea, id).await.unwrap_err().code(), Code::NotFound);
        let watched = c
            .orders
            .watch_order(authed(
                pb::WatchOrderRequest {
                    order_id: id.to_string(),
                },
                &bea.token,
            ))
            .await;
        assert_eq!(watched.unwrap_err().code(), Code::NotFound);
    }
    let theirs = c
        .orders
        .list_orders(authed(pb::ListOrdersRequest::default(), &bea.token))
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert!(theirs.is_empty());
    // A confirmed order cannot be cancelled.
    let late = c
        .orders
        .cancel_order(authed(
            pb::CancelOrderRequest {
                order_id: order.order_id.clone(),
                reason: "changed my mind".into(),
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);

    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(orders_place_confirm_and_refuse, "orders": sqlite, postgres);

async fn orders_wait_for_the_execution_server(flags: &[&str]) {
    let data_dir = temp_dir("orders-outage");
    let port = free_port();
    let execution_url = format!("http://127.0.0.1:{port}");
    let mut args = vec!["--execution-url", &execution_url];
    args.extend_from_slice(flags);
    let running = trellis_cli::start(
        &[
            ServiceName::Auth,
            ServiceName::Session,
            ServiceName::Cart,
            ServiceName::Order,
        ],
        &up_args(&data_dir, &args),
    )
    .await
    .unwrap();
    let mut c = Clients::of(&running).await;
    let ana = c.sign_up("ana").await;
    let taco = c.product(&ana, "TACO", usd(350), Some(50)).await;
    let mut placed = Vec::new();
    for n in 0..5 {
        c.add(&ana, &taco, 2).await;
        let order = c.place(&ana, &format!("down-{n}")).await.unwrap();
        assert_eq!(order.status(), pb::OrderStatus::Pending);
        assert!(order.execution_id.is_empty(), "no execution yet");
        placed.push(order);
    }
    assert_eq!(c.stock(&ana, &taco).await, 40);
    // One is cancelled meanwhile: its stock goes back, its reason stays.
    let cancelled = c
        .orders
        .cancel_order(authed(
            pb::CancelOrderRequest {
                order_id: placed[4].order_id.clone(),
                reason: "wrong address".into(),
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    assert_eq!(cancelled.cancel_reason, "wrong address");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.stock(&ana, &taco).await != 42 {
        assert!(tokio::time::Instant::now() < deadline, "stock released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The Execution server arrives, with this deployment's credentials.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("service-account.json")).unwrap())
            .unwrap();
    let auth_url = format!("http://{}", running.address(ServiceName::Auth).unwrap());
    let execution_addr = format!("127.0.0.1:{port}");
    // With `=`: a secret may begin with '-'.
    let client_id = format!(
        "--service-client-id={}",
        kept["client_id"].as_str().unwrap()
    );
    let client_secret = format!(
        "--service-client-secret={}",
        kept["client_secret"].as_str().unwrap()
    );
    let execution_dir = temp_dir("orders-outage-execution");
    let mut execution_args = vec!["--auth-url", &auth_url, &client_id, &client_secret];
    execution_args.extend_from_slice(flags);
    let mut args = up_args(&execution_dir, &execution_args);
    args.servers.execution.execution_addr = execution_addr.parse().unwrap();
    let execution = trellis_cli::start(&[ServiceName::Execution], &args)
        .await
        .unwrap();
    let mut executions = HashSet::new();
    for order in &placed[..4] {
        let done = c
            .wait_for(&ana, &order.order_id, pb::OrderStatus::Confirmed)
            .await;
        assert!(!done.execution_id.is_empty());
        executions.insert(done.execution_id);
    }
    assert_eq!(executions.len(), 4);
    // The cancelled one stays cancelled: its fulfillment ran and ended
    // FAILED without confirming it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = c.get(&ana, &placed[4].order_id).await.unwrap();
    assert_eq!(still.status(), pb::OrderStatus::Cancelled);

    execution.shutdown().await.unwrap();
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
    std::fs::remove_dir_all(execution_dir).unwrap();
}

backend_suite!(orders_wait_for_the_execution_server, "orders while Execution is down": sqlite, postgres);
