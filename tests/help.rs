//! Every `--help` is a snapshot under tests/snapshots/: an interface change shows up as
//! a diff there. `COORD_UPDATE_SNAPSHOTS=1 cargo test --test tests help` rewrites them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::bin;

/// The tools, in the order the README lists them.
pub const TOOLS: [&str; 9] =
    ["session-init", "registry", "state", "msgq", "taskd", "healthmon", "aggregate", "archive", "coord-mcp"];

/// `TOOL [SUB] --help` with a fixed width and no COORD_* variables (their values show).
fn help(tool: &str, sub: Option<&str>) -> String {
    let mut cmd = Command::new(bin(tool));
    cmd.env_clear().env("COLUMNS", "100");
    cmd.args(sub).arg("--help");
    let out = cmd.output().expect("run --help");
    assert!(out.status.success(), "{tool} {sub:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The subcommands listed under "Commands:" (without `help`).
fn subcommands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|s| s != "help")
        .collect()
}

fn snapshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.help.txt"))
}

#[test]
fn every_help_matches_its_snapshot() {
    let update = std::env::var_os("COORD_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let mut differ = Vec::new();
    let mut seen = Vec::new();
    for tool in TOOLS {
        let top = help(tool, None);
        assert!(top.contains("Examples:"), "{tool} --help shows no examples");
        let mut pages = vec![(tool.to_string(), top.clone())];
        for sub in subcommands(&top) {
            pages.push((format!("{tool}-{sub}"), help(tool, Some(&sub))));
        }
        for (name, text) in pages {
            let path = snapshot_path(&name);
            seen.push(path.clone());
            if update {
                std::fs::write(&path, &text).expect("write snapshot");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                differ.push(name);
            }
        }
    }
    // A snapshot without a help page (a removed subcommand) is a diff too.
    for e in std::fs::read_dir(snapshot_path("x").parent().expect("dir")).expect("snapshots") {
        let p = e.expect("entry").path();
        if !seen.contains(&p) {
            if update {
                std::fs::remove_file(&p).expect("remove stale snapshot");
            } else {
                differ.push(p.display().to_string());
            }
        }
    }
    assert!(
        differ.is_empty(),
        "--help differs from tests/snapshots/ for: {differ:?}\n\
         If the change is intended, run `COORD_UPDATE_SNAPSHOTS=1 cargo test --test tests help` and commit the diff."
    );
}

#[test]
fn generate_writes_pages_and_completions_and_refuses_bad_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for tool in TOOLS {
        for kind in ["man", "bash", "zsh", "fish"] {
            let out = Command::new(bin(tool))
                .env_clear()
                .env("COORD_GENERATE", format!("{kind}:{}", dir.path().display()))
                .output()
                .expect("run");
            assert!(out.status.success(), "{tool} {kind}: {}", String::from_utf8_lossy(&out.stderr));
            let listed = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(!listed.is_empty() && listed.lines().all(|p| Path::new(p).is_file()), "{listed}");
        }
        assert!(dir.path().join(format!("{tool}.1")).is_file());
    }
    assert!(dir.path().join("taskd-work.1").is_file() && dir.path().join("msgq-recv.1").is_file());
    let bad = Command::new(bin("taskd")).env_clear().env("COORD_GENERATE", "tcsh:/tmp").output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown kind"));
}
