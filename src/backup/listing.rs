//! The run's metafile, written as the walk goes: encrypted into an unlinked temporary
//! file in the state directory, hashed on the way (the object list records the stored
//! metafile's BLAKE3 and size, so a keyless reader can check it).
//!
//! Entries are written in walk order. A file whose chunks lie in a pack not sealed yet
//! waits (and every entry after it), until sealing places its chunks
//! ([`Listing::sealed`]); the wait is bounded by the packs in flight.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufWriter, Write};

use super::pack::{Placed, SealedPack};
use crate::crypto::{Encryptor, MessageWriter};
use crate::error::{Error, Result};
use crate::format::metafile::{self, Entry, Header, Kind};
use crate::ids::{ChunkHash, ObjectKey};

/// The metafile's sink: its temporary file, hashed on the way.
struct Hashing {
    file: std::fs::File,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn temporary(e: std::io::Error) -> Error {
    Error::io("metafile (temporary)", e)
}

/// An entry to write: final, or a file whose chunks may still wait for their pack.
enum Pending {
    Ready(Entry),
    Placing(Entry, Vec<Placed>),
}

impl Pending {
    fn waits(&self) -> bool {
        match self {
            Pending::Ready(_) => false,
            Pending::Placing(_, chunks) => chunks.iter().any(Placed::is_open),
        }
    }
}

/// The metafile being written.
pub(super) struct Listing {
    writer: metafile::Writer<BufWriter<MessageWriter<Hashing>>>,
    file: std::fs::File,
    queued: VecDeque<Pending>,
    referenced: BTreeSet<ObjectKey>,
}

/// The finished metafile.
pub(super) struct Written {
    pub file: std::fs::File,
    pub hash: ChunkHash,
    pub bytes: u64,
    /// Every pack its chunk lines name.
    pub referenced: BTreeSet<ObjectKey>,
}

impl Listing {
    /// Starts the metafile (in an unlinked temporary file in `tmp_dir`) with `header`,
    /// signed by `signer` if given.
    pub fn create(
        tmp_dir: &std::path::Path,
        encryptor: &Encryptor,
        signer: Option<&crate::crypto::SigningKey>,
        header: &Header,
    ) -> Result<Self> {
        let file = tempfile::tempfile_in(tmp_dir).map_err(|e| Error::io(tmp_dir, e))?;
        let sink = Hashing {
            file: file.try_clone().map_err(temporary)?,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        let enc = encryptor.message_writer(sink, signer)?;
        let writer = metafile::Writer::new(BufWriter::with_capacity(1 << 16, enc), header)
            .map_err(temporary)?;
        Ok(Listing {
            writer,
            file,
            queued: VecDeque::new(),
            referenced: BTreeSet::new(),
        })
    }

    /// Writes an entry whose data (if any) is final.
    pub fn entry(&mut self, entry: Entry) -> Result<()> {
        self.push(Pending::Ready(entry))
    }

    /// Writes a file just read: its chunks, some perhaps in packs not sealed yet.
    pub fn file(&mut self, entry: Entry, chunks: Vec<Placed>) -> Result<()> {
        self.push(Pending::Placing(entry, chunks))
    }

    fn push(&mut self, p: Pending) -> Result<()> {
        if p.waits() || !self.queued.is_empty() {
            self.queued.push_back(p);
            Ok(())
        } else {
            self.write(p)
        }
    }

    /// A pack was sealed: places the waiting chunks in it and writes the entries that no
    /// longer wait.
    pub fn sealed(&mut self, pack: &SealedPack) -> Result<()> {
        for p in &mut self.queued {
            if let Pending::Placing(_, chunks) = p {
                chunks.iter_mut().for_each(|c| pack.place(c));
            }
        }
        while self.queued.front().is_some_and(|p| !p.waits()) {
            if let Some(p) = self.queued.pop_front() {
                self.write(p)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, p: Pending) -> Result<()> {
        let mut entry = match p {
            Pending::Ready(e) => e,
            Pending::Placing(mut e, placed) => {
                if let Kind::File { chunks, .. } = &mut e.kind {
                    *chunks = placed
                        .iter()
                        .map(|c| {
                            c.chunk_ref().ok_or_else(|| {
                                Error::Internal("a chunk written before its pack".into())
                            })
                        })
                        .collect::<Result<_>>()?;
                }
                e
            }
        };
        if let Kind::File { chunks, .. } = &mut entry.kind {
            self.referenced.extend(chunks.iter().map(|c| c.object));
        }
        self.writer.entry(&entry).map_err(temporary)
    }

    /// Ends the metafile; every pack must have been sealed.
    pub fn finish(self) -> Result<Written> {
        if !self.queued.is_empty() {
            return Err(Error::Internal(format!(
                "{} entries still wait for a pack",
                self.queued.len()
            )));
        }
        let (buffered, _) = self.writer.finish().map_err(temporary)?;
        let enc = buffered
            .into_inner()
            .map_err(|e| temporary(e.into_error()))?;
        let hashed = enc.finish().map_err(temporary)?;
        Ok(Written {
            file: self.file,
            hash: hashed.hasher.finalize().into(),
            bytes: hashed.bytes,
            referenced: self.referenced,
        })
    }
}
