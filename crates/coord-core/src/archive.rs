//! Finishing a session: a verified `tar.gz`, expiry, garbage collection, listing, and an
//! extractor that refuses hostile archives.
//!
//! Archiving is ordered so that a failure at any step leaves everything as it was:
//!
//! 1. take the session lock (no other `session.json` change can interleave);
//! 2. write the archive to a hidden temporary file next to its destination; the
//!    `session.json` inside the archive is already the completed record (`status`,
//!    `ended_at`, where the archive lives, expiry);
//! 3. verify it by reading it back: every entry's path, type, size, link target and
//!    content checksum must match what was written, and the gzip trailer's CRC must
//!    check (with `--remove` or `COORD_FSYNC=1` it is fsynced first; `gc` fsyncs an
//!    archive before it deletes the session it holds);
//! 4. rename it into place;
//! 5. only now write the completed `session.json` into the session (the same bytes as in
//!    the archive, so an extracted archive equals the session byte for byte). If that
//!    fails, the archive is removed again and the session stays active;
//! 6. with `--remove`, rename the session directory out of view and delete it.
//!
//! The walk never follows a symbolic link: links are stored as links, regular files are
//! opened with `O_NOFOLLOW`, and nothing outside the session directory is read.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Crc;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::id;
use crate::layout::{ARCHIVE_SUFFIX, Base, SessionDir, ToolLock};
use crate::record::{Session, status};
use crate::registry;
use crate::session;
use crate::time;

/// `session.json` field holding the absolute path of the session's archive.
pub const ARCHIVE_FIELD: &str = "archive";
/// `session.json` field holding when `archive gc` may remove the session directory.
pub const EXPIRES_FIELD: &str = "expires_at";
/// gzip level: the same as `gzip -6` and `tar czf`.
const LEVEL: u32 = 6;

/// What `archive` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to write the archive; default `<base>/<session>.tar.gz`.
    pub output: Option<PathBuf>,
    /// Delete the session directory once the archive is verified.
    pub remove: bool,
    /// Let `archive gc` remove the session directory this long after archiving.
    pub keep_for: Option<Duration>,
    /// Bound on waiting for the session lock.
    pub lock_timeout: Duration,
}

/// Progress of a running archive, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Entries written so far.
    pub entries_done: u64,
    /// Entries to write.
    pub entries_total: u64,
    /// File bytes written so far.
    pub bytes_done: u64,
}

/// What `archive` did.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    /// The session id.
    pub session: String,
    /// Absolute path of the verified archive.
    pub archive: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Entries in it (directories, files, links).
    pub entries: u64,
    /// Bytes of file content in it.
    pub content_bytes: u64,
    /// The session's new status (`completed`).
    pub status: String,
    /// When the session ended.
    pub ended_at: String,
    /// When `archive gc` may remove the session directory, if `--keep-for` was given.
    pub expires_at: Option<String>,
    /// Whether the session directory was removed.
    pub removed: bool,
    /// Agents that were still active (the session was archived anyway).
    pub active_agents: Vec<String>,
    /// Entries skipped because they are neither files, directories nor links.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
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
struct Written {
    path: PathBuf,
    kind: Kind,
    size: u64,
    crc: u32,
    target: Option<PathBuf>,
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

/// Reads the archive back from the start and compares it with what was written.
fn verify(file: &File, written: &[Written]) -> std::result::Result<(), String> {
    let mut f = file.try_clone().map_err(|e| e.to_string())?;
    f.rewind().map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(GzDecoder::new(io::BufReader::with_capacity(1 << 20, f)));
    let mut n = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("entry {}: {e}", n + 1))?;
        let want = written.get(n).ok_or_else(|| format!("unexpected extra entry {}", n + 1))?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular => Kind::File,
            tar::EntryType::Symlink => Kind::Symlink,
            other => return Err(format!("{}: unexpected entry type {other:?}", path.display())),
        };
        let target = entry.link_name().map_err(|e| e.to_string())?.map(|t| t.into_owned());
        let mut crc = Crc::new();
        let mut size = 0u64;
        loop {
            let k = entry.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
            if k == 0 {
                break;
            }
            crc.update(&buf[..k]);
            size += k as u64;
        }
        let crc = if kind == Kind::File { crc.sum() } else { 0 };
        let got = Written { path, kind, size, crc, target: if kind == Kind::Symlink { target } else { None } };
        if &got != want {
            return Err(format!("entry {} differs: wrote {want:?}, read {got:?}", n + 1));
        }
        n += 1;
    }
    if n != written.len() {
        return Err(format!("{} entries read back, {} written", n, written.len()));
    }
    // Drain to the end so the gzip trailer (CRC and length of everything) is checked too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format!("gzip stream: {e}"))?;
    Ok(())
}

