//! Creating an archive: steps 1 to 5 of the order in [`super`]. It walks the session
//! directory without following links (temporaries `.<name>.tmp` and the archive being
//! written skipped), writes a gzip-compressed tar to a hidden temporary file next to the
//! destination (`<base>/<session>.tar.gz` or `--output`) with the completed
//! `session.json` inside, has it verified (`verify`), renames it into place and only
//! then writes the completed `session.json` into the session.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Crc;
use flate2::write::GzEncoder;
use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::layout::{Base, SessionDir, ToolLock};
use crate::record::{Session, status};
use crate::registry;
use crate::session;
use crate::time;

use super::expire::remove_session_dir;
use super::verify::verify;
use super::{ARCHIVE_FIELD, Archived, EXPIRES_FIELD, LEVEL, Options, Progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry found by the walk (path relative to the session directory).
#[derive(Debug)]
struct Found {
    rel: PathBuf,
    kind: Kind,
    /// Directories and links only; files are described by their open descriptor.
    meta: Option<Metadata>,
    target: Option<PathBuf>,
}

/// What was written for one entry; the verification compares against it.
#[derive(Debug, PartialEq)]
pub(super) struct Written {
    pub(super) path: PathBuf,
    pub(super) kind: Kind,
    pub(super) size: u64,
    pub(super) crc: u32,
    pub(super) target: Option<PathBuf>,
}

/// Archives the session `dir` under `base`. See the module documentation for the order
/// of steps that keeps a failure from changing anything.
pub fn create(base: &Base, dir: &SessionDir, opts: &Options, progress: &mut dyn FnMut(&Progress)) -> Result<Archived> {
    if opts.remove && opts.keep_for.is_some() {
        return Err(Error::Usage("--remove and --keep-for exclude each other: remove now, or keep for a while".into()));
    }
    let output = match &opts.output {
        Some(p) => std::path::absolute(p).ctx("resolve", p)?,
        None => std::path::absolute(base.archive_path(dir.id())).ctx("resolve", base.path())?,
    };
    check_output(dir, &output)?;

    let guard = dir.tool_lock(ToolLock::Session, opts.lock_timeout)?;
    let current = session::read(dir)?;
    let active_agents: Vec<String> = match registry::load(dir) {
        Ok(agents) => agents.into_iter().filter(|a| a.status == status::ACTIVE).map(|a| a.id).collect(),
        Err(e) => {
            log::warn!("cannot read the registry to check for active agents: {e}");
            Vec::new()
        }
    };
    if !active_agents.is_empty() {
        log::warn!(
            "agents still active in session {}: {}; archiving anyway (their later writes are not in the archive)",
            dir.id(),
            active_agents.join(", ")
        );
    }
    let now = SystemTime::now();
    let completed = completed_record(&current, &output, opts.keep_for, now);
    let session_bytes = fsio::to_json_bytes(&completed);

    let mut skipped = Vec::new();
    let found = walk(dir.root(), &mut skipped)?;
    let out_dir = output.parent().unwrap_or(Path::new("/"));
    let file_name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .ctx("create a temporary file in", out_dir)?;

    let written = write_archive(dir, &found, &session_bytes, tmp.as_file(), &output, progress)?;
    // The archive must be on disk before anything is deleted because of it: now with
    // --remove (or COORD_FSYNC=1), else `gc` syncs it before it removes the session.
    let durable = opts.remove || crate::env::fsync_requested();
    if durable {
        tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
    }
    verify(tmp.as_file(), &written).map_err(|why| {
        Error::Failed(format!(
            "the archive written to {} did not verify ({why}); nothing was changed",
            output.display()
        ))
    })?;
    let size = tmp.as_file().metadata().ctx("inspect", tmp.path())?.len();
    // An earlier archive at the same path (a session archived again) is kept aside until
    // the session is updated, so a failure below puts it back instead of losing it.
    let previous = match std::fs::symlink_metadata(&output) {
        Ok(_) => {
            let aside = out_dir.join(format!(".{file_name}.previous"));
            std::fs::rename(&output, &aside).ctx("move aside the earlier archive", &output)?;
            Some(aside)
        }
        Err(_) => None,
    };
    let restore = |output: &Path| {
        if let Some(aside) = &previous {
            let _ = std::fs::rename(aside, output);
        }
    };
    if let Err(e) = tmp.persist(&output) {
        restore(&output);
        return Err(Error::io("rename into", &output, e.error));
    }
    if durable {
        fsio::sync_dir(out_dir)?;
    }

    // The archive is in place and verified; now the session may say so.
    if let Err(e) = fsio::write_atomic(&dir.session_json(), &session_bytes) {
        let _ = std::fs::remove_file(&output);
        restore(&output);
        return Err(e);
    }
    if let Some(aside) = &previous {
        std::fs::remove_file(aside).ctx("remove the earlier archive", aside)?;
    }
    drop(guard);

    let removed = if opts.remove {
        remove_session_dir(base, dir.id())?;
        true
    } else {
        false
    };
    Ok(Archived {
        session: dir.id().to_string(),
        archive: output,
        size,
        entries: written.len() as u64,
        content_bytes: written.iter().filter(|w| w.kind == Kind::File).map(|w| w.size).sum(),
        status: completed.status.clone(),
        ended_at: completed.ended_at.clone().unwrap_or_default(),
        expires_at: completed.extra.get(EXPIRES_FIELD).and_then(Value::as_str).map(str::to_string),
        removed,
        active_agents,
        skipped,
    })
}

fn check_output(dir: &SessionDir, output: &Path) -> Result<()> {
    let name_ok = output.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'));
    if !name_ok {
        return Err(Error::Usage(format!("invalid archive path {}: it needs a file name", output.display())));
    }
    let parent = output.parent().unwrap_or(Path::new("/"));
    let parent_real = std::fs::canonicalize(parent).map_err(|e| {
        Error::Usage(format!("cannot write the archive to {}: its directory is not usable ({e})", output.display()))
    })?;
    let root_real = std::fs::canonicalize(dir.root()).ctx("resolve", dir.root())?;
    if parent_real.starts_with(&root_real) {
        return Err(Error::Usage(format!(
            "the archive {} would be inside the session directory it archives; write it elsewhere",
            output.display()
        )));
    }
    if std::fs::symlink_metadata(output).is_ok_and(|m| m.is_dir()) {
        return Err(Error::Usage(format!("{} is a directory; give the archive's file name", output.display())));
    }
    Ok(())
}

/// The session record as it is once archived.
fn completed_record(current: &Session, output: &Path, keep_for: Option<Duration>, now: SystemTime) -> Session {
    let mut s = current.clone();
    s.status = status::SESSION_COMPLETED.to_string();
    if s.ended_at.is_none() {
        s.ended_at = Some(time::rfc3339(now));
    }
    s.extra.insert(ARCHIVE_FIELD.into(), Value::String(output.display().to_string()));
    match keep_for {
        Some(d) => {
            s.extra.insert(EXPIRES_FIELD.into(), Value::String(time::rfc3339(now + d)));
        }
        None => {
            s.extra.remove(EXPIRES_FIELD);
        }
    }
    s
}

/// Whether a name is a writer's temporary file (`.<random>.tmp`), never part of the state.
fn is_temporary(name: &std::ffi::OsStr) -> bool {
    let n = name.as_encoded_bytes();
    n.starts_with(b".") && n.ends_with(b".tmp")
}

/// Every entry under `root` (itself first), directories before their contents, names
/// sorted, without following any link.
fn walk(root: &Path, skipped: &mut Vec<String>) -> Result<Vec<Found>> {
    let meta = std::fs::symlink_metadata(root).ctx("inspect", root)?;
    let mut out = vec![Found { rel: PathBuf::new(), kind: Kind::Dir, meta: Some(meta), target: None }];
    let mut i = 0;
    // Breadth-first over `out` itself: each directory's children are appended after it.
    while i < out.len() {
        if out[i].kind == Kind::Dir {
            let rel = out[i].rel.clone();
            let path = root.join(&rel);
            // The entry's type comes with the listing (no stat); a regular file's metadata
            // is taken from the descriptor it is read through.
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .ctx("list", &path)?
                .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
                .collect::<io::Result<_>>()
                .ctx("list", &path)?;
            children.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, ft) in children {
                if is_temporary(&name) {
                    continue;
                }
                let child_rel = rel.join(&name);
                let child = root.join(&child_rel);
                let stat = || match std::fs::symlink_metadata(&child) {
                    Ok(m) => Ok(Some(m)),
                    // Gone between listing and looking: a writer's rename; skip it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io("inspect", &child, e)),
                };
                let (kind, meta, target) = if ft.is_file() {
                    (Kind::File, None, None)
                } else if ft.is_dir() {
                    let Some(m) = stat()? else { continue };
                    (Kind::Dir, Some(m), None)
                } else if ft.is_symlink() {
                    let Some(m) = stat()? else { continue };
                    (Kind::Symlink, Some(m), Some(std::fs::read_link(&child).ctx("read link", &child)?))
                } else {
                    log::warn!("skipping {}: not a file, directory or link", child.display());
                    skipped.push(child_rel.display().to_string());
                    continue;
                };
                out.push(Found { rel: child_rel, kind, meta, target });
            }
        }
        i += 1;
    }
    // Directories first was needed for the walk; the archive lists each directory before
    // its contents, depth-first, as tar does.
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A reader that checksums what passes through and remembers its own errors, so a read
/// failure (the session) is told apart from a write failure (the archive).
struct Tracked<R> {
    inner: R,
    crc: Crc,
    count: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.crc.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}

fn header_for(kind: Kind, meta: &Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(match kind {
        Kind::Dir => tar::EntryType::Directory,
        Kind::File => tar::EntryType::Regular,
        Kind::Symlink => tar::EntryType::Symlink,
    });
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_size(size);
    h
}

/// Hands the tar stream to the compressing thread in large chunks.
struct ChunkWriter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 64 * 1024));
        // The receiver only goes away when compressing or writing failed; its own error
        // is the one reported.
        self.tx.send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

