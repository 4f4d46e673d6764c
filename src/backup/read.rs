//! Reading the source: walk, read and chunk, hash (stage 1 and 2 of the pipeline), on
//! the calling thread. Unchanged files (same size, mtime, ctime and inode as the digest
//! cache recorded) are not read: their chunks come from the local index, if their packs
//! may still be reused. Every other file is opened beneath its directory's handle, read
//! in pieces (holes of sparse files are not read), cut into chunks, hashed, and its
//! chunks handed to the packer, each taking from the read-ahead budget.

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;

use bytes::Bytes;

use super::budget::Budget;
use super::packer::Msg;
use super::reuse::Presence;
use super::BackupStats;
use crate::cancel::Cancel;
use crate::chunker::Chunker;
use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Kind};
use crate::ids::ChunkHash;
use crate::index::{CachedFile, Index};
use crate::progress::{Problem, Progress};
use crate::source::{self, Item, Names, Skipped, Stat};

/// Entries whose digest-cache lookups share one read transaction.
const READ_BATCH: usize = 1000;

/// Messages go to a packer in batches of this many, or of this many bytes of chunks:
/// a channel hand-off per message (three for a small file) cost more than reading it.
const SEND_BATCH: usize = 256;
const SEND_BATCH_BYTES: u64 = 1 << 20;

/// The reader's side of the pipeline.
pub(super) struct Reader<'a> {
    pub source: &'a SourceConfig,
    /// One per target (lane.rs): every message goes to each lane still running.
    pub outs: Vec<Out<'a>>,
    /// The command's flag (SIGINT, SIGTERM); each lane has a child of its own.
    pub cancel: &'a Cancel,
    pub names: Names,
    pub hardlinks: HashMap<(u64, u64), Vec<u8>>,
    pub progress: &'a dyn Progress,
    pub stats: &'a mut BackupStats,
}

/// What the reader feeds for one target: its packer's queue and read-ahead, and what
/// the local index knows of the target.
pub(super) struct Out<'a> {
    index: &'a Index,
    presence: &'a Presence,
    target_id: i64,
    tx: SyncSender<Vec<Msg>>,
    budget: &'a Budget,
    /// Messages not sent yet, and the bytes of their chunks.
    pending: Vec<Msg>,
    pending_bytes: u64,
    /// False once the lane stopped (its packer or uploader failed): it is fed no more.
    alive: bool,
    counts: FileCounts,
}

impl<'a> Out<'a> {
    pub fn new(lane: &'a super::lane::Lane<'_>, tx: SyncSender<Vec<Msg>>) -> Self {
        Out {
            index: &lane.index,
            presence: &lane.presence,
            target_id: lane.target_id,
            tx,
            budget: &lane.budget,
            pending: Vec::with_capacity(SEND_BATCH),
            pending_bytes: 0,
            alive: true,
            counts: FileCounts::default(),
        }
    }

    /// Hands `msg` to this lane (in the next batch); false if the lane is gone. A chunk
    /// takes from the lane's read-ahead budget first; before waiting for the budget, what
    /// is pending is sent, since only the packer frees it.
    fn deliver(&mut self, msg: Msg) -> bool {
        if let Msg::Chunk { data, .. } = &msg {
            let n = data.len() as u64;
            let taken = self.budget.try_acquire(n) || (self.flush() && self.budget.acquire(n));
            if !taken {
                return false;
            }
            self.pending_bytes += n;
        }
        self.pending.push(msg);
        if self.pending.len() >= SEND_BATCH || self.pending_bytes >= SEND_BATCH_BYTES {
            return self.flush();
        }
        true
    }

    /// Sends what is pending; false if the lane is gone.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(SEND_BATCH));
        self.pending_bytes = 0;
        self.tx.send(batch).is_ok()
    }
}

/// Files as one target's digest cache saw them (each target has its own).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FileCounts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
}

/// Every lane is gone (each failed, and its error is what its run reports) or the
/// command was cancelled: the reader stops.
pub(super) struct Stopped;

