//! `registry/agents.json` as read by `registry::load` (every registry change, claims,
//! sends), `registry::list` (which adds heartbeat times from the heartbeat files' mtimes),
//! and leniently, entry by entry, by `health::load_agents_lenient` and
//! `health::agent_views` (healthmon, `registry status`).
//!
//! Input: the file, then optionally `0xFF` and 8 bytes: the heartbeat files' mtime in
//! signed seconds since the epoch (any time a file can carry).
//!
//! Properties: registrations that parse write back and read back equal, and the lenient
//! reader finds the same ones with no problems; for an array whose entries do not all
//! parse, the lenient reader accounts for every entry (parsed or reported); listing
//! works whatever the heartbeat times are.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use coord_core::record::Agent;
use coord_core::{fsio, health, id, mailbox, registry};
use coord_fuzz::{Scratch, check_read_error, split};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parts = split(data, 2);
    let text = parts[0];
    let s = Scratch::new();
    let path = s.dir.agents_json();
    std::fs::write(&path, text).expect("plant agents.json");

    let beat = parts.get(1).and_then(|b| b.get(..8)).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
    if let Some(secs) = beat {
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        };
        if let (Some(t), Ok(raw)) = (t, serde_json::from_slice::<Vec<Value>>(text)) {
            for a in raw.iter().filter_map(|v| v.get("id")?.as_str()) {
                if id::validate("agent", a).is_ok() {
                    let f = std::fs::File::create(s.dir.heartbeat_file(a)).expect("heartbeat file");
                    // Some filesystems refuse extreme times; then the file keeps "now".
                    let _ = f.set_modified(t);
                }
            }
        }
    }

    let lenient = health::load_agents_lenient(&s.dir);
    let _ = health::agent_views(&s.dir, Duration::from_secs(30));
    let agents = match registry::load(&s.dir) {
        Ok(a) => a,
        Err(e) => {
            check_read_error(&e, &path, text);
            if let Ok(raw) = serde_json::from_slice::<Vec<Value>>(text) {
                let (ok, problems) = lenient.expect("an array reads leniently");
                assert_eq!(ok.len() + problems.len(), raw.len(), "lenient read lost entries");
            }
            return;
        }
    };
    let (ok, problems) = lenient.expect("lenient read of a file the strict read accepts");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(ok, agents);

    fsio::write_json(&path, &agents).expect("rewrite");
    let back: Vec<Agent> = registry::load(&s.dir).expect("a rewritten agents.json reads");
    assert_eq!(back, agents);

    let listed = registry::list(&s.dir).expect("list");
    assert_eq!(listed.len(), agents.len());
    for a in &agents {
        if id::validate("agent", &a.id).is_ok() {
            let shown = registry::show(&s.dir, &a.id).expect("show a registered agent");
            assert_eq!(shown.id, a.id);
            let _ = mailbox::check_registered(&s.dir, &a.id);
        }
    }
});
