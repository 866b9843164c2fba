//! Traces across hops: one PlaceOrder sent to the gateway is one trace, the
//! gateway's span the parent of Order's, Order's the parent of the Cart
//! and Execution calls it makes (on the caller's behalf and as a service);
//! and a caller's own `traceparent` is followed.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tonic::metadata::MetadataValue;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::cart::v1 as cart;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::common::v1::Money;
use trellis::order::v1 as pb;
use trellis::order::v1::order_service_client::OrderServiceClient;
use trellis::session::v1::CreateSessionRequest;
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis_cli::ServiceName;
use trellis_runtime::TelemetryArgs;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn server_of(span: &SpanData) -> String {
    attribute(span, "server").unwrap_or_default()
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} trace={} span={} parent={}",
                server_of(s),
                s.name,
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn one_place_order_is_one_trace_across_the_servers() {
    let exporter = InMemorySpanExporter::default();
    let telemetry = trellis_runtime::init_tracing_with_exporter(
        &TelemetryArgs {
            log: "warn".into(),
            ..TelemetryArgs::default()
        },
        "trellis-test",
        exporter.clone(),
    )
    .unwrap();
    let data_dir = temp_dir("tracing");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
        .await
        .unwrap();
    let at = |service| running.address(service).unwrap();
    let token = sign_up(
        &mut AuthServiceClient::new(channel(at(ServiceName::Auth)).await),
        "traced",
    )
    .await
    .access_token;
    let session_id = SessionServiceClient::new(channel(at(ServiceName::Session)).await)
        .create_session(authed(CreateSessionRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .session_id;
    let cart_channel = channel(at(ServiceName::Cart)).await;
    let product_id = CatalogServiceClient::new(cart_channel.clone())
        .create_product(authed(
            cart::CreateProductRequest {
                sku: "TACO".into(),
                name: "taco".into(),
                category: "food".into(),
                price: Some(Money {
                    amount_minor: 350,
                    currency: "USD".into(),
                }),
                stock: Some(5),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .product_id;
    CartServiceClient::new(cart_channel)
        .add_item(authed(
            cart::AddItemRequest {
                session_id: session_id.clone(),
                product_id,
                quantity: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();

    // Through the gateway, as a browser's call arrives, with a caller's
    // own sampled trace to follow.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = authed(
        pb::PlaceOrderRequest {
            session_id,
            customer: Some(pb::Customer {
                name: "Ana".into(),
                phone: "+1 555 0100".into(),
                email: String::new(),
            }),
            delivery: Some(pb::Delivery {
                r#type: pb::DeliveryType::Pickup as i32,
                address: String::new(),
                requested_for: None,
            }),
            idempotency_key: "traced-1".into(),
        },
        &token,
    );
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{caller_trace}-{caller_span}-01")).unwrap(),
    );
    OrderServiceClient::new(channel(at(ServiceName::Gateway)).await)
        .place_order(request)
        .await
        .unwrap();
    // Spans end as their responses finish; give the last a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    telemetry.flush();

    let trace = TraceId::from_hex(caller_trace).unwrap();
    let spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let all = describe(&spans);
    let find = |server: &str, name: &str| {
        spans
            .iter()
            .find(|s| server_of(s) == server && s.name == name)
            .unwrap_or_else(|| panic!("no {server} span {name} in the trace:\n{all}"))
    };
    let place = "/trellis.order.v1.OrderService/PlaceOrder";
    let gateway = find("gateway", place);
    assert_eq!(
        gateway.parent_span_id,
        SpanId::from_hex(caller_span).unwrap(),
        "the gateway follows the caller's traceparent\n{all}"
    );
    let order = find("order", place);
    assert_eq!(
        order.parent_span_id,
        gateway.span_context.span_id(),
        "order is a child of the gateway\n{all}"
    );
    // Calls Order makes on the caller's behalf (GetCart) and as a service
    // (ReserveStock, EnqueueExecution) are each its children.
    for (server, name) in [
        ("cart", "/trellis.cart.v1.CartService/GetCart"),
        ("cart", "/trellis.cart.v1.CatalogService/ReserveStock"),
        (
            "execution",
            "/trellis.execution.v1.ExecutionService/EnqueueExecution",
        ),
    ] {
        let child = find(server, name);
        assert_eq!(
            child.parent_span_id,
            order.span_context.span_id(),
            "{server} {name} is a child of order's span\n{all}"
        );
    }
    // Every hop has a span of its own.
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_context.span_id()).collect();
    ids.sort_by_key(|id| id.to_string());
    ids.dedup();
    assert_eq!(ids.len(), spans.len(), "{all}");

    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}
