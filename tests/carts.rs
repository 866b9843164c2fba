//! The Cart server end to end (catalog, carts, stock reservations) with the
//! Auth and Session servers it relies on, on SQLite, PostgreSQL, and with
//! sessions in Redis.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::organization_service_client::OrganizationServiceClient;
use trellis::auth::v1::{AcceptInvitationRequest, InviteUserRequest, Role, SignUpRequest};
use trellis::cart::v1 as pb;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::common::v1::Money;
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis::session::v1::{CreateSessionRequest, DeleteSessionRequest};
use trellis_cli::{Running, ServiceName};

const PASSWORD: &str = "Correct-Horse-9";

/// A user's token and one WORK session of theirs.
#[derive(Clone)]
struct Shopper {
    token: String,
    session_id: String,
}

struct Shop {
    running: Running,
    data_dir: std::path::PathBuf,
    auth: AuthServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    carts: CartServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    /// The organization's admin.
    admin: Shopper,
    taco: String,
    drink: String,
    dessert: String,
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn option(group: &str, value: &str, quantity: i32) -> pb::ItemOption {
    pb::ItemOption {
        group: group.into(),
        value: value.into(),
        quantity,
    }
}

impl Shop {
    async fn open(extra: &[&str]) -> Shop {
        let data_dir = temp_dir("shop");
        let mut args = vec![
            "--session-check-ttl",
            "200ms",
            "--cart-session-check-ttl",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let running = trellis_cli::start(
            &[ServiceName::Auth, ServiceName::Session, ServiceName::Cart],
            &up_args(&data_dir, &args),
        )
        .await
        .unwrap();
        let at = |service| running.address(service).unwrap();
        let auth = AuthServiceClient::new(channel(at(ServiceName::Auth)).await);
        let cart_channel = channel(at(ServiceName::Cart)).await;
        let sessions = SessionServiceClient::new(channel(at(ServiceName::Session)).await);
        let mut shop = Shop {
            running,
            data_dir,
            auth,
            catalog: CatalogServiceClient::new(cart_channel.clone()),
            carts: CartServiceClient::new(cart_channel),
            sessions,
            admin: Shopper {
                token: String::new(),
                session_id: String::new(),
            },
            taco: String::new(),
            drink: String::new(),
            dessert: String::new(),
        };
        shop.admin = shop.sign_up("ana").await;
        shop.taco = shop
            .product("TACO-PASTOR", "Taco al pastor", "taco", 350, Some(100))
            .await;
        shop.drink = shop
            .product("HORCHATA", "Horchata", "drink", 250, None)
            .await;
        shop.dessert = shop
            .product("CHURROS", "Churros", "dessert", 400, Some(5))
            .await;
        shop
    }

    /// A new organization; its admin, in a new WORK session.
    async fn sign_up(&mut self, name: &str) -> Shopper {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let signed_up = self
            .auth
            .sign_up(SignUpRequest {
                email: format!("{name}.{unique}@example.com"),
                password: PASSWORD.into(),
                name: name.into(),
                organization_name: format!("{name} tacos {unique}"),
            })
            .await
            .unwrap()
            .into_inner();
        self.work_session(signed_up.access_token).await
    }

    /// A member of the admin's organization, in a new WORK session.
    async fn member(&mut self, role: Role, name: &str) -> Shopper {
        let mut orgs = OrganizationServiceClient::new(
            channel(self.running.address(ServiceName::Auth).unwrap()).await,
        );
        let invited = orgs
            .invite_user(authed(
                InviteUserRequest {
                    email: format!("{name}.{}@example.com", uuid::Uuid::new_v4().simple()),
                    role: role as i32,
                },
                &self.admin.token,
            ))
            .await
            .unwrap()
            .into_inner();
        let accepted = orgs
            .accept_invitation(AcceptInvitationRequest {
                token: invited.invitation.unwrap().token,
                password: PASSWORD.into(),
                name: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if role == Role::Viewer {
            // Viewers cannot open WORK sessions: their login session it is.
            return Shopper {
                token: accepted.access_token,
                session_id: accepted.session_id,
            };
        }
        self.work_session(accepted.access_token).await
    }

    async fn work_session(&mut self, token: String) -> Shopper {
        let session = self
            .sessions
            .create_session(authed(CreateSessionRequest::default(), &token))
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        Shopper {
            token,
            session_id: session.session_id,
        }
    }

    async fn product(
        &mut self,
        sku: &str,
        name: &str,
        category: &str,
        price: i64,
        stock: Option<i64>,
    ) -> String {
        self.catalog
            .create_product(authed(
                pb::CreateProductRequest {
                    sku: sku.into(),
                    name: name.into(),
                    category: category.into(),
                    price: usd(price),
                    stock,
                    ..Default::default()
                },
                &self.admin.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .product_id
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }
}

async fn add(
    carts: &mut CartServiceClient<Channel>,
    who: &Shopper,
    product_id: &str,
    quantity: i32,
    options: Vec<pb::ItemOption>,
) -> Result<pb::AddItemResponse, tonic::Status> {
    carts
        .add_item(authed(
            pb::AddItemRequest {
                session_id: who.session_id.clone(),
                product_id: product_id.into(),
                quantity,
                options,
                expected_version: None,
            },
            &who.token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn cart_of(carts: &mut CartServiceClient<Channel>, who: &Shopper) -> pb::Cart {
    carts
        .get_cart(authed(
            pb::GetCartRequest {
                session_id: who.session_id.clone(),
            },
            &who.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap()
}

/// (group, value, quantity) of an option.
type OptionSeen = (String, String, i32);

/// (product, quantity, options) of each line, in order.
fn lines(cart: &pb::Cart) -> Vec<(String, i32, Vec<OptionSeen>)> {
    cart.items
        .iter()
        .map(|item| {
            (
                item.product_id.clone(),
                item.quantity,
                item.options
                    .iter()
                    .map(|o| (o.group.clone(), o.value.clone(), o.quantity))
                    .collect(),
            )
        })
        .collect()
}

fn subtotal(cart: &pb::Cart) -> BTreeMap<String, i64> {
    cart.subtotal
        .iter()
        .map(|m| (m.currency.clone(), m.amount_minor))
        .collect()
}

/// The original scenario: two users, two sessions, different items added
/// at once; one edits its line; each cart holds exactly its own, with its
/// totals, and neither user reaches the other's.
async fn two_shoppers_fill_their_own_carts(extra: &[&str]) {
    let mut shop = Shop::open(extra).await;
    let ana = shop.admin.clone();
    let bea = shop.member(Role::Developer, "bea").await;
    let (taco, drink, dessert) = (shop.taco.clone(), shop.drink.clone(), shop.dessert.clone());

    let ana_adds = {
        let mut carts = shop.carts.clone();
        let (ana, taco, drink) = (ana.clone(), taco.clone(), drink.clone());
        tokio::spawn(async move {
            let first = add(
                &mut carts,
                &ana,
                &taco,
                3,
                vec![option("meat", "pastor", 2), option("salsa", "verde", 1)],
            )
            .await
            .unwrap();
            add(&mut carts, &ana, &drink, 1, vec![]).await.unwrap();
            first.item.unwrap().item_id
        })
    };
    let bea_adds = {
        let mut carts = shop.carts.clone();
        let (bea, dessert) = (bea.clone(), dessert.clone());
        tokio::spawn(async move {
            add(
                &mut carts,
                &bea,
                &dessert,
                2,
                vec![option("topping", "chocolate", 1)],
            )
            .await
            .unwrap();
        })
    };
    let ana_taco = ana_adds.await.unwrap();
    bea_adds.await.unwrap();

    // Ana edits her taco line: quantity and options replaced.
    let updated = shop
        .carts
        .update_item(authed(
            pb::UpdateItemRequest {
                session_id: ana.session_id.clone(),
                item_id: ana_taco.clone(),
                quantity: 4,
                options: vec![option("meat", "asada", 1)],
                expected_version: Some(2),
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.item.unwrap().quantity, 4);

    let ana_cart = cart_of(&mut shop.carts, &ana).await;
    assert_eq!(
        lines(&ana_cart),
        [
            (taco.clone(), 4, vec![("meat".into(), "asada".into(), 1)]),
            (drink.clone(), 1, vec![])
        ]
    );
    assert_eq!(
        subtotal(&ana_cart),
        BTreeMap::from([("USD".into(), 4 * 350 + 250)])
    );
    assert_eq!(ana_cart.version, 3);
    let bea_cart = cart_of(&mut shop.carts, &bea).await;
    assert_eq!(
        lines(&bea_cart),
        [(
            dessert.clone(),
            2,
            vec![("topping".into(), "chocolate".into(), 1)]
        )]
    );
    assert_eq!(subtotal(&bea_cart), BTreeMap::from([("USD".into(), 800)]));
    assert_eq!(bea_cart.items[0].line_total, usd(800));

    // Bea on Ana's session: NOT_FOUND on every RPC, and nothing changes.
    let ana_session_as_bea = Shopper {
        token: bea.token.clone(),
        session_id: ana.session_id.clone(),
    };
    assert_every_cart_rpc_is_not_found(&mut shop.carts, &ana_session_as_bea, &ana_taco, &taco)
        .await;
    // Another organization's admin: the same.
    let other = shop.sign_up("otto").await;
    let ana_session_as_otto = Shopper {
        token: other.token.clone(),
        session_id: ana.session_id.clone(),
    };
    assert_every_cart_rpc_is_not_found(&mut shop.carts, &ana_session_as_otto, &ana_taco, &taco)
        .await;
    assert_eq!(cart_of(&mut shop.carts, &ana).await, ana_cart);
    // Nor are this organization's products visible to the other.
    let product = shop
        .catalog
        .get_product(authed(
            pb::GetProductRequest {
                product_id: taco.clone(),
            },
            &other.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(product.code(), Code::NotFound);
    shop.stop().await;
}

backend_suite!(two_shoppers_fill_their_own_carts, "CartService": sqlite, postgres, redis);

async fn assert_every_cart_rpc_is_not_found(
    carts: &mut CartServiceClient<Channel>,
    intruder: &Shopper,
    item_id: &str,
    product_id: &str,
) {
    let session_id = intruder.session_id.clone();
    let token = intruder.token.as_str();
    let expected = format!("session not found: {session_id}");
    let mut answers: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
    answers.push((
        "GetCart",
        carts
            .get_cart(authed(
                pb::GetCartRequest {
                    session_id: session_id.clone(),
                },
                token,
            ))
            .await
            .map(drop),
    ));
    answers.push((
        "AddItem",
        add(carts, intruder, product_id, 1, vec![]).await.map(drop),
    ));
    answers.push((
        "GetItem",
        carts
            .get_item(authed(
                pb::GetItemRequest {
                    session_id: session_id.clone(),
                    item_id: item_id.into(),
                },
                token,
            ))
            .await
            .map(drop),
    ));
    answers.push((
        "UpdateItem",
        carts
            .update_item(authed(
                pb::UpdateItemRequest {
                    session_id: session_id.clone(),
                    item_id: item_id.into(),
                    quantity: 1,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
    ));
    answers.push((
        "UpdateItemQuantity",
        carts
            .update_item_quantity(authed(
                pb::UpdateItemQuantityRequest {
                    session_id: session_id.clone(),
                    item_id: item_id.into(),
                    quantity: 1,
                    expected_version: None,
                },
                token,
            ))
            .await
            .map(drop),
    ));
    answers.push((
        "RemoveItem",
        carts
            .remove_item(authed(
                pb::RemoveItemRequest {
                    session_id: session_id.clone(),
                    item_id: item_id.into(),
                    expected_version: None,
                },
                token,
            ))
            .await
            .map(drop),
    ));
    answers.push((
        "ClearCart",
        carts
            .clear_cart(authed(
                pb::ClearCartRequest {
                    session_id: session_id.clone(),
                    expected_version: None,
                },
                token,
            ))
            .await
            .map(drop),
    ));
    for (rpc, answer) in answers {
        let status = answer.expect_err(rpc);
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, expected.as_str()),
            "{rpc}"
        );
    }
}

/// Limits and codes of the contract, and optimistic concurrency.
async fn carts_keep_to_their_limits(extra: &[&str]) {
    let mut shop = Shop::open(extra).await;
    let ana = shop.admin.clone();
    let (taco, dessert) = (shop.taco.clone(), shop.dessert.clone());
    for quantity in [0, 100, -1] {
        let refused = add(&mut shop.carts, &ana, &taco, quantity, vec![])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "quantity {quantity}");
    }
    let long = "x".repeat(65);
    for options in [
        vec![option("", "pastor", 1)],
        vec![option("meat", &long, 1)],
        vec![option("meat", "pastor", 11)],
        (0..17)
            .map(|n| option("extra", &format!("e{n}"), 1))
            .collect(),
    ] {
        let refused = add(&mut shop.carts, &ana, &taco, 1, options)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = add(&mut shop.carts, &ana, &unknown, 1, vec![])
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::NotFound,
            format!("product not found: {unknown}").as_str()
        )
    );
    let refused = add(&mut shop.carts, &ana, &dessert, 6, vec![])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "5 churros on hand"
    );
    // The stock covers the whole cart: lines of one product add up.
    let side = shop.work_session(ana.token.clone()).await;
    let first_churros = add(&mut shop.carts, &side, &dessert, 3, vec![])
        .await
        .unwrap();
    let refused = add(&mut shop.carts, &side, &dessert, 3, vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "3 + 3 of 5");
    let grown = shop
        .carts
        .update_item_quantity(authed(
            pb::UpdateItemQuantityRequest {
                session_id: side.session_id.clone(),
                item_id: first_churros.item.unwrap().item_id,
                quantity: 5,
                expected_version: None,
            },
            &ana.token,
        ))
        .await;
    assert!(grown.is_ok(), "one line of all 5: {grown:?}");
    let empty_id = shop
        .carts
        .get_cart(authed(pb::GetCartRequest::default(), &ana.token))
        .await
        .unwrap_err();
    assert_eq!(
        (empty_id.code(), empty_id.message()),
        (Code::InvalidArgument, "session_id: required")
    );
    // An inactive product cannot be added.
    shop.catalog
        .update_product(authed(
            pb::UpdateProductRequest {
                product_id: dessert.clone(),
                active: Some(false),
                ..Default::default()
            },
            &ana.token,
        ))
        .await
        .unwrap();
    let refused = add(&mut shop.carts, &ana, &dessert, 1, vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    // A stale expected_version is ABORTED and writes nothing.
    let first = add(&mut shop.carts, &ana, &taco, 1, vec![]).await.unwrap();
    assert_eq!(first.cart.as_ref().unwrap().version, 1);
    let item_id = first.item.unwrap().item_id;
    let stale = shop
        .carts
        .update_item_quantity(authed(
            pb::UpdateItemQuantityRequest {
                session_id: ana.session_id.clone(),
                item_id: item_id.clone(),
                quantity: 9,
                expected_version: Some(0),
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let cart = cart_of(&mut shop.carts, &ana).await;
    assert_eq!((cart.version, cart.items[0].quantity), (1, 1));
    // GetItem, UpdateItemQuantity (options kept), RemoveItem, ClearCart.
    let with_options = add(
        &mut shop.carts,
        &ana,
        &taco,
        2,
        vec![option("salsa", "roja", 1)],
    )
    .await
    .unwrap()
    .item
    .unwrap();
    let changed = shop
        .carts
        .update_item_quantity(authed(
            pb::UpdateItemQuantityRequest {
                session_id: ana.session_id.clone(),
                item_id: with_options.item_id.clone(),
                quantity: 5,
                expected_version: Some(2),
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!((changed.quantity, changed.options.len()), (5, 1));
    let missing = uuid::Uuid::new_v4().to_string();
    let refused = shop
        .carts
        .remove_item(authed(
            pb::RemoveItemRequest {
                session_id: ana.session_id.clone(),
                item_id: missing.clone(),
                expected_version: None,
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::NotFound,
            format!("item not found: {missing}").as_str()
        )
    );
    let removed = shop
        .carts
        .remove_item(authed(
            pb::RemoveItemRequest {
                session_id: ana.session_id.clone(),
                item_id,
                expected_version: None,
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(removed.items.len(), 1);
    let cleared = shop
        .carts
        .clear_cart(authed(
            pb::ClearCartRequest {
                session_id: ana.session_id.clone(),
                expected_version: Some(removed.version),
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert!(cleared.items.is_empty() && cleared.subtotal.is_empty());

    // At most 100 lines.
    for n in 0..100 {
        add(&mut shop.carts, &ana, &shop.drink.clone(), 1, vec![])
            .await
            .unwrap_or_else(|e| panic!("line {n}: {e:?}"));
    }
    let refused = add(&mut shop.carts, &ana, &taco, 1, vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "the 101st line");

    // A viewer reads but cannot change a cart.
    let viewer = shop.member(Role::Viewer, "vic").await;
    cart_of(&mut shop.carts, &viewer).await;
    let refused = add(&mut shop.carts, &viewer, &taco, 1, vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    shop.stop().await;
}

backend_suite!(carts_keep_to_their_limits, "CartService": sqlite, postgres);

/// 32 concurrent AddItem on one cart: every acknowledged line is in it.
async fn concurrent_adds_are_never_lost(extra: &[&str]) {
    let mut shop = Shop::open(extra).await;
    let ana = shop.admin.clone();
    let mut adds = tokio::task::JoinSet::new();
    for n in 0..32 {
        let (mut carts, ana, drink) = (shop.carts.clone(), ana.clone(), shop.drink.clone());
        adds.spawn(async move {
            let value = format!("flavour-{n}");
            add(
                &mut carts,
                &ana,
                &drink,
                1,
                vec![option("flavour", &value, 1)],
            )
            .await
            .map(|added| added.item.unwrap().item_id)
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = adds.join_next().await {
        acknowledged.push(done.unwrap().expect("no add is refused"));
    }
    let cart = cart_of(&mut shop.carts, &ana).await;
    let mut held: Vec<String> = cart.items.iter().map(|i| i.item_id.clone()).collect();
    acknowledged.sort();
    held.sort();
    assert_eq!(held, acknowledged);
    assert_eq!(cart.version, 32);
    assert_eq!(subtotal(&cart), BTreeMap::from([("USD".into(), 32 * 250)]));
    shop.stop().await;
}

backend_suite!(concurrent_adds_are_never_lost, "CartService": sqlite, postgres);

/// The catalog: admin-only writes, unique skus, stock tracked or unlimited
/// and switchable, GetStock for many at once, never below zero.
async fn the_catalog_keeps_stock_honest(extra: &[&str]) {
    let mut shop = Shop::open(extra).await;
    let admin = shop.admin.token.clone();
    let dev = shop.member(Role::Developer, "dev").await;
    let refused = shop
        .catalog
        .create_product(authed(
            pb::CreateProductRequest {
                sku: "NOPE".into(),
                name: "Nope".into(),
                price: usd(1),
                ..Default::default()
            },
            &dev.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let duplicate = shop
        .catalog
        .create_product(authed(
            pb::CreateProductRequest {
                sku: "TACO-PASTOR".into(),
                name: "Again".into(),
                price: usd(1),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    for bad in [
        pb::CreateProductRequest {
            sku: "".into(),
            name: "x".into(),
            price: usd(1),
            ..Default::default()
        },
        pb::CreateProductRequest {
            sku: "A".into(),
            name: "".into(),
            price: usd(1),
            ..Default::default()
        },
        pb::CreateProductRequest {
            sku: "A".into(),
            name: "x".into(),
            price: usd(-1),
            ..Default::default()
        },
        pb::CreateProductRequest {
            sku: "A".into(),
            name: "x".into(),
            price: None,
            ..Default::default()
        },
        pb::CreateProductRequest {
            sku: "A".into(),
            name: "x".into(),
            price: usd(1),
            stock: Some(-1),
            ..Default::default()
        },
    ] {
        let refused = shop
            .catalog
            .create_product(authed(bad, &admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }

    let taco = shop.taco.clone();
    let stock = |shop: &Shop, ids: Vec<String>| {
        let mut catalog = shop.catalog.clone();
        let token = admin.clone();
        async move {
            catalog
                .get_stock(authed(pb::GetStockRequest { product_ids: ids }, &token))
                .await
                .map(|r| {
                    r.into_inner()
                        .levels
                        .into_iter()
                        .map(|l| l.stock)
                        .collect::<Vec<_>>()
                })
        }
    };
    assert_eq!(
        stock(
            &shop,
            vec![taco.clone(), shop.drink.clone(), shop.dessert.clone()]
        )
        .await
        .unwrap(),
        [Some(100), None, Some(5)]
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = stock(&shop, vec![taco.clone(), unknown.clone()])
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::NotFound,
            format!("product not found: {unknown}").as_str()
        )
    );

    let adjust = |shop: &Shop, product: String, delta: i64| {
        let mut catalog = shop.catalog.clone();
        let token = admin.clone();
        async move {
            catalog
                .adjust_stock(authed(
                    pb::AdjustStockRequest {
                        product_id: product,
                        delta,
                    },
                    &token,
                ))
                .await
                .map(|r| r.into_inner().product.unwrap().stock)
        }
    };
    assert_eq!(adjust(&shop, taco.clone(), -30).await.unwrap(), Some(70));
    let below = adjust(&shop, taco.clone(), -71).await.unwrap_err();
    assert_eq!(below.code(), Code::FailedPrecondition);
    let unlimited = adjust(&shop, shop.drink.clone(), 5).await.unwrap_err();
    assert_eq!(unlimited.code(), Code::FailedPrecondition);

    // Tracked -> unlimited -> tracked, other fields kept.
    let update = |shop: &Shop, request: pb::UpdateProductRequest| {
        let mut catalog = shop.catalog.clone();
        let token = admin.clone();
        async move {
            catalog
                .update_product(authed(request, &token))
                .await
                .map(|r| r.into_inner().product.unwrap())
        }
    };
    let switched = update(
        &shop,
        pb::UpdateProductRequest {
            product_id: taco.clone(),
            unlimited_stock: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (switched.stock, switched.name.as_str()),
        (None, "Taco al pastor")
    );
    let renamed = update(
        &shop,
        pb::UpdateProductRequest {
            product_id: taco.clone(),
            stock: Some(12),
            name: Some("Taco de pastor".into()),
            price: usd(375),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            renamed.stock,
            renamed.name.as_str(),
            renamed.price,
            renamed.sku.as_str()
        ),
        (Some(12), "Taco de pastor", usd(375), "TACO-PASTOR")
    );
    let both = update(
        &shop,
        pb::UpdateProductRequest {
            product_id: taco.clone(),
            stock: Some(1),
            unlimited_stock: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let taken = update(
        &shop,
        pb::UpdateProductRequest {
            product_id: taco.clone(),
            sku: Some("HORCHATA".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    // Listing: newest first, by category; inactive ones for admins only.
    let listed = shop
        .catalog
        .list_products(authed(
            pb::ListProductsRequest {
                category: "drink".into(),
                ..Default::default()
            },
            &dev.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .products;
    assert_eq!(
        listed.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>(),
        ["HORCHATA"]
    );
    let page = shop
        .catalog
        .list_products(authed(
            pb::ListProductsRequest {
                page_size: 2,
                ..Default::default()
            },
            &dev.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.products
            .iter()
            .map(|p| p.sku.as_str())
            .collect::<Vec<_>>(),
        ["CHURROS", "HORCHATA"]
    );
    let rest = shop
        .catalog
        .list_products(authed(
            pb::ListProductsRequest {
                page_size: 2,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &dev.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.products
            .iter()
            .map(|p| p.sku.as_str())
            .collect::<Vec<_>>(),
        ["TACO-PASTOR"]
    );
    shop.stop().await;
}

backend_suite!(the_catalog_keeps_stock_honest, "CatalogService": sqlite, postgres);

/// 32 concurrent reservations of 10 units of a product with 100: exactly
/// ten succeed, stock reaches zero and never below; a retried reservation
/// takes nothing more and a release gives back once.
async fn concurrent_reservations_never_oversell(extra: &[&str]) {
    use trellis::auth::v1::IssueServiceTokenRequest;
    let mut shop = Shop::open(extra).await;
    let credentials: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shop.data_dir.join("service-account.json")).unwrap(),
    )
    .unwrap();
    let service = shop
        .auth
        .issue_service_token(IssueServiceTokenRequest {
            client_id: credentials["client_id"].as_str().unwrap().into(),
            client_secret: credentials["client_secret"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let org_id = shop
        .auth
        .who_am_i(authed(Default::default(), &shop.admin.token))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap()
        .organization_id;
    let taco = shop.taco.clone();
    let reserve = |catalog: &CatalogServiceClient<Channel>, order_id: String, quantity: i32| {
        let mut catalog = catalog.clone();
        let (service, org_id, taco) = (service.clone(), org_id.clone(), taco.clone());
        async move {
            catalog
                .reserve_stock(authed(
                    pb::ReserveStockRequest {
                        organization_id: org_id,
                        order_id,
                        lines: vec![pb::StockLine {
                            product_id: taco,
                            quantity,
                        }],
                    },
                    &service,
                ))
                .await
                .map(|r| r.into_inner().lines)
        }
    };
    let orders: Vec<String> = (0..32).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut reservations = tokio::task::JoinSet::new();
    for order in &orders {
        reservations.spawn(reserve(&shop.catalog, order.clone(), 10));
    }
    let (mut taken, mut refused) = (0, 0);
    while let Some(done) = reservations.join_next().await {
        match done.unwrap() {
            Ok(lines) => {
                assert_eq!(lines[0].quantity, 10);
                taken += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((taken, refused), (10, 22));
    let level = |shop: &Shop| {
        let mut catalog = shop.catalog.clone();
        let (token, taco) = (shop.admin.token.clone(), shop.taco.clone());
        async move {
            catalog
                .get_stock(authed(
                    pb::GetStockRequest {
                        product_ids: vec![taco],
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
                .levels[0]
                .stock
        }
    };
    assert_eq!(level(&shop).await, Some(0));

    // Give one reservation back, then retry and release the same orders.
    shop.catalog
        .adjust_stock(authed(
            pb::AdjustStockRequest {
                product_id: shop.taco.clone(),
                delta: 20,
            },
            &shop.admin.token,
        ))
        .await
        .unwrap();
    let mut succeeded = Vec::new();
    for order in &orders {
        if let Ok(lines) = reserve(&shop.catalog, order.clone(), 10).await {
            succeeded.push((order.clone(), lines));
        }
    }
    // The ten that held keep their reservation; two more fit in the 20.
    assert_eq!(succeeded.len(), 12);
    assert_eq!(level(&shop).await, Some(0));
    let first = succeeded[0].0.clone();
    let again = reserve(&shop.catalog, first.clone(), 10).await.unwrap();
    assert_eq!(
        again[0].quantity, 10,
        "a retry answers the first reservation"
    );
    assert_eq!(level(&shop).await, Some(0), "and takes nothing more");
    let release = |order_id: String| {
        let mut catalog = shop.catalog.clone();
        let (service, org_id) = (service.clone(), org_id.clone());
        async move {
            catalog
                .release_stock(authed(
                    pb::ReleaseStockRequest {
                        organization_id: org_id,
                        order_id,
                    },
                    &service,
                ))
                .await
                .unwrap()
                .into_inner()
                .lines
        }
    };
    assert_eq!(release(first.clone()).await.len(), 1);
    assert!(release(first.clone()).await.is_empty(), "released once");
    assert!(release(uuid::Uuid::new_v4().to_string()).await.is_empty());
    assert_eq!(level(&shop).await, Some(10));
    // Once released, the order does not reserve again.
    let again = reserve(&shop.catalog, first.clone(), 10).await.unwrap_err();
    assert_eq!(again.code(), Code::Aborted, "{again:?}");
    assert_eq!(level(&shop).await, Some(10));

    // First reservations of one order racing, naming different products:
    // one of them is the order's reservation, every call answers it.
    let order = uuid::Uuid::new_v4().to_string();
    let mut racing = tokio::task::JoinSet::new();
    for n in 0..8 {
        let mut catalog = shop.catalog.clone();
        let (service, org_id, order) = (service.clone(), org_id.clone(), order.clone());
        let product = if n % 2 == 0 {
            shop.taco.clone()
        } else {
            shop.drink.clone()
        };
        racing.spawn(async move {
            catalog
                .reserve_stock(authed(
                    pb::ReserveStockRequest {
                        organization_id: org_id,
                        order_id: order,
                        lines: vec![pb::StockLine {
                            product_id: product,
                            quantity: 1,
                        }],
                    },
                    &service,
                ))
                .await
                .unwrap()
                .into_inner()
                .lines
        });
    }
    let answers: Vec<_> = racing.join_all().await;
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let taco_taken = answers[0][0].product_id == shop.taco;
    assert_eq!(level(&shop).await, Some(if taco_taken { 9 } else { 10 }));
    // A user token cannot reserve.
    let refused = shop
        .catalog
        .clone()
        .reserve_stock(authed(
            pb::ReserveStockRequest {
                organization_id: org_id.clone(),
                order_id: uuid::Uuid::new_v4().to_string(),
                lines: vec![],
            },
            &shop.admin.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    shop.stop().await;
}

backend_suite!(concurrent_reservations_never_oversell, "CatalogService": sqlite, postgres);

/// A cart goes with its session: at once when its owner next asks, and by
/// the sweeper otherwise.
async fn a_cart_disappears_with_its_session(extra: &[&str]) {
    let mut args = vec!["--cart-sweep-interval", "300ms"];
    args.extend_from_slice(extra);
    let mut shop = Shop::open(&args).await;
    let ana = shop.admin.clone();
    let second = shop.work_session(ana.token.clone()).await;
    add(&mut shop.carts, &ana, &shop.taco.clone(), 1, vec![])
        .await
        .unwrap();
    add(&mut shop.carts, &second, &shop.taco.clone(), 2, vec![])
        .await
        .unwrap();
    let cart_rows = |data_dir: std::path::PathBuf| async move {
        let url = trellis_store::default_sqlite_url(&data_dir, "cart");
        let db = trellis_store::Database::connect(&url, &Default::default())
            .await
            .unwrap();
        let trellis_store::Database::Sqlite(pool) = &db else {
            unreachable!()
        };
        let rows: Vec<(String,)> = sqlx::query_as("SELECT session_id FROM cart_carts")
            .fetch_all(pool)
            .await
            .unwrap();
        db.close().await;
        rows.into_iter().map(|(s,)| s).collect::<Vec<_>>()
    };
    assert_eq!(cart_rows(shop.data_dir.clone()).await.len(), 2);
    for who in [&ana, &second] {
        shop.sessions
            .delete_session(authed(
                DeleteSessionRequest {
                    session_id: who.session_id.clone(),
                },
                &ana.token,
            ))
            .await
            .unwrap();
    }
    // Within the check TTL (200 ms) plus one sweep (300 ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(cart_rows(shop.data_dir.clone()).await, Vec::<String>::new());
    let gone = shop
        .carts
        .get_cart(authed(
            pb::GetCartRequest {
                session_id: second.session_id.clone(),
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    shop.stop().await;
}

backend_suite!(a_cart_disappears_with_its_session, "cart sweeper": sqlite, redis);