impl Reader<'_> {
    /// Sends `msg` to every lane still running (a copy to all but the last: chunks are
    /// shared, not copied). A lane that is gone is fed no more; the reader stops when
    /// none is left.
    fn send(&mut self, msg: Msg) -> std::result::Result<(), Stopped> {
        let last = self.outs.iter().rposition(|o| o.alive);
        let mut msg = Some(msg);
        for i in 0..self.outs.len() {
            if !self.outs[i].alive {
                continue;
            }
            let m = if Some(i) == last {
                msg.take()
            } else {
                msg.clone()
            };
            if let Some(m) = m {
                if !self.outs[i].deliver(m) {
                    self.outs[i].alive = false;
                }
            }
        }
        self.check_alive()
    }

    fn check_alive(&self) -> std::result::Result<(), Stopped> {
        if self.cancel.is_cancelled() || !self.outs.iter().any(|o| o.alive) {
            return Err(Stopped);
        }
        Ok(())
    }

    /// What each target's digest cache made of the files, in the order of the outs.
    pub fn counts(&self) -> Vec<FileCounts> {
        self.outs.iter().map(|o| o.counts).collect()
    }

    /// Sends every lane what is pending: the reader is done.
    pub fn flush(&mut self) {
        for out in self.outs.iter_mut().filter(|o| o.alive) {
            out.alive = out.flush();
        }
    }

    /// Reads the whole tree `walker` yields. Returns an error of its own (the local
    /// index failed); a stop because of another stage or a cancellation is `Ok`, as the
    /// cause is reported by whoever stopped.
    pub fn run(
        &mut self,
        walker: impl Iterator<Item = std::result::Result<Item, Skipped>>,
    ) -> Result<()> {
        let result = self.read_all(walker);
        let mut ended = Ok(());
        for out in &self.outs {
            ended = ended.and(out.index.end_read_batch());
        }
        result.and(ended)
    }

    fn read_all(
        &mut self,
        walker: impl Iterator<Item = std::result::Result<Item, Skipped>>,
    ) -> Result<()> {
        for (n, item) in walker.enumerate() {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            if n % READ_BATCH == 0 {
                for out in &self.outs {
                    out.index.renew_read_batch()?;
                }
            }
            let item = match item {
                Ok(i) => i,
                Err(s) => {
                    if s.dir {
                        self.stats.dirs_skipped += 1;
                    } else {
                        self.stats.files_skipped += 1;
                    }
                    let message = format!("skipped {}", s.error);
                    self.stats
                        .problem(self.progress, Problem::at(&s.rel, message));
                    continue;
                }
            };
            if self.entry(item).is_err() {
                return Ok(()); // whoever stopped the run reports why
            }
        }
        Ok(())
    }

    fn entry(&mut self, item: Item) -> std::result::Result<(), Stopped> {
        let m = &item.stat;
        let meta = self.names.meta(m);
        if !crate::format::metafile::record_fits(&item.rel, b"", &meta) {
            self.skip(&item, "its path is too long to record");
            return Ok(());
        }
        let kind = if m.is_file() {
            return self.file(item, meta);
        } else if m.is_dir() {
            Kind::Dir
        } else if m.is_symlink() {
            match nix::fcntl::readlinkat(&*item.parent, item.name.as_os_str())
                .map(std::path::PathBuf::from)
                .map_err(std::io::Error::from)
            {
                Ok(t)
                    if !crate::format::metafile::record_fits(
                        &item.rel,
                        std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()),
                        &meta,
                    ) =>
                {
                    self.skip(&item, "its path and target are too long to record");
                    return Ok(());
                }
                Ok(t) => Kind::Symlink {
                    target: std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec(),
                },
                Err(e) => {
                    self.skip(&item, e);
                    return Ok(());
                }
            }
        } else if m.is_fifo() {
            Kind::Fifo
        } else if m.is_char_device() || m.is_block_device() {
            let rdev = m.rdev;
            let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            if m.is_char_device() {
                Kind::CharDev { major, minor }
            } else {
                Kind::BlockDev { major, minor }
            }
        } else {
            // A socket: it cannot be restored meaningfully (tar skips them too).
            let message = format!(
                "note: {} is a socket; sockets are not backed up",
                crate::text::path(&item.abs)
            );
            self.stats
                .problem(self.progress, Problem::at(&item.rel, message));
            return Ok(());
        };
        self.stats.other_entries += 1;
        self.send(Msg::Entry(Entry {
            path: item.rel,
            kind,
            meta,
        }))
    }

    /// A non-directory entry left out.
    fn skip(&mut self, item: &Item, e: impl std::fmt::Display) {
        if item.stat.is_dir() {
            self.stats.dirs_skipped += 1;
        } else {
            self.stats.files_skipped += 1;
        }
        let message = format!("skipped {}: {e}", crate::text::path(&item.abs));
        self.stats
            .problem(self.progress, Problem::at(&item.rel, message));
    }

    fn file(
        &mut self,
        item: Item,
        meta: crate::format::metafile::Meta,
    ) -> std::result::Result<(), Stopped> {
        let m = &item.stat;
        let link_key = (m.dev, m.ino);
        if m.nlink > 1 {
            if let Some(first) = self.hardlinks.get(&link_key) {
                self.stats.other_entries += 1;
                return self.send(Msg::Entry(Entry {
                    path: item.rel,
                    kind: Kind::Hardlink {
                        target: first.clone(),
                    },
                    meta,
                }));
            }
        }
        self.stats.files += 1;
        self.progress.item(&item.abs.to_string_lossy());
        let stamp = source::stamp(m);
        // Each target's digest cache; the file is not read only if every target still
        // has all of it.
        let cached: Vec<Option<CachedFile>> = self
            .outs
            .iter()
            .map(|out| {
                let found = out
                    .index
                    .lookup_file(out.target_id, &self.source.name, &item.rel);
                found.unwrap_or_else(|e| {
                    self.progress.warn(&format!("digest cache: {e}"));
                    None
                })
            })
            .collect();
        if let Some(chunk_lists) = self.unchanged(&cached, &stamp) {
            self.stats.files_unchanged += 1;
            self.stats.bytes_total += stamp.size;
            // Gone through (not read): the progress display counts it.
            self.progress.bytes(stamp.size);
            if m.nlink > 1 {
                self.hardlinks.insert(link_key, item.rel.clone());
            }
            for (i, (chunks, c)) in chunk_lists.into_iter().zip(&cached).enumerate() {
                let (Some(chunks), Some(c)) = (chunks, c) else {
                    continue;
                };
                let out = &mut self.outs[i];
                out.counts.unchanged += 1;
                let entry = Entry {
                    path: item.rel.clone(),
                    kind: Kind::File {
                        size: stamp.size,
                        hash: c.hash,
                        chunks,
                    },
                    meta: meta.clone(),
                };
                if !out.deliver(Msg::Entry(entry)) {
                    out.alive = false;
                }
            }
            return self.check_alive();
        }
        match self.read(&item)? {
            Ok((size, hash, opened, after)) => {
                // What the open file says, not what the walk saw a moment before.
                let meta = self.names.meta(&opened);
                for (out, c) in self.outs.iter_mut().zip(&cached) {
                    match c {
                        None => out.counts.new += 1,
                        Some(c) if c.hash == hash => out.counts.unchanged += 1,
                        Some(_) => out.counts.changed += 1,
                    }
                }
                let what = match cached.iter().flatten().next() {
                    None => {
                        self.stats.files_new += 1;
                        Some("new")
                    }
                    Some(c) if c.hash == hash => {
                        self.stats.files_unchanged += 1;
                        None
                    }
                    Some(_) => {
                        self.stats.files_changed += 1;
                        Some("changed")
                    }
                };
                if let (Some(what), true) = (what, self.progress.wants_detail()) {
                    self.progress
                        .detail(&format!("{what} {}", crate::text::path(&item.abs)));
                }
                if after != stamp {
                    self.stats.files_changed_while_read += 1;
                    let message = format!(
                        "warning: {} changed while it was read; backed up as read",
                        crate::text::path(&item.abs)
                    );
                    self.stats
                        .problem(self.progress, Problem::at(&item.rel, message));
                }
                self.stats.bytes_total += size;
                if m.nlink > 1 {
                    self.hardlinks.insert(link_key, item.rel.clone());
                }
                let cache = (after == stamp).then_some(stamp);
                self.send(Msg::FileEnd {
                    entry: Entry {
                        path: item.rel,
                        kind: Kind::File {
                            size,
                            hash,
                            chunks: Vec::new(),
                        },
                        meta,
                    },
                    stamp: cache,
                })
            }
            Err(e) => {
                self.send(Msg::FileAbort)?;
                self.skip(&item, e);
                Ok(())
            }
        }
    }

    /// Each running lane's chunks of a file its digest cache records with `stamp`
    /// (`None` for lanes gone), if every running lane has them all: then the file is
    /// not read. Otherwise `None`.
    #[allow(clippy::type_complexity)]
    fn unchanged(
        &self,
        cached: &[Option<CachedFile>],
        stamp: &crate::index::FileStamp,
    ) -> Option<Vec<Option<Vec<crate::format::metafile::ChunkRef>>>> {
        let mut lists = Vec::with_capacity(self.outs.len());
        for (out, c) in self.outs.iter().zip(cached) {
            if !out.alive {
                lists.push(None);
                continue;
            }
            let c = c.as_ref().filter(|c| c.trusted && c.stamp == *stamp)?;
            lists.push(Some(resolve(out, c)?));
        }
        Some(lists)
    }

    /// Reads, chunks and hashes a file, sending its chunks to the packer. The outer
    /// result is the packer hanging up; the inner one is this file's I/O. The file is
    /// opened beneath its directory's handle without following a symbolic link, and it
    /// must be the inode the walk looked at: a file swapped in meanwhile (a link to
    /// something its owner may not read, say) is not stored under this name.
    #[allow(clippy::type_complexity)]
    fn read(
        &mut self,
        item: &Item,
    ) -> std::result::Result<
        std::result::Result<(u64, ChunkHash, Stat, crate::index::FileStamp), std::io::Error>,
        Stopped,
    > {
        let file = match open_beneath(item) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let opened = match Stat::of(&file) {
            Ok(st) if st.is_file() && st.same_file(&item.stat) => st,
            Ok(_) => {
                return Ok(Err(std::io::Error::other(
                    "was replaced by another file while it was backed up; skipped",
                )))
            }
            Err(e) => return Ok(Err(e)),
        };
        let reader = source::SparseReader::new(&file, opened.is_sparse());
        let mut chunker = Chunker::new(reader, self.source.chunking, opened.size);
        let read = self.chunk_all(&mut chunker)?;
        // Holes were not read: they count as holes, not as bytes read.
        let zeros = chunker.reader().zeros;
        self.stats.bytes_read = self.stats.bytes_read.saturating_sub(zeros);
        self.stats.bytes_holes += zeros;
        Ok(read.and_then(|(size, hash)| {
            self.stamp_after(&file)
                .map(|after| (size, hash, opened, after))
        }))
    }

    /// Cuts everything `chunker` reads into chunks, hashes them and sends them to the
    /// packer. Returns the size and the whole content's hash; the outer result is the
    /// packer hanging up, the inner one the input's I/O.
    #[allow(clippy::type_complexity)]
    fn chunk_all<R: std::io::Read>(
        &mut self,
        chunker: &mut Chunker<R>,
    ) -> std::result::Result<std::result::Result<(u64, ChunkHash), std::io::Error>, Stopped> {
        let mut size = 0u64;
        let mut whole = blake3::Hasher::new();
        let mut hash = None;
        while let Some(data) = chunker.next() {
            let data = match data {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            };
            let chunk_hash = ChunkHash::of(&data);
            if size == 0 && chunker.finished() {
                // One chunk (most files of a source tree): its hash is the file's, so
                // the file is hashed once.
                hash = Some(chunk_hash);
            } else {
                whole.update(&data);
            }
            size += data.len() as u64;
            self.send_chunk(chunk_hash, data)?;
        }
        Ok(Ok((size, hash.unwrap_or_else(|| whole.finalize().into()))))
    }

    /// Reads a stream source: the run holds its root directory and one file, `name`,
    /// with what `stream` yields. Returns an error of its own if the stream did not
    /// arrive whole (its command failed, standard input broke): the run must not be
    /// committed. A stop because of another stage is `Ok`, as in [`Reader::run`].
    pub fn run_stream(
        &mut self,
        mut stream: super::stream::Stream,
        name: &str,
        started: chrono::DateTime<chrono::Utc>,
        allow_empty: bool,
    ) -> Result<()> {
        let stat = |kind: u32, perm: u32| Stat {
            mode: kind | perm,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            size: 0,
            mtime: started.timestamp(),
            mtime_nsec: i64::from(started.timestamp_subsec_nanos()),
            ctime: 0,
            ctime_nsec: 0,
            ino: 0,
            dev: 0,
            nlink: 1,
            rdev: 0,
            blocks: 0,
        };
        let root = self.names.meta(&stat(libc_mode::DIR, 0o700));
        let meta = self.names.meta(&stat(libc_mode::FILE, 0o600));
        let what = stream.what();
        if self
            .send(Msg::Entry(Entry {
                path: b".".to_vec(),
                kind: Kind::Dir,
                meta: root,
            }))
            .is_err()
        {
            return Ok(());
        }
        self.stats.other_entries += 1;
        self.stats.files += 1;
        self.progress.item(&what);
        let cancel = self.cancel;
        let mut chunker = Chunker::new(stream.reader(cancel), self.source.chunking, u64::MAX);
        let read = match self.chunk_all(&mut chunker) {
            Ok(r) => r,
            Err(Stopped) => return Ok(()),
        };
        drop(chunker);
        let (size, hash) = match read {
            Ok(r) => r,
            Err(_) if self.cancel.is_cancelled() => return Ok(()),
            Err(e) => {
                let _ = self.send(Msg::FileAbort);
                return Err(Error::Input(format!(
                    "reading {what} failed: {e}; no run was committed"
                )));
            }
        };
        let said = stream.finish()?;
        if let Some(text) = said {
            let message = format!("note: {what} wrote to its standard error:\n{text}");
            self.stats.problem(self.progress, Problem::general(message));
        }
        if size == 0 {
            if !allow_empty {
                let _ = self.send(Msg::FileAbort);
                return Err(Error::Input(format!(
                    "{what} gave no data, and no run was committed: an empty dump is what a \
                     failed one looks like (for a pipe into --stdin, `set -o pipefail` makes \
                     the shell say whether its first command failed); --allow-empty stores \
                     it anyway"
                )));
            }
            let message = format!("warning: {what} gave no data: the run holds an empty {name}");
            self.stats.problem(self.progress, Problem::general(message));
        }
        self.stats.bytes_total += size;
        let _ = self.send(Msg::FileEnd {
            entry: Entry {
                path: name.as_bytes().to_vec(),
                kind: Kind::File {
                    size,
                    hash,
                    chunks: Vec::new(),
                },
                meta,
            },
            stamp: None,
        });
        Ok(())
    }

    fn send_chunk(&mut self, hash: ChunkHash, data: Bytes) -> std::result::Result<(), Stopped> {
        self.stats.bytes_read += data.len() as u64;
        self.progress.bytes(data.len() as u64);
        self.send(Msg::Chunk { hash, data })
    }

    /// The file's stamp after reading, to detect a change during the read.
    fn stamp_after(
        &self,
        file: &std::fs::File,
    ) -> std::result::Result<crate::index::FileStamp, std::io::Error> {
        Stat::of(file).map(|m| source::stamp(&m))
    }
}

/// Every chunk of a cached file, if `out`'s index still lists them all and their packs
/// are still on its target (as far as the backup can tell).
fn resolve(out: &Out<'_>, c: &CachedFile) -> Option<Vec<crate::format::metafile::ChunkRef>> {
    c.chunks
        .iter()
        .map(|h| {
            out.index
                .lookup_chunk(out.target_id, h)
                .ok()
                .flatten()
                .filter(|c| out.presence.exists(&c.object).unwrap_or(false))
        })
        .collect()
}

/// The file-type bits of `st_mode` a stream's entries take.
mod libc_mode {
    pub const DIR: u32 = 0o040000;
    pub const FILE: u32 = 0o100000;
}

/// Opens a walked regular file for reading beneath its directory's handle: never
/// through a symbolic link, never blocking on a fifo swapped in, without updating its
/// access time where the owner allows it.
pub(super) fn open_beneath(item: &Item) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let open = |flags| {
        nix::fcntl::openat(
            &*item.parent,
            item.name.as_os_str(),
            flags,
            nix::sys::stat::Mode::empty(),
        )
    };
    open(flags | OFlag::O_NOATIME)
        .or_else(|e| match e {
            nix::errno::Errno::EPERM => open(flags),
            e => Err(e),
        })
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
}
