//! Verifying a freshly written archive by reading it back from the start: every
//! entry's path, type, size, link target and content checksum must match what was
//! written, and the gzip trailer's CRC must check. Reads only the archive file.

use std::fs::File;
use std::io::{self, Read, Seek};

use flate2::Crc;
use flate2::read::GzDecoder;

use super::create::{Kind, Written};

/// Reads the archive back from the start and compares it with what was written.
pub(super) fn verify(file: &File, written: &[Written]) -> std::result::Result<(), String> {
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
