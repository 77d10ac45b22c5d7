//! What the toolkit needs to know about this machine and its processes.
//!
//! Process identity is `(host, pid, start time)`: the start time comes from
//! `/proc/<pid>/stat` (field 22, clock ticks since boot), so a pid that the kernel has
//! handed to a new process is never mistaken for the old one.

use std::path::Path;

use crate::env;

/// The host name records carry: `COORD_HOST` if set, else the kernel's host name.
pub fn host() -> String {
    if let Ok(h) = std::env::var(env::HOST)
        && !h.is_empty()
    {
        return h;
    }
    kernel_hostname().unwrap_or_else(|| "localhost".to_string())
}

fn kernel_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates
    // within it or truncates, and we only read up to the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The login name of the effective user, for `session.json`'s `coordinator`.
pub fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    passwd_name(euid()).unwrap_or_else(|| euid().to_string())
}

/// The name `/etc/passwd` gives `uid`. Read directly rather than through the C library's
/// `getpwuid`, which in a statically linked binary would load NSS modules at run time.
fn passwd_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_lookup(&text, uid)
}

fn passwd_lookup(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// This process's parent: the shell or agent that ran the tool.
pub fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// Start time of `pid` in clock ticks since boot, or `None` if no such process is visible.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come field 3 (state) onwards; starttime is field 22, i.e. index 19 here.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The kernel's boot id: start times are only comparable within one boot.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Whether the process `(pid, start)` is still running on this host.
///
/// A pid that exists but started at another time belongs to a different process.
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    match (process_start(pid), start) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The owner uid of a path, without following a final symlink.
pub fn owner_of(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(path)?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_skip_tricky_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn passwd_lookup_finds_the_uid_and_skips_bad_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nzed:x:notanumber:1::/:/bin/sh\n\
                      alice:x:1000:1000:Alice:/home/alice:/bin/sh\n";
        assert_eq!(passwd_lookup(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_lookup(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_lookup(passwd, 4242), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_is_not() {
        let me = std::process::id();
        let start = process_start(me).expect("own /proc entry");
        assert!(process_alive(me, Some(start)));
        assert!(!process_alive(me, Some(start + 1)));
    }
}
