//! The module graph of coord-core has no circles (`scripts/check-deps.sh`), and the check
//! can fail: on a copy of the sources with a circle put in, it fails and names it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check_deps(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("bash").arg(root().join("scripts/check-deps.sh")).args(args).output().expect("run check-deps.sh")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Copies `from` to `to`, directories and `.rs` files only.
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let (src, dst): (PathBuf, PathBuf) = (e.path(), to.join(e.file_name()));
        if e.file_type().expect("type").is_dir() {
            copy_sources(&src, &dst);
        } else if src.extension().is_some_and(|x| x == "rs") {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// `err` names the circle of `a` and `b`, from whichever of the two the walk met first.
fn assert_names_circle(err: &str, a: &str, b: &str) {
    let named = |x: &str, y: &str| err.lines().any(|l| l == format!("circle: {x} -> {y} -> {x}"));
    assert!(named(a, b) || named(b, a), "no circle of {a} and {b} named in:\n{err}");
}

#[test]
fn coord_core_modules_have_no_circle() {
    let out = check_deps(&[root().join("crates/coord-core/src").as_os_str()]);
    assert!(out.status.success(), "check-deps.sh failed:\n{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn the_graph_has_the_layers_of_docs_architecture() {
    let out = check_deps(&["--graph".as_ref(), root().join("crates/coord-core/src").as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let edges = text(&out.stdout);
    for e in ["report -> task", "task -> results", "report -> results", "mailbox -> registry", "layout -> fsio"] {
        assert!(edges.lines().any(|l| l == e), "no edge {e:?} in:\n{edges}");
    }
    for e in ["task -> report", "registry -> mailbox", "results -> task", "results -> report"] {
        assert!(!edges.lines().any(|l| l == e), "edge {e:?} in:\n{edges}");
    }
}

/// A copy of coord-core's sources in which `rel` ends with `extra`; the check's output on it.
fn check_with(rel: &str, extra: &str) -> Output {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    copy_sources(&root().join("crates/coord-core/src"), &src);
    let file = src.join(rel);
    let code = std::fs::read_to_string(&file).expect("read the copy");
    std::fs::write(&file, format!("{code}\n{extra}\n")).expect("write the copy");
    check_deps(&[src.as_os_str()])
}

#[test]
fn an_injected_circle_fails_and_is_named() {
    // registry -> mailbox: mailbox already uses registry (registry::load).
    let out = check_with("registry.rs", "fn _circle() {\n    let _ = crate::mailbox::BROADCAST_TO;\n}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_names_circle(&text(&out.stderr), "registry", "mailbox");
    // A grouped import counts too.
    let out = check_with("results/mod.rs", "#[allow(unused_imports)]\nuse crate::{fsio, task::{Status, Task}};");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_names_circle(&text(&out.stderr), "results", "task");
    // A comment does not.
    let out = check_with("registry.rs", "// crate::mailbox::send");
    assert!(out.status.success(), "a comment is not a reference: {}", text(&out.stderr));
}

#[test]
fn a_directory_without_lib_rs_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(check_deps(&[tmp.path().as_os_str()]).status.code(), Some(2));
}