/// Writes the archive: this thread reads the session and builds the tar stream, a second
/// thread compresses and writes it (as `tar czf` runs tar and gzip side by side).
fn write_archive(
    dir: &SessionDir,
    found: &[Found],
    session_bytes: &[u8],
    file: &File,
    output: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<Written>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    std::thread::scope(|s| {
        let compressor = s.spawn(move || -> io::Result<()> {
            let mut enc = GzEncoder::new(BufWriter::with_capacity(1 << 20, file), flate2::Compression::new(LEVEL));
            for chunk in rx {
                io::Write::write_all(&mut enc, &chunk)?;
            }
            enc.finish()?.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        });
        let writer = ChunkWriter { tx, buf: Vec::with_capacity(CHUNK + 64 * 1024) };
        let built = build_tar(dir, found, session_bytes, writer, output, progress);
        let compressed = compressor.join().unwrap_or_else(|_| Err(io::Error::other("the compressor panicked")));
        match (built, compressed) {
            (Ok(w), Ok(())) => Ok(w),
            // A write failure seen by the tar side is the compressor's error (e.g. ENOSPC).
            (Err(Error::Io { op: "write archive", .. }), Err(e)) | (Ok(_), Err(e)) => {
                Err(Error::io("write archive", output, e))
            }
            (Err(e), _) => Err(e),
        }
    })
}

