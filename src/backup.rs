//! `backup`: one source to one target, as one run.
//!
//! ```text
//! walk ─► read, chunk, hash ─(bounded)─► packer: dedup, pack, metafile
//!   (main thread)                          │  batches of new chunks ⇄ thread pool:
//!                                          │     compress and encrypt, on all cores
//!                                          │ sealed packs (bounded)
//!                                          ▼
//!                      uploader: create-only puts, bounded concurrency
//!                                          │ acknowledgements
//!                                          ▼
//!                      packer records acknowledged chunks in the local index
//! ```
//! Invariant 1: the metafile is stored last, after every pack it references was
//! acknowledged. Invariant 2: the index records a chunk only after its pack was
//! acknowledged; chunks waiting for acknowledgement are deduplicated through an in-memory
//! map whose size is bounded by the packs in flight. The read-ahead budget counts a new
//! chunk's plaintext until the pool has encrypted it, so it bounds plaintext in memory
//! (chunks are slices of the 4 MiB pieces files are read in, src/chunker.rs, so a few
//! pieces more at most).

mod packer;
mod reuse;

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::chunker::Chunker;
use crate::config::{Config, SourceConfig, TargetConfig};
use crate::crypto::load_recipients;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Header, Kind};
use crate::ids::{ChunkHash, RunId};
use crate::index::{CachedFile, Index};
use crate::progress::{Problem, Progress};
use crate::source::{self, IgnoreRules, Item, Names, Stat};
use crate::store::Store;

pub(crate) use packer::encode;
use packer::{Msg, Packer, PackerOutput};

/// What a run did, in the spirit of duplicity's statistics.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct BackupStats {
    /// Source name.
    pub source: String,
    /// Target name.
    pub target: String,
    /// Host name recorded in the run.
    pub host: String,
    /// The run's id (empty if the run failed).
    pub run: String,
    /// Regular files seen.
    pub files: u64,
    /// Files not seen by the last run to this target.
    pub files_new: u64,
    /// Files whose content changed since the last run.
    pub files_changed: u64,
    /// Files whose content did not change (most taken from the digest cache unread).
    pub files_unchanged: u64,
    /// Files (and other non-directories) that could not be backed up (see `problems`).
    pub files_skipped: u64,
    /// Directories whose contents could not be read (see `problems`).
    pub dirs_skipped: u64,
    /// Files that changed while they were read: stored as read (see `problems`).
    pub files_changed_while_read: u64,
    /// Directories, symlinks, hard links, fifos and devices recorded.
    pub other_entries: u64,
    /// Sum of the sizes of the files in the run.
    pub bytes_total: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes of sparse files' holes, taken as zeros without reading them.
    pub bytes_holes: u64,
    /// Chunks referenced by the run.
    pub chunks: u64,
    /// Chunks not stored before (encrypted and uploaded).
    pub chunks_new: u64,
    /// Plaintext bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes uploaded (packs, object list and metafile).
    pub bytes_stored: u64,
    /// Packs uploaded.
    pub packs_stored: u64,
    /// The run's own objects uploaded: its object list and its metafile's pieces.
    pub run_objects_stored: u64,
    /// `bytes_total / bytes_new` (how much deduplication saved); `None` when nothing is
    /// new.
    pub dedup_ratio: Option<f64>,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
    /// `bytes_read / elapsed`, in bytes per second.
    pub read_bytes_per_sec: f64,
    /// Packs the local index listed that were gone from the target (their chunks were
    /// stored again).
    pub packs_missing: u64,
    /// Entries skipped or changed while read, and warnings: path and reason (first
    /// 1000).
    pub problems: Vec<Problem>,
}

const MAX_PROBLEMS: usize = 1000;

/// Backups warn this long before a recipient certificate expires.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Chunk bytes read ahead of the packer (while it seals a pack, say), at most.
const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Messages queued for the packer, at most (entries without data count too).
const READ_AHEAD_MESSAGES: usize = 4096;

/// Entries whose digest-cache lookups share one read transaction.
const READ_BATCH: usize = 1000;

impl BackupStats {
    fn problem(&mut self, progress: &dyn Progress, problem: Problem) {
        progress.warn(&problem.message);
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        }
    }

    /// Whether everything was backed up as it is: nothing skipped, nothing changing
    /// while read, no pack found missing.
    pub fn complete(&self) -> bool {
        self.files_skipped == 0
            && self.dirs_skipped == 0
            && self.files_changed_while_read == 0
            && self.packs_missing == 0
    }
}

/// How to back up.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Forget what the local index recorded about the target first: everything is
    /// encrypted and uploaded again (chunks already there are deduplicated by name only
    /// within the run). The way to repair runs whose packs went missing from a target the
    /// host cannot read.
    pub forget_cache: bool,
}