/// Removes a session directory: renamed out of view first (so no half-deleted directory
/// ever looks like a session), then deleted without following links.
fn remove_session_dir(base: &Base, session_id: &str) -> Result<()> {
    id::validate("session", session_id)?;
    let path = base.session_path(session_id);
    let hidden = base.path().join(format!(".{session_id}.removing-{}", std::process::id()));
    std::fs::rename(&path, &hidden).ctx("move out of view", &path)?;
    std::fs::remove_dir_all(&hidden).ctx("remove", &hidden)
}

/// One session directory removed by [`gc`].
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// The session id.
    pub session: String,
    /// Why it was removed.
    pub reason: String,
    /// Its archive, which stays.
    pub archive: String,
}

/// Removes the directories of archived sessions whose `--keep-for` expiry has passed,
/// or, with `older_than`, that ended longer ago than that. Never touches an active
/// session, a session whose archive is missing, or any archive.
pub fn gc(base: &Base, older_than: Option<Duration>, now: SystemTime) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for session_id in session::list_ids(base)? {
        let dir = match base.session(&session_id) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let s = match session::read(&dir) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("skipping session {session_id}: {e}");
                continue;
            }
        };
        if s.status != status::SESSION_COMPLETED {
            continue;
        }
        let Some(archive) = s.extra.get(ARCHIVE_FIELD).and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if !std::fs::metadata(&archive).is_ok_and(|m| m.is_file() && m.len() > 0) {
            log::warn!("keeping session {session_id}: its archive {archive} is missing");
            continue;
        }
        let expired = s
            .extra
            .get(EXPIRES_FIELD)
            .and_then(Value::as_str)
            .and_then(|t| time::parse_rfc3339(t).map(|at| (t, at)))
            .filter(|(_, at)| *at <= now)
            .map(|(t, _)| format!("expired at {t}"));
        let old = older_than.and_then(|d| {
            let ended = s.ended_at.as_deref()?;
            (time::parse_rfc3339(ended)? + d <= now)
                .then(|| format!("ended at {ended}, more than {} ago", humantime::format_duration(d)))
        });
        let Some(reason) = expired.or(old) else { continue };
        // A session being archived again holds its lock; leave it for the next gc.
        let Ok(guard) = dir.tool_lock(ToolLock::Session, Duration::ZERO) else {
            log::info!("skipping session {session_id}: it is locked");
            continue;
        };
        drop(guard);
        // The archive is all that stays: make sure it is on disk first.
        File::open(&archive).and_then(|f| f.sync_all()).ctx("fsync", Path::new(&archive))?;
        remove_session_dir(base, &session_id)?;
        removed.push(Removed { session: session_id, reason, archive });
    }
    // Leftovers of removals that were interrupted.
    if let Ok(entries) = std::fs::read_dir(base.path()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".removing-") && e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

/// One line of `archive list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The session id.
    pub session: String,
    /// `active` or `completed`; `null` when only the archive is left.
    pub status: Option<String>,
    /// Whether the session directory exists.
    pub present: bool,
    /// Seconds since the session started, if known.
    pub age_secs: Option<u64>,
    /// Bytes of file content in the session directory.
    pub size: u64,
    /// Whether a verified archive is recorded (or found at the default place).
    pub archived: bool,
    /// The archive's path.
    pub archive: Option<String>,
    /// The archive's size in bytes.
    pub archive_size: Option<u64>,
    /// When `archive gc` may remove the session directory.
    pub expires_at: Option<String>,
}

