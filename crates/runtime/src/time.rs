//! Times as every service stores them (milliseconds since the Unix epoch)
//! and as the contract carries them (`google.protobuf.Timestamp`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration in milliseconds, saturating.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds as a message.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A message's time in Unix milliseconds, saturating (a hostile
/// `seconds` cannot overflow).
pub fn millis_of(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos.clamp(0, 999_999_999) / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_saturate() {
        for ms in [0, 1, 999, 1_764_650_000_123, -1] {
            assert_eq!(millis_of(&timestamp(ms)), ms);
        }
        let hostile = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        assert_eq!(millis_of(&hostile), i64::MAX);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
