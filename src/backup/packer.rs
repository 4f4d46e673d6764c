//! The packer thread: dedup, encryption, packing, metafile writing, and recording
//! acknowledged packs in the local index.

use std::collections::{BTreeSet, HashMap};
use std::io::BufWriter;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;

use crate::crypto::{Encryptor, MessageWriter, PackSession};
use crate::error::{Error, Result};
use crate::format::metafile::{self, ChunkRef, Encoding, Entry, Header, Kind};
use crate::ids::{ChunkHash, ObjectKey};
use crate::index::{CachedFile, FileStamp, Index};
use crate::store::{self, Store};

/// Marks a chunk in a pack not sealed yet (its `offset` then holds its slot in the pack
/// and its `length` the pack's sequence number); replaced by the pack's key, offset and
/// length when the pack is sealed.
const OPEN_PACK: ObjectKey = ObjectKey([0; 32]);

/// Full packs whose last messages are still in the thread pool, at most; the open pack
/// keeps filling meanwhile, so that the pool never runs dry at a pack's end.
const MAX_CLOSING: usize = 2;

/// New chunks go to the thread pool in batches of consecutive slots, closed once they
/// hold this many plaintext bytes or [`BATCH_CHUNKS`] chunks (or when the walker has
/// nothing more queued): a task per small chunk cost more in wake-ups and context
/// switches than compressing and encrypting it (a tenth of the CPU on a source tree).
const BATCH_BYTES: usize = 256 << 10;
/// See [`BATCH_BYTES`].
const BATCH_CHUNKS: usize = 64;

/// Chunks up to this size are compressed whole to see whether it pays; larger ones are
/// first tried on a sample of this size.
const COMPRESSION_SAMPLE: usize = 64 << 10;

/// From the walking thread to the packer, in walk order.
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

/// Bounds the bytes of chunk data sent to the packer and not yet received, so that the
/// walker reads ahead while a pack is sealed, whatever the chunks' sizes (a bound on the
/// number of messages would stall on small files and allow gigabytes of large chunks).
pub(super) struct Budget {
    state: std::sync::Mutex<(u64, bool)>,
    freed: std::sync::Condvar,
    limit: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Self {
        Budget {
            state: std::sync::Mutex::new((0, false)),
            freed: std::sync::Condvar::new(),
            limit,
        }
    }

    /// Waits until `bytes` more may be in flight; `false` if the packer has stopped.
    pub(super) fn acquire(&self, bytes: u64) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while !state.1 && state.0 > 0 && state.0 + bytes > self.limit {
            state = match self.freed.wait(state) {
                Ok(s) => s,
                Err(_) => return false,
            };
        }
        state.0 += bytes;
        !state.1
    }

    fn release(&self, bytes: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(bytes);
            self.freed.notify_one();
        }
    }

    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
            self.freed.notify_all();
        }
    }
}

