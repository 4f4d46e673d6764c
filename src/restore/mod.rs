//! `restore`: a run's metafile back into a tree.
//!
//! Every chunk is checked against the BLAKE3 the metafile records, and every file against
//! its whole-file BLAKE3 (invariant 4). A file whose data cannot be fetched or fails a check
//! is reported with its path and reason and left out (never half-written: files are
//! written to a temporary name and renamed into place), and the rest is restored.
//!
//! The metafile is encrypted to public keys, so anyone who holds a recipient's public key
//! (for instance a compromised backup host) could forge one. Restore therefore refuses
//! absolute paths and `..` components, and creates symbolic links only after every file is
//! written, so that nothing is ever written through a link the restore itself made.

mod files;

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{self, ChunkRef, Entry, Kind, Meta};
use crate::ids::{ObjectKey, RunId};
use crate::progress::Progress;
use crate::source::os;
use crate::store::{self, Store};

/// Which metafile to restore from.
#[derive(Debug, Clone)]
pub enum MetafileSource {
    /// A run on the target: the given id, or the newest of `source` from `host`.
    Run {
        /// Host whose runs to consider (`None`: any host, if only one has runs of `source`).
        host: Option<String>,
        /// Source name.
        source: String,
        /// A specific run.
        id: Option<RunId>,
    },
    /// A metafile on disk: as stored (encrypted), or already decrypted.
    File(PathBuf),
}

/// How to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Destination directory (created if missing).
    pub to: PathBuf,
    /// Restore only these paths (relative to the source root) and what is below them.
    pub paths: Vec<Vec<u8>>,
    /// Replace existing files instead of reporting them.
    pub overwrite: bool,
}

