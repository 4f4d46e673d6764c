//! `coffer cat`: one file of a run, to a writer (standard output), checked as restore
//! checks it, with nothing written to disk.

use std::io::Write;

use serde::Serialize;

use super::files::open_chunk;
use super::packs::PackCache;
use super::{fetch_and_check, MetafileSource, RestoreOptions};
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::Kind;
use crate::ids::ChunkHash;
use crate::progress::Progress;
use crate::source::os;
use crate::store::Reader;

/// What `cat` wrote.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct CatStats {
    /// The run the file came from.
    pub run: String,
    /// Bytes written (the file's size, when it checked out).
    pub bytes: u64,
    /// Requests made to the target for its data.
    pub requests: u64,
    /// Bytes fetched for its data.
    pub bytes_fetched: u64,
}

/// Writes the content of the regular file at `path` (relative to the source root) in the
/// run `source` names to `out`. Each chunk is decrypted and checked against its BLAKE3
/// before it is written, so what reaches `out` is always what was backed up, in order;
/// the whole file's BLAKE3 and size are checked at the end. A hard link is followed to
/// the file it names. Memory holds one pack's ranged read at a time, whatever the size
/// of the file or the run.
///
/// # Errors
///
/// No such run, a metafile that fails its check, a wrong key; `path` not in the run, or
/// not a regular file (a directory, a symlink: the error says what it is); a chunk that
/// is missing or damaged, or a whole file that does not match its BLAKE3
/// ([`Error::Corrupt`] naming the file; the chunks before the bad one have been written);
/// `out` failing (a closed pipe).
pub fn cat(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    path: &[u8],
    trust: crate::runs::Trust,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<CatStats> {
    super::check_path(path).map_err(|r| Error::Usage(format!("path {:?}: {r}", os(path))))?;
    let mut opts = RestoreOptions::new(".");
    opts.trust = trust;
    let (metafile, checked) = fetch_and_check(store, source, decryptor, &opts, progress)?;
    let shown = crate::text::escape(path);
    // The entry, and for a hard link the file it names (listed earlier: a second pass).
    let mut wanted = path.to_vec();
    let kind = loop {
        let mut listing = metafile.open(decryptor)?;
        let mut found = None;
        while let Some(entry) = listing.next_entry()? {
            if entry.path == wanted {
                found = Some(entry.kind);
                break;
            }
        }
        match found {
            Some(Kind::Hardlink { target }) if wanted == path => wanted = target,
            Some(kind) => break kind,
            None => {
                return Err(Error::NotFound(format!(
                    "{shown} is not in run {} (give the path relative to the source root)",
                    checked.run
                )))
            }
        }
    };
    let (size, hash, chunks) = match kind {
        Kind::File { size, hash, chunks } => (size, hash, chunks),
        Kind::Dir => {
            return Err(Error::Usage(format!(
                "{shown} is a directory in run {}: `coffer restore --to DIR {shown}` restores it",
                checked.run
            )))
        }
        Kind::Symlink { target } => {
            return Err(Error::Usage(format!(
                "{shown} is a symbolic link to {} in run {}: cat the file it points to",
                crate::text::escape(&target),
                checked.run
            )))
        }
        _ => {
            return Err(Error::Usage(format!(
                "{shown} is not a regular file in run {} (a pipe or a device)",
                checked.run
            )))
        }
    };
    progress.phase(&format!("cat {shown} from {}", checked.run), Some(size));
    let corrupt = |reason: String| Error::Corrupt {
        what: format!("file {shown} of run {}", checked.run),
        reason,
    };
    let mut packs = PackCache::new(true);
    let mut whole = blake3::Hasher::new();
    let mut written = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        let data = packs
            .message(store, c, &chunks[i..])
            .map_err(|e| corrupt(e.to_string()))
            .and_then(|message| {
                open_chunk(decryptor, c, &message).map_err(|e| corrupt(e.to_string()))
            })?;
        whole.update(&data);
        out.write_all(&data)
            .map_err(|e| Error::io("standard output", e))?;
        written = written.saturating_add(data.len() as u64);
        progress.bytes(data.len() as u64);
    }
    out.flush().map_err(|e| Error::io("standard output", e))?;
    if written != size || ChunkHash(*whole.finalize().as_bytes()) != hash {
        return Err(corrupt(format!(
            "its content ({written} bytes) does not match its recorded size ({size}) and \
             BLAKE3"
        )));
    }
    progress.done();
    Ok(CatStats {
        run: checked.run,
        bytes: written,
        requests: packs.requests(),
        bytes_fetched: packs.bytes_read(),
    })
}