/// Backs up `source` to `target` as one new run.
pub fn backup(
    config: &Config,
    source: &SourceConfig,
    target: &TargetConfig,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats> {
    let started = Instant::now();
    let encryptor = load_recipients(&source.recipients)?;
    let mut stats = BackupStats {
        source: source.name.clone(),
        target: target.name.clone(),
        host: config.host.clone(),
        ..Default::default()
    };
    for e in encryptor.expiring_within(EXPIRY_WARNING) {
        let days = e
            .expires
            .duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs() / 86_400);
        stats.problem(
            progress,
            Problem::general(format!(
                "warning: recipient certificate {fpr} ({}) expires on {} (in {days} days); \
                 backups to it fail after that. Extend it where its secret key is: `gpg \
                 --quick-set-expire {fpr} 2y` and `gpg --quick-set-expire {fpr} 2y '*'`, \
                 then copy the new public key here (`gpg --export --armor {fpr} > {}`)",
                crate::text::path(&e.path),
                chrono::DateTime::<chrono::Utc>::from(e.expires).format("%Y-%m-%d"),
                crate::text::path(&e.path),
                fpr = e.fingerprint,
            )),
        );
    }
    let store = Store::open(target, target.create)?;
    let keyset = encryptor.fingerprints().join(",");
    let _lock = Index::lock(&config.state_dir, |path| {
        progress.warn(&format!(
            "waiting for another coffer backup using {} to finish",
            path.display()
        ))
    })?;
    let start_time = chrono::Utc::now();
    let mut index = Index::open(&config.state_dir)?;
    let target_id = reuse::domain(
        &mut index,
        &store,
        target,
        &keyset,
        &config.host,
        opts.forget_cache,
        progress,
    )?;
    let presence = std::sync::Arc::new(reuse::Presence::new(&store, target.can_read));
    let run = next_run_id(&index, target_id, &source.name, start_time)?;
    // gc's safety rule: reuse only what gc cannot have deleted (see index.rs).
    let horizon = start_time.timestamp() - target.dedup_max_age.as_secs() as i64;
    index.set_dedup_horizon(horizon);
    let mut writer_index = Index::open(&config.state_dir)?;
    writer_index.set_dedup_horizon(horizon);
    let rules = IgnoreRules::new(&source.ignore)?;
    let walker = source::walk(&source.path, source.one_file_system, rules)?;

    let header = Header {
        fields: vec![
            ("host".into(), config.host.clone()),
            ("source".into(), source.name.clone()),
            ("run".into(), run.to_string()),
            ("root".into(), source.path.to_string_lossy().into_owned()),
            ("started".into(), start_time.to_rfc3339()),
            (
                "chunker".into(),
                format!(
                    "fastcdc-2020 {} {} {}",
                    source.chunking.min, source.chunking.avg, source.chunking.max
                ),
            ),
            ("recipients".into(), keyset),
        ],
    };
    let tmp_dir = config.state_dir.join("tmp");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&tmp_dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| Error::io(&tmp_dir, e))?;
    let metafile_tmp = tempfile::tempfile_in(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;

    let budget = std::sync::Arc::new(packer::Budget::new(READ_AHEAD_BYTES));
    let packer = Packer::new(packer::PackerSetup {
        encryptor: encryptor.clone(),
        store: store.clone(),
        index: writer_index,
        target_id,
        source: source.name.clone(),
        header,
        metafile: metafile_tmp,
        pack_size: target.pack_size,
        upload_concurrency: target.upload_concurrency,
        upload_rate_limit: target.upload_rate_limit,
        budget: budget.clone(),
        racy_after_ns: start_time.timestamp_nanos_opt().unwrap_or(i64::MAX) - 2_000_000_000,
        presence: presence.clone(),
    })?;
    let (tx, rx) = sync_channel::<Msg>(READ_AHEAD_MESSAGES);
    let packer_thread = std::thread::Builder::new()
        .name("coffer-packer".into())
        .spawn(move || packer.run(rx))
        .map_err(|e| Error::Usage(format!("cannot start a thread: {e}")))?;

    progress.phase(&format!("{} -> {}", source.name, target.name), None);
    let mut walk = Walk {
        source,
        index: &index,
        presence: &presence,
        target_id,
        tx: &tx,
        budget: &budget,
        names: Names::default(),
        hardlinks: HashMap::new(),
        progress,
        stats: &mut stats,
    };
    let walked = walk.run(walker);
    drop(tx);
    let packed = packer_thread
        .join()
        .map_err(|_| Error::Usage("internal error: the packer thread panicked".into()))?;
    progress.done();
    let gone = presence.missing();
    if let Some(first) = gone.first() {
        stats.packs_missing = gone.len() as u64;
        stats.problem(
            progress,
            Problem::general(format!(
                "warning: {} pack(s) this host's local index lists are missing from target {} \
                 ({}{}): the chunks this run needs from them were stored again, but earlier \
                 runs that reference them cannot restore those files (`coffer gc --dry-run` \
                 names them)",
                gone.len(),
                target.name,
                crate::store::data_path(first),
                if gone.len() > 1 { ", ..." } else { "" }
            )),
        );
    }
    let output: PackerOutput = match (walked, packed) {
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(out)) => out,
    };
    let commit = Commit {
        store: &store,
        index: &mut index,
        target_id,
        target,
        host: &config.host,
        source: &source.name,
        run: &run,
        start_time,
    };
    commit.finish(output, &mut stats)?;
    stats.run = run.to_string();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    stats.read_bytes_per_sec = stats.bytes_read as f64 / stats.elapsed_secs.max(1e-9);
    stats.dedup_ratio =
        (stats.bytes_new > 0).then(|| stats.bytes_total as f64 / stats.bytes_new as f64);
    Ok(stats)
}