impl RestoreOptions {
    /// Restore everything into `to`.
    pub fn new(to: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            to: to.into(),
            ..Default::default()
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RestoreStats {
    /// The run restored.
    pub run: String,
    /// Regular files restored.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Directories, links, fifos and devices restored.
    pub other_entries: u64,
    /// Entries that could not be restored (see `problems`).
    pub failed: u64,
    /// Seconds.
    pub elapsed_secs: f64,
    /// Path and reason of each failure (first 1000).
    pub problems: Vec<String>,
}

/// Restores a run into `opts.to`.
pub fn restore(
    store: &Store,
    source: &MetafileSource,
    decryptor: &Decryptor,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let Fetched {
        what,
        bytes,
        plaintext_ok,
        expect,
    } = fetch_metafile(store, source)?;
    for p in &opts.paths {
        check_path(p).map_err(|r| Error::Usage(format!("path {:?}: {r}", os(p))))?;
    }
    std::fs::create_dir_all(&opts.to).map_err(|e| Error::io(&opts.to, e))?;
    let open = || -> Result<metafile::Reader<Box<dyn std::io::BufRead + Send + Sync>>> {
        let reader: Box<dyn std::io::BufRead + Send + Sync> =
            if plaintext_ok && bytes.starts_with(b"coffer-metafile ") {
                Box::new(std::io::Cursor::new(bytes.clone()))
            } else {
                let r = decryptor.reader(&what, std::io::Cursor::new(bytes.clone()))?;
                Box::new(BufReader::with_capacity(1 << 16, r))
            };
        let reader = metafile::Reader::new(reader, &what)?;
        if let Some(expect) = &expect {
            check_header(&what, reader.header(), expect)?;
        }
        Ok(reader)
    };
    // With a path filter, a selected hard link may name a file outside the selection:
    // find those first, so their data can be restored under the link's name.
    let mut borrowed = HashMap::new();
    if !opts.paths.is_empty() {
        let mut r = open()?;
        while let Some(e) = r.next_entry()? {
            if let Kind::Hardlink { target } = &e.kind {
                if selected(&opts.paths, &e.path) && !selected(&opts.paths, target) {
                    borrowed.entry(target.clone()).or_insert(e.path.clone());
                }
            }
        }
    }
    let mut reader = open()?;
    let run = reader.header().get("run").unwrap_or("?").to_string();
    progress.phase(&format!("restore {run}"), None);
    let settings = files::Settings {
        decryptor,
        progress,
        overwrite: opts.overwrite,
        is_root: nix::unistd::geteuid().is_root(),
    };
    let mut job = Job {
        store,
        opts,
        progress,
        stats: RestoreStats {
            run,
            ..Default::default()
        },
        bad_objects: HashMap::new(),
        packs: PackCache::new(!opts.paths.is_empty()),
        dirs: Vec::new(),
        links: Vec::new(),
        borrowed,
        relocated: HashMap::new(),
        settings,
        pool: None,
    };
    // Small files are decrypted and written by one worker per core while this thread
    // reads the listing and fetches packs; the scope ends when every worker is done.
    let listed = std::thread::scope(|scope| {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<files::FileJob>(QUEUED_FILES);
        let (done_tx, done) = std::sync::mpsc::channel::<files::Done>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..workers {
            let (queue, done_tx) = (queue.clone(), done_tx.clone());
            scope.spawn(move || files::worker(queue, done_tx, settings));
        }
        drop(done_tx);
        job.pool = Some(Pool {
            jobs,
            done,
            in_flight: 0,
            held: 0,
        });
        let listed = (|| {
            while let Some(entry) = reader.next_entry()? {
                job.entry(entry);
            }
            Ok::<(), Error>(())
        })();
        job.drain();
        listed
    });
    listed?;
    job.finish();
    // One flush of the whole destination file system instead of an fsync per file; the
    // restore does not report success before the data is on disk.
    let dir = std::fs::File::open(&opts.to).map_err(|e| Error::io(&opts.to, e))?;
    nix::unistd::syncfs(&dir).map_err(|e| Error::io(&opts.to, e.into()))?;
    progress.done();
    job.stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(job.stats)
}

/// A metafile's bytes, a name for messages, whether a plaintext (already decrypted)
/// metafile is acceptable, and the run it must describe when it came from the target.
struct Fetched {
    what: String,
    /// Shared, so each pass over the listing reads it without copying it.
    bytes: bytes::Bytes,
    plaintext_ok: bool,
    expect: Option<store::RunInfo>,
}

fn fetch_metafile(store: &Store, source: &MetafileSource) -> Result<Fetched> {
    match source {
        // A file the user names is trusted as given: it may be one decrypted with gpg -d.
        MetafileSource::File(path) => Ok(Fetched {
            what: format!("metafile {}", path.display()),
            bytes: std::fs::read(path).map_err(|e| Error::io(path, e))?.into(),
            plaintext_ok: true,
            expect: None,
        }),
        // From the target it must be encrypted to us, and describe the run it is named
        // after: anyone who can write to the target could plant a plaintext one.
        MetafileSource::Run { host, source, id } => {
            let run = select_run(store, host.as_deref(), source, id.as_ref())?;
            let id: RunId = run.id.parse()?;
            let path = store::run_path(&run.host, &run.source, &id, "meta");
            Ok(Fetched {
                what: format!("metafile {path}"),
                bytes: store.get(&path)?,
                plaintext_ok: false,
                expect: Some(run),
            })
        }
    }
}

/// Refuses a metafile whose header disagrees with the name it was stored under.
fn check_header(what: &str, header: &metafile::Header, expect: &store::RunInfo) -> Result<()> {
    for (key, want) in [
        ("run", &expect.id),
        ("host", &expect.host),
        ("source", &expect.source),
    ] {
        if header.get(key) != Some(want.as_str()) {
            return Err(Error::Corrupt {
                what: what.to_string(),
                reason: format!(
                    "its header says {key} {:?}, but it is stored as {key} {want:?}; it may \
                     have been planted or moved",
                    header.get(key).unwrap_or("")
                ),
            });
        }
    }
    Ok(())
}

/// The run to restore: `id` if given, else the newest of `source` (from `host`).
pub fn select_run(
    store: &Store,
    host: Option<&str>,
    source: &str,
    id: Option<&RunId>,
) -> Result<store::RunInfo> {
    let runs: Vec<store::RunInfo> = store
        .list_runs()?
        .into_iter()
        .filter(|r| r.source == source && host.is_none_or(|h| r.host == h))
        .collect();
    if let Some(id) = id {
        let mut found = runs.into_iter().filter(|r| r.id == id.as_str());
        return match (found.next(), found.next()) {
            (Some(r), None) => Ok(r),
            (Some(_), Some(_)) => Err(Error::Usage(format!(
                "run {id} of source {source:?} exists for several hosts; name one with --host"
            ))),
            _ => Err(Error::NotFound(format!(
                "no run {id} of source {source:?} on target {} (`coffer runs` lists them)",
                store.name()
            ))),
        };
    }
    let hosts: HashSet<&str> = runs.iter().map(|r| r.host.as_str()).collect();
    if hosts.len() > 1 {
        let mut hosts: Vec<&str> = hosts.into_iter().collect();
        hosts.sort();
        return Err(Error::Usage(format!(
            "source {source:?} has runs from several hosts ({}); choose one with --host",
            hosts.join(", ")
        )));
    }
    runs.into_iter().next_back().ok_or_else(|| {
        Error::NotFound(format!(
            "no run of source {source:?}{} on target {}",
            host.map(|h| format!(" from host {h:?}"))
                .unwrap_or_default(),
            store.name()
        ))
    })
}

fn selected(paths: &[Vec<u8>], path: &[u8]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            p == b"." || path == &p[..] || (path.starts_with(p) && path.get(p.len()) == Some(&b'/'))
        })
}

