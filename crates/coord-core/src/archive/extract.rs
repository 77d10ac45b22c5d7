//! Extracting an archive (`archive extract`) with a planner that refuses hostile
//! archives before anything is written: absolute or climbing paths, links whose target
//! leaves the tree, devices and other special entries, modification times past the
//! clock. Writes only below the target directory it is given.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

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
    use flate2::write::GzEncoder;

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
}
