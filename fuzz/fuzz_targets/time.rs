//! `time::parse_duration` (every duration option: `--lease`, `--older-than`,
//! `--keep-for`, `--visibility`, ...), `time::parse_rfc3339` (every timestamp in a
//! record) and `time::rfc3339` (which also formats file times, e.g. heartbeats).
//!
//! Properties: an accepted duration can be added to the current time and that time
//! written as RFC 3339 (what `claim --lease` and `archive --keep-for` do with it); a
//! parsed timestamp writes back and parses to the same millisecond; any time a file
//! can carry formats as a timestamp that parses again.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coord_core::time;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Any time a file's mtime can hold: signed seconds and nanoseconds.
    if data.len() >= 12 {
        let secs = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) % 1_000_000_000;
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::new(secs.unsigned_abs(), 0))
                .and_then(|t| t.checked_add(Duration::new(0, nanos)))
        };
        if let Some(t) = t {
            let text = time::rfc3339(t);
            assert!(time::parse_rfc3339(&text).is_some(), "{text:?} does not parse");
        }
    }
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = time::parse_duration(s) {
        let later = SystemTime::now().checked_add(d);
        assert!(later.is_some(), "{s:?} was accepted as {d:?}, which overflows the clock");
        let text = time::rfc3339(later.expect("checked"));
        assert!(time::parse_rfc3339(&text).is_some(), "{s:?}: now + {d:?} = {text:?} does not parse");
    }
    if let Some(t) = time::parse_rfc3339(s) {
        let text = time::rfc3339(t);
        assert_eq!(time::parse_rfc3339(&text), Some(time::truncate_to_millis(t)), "{s:?} -> {text:?}");
        assert_eq!(time::unix_ms(time::truncate_to_millis(t)), time::unix_ms(t));
    }
});