/// A restored path must stay inside the destination.
fn check_path(p: &[u8]) -> std::result::Result<(), &'static str> {
    if p == b"." {
        return Ok(());
    }
    if p.is_empty() || p.starts_with(b"/") {
        return Err("absolute or empty path");
    }
    if p.split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err("path has an empty, '.' or '..' component");
    }
    if p.contains(&0) {
        return Err("path contains a NUL byte");
    }
    Ok(())
}

enum Deferred {
    Hardlink {
        path: PathBuf,
        target: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: Vec<u8>,
        meta: Meta,
    },
}

struct Job<'a> {
    store: &'a Store,
    opts: &'a RestoreOptions,
    progress: &'a dyn Progress,
    stats: RestoreStats,
    bad_objects: HashMap<ObjectKey, String>,
    packs: PackCache,
    dirs: Vec<(PathBuf, Meta)>,
    links: Vec<(Vec<u8>, Deferred)>,
    /// Unselected hard-link targets whose data goes to a selected link's path.
    borrowed: HashMap<Vec<u8>, Vec<u8>>,
    /// Borrowed targets already restored: target path -> the link path holding the data.
    relocated: HashMap<Vec<u8>, Vec<u8>>,
    settings: files::Settings<'a>,
    pool: Option<Pool>,
}

/// Files waiting for a worker, at most.
const QUEUED_FILES: usize = 8;
/// Files whose stored chunks total at most this go to the workers whole; larger ones
/// are written by the restoring thread, their chunks decrypted in parallel batches.
const WORKER_FILE_BYTES: u64 = 8 << 20;
/// Bytes of fetched chunks handed to workers and not yet written, at most.
const WORKER_BYTES: u64 = 32 << 20;

struct Pool {
    jobs: SyncSender<files::FileJob>,
    done: Receiver<files::Done>,
    in_flight: usize,
    held: u64,
}