fn build_tar(
    dir: &SessionDir,
    found: &[Found],
    session_bytes: &[u8],
    writer: ChunkWriter,
    output: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<Written>> {
    let werr = |e: io::Error| Error::io("write archive", output, e);
    let mut builder = tar::Builder::new(writer);
    let root_name = PathBuf::from(dir.id());
    let session_rel = Path::new("session.json");
    let mut p = Progress { entries_total: found.len() as u64, ..Progress::default() };
    progress(&p);
    let mut written = Vec::with_capacity(found.len());
    let lstat = |f: &Found| -> Result<Metadata> {
        match &f.meta {
            Some(m) => Ok(m.clone()),
            None => {
                let p = dir.root().join(&f.rel);
                std::fs::symlink_metadata(&p).ctx("inspect", &p)
            }
        }
    };
    for f in found {
        let path = root_name.join(&f.rel);
        match f.kind {
            Kind::Dir => {
                let mut h = header_for(Kind::Dir, &lstat(f)?, 0);
                builder.append_data(&mut h, &path, io::empty()).map_err(werr)?;
                written.push(Written { path, kind: Kind::Dir, size: 0, crc: 0, target: None });
            }
            Kind::Symlink => {
                let target = f.target.clone().unwrap_or_default();
                let mut h = header_for(Kind::Symlink, &lstat(f)?, 0);
                builder.append_link(&mut h, &path, &target).map_err(werr)?;
                written.push(Written { path, kind: Kind::Symlink, size: 0, crc: 0, target: Some(target) });
            }
            Kind::File if f.rel == session_rel => {
                // The completed record, not the one on disk (see the module docs).
                let mut h = header_for(Kind::File, &lstat(f)?, session_bytes.len() as u64);
                builder.append_data(&mut h, &path, session_bytes).map_err(werr)?;
                let mut crc = Crc::new();
                crc.update(session_bytes);
                written.push(Written {
                    path,
                    kind: Kind::File,
                    size: session_bytes.len() as u64,
                    crc: crc.sum(),
                    target: None,
                });
            }
            Kind::File => {
                let src = dir.root().join(&f.rel);
                let handle = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&src)
                    .ctx("open", &src)?;
                let meta = handle.metadata().ctx("inspect", &src)?;
                if !meta.is_file() {
                    return Err(Error::Failed(format!(
                        "{} changed while archiving: no longer a regular file",
                        src.display()
                    )));
                }
                let size = meta.len();
                let mut h = header_for(Kind::File, &meta, size);
                let mut reader = Tracked { inner: handle.take(size), crc: Crc::new(), count: 0, failed: None };
                let appended = builder.append_data(&mut h, &path, &mut reader);
                if let Some(e) = reader.failed.take() {
                    return Err(Error::io("read", &src, e));
                }
                appended.map_err(werr)?;
                if reader.count != size {
                    return Err(Error::Failed(format!(
                        "{} shrank while archiving ({} of {size} bytes read); nothing was changed, try again",
                        src.display(),
                        reader.count
                    )));
                }
                p.bytes_done += size;
                written.push(Written { path, kind: Kind::File, size, crc: reader.crc.sum(), target: None });
            }
        }
        p.entries_done += 1;
        if p.entries_done.is_multiple_of(256) || p.entries_done == p.entries_total {
            progress(&p);
        }
    }
    let mut writer = builder.into_inner().map_err(werr)?;
    writer.send().map_err(werr)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognized() {
        assert!(is_temporary(std::ffi::OsStr::new(".abc.tmp")));
        assert!(!is_temporary(std::ffi::OsStr::new("a.tmp")));
        assert!(!is_temporary(std::ffi::OsStr::new(".hidden")));
    }
}
