//! Human-written durations (`"60s"`, `"15m"`, `"12h"`, `"90d"`) for grant lifetimes and
//! certificate validity.
//!
//! Only whole, positive amounts of one unit are accepted; anything else is an error, never a
//! silent default.

use std::fmt;
use std::time::Duration;

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected a positive whole number followed by s, m, h or d (e.g. \"60s\", \"90d\")"
)]
pub struct DurationError {
    /// What the user wrote.
    pub input: String,
}

/// The longest duration we accept anywhere: 100 years. Keeps arithmetic far from overflow.
const MAX_SECONDS: u64 = 100 * 366 * 24 * 3600;

/// Parses `"<n>s|m|h|d"` into a [`Duration`].
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let trimmed = input.trim();
    let split = trimmed
        .char_indices()
        .last()
        .map(|(i, _)| i)
        .ok_or_else(err)?;
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let amount: u64 = digits.parse().map_err(|_| err())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    let seconds = amount.checked_mul(factor).ok_or_else(err)?;
    if seconds == 0 || seconds > MAX_SECONDS {
        return Err(err());
    }
    Ok(Duration::from_secs(seconds))
}

/// Formats a duration the way [`parse`] reads it, in the largest unit that divides it exactly.
pub fn format(duration: Duration) -> String {
    Display(duration).to_string()
}

struct Display(Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (factor, unit) in [(86_400, "d"), (3600, "h"), (60, "m")] {
            if secs >= factor && secs.is_multiple_of(factor) {
                return write!(f, "{}{unit}", secs / factor);
            }
        }
        write!(f, "{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse("90d").unwrap(), Duration::from_secs(90 * 86_400));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "60",
            "-5s",
            "0s",
            "1.5h",
            "60 s",
            "60S",
            "1y",
            "99999999999999999999d",
            "36600000d",
            "+5s",
            "٣s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["1s", "59s", "1m", "90m", "1h", "25h", "1d", "365d"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(7200 + 60)), "121m");
    }
}
