//! archive, black-box: round trip, links never followed, hostile archives, full disk,
//! expiry and gc, removal, listing.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::aggregate::{register, write_results};
use crate::util::{Rng, TestEnv};

/// Every entry under `root` with its type, mode and content (or link target).
fn tree(root: &Path) -> Vec<(PathBuf, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let mode = m.mode() & 0o777;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.push((rel, "link".into(), 0, t.into_os_string().into_encoded_bytes()));
            } else if m.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, "file".into(), mode, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn rich_session() -> TestEnv {
    let env = TestEnv::with_session();
    register(&env, "w1");
    write_results(&env, "w1", &json!({"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 1}));
    let d = env.dir();
    let mut rng = Rng::new(7);
    let blob: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
    std::fs::write(d.join("metrics/blob.bin"), &blob).expect("blob");
    std::fs::write(d.join("metrics/empty"), b"").expect("empty");
    std::fs::create_dir_all(d.join("state/deep/er/still")).expect("deep");
    let long = "n".repeat(120);
    std::fs::write(d.join("state/deep/er/still").join(&long), b"long name").expect("long");
    std::fs::create_dir(d.join("messages/empty-dir")).expect("empty dir");
    std::fs::write(d.join("metrics/private"), b"x").expect("private");
    std::fs::set_permissions(d.join("metrics/private"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    symlink("w1.json", d.join("results/latest")).expect("inner link");
    env
}

#[test]
fn round_trip_extract_equals_the_session_byte_for_byte() {
    let env = rich_session();
    let out = env.cmd("archive").ok().json();
    let archive = PathBuf::from(out["archive"].as_str().expect("archive path"));
    assert_eq!(archive, env.base.join(format!("{}.tar.gz", env.sid())));
    assert_eq!(out["size"].as_u64(), Some(std::fs::metadata(&archive).expect("archive").len()));
    assert_eq!(out["status"], "completed");

    let s = env.json("session.json");
    assert_eq!(s["status"], "completed");
    assert!(s["ended_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s["archive"], archive.display().to_string());

    let into = env.root.path().join("restored");
    let x = env.cmd("archive").args(["extract"]).arg(&archive).arg("--into").arg(&into).ok().json();
    assert!(x["entries"].as_u64().expect("entries") > 20);
    let restored = tree(&into.join(env.sid()));
    let original = tree(&env.dir());
    assert_eq!(restored.len(), original.len());
    for (a, b) in original.iter().zip(&restored) {
        assert_eq!(a, b, "{} differs after the round trip", a.0.display());
    }
    // Extracting again into the now non-empty directory is refused.
    env.cmd("archive").args(["extract"]).arg(&archive).arg("--into").arg(&into).code(2).stderr_has(&["not empty"]);
}

#[test]
fn a_link_to_a_secret_outside_is_stored_as_a_link_never_followed() {
    let env = TestEnv::with_session();
    let outside = env.root.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let secret = "TOP-SECRET-7f3a9c contents that must never be archived";
    std::fs::write(outside.join("secret.txt"), secret).expect("secret");
    std::fs::write(outside.join("other.txt"), secret).expect("secret 2");
    symlink(outside.join("secret.txt"), env.dir().join("results/leak.json")).expect("file link");
    symlink(&outside, env.dir().join("metrics/dirlink")).expect("dir link");

    let out = env.cmd("archive").ok().json();
    let archive = out["archive"].as_str().expect("path").to_string();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&archive).expect("open")).read_to_end(&mut raw).expect("gunzip");
    assert!(!String::from_utf8_lossy(&raw).contains("TOP-SECRET"), "secret content was archived");
    let mut links = Vec::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&archive).expect("open")));
    for e in ar.entries().expect("entries") {
        let e = e.expect("entry");
        let path = e.path().expect("path").into_owned();
        let dirlink = PathBuf::from(format!("{}/metrics/dirlink", env.sid()));
        assert!(path == dirlink || !path.starts_with(&dirlink), "followed a directory link: {path:?}");
        if e.header().entry_type() == tar::EntryType::Symlink {
            links.push((path, e.link_name().expect("link").expect("target").into_owned()));
        }
    }
    links.sort();
    assert_eq!(
        links,
        vec![
            (PathBuf::from(format!("{}/metrics/dirlink", env.sid())), outside.clone()),
            (PathBuf::from(format!("{}/results/leak.json", env.sid())), outside.join("secret.txt")),
        ]
    );
    // The secret is untouched and extracting the archive refuses the escaping links.
    assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).expect("read"), secret);
    let into = env.root.path().join("x");
    env.cmd("archive").arg("extract").arg(&archive).arg("--into").arg(&into).code(2).stderr_has(&["points outside"]);
    assert!(!into.exists(), "nothing was written");
}

