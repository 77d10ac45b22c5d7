//! Timestamps: RFC 3339 UTC strings in records, milliseconds for arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-23T10:30:00.123Z`).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds. A time outside what RFC 3339 can write (before
/// 1970 or after 9999, as a file's modification time can be) is written as the nearest
/// time it can.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, latest())).to_string()
}

/// 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write.
fn latest() -> SystemTime {
    UNIX_EPOCH + Duration::new(253_402_300_799, 999_000_000)
}

/// Parses an RFC 3339 timestamp as written by [`rfc3339`] (or with seconds only).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// `t` with its sub-millisecond part dropped, so it survives a round trip through
/// [`rfc3339`] unchanged.
pub fn truncate_to_millis(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms(t))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whole seconds since the Unix epoch, now.
pub fn unix_secs_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The longest duration [`parse_duration`] accepts: 100 years. Durations are added to the
/// current time (lease expiries, `--keep-for`), which must stay a time a record can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration such as `90s`, `15m`, `1h`, `2days` or a bare number of seconds,
/// at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(format!("invalid duration {s:?}: must be a non-negative number of seconds"));
        }
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30, 90s, 15m, 1h)"))?
    };
    if d > MAX_DURATION {
        return Err(format!("invalid duration {s:?}: longer than 100 years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_parses_durations() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let s = rfc3339(t);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn durations_past_100_years_are_refused() {
        assert_eq!(parse_duration("3153600000"), Ok(MAX_DURATION));
        for s in ["3153600001", "22532253515253225351511", "1e300", "101years"] {
            let err = parse_duration(s).expect_err(s);
            assert!(err.contains("longer than 100 years"), "{s}: {err}");
        }
    }

    #[test]
    fn any_file_time_is_written_as_a_timestamp() {
        let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339(before_1970), "1970-01-01T00:00:00.000Z");
        let after_9999 = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(after_9999), "9999-12-31T23:59:59.999Z");
        assert!(parse_rfc3339(&rfc3339(after_9999)).is_some());
    }
}
