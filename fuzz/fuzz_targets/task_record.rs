//! Task records, `tasks/<status>/<id>.json` and the pending index's
//! `tasks/pending/<route>/<priority>/<chunk>/<seq>.<id>.json`, as read by `task::list`
//! (`taskd list`, aggregate), `task::claim`, `task::requeue_agent` and
//! `task::requeue_expired` (healthmon), which also reads a claim's lease.
//!
//! Input: one byte choosing the status directory, then the record.
//!
//! Properties: a record that parses writes back and parses equal; listing never fails
//! on a bad record and never loses one: it is listed under its status, or set aside in
//! `tasks/garbage/`; a pending record at the path `index::pending_rel` names is listed;
//! a claim counts one more attempt; a requeue leaves the task in exactly one place.
#![no_main]

use coord_core::registry::{self, Registration};
use coord_core::task::{self, ClaimOptions, Route, Status, Task, index};
use coord_core::{fsio, id};
use coord_fuzz::{Scratch, T, files_under};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const STORE: &[&str] = &["ids", "pending", "blocked", "claimed", "done", "failed", "cancelled", "dependents", "locks"];

fn id_of(rec: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(rec).ok()?;
    let id = v.get("id")?.as_str()?;
    id::validate("task", id).ok().map(str::to_string)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rec)) = data.split_first() else { return };
    let status = Status::ALL[usize::from(sel) % Status::ALL.len()];
    let s = Scratch::new();
    for d in STORE {
        std::fs::create_dir_all(s.dir.tasks_dir().join(d)).expect("store directory");
    }
    let name = id_of(rec).unwrap_or_else(|| "t1".to_string());
    let parsed: Option<Task> = serde_json::from_slice(rec).ok();

    if let Some(t) = &parsed {
        let back: Task = fsio::parse_json(std::path::Path::new("rec.json"), &fsio::to_json_bytes(t)).expect("reparse");
        assert_eq!(&back, t, "a record does not survive its own rewrite");
    }

    // Where the tools would have put it.
    let mut canonical = true;
    let rel = if status == Status::Pending {
        let named = parsed.as_ref().and_then(|t| {
            let route = Route::new(t.agent_type.as_deref(), &t.capabilities);
            index::pending_rel(&route, t.priority, t.seq, &name).ok()
        });
        named.unwrap_or_else(|| {
            canonical = false;
            format!("~+/{}/000000000000/0000000000000001.{name}.json", index::priority_key(0))
        })
    } else {
        format!("{}/{name}.json", status.dir_name())
    };
    let path = s.plant(s.dir.tasks_dir().join(if status == Status::Pending { "pending" } else { "" }).join(&rel), rec);

    let listed = task::list(&s.dir, status).expect("listing never fails on a bad record");
    let garbage = s.dir.tasks_garbage_dir();
    match listed.as_slice() {
        [] => {
            assert!(
                !path.exists() && files_under(&garbage) == 1,
                "{} was neither listed nor set aside",
                path.display()
            );
            let expected_listing = parsed.as_ref().is_some_and(|t| t.id == name && canonical);
            assert!(!expected_listing, "a well-formed record at {} was set aside", path.display());
            return;
        }
        [t] => {
            assert_eq!(t.id, name);
            let shown = if status == Status::Claimed && t.status == "assigned" { Status::Claimed } else { status };
            assert_eq!(t.state(), Some(shown));
        }
        more => panic!("one record listed as {} tasks", more.len()),
    }
    let t = listed.into_iter().next().expect("one task");
    let _ = task::count(std::slice::from_ref(&t));
    let _ = task::lease_deadline(&s.dir, &t);

    match status {
        Status::Pending => {
            let agent_type = t.agent_type.clone().unwrap_or_else(|| "w".to_string());
            if id::validate("agent type", &agent_type).is_err()
                || t.capabilities.iter().any(|c| id::validate("capability", c).is_err())
            {
                return;
            }
            let reg = Registration {
                id: "a1".into(),
                agent_type,
                capabilities: t.capabilities.clone(),
                pid: std::process::id(),
                replace: false,
            };
            registry::register(&s.dir, &reg, T).expect("register");
            let claimed = task::claim(&s.dir, "a1", &ClaimOptions::default(), T).expect("claim");
            let c = claimed.expect("the agent may take the only pending task");
            assert_eq!(c.id, t.id);
            assert_eq!(u64::from(c.attempts), u64::from(t.attempts) + 1, "a claim counts one attempt");
            task::requeue_agent(&s.dir, "a1", "fuzz", T).expect("requeue");
            let all = task::list_all(&s.dir).expect("list all");
            assert_eq!(all.iter().filter(|x| x.id == t.id).count(), 1, "requeued task is in {} places", all.len());
        }
        Status::Claimed => {
            task::requeue_expired(&s.dir, T).expect("requeue expired");
            let all = task::list_all(&s.dir).expect("list all");
            let places = all.iter().filter(|x| x.id == t.id).count();
            assert!(places == 1 || files_under(&garbage) >= 1, "claimed task is in {places} places");
        }
        _ => {}
    }
});
