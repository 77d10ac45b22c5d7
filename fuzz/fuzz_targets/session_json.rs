//! `session.json` as read by `session::read` (every tool opening a session), changed by
//! `session::update`, and read leniently by `archive::list` and
//! `health::session_finished`.
//!
//! Properties: a record that parses writes back and reads back equal; every non-null
//! field of the file survives the rewrite (unknown fields are kept); an update changes
//! only what it sets; a file that does not parse is a typed error with its position.
#![no_main]

use std::time::SystemTime;

use coord_core::{archive, fsio, health, session};
use coord_fuzz::{Scratch, T, check_read_error};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    let path = s.dir.session_json();
    std::fs::write(&path, data).expect("plant session.json");

    let _ = health::session_finished(&s.dir);
    let _ = archive::list(&s.base, SystemTime::now());
    let rec = match session::read(&s.dir) {
        Ok(r) => r,
        Err(e) => {
            check_read_error(&e, &path, data);
            return;
        }
    };
    fsio::write_json(&path, &rec).expect("rewrite");
    let back = session::read(&s.dir).expect("a rewritten session.json reads");
    assert_eq!(back, rec);

    let original: Value = serde_json::from_slice(data).expect("it parsed as a record");
    let rewritten: Value = fsio::read_json(&path).expect("rewritten");
    for (k, v) in original.as_object().expect("a record is an object") {
        if !v.is_null() {
            assert!(rewritten.get(k).is_some(), "field {k:?} was dropped on rewrite");
        }
    }

    let updated = session::update(&s.dir, T, |r| r.status = "completed".into()).expect("update");
    let mut expected = rec.clone();
    expected.status = "completed".into();
    assert_eq!(updated, expected);
    assert_eq!(session::read(&s.dir).expect("read after update"), expected);
});
