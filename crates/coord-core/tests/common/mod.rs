//! What the two state-machine tests (`queue_model.rs`, `mailbox_model.rs`) share: turning
//! results into test-case errors, counting the transitions a run reached, and running
//! the cases until every kind of transition has been seen.

use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

pub fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

pub fn ok<T>(r: coord_core::Result<T>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| fail(format!("{what}: {e}")))
}

/// How many operations of each kind took effect over a run, so the generator is seen to
/// reach every transition.
static EFFECTS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Counts one transition of this kind.
pub fn effect(kind: impl Into<String>) {
    *EFFECTS.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.into()).or_default() += 1;
}

/// Runs `run` over 64 random cases of `ops`, and checks that every kind in `kinds` took
/// effect somewhere, so a generator that drifts cannot pass by testing nothing. A rare
/// kind may miss one random round of cases; only one still missing after four rounds
/// (each with fresh random cases) fails.
pub fn run_until_covered<S: Strategy>(
    source_file: &'static str,
    kinds: &[&str],
    ops: S,
    run: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = ProptestConfig { cases: 64, source_file: Some(source_file), ..ProptestConfig::default() };
    let cases = config.cases;
    for round in 1..=4 {
        let mut runner = TestRunner::new(config.clone());
        if let Err(e) = runner.run(&ops, &run) {
            panic!("{e}\n{runner}");
        }
        if cases < 32 {
            return;
        }
        let seen = EFFECTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let missing: Vec<&str> = kinds.iter().copied().filter(|k| seen.get(*k).is_none_or(|&n| n == 0)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(round < 4, "never {missing:?} in {} cases: {seen:?}", cases * round);
    }
}
