//! Multi-host settings that can be checked on one machine: waits in polling mode
//! (`COORD_POLL_MS`, for network filesystems where inotify misses other hosts' writes),
//! and the run of `scripts/sharedfs.sh` on a real NFS mount shared by two hosts.

use std::time::{Duration, Instant};

use crate::util::TestEnv;

fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// How many inotify instances the process has open.
fn inotify_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify")))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn without_polling_mode_waits_use_inotify() {
    let env = TestEnv::with_session();
    let me = std::process::id().to_string();
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &me]).ok();
    let mut claimer = env.cmd("taskd").args(["claim", "w1", "--wait", "--timeout", "20"]).spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(inotify_fds(claimer.id()) > 0, "the default wait blocks on inotify");
    crate::util::kill9(&mut claimer);
}

#[test]
fn claim_and_recv_waits_work_in_polling_mode() {
    let env = TestEnv::with_session();
    let me = std::process::id().to_string();
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &me]).ok();

    let mut claimer =
        env.cmd("taskd").args(["claim", "w1", "--wait", "--timeout", "20"]).env("COORD_POLL_MS", "25").spawn();
    let mut receiver =
        env.cmd("msgq").args(["recv", "w1", "--wait", "--timeout", "20"]).env("COORD_POLL_MS", "25").spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(claimer.try_wait().expect("try_wait").is_none(), "claim waits while the queue is empty");
    assert!(receiver.try_wait().expect("try_wait").is_none(), "recv waits while the mailbox is empty");
    // In polling mode neither waiter relies on inotify, which would miss other hosts' writes.
    for pid in [claimer.id(), receiver.id()] {
        assert_eq!(inotify_fds(pid), 0, "process {pid} uses inotify despite COORD_POLL_MS");
    }

    env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
    env.cmd("msgq").args(["send", "--from", "x", "--to", "w1", "--type", "hello"]).ok();
    let claimed = wait_for_exit(&mut claimer, Duration::from_secs(5)).expect("claim woke up by polling");
    let received = wait_for_exit(&mut receiver, Duration::from_secs(5)).expect("recv woke up by polling");
    assert!(claimed.success() && received.success());
    assert_eq!(env.cmd("taskd").args(["show", "t1"]).ok().json()["assigned_to"], "w1");
}

/// `scripts/sharedfs.sh --quick`: two simulated hosts on a real NFSv4.2 mount (the
/// kernel's server and client, in a virtual machine) and an NFSv3 `nolock` mount. Says by
/// name why it cannot run where it cannot (exit 3 of the script), and fails on any failed
/// check. The full sizes (`scripts/sharedfs.sh` without `--quick`) are run by hand.
#[test]
fn real_nfs_two_hosts_and_a_lockless_mount() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let run = std::process::Command::new("bash")
        .arg(root.join("scripts/sharedfs.sh"))
        .arg("--quick")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run scripts/sharedfs.sh");
    let stderr = String::from_utf8_lossy(&run.stderr);
    match run.status.code() {
        Some(0) => {
            // Every check the script makes was made, and passed.
            let checks = std::fs::read_to_string(out.path().join("checks.jsonl")).expect("checks.jsonl");
            let checks: Vec<serde_json::Value> =
                checks.lines().map(|l| serde_json::from_str(l).expect("a check is JSON")).collect();
            assert!(checks.len() >= 15, "only {} checks were made:\n{stderr}", checks.len());
            assert!(checks.iter().all(|c| c["ok"] == true), "{stderr}");
            eprintln!("distributed::real_nfs_two_hosts_and_a_lockless_mount:\n{stderr}");
        }
        Some(3) => eprintln!("distributed::real_nfs_two_hosts_and_a_lockless_mount: SKIPPED, {stderr}"),
        code => panic!("scripts/sharedfs.sh exited {code:?}:\n{stderr}"),
    }
}