/// The id of a new run: its start time, but always later than the last run of the
/// source this index committed, so that the newest run (which prune never deletes) is the
/// one this host last made even if the clock went back.
fn next_run_id(
    index: &Index,
    target_id: i64,
    source: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RunId> {
    let last = index
        .last_run(target_id, source)?
        .and_then(|r| r.parse::<RunId>().ok())
        .and_then(|r| r.time());
    Ok(match last {
        Some(t) if t.timestamp() >= now.timestamp() => RunId::new(t + chrono::Duration::seconds(1)),
        _ => RunId::new(now),
    })
}

/// Commits a run whose packs were all acknowledged.
struct Commit<'a> {
    store: &'a Store,
    index: &'a mut Index,
    target_id: i64,
    target: &'a TargetConfig,
    host: &'a str,
    source: &'a str,
    run: &'a RunId,
    start_time: chrono::DateTime<chrono::Utc>,
}

impl Commit<'_> {
    /// Uploads the object list, then the metafile: the run is committed by the last put.
    /// Refuses to commit a run older than `max_run_time` (gc may have deleted what it
    /// uploaded first), and records the committed run's objects as protected.
    fn finish(self, output: PackerOutput, stats: &mut BackupStats) -> Result<()> {
        stats.chunks = output.chunks;
        stats.chunks_new = output.chunks_new;
        stats.bytes_new = output.bytes_new;
        stats.bytes_stored = output.bytes_stored;
        stats.packs_stored = output.packs;
        let mut metafile = output.metafile;
        let pieces = self.store.pieces_for(output.metafile_bytes);
        stats.bytes_stored += output.metafile_bytes;
        stats.run_objects_stored = 1 + u64::from(pieces);
        let bounds = crate::format::refs::Bounds {
            dedup_max_age: self.target.dedup_max_age,
            max_run_time: self.target.max_run_time,
        };
        let name = crate::format::refs::RunName {
            run: self.run.to_string(),
            host: self.host.to_string(),
            source: self.source.to_string(),
        };
        let digest = crate::format::refs::MetafileDigest {
            hash: output.metafile_hash,
            bytes: output.metafile_bytes,
            pieces,
        };
        let mut refs = Vec::new();
        crate::format::refs::write(
            &mut refs,
            &name,
            &bounds,
            &digest,
            output.referenced.iter().copied(),
        )
        .map_err(|e| Error::io("object list", e))?;
        stats.bytes_stored += refs.len() as u64;
        // Wall-clock time: a suspended machine's monotonic clock stands still, gc's does not.
        let took = (chrono::Utc::now() - self.start_time)
            .to_std()
            .unwrap_or_default();
        if took > self.target.max_run_time {
            return Err(Error::Store {
                target: self.store.name().to_string(),
                message: format!(
                    "the run took {}, longer than max_run_time ({}): it is not committed, \
                     because gc may already have deleted what it uploaded first. Run the \
                     backup again (what it uploaded recently is reused), or raise \
                     max_run_time in [target.{}] and gc's --grace with it",
                    crate::retention::humantime(std::time::Duration::from_secs(took.as_secs())),
                    crate::retention::humantime(self.target.max_run_time),
                    self.target.name
                ),
            });
        }
        self.index.begin_commit(self.target_id, self.source)?;
        self.store.put_run(
            self.host,
            self.source,
            self.run,
            refs.into(),
            &mut metafile,
            output.metafile_bytes,
        )?;
        self.index.committed(
            self.target_id,
            self.source,
            self.run.as_str(),
            output.referenced.iter().copied(),
        )
    }
}

