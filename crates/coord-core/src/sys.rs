//! What the toolkit needs to know about this machine and its processes.
//!
//! Process identity is `(host, pid, start time, pidfs inode)`: the start time comes from
//! `/proc/<pid>/stat` (field 22, clock ticks since boot), so a pid that the kernel has
//! handed to a new process is never mistaken for the old one. A tick is 10 ms, and a pid
//! can be handed on within one (a small PID namespace, `ns_last_pid`); where pidfds live
//! in pidfs (Linux 6.9 and later) the inode of the process's pidfd, never reused within a
//! boot, tells those apart too.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// Lets the allocator grow its heaps in large steps (64 MiB of address space at a time
/// instead of 128 KiB). For a short process that allocates a lot on several threads
/// (aggregate over 100,000 tasks), this saves thousands of `mprotect` calls; memory is
/// only used as it is touched. Setting it also fixes glibc's mmap threshold at 128 KiB
/// (no dynamic raise), which measured no slower for aggregate. A no-op where the
/// allocator is not glibc's.
pub fn grow_heap_in_large_steps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Sets the ext2/3/4 "top of directory hierarchy" attribute (`chattr +T`) on `dir`, so
/// that the filesystem spreads the directories created in it over its block groups
/// rather than keeping them next to their parent. Best effort: elsewhere, or without
/// the right, nothing happens.
pub fn spread_subdirectories(dir: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
        let Ok(d) = std::fs::File::open(dir) else { return };
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer (as
        // chattr passes it, whatever the ioctl's name says), on a descriptor we own.
        unsafe {
            if libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 {
                flags |= FS_TOPDIR_FL;
                let _ = libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
}

/// `f` of every item, in order: on one thread when there are fewer than `serial_below`
/// items (or one core), else split over up to 4 scoped threads, one per core. A panic in
/// `f` is passed on.
pub fn parallel_map<T: Send, R: Send>(items: Vec<T>, serial_below: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < serial_below || threads < 2 {
        return items.into_iter().map(f).collect();
    }
    let size = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(size).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let running: Vec<_> =
            chunks.into_iter().map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>())).collect();
        running.into_iter().flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// This process's parent: the shell or agent that ran the tool.
pub fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// Start time of `pid` in clock ticks since boot, or `None` if no such process is
/// running here: none is visible, or it is a zombie — it has exited and only waits to be
/// reaped, which a parent that was killed too, or that never waits, may take long to do.
/// (A zombie thread-group leader whose other threads still run is a running process.)
pub fn process_start(pid: u32) -> Option<u64> {
    let path = format!("/proc/{pid}/stat");
    // One read(2) returns the whole line (a few hundred bytes); a line cut short, or a
    // read that failed, is read again the long way.
    let mut file = std::fs::File::open(&path).ok()?;
    let mut buf = [0u8; 1024];
    let n = std::io::Read::read(&mut file, &mut buf).unwrap_or(0);
    let line = &buf[..n];
    let (state, start) = match parse_stat_bytes(line).filter(|_| line.ends_with(b"\n")) {
        Some((state, start)) => (state.to_string(), start),
        None => {
            let stat = std::fs::read(&path).ok()?;
            let (state, start) = parse_stat_bytes(&stat)?;
            (state.to_string(), start)
        }
    };
    if matches!(state.as_str(), "Z" | "X") && !has_other_threads(pid) {
        return None;
    }
    Some(start)
}

/// [`parse_stat`] of the raw bytes: the command name (field 2) may be any bytes, not
/// only UTF-8; the fields after it are ASCII.
fn parse_stat_bytes(stat: &[u8]) -> Option<(&str, u64)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    parse_stat(std::str::from_utf8(&stat[close..]).ok()?)
}

/// Whether the process `pid` has a thread besides its first one.
fn has_other_threads(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1)
}

/// Fields 3 (state) and 22 (start time) of `/proc/<pid>/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?;
    // starttime is field 22: 19 fields after the state.
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// The inode number of `pid`'s pidfd where pidfds live in pidfs (Linux 6.9 and later):
/// one number per process, never reused within a boot. `None` if no such process is
/// visible or the kernel's pidfds are not in pidfs (their inodes would all be one).
pub fn process_inode(pid: u32) -> Option<u64> {
    pidfd_inode(pidfd_open(pid)?.as_fd())
}

/// A pidfd for `pid` (Linux 5.3 and later): a handle on that one process, which a later
/// process given the same pid is not, and which becomes readable when it exits (see
/// [`exited`]). `None` if no such process is visible or the kernel has no pidfds.
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let raw = i32::try_from(raw).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `raw` is a descriptor we just opened and own.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The pidfs inode of the process a pidfd refers to; `None` where pidfds are not in
/// pidfs (Linux before 6.9, where their inodes would all be one).
pub fn pidfd_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    const PID_FS_MAGIC: i64 = 0x5049_4446;
    if filesystem_type(fd) != Some(PID_FS_MAGIC) {
        return None;
    }
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid, writable stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some(st.st_ino)
}