impl Job<'_> {
    fn fail(&mut self, path: &[u8], reason: impl std::fmt::Display) {
        self.stats.failed += 1;
        let msg = format!("{}: {reason}", self.opts.to.join(os(path)).display());
        self.progress.warn(&msg);
        if self.stats.problems.len() < 1000 {
            self.stats.problems.push(msg);
        }
    }

    fn entry(&mut self, mut entry: Entry) {
        if let Err(reason) = check_path(&entry.path) {
            return self.fail(&entry.path.clone(), format!("refused: {reason}"));
        }
        if !selected(&self.opts.paths, &entry.path) {
            match self.borrowed.remove(&entry.path) {
                Some(link) if matches!(entry.kind, Kind::File { .. }) => {
                    self.relocated.insert(entry.path.clone(), link.clone());
                    entry.path = link;
                }
                _ => return,
            }
        }
        if let Kind::Hardlink { target } = &mut entry.kind {
            if let Some(holder) = self.relocated.get(target.as_slice()) {
                if *holder == entry.path {
                    return; // this link's name already holds the data
                }
                *target = holder.clone();
            }
        }
        let dest = self.opts.to.join(os(&entry.path));
        if let Some(parent) = dest.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return self.fail(&entry.path, format!("cannot create parent: {e}"));
            }
        }
        let result = match &entry.kind {
            Kind::File { .. } => self.file(&entry, &dest),
            Kind::Dir => {
                let r = match std::fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => Ok(()),
                    Ok(_) => Err("exists and is not a directory".to_string()),
                    Err(_) => std::fs::create_dir(&dest).map_err(|e| e.to_string()),
                };
                if r.is_ok() {
                    self.dirs.push((dest.clone(), entry.meta.clone()));
                    self.stats.other_entries += 1;
                }
                r
            }
            Kind::Symlink { target } => {
                self.links.push((
                    entry.path.clone(),
                    Deferred::Symlink {
                        path: dest.clone(),
                        target: target.clone(),
                        meta: entry.meta.clone(),
                    },
                ));
                Ok(())
            }
            Kind::Hardlink { target } => match check_path(target) {
                Err(r) => Err(format!("refused hard link target: {r}")),
                Ok(()) => {
                    self.links.push((
                        entry.path.clone(),
                        Deferred::Hardlink {
                            path: dest.clone(),
                            target: self.opts.to.join(os(target)),
                        },
                    ));
                    Ok(())
                }
            },
            Kind::Fifo | Kind::CharDev { .. } | Kind::BlockDev { .. } => {
                self.special(&entry, &dest)
            }
        };
        if let Err(reason) = result {
            self.fail(&entry.path, reason);
        }
    }

    fn prepare(&self, dest: &Path) -> std::result::Result<(), String> {
        match std::fs::symlink_metadata(dest) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => Err("exists as a directory".into()),
            Ok(_) if self.opts.overwrite => std::fs::remove_file(dest).map_err(|e| e.to_string()),
            Ok(_) => Err("exists; pass --overwrite to replace it".into()),
        }
    }

    fn special(&mut self, entry: &Entry, dest: &Path) -> std::result::Result<(), String> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        self.prepare(dest)?;
        let mode = Mode::from_bits_truncate(entry.meta.mode & 0o777);
        let r = match entry.kind {
            Kind::Fifo => nix::unistd::mkfifo(dest, mode),
            Kind::CharDev { major, minor } => {
                mknod(dest, SFlag::S_IFCHR, mode, makedev(major, minor))
            }
            Kind::BlockDev { major, minor } => {
                mknod(dest, SFlag::S_IFBLK, mode, makedev(major, minor))
            }
            _ => unreachable!("special() is only called for fifos and devices"),
        };
        r.map_err(|e| format!("cannot create: {e}"))?;
        self.stats.other_entries += 1;
        files::apply_meta(dest, &entry.meta, false, self.settings.is_root)
    }

    fn file(&mut self, entry: &Entry, dest: &Path) -> std::result::Result<(), String> {
        let Kind::File { size, hash, chunks } = &entry.kind else {
            unreachable!("file() is only called for files")
        };
        if !self.settings.overwrite && std::fs::symlink_metadata(dest).is_ok() {
            return Err("exists; pass --overwrite to replace it".into());
        }
        let expected = files::Expected {
            size: *size,
            hash: *hash,
            meta: entry.meta.clone(),
        };
        let stored: u64 = chunks.iter().map(|c| c.length).sum();
        if stored <= WORKER_FILE_BYTES && self.pool.is_some() {
            let mut messages = Vec::with_capacity(chunks.len());
            for (i, c) in chunks.iter().enumerate() {
                // A copy, so a queued file does not keep a whole cached pack alive.
                messages.push(bytes::Bytes::copy_from_slice(&self.fetch(c, &chunks[i..])?));
            }
            self.submit(files::FileJob {
                path: entry.path.clone(),
                dest: dest.to_path_buf(),
                chunks: chunks.clone(),
                messages,
                expected,
            });
            return Ok(());
        }
        let settings = self.settings;
        files::write_file(&settings, dest, chunks, &expected, &mut |c, ahead| {
            self.fetch(c, ahead)
        })?;
        self.stats.files += 1;
        self.stats.bytes += size;
        self.progress.item(&dest.to_string_lossy());
        Ok(())
    }

    /// Hands a file to the workers, first waiting for room.
    fn submit(&mut self, job: files::FileJob) {
        let held: u64 = job.messages.iter().map(|m| m.len() as u64).sum();
        self.collect(false);
        while self
            .pool
            .as_ref()
            .is_some_and(|p| p.in_flight > 0 && p.held + held > WORKER_BYTES)
        {
            self.collect(true);
        }
        let pool = self
            .pool
            .as_mut()
            .expect("submit() is only called with a pool");
        pool.in_flight += 1;
        pool.held += held;
        if let Err(e) = pool.jobs.send(job) {
            // Every worker is gone (they only stop when the queue closes): fail the file.
            pool.in_flight -= 1;
            pool.held -= held;
            let job = e.0;
            self.fail(&job.path, "internal error: no restore worker left");
        }
    }

    /// Takes in the workers' results: those ready, or (with `block`) at least one.
    fn collect(&mut self, block: bool) {
        let mut block = block;
        loop {
            let Some(pool) = self.pool.as_mut() else {
                return;
            };
            if pool.in_flight == 0 {
                return;
            }
            let done = if block {
                pool.done.recv().ok()
            } else {
                pool.done.try_recv().ok()
            };
            let Some(done) = done else { return };
            pool.in_flight -= 1;
            pool.held -= done.held;
            block = false;
            match done.result {
                Ok(()) => {
                    self.stats.files += 1;
                    self.stats.bytes += done.bytes;
                    self.progress.item(&done.dest.to_string_lossy());
                }
                Err(reason) => self.fail(&done.path, reason),
            }
        }
    }

    /// Closes the queue and waits for every queued file.
    fn drain(&mut self) {
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.collect(true);
        }
        self.pool = None;
    }

    /// The stored message of one chunk. `ahead` is this chunk and the rest of the file,
    /// so a ranged read can cover the following chunks in the same pack too.
    fn fetch(
        &mut self,
        c: &ChunkRef,
        ahead: &[ChunkRef],
    ) -> std::result::Result<bytes::Bytes, String> {
        if let Some(reason) = self.bad_objects.get(&c.object) {
            return Err(reason.clone());
        }
        match self.packs.message(self.store, c, ahead) {
            Ok(b) => Ok(b),
            Err(e) => {
                let permanent = matches!(e, Error::NotFound(_) | Error::Corrupt { .. });
                let reason = match e {
                    Error::NotFound(_) => format!("object {} is missing from the target", c.object),
                    e => e.to_string(),
                };
                if permanent {
                    self.bad_objects.insert(c.object, reason.clone());
                }
                Err(reason)
            }
        }
    }

    /// Hard links, then symbolic links, then directory metadata (deepest first).
    fn finish(&mut self) {
        let links = std::mem::take(&mut self.links);
        let (hard, soft): (Vec<_>, Vec<_>) = links
            .into_iter()
            .partition(|(_, d)| matches!(d, Deferred::Hardlink { .. }));
        for (rel, d) in hard.into_iter().chain(soft) {
            let r = match &d {
                Deferred::Hardlink { path, target } => self.prepare(path).and_then(|_| {
                    std::fs::hard_link(target, path)
                        .map_err(|e| format!("cannot link to {}: {e}", target.display()))
                }),
                Deferred::Symlink { path, target, meta } => self.prepare(path).and_then(|_| {
                    std::os::unix::fs::symlink(os(target), path)
                        .map_err(|e| format!("cannot create symlink: {e}"))
                        .and_then(|_| files::apply_meta(path, meta, true, self.settings.is_root))
                }),
            };
            match r {
                Ok(()) => self.stats.other_entries += 1,
                Err(reason) => self.fail(&rel, reason),
            }
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (dir, meta) in dirs {
            if let Err(reason) = files::apply_meta(&dir, &meta, false, self.settings.is_root) {
                let rel = dir
                    .strip_prefix(&self.opts.to)
                    .unwrap_or(&dir)
                    .to_path_buf();
                self.fail(
                    std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()),
                    reason,
                );
            }
        }
    }
}