struct Walk<'a> {
    source: &'a SourceConfig,
    index: &'a Index,
    presence: &'a reuse::Presence,
    target_id: i64,
    tx: &'a SyncSender<Msg>,
    budget: &'a packer::Budget,
    names: Names,
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    progress: &'a dyn Progress,
    stats: &'a mut BackupStats,
}

/// The packer hung up: it failed, and its error is what the caller will report.
struct PackerGone;

impl Walk<'_> {
    fn send(&self, msg: Msg) -> std::result::Result<(), PackerGone> {
        if let Msg::Chunk { data, .. } = &msg {
            if !self.budget.acquire(data.len() as u64) {
                return Err(PackerGone);
            }
        }
        self.tx.send(msg).map_err(|_| PackerGone)
    }

    fn run(
        &mut self,
        walker: impl Iterator<Item = std::result::Result<Item, source::Skipped>>,
    ) -> Result<()> {
        let result = self.walk_all(walker);
        let ended = self.index.end_read_batch();
        result.and(ended)
    }

    fn walk_all(
        &mut self,
        walker: impl Iterator<Item = std::result::Result<Item, source::Skipped>>,
    ) -> Result<()> {
        for (n, item) in walker.enumerate() {
            if n % READ_BATCH == 0 {
                self.index.renew_read_batch()?;
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
                return Ok(()); // the packer's error is reported by the caller
            }
        }
        Ok(())
    }

    fn entry(&mut self, item: Item) -> std::result::Result<(), PackerGone> {
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
    ) -> std::result::Result<(), PackerGone> {
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
        let cached = match self
            .index
            .lookup_file(self.target_id, &self.source.name, &item.rel)
        {
            Ok(c) => c,
            Err(e) => {
                self.progress.warn(&format!("digest cache: {e}"));
                None
            }
        };
        if let Some(c) = cached.as_ref().filter(|c| c.trusted && c.stamp == stamp) {
            if let Some(chunks) = self.resolve(c) {
                self.stats.files_unchanged += 1;
                self.stats.bytes_total += stamp.size;
                if m.nlink > 1 {
                    self.hardlinks.insert(link_key, item.rel.clone());
                }
                return self.send(Msg::Entry(Entry {
                    path: item.rel,
                    kind: Kind::File {
                        size: stamp.size,
                        hash: c.hash,
                        chunks,
                    },
                    meta,
                }));
            }
        }
        match self.read(&item)? {
            Ok((size, hash, opened, after)) => {
                // What the open file says, not what the walk saw a moment before.
                let meta = self.names.meta(&opened);
                match &cached {
                    None => self.stats.files_new += 1,
                    Some(c) if c.hash == hash => self.stats.files_unchanged += 1,
                    Some(_) => self.stats.files_changed += 1,
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

    /// Every chunk of a cached file, if the index still lists them all and their packs
    /// are still on the target (as far as the backup can tell).
    fn resolve(&self, c: &CachedFile) -> Option<Vec<crate::format::metafile::ChunkRef>> {
        c.chunks
            .iter()
            .map(|h| {
                self.index
                    .lookup_chunk(self.target_id, h)
                    .ok()
                    .flatten()
                    .filter(|c| self.presence.exists(&c.object).unwrap_or(false))
            })
            .collect()
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
        PackerGone,
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
        let mut size = 0u64;
        let mut whole = blake3::Hasher::new();
        let mut hash = None;
        let reader = source::SparseReader::new(&file, opened.is_sparse());
        let mut chunker = Chunker::new(reader, self.source.chunking, opened.size);
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
        let hash = hash.unwrap_or_else(|| whole.finalize().into());
        // Holes were not read: they count as holes, not as bytes read.
        let zeros = chunker.reader().zeros;
        self.stats.bytes_read = self.stats.bytes_read.saturating_sub(zeros);
        self.stats.bytes_holes += zeros;
        Ok(self
            .stamp_after(&file)
            .map(|after| (size, hash, opened, after)))
    }

    fn send_chunk(&mut self, hash: ChunkHash, data: Bytes) -> std::result::Result<(), PackerGone> {
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

/// Opens a walked regular file for reading beneath its directory's handle: never
/// through a symbolic link, never blocking on a fifo swapped in, without updating its
/// access time where the owner allows it.
fn open_beneath(item: &Item) -> std::io::Result<std::fs::File> {
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

/// Backs up every selected source to each of its targets. One target failing does not
/// stop the others; each (source, target) pair gets its own result.
pub fn backup_all(
    config: &Config,
    sources: &[&SourceConfig],
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Vec<(String, String, Result<BackupStats>)> {
    let mut results = Vec::new();
    for source in sources {
        for target_name in &source.targets {
            let result = config
                .target(target_name)
                .and_then(|t| backup(config, source, &t, opts, progress));
            results.push((source.name.clone(), target_name.clone(), result));
        }
    }
    results
}
