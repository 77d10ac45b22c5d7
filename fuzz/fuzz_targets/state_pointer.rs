//! State documents and JSON pointers: `state::set` (`state set KEY POINTER VALUE`),
//! `state::get_at` and `state::get`, which read `state/<key>.json`, and the pointer
//! evaluation of `state::set_pointer`.
//!
//! Input: the document, `0xFF`, the pointer, `0xFF`, the value (JSON).
//!
//! Properties: after a set succeeds, reading the same pointer gives the value set (with
//! `-` standing for the index it appended at) and the file holds the new document; a
//! refused set leaves the file as it was and is a usage error (a bad pointer) or a
//! failure naming the pointer.
#![no_main]

use coord_core::error::exit;
use coord_core::{fsio, state};
use coord_fuzz::{Scratch, T};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KEY: &str = "k";

/// `pointer` with a last token `-` replaced by the index of the last element of the
/// array it now names in `doc`.
fn resolved(doc: &Value, pointer: &str) -> String {
    match pointer.rsplit_once('/') {
        Some((parent, "-")) => match doc.pointer(parent) {
            Some(Value::Array(a)) if !a.is_empty() => format!("{parent}/{}", a.len() - 1),
            _ => pointer.to_string(),
        },
        _ => pointer.to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = coord_fuzz::split(data, 3);
    let [doc, pointer, value] = parts.as_slice() else { return };
    let (Ok(doc), Ok(pointer), Ok(value)) =
        (serde_json::from_slice::<Value>(doc), std::str::from_utf8(pointer), serde_json::from_slice::<Value>(value))
    else {
        return;
    };
    let s = Scratch::new();
    fsio::write_json(&s.dir.state_file(KEY), &doc).expect("plant document");

    match state::set(&s.dir, KEY, pointer, value.clone(), T) {
        Ok(new) => {
            assert_eq!(state::get(&s.dir, KEY).expect("get"), new, "the file does not hold the new document");
            let at = resolved(&new, pointer);
            let got = state::get_at(&s.dir, KEY, &at);
            assert_eq!(got.ok().as_ref(), Some(&value), "set {pointer:?} then read {at:?} in {new}");
            let mut in_memory = doc.clone();
            state::set_pointer(&mut in_memory, pointer, value).expect("the same set in memory");
            assert_eq!(in_memory, new);
        }
        Err(e) => {
            assert_eq!(state::get(&s.dir, KEY).expect("get"), doc, "a refused set changed the document");
            assert!(matches!(e.exit_code(), exit::USAGE | exit::FAILED), "{e:?}");
            assert!(e.to_string().contains(&format!("{pointer:?}")), "error does not name the pointer: {e}");
        }
    }
});
