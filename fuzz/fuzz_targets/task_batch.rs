//! `taskd submit --batch` input, parsed by `task::parse_batch` and submitted with
//! `task::submit`, which also reads the sequence counter `tasks/seq`.
//!
//! Input: the batch (JSON Lines), then optionally `0xFF` and the content of `tasks/seq`.
//!
//! Properties: a refused batch is a usage error naming a line (or an error naming the
//! file it could not use) and writes no task; an accepted batch gives one record per
//! line, with what the line asked for, under consecutive sequence numbers; each task can
//! be shown, and every task without dependencies is found by a scan of the pending
//! index exactly once.
#![no_main]

use std::collections::HashMap;

use coord_core::error::exit;
use coord_core::task::{self, Status, index::PendingScan};
use coord_fuzz::{Scratch, T, files_in};
use libfuzzer_sys::fuzz_target;

/// Keeps one input's work small: a batch is checked whole, so more lines add little.
const MAX_TASKS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let parts = coord_fuzz::split(data, 2);
    let new = match task::parse_batch(parts[0]) {
        Ok(n) => n,
        Err(e) => {
            let text = e.to_string();
            assert!(
                (e.exit_code() == exit::USAGE && text.starts_with("stdin line "))
                    || (e.exit_code() == exit::FAILED && text.starts_with("read stdin")),
                "{e:?}"
            );
            return;
        }
    };
    if new.is_empty() || new.len() > MAX_TASKS {
        return;
    }
    let s = Scratch::new();
    if let Some(seq) = parts.get(1) {
        s.plant("tasks/seq", seq);
    }
    let ids_dir = s.dir.tasks_dir().join("ids");
    let done = match task::submit(&s.dir, new.clone(), T) {
        Ok(d) => d,
        Err(e) => {
            assert_eq!(files_in(&ids_dir), 0, "a refused batch wrote tasks ({e})");
            return;
        }
    };
    assert_eq!(done.len(), new.len());
    let mut by_id = HashMap::new();
    for t in &done {
        assert!(by_id.insert(t.id.clone(), t).is_none(), "id {:?} given twice", t.id);
    }
    let mut seqs: Vec<u64> = done.iter().map(|t| t.seq).collect();
    seqs.sort_unstable();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence numbers {seqs:?} are not consecutive");
    for n in &new {
        let t = match &n.id {
            Some(i) => by_id[i],
            None => continue,
        };
        assert_eq!((&t.payload, t.priority, &t.dependencies), (&n.payload, n.priority, &n.dependencies));
        assert_eq!(t.agent_type, n.agent_type);
        assert_eq!(t.max_attempts, n.max_attempts.unwrap_or(task::DEFAULT_MAX_ATTEMPTS));
    }
    let mut pending = HashMap::new();
    let mut scan = PendingScan::open(&s.dir, |_| true).expect("scan");
    while let Some((i, e)) = scan.peek().expect("peek") {
        *pending.entry(e.id.clone()).or_insert(0) += 1;
        scan.advance(i);
    }
    for t in &done {
        let shown = task::show(&s.dir, &t.id).expect("show a submitted task");
        assert_eq!(shown.id, t.id);
        let expected = if t.dependencies.is_empty() { Status::Pending } else { Status::Blocked };
        assert_eq!(shown.state(), Some(expected), "task {:?}", t.id);
        let found = pending.get(&t.id).copied().unwrap_or(0);
        assert_eq!(found, usize::from(expected == Status::Pending), "task {:?} found {found} times", t.id);
    }
    assert!(coord_fuzz::walk(&s.dir.tasks_garbage_dir()).is_empty(), "submit wrote something the scan set aside");
});
