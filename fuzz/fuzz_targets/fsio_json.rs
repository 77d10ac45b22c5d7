//! `fsio::read_json` / `read_json_opt`, the typed reader behind every JSON file of a
//! session, for untyped and typed documents.
//!
//! Properties: it accepts exactly what serde_json accepts, with the same value; a file
//! that does not parse is `Error::Malformed` naming the file with a 1-based line and
//! column that lie inside the file, the position not repeated in the message.
#![no_main]

use coord_core::record::{Agent, Session};
use coord_core::task::Task;
use coord_core::{Error, fsio};
use coord_fuzz::check_read_error;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("doc.json");
    std::fs::write(&path, data).expect("write");

    let direct = serde_json::from_slice::<Value>(data);
    match fsio::read_json::<Value>(&path) {
        Ok(v) => assert_eq!(Some(&v), direct.as_ref().ok()),
        Err(e) => {
            assert!(direct.is_err(), "read_json refused what serde_json accepts: {e}");
            assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
            check_read_error(&e, &path, data);
        }
    }
    let opt = fsio::read_json_opt::<Value>(&path);
    assert_eq!(opt.as_ref().ok().cloned().flatten(), direct.as_ref().ok().cloned());

    for err in [
        fsio::read_json::<Session>(&path).err(),
        fsio::read_json::<Vec<Agent>>(&path).err(),
        fsio::read_json::<Task>(&path).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
        check_read_error(&err, &path, data);
    }
});