/// Closes the budget when the packer stops, however it stops.
struct CloseOnDrop(std::sync::Arc<Budget>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub(super) struct PackerSetup {
    pub encryptor: Encryptor,
    pub store: Store,
    pub index: Index,
    pub target_id: i64,
    pub source: String,
    pub header: Header,
    pub metafile: std::fs::File,
    pub pack_size: u64,
    pub upload_concurrency: usize,
    pub upload_rate_limit: Option<u64>,
    pub budget: std::sync::Arc<Budget>,
    /// Files modified after this (ns) are cached as untrusted: they may change again
    /// within the file system's timestamp granularity, so the next run reads them.
    pub racy_after_ns: i64,
    /// Whether reused packs are still on the target.
    pub presence: Arc<super::reuse::Presence>,
}

pub(super) struct PackerOutput {
    pub metafile: std::fs::File,
    /// BLAKE3 and size of the metafile as stored.
    pub metafile_hash: ChunkHash,
    pub metafile_bytes: u64,
    pub referenced: BTreeSet<ObjectKey>,
    pub chunks: u64,
    pub chunks_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub packs: u64,
}

struct SealedPack {
    key: ObjectKey,
    /// The pack's bytes: its chunk messages in order, uploaded without concatenating.
    parts: Vec<Bytes>,
    chunks: Vec<ChunkRef>,
    /// When it was sealed (unix seconds): before its upload began, so never later than
    /// the object's creation on the target; recorded as the chunks' `stored_at`.
    sealed_at: i64,
}

/// A batch of chunk messages, compressed and encrypted by the pool: consecutive slots of
/// one pack, laid end to end.
struct SealedBatch {
    bytes: Vec<u8>,
    /// Each message's length and encoding, in slot order.
    messages: Vec<(u64, Encoding)>,
}

/// A batch back from the thread pool: its pack's sequence number and its batch number.
type Returned = (u64, usize, Result<SealedBatch>);

/// A pack being built: its new chunks go to the thread pool in batches, to be compressed
/// and encrypted with the pack's session key into the pack's next slots.
struct Building {
    seq: u64,
    session: Arc<PackSession>,
    /// Slots (new chunks) so far.
    slots: usize,
    /// Each batch sent to the pool, once the pool has returned it.
    batches: Vec<Option<SealedBatch>>,
    /// Batches that have not come back yet.
    outstanding: usize,
    plain_bytes: u64,
    /// Its chunks, pointing at [`OPEN_PACK`] until it is sealed.
    chunks: Vec<ChunkRef>,
}

impl Building {
    fn new(seq: u64, encryptor: &Encryptor) -> Result<Building> {
        Ok(Building {
            seq,
            session: Arc::new(encryptor.session()?),
            slots: 0,
            batches: Vec::new(),
            outstanding: 0,
            plain_bytes: 0,
            chunks: Vec::new(),
        })
    }
}

/// An acknowledged pack: its chunks and when it was sealed.
type Ack = (Vec<ChunkRef>, i64);

type MetaWriter = metafile::Writer<BufWriter<MessageWriter<Hashing>>>;

/// The metafile's sink: its temporary file, hashed on the way (the object list records
/// the stored metafile's BLAKE3 and size, so a keyless reader can check it).
pub(super) struct Hashing {
    file: std::fs::File,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::Write::write(&mut self.file, buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.file)
    }
}

pub(super) struct Packer {
    setup_encryptor: Encryptor,
    store: Store,
    index: Index,
    target_id: i64,
    source: String,
    pack_size: u64,
    upload_concurrency: usize,
    upload_rate_limit: Option<u64>,
    budget: std::sync::Arc<Budget>,
    racy_after_ns: i64,
    presence: Arc<super::reuse::Presence>,
    writer: MetaWriter,
    metafile: std::fs::File,
    /// The pack new chunks go to.
    open: Building,
    /// The open pack's new chunks not yet handed to the pool, and their bytes.
    batch: Vec<Bytes>,
    batch_bytes: usize,
    /// Full packs waiting for their last messages, oldest first (sequence numbers
    /// ascending without gaps, below the open pack's).
    closing: std::collections::VecDeque<Building>,
    returned_tx: std::sync::mpsc::Sender<Returned>,
    returned_rx: Receiver<Returned>,
    /// Chunks not yet acknowledged: in a pack not sealed (object = OPEN_PACK) or in
    /// flight.
    pending: HashMap<ChunkHash, ChunkRef>,
    /// Entries waiting for packs to be sealed, in order.
    queued: std::collections::VecDeque<Entry>,
    cache_rows: Vec<(Vec<u8>, CachedFile)>,
    file_chunks: Vec<ChunkRef>,
    referenced: BTreeSet<ObjectKey>,
    out: Counters,
}

#[derive(Default)]
struct Counters {
    chunks: u64,
    chunks_new: u64,
    bytes_new: u64,
    bytes_stored: u64,
    packs: u64,
}

