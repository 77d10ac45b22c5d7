//! `id::validate`, the id rule, and the file-name parsers built on it
//! (`SessionDir::result_file_agent`, `SessionDir::result_log_agent`,
//! `layout::queue_shard::is_valid`).
//!
//! Properties: the rule accepts exactly `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`; an accepted
//! id is one normal path component that is not an option; a refusal is an `InvalidId`
//! usage error (exit 2); a file name parser accepts a name only if it is the name the
//! tools would write for what it parsed.
#![no_main]

use std::ffi::OsStr;
use std::path::{Component, Path};

use coord_core::layout::{FINAL_REPORT_STEM, SessionDir, queue_shard};
use coord_core::{Error, id};
use libfuzzer_sys::fuzz_target;

fn rule(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= id::MAX_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let expected = rule(s);
    match id::validate("agent", s) {
        Ok(v) => {
            assert!(expected, "accepted {s:?}");
            assert_eq!(v, s);
            let parts: Vec<Component<'_>> = Path::new(s).components().collect();
            assert_eq!(parts, [Component::Normal(OsStr::new(s))], "{s:?} is not one path component");
            assert!(!s.starts_with('-') && !s.starts_with('.') && !s.contains('\0'));
            assert_eq!(SessionDir::result_log_agent(&format!("{s}.jsonl")), Some(s));
            let name = format!("{s}.json");
            assert_eq!(SessionDir::result_file_agent(&name), (s != FINAL_REPORT_STEM).then_some(s));
        }
        Err(e) => {
            assert!(!expected, "refused {s:?}: {e}");
            assert!(matches!(e, Error::InvalidId { .. }), "{e:?}");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().starts_with("invalid agent id "), "{e}");
        }
    }
    assert_eq!(id::parser("task")(s).is_ok(), expected);

    if let Some(a) = SessionDir::result_file_agent(s) {
        assert_eq!(format!("{a}.json"), s);
        assert!(rule(a) && a != FINAL_REPORT_STEM);
    }
    if let Some(a) = SessionDir::result_log_agent(s) {
        assert_eq!(format!("{a}.jsonl"), s);
        assert!(rule(a));
    }
    for level in 0..=5 {
        if queue_shard::is_valid(level, s) {
            let v = u64::from_str_radix(s, 16).expect("a valid shard name is hex");
            let canonical = match level {
                0 => format!("{v:016x}"),
                1 => format!("{v:08x}"),
                _ => format!("{v:02x}"),
            };
            assert_eq!(canonical, s, "shard name at level {level} is not canonical");
        }
    }
});
