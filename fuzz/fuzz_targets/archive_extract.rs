//! `archive::extract` (`archive extract ARCHIVE DIR`) on hostile archives.
//!
//! Input: one byte choosing the form, then either raw bytes that are gzipped and given
//! to the extractor as the tar stream (the tar parser meets anything), or a description
//! of entries that is built into a tar.gz with raw headers, so entries can carry
//! absolute paths, `..`, links anywhere, long (GNU) names, devices, any mode and time.
//!
//! Properties: nothing is created, changed or linked outside the target directory; every
//! symbolic link in it resolves inside it; a refused or failed extraction leaves the
//! target as it was (missing, or empty); an accepted one writes no more entries than the
//! archive has.
#![no_main]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use coord_core::archive;
use coord_fuzz::walk;
use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;

/// Reads the entry description; missing bytes read as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.0.first().copied().unwrap_or(0);
        self.0 = self.0.get(1..).unwrap_or_default();
        b
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn uint(&mut self, bytes: usize) -> u64 {
        (0..bytes).fold(0u64, |acc, _| (acc << 8) | u64::from(self.byte()))
    }
    /// A path made of pieces that matter to an extractor, or raw bytes.
    fn path(&mut self) -> Vec<u8> {
        const PIECES: &[&str] = &["a", "b", "..", ".", "", "c.json", "a/b", "/", "x", "../..", "l"];
        let n = self.byte();
        if n >= 0xF0 {
            let len = usize::from(self.byte());
            return self.take(len);
        }
        let parts: Vec<&str> = (0..n % 6).map(|_| PIECES[usize::from(self.byte()) % PIECES.len()]).collect();
        let mut p = parts.join("/").into_bytes();
        if n & 0x80 != 0 {
            p.insert(0, b'/');
        }
        if n & 0x40 != 0 {
            // Past the 100 bytes of a plain header: written as a GNU long name.
            p.splice(0..0, b"d/".repeat(60));
        }
        p
    }
}

fn block(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn long_entry(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(value.len() as u64 + 1);
    h.set_mode(0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let mut v = value.to_vec();
    v.push(0);
    block(out, &v);
}

/// Builds a tar stream from the description; returns it and its entry count.
fn build(r: &mut Reader<'_>) -> (Vec<u8>, u64) {
    const KINDS: &[u8] = b"0521635x7gS";
    let mut out = Vec::new();
    let mut n = 0;
    while !r.0.is_empty() && n < 12 {
        let kind = KINDS[usize::from(r.byte()) % KINDS.len()];
        let path = r.path();
        let link = if matches!(kind, b'1' | b'2') { r.path() } else { Vec::new() };
        let mode = r.uint(2) as u32;
        let mtime = r.uint(8);
        let len = usize::from(r.byte());
        let content = if kind == b'0' { r.take(len) } else { Vec::new() };
        if path.len() > 100 {
            long_entry(&mut out, b'L', &path);
        }
        if link.len() > 100 {
            long_entry(&mut out, b'K', &link);
        }
        let mut h = tar::Header::new_gnu();
        let name = &path[..path.len().min(100)];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let ln = &link[..link.len().min(100)];
        h.as_old_mut().linkname[..ln.len()].copy_from_slice(ln);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(content.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        block(&mut out, &content);
        n += 1;
    }
    out.extend_from_slice(&[0; 1024]);
    (out, n)
}

/// Resolves `rel` inside `root` following symbolic links, `root` acting as `/`.
/// `None` when the path climbs out of `root` or a link is absolute.
fn resolve(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = rel.iter().map(OsString::from).collect();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match Path::new(&c).components().next() {
            None | Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                stack.pop()?;
            }
            Some(Component::RootDir | Component::Prefix(_)) => return None,
            Some(Component::Normal(n)) => {
                stack.push(n.to_os_string());
                let here: PathBuf =
                    std::iter::once(root.as_os_str()).chain(stack.iter().map(|s| s.as_os_str())).collect();
                if std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink()) {
                    hops += 1;
                    if hops > 40 {
                        break; // a loop: the kernel refuses to follow it
                    }
                    let target = std::fs::read_link(&here).expect("read link");
                    if target.is_absolute() {
                        return None;
                    }
                    stack.pop();
                    for t in target.iter().rev() {
                        todo.push_front(t.to_os_string());
                    }
                }
            }
        }
    }
    Some(stack.iter().collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let (tar_bytes, entries) = if form & 1 == 0 { (rest.to_vec(), u64::MAX) } else { build(&mut Reader(rest)) };
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar_bytes).expect("gzip");
    let gz = gz.finish().expect("gzip");

    let top = tempfile::tempdir().expect("tempdir");
    let arch = top.path().join("a.tar.gz");
    std::fs::write(&arch, &gz).expect("write archive");
    let outside = top.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let keep = outside.join("keep");
    std::fs::write(&keep, b"keep").expect("keep");
    let into = top.path().join("into");
    let precreated = form & 2 != 0;
    if precreated {
        std::fs::create_dir(&into).expect("into");
    }
    let before: Vec<PathBuf> = walk(top.path());

    let result = archive::extract(&arch, &into);

    for p in walk(top.path()) {
        assert!(before.contains(&p) || p.starts_with("into"), "created outside the target: {}", p.display());
    }
    assert_eq!(std::fs::read(&keep).expect("keep"), b"keep");
    assert_eq!(std::fs::metadata(&keep).expect("keep").nlink(), 1, "a file outside was hard-linked");
    assert_eq!(std::fs::read(&arch).expect("archive"), gz);
    for rel in walk(&into) {
        let p = into.join(&rel);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            assert!(
                resolve(&into, &rel).is_some(),
                "link {} -> {:?} leads outside",
                rel.display(),
                std::fs::read_link(&p)
            );
        }
    }
    match result {
        Ok(x) => {
            assert!(x.entries <= entries, "{} entries from an archive of {entries}", x.entries);
            assert!(into.is_dir());
        }
        Err(e) => {
            assert!(matches!(e.exit_code(), 1 | 2), "{e:?}");
            let left = walk(&into);
            assert!(left.is_empty(), "a failed extraction left {left:?}");
            assert_eq!(into.is_dir(), precreated, "a failed extraction changed whether the target exists");
        }
    }
    // Remove what was extracted even if it is read-only.
    for rel in walk(&into) {
        let p = into.join(rel);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
    }
});
