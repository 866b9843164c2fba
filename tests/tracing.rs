//! Traces across hops: one PlaceOrder sent to the gateway is one trace, the
//! gateway's span the parent of Order's, Order's the parent of the Cart
//! and Execution calls it makes (on the caller's behalf and as a service);
//! a browser's `traceparent` is not followed at the gateway (the public
//! front starts the trace), a service's is by the server it calls.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tonic::metadata::MetadataValue;
use trellis::auth::v1::WhoAmIRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::order::v1::order_service_client::OrderServiceClient;
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

/// `request` as a caller that sends its own trace context.
fn traced<T>(traceparent: &str, mut request: tonic::Request<T>) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    request
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
    let (token, session_id) = buyer_with_cart(
        channel(at(ServiceName::Auth)).await,
        channel(at(ServiceName::Session)).await,
        channel(at(ServiceName::Cart)).await,
        "traced",
        1,
    )
    .await;

    // Through the gateway, as a browser's call arrives, with a trace
    // context of its own choosing (sampled, a trace id of its pick).
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let caller_traceparent = format!("00-{caller_trace}-{caller_span}-01");
    OrderServiceClient::new(channel(at(ServiceName::Gateway)).await)
        .place_order(traced(
            &caller_traceparent,
            authed(pickup_order(&session_id, "traced-1"), &token),
        ))
        .await
        .unwrap();
    // A service calling a server directly: its trace is followed.
    AuthServiceClient::new(channel(at(ServiceName::Auth)).await)
        .who_am_i(traced(
            &caller_traceparent,
            authed(WhoAmIRequest {}, &token),
        ))
        .await
        .unwrap();
    // Spans end as their responses finish; give the last a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    telemetry.flush();

    let finished = exporter.get_finished_spans().unwrap();
    let place = "/trellis.order.v1.OrderService/PlaceOrder";
    let gateway = finished
        .iter()
        .find(|s| server_of(s) == "gateway" && s.name == place)
        .unwrap_or_else(|| panic!("no gateway span:\n{}", describe(&finished)));
    assert_eq!(
        gateway.parent_span_id,
        SpanId::INVALID,
        "the gateway starts the trace, whatever a browser sent"
    );
    let caller = TraceId::from_hex(caller_trace).unwrap();
    assert_ne!(gateway.span_context.trace_id(), caller);
    let who_am_i = finished
        .iter()
        .find(|s| server_of(s) == "auth" && s.name == "/trellis.auth.v1.AuthService/WhoAmI")
        .unwrap_or_else(|| panic!("no WhoAmI span:\n{}", describe(&finished)));
    assert_eq!(who_am_i.span_context.trace_id(), caller);
    assert_eq!(
        who_am_i.parent_span_id,
        SpanId::from_hex(caller_span).unwrap()
    );

    let trace = gateway.span_context.trace_id();
    let spans: Vec<SpanData> = finished
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect();
    let all = describe(&spans);
    let find = |server: &str, name: &str| {
        spans
            .iter()
            .find(|s| server_of(s) == server && s.name == name)
            .unwrap_or_else(|| panic!("no {server} span {name} in the trace:\n{all}"))
    };
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
