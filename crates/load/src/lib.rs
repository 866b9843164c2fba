//! Trellis's load generator: virtual users on the project's own tonic
//! clients (which keep one HTTP/2 connection per server and HPACK state
//! like any real gRPC client), each looping the whole order flow, every
//! answer checked. `trellis-load flow` drives `trellis up`, `trellis serve`
//! or the gateway; `trellis-load unary` is the auth-overhead client. The
//! fault tests drive the same flows through this library.

pub mod flow;
pub mod hostile;
pub mod plot;
pub mod run;
pub mod stats;
pub mod unary;

pub use flow::{Account, CallPolicy, Targets, User};
pub use run::{Arrival, PlacedOrder, Report, RunConfig};
pub use stats::{Recorder, Step, Summary};

use std::time::Duration;

/// `250ms`, `5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (ms, s, m, h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