impl Packer {
    pub(super) fn new(s: PackerSetup) -> Result<Packer> {
        let metafile = s.metafile;
        let sink = metafile
            .try_clone()
            .map_err(|e| Error::io("metafile (temporary)", e))?;
        let enc = s.encryptor.message_writer(Hashing {
            file: sink,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        })?;
        let writer = metafile::Writer::new(BufWriter::with_capacity(1 << 16, enc), &s.header)
            .map_err(|e| Error::io("metafile (temporary)", e))?;
        let (returned_tx, returned_rx) = std::sync::mpsc::channel();
        Ok(Packer {
            open: Building::new(0, &s.encryptor)?,
            batch: Vec::new(),
            batch_bytes: 0,
            setup_encryptor: s.encryptor,
            store: s.store,
            index: s.index,
            target_id: s.target_id,
            source: s.source,
            pack_size: s.pack_size,
            upload_concurrency: s.upload_concurrency,
            upload_rate_limit: s.upload_rate_limit,
            budget: s.budget,
            racy_after_ns: s.racy_after_ns,
            presence: s.presence,
            writer,
            metafile,
            closing: std::collections::VecDeque::new(),
            returned_tx,
            returned_rx,
            pending: HashMap::new(),
            queued: std::collections::VecDeque::new(),
            cache_rows: Vec::new(),
            file_chunks: Vec::new(),
            referenced: BTreeSet::new(),
            out: Counters::default(),
        })
    }

    /// Runs until the walking thread hangs up, then flushes everything.
    pub(super) fn run(mut self, rx: Receiver<Msg>) -> Result<PackerOutput> {
        let _close = CloseOnDrop(self.budget.clone());
        let (pack_tx, pack_rx) = tokio::sync::mpsc::channel::<SealedPack>(1);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<Ack>();
        let uploader = {
            let store = self.store.object_store();
            let target = self.store.name().to_string();
            let limits = (self.upload_concurrency, self.upload_rate_limit);
            std::thread::Builder::new()
                .name("coffer-upload".into())
                .spawn(move || upload(store, target, limits, pack_rx, ack_tx))
                .map_err(|e| Error::Usage(format!("cannot start a thread: {e}")))?
        };
        let result = self.consume(&rx, &pack_tx, &ack_rx);
        drop(pack_tx);
        let uploaded = uploader
            .join()
            .map_err(|_| Error::Usage("internal error: the upload thread panicked".into()))?;
        // An upload error explains a failed send, so it takes precedence.
        let uploaded = uploaded?;
        result?;
        for ack in ack_rx.iter() {
            self.acknowledged(ack)?;
        }
        self.out.bytes_stored = uploaded.bytes;
        self.out.packs = uploaded.created;
        self.flush_cache()?;
        let (buffered, _) = self
            .writer
            .finish()
            .map_err(|e| Error::io("metafile (temporary)", e))?;
        let enc = buffered
            .into_inner()
            .map_err(|e| Error::io("metafile (temporary)", e.into_error()))?;
        let hashed = enc
            .finish()
            .map_err(|e| Error::io("metafile (temporary)", e))?;
        Ok(PackerOutput {
            metafile: self.metafile,
            metafile_hash: hashed.hasher.finalize().into(),
            metafile_bytes: hashed.bytes,
            referenced: self.referenced,
            chunks: self.out.chunks,
            chunks_new: self.out.chunks_new,
            bytes_new: self.out.bytes_new,
            bytes_stored: self.out.bytes_stored,
            packs: self.out.packs,
        })
    }

