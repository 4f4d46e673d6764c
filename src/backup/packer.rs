//! The packer (stage 3 and 4 of the pipeline): deduplicates each chunk the reader hands
//! on, gives new ones a slot in the open pack and sends them to the thread pool in
//! batches to be compressed and encrypted, seals full packs for the uploader, writes the
//! metafile in walk order, and records acknowledged packs in the local index.
//!
//! Invariant 2: a chunk goes into the index only once its pack was acknowledged. Chunks
//! of this run not acknowledged yet are deduplicated through `pending`, which holds at
//! most the chunks of the packs in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;

use bytes::Bytes;

use super::budget::Budget;
use super::listing::{Listing, Written};
use super::pack::{seal_batch, OpenPack, Placed, Returned, SealedPack};
use super::reuse::Presence;
use super::upload::Ack;
use crate::cancel::Cancel;
use crate::crypto::Encryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Kind};
use crate::ids::ChunkHash;
use crate::index::{CachedFile, FileStamp, Index};

/// Full packs whose last batches are still in the pool, at most; the open pack keeps
/// filling meanwhile, so that the pool never runs dry at a pack's end.
const MAX_CLOSING: usize = 2;

/// New chunks go to the thread pool in batches of consecutive slots, closed once they
/// hold this many plaintext bytes or [`BATCH_CHUNKS`] chunks (or when the reader has
/// nothing more queued): a task per small chunk cost more in wake-ups and context
/// switches than compressing and encrypting it (a tenth of the CPU on a source tree).
const BATCH_BYTES: usize = 256 << 10;
/// See [`BATCH_BYTES`].
const BATCH_CHUNKS: usize = 64;

/// Digest-cache rows written to the index at once.
const CACHE_ROWS: usize = 4096;

/// From the reader to the packer, in walk order. Cloned for each target a run goes to
/// (a chunk's bytes are shared, not copied).
#[derive(Clone)]
pub(super) enum Msg {
    /// A chunk of the file being read.
    Chunk { hash: ChunkHash, data: Bytes },
    /// The file being read is complete; its chunks are the `Chunk`s since the last end.
    FileEnd {
        entry: Entry,
        stamp: Option<FileStamp>,
    },
    /// The file being read failed: forget its chunks.
    FileAbort,
    /// A complete entry (not a file being read).
    Entry(Entry),
}

/// What the packer needs.
pub(super) struct PackerSetup {
    pub encryptor: Encryptor,
    pub index: Index,
    pub target_id: i64,
    pub source: String,
    pub listing: Listing,
    pub pack_size: u64,
    pub budget: Arc<Budget>,
    pub cancel: Cancel,
    /// Files modified after this (ns) are cached as untrusted: they may change again
    /// within the file system's timestamp granularity, so the next run reads them.
    pub racy_after_ns: i64,
    /// Whether reused packs are still on the target.
    pub presence: Arc<Presence>,
    /// Compressed chunks shared with the run's other targets, if it has any.
    pub memo: Option<Arc<super::compress::Memo>>,
}

/// What the packer did.
pub(super) struct PackerOutput {
    pub metafile: Written,
    pub chunks: u64,
    pub chunks_new: u64,
    pub bytes_new: u64,
}

pub(super) struct Packer {
    encryptor: Encryptor,
    index: Index,
    target_id: i64,
    source: String,
    listing: Listing,
    pack_size: u64,
    budget: Arc<Budget>,
    cancel: Cancel,
    racy_after_ns: i64,
    presence: Arc<Presence>,
    memo: Option<Arc<super::compress::Memo>>,
    open: OpenPack,
    /// Chunks waiting to go to the pool with the next batch, and their bytes.
    batch: Vec<(ChunkHash, Bytes)>,
    batch_bytes: usize,
    /// Full packs waiting for their last batches, oldest first.
    closing: VecDeque<OpenPack>,
    returned_tx: Sender<Returned>,
    returned_rx: Receiver<Returned>,
    /// Chunks of this run not acknowledged yet, by hash.
    pending: HashMap<ChunkHash, Placed>,
    /// Digest-cache rows not written to the index yet.
    cache_rows: Vec<(Vec<u8>, CachedFile)>,
    /// The chunks of the file being read.
    file_chunks: Vec<Placed>,
    chunks: u64,
    chunks_new: u64,
    bytes_new: u64,
}

impl Packer {
    pub(super) fn new(s: PackerSetup) -> Result<Packer> {
        let (returned_tx, returned_rx) = std::sync::mpsc::channel();
        Ok(Packer {
            open: OpenPack::new(0, &s.encryptor)?,
            encryptor: s.encryptor,
            index: s.index,
            target_id: s.target_id,
            source: s.source,
            listing: s.listing,
            pack_size: s.pack_size,
            budget: s.budget,
            cancel: s.cancel,
            racy_after_ns: s.racy_after_ns,
            presence: s.presence,
            memo: s.memo,
            batch: Vec::new(),
            batch_bytes: 0,
            closing: VecDeque::new(),
            returned_tx,
            returned_rx,
            pending: HashMap::new(),
            cache_rows: Vec::new(),
            file_chunks: Vec::new(),
            chunks: 0,
            chunks_new: 0,
            bytes_new: 0,
        })
    }

