//! The names of the pending index, `tasks/pending/<route>/<priority>/<chunk>/<seq>.<id>.json`,
//! as parsed by `Route::parse` and by the scan every claim makes (`index::PendingScan`).
//!
//! Input: lines, each a path of four names below `tasks/pending/`; a file is created at
//! each.
//!
//! Properties: a route name that parses is the name of what it parsed (`dir_name`); the
//! scan yields entries in order (priority, then submission), and each entry's names are
//! the ones `index::pending_rel` gives for what the scan parsed from them; every file is
//! either yielded or set aside in `tasks/garbage/`, never lost.
#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use coord_core::id;
use coord_core::task::{Route, index};
use coord_fuzz::Scratch;
use libfuzzer_sys::fuzz_target;

const MAX_FILES: usize = 12;

fn check_route(name: &str) {
    if let Some(r) = Route::parse(name) {
        if let Some(t) = &r.agent_type {
            assert!(id::validate("agent type", t).is_ok());
        }
        assert!(r.capabilities.iter().all(|c| id::validate("capability", c).is_ok()));
        if let Ok(back) = r.dir_name() {
            assert_eq!(back, name, "route name is not the name of what it parses to");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let s = Scratch::new();
    let pending = s.dir.tasks_pending_dir();
    let mut planted = HashSet::new();
    for line in text.lines().take(MAX_FILES) {
        check_route(line.split('/').next().unwrap_or_default());
        let rel = Path::new(line);
        let parts: Vec<Component<'_>> = rel.components().collect();
        let plain = parts.len() == 4
            && parts
                .iter()
                .all(|c| matches!(c, Component::Normal(n) if n.len() <= 255 && !n.to_string_lossy().starts_with('.')))
            && !line.contains('\0');
        if !plain {
            continue;
        }
        let path = pending.join(rel);
        if std::fs::create_dir_all(path.parent().expect("parent")).is_err() || path.is_dir() {
            continue;
        }
        if std::fs::write(&path, b"{}").is_ok() {
            planted.insert(path);
        }
    }

    let mut scan = index::PendingScan::open(&s.dir, |_| true).expect("open scan");
    let mut seen = Vec::new();
    let mut last: Option<(String, u64)> = None;
    while let Some((i, e)) = scan.peek().expect("peek") {
        scan.advance(i);
        if let Some(l) = &last {
            assert!(*l <= e.key, "scan went back from {l:?} to {:?}", e.key);
        }
        last = Some(e.key.clone());
        let rel = e.path.strip_prefix(&pending).expect("an entry lies in the pending index");
        let names: Vec<&str> = rel.iter().map(|n| n.to_str().expect("UTF-8")).collect();
        assert_eq!(names.len(), 4, "{}", rel.display());
        let route = scan.route(i).expect("route").clone();
        assert_eq!(Route::parse(names[0]).as_ref(), Some(&route));
        assert_eq!(names[1], e.key.0);
        let priority = (i64::MAX as i128 - names[1].parse::<i128>().expect("digits")) as i64;
        let seq = e.key.1;
        // The names the tools write for this route, priority, sequence number and id.
        let expected = index::pending_rel(&route, priority, seq, &e.id).expect("a scanned entry has a name");
        assert_eq!(rel, Path::new(&expected), "accepted a name that is not the one pending_rel gives");
        seen.push(e.path.clone());
    }
    let seen_set: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen_set.len(), seen.len(), "an entry was yielded twice");
    let in_place = planted.iter().filter(|p| p.exists() && !seen_set.contains(*p)).count();
    assert_eq!(in_place, 0, "{in_place} files were neither yielded nor set aside");
    let set_aside = coord_fuzz::files_under(&s.dir.tasks_garbage_dir());
    assert_eq!(seen.len() + set_aside, planted.len(), "files were lost: {} yielded, {set_aside} set aside", seen.len());
});
