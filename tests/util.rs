//! The end-to-end harness: a private base directory per test, and commands that run the
//! built binaries with a scrubbed environment.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Directory holding the built binaries (`target/<profile>/`), next to this test binary.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/tests-<hash> -> target/<profile>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// Path of a tool binary, checked to exist and to be newer than its sources.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the tools first with `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    let built = mtime(&path);
    // Cargo's dep-info file lists exactly the sources the binary was built from (test-only
    // modules are not among them); without it, every source of the tool and the library.
    let sources = match std::fs::read_to_string(bin_dir().join(format!("{name}.d"))) {
        Ok(dep_info) => dep_info_sources(&dep_info),
        Err(_) => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut files = Vec::new();
            for dir in [root.join("crates/coord-core/src"), root.join("crates").join(name).join("src")] {
                files_under(&dir, &mut files);
            }
            files
        }
    };
    for src in sources {
        if let Ok(m) = std::fs::metadata(&src) {
            assert!(
                m.modified().expect("mtime") <= built,
                "{} is older than {}: rebuild with `cargo build --workspace` (scripts/test.sh does)",
                path.display(),
                src.display()
            );
        }
    }
    path
}

/// The prerequisites of the first rule of a Makefile-style dep-info file (`\ ` escapes a
/// space in a path).
fn dep_info_sources(dep_info: &str) -> Vec<PathBuf> {
    let Some(first) = dep_info.lines().next() else { return Vec::new() };
    let Some((_, deps)) = first.split_once(": ") else { return Vec::new() };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's world: a fresh base directory (removed on drop) and, once created, a session.
pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub base: PathBuf,
    pub session: Option<String>,
}

impl TestEnv {
    /// A fresh, not yet existing base directory inside a private temp dir.
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = tempfile::Builder::new().prefix(&format!("coord-test-{n}-")).tempdir().expect("tempdir");
        let base = root.path().join("base");
        TestEnv { root, base, session: None }
    }

    /// A new env with a session created by `session-init test`.
    pub fn with_session() -> Self {
        let mut env = TestEnv::new();
        let out = env.cmd("session-init").arg("test").ok();
        env.session = Some(out.stdout_str().trim().to_string());
        env
    }

    /// The session id (panics if none was created).
    pub fn sid(&self) -> &str {
        self.session.as_deref().expect("session created")
    }

    /// The session directory.
    pub fn dir(&self) -> PathBuf {
        self.base.join(self.sid())
    }

    /// A command for tool `name` with COORD_BASE/COORD_SESSION set and nothing else inherited
    /// from the caller's COORD_* environment.
    pub fn cmd(&self, name: &str) -> TestCommand {
        let mut cmd = Command::new(bin(name));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("COORD_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("COORD_BASE", &self.base);
        if let Some(s) = &self.session {
            cmd.env("COORD_SESSION", s);
        }
        cmd.stdin(Stdio::null());
        TestCommand { cmd }
    }

    /// Reads a JSON file of the session.
    pub fn json(&self, rel: &str) -> Value {
        let path = self.dir().join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
    }
}

impl Drop for TestEnv {
    /// Kills whatever this test started and left running (a test that failed half-way
    /// leaves its workers waiting): every process whose environment names this base.
    fn drop(&mut self) {
        // Only the env whose root holds the base: a copy made to share another's base
        // (a worker thread's) leaves the others' processes alone.
        if !self.base.starts_with(self.root.path()) {
            return;
        }
        let mark = {
            let mut m = b"COORD_BASE=".to_vec();
            m.extend_from_slice(self.base.as_os_str().as_encoded_bytes());
            m.push(0);
            m
        };
        let me = std::process::id();
        let Ok(procs) = std::fs::read_dir("/proc") else { return };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(p.path().join("environ")) else { continue };
            let named = env.split_inclusive(|b| *b == 0).any(|kv| kv == mark.as_slice());
            if named {
                // SAFETY: a plain kill(2) of a process this test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A tool invocation being built.
pub struct TestCommand {
    pub cmd: Command,
}

impl TestCommand {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.cmd.env_remove(k);
        self
    }

    /// Runs it and returns the output, whatever the exit code.
    pub fn run(mut self) -> RunOutput {
        RunOutput(self.cmd.output().expect("spawn tool"))
    }

    /// Runs it with `input` on stdin.
    pub fn run_with_stdin(mut self, input: &[u8]) -> RunOutput {
        use std::io::Write;
        let mut child =
            self.cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait");
        feeder.join().expect("feeder");
        RunOutput(out)
    }

    /// Runs it and asserts exit 0.
    pub fn ok(self) -> RunOutput {
        let out = self.run();
        out.assert_code(0);
        out
    }

    /// Runs it and asserts the exit code.
    pub fn code(self, code: i32) -> RunOutput {
        let out = self.run();
        out.assert_code(code);
        out
    }

    /// Starts it in the background with piped stdout and stderr.
    pub fn spawn(mut self) -> Child {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tool")
    }
}

/// A finished invocation.
pub struct RunOutput(pub Output);

impl RunOutput {
    pub fn code(&self) -> Option<i32> {
        self.0.status.code()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// stdout parsed as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout_str()))
    }

    /// stdout parsed as JSON Lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout_str()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}")))
            .collect()
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit code\nstdout: {}\nstderr: {}",
            self.stdout_str(),
            self.stderr_str()
        );
    }

    /// Asserts stderr contains every one of `parts`.
    pub fn stderr_has(&self, parts: &[&str]) -> &Self {
        let err = self.stderr_str();
        for p in parts {
            assert!(err.contains(p), "stderr lacks {p:?}: {err}");
        }
        self
    }
}

/// Every file under `dir` (recursively) that ends in `.json` parses as JSON; returns how many.
pub fn assert_all_json_parse(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            n += assert_all_json_parse(&path);
        } else if path.extension() == Some(OsStr::new("json")) {
            let bytes = std::fs::read(&path).expect("read");
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            n += 1;
        }
    }
    n
}

/// Waits until `cond` holds, up to `limit`; returns whether it did.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Sends SIGKILL to a child and reaps it.
pub fn kill9(child: &mut Child) {
    // SAFETY: kill with a pid we own; failure (already exited) is harmless.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// A small deterministic random number generator for tests (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Whether the suite runs as root (some tests need chown or namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The host name the tools record when COORD_HOST is not set.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer of its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
