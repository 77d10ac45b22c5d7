//! The README's "Five minutes in a shell" block runs as written.

use std::process::Command;

use crate::util::{TestEnv, bin, bin_dir};

#[test]
fn the_readme_walk_through_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme.split("## Five minutes in a shell").nth(1).expect("the walk-through section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a sh block");
    // The first line builds and puts target/release on PATH; the tests use the debug build.
    let script: Vec<&str> = block.lines().filter(|l| !l.starts_with("cargo build")).collect();
    assert!(script.len() > 10, "the walk-through lost its commands");
    for tool in ["session-init", "registry", "state", "msgq", "taskd", "healthmon", "aggregate", "archive"] {
        bin(tool); // refuses a missing or stale binary
    }
    let env = TestEnv::new();
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script.join("\n"))
        .current_dir(env.root.path())
        .env("PATH", path)
        .env("COORD_BASE", &env.base)
        .env_remove("COORD_SESSION")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walk-through failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "400"), "eight writers, nothing lost: {stdout}");
    assert!(stdout.contains("healthy"));
    assert!(stdout.contains(".tar.gz"), "archived: {stdout}");
}