/// A raw tar header with any name, type and link name (the tar crate's setters refuse
/// hostile paths, so the bytes are written directly).
fn raw_header(name: &str, kind: tar::EntryType, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// name, type, link name, content
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

fn hostile(path: &Path, entries: &[RawEntry<'_>]) {
    let file = std::fs::File::create(path).expect("create");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
    for (name, kind, link, data) in entries {
        let h = raw_header(name, *kind, link, data.len() as u64);
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("finish").finish().expect("gzip");
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_written() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let env = TestEnv::new();
    let top = env.root.path();
    let victim = top.join("victim");
    std::fs::create_dir(&victim).expect("victim dir");
    let v = victim.display().to_string();
    let abs_target = format!("{v}/abs");
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &str)> = vec![
        ("absolute", vec![("s/", Directory, "", b""), (abs_target.as_str(), Regular, "", b"pwned")], "absolute"),
        ("dotdot", vec![("s/", Directory, "", b""), ("s/../../victim/dotdot", Regular, "", b"pwned")], "'..'"),
        ("symlink-abs", vec![("s/", Directory, "", b""), ("s/l", Symlink, v.as_str(), b"")], "points outside"),
        ("symlink-up", vec![("s/l", Symlink, "../../victim", b"")], "points outside"),
        (
            "through-link",
            vec![("s/", Directory, "", b""), ("s/l", Symlink, "d", b""), ("s/l/f", Regular, "", b"pwned")],
            "through the link",
        ),
        ("hardlink-abs", vec![("s/", Directory, "", b""), ("s/h", Link, "/etc/passwd", b"")], "hard link"),
        ("hardlink-up", vec![("s/", Directory, "", b""), ("s/h", Link, "../victim/x", b"")], "hard link"),
        ("hardlink-missing", vec![("s/", Directory, "", b""), ("s/h", Link, "s/nothing", b"")], "hard link"),
        ("device", vec![("s/dev", tar::EntryType::Char, "", b"")], "unsupported"),
        ("duplicate", vec![("s/f", Regular, "", b"one"), ("s/f", Regular, "", b"two")], "twice"),
    ];
    for (name, entries, why) in &cases {
        let archive = top.join(format!("{name}.tar.gz"));
        hostile(&archive, entries);
        let into = top.join(format!("into-{name}"));
        env.cmd("archive").arg("extract").arg(&archive).arg("--into").arg(&into).code(2).stderr_has(&[
            "refusing",
            why,
            "nothing was written",
        ]);
        assert!(!into.exists(), "{name}: the target was created");
        assert_eq!(std::fs::read_dir(&victim).expect("ls").count(), 0, "{name}: wrote outside the target");
    }
    // A benign archive of the same shape extracts, with an internal hard link.
    let ok = top.join("ok.tar.gz");
    hostile(
        &ok,
        &[
            ("s/", Directory, "", b""),
            ("s/f", Regular, "", b"data"),
            ("s/h", Link, "s/f", b""),
            ("s/l", Symlink, "f", b""),
        ],
    );
    let into = top.join("into-ok");
    std::fs::create_dir(&into).expect("empty target");
    env.cmd("archive").arg("extract").arg(&ok).arg("--into").arg(&into).ok();
    assert_eq!(std::fs::read(into.join("s/h")).expect("hard link"), b"data");
    assert_eq!(std::fs::read_link(into.join("s/l")).expect("link"), PathBuf::from("f"));
    // Garbage is refused too.
    let junk = top.join("junk.tar.gz");
    std::fs::write(&junk, b"not an archive").expect("junk");
    env.cmd("archive").arg("extract").arg(&junk).arg("--into").arg(top.join("into-junk")).code(2);
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_no_partial_archive_and_the_session_active_and_intact() {
    let env = rich_session();
    let mut rng = Rng::new(99);
    let noise: Vec<u8> = (0..3 * 1024 * 1024).map(|_| rng.next() as u8).collect();
    std::fs::write(env.dir().join("metrics/noise.bin"), &noise).expect("noise");
    let mnt = env.root.path().join("small");
    std::fs::create_dir(&mnt).expect("mnt");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        // Visible with --nocapture and in the failure-free log of a verbose run.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping the full-disk test: mounting a tmpfs is not permitted here");
        }
        return;
    }
    let _guard = Mount(mnt.clone());
    let before = tree(&env.dir());
    let out = env.cmd("archive").arg("--output").arg(mnt.join("s.tar.gz")).code(1);
    out.stderr_has(&["No space left on device"]);
    assert_eq!(std::fs::read_dir(&mnt).expect("ls").count(), 0, "no partial archive or temporary file left");
    assert_eq!(env.json("session.json")["status"], "active");
    assert!(env.json("session.json").get("ended_at").is_none());
    assert_eq!(tree(&env.dir()), before, "the session is intact");
    // With room, the same session archives fine.
    env.cmd("archive").ok();
}

fn new_session(env: &TestEnv, op: &str) -> String {
    env.cmd("session-init").arg(op).ok().stdout_str().trim().to_string()
}

#[test]
fn gc_removes_only_expired_archived_sessions() {
    let env = TestEnv::new();
    let expired = new_session(&env, "expired");
    let kept = new_session(&env, "kept");
    let active = new_session(&env, "active");
    let plain = new_session(&env, "plain");
    env.cmd("archive").args(["--session", &expired, "--keep-for", "0"]).ok();
    let out = env.cmd("archive").args(["--session", &kept, "--keep-for", "1h"]).ok().json();
    assert!(out["expires_at"].as_str().is_some());
    env.cmd("archive").args(["--session", &plain]).ok();

    let removed = env.cmd("archive").arg("gc").ok().json_lines();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["session"], expired.as_str());
    assert!(!env.base.join(&expired).exists());
    assert!(env.base.join(format!("{expired}.tar.gz")).is_file(), "the archive stays");
    for s in [&kept, &active, &plain] {
        assert!(env.base.join(s).join("session.json").is_file(), "{s} was removed");
    }
    assert!(env.cmd("archive").args(["gc", "--older-than", "1h"]).ok().json_lines().is_empty());
    let removed = env.cmd("archive").args(["gc", "--older-than", "0"]).ok().json_lines();
    let mut ids: Vec<&str> = removed.iter().filter_map(|r| r["session"].as_str()).collect();
    ids.sort();
    let mut want = vec![kept.as_str(), plain.as_str()];
    want.sort();
    assert_eq!(ids, want, "never the active session");
    assert!(env.base.join(&active).join("session.json").is_file());

    let list = env.cmd("archive").arg("list").ok().json_lines();
    let by_id = |id: &str| list.iter().find(|l| l["session"] == id).cloned().unwrap_or(Value::Null);
    assert_eq!(by_id(&active)["status"], "active");
    assert_eq!(by_id(&active)["archived"], false);
    assert_eq!(by_id(&expired)["present"], false);
    assert_eq!(by_id(&expired)["archived"], true);
}

