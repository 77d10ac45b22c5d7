//! Shared state documents: `state/<key>.json`, changed only under the key's lock.
//!
//! Reads take no lock (a rename-published file is always complete). Every change is a
//! read-modify-write under the named lock `<key>`, so `state lock <key> -- CMD` excludes
//! `state set` and `state update` of the same key.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsio;
use crate::id;
use crate::layout::SessionDir;

/// Reads a key's whole document. A missing key is a failure (exit 1) naming the file.
pub fn get(dir: &SessionDir, key: &str) -> Result<Value> {
    id::validate("state key", key)?;
    let path = dir.state_file(key);
    fsio::read_json_opt(&path)?
        .ok_or_else(|| Error::Failed(format!("state key {key:?} does not exist ({} is missing)", path.display())))
}

/// Reads the value at `pointer` (RFC 6901) in a key's document.
pub fn get_at(dir: &SessionDir, key: &str, pointer: &str) -> Result<Value> {
    check_pointer(pointer)?;
    let doc = get(dir, key)?;
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| Error::Failed(format!("state key {key:?} has no value at pointer {pointer:?}")))
}

/// Sets the value at `pointer` in a key's document (creating the key and any missing
/// parent objects) under the key's lock. Returns the new document.
pub fn set(dir: &SessionDir, key: &str, pointer: &str, value: Value, timeout: Duration) -> Result<Value> {
    id::validate("state key", key)?;
    check_pointer(pointer)?;
    rewrite(dir, key, &format!("set {pointer:?} in"), timeout, |doc| {
        set_pointer(doc, pointer, value)
            .map_err(|why| Error::Failed(format!("cannot set {pointer:?} in state key {key:?}: {why}")))
    })
}

/// Applies an RFC 7386 JSON merge patch to a key's document (`null` if the key is new)
/// under the key's lock, and returns the new document. In the patch, an object merges
/// key by key, `null` removes a member, and anything else replaces what is there.
pub fn merge(dir: &SessionDir, key: &str, patch: Value, timeout: Duration) -> Result<Value> {
    id::validate("state key", key)?;
    rewrite(dir, key, "merge into", timeout, |doc| {
        merge_patch(doc, patch);
        Ok(())
    })
}

/// Changes the document of `key` (already validated; `null` if new) with `change` under
/// the key's lock and writes it back; `what` names the change in errors ("cannot {what}
/// state key ...").
fn rewrite(
    dir: &SessionDir,
    key: &str,
    what: &str,
    timeout: Duration,
    change: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<Value> {
    let _guard = dir.lock(key, timeout)?;
    let path = dir.state_file(key);
    let mut doc = fsio::read_json_opt(&path)?.unwrap_or(Value::Null);
    change(&mut doc)?;
    let bytes = fsio::to_json_bytes(&doc);
    // A deep pointer or patch can nest the document past what a JSON reader accepts;
    // written, the key could never be read (or changed) again.
    if let Err(e) = serde_json::from_slice::<Value>(&bytes) {
        return Err(Error::Usage(format!(
            "cannot {what} state key {key:?}: the document would not read back ({e}); nothing was changed"
        )));
    }
    fsio::write_atomic(&path, &bytes)?;
    Ok(doc)
}

/// RFC 7386 merge: `patch` applied to `target` in place. Members keep their order; new
/// members go at the end.
pub fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(members) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(doc) = target {
        for (name, value) in members {
            if value.is_null() {
                doc.shift_remove(&name);
            } else {
                merge_patch(doc.entry(name).or_insert(Value::Null), value);
            }
        }
    }
}

/// Runs `cmd` with the key's current document (`null` if the key is new) on stdin,
/// under the key's lock. If `cmd` exits 0 and prints one valid JSON value, that value
/// replaces the document and is returned; otherwise nothing changes.
pub fn update(dir: &SessionDir, key: &str, cmd: &[String], timeout: Duration) -> Result<Value> {
    id::validate("state key", key)?;
    let (program, args) =
        cmd.split_first().ok_or_else(|| Error::Usage("state update needs a command after --".into()))?;
    let _guard = dir.lock(key, timeout)?;
    let path = dir.state_file(key);
    let current = fsio::read_json_opt::<Value>(&path)?.unwrap_or(Value::Null);
    let input = fsio::to_json_bytes(&current);

    let mut command = Command::new(program);
    die_with_parent(&mut command);
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot run {program:?}: {e}; state key {key:?} unchanged")))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // Feed stdin from a thread so a command that prints before reading all its input
    // cannot deadlock against us. A command that ignores stdin closes the pipe early;
    // that is its business, so the write error is dropped.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    let read = child.stdout.take().expect("stdout was piped").read_to_end(&mut out);
    let status = child.wait().map_err(|e| Error::Failed(format!("waiting for {program:?}: {e}")))?;
    let _ = feeder.join();
    read.map_err(|e| Error::Failed(format!("reading the output of {program:?}: {e}; state key {key:?} unchanged")))?;
    if !status.success() {
        return Err(Error::Failed(format!("{program:?} {}; state key {key:?} unchanged", describe(status))));
    }
    let new: Value = serde_json::from_slice(&out).map_err(|e| {
        Error::Failed(format!(
            "{program:?} printed invalid JSON (line {}, column {}: {}); state key {key:?} unchanged",
            e.line(),
            e.column(),
            e
        ))
    })?;
    fsio::write_json(&path, &new)?;
    Ok(new)
}