/// Packs held in memory for a full restore, which reads chunks in about the order they
/// were packed: each pack is then fetched once. A filtered restore, which may need a few
/// chunks of many packs, reads ranges instead: the run of following chunks of the same
/// file that lie next to each other in the pack, in one request.
struct PackCache {
    ranged: bool,
    packs: std::collections::VecDeque<(ObjectKey, bytes::Bytes)>,
    held: u64,
    /// A ranged read's bytes: (object, start offset, bytes).
    window: Option<(ObjectKey, u64, bytes::Bytes)>,
}

/// Packs larger than this are read in ranges.
const WHOLE_PACK_LIMIT: u64 = 64 << 20;
/// Memory for whole packs.
const PACK_CACHE_BYTES: u64 = 64 << 20;

impl PackCache {
    fn new(ranged: bool) -> Self {
        PackCache {
            ranged,
            packs: std::collections::VecDeque::new(),
            held: 0,
            window: None,
        }
    }

    /// The stored bytes of chunk `c` (its OpenPGP message).
    fn message(&mut self, store: &Store, c: &ChunkRef, ahead: &[ChunkRef]) -> Result<bytes::Bytes> {
        let end = c.offset + c.length;
        let truncated = || Error::Corrupt {
            what: format!("object {}", c.object),
            reason: "truncated: a chunk lies beyond its end".into(),
        };
        if let Some((_, pack)) = self.packs.iter().find(|(k, _)| *k == c.object) {
            return pack
                .get(c.offset as usize..end as usize)
                .map(|b| pack.slice_ref(b))
                .ok_or_else(truncated);
        }
        if let Some((k, start, bytes)) = &self.window {
            if *k == c.object && c.offset >= *start && end <= start + bytes.len() as u64 {
                return Ok(bytes.slice((c.offset - start) as usize..(end - start) as usize));
            }
        }
        let path = store::data_path(&c.object);
        if !self.ranged {
            if let Some(pack) = store.get_small(&path, WHOLE_PACK_LIMIT)? {
                let b = pack
                    .get(c.offset as usize..end as usize)
                    .map(|b| pack.slice_ref(b))
                    .ok_or_else(truncated)?;
                self.held += pack.len() as u64;
                self.packs.push_back((c.object, pack));
                while self.held > PACK_CACHE_BYTES && self.packs.len() > 1 {
                    let (_, old) = self.packs.pop_front().expect("not empty");
                    self.held -= old.len() as u64;
                }
                return Ok(b);
            }
        }
        // The following chunks of this file that continue this one in the same pack.
        let mut span_end = end;
        for next in ahead.iter().skip(1) {
            if next.object != c.object || next.offset != span_end || span_end - c.offset > 64 << 20
            {
                break;
            }
            span_end = next.offset + next.length;
        }
        let bytes = store.get_range(&path, c.offset..span_end)?;
        if (bytes.len() as u64) < span_end - c.offset {
            return Err(truncated());
        }
        let b = bytes.slice(..c.length as usize);
        self.window = Some((c.object, c.offset, bytes));
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert!(check_path(b"a/b").is_ok());
        assert!(check_path(b".").is_ok());
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"",
        ] {
            assert!(check_path(bad).is_err(), "{:?}", os(bad));
        }
    }

    #[test]
    fn selection() {
        let p = vec![b"etc".to_vec()];
        assert!(selected(&p, b"etc"));
        assert!(selected(&p, b"etc/x"));
        assert!(!selected(&p, b"etcx"));
        assert!(selected(&[], b"anything"));
    }
}