#[test]
fn remove_deletes_the_session_only_after_a_verified_archive_and_active_agents_warn() {
    let env = rich_session();
    let out = env.cmd("archive").arg("--remove").ok();
    out.stderr_has(&["still active", "w1"]);
    let v = out.json();
    assert_eq!(v["removed"], true);
    assert_eq!(v["active_agents"], json!(["w1"]));
    assert!(!env.dir().exists());
    assert!(PathBuf::from(v["archive"].as_str().expect("path")).is_file());
    let leftovers = hidden_files(&env.base);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Hidden (temporary) files left in the base directory.
fn hidden_files(base: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(base)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn bad_requests_are_usage_errors() {
    let env = TestEnv::with_session();
    env.cmd("archive")
        .arg("--output")
        .arg(env.dir().join("results/self.tar.gz"))
        .code(2)
        .stderr_has(&["inside the session"]);
    env.cmd("archive").args(["--remove", "--keep-for", "1h"]).code(2);
    env.cmd("archive").args(["--keep-for", "soon"]).code(2);
    env.cmd("archive").args(["--session", "../etc"]).code(2);
    assert_eq!(env.json("session.json")["status"], "active");
}

#[test]
fn a_failed_rearchive_keeps_the_earlier_archive() {
    let env = crate::util::TestEnv::with_session();
    let first = env.cmd("archive").ok().json();
    let path = std::path::PathBuf::from(first["archive"].as_str().expect("archive path"));
    let before = std::fs::read(&path).expect("read archive");
    // Make the session directory immutable so the second run fails after its new archive
    // is in place, when it updates session.json (root ignores permissions, not this flag).
    let immutable = std::process::Command::new("chattr").arg("+i").arg(env.dir()).status();
    if !immutable.is_ok_and(|s| s.success()) {
        eprintln!("skipped: chattr +i is not available here");
        return;
    }
    let out = env.cmd("archive").run();
    let _ = std::process::Command::new("chattr").arg("-i").arg(env.dir()).status();
    out.assert_code(1);
    assert_eq!(std::fs::read(&path).expect("earlier archive still there"), before);
    let leftovers = hidden_files(&env.base);
    assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
}