/// Runs `cmd` holding the named lock and returns its exit code (128+N if killed by signal N;
/// 127 if it cannot be found, 126 if it cannot be run).
pub fn with_lock(dir: &SessionDir, name: &str, cmd: &[String], timeout: Duration) -> Result<u8> {
    let (program, args) =
        cmd.split_first().ok_or_else(|| Error::Usage("state lock needs a command after --".into()))?;
    let _guard = dir.lock(name, timeout)?;
    let mut command = Command::new(program);
    die_with_parent(&mut command);
    let status = match command.args(args).status() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot run {program:?}: {e}");
            return Ok(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    Ok(exit_code_of(status))
}

/// Makes a command run under a lock die with us. The lock belongs to this process; if it
/// is killed while CMD runs, the kernel sends CMD SIGKILL (the parent-death signal), so CMD
/// never carries on outside the lock it was started under.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (prctl, getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We may have died before prctl took effect; then nobody would signal.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
}

/// A child's exit status as a shell would report it.
pub fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".to_string(),
    }
}

fn check_pointer(pointer: &str) -> Result<()> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid JSON pointer {pointer:?}: it must be empty (the whole document) or start with '/' (RFC 6901), e.g. /phase"
        )))
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at RFC 6901 `pointer` in `doc`, creating missing objects on the way.
/// An array index must exist, or be `-` or the array's length to append.
pub fn set_pointer(doc: &mut Value, pointer: &str, value: Value) -> std::result::Result<(), String> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    let tokens: Vec<String> = pointer[1..].split('/').map(unescape).collect();
    let (last, parents) = tokens.split_last().expect("a non-empty pointer has a token");
    let mut cur = doc;
    for token in parents {
        if cur.is_null() {
            *cur = Value::Object(Default::default());
        }
        cur = match cur {
            Value::Object(map) => map.entry(token.clone()).or_insert(Value::Null),
            Value::Array(arr) => {
                let i = array_index(token, arr.len(), false)?;
                &mut arr[i]
            }
            other => return Err(format!("{token:?} is inside a {} value, not an object or array", kind(other))),
        };
    }
    if cur.is_null() {
        *cur = Value::Object(Default::default());
    }
    match cur {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(arr) => {
            let i = array_index(last, arr.len(), true)?;
            if i == arr.len() {
                arr.push(value);
            } else {
                arr[i] = value;
            }
        }
        other => return Err(format!("{last:?} is inside a {} value, not an object or array", kind(other))),
    }
    Ok(())
}

fn array_index(token: &str, len: usize, may_append: bool) -> std::result::Result<usize, String> {
    if token == "-" && may_append {
        return Ok(len);
    }
    let i: usize = token.parse().map_err(|_| format!("{token:?} is not an array index"))?;
    if i < len || (may_append && i == len) {
        Ok(i)
    } else {
        Err(format!("array index {i} is out of range (length {len})"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_pointer_creates_parents_and_appends() {
        let mut doc = json!({"errors": [], "phase": "discovery"});
        set_pointer(&mut doc, "/phase", json!("analysis")).expect("phase");
        set_pointer(&mut doc, "/errors/-", json!("e1")).expect("append");
        set_pointer(&mut doc, "/errors/1", json!("e2")).expect("append by index");
        set_pointer(&mut doc, "/a~1b/c~0d", json!(1)).expect("escaped");
        assert_eq!(doc, json!({"errors": ["e1", "e2"], "phase": "analysis", "a/b": {"c~d": 1}}));
        assert!(set_pointer(&mut doc, "/errors/5", json!(0)).is_err());
        assert!(set_pointer(&mut doc, "/phase/x", json!(0)).is_err());
        let mut null = Value::Null;
        set_pointer(&mut null, "/x/y", json!(true)).expect("from null");
        assert_eq!(null, json!({"x": {"y": true}}));
        set_pointer(&mut null, "", json!(3)).expect("whole");
        assert_eq!(null, json!(3));
    }

    #[test]
    fn a_set_too_deep_to_read_back_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&crate::layout::Base::new(tmp.path().join("base")), "t").expect("init");
        let t = Duration::from_secs(5);
        set(&dir, "k", "/a", json!(1), t).expect("shallow set");
        let deep = "/x".repeat(200);
        let err = set(&dir, "k", &deep, json!(1), t).expect_err("too deep");
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("would not read back"), "{err}");
        assert_eq!(get(&dir, "k").expect("the key still reads"), json!({"a": 1}));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (mut doc, patch, want) in cases {
            merge_patch(&mut doc, patch.clone());
            assert_eq!(doc, want, "patch {patch}");
        }
        let mut ordered = json!({"x": 1, "y": 2, "z": 3});
        merge_patch(&mut ordered, json!({"x": null, "w": 0}));
        assert_eq!(serde_json::to_string(&ordered).expect("text"), r#"{"y":2,"z":3,"w":0}"#);
    }

    #[test]
    fn merge_creates_changes_and_keeps_a_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&crate::layout::Base::new(tmp.path().join("base")), "t").expect("init");
        let t = Duration::from_secs(5);
        assert_eq!(merge(&dir, "g", json!({"phase": "a", "n": 1}), t).expect("new key"), json!({"phase": "a", "n": 1}));
        assert_eq!(merge(&dir, "g", json!({"n": null, "m": 2}), t).expect("merge"), json!({"phase": "a", "m": 2}));
        assert_eq!(get(&dir, "g").expect("read back"), json!({"phase": "a", "m": 2}));
        assert_eq!(merge(&dir, "../g", json!({}), t).expect_err("bad key").exit_code(), 2);
    }

    #[test]
    fn pointers_must_be_rooted() {
        assert!(check_pointer("phase").is_err());
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("/phase").is_ok());
    }
}
