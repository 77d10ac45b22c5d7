//! Directory listings read with getdents64(2) into one buffer that is reused from one
//! listing to the next: no allocation per name, and no fstat(2) per directory (glibc's
//! `opendir`, under `std::fs::read_dir`, makes one to size its buffer).
//!
//! The live view (`healthmon status --watch`) and the one-off overview list every task
//! directory and every mailbox directory of a session: thousands of directories, most of
//! them small or empty, where the cost of a listing is the system calls around it.
//!
//! Names that are not UTF-8 cannot be coord's: they are skipped, as every caller would.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The size of the buffer getdents64 fills: glibc's own for a directory on a filesystem
/// of 4 KiB blocks is 32 KiB.
const BUF: usize = 32 * 1024;

/// Where a directory entry's fixed part ends and its name begins: `d_ino` (8 bytes),
/// `d_off` (8), `d_reclen` (2), `d_type` (1).
const NAME_AT: usize = 19;

/// Lists directories with one reused buffer.
#[derive(Debug)]
pub struct Lister {
    buf: Vec<u8>,
}

impl Default for Lister {
    fn default() -> Lister {
        Lister::new()
    }
}

impl Lister {
    /// A lister with its buffer.
    pub fn new() -> Lister {
        Lister { buf: vec![0; BUF] }
    }

    /// Calls `each(name, is_dir)` for every entry of the directory at `path` but `.`, `..`
    /// and names that are not UTF-8, in the order the filesystem gives them; `Ok(false)`
    /// if there is no such directory. `is_dir` comes from the entry's type where the filesystem gives one,
    /// and from an lstat of it where not (so a symlink to a directory is not one).
    pub fn list(&mut self, path: &Path, each: impl FnMut(&str, bool)) -> io::Result<bool> {
        let Some(fd) = open_dir(path)? else { return Ok(false) };
        self.list_fd(fd.as_fd(), each)?;
        Ok(true)
    }

    /// As [`Lister::list`], for a directory already open.
    fn list_fd(&mut self, fd: BorrowedFd<'_>, mut each: impl FnMut(&str, bool)) -> io::Result<()> {
        loop {
            // SAFETY: getdents64 writes at most `len` bytes into the buffer, which is
            // valid and writable for that many, and returns how many it wrote or -1.
            let n =
                unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), self.buf.as_mut_ptr(), self.buf.len()) };
            let n = match usize::try_from(n) {
                Ok(0) => return Ok(()),
                Ok(n) => n.min(self.buf.len()),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            let mut at = 0;
            while at + NAME_AT < n {
                let rec = &self.buf[at..n];
                let reclen = usize::from(u16::from_ne_bytes([rec[16], rec[17]]));
                if reclen <= NAME_AT || reclen > rec.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a malformed directory entry"));
                }
                let kind = rec[18];
                let Ok(name) = CStr::from_bytes_until_nul(&rec[NAME_AT..reclen]) else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a directory entry without its NUL"));
                };
                if let Ok(text) = name.to_str()
                    && text != "."
                    && text != ".."
                {
                    let is_dir = match kind {
                        libc::DT_DIR => true,
                        libc::DT_UNKNOWN => is_dir_at(fd, name),
                        _ => false,
                    };
                    each(text, is_dir);
                }
                at += reclen;
            }
        }
    }
}

thread_local! {
    static LISTER: std::cell::RefCell<Lister> = std::cell::RefCell::new(Lister::new());
}

/// [`Lister::list`] with this thread's lister (a lister of its own for a listing made
/// from within another one's `each`).
pub fn list(path: &Path, mut each: impl FnMut(&str, bool)) -> io::Result<bool> {
    LISTER.with(|l| match l.try_borrow_mut() {
        Ok(mut l) => l.list(path, &mut each),
        Err(_) => Lister::new().list(path, &mut each),
    })
}

/// Opens the directory at `path` for listing; `None` if there is no such directory.
fn open_dir(path: &Path) -> io::Result<Option<OwnedFd>> {
    let mut c = Vec::with_capacity(path.as_os_str().len() + 1);
    c.extend_from_slice(path.as_os_str().as_bytes());
    c.push(0);
    let Ok(c) = CStr::from_bytes_with_nul(&c) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"));
    };
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::NotFound => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `raw` is a descriptor just opened here, owned by no one else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Whether `name` in the directory `fd` is a directory (not following a symlink).
fn is_dir_at(fd: BorrowedFd<'_>, name: &CStr) -> bool {
    // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open, `name` is NUL-terminated and `st` is valid and writable.
    let rc = unsafe { libc::fstatat(fd.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(l: &mut Lister, d: &Path) -> Option<Vec<(String, bool)>> {
        let mut got = Vec::new();
        let found = l.list(d, |n, is_dir| got.push((n.to_string(), is_dir))).expect("list");
        got.sort();
        found.then_some(got)
    }

    #[test]
    fn it_lists_what_read_dir_lists() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("d");
        let mut l = Lister::new();
        assert_eq!(listed(&mut l, &d), None, "a missing directory");
        std::fs::create_dir(&d).expect("mkdir");
        assert_eq!(listed(&mut l, &d), Some(Vec::new()), "an empty directory");
        // Enough names, long ones, to take several getdents64 calls of the buffer.
        let mut want = Vec::new();
        for i in 0..3000 {
            let name = format!("{i:016}.{}.json", "t".repeat(i % 200));
            std::fs::write(d.join(&name), b"").expect("write");
            want.push((name, false));
        }
        for sub in ["sub", ".hidden"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
            want.push((sub.to_string(), true));
        }
        std::os::unix::fs::symlink(d.join("sub"), d.join("link")).expect("symlink");
        want.push(("link".to_string(), false));
        want.sort();
        // Not UTF-8: skipped (std lists it, and the comparison below leaves it out).
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"odd-\xff")), b"").expect("odd name");
        assert_eq!(listed(&mut l, &d), Some(want.clone()));
        let mut std_listed: Vec<(String, bool)> = std::fs::read_dir(&d)
            .expect("read_dir")
            .filter_map(|e| {
                let e = e.expect("entry");
                Some((e.file_name().into_string().ok()?, e.file_type().expect("type").is_dir()))
            })
            .collect();
        std_listed.sort();
        assert_eq!(std_listed, want, "the same as std::fs::read_dir");
        assert_eq!(listed(&mut l, &d), Some(want.clone()), "the buffer is reused");
        // This thread's lister, and a listing within a listing.
        let mut outer = Vec::new();
        let mut inner = 0;
        let found = list(&d, |n, _| {
            outer.push(n.to_string());
            if n == "sub" {
                list(&d, |_, _| inner += 1).expect("inner");
            }
        });
        assert!(found.expect("outer"));
        assert_eq!((outer.len(), inner), (want.len(), want.len()));
    }

    #[test]
    fn a_file_is_not_a_directory_to_list() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        let e = Lister::new().list(&f, |_, _| {}).expect_err("a file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    }
}
