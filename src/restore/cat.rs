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
    let mut packs = PackCache::new(true);
    let what = format!("file {shown} of run {}", checked.run);
    let mut content = Content::new(store, decryptor, &mut packs, what, size, hash, &chunks);
    let written = copy(&mut content, out, progress)?;
    out.flush().map_err(|e| Error::io("standard output", e))?;
    progress.done();
    drop(content);
    Ok(CatStats {
        run: checked.run,
        bytes: written,
        requests: packs.requests(),
        bytes_fetched: packs.bytes_read(),
    })
}

/// A file's content as a reader: each chunk fetched, decrypted and checked before its
/// bytes are handed out, and at the end the whole file's size and BLAKE3 (an error
/// instead of the end if they do not match). Errors are [`Error`]s inside the
/// `io::Error` (see [`copy`]).
pub(super) struct Content<'a> {
    store: &'a Reader,
    decryptor: &'a Decryptor,
    packs: &'a mut PackCache,
    what: String,
    size: u64,
    hash: ChunkHash,
    chunks: &'a [crate::format::metafile::ChunkRef],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    whole: blake3::Hasher,
    got: u64,
}

impl<'a> Content<'a> {
    pub(super) fn new(
        store: &'a Reader,
        decryptor: &'a Decryptor,
        packs: &'a mut PackCache,
        what: String,
        size: u64,
        hash: ChunkHash,
        chunks: &'a [crate::format::metafile::ChunkRef],
    ) -> Self {
        Content {
            store,
            decryptor,
            packs,
            what,
            size,
            hash,
            chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            whole: blake3::Hasher::new(),
            got: 0,
        }
    }

    fn corrupt(&self, reason: String) -> std::io::Error {
        std::io::Error::other(Error::Corrupt {
            what: self.what.clone(),
            reason,
        })
    }
}

impl std::io::Read for Content<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.get(self.next) else {
                if self.got != self.size
                    || ChunkHash(*self.whole.finalize().as_bytes()) != self.hash
                {
                    return Err(self.corrupt(format!(
                        "its content ({} bytes) does not match its recorded size ({}) and \
                         BLAKE3",
                        self.got, self.size
                    )));
                }
                return Ok(0);
            };
            let data = self
                .packs
                .message(self.store, c, &self.chunks[self.next..])
                .map_err(|e| e.to_string())
                .and_then(|m| open_chunk(self.decryptor, c, &m).map_err(|e| e.to_string()))
                .map_err(|reason| self.corrupt(reason))?;
            self.next += 1;
            self.whole.update(&data);
            self.got = self.got.saturating_add(data.len() as u64);
            self.buf = data;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The [`Error`] an `io::Error` from [`Content`] carries, or the error of writing to
/// standard output.
pub(super) fn unwrap_io(e: std::io::Error) -> Error {
    if !e.get_ref().is_some_and(|i| i.is::<Error>()) {
        return Error::io("standard output", e);
    }
    match e.into_inner().map(|i| i.downcast::<Error>()) {
        Some(Ok(ours)) => *ours,
        Some(Err(other)) => Error::io("standard output", std::io::Error::other(other)),
        None => Error::io("standard output", std::io::Error::other("failed")),
    }
}

/// Copies `content` to `out`, counting progress; its bytes.
fn copy(content: &mut Content<'_>, out: &mut dyn Write, progress: &dyn Progress) -> Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 16];
    let mut written = 0u64;
    loop {
        let n = content.read(&mut buf).map_err(unwrap_io)?;
        if n == 0 {
            return Ok(written);
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("standard output", e))?;
        written += n as u64;
        progress.bytes(n as u64);
    }
}
