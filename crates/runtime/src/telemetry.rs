use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
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

/// Installs the process-wide subscriber. Errors (a bad filter) are returned,
/// not panicked on.
pub fn init_tracing(args: &TelemetryArgs) -> Result<(), String> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| format!("invalid log filter {:?}: {e}", args.log))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Human => registry
            .with(human_layer(
                std::io::stdout,
                std::io::stdout().is_terminal(),
            ))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
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