    fn consume(
        &mut self,
        rx: &Receiver<Msg>,
        pack_tx: &tokio::sync::mpsc::Sender<SealedPack>,
        ack_rx: &Receiver<Ack>,
    ) -> Result<()> {
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    // Nothing queued: the walker may be waiting for the budget, which only
                    // the pool frees, so hand it what is held back before waiting.
                    self.dispatch();
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
            };
            while let Ok(chunks) = ack_rx.try_recv() {
                self.acknowledged(chunks)?;
            }
            while let Ok(returned) = self.returned_rx.try_recv() {
                self.returned(returned)?;
            }
            self.seal_finished(pack_tx)?;
            match msg {
                Msg::Chunk { hash, data } => self.chunk(hash, data)?,
                Msg::FileAbort => self.file_chunks.clear(),
                Msg::FileEnd { mut entry, stamp } => {
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
                    if let Kind::File { chunks: c, .. } = &mut entry.kind {
                        *c = chunks;
                    }
                    self.emit(entry)?;
                }
                Msg::Entry(entry) => {
                    if let Kind::File { chunks, .. } = &entry.kind {
                        self.out.chunks += chunks.len() as u64;
                    }
                    self.emit(entry)?
                }
            }
            if self.open.plain_bytes >= self.pack_size {
                self.close()?;
                while self.closing.len() > MAX_CLOSING {
                    self.wait_returned()?;
                    self.seal_finished(pack_tx)?;
                }
            }
            if self.cache_rows.len() >= 4096 {
                self.flush_cache()?;
            }
        }
        if self.open.slots > 0 {
            self.close()?;
        }
        while !self.closing.is_empty() {
            self.seal_finished(pack_tx)?;
            if !self.closing.is_empty() {
                self.wait_returned()?;
            }
        }
        Ok(())
    }

    fn chunk(&mut self, hash: ChunkHash, data: Bytes) -> Result<()> {
        self.out.chunks += 1;
        let known = match self.pending.get(&hash) {
            Some(c) => Some(c.clone()),
            None => match self.index.lookup_chunk(self.target_id, &hash)? {
                // A pack gone from the target: forget what the index says is in it, and
                // store the chunk again.
                Some(c) if !self.presence.exists(&c.object)? => {
                    self.index.forget_object(self.target_id, &c.object)?;
                    None
                }
                other => other,
            },
        };
        let location = match known {
            Some(c) => {
                // Not new: the walker may read ahead by its size again.
                self.budget.release(data.len() as u64);
                c
            }
            None => {
                let c = ChunkRef {
                    object: OPEN_PACK,
                    offset: self.open.slots as u64,
                    length: self.open.seq,
                    size: data.len() as u64,
                    hash,
                    encoding: Encoding::Raw,
                };
                self.out.chunks_new += 1;
                self.out.bytes_new += data.len() as u64;
                self.open.plain_bytes += data.len() as u64;
                self.open.chunks.push(c.clone());
                self.open.slots += 1;
                self.batch_bytes += data.len();
                self.batch.push(data);
                if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_CHUNKS {
                    self.dispatch();
                }
                self.pending.insert(hash, c.clone());
                c
            }
        };
        self.file_chunks.push(location);
        Ok(())
    }

    /// Hands the batch of new chunks to the thread pool, to be compressed and encrypted
    /// into the open pack's next slots. Their bytes count against the read-ahead budget
    /// until then, so plaintext in memory stays bounded however far the pool falls behind.
    fn dispatch(&mut self) {
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
        let returned = self.returned_tx.clone();
        rayon::spawn(move || {
            let sealed = seal_batch(&session, batch, bytes, &budget);
            // The packer stopped if it hung up; its error is reported instead.
            let _ = returned.send((seq, number, sealed));
        });
    }

    /// Puts a batch the pool returned in its pack.
    fn returned(&mut self, (seq, number, sealed): Returned) -> Result<()> {
        let sealed = sealed?;
        let pack = if seq == self.open.seq {
            &mut self.open
        } else {
            let first = self.closing.front().map_or(seq, |b| b.seq);
            self.closing
                .get_mut((seq - first) as usize)
                .ok_or_else(|| Error::Usage(format!("internal error: no pack {seq}")))?
        };
        pack.batches[number] = Some(sealed);
        pack.outstanding -= 1;
        Ok(())
    }

    /// Waits for the pool to return one message.
    fn wait_returned(&mut self) -> Result<()> {
        let returned = self
            .returned_rx
            .recv()
            .map_err(|_| Error::Usage("internal error: the encryption pool stopped".into()))?;
        self.returned(returned)
    }

    /// The open pack is full: it waits for its last messages while a new one fills.
    fn close(&mut self) -> Result<()> {
        self.dispatch();
        let next = Building::new(self.open.seq + 1, &self.setup_encryptor)?;
        let full = std::mem::replace(&mut self.open, next);
        self.closing.push_back(full);
        Ok(())
    }

    /// Seals the closed packs, oldest first, whose messages have all come back.
    fn seal_finished(&mut self, pack_tx: &tokio::sync::mpsc::Sender<SealedPack>) -> Result<()> {
        while self.closing.front().is_some_and(|b| b.outstanding == 0) {
            if let Some(pack) = self.closing.pop_front() {
                self.seal(pack, pack_tx)?;
            }
        }
        Ok(())
    }

    /// Writes `entry` to the metafile, or queues it behind entries that wait for the
    /// open pack (the metafile keeps walk order).
    fn emit(&mut self, entry: Entry) -> Result<()> {
        if waits(&entry) || !self.queued.is_empty() {
            self.queued.push_back(entry);
            Ok(())
        } else {
            self.write(&entry)
        }
    }

    fn write(&mut self, entry: &Entry) -> Result<()> {
        if let Kind::File { chunks, .. } = &entry.kind {
            self.referenced.extend(chunks.iter().map(|c| c.object));
        }
        self.writer
            .entry(entry)
            .map_err(|e| Error::io("metafile (temporary)", e))
    }

    /// Seals a pack whose messages have all come back: names it, resolves everything
    /// that pointed into it, writes the queued entries that no longer wait and hands the
    /// pack to the uploader.
    fn seal(
        &mut self,
        pack: Building,
        pack_tx: &tokio::sync::mpsc::Sender<SealedPack>,
    ) -> Result<()> {
        let mut hasher = blake3::Hasher::new();
        let mut places = Vec::with_capacity(pack.slots);
        let mut parts = Vec::with_capacity(pack.batches.len());
        let mut offset = 0u64;
        for batch in pack.batches.into_iter().flatten() {
            for (length, encoding) in batch.messages {
                places.push((offset, length, encoding));
                offset += length;
            }
            hasher.update(&batch.bytes);
            parts.push(Bytes::from(batch.bytes));
        }
        let key = ObjectKey::from(hasher.finalize());
        let seq = pack.seq;
        let fix = |c: &mut ChunkRef| {
            if c.object == OPEN_PACK && c.length == seq {
                let (offset, length, encoding) = places[c.offset as usize];
                c.object = key;
                c.offset = offset;
                c.length = length;
                c.encoding = encoding;
            }
        };
        let mut chunks = pack.chunks;
        chunks.iter_mut().for_each(fix);
        for c in &chunks {
            if let Some(p) = self.pending.get_mut(&c.hash) {
                fix(p);
            }
        }
        self.file_chunks.iter_mut().for_each(fix);
        for entry in &mut self.queued {
            if let Kind::File { chunks, .. } = &mut entry.kind {
                chunks.iter_mut().for_each(fix);
            }
        }
        while self.queued.front().is_some_and(|e| !waits(e)) {
            if let Some(entry) = self.queued.pop_front() {
                self.write(&entry)?;
            }
        }
        pack_tx
            .blocking_send(SealedPack {
                key,
                parts,
                chunks,
                sealed_at: chrono::Utc::now().timestamp(),
            })
            .map_err(|_| Error::Store {
                target: self.store.name().to_string(),
                message: "the upload stopped".into(),
            })
    }

    fn acknowledged(&mut self, (chunks, sealed_at): Ack) -> Result<()> {
        self.index
            .record_chunks(self.target_id, &chunks, sealed_at)?;
        for c in &chunks {
            if self
                .pending
                .get(&c.hash)
                .is_some_and(|p| p.object == c.object)
            {
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

/// Compresses and encrypts a batch of chunks, one message each, end to end into one
/// buffer of exactly their size; then releases their bytes from the read-ahead budget.
fn seal_batch(
    session: &PackSession,
    batch: Vec<Bytes>,
    bytes: usize,
    budget: &Budget,
) -> Result<SealedBatch> {
    let encoded: Vec<_> = batch.iter().map(|data| encode(data)).collect();
    let size = encoded
        .iter()
        .map(|(p, _)| session.message_len(p.len()))
        .sum();
    let mut out = Vec::with_capacity(size);
    let mut messages = Vec::with_capacity(batch.len());
    let mut sealed = Ok(());
    for (payload, encoding) in &encoded {
        let start = out.len();
        sealed = session.encrypt_into(payload, &mut out);
        if sealed.is_err() {
            break;
        }
        messages.push(((out.len() - start) as u64, *encoding));
    }
    drop(encoded);
    drop(batch);
    budget.release(bytes as u64);
    sealed.map(|()| SealedBatch {
        bytes: out,
        messages,
    })
}

/// Whether `entry` points into a pack not sealed yet.
fn waits(entry: &Entry) -> bool {
    match &entry.kind {
        Kind::File { chunks, .. } => chunks.iter().any(|c| c.object == OPEN_PACK),
        _ => false,
    }
}

struct Uploaded {
    bytes: u64,
    created: u64,
}

/// Uploads sealed packs with create-only puts, at most `concurrency` at once and at most
/// `rate` bytes per second on average, and reports each acknowledged pack's chunks.
/// Stops at the first failure.
fn upload(
    store: Arc<dyn ObjectStore>,
    target: String,
    (concurrency, rate): (usize, Option<u64>),
    mut packs: tokio::sync::mpsc::Receiver<SealedPack>,
    acks: std::sync::mpsc::Sender<Ack>,
) -> Result<Uploaded> {
    let rate = rate.map(|r| Arc::new(store::RateLimit::new(r)));
    store::runtime().block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut done = Uploaded {
            bytes: 0,
            created: 0,
        };
        let mut collect = |r: std::result::Result<Result<(u64, bool)>, tokio::task::JoinError>| {
            let (bytes, created) = r.map_err(|e| Error::Store {
                target: target.clone(),
                message: format!("upload task failed: {e}"),
            })??;
            if created {
                done.bytes += bytes;
                done.created += 1;
            }
            Ok::<(), Error>(())
        };
        while let Some(pack) = packs.recv().await {
            while tasks.len() >= concurrency {
                if let Some(r) = tasks.join_next().await {
                    collect(r)?;
                }
            }
            let store = store.clone();
            let acks = acks.clone();
            let target = target.clone();
            let rate = rate.clone();
            tasks.spawn(async move {
                let path = store::data_path(&pack.key);
                let len = pack.parts.iter().map(|p| p.len() as u64).sum();
                if let Some(rate) = rate {
                    rate.acquire(len).await;
                }
                let payload = object_store::PutPayload::from_iter(pack.parts);
                let outcome = store::put_create(&*store, &path, payload)
                    .await
                    .map_err(|e| store::map_store_error(&target, &path, "create", e))?;
                let _ = acks.send((pack.chunks, pack.sealed_at));
                Ok((len, outcome == store::PutOutcome::Created))
            });
        }
        while let Some(r) = tasks.join_next().await {
            collect(r)?;
        }
        Ok(done)
    })
}

/// The chunk as it is encrypted: compressed with zstd when that saves at least a tenth,
/// else as it is.
pub(crate) fn encode(data: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Encoding) {
    use std::borrow::Cow;
    if data.len() < 256 {
        return (Cow::Borrowed(data), Encoding::Raw);
    }
    match compress_if_it_pays(data) {
        Some(c) => (Cow::Owned(c), Encoding::Zstd),
        None => (Cow::Borrowed(data), Encoding::Raw),
    }
}

/// zstd level 1 in one pass, given up as soon as it cannot save a tenth: the first
/// [`COMPRESSION_SAMPLE`] bytes are compressed and flushed first, and if they did not
/// shrink by a tenth the rest is not tried (so incompressible data costs little); then
/// the output may not grow past nine tenths of the input. Uses this thread's context: a
/// new one per chunk costs more than compressing a small chunk.
fn compress_if_it_pays(data: &[u8]) -> Option<Vec<u8>> {
    use std::cell::RefCell;
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::{ZSTD_e_end, ZSTD_e_flush};
    use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};
    thread_local! {
        static CONTEXT: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    }
    let pays = |compressed: usize, original: usize| compressed * 10 <= original * 9;
    CONTEXT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut cctx = CCtx::try_create()?;
            cctx.set_parameter(CParameter::CompressionLevel(1)).ok()?;
            *cell = Some(cctx);
        }
        let cctx = cell.as_mut()?;
        let mut out = Vec::with_capacity(data.len() * 9 / 10);
        if data.len() <= COMPRESSION_SAMPLE {
            // In one call: no staging through the stream's buffers. It fails when the
            // output does not fit in nine tenths of the input, i.e. when it does not pay.
            let written = cctx.compress2(&mut out, data).ok()?;
            return pays(written, data.len()).then_some(out);
        }
        // A previous chunk may have been given up half way.
        cctx.reset(ResetDirective::SessionOnly).ok()?;
        cctx.set_pledged_src_size(Some(data.len() as u64)).ok()?;
        let mut output = OutBuffer::around(&mut out);
        let sample = COMPRESSION_SAMPLE;
        // Compresses `input` and flushes or ends the frame; `None` once `output` is full.
        let step = |cctx: &mut CCtx, output: &mut OutBuffer<'_, Vec<u8>>, input, end| {
            let mut input = InBuffer::around(input);
            loop {
                let left = cctx.compress_stream2(output, &mut input, end).ok()?;
                if left == 0 && input.pos() == input.src.len() {
                    return Some(());
                }
                if output.pos() == output.capacity() {
                    return None; // it would not pay
                }
            }
        };
        step(cctx, &mut output, &data[..sample], ZSTD_e_flush)?;
        if !pays(output.pos(), sample) {
            return None;
        }
        step(cctx, &mut output, &data[sample..], ZSTD_e_end)?;
        let written = output.pos();
        pays(written, data.len()).then_some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data::noise as random;

    fn round_trips(data: &[u8]) -> Encoding {
        let (out, enc) = encode(data);
        match enc {
            Encoding::Zstd => {
                assert!(out.len() * 10 <= data.len() * 9, "saves a tenth");
                assert_eq!(zstd::bulk::decompress(&out, data.len()).unwrap(), data);
            }
            Encoding::Raw => assert_eq!(&out[..], data),
        }
        enc
    }

    #[test]
    fn compresses_only_when_it_pays() {
        let text = b"backup server config value ".repeat(10_000);
        assert!(text.len() > COMPRESSION_SAMPLE);
        assert_eq!(round_trips(&text), Encoding::Zstd);
        assert!(encode(&text).0.len() < text.len() / 10);
        assert_eq!(
            round_trips(&text[..1000]),
            Encoding::Zstd,
            "below the sample"
        );
        assert_eq!(round_trips(&random(200_000, 1)), Encoding::Raw);
        assert_eq!(round_trips(&random(1000, 2)), Encoding::Raw);
        assert_eq!(round_trips(b"tiny"), Encoding::Raw);

        // Incompressible at first: given up after the sample, whatever follows.
        let mut mixed = random(COMPRESSION_SAMPLE, 3);
        mixed.extend_from_slice(&text);
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        // Compressible at first but not overall: given up when the output is too long.
        let mut mixed = text[..COMPRESSION_SAMPLE].to_vec();
        mixed.extend(random(COMPRESSION_SAMPLE * 20, 4));
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        // Compressible overall although the end is not.
        let mut mixed = text.clone();
        mixed.extend(random(COMPRESSION_SAMPLE, 5));
        assert_eq!(round_trips(&mixed), Encoding::Zstd);
        // The thread's context works again after a chunk was given up half way, in one
        // call and streamed.
        let mut mixed = text[..COMPRESSION_SAMPLE].to_vec();
        mixed.extend(random(COMPRESSION_SAMPLE * 20, 6));
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        assert_eq!(round_trips(&text[..5000]), Encoding::Zstd);
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        assert_eq!(round_trips(&text), Encoding::Zstd);
        assert_eq!(round_trips(&random(COMPRESSION_SAMPLE, 7)), Encoding::Raw);
    }
}
