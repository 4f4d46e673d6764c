//! `coffer dump`: a run, or paths of it, as a tar stream (POSIX ustar with GNU long
//! names), each file's content checked as restore checks it while it is written.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use serde::Serialize;

use super::cat::{unwrap_io, Content};
use super::ls::walk;
use super::packs::PackCache;
use super::MetafileSource;
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Kind};
use crate::progress::Progress;
use crate::store::Reader;

/// What `dump` wrote.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct DumpStats {
    /// The run dumped.
    pub run: String,
    /// Entries in the archive.
    pub entries: u64,
    /// Bytes of file content in it.
    pub bytes: u64,
}

/// Writes the entries of the run `source` names below `paths` (all of it if empty) to
/// `out` as a tar archive: names (any bytes; long ones as GNU long-name records), modes,
/// owners (ids, and names where they are UTF-8), mtimes (whole seconds), symlinks, hard
/// links, fifos and devices. A hard link whose file lies outside `paths` is written as
/// the file itself. Content goes through the same checks as `cat`; memory stays bounded.
///
/// # Errors
///
/// As [`crate::ls`] before anything is written; afterwards a chunk or file that does
/// not check out ([`Error::Corrupt`] naming the file) or `out` failing, which stop the
/// archive short (tar reports it as truncated): a damaged archive never looks whole.
pub fn dump(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    paths: &[Vec<u8>],
    trust: crate::runs::Trust,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<DumpStats> {
    let mut tar = tar::Builder::new(out);
    let mut packs = PackCache::new(true);
    let mut stats = DumpStats::default();
    let io = |e: std::io::Error| unwrap_io(e);
    let run = walk(
        store,
        source,
        decryptor,
        paths,
        true,
        trust,
        progress,
        &mut |entry, walked| {
            let Entry { path, kind, meta } = entry;
            let name = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.mode & 0o7777);
            h.set_uid(u64::from(meta.uid));
            h.set_gid(u64::from(meta.gid));
            if let Some(u) = meta
                .user
                .as_deref()
                .and_then(|u| std::str::from_utf8(u).ok())
            {
                let _ = h.set_username(u); // too long: the id stands
            }
            if let Some(g) = meta
                .group
                .as_deref()
                .and_then(|g| std::str::from_utf8(g).ok())
            {
                let _ = h.set_groupname(g);
            }
            h.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
            h.set_size(0);
            let shown = crate::text::escape(&path);
            let file = |h: &mut tar::Header,
                        tar: &mut tar::Builder<&mut dyn Write>,
                        packs: &mut PackCache,
                        size: u64,
                        hash,
                        chunks: &[crate::format::metafile::ChunkRef]|
             -> Result<u64> {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let what = format!("file {shown} of run {}", walked.run);
                let content = Content::new(store, decryptor, packs, what, size, hash, chunks);
                tar.append_data(h, name, content).map_err(io)?;
                progress.bytes(size);
                Ok(size)
            };
            match kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut h, name, std::io::empty())
                        .map_err(io)?;
                }
                Kind::File { size, hash, chunks } => {
                    stats.bytes += file(&mut h, &mut tar, &mut packs, size, hash, &chunks)?;
                }
                Kind::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut h, name, std::ffi::OsStr::from_bytes(&target))
                        .map_err(io)?;
                }
                Kind::Hardlink { target } if walked.covers(&target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut h, name, std::ffi::OsStr::from_bytes(&target))
                        .map_err(io)?;
                }
                Kind::Hardlink { target } => {
                    // Its file is not in the archive: the content under this name.
                    let mut listing = walked.metafile.open(decryptor)?;
                    let mut linked = None;
                    while let Some(e) = listing.next_entry()? {
                        if e.path == target {
                            linked = Some(e);
                            break;
                        }
                    }
                    let Some(Entry {
                        kind: Kind::File { size, hash, chunks },
                        meta,
                        ..
                    }) = linked
                    else {
                        return Err(Error::Corrupt {
                            what: format!("run {}", walked.run),
                            reason: format!("hard link {shown} names no file listed before it"),
                        });
                    };
                    h.set_mode(meta.mode & 0o7777);
                    h.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
                    stats.bytes += file(&mut h, &mut tar, &mut packs, size, hash, &chunks)?;
                }
                Kind::Fifo => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    tar.append_data(&mut h, name, std::io::empty())
                        .map_err(io)?;
                }
                Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                    let char = matches!(kind, Kind::CharDev { .. });
                    h.set_entry_type(if char {
                        tar::EntryType::Char
                    } else {
                        tar::EntryType::Block
                    });
                    let (Ok(major), Ok(minor)) = (u32::try_from(major), u32::try_from(minor))
                    else {
                        return Err(Error::Usage(format!(
                            "device {shown}: its numbers do not fit a tar header"
                        )));
                    };
                    h.set_device_major(major).map_err(io)?;
                    h.set_device_minor(minor).map_err(io)?;
                    tar.append_data(&mut h, name, std::io::empty())
                        .map_err(io)?;
                }
            }
            stats.entries += 1;
            Ok(())
        },
    )?;
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    stats.run = run;
    progress.done();
    Ok(stats)
}