/// Every session under `base` (and every archive whose session directory is gone), by id.
pub fn list(base: &Base, now: SystemTime) -> Result<Vec<Listed>> {
    let mut out: BTreeMap<String, Listed> = BTreeMap::new();
    for session_id in session::list_ids(base)? {
        let path = base.session_path(&session_id);
        let s: Option<Session> = fsio::read_json(&path.join("session.json")).ok();
        let recorded = s.as_ref().and_then(|s| s.extra.get(ARCHIVE_FIELD)).and_then(Value::as_str).map(PathBuf::from);
        let archive = recorded.unwrap_or_else(|| base.archive_path(&session_id));
        let archive_size = std::fs::metadata(&archive).ok().filter(|m| m.is_file()).map(|m| m.len());
        let age_secs = s
            .as_ref()
            .and_then(|s| time::parse_rfc3339(&s.started_at))
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs());
        out.insert(
            session_id.clone(),
            Listed {
                session: session_id,
                status: s.as_ref().map(|s| s.status.clone()),
                present: true,
                age_secs,
                size: tree_size(&path),
                archived: archive_size.is_some(),
                archive: archive_size.map(|_| archive.display().to_string()),
                archive_size,
                expires_at: s
                    .as_ref()
                    .and_then(|s| s.extra.get(EXPIRES_FIELD))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
        );
    }
    if let Ok(entries) = std::fs::read_dir(base.path()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(session_id) = name.strip_suffix(ARCHIVE_SUFFIX) else { continue };
            if id::validate("session", session_id).is_err() || out.contains_key(session_id) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            if !meta.is_file() {
                continue;
            }
            out.insert(
                session_id.to_string(),
                Listed {
                    session: session_id.to_string(),
                    status: None,
                    present: false,
                    age_secs: None,
                    size: 0,
                    archived: true,
                    archive: Some(e.path().display().to_string()),
                    archive_size: Some(meta.len()),
                    expires_at: None,
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// What `archive extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct Extracted {
    /// The archive.
    pub archive: PathBuf,
    /// The directory it was extracted into.
    pub into: PathBuf,
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Planned {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
    Skip,
}

/// Extracts `archive` into `into`, which must be missing or an empty directory.
///
/// The whole archive is checked before anything is written: absolute paths, `..`,
/// entries that go through a link, symbolic links that resolve outside `into`, hard
/// links to anything but an earlier file of the archive, device files and duplicates
/// are refused (exit 2) and nothing is written. Files are created with `O_EXCL` and
/// `O_NOFOLLOW`, so nothing is ever written outside `into`; if writing fails midway,
/// what was written is removed again.
pub fn extract(archive: &Path, into: &Path) -> Result<Extracted> {
    let refuse =
        |why: String| Error::Usage(format!("refusing to extract {}: {why}; nothing was written", archive.display()));
    let mut file = File::open(archive).ctx("open", archive)?;
    if !file.metadata().ctx("inspect", archive)?.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    let created = match std::fs::symlink_metadata(into) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse(format!("the target {} is a symbolic link", into.display())));
        }
        Ok(m) if !m.is_dir() => return Err(refuse(format!("the target {} is not a directory", into.display()))),
        Ok(_) => {
            if std::fs::read_dir(into).ctx("list", into)?.next().is_some() {
                return Err(refuse(format!("the target {} is not empty", into.display())));
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("inspect", into, e)),
    };
    let plan = plan_extract(&mut file).map_err(refuse)?;
    let created = if created {
        false
    } else if std::fs::symlink_metadata(into).is_err() {
        std::fs::create_dir(into).ctx("create directory", into)?;
        true
    } else {
        false
    };
    file.rewind().ctx("read", archive)?;
    match write_plan(&mut file, &plan, into) {
        Ok((entries, bytes)) => {
            Ok(Extracted { archive: archive.to_path_buf(), into: into.to_path_buf(), entries, bytes })
        }
        Err(e) => {
            // Put things back: the target was empty (or missing) before.
            if let Ok(entries) = std::fs::read_dir(into) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
            if created {
                let _ = std::fs::remove_dir(into);
            }
            Err(match e {
                WriteError::Refused(why) => refuse(why),
                WriteError::Other(e) => e,
            })
        }
    }
}

/// An archive path made safe: relative, no `..`, `.` dropped. `None` for the root itself.
fn clean_path(path: &Path) -> std::result::Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry {} contains '..'", path.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {} is an absolute path", path.display()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// A symbolic link at `at` pointing to `target` stays inside the extraction directory:
/// relative, and only leading `..` (no more of them than `at` has parents), so resolving
/// it climbs through real directories only.
fn check_symlink(at: &Path, target: &Path) -> std::result::Result<(), String> {
    let escape =
        || format!("symbolic link {} -> {} points outside the target directory", at.display(), target.display());
    if target.as_os_str().is_empty() {
        return Err(format!("symbolic link {} has an empty target", at.display()));
    }
    let depth = at.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut descended = false;
    for c in target.components() {
        match c {
            Component::ParentDir if !descended => ups += 1,
            Component::ParentDir => return Err(escape()),
            Component::CurDir => {}
            Component::Normal(_) => descended = true,
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    if ups > depth { Err(escape()) } else { Ok(()) }
}

fn entries_of(file: &mut File) -> std::result::Result<tar::Archive<GzDecoder<io::BufReader<&mut File>>>, String> {
    Ok(tar::Archive::new(GzDecoder::new(io::BufReader::with_capacity(1 << 20, file))))
}

/// Pass one: reads every header, decides what each entry becomes, writes nothing.
fn plan_extract(file: &mut File) -> std::result::Result<Vec<PlanEntry>, String> {
    let mut archive = entries_of(file)?;
    let mut plan = Vec::new();
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut links: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in archive.entries().map_err(|e| format!("not a tar.gz archive ({e})"))? {
        let entry = entry.map_err(|e| format!("damaged archive ({e})"))?;
        let raw = entry.path().map_err(|e| format!("bad entry path ({e})"))?.into_owned();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        let mtime = entry.header().mtime().unwrap_or(0);
        if SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(mtime)).is_none() {
            return Err(format!("entry {} has a modification time ({mtime} s) this system cannot hold", raw.display()));
        }
        let path = clean_path(&raw)?;
        let planned = match kind {
            tar::EntryType::XGlobalHeader => Planned::Skip,
            tar::EntryType::Directory => Planned::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Planned::File,
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| format!("bad link target ({e})"))?.unwrap_or_default();
                let at = path.clone().ok_or("a symbolic link at the archive root")?;
                check_symlink(&at, &target)?;
                Planned::Symlink(target.into_owned())
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(|e| format!("bad link target ({e})"))?.unwrap_or_default();
                let clean = clean_path(&target)
                    .map_err(|_| {
                        format!(
                            "hard link {} -> {} points outside the target directory",
                            raw.display(),
                            target.display()
                        )
                    })?
                    .ok_or("a hard link to the archive root")?;
                if !files.contains(&clean) {
                    return Err(format!(
                        "hard link {} -> {} does not point to an earlier file of the archive",
                        raw.display(),
                        target.display()
                    ));
                }
                Planned::HardLink(clean)
            }
            other => {
                return Err(format!(
                    "entry {} has unsupported type {other:?} (devices, fifos and sparse files are refused)",
                    raw.display()
                ));
            }
        };
        match (&path, &planned) {
            (None, Planned::Dir | Planned::Skip) => {}
            (None, _) => return Err(format!("entry {} has no name", raw.display())),
            (Some(_), Planned::Skip) => {}
            (Some(p), planned) => {
                if !seen.insert(p.clone()) && *planned != Planned::Dir {
                    return Err(format!("entry {} appears twice", p.display()));
                }
                match planned {
                    Planned::File => {
                        files.insert(p.clone());
                    }
                    Planned::Symlink(_) | Planned::HardLink(_) => {
                        links.insert(p.clone());
                    }
                    _ => {}
                }
            }
        }
        plan.push((path, planned, mode, mtime));
    }
    // No entry may be written through a link of the archive.
    for (path, planned, _, _) in &plan {
        let Some(p) = path else { continue };
        if let Some(a) = p.ancestors().skip(1).find(|a| links.contains(*a)) {
            return Err(format!("entry {} would be written through the link {}", p.display(), a.display()));
        }
        if *planned == Planned::Dir && links.contains(p) {
            return Err(format!("entry {} is both a directory and a link", p.display()));
        }
    }
    Ok(plan)
}

/// One entry of an extraction plan: cleaned path (`None` for the root), what it becomes,
/// its mode and its modification time.
type PlanEntry = (Option<PathBuf>, Planned, u32, u64);

enum WriteError {
    Refused(String),
    Other(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Other(e)
    }
}

/// Creates the missing directories of `rel` under `into`, refusing to pass through
/// anything that is not a real directory.
fn make_dirs(into: &Path, rel: &Path) -> std::result::Result<(), WriteError> {
    let mut cur = into.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(WriteError::Refused(format!("{} is in the way of a directory", cur.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).ctx("create directory", &cur)?;
            }
            Err(e) => return Err(Error::io("inspect", &cur, e).into()),
        }
    }
    Ok(())
}