/// Which of the processes behind `pidfds` have exited (their pidfd is readable), in one
/// poll(2) that does not wait.
pub fn exited(pidfds: &[BorrowedFd<'_>]) -> std::io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> =
        pidfds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let n = libc::nfds_t::try_from(polled.len()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `polled` is a valid array of `n` pollfds that outlives the call.
    if unsafe { libc::poll(polled.as_mut_ptr(), n, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(polled.iter().map(|p| p.revents != 0).collect())
}

/// The soft limit on open descriptors (`RLIMIT_NOFILE`), or 1024 if it cannot be read.
pub fn open_files_limit() -> u64 {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to overwrite.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// The kernel's boot id: start times are only comparable within one boot.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Whether the process `(pid, start, inode)` is still running on this host.
///
/// A pid that exists but started at another time, or whose pidfs inode differs from the
/// recorded one, belongs to a different process.
pub fn process_alive(pid: u32, start: Option<u64>, inode: Option<u64>) -> bool {
    match (process_start(pid), start) {
        (Some(now), Some(recorded)) if now != recorded => false,
        (Some(_), _) => !other_inode(pid, inode),
        (None, _) => false,
    }
}

/// Whether `pid` is now a process whose pidfs inode is known and differs from `recorded`.
pub fn other_inode(pid: u32, recorded: Option<u64>) -> bool {
    recorded.is_some_and(|r| process_inode(pid).is_some_and(|now| now != r))
}

/// The filesystem type (`statfs(2)`'s `f_type` magic number) holding the open file `fd`.
pub fn filesystem_type(fd: BorrowedFd<'_>) -> Option<i64> {
    // SAFETY: an all-zero statfs is a valid value for fstatfs(2) to fill in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` a valid, writable statfs.
    (unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// `statfs(2)`'s magic number of NFS (all versions).
pub const NFS_SUPER_MAGIC: i64 = 0x6969;

/// The superblock options (the last field of `/proc/self/mountinfo`) of the mount whose
/// device number is `major:minor`.
pub fn mount_options(major: u32, minor: u32) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_options_in(&info, &format!("{major}:{minor}")).map(str::to_string)
}

fn mount_options_in<'a>(mountinfo: &'a str, device: &str) -> Option<&'a str> {
    // "36 35 0:45 / /mnt rw,relatime shared:1 - nfs4 server:/ rw,vers=4.2,...": the third
    // field is the device; after the " - " separator come the type, the source and the
    // superblock options.
    mountinfo.lines().find_map(|line| {
        let (mount, sb) = line.split_once(" - ")?;
        (mount.split(' ').nth(2)? == device).then(|| sb.split(' ').nth(2))?
    })
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
    fn mount_options_come_from_the_line_of_the_device() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
                    40 22 0:52 / /mnt/nfs rw,relatime shared:30 - nfs 10.0.0.1:/x rw,vers=3,nolock,local_lock=all\n\
                    41 22 0:53 / /mnt/v4 rw,relatime - nfs4 10.0.0.1:/ rw,vers=4.2,local_lock=none\n";
        assert_eq!(mount_options_in(info, "0:52"), Some("rw,vers=3,nolock,local_lock=all"));
        assert_eq!(mount_options_in(info, "0:53"), Some("rw,vers=4.2,local_lock=none"));
        assert_eq!(mount_options_in(info, "8:1"), Some("rw,errors=remount-ro"));
        assert_eq!(mount_options_in(info, "0:5"), None);
        assert_eq!(mount_options_in("garbage\n - \n", "0:5"), None);
    }

    #[test]
    fn start_ticks_skip_tricky_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(("S", 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let squares: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(parallel_map((0..1000u64).collect(), 1, |i| i * i), squares, "in order, over threads");
        assert_eq!(parallel_map((0..1000u64).collect(), 2000, |i| i * i), squares, "on one thread");
        assert!(parallel_map(Vec::<u64>::new(), 0, |i| i).is_empty());
        assert_eq!(parse_stat("1 (x) S 1"), None);
        // A command name that is not UTF-8 does not hide the fields after it.
        let mut raw = b"42 (bad\xff name) ".to_vec();
        raw.extend_from_slice(&stat.as_bytes()[stat.rfind(')').expect("paren") + 2..]);
        assert_eq!(parse_stat_bytes(&raw), Some(("S", 987654)));
    }

    #[test]
    fn a_killed_child_not_yet_reaped_is_not_running() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        let pid = child.id();
        let start = process_start(pid).expect("running");
        child.kill().expect("kill");
        // Not reaped yet: a zombie, which /proc still lists with its start time.
        let zombie = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| parse_stat(&s).is_some_and(|f| f.0 == "Z"))
        });
        assert!(zombie, "the killed child became a zombie");
        assert_eq!(process_start(pid), None);
        assert!(!process_alive(pid, Some(start), None));
        child.wait().expect("reap");
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
        assert!(process_alive(me, Some(start), None));
        assert!(!process_alive(me, Some(start + 1), None));
    }

    #[test]
    fn a_pid_whose_inode_differs_is_another_process() {
        let me = std::process::id();
        let start = process_start(me);
        let Some(inode) = process_inode(me) else { return }; // pidfds not in pidfs (Linux < 6.9)
        assert_eq!(process_inode(me), Some(inode), "one process, one inode");
        assert!(process_alive(me, start, Some(inode)));
        assert!(!process_alive(me, start, Some(inode + 1)), "same pid and start tick, another process");
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let other = process_inode(child.id());
        child.wait().expect("wait");
        assert!(other.is_some_and(|o| o != inode), "another process, another inode");
    }
}
