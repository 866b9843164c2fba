use std::io::IsTerminal;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultFields, Format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryArgs};

/// Human-readable lines. The target is kept: it is how `audit` events (every
/// authentication attempt and admin action) stand apart from the rest.
fn human_layer<S, W>(
    writer: W,
    ansi: bool,
) -> tracing_subscriber::fmt::Layer<S, DefaultFields, Format, W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer)
}

/// Whether spans go to an OpenTelemetry exporter: only then does a server
/// make its per-RPC span for them and send its own span id downstream.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(crate) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The process's span export, flushed when dropped or shut down.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is still buffered; call before the process exits.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }

    /// Exports every finished span now (tests).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the process-wide subscriber: logs as `args` say, and with
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans exported over OTLP/gRPC as
/// `service_name` (`OTEL_SERVICE_NAME` wins). Call inside the Tokio runtime:
/// the exporter's channel lives on it. Errors (a bad filter, a bad
/// endpoint) are returned, not panicked on.
pub fn init_tracing(args: &TelemetryArgs, service_name: &str) -> Result<Telemetry, String> {
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}: {e}"))?;
            Some(
                provider_builder(args, service_name)?
                    .with_batch_exporter(exporter)
                    .build(),
            )
        }
        _ => None,
    };
    install(args, provider)
}

/// As [`init_tracing`], with spans handed to `exporter` as each ends (a
/// test's in-memory exporter).
pub fn init_tracing_with_exporter<E>(
    args: &TelemetryArgs,
    service_name: &str,
    exporter: E,
) -> Result<Telemetry, String>
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    let provider = provider_builder(args, service_name)?
        .with_simple_exporter(exporter)
        .build();
    install(args, Some(provider))
}

fn provider_builder(
    args: &TelemetryArgs,
    service_name: &str,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder, String> {
    if !(0.0..=1.0).contains(&args.trace_sample_ratio) {
        return Err(format!(
            "trace-sample-ratio must be between 0 and 1, got {}",
            args.trace_sample_ratio
        ));
    }
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service_name.to_owned());
    // A caller's sampling decision is kept; new traces are sampled at the
    // ratio.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        args.trace_sample_ratio,
    )));
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(Resource::builder().with_service_name(name).build()))
}

/// Lines as `--log-format` says, for any subscriber stack.
fn log_layer<S>(args: &TelemetryArgs) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match args.log_format {
        LogFormat::Human => human_layer(std::io::stdout, std::io::stdout().is_terminal()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

fn install(args: &TelemetryArgs, provider: Option<SdkTracerProvider>) -> Result<Telemetry, String> {
    let filter = || {
        EnvFilter::try_new(&args.log).map_err(|e| format!("invalid log filter {:?}: {e}", args.log))
    };
    let Some(provider) = provider else {
        // No export: one global filter, so a disabled callsite (the
        // per-RPC DEBUG span and lines) costs nothing; a filter per layer
        // costs ~2 us per call here.
        tracing_subscriber::registry()
            .with(filter()?)
            .with(log_layer(args))
            .try_init()
            .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
        return Ok(Telemetry { provider: None });
    };
    let logs = log_layer(args).with_filter(filter()?);
    // Spans only, whatever the log filter: the per-RPC span is DEBUG so
    // that logging at INFO never formats it.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("trellis"))
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span() && metadata.target().starts_with("trellis")
        }));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    EXPORTING.store(true, Ordering::Relaxed);
    trellis_tenancy::set_current_traceparent(|| traceparent_of(&tracing::Span::current()));
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// `traceparent` (W3C) as an OpenTelemetry parent context.
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(context))
}

/// The `traceparent` naming `span` as the parent of the next hop.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<http::HeaderValue> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    http::HeaderValue::from_str(&format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn human_lines_keep_the_audit_target() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(human_layer(move || writer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            // Interest another thread cached without a subscriber: ask again.
            tracing::callsite::rebuild_interest_cache();
            tracing::info!(target: "audit", event = "login", result = "ok");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains(" audit: "), "{text}");
        assert!(text.contains("event=\"login\""), "{text}");
    }
}