/// Pass two: writes the planned entries, checking each header again against the plan.
fn write_plan(file: &mut File, plan: &[PlanEntry], into: &Path) -> std::result::Result<(u64, u64), WriteError> {
    let mut archive = entries_of(file).map_err(WriteError::Refused)?;
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    let entries = archive.entries().map_err(|e| WriteError::Refused(format!("not a tar.gz archive ({e})")))?;
    let mut seen = 0;
    for (i, entry) in entries.enumerate() {
        seen = i + 1;
        let mut entry = entry.map_err(|e| WriteError::Refused(format!("damaged archive ({e})")))?;
        let (path, planned, mode, mtime) =
            plan.get(i).ok_or_else(|| WriteError::Refused("the archive changed while extracting".into()))?;
        let raw = entry.path().map_err(|e| WriteError::Refused(e.to_string()))?.into_owned();
        if clean_path(&raw).map_err(WriteError::Refused)? != *path {
            return Err(WriteError::Refused("the archive changed while extracting".into()));
        }
        let Some(rel) = path else { continue };
        let dest = into.join(rel);
        match planned {
            Planned::Skip => continue,
            Planned::Dir => {
                make_dirs(into, rel)?;
                dir_modes.push((dest, *mode));
            }
            Planned::File => {
                if let Some(parent) = rel.parent() {
                    make_dirs(into, parent)?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .ctx("create", &dest)?;
                bytes += io::copy(&mut entry, &mut out).ctx("write", &dest)?;
                out.set_permissions(std::fs::Permissions::from_mode(mode & 0o777)).ctx("set mode of", &dest)?;
                // Checked when planned.
                if let Some(when) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(*mtime)) {
                    out.set_modified(when).ctx("set time of", &dest)?;
                }
            }
            Planned::Symlink(target) => {
                if let Some(parent) = rel.parent() {
                    make_dirs(into, parent)?;
                }
                std::os::unix::fs::symlink(target, &dest).ctx("create link", &dest)?;
            }
            Planned::HardLink(target) => {
                if let Some(parent) = rel.parent() {
                    make_dirs(into, parent)?;
                }
                let src = into.join(target);
                if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                    return Err(WriteError::Refused(format!("hard link target {} is not a file", target.display())));
                }
                std::fs::hard_link(&src, &dest).ctx("create hard link", &dest)?;
            }
        }
        count += 1;
    }
    if seen != plan.len() {
        return Err(WriteError::Refused("the archive changed while extracting".into()));
    }
    // Directory modes last, deepest first, so a read-only directory does not stop its
    // own contents from being written.
    dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, mode) in dir_modes {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode((mode & 0o777) | 0o700))
            .ctx("set mode of", &path)?;
    }
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_must_stay_inside() {
        let ok = [("a/l", "b"), ("a/l", "../b"), ("a/b/l", "../../c/d"), ("l", "./x"), ("a/l", "x/../y/..")];
        for (at, t) in &ok[..4] {
            assert!(check_symlink(Path::new(at), Path::new(t)).is_ok(), "{at} -> {t}");
        }
        for (at, t) in [("l", "../x"), ("a/l", "../../x"), ("l", "/etc/passwd"), ("a/l", "x/../../y"), ("l", "")] {
            assert!(check_symlink(Path::new(at), Path::new(t)).is_err(), "{at} -> {t}");
        }
        // '..' after a name could climb out through another link: refused.
        assert!(check_symlink(Path::new(ok[4].0), Path::new(ok[4].1)).is_err());
    }

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path(Path::new("./a/./b")), Ok(Some(PathBuf::from("a/b"))));
        assert_eq!(clean_path(Path::new("./")), Ok(None));
        assert!(clean_path(Path::new("/etc/x")).is_err());
        assert!(clean_path(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn a_modification_time_past_the_clock_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let arch = tmp.path().join("a.tar.gz");
        let mut b =
            tar::Builder::new(GzEncoder::new(File::create(&arch).expect("create"), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_path("late.json").expect("path");
        h.set_size(2);
        h.set_mode(0o644);
        h.set_mtime(u64::MAX);
        h.set_cksum();
        b.append(&h, &b"{}"[..]).expect("append");
        b.into_inner().expect("tar").finish().expect("gzip");
        let into = tmp.path().join("into");
        let err = extract(&arch, &into).expect_err("refused");
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("late.json"), "{err}");
        assert!(!into.exists(), "nothing was written");
    }

    #[test]
    fn temporaries_are_recognized() {
        assert!(is_temporary(std::ffi::OsStr::new(".abc.tmp")));
        assert!(!is_temporary(std::ffi::OsStr::new("a.tmp")));
        assert!(!is_temporary(std::ffi::OsStr::new(".hidden")));
    }
}
