//! Unix time, the one conversion between `SystemTime` and the whole seconds that tokens,
//! certificates' error context, the store and attestation reports carry.
//!
//! Times before the epoch become 0 rather than an error: nothing seb handles is dated before
//! 1970, and a clock that far off fails every validity check anyway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `t` as RFC 3339 UTC to the second (`2027-01-06T21:41:35Z`), as messages, audit details and
/// the CLI show times; the debug form for a time no certificate could carry.
pub fn rfc3339(t: SystemTime) -> String {
    der::DateTime::from_system_time(t).map_or_else(|_| format!("{t:?}"), |d| d.to_string())
}

/// The time `secs` seconds after the Unix epoch.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_whole_seconds_and_clamps_before_the_epoch() {
        let t = from_unix(1_700_000_000);
        assert_eq!(unix(t), 1_700_000_000);
        assert_eq!(
            unix_millis(t + Duration::from_millis(250)),
            1_700_000_000_250
        );
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