    /// Runs until the reader hangs up, then seals the last pack, waits for every
    /// acknowledgement and ends the metafile. Its batches run on the thread pool within
    /// this call: none outlives it.
    pub(super) fn run(
        mut self,
        rx: Receiver<Vec<Msg>>,
        packs: SyncSender<SealedPack>,
        acks: Receiver<Ack>,
    ) -> Result<PackerOutput> {
        let consumed = rayon::in_place_scope(|pool| self.consume(pool, &rx, &packs, &acks));
        drop(packs); // the uploader ends once it has sent what it has
        consumed?;
        for ack in acks.iter() {
            self.acknowledged(ack)?;
        }
        self.cancel.check()?;
        self.flush_cache()?;
        Ok(PackerOutput {
            metafile: self.listing.finish()?,
            chunks: self.chunks,
            chunks_new: self.chunks_new,
            bytes_new: self.bytes_new,
        })
    }

    fn consume<'s>(
        &'s mut self,
        pool: &rayon::Scope<'s>,
        rx: &Receiver<Vec<Msg>>,
        packs: &SyncSender<SealedPack>,
        acks: &Receiver<Ack>,
    ) -> Result<()> {
        let result = self.consume_all(pool, rx, packs, acks);
        // However it ended, every batch sent to the pool comes back before this returns.
        while self.outstanding() > 0 {
            if self.wait_returned().is_err() {
                break;
            }
        }
        result
    }

    fn outstanding(&self) -> usize {
        self.open.outstanding + self.closing.iter().map(|p| p.outstanding).sum::<usize>()
    }

    fn consume_all<'s>(
        &mut self,
        pool: &rayon::Scope<'s>,
        rx: &Receiver<Vec<Msg>>,
        packs: &SyncSender<SealedPack>,
        acks: &Receiver<Ack>,
    ) -> Result<()> {
        loop {
            self.cancel.check()?;
            let batch = match rx.try_recv() {
                Ok(batch) => batch,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    // Nothing queued: the reader may be waiting for the budget, which only
                    // the pool frees, so hand it what is held back before waiting.
                    self.dispatch(pool);
                    match rx.recv() {
                        Ok(batch) => batch,
                        Err(_) => break,
                    }
                }
            };
            for msg in batch {
                while let Ok(ack) = acks.try_recv() {
                    self.acknowledged(ack)?;
                }
                while let Ok(returned) = self.returned_rx.try_recv() {
                    self.returned(returned)?;
                }
                self.seal_finished(packs)?;
                self.take(pool, msg)?;
                if self.open.plain_bytes >= self.pack_size {
                    self.close(pool)?;
                    while self.closing.len() > MAX_CLOSING {
                        self.wait_returned()?;
                        self.seal_finished(packs)?;
                    }
                }
                if self.cache_rows.len() >= CACHE_ROWS {
                    self.flush_cache()?;
                }
            }
        }
        if self.open.slots > 0 {
            self.close(pool)?;
        }
        while !self.closing.is_empty() {
            self.seal_finished(packs)?;
            if !self.closing.is_empty() {
                self.wait_returned()?;
            }
        }
        Ok(())
    }

    fn take<'s>(&mut self, pool: &rayon::Scope<'s>, msg: Msg) -> Result<()> {
        match msg {
            Msg::Chunk { hash, data } => self.chunk(pool, hash, data),
            Msg::FileAbort => {
                self.file_chunks.clear();
                Ok(())
            }
            Msg::FileEnd { entry, stamp } => {
                let chunks = std::mem::take(&mut self.file_chunks);
                if let (Some(stamp), Kind::File { hash, .. }) = (stamp, &entry.kind) {
                    let row = CachedFile {
                        stamp,
                        hash: *hash,
                        chunks: chunks.iter().map(|c| c.hash).collect(),
                        trusted: stamp.mtime_ns < self.racy_after_ns,
                    };
                    self.cache_rows.push((entry.path.clone(), row));
                }
                self.listing.file(entry, chunks)
            }
            Msg::Entry(entry) => {
                if let Kind::File { chunks, .. } = &entry.kind {
                    self.chunks += chunks.len() as u64;
                }
                self.listing.entry(entry)
            }
        }
    }

    /// Where the chunk `hash` is already, if anywhere this run may reuse.
    fn known(&mut self, hash: &ChunkHash) -> Result<Option<Placed>> {
        if let Some(p) = self.pending.get(hash) {
            return Ok(Some(*p));
        }
        match self.index.lookup_chunk(self.target_id, hash)? {
            // A pack gone from the target: forget what the index says is in it, and store
            // the chunk again.
            Some(c) if !self.presence.exists(&c.object)? => {
                self.index.forget_object(self.target_id, &c.object)?;
                Ok(None)
            }
            other => Ok(other.as_ref().map(Placed::stored)),
        }
    }

    fn chunk<'s>(&mut self, pool: &rayon::Scope<'s>, hash: ChunkHash, data: Bytes) -> Result<()> {
        self.chunks += 1;
        let placed = match self.known(&hash)? {
            Some(p) => {
                // Not new: the reader may read ahead by its size again.
                self.budget.release(data.len() as u64);
                p
            }
            None => {
                let p = self.open.add(hash, data.len() as u64);
                self.chunks_new += 1;
                self.bytes_new += data.len() as u64;
                self.batch_bytes += data.len();
                self.batch.push((hash, data));
                if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_CHUNKS {
                    self.dispatch(pool);
                }
                self.pending.insert(hash, p);
                p
            }
        };
        self.file_chunks.push(placed);
        Ok(())
    }

    /// Hands the batch of new chunks to the pool, to be compressed and encrypted into the
    /// open pack's next slots. Their bytes count against the read-ahead budget until
    /// then, so plaintext in memory stays bounded however far the pool falls behind.
    fn dispatch<'s>(&mut self, pool: &rayon::Scope<'s>) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        let (seq, number) = (self.open.seq, self.open.batches.len());
        self.open.batches.push(None);
        self.open.outstanding += 1;
        let session = self.open.session.clone();
        let budget = self.budget.clone();
        let cancel = self.cancel.clone();
        let returned = self.returned_tx.clone();
        let memo = self.memo.clone();
        pool.spawn(move |_| {
            let sealed = seal_batch(&session, batch, bytes, &budget, &cancel, memo.as_deref());
            let _ = returned.send((seq, number, sealed));
        });
    }

    /// Puts a batch the pool returned in its pack.
    fn returned(&mut self, (seq, number, sealed): Returned) -> Result<()> {
        let pack = if seq == self.open.seq {
            &mut self.open
        } else {
            let first = self.closing.front().map_or(seq, |p| p.seq);
            self.closing
                .get_mut(seq.wrapping_sub(first) as usize)
                .ok_or_else(|| Error::Internal(format!("no pack {seq}")))?
        };
        match sealed {
            Ok(batch) => pack.returned(number, batch),
            Err(e) => {
                pack.outstanding -= 1;
                Err(e)
            }
        }
    }

    /// Waits for the pool to return one batch.
    fn wait_returned(&mut self) -> Result<()> {
        let returned = self
            .returned_rx
            .recv()
            .map_err(|_| Error::Internal("the encryption pool stopped".into()))?;
        self.returned(returned)
    }

    /// The open pack is full: it waits for its last batches while a new one fills.
    fn close<'s>(&mut self, pool: &rayon::Scope<'s>) -> Result<()> {
        self.dispatch(pool);
        let next = OpenPack::new(self.open.seq + 1, &self.encryptor)?;
        let full = std::mem::replace(&mut self.open, next);
        self.closing.push_back(full);
        Ok(())
    }

    /// Seals the closed packs, oldest first, whose batches have all come back: places
    /// everything that pointed into them and hands them to the uploader.
    fn seal_finished(&mut self, packs: &SyncSender<SealedPack>) -> Result<()> {
        while self.closing.front().is_some_and(|p| p.outstanding == 0) {
            let Some(pack) = self.closing.pop_front() else {
                break;
            };
            let sealed = pack.seal(chrono::Utc::now().timestamp())?;
            for c in &sealed.chunks {
                if let Some(p) = self.pending.get_mut(&c.hash) {
                    sealed.place(p);
                }
            }
            self.file_chunks.iter_mut().for_each(|c| sealed.place(c));
            self.listing.sealed(&sealed)?;
            // The uploader gone means it failed (and says why) or the run was cancelled.
            packs.send(sealed).map_err(|_| Error::Interrupted)?;
        }
        Ok(())
    }

    fn acknowledged(&mut self, (chunks, sealed_at): Ack) -> Result<()> {
        self.index
            .record_chunks(self.target_id, &chunks, sealed_at)?;
        for c in &chunks {
            let acked = self
                .pending
                .get(&c.hash)
                .and_then(Placed::chunk_ref)
                .is_some_and(|p| p.object == c.object);
            if acked {
                self.pending.remove(&c.hash);
            }
        }
        Ok(())
    }

    fn flush_cache(&mut self) -> Result<()> {
        if !self.cache_rows.is_empty() {
            let rows = std::mem::take(&mut self.cache_rows);
            self.index
                .record_files(self.target_id, &self.source, &rows)?;
        }
        Ok(())
    }
}
