//! `backup`: one source to its targets, one run on each.
//!
//! ```text
//! read.rs     walk, read, chunk, hash          (the calling thread), once for all
//!               │ chunks and entries, in walk order, to each target's lane (lane.rs):
//!               ▼ bounded by its read-ahead budget (budget.rs) and a message count
//! packer.rs   dedup, pack, metafile            (a scoped thread per target)
//!               │ ⇄ batches of new chunks: compress.rs, pack.rs, on the thread pool
//!               │   (in a scope of the packer's: none outlives it)
//!               │ sealed packs (one queued)
//!               ▼
//! upload.rs   create-only puts                 (a scoped thread; at most
//!               │                                upload_concurrency packs in flight)
//!               │ acknowledgements
//!               ▼
//! packer.rs   acknowledged chunks into the local index
//!
//! commit.rs   object list, then metafile: the run exists   (the calling thread)
//! ```
//! Every thread is scoped to the call. Each lane has a cancellation flag (a child of the
//! command's, set on SIGINT and SIGTERM) that its stages observe; a stage that fails
//! sets it, so the lane's others stop at their next safe point and the error that
//! stopped it is the one its run reports, while the reader goes on feeding the other
//! lanes. Chunks one lane compressed are handed to the others (compress.rs, `Memo`). A cancelled run commits nothing, and leaves no temporary file: the
//! metafile is an unlinked file, and every upload started ends before the call returns.
//!
//! Invariant 1: the metafile is stored last, after every pack it references was
//! acknowledged. Invariant 2: the index records a chunk only after its pack was
//! acknowledged (packer.rs). Invariant 8: what the index may reuse is decided in
//! reuse.rs. The read-ahead budget counts a new chunk's plaintext until the pool has
//! encrypted it, so it bounds plaintext in memory (chunks are slices of the 4 MiB pieces
//! files are read in, src/chunker.rs, so a few pieces more at most).

mod budget;
mod commit;
mod compress;
mod dry;
mod lane;
mod listing;
mod pack;
mod packer;
mod read;
mod reuse;
mod stream;
mod upload;

pub use dry::{dry_run_source, DryRun};

use std::collections::HashMap;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::config::{Config, Input, SourceConfig, TargetConfig};
use crate::crypto::{load_recipients, Encryptor};
use crate::error::{Error, Result};
use crate::format::metafile::Header;
use crate::progress::{Problem, Progress};
use crate::source::{self, IgnoreRules, Names};

pub(crate) use compress::encode;

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
    /// The requests made of the target: a run costs requests in proportion to what it
    /// stores, never to what the target holds.
    pub requests: crate::store::Requests,
}

const MAX_PROBLEMS: usize = 1000;

/// Backups warn this long before a recipient certificate expires.
pub(crate) const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Chunk bytes read ahead of the packer (while it seals a pack, say), at most.
const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Batches of messages queued for a packer, at most (of up to 256 messages each).
const READ_AHEAD_BATCHES: usize = 16;

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
    /// Commit a run of a stream source (a command's output, standard input) that gave
    /// no data at all. By default such a run is refused: an empty dump is what a failed
    /// one looks like (`cat missing | coffer backup db --stdin` without pipefail).
    pub allow_empty_stream: bool,
    /// Stops the backup when set (SIGINT, say): nothing is committed.
    pub cancel: Cancel,
}

/// Backs up `source` to `target` as one new run: [`backup_targets`] with one target.
///
/// # Errors
///
/// As [`backup_targets`].
pub fn backup(
    config: &Config,
    source: &SourceConfig,
    target: &TargetConfig,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats> {
    backup_targets(config, source, std::slice::from_ref(target), opts, progress)
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("no result for the one target".into())))
}

/// Backs up `source` to each of `targets` as one new run per target, reading the
/// source once: every file is walked, read, chunked and hashed once, and each target
/// deduplicates, encrypts (with session keys of its own), uploads and commits its run
/// from the same chunks (lane.rs). A target that fails drops out and the others go on;
/// a slow one holds the reader back only once its read-ahead is used up. A command
/// source's command runs once for all of them. One result per target, in order.
///
/// # Errors
///
/// Each target's result is an error if anything stopped its run before its metafile was
/// stored: a recipient certificate that cannot be used, a target that is missing or
/// refuses a request, the local index failing, the source's root unreadable, a command
/// that failed, a run longer than `max_run_time`, or the cancellation flag
/// ([`Error::Interrupted`]). Files that cannot be read are not errors: they are counted
/// and named in the statistics.
pub fn backup_targets(
    config: &Config,
    source: &SourceConfig,
    targets: &[TargetConfig],
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Vec<Result<BackupStats>> {
    let every = |e: Error| targets.iter().map(|_| Err(e.duplicate())).collect();
    let started = Instant::now();
    let encryptor = match load_recipients(&source.recipients) {
        Ok(e) => e,
        Err(e) => return every(e),
    };
    let signing_key = config
        .signing_key
        .as_deref()
        .map(crate::crypto::SigningKey::load)
        .transpose();
    let mut signing_key = match signing_key {
        Ok(k) => k,
        Err(e) => return every(e),
    };
    let mut stats = BackupStats {
        source: source.name.clone(),
        host: config.host.clone(),
        ..Default::default()
    };
    warn_expiring(&encryptor, &mut stats, progress);
    let keyset = encryptor.fingerprints().join(",");
    let lock = crate::state::StateLock::take(&config.state_dir, |path| {
        progress.warn(&format!(
            "waiting for another coffer backup using {} to finish",
            crate::text::path(path)
        ))
    });
    let _lock = match lock {
        Ok(l) => l,
        Err(e) => return every(e),
    };
    let tmp_dir = config.state_dir.join("tmp");
    if let Err(e) = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&tmp_dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
    {
        return every(Error::io(&tmp_dir, e));
    }
    let shared = lane::Shared {
        config,
        source,
        opts,
        progress,
        encryptor: &encryptor,
        keyset: &keyset,
        start_time: chrono::Utc::now(),
        tmp_dir: &tmp_dir,
        memo: (targets.len() > 1)
            .then(|| std::sync::Arc::new(compress::Memo::new(targets.len() - 1))),
    };
    let mut results: Vec<Option<Result<BackupStats>>> = targets.iter().map(|_| None).collect();
    let mut lanes = Vec::new();
    let mut packers = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        match lane::Lane::open(&shared, target, signing_key.as_ref()) {
            Ok((lane, packer)) => {
                lanes.push((i, lane));
                packers.push(packer);
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    // The source is opened once everything it could fail on is ready (a command starts
    // here), and only if a target is left.
    let feed = match lanes.is_empty() {
        true => None,
        false => Some(Feed::open(source)),
    };
    match feed {
        None => {}
        Some(Err(e)) => {
            for (i, _) in &lanes {
                results[*i] = Some(Err(e.duplicate()));
            }
        }
        Some(Ok(feed)) => {
            let names: Vec<&str> = lanes.iter().map(|(_, l)| l.target.name.as_str()).collect();
            let phase = format!("{} -> {}", source.name, names.join(", "));
            // The last run's size is the estimate of this one's (none before a first).
            let estimate = lanes
                .first()
                .and_then(|(_, l)| l.index.source_bytes(l.target_id, &source.name).ok())
                .filter(|&b| b > 0);
            progress.phase(&phase, estimate);
            let (read, stages) = run_lanes(&shared, &lanes, packers, feed, &mut stats);
            // Read; what is left is the last uploads and the commit of each target.
            progress.phase(&format!("{phase}: last uploads, then the commit"), None);
            for (n, ((i, lane), (packed, uploaded))) in lanes.into_iter().zip(stages).enumerate() {
                let mut lane_stats = stats.clone();
                if let Ok(counts) = &read {
                    lane_stats.files_new = counts[n].new;
                    lane_stats.files_changed = counts[n].changed;
                    lane_stats.files_unchanged = counts[n].unchanged;
                }
                let stages = lane::Stages {
                    read: read.as_ref().map(|_| ()).map_err(Error::duplicate),
                    packed,
                    uploaded,
                };
                let mut r = lane.finish(&shared, signing_key.as_mut(), stages, lane_stats);
                if let Ok(st) = &mut r {
                    st.elapsed_secs = started.elapsed().as_secs_f64();
                    st.read_bytes_per_sec = st.bytes_read as f64 / st.elapsed_secs.max(1e-9);
                    st.dedup_ratio =
                        (st.bytes_new > 0).then(|| st.bytes_total as f64 / st.bytes_new as f64);
                }
                results[i] = Some(r);
            }
            progress.done();
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a target without a result".into()))))
        .collect()
}

/// What the reader reads: a walked tree, or a stream with the name it is stored under.
enum Feed {
    Tree(source::Walker),
    Stream(stream::Stream, String),
}

impl Feed {
    fn open(source: &SourceConfig) -> Result<Feed> {
        match &source.input {
            Input::Tree(path) => {
                let rules = IgnoreRules::new(&source.ignore)?;
                Ok(Feed::Tree(source::walk(
                    path,
                    source.one_file_system,
                    rules,
                )?))
            }
            input => {
                let name = input
                    .stream_name()
                    .ok_or_else(|| Error::Internal("a stream without a name".into()))?;
                Ok(Feed::Stream(stream::Stream::open(input)?, name.to_string()))
            }
        }
    }
}

/// How each lane's packer and uploader ended.
type LaneStages = Vec<(Result<packer::PackerOutput>, Result<upload::Uploaded>)>;

/// Runs the reader on the calling thread, feeding every lane's packer, each with its
/// uploader, on scoped threads. Returns the reader's outcome (with what it counted for
/// each lane) and each lane's stages, in the order of `lanes`.
fn run_lanes(
    shared: &lane::Shared<'_>,
    lanes: &[(usize, lane::Lane<'_>)],
    packers: Vec<packer::Packer>,
    feed: Feed,
    stats: &mut BackupStats,
) -> (Result<Vec<read::FileCounts>>, LaneStages) {
    std::thread::scope(|scope| {
        let mut outs = Vec::with_capacity(lanes.len());
        let mut handles = Vec::with_capacity(lanes.len());
        for ((_, lane), packer) in lanes.iter().zip(packers) {
            let (tx, rx) = sync_channel::<Vec<packer::Msg>>(READ_AHEAD_BATCHES);
            let (pack_tx, pack_rx) = sync_channel(1);
            let (ack_tx, ack_rx) = std::sync::mpsc::channel();
            let cancel = &lane.cancel;
            let packed = scope.spawn(move || stopping(cancel, packer.run(rx, pack_tx, ack_rx)));
            let (creator, concurrency) = (&lane.creator, lane.target.upload_concurrency);
            let uploaded = scope.spawn(move || {
                let r = upload::upload(creator, concurrency, pack_rx, ack_tx, cancel);
                stopping(cancel, r)
            });
            handles.push((packed, uploaded));
            outs.push(read::Out::new(lane, tx));
        }
        let mut reader = read::Reader {
            source: shared.source,
            outs,
            cancel: &shared.opts.cancel,
            names: Names::default(),
            hardlinks: HashMap::new(),
            progress: shared.progress,
            stats,
        };
        let read = match feed {
            Feed::Tree(walker) => reader.run(walker),
            Feed::Stream(stream, name) => reader.run_stream(
                stream,
                &name,
                shared.start_time,
                shared.opts.allow_empty_stream,
            ),
        };
        // A failure of the reader's own (the local index, a command) stops every lane.
        if read.is_err() {
            for (_, lane) in lanes {
                lane.cancel.cancel();
            }
        }
        reader.flush();
        let counts = reader.counts();
        drop(reader); // hangs up: the packers finish
        let stages = handles
            .into_iter()
            .map(|(p, u)| (join(p), join(u)))
            .collect();
        (read.map(|()| counts), stages)
    })
}

/// A stage thread's result; a panic is a bug, reported as such.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(Error::Internal("a backup stage panicked".into())))
}

/// A stage's result; a failure stops the run's other stages.
fn stopping<T>(cancel: &Cancel, r: Result<T>) -> Result<T> {
    if r.is_err() {
        cancel.cancel();
    }
    r
}

/// The error that stopped the run, once: a stage's own failure rather than the stops it
/// caused in the others ([`Error::Interrupted`] from a stage that saw the flag), and
/// [`Error::Interrupted`] only if the command itself was interrupted.
fn settle(
    read: Result<()>,
    packed: Result<packer::PackerOutput>,
    uploaded: Result<upload::Uploaded>,
    cancel: &Cancel,
) -> Result<(packer::PackerOutput, upload::Uploaded)> {
    let mut cause = None;
    let mut note = |e: Error| {
        if cause.is_none() && !matches!(e, Error::Interrupted) {
            cause = Some(e);
        }
    };
    let (packed, uploaded) = match (read, packed, uploaded) {
        (Ok(()), Ok(p), Ok(u)) if !cancel.is_cancelled() => return Ok((p, u)),
        (r, p, u) => {
            if let Err(e) = r {
                note(e);
            }
            (p.err(), u.err())
        }
    };
    // The uploader's failure explains the packer's, which explains the reader's.
    for e in [uploaded, packed].into_iter().flatten() {
        note(e);
    }
    Err(cause.unwrap_or(Error::Interrupted))
}

/// The metafile's header.
fn header(
    config: &Config,
    source: &SourceConfig,
    run: &crate::ids::RunId,
    start_time: chrono::DateTime<chrono::Utc>,
    keyset: String,
) -> Header {
    Header {
        fields: vec![
            ("host".into(), config.host.clone()),
            ("source".into(), source.name.clone()),
            ("run".into(), run.to_string()),
            ("root".into(), root(&source.input)),
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
    }
}

/// The metafile's `root` field: the tree's path, or what a stream came from (the
/// program only: its arguments may hold a password).
fn root(input: &Input) -> String {
    match input {
        Input::Tree(path) => path.to_string_lossy().into_owned(),
        Input::Command { argv, .. } => format!("command:{}", argv[0]),
        Input::Stdin { .. } => "stdin:".into(),
    }
}

/// Warns about recipient certificates that expire soon, with how to extend them.
fn warn_expiring(encryptor: &Encryptor, stats: &mut BackupStats, progress: &dyn Progress) {
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
}

/// Reports the packs the index listed that were gone from the target.
fn report_missing(
    presence: &reuse::Presence,
    target: &TargetConfig,
    stats: &mut BackupStats,
    progress: &dyn Progress,
) {
    let gone = presence.missing();
    let Some(first) = gone.first() else { return };
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

/// Backs up every selected source to each of its targets, reading each source once
/// for all its targets ([`backup_targets`]). One target failing does not stop the
/// others; each (source, target) pair gets its own result.
pub fn backup_all(
    config: &Config,
    sources: &[&SourceConfig],
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Vec<(String, String, Result<BackupStats>)> {
    let mut results = Vec::new();
    for source in sources {
        if opts.cancel.is_cancelled() {
            for target_name in &source.targets {
                results.push((
                    source.name.clone(),
                    target_name.clone(),
                    Err(Error::Interrupted),
                ));
            }
            continue;
        }
        // Targets the config cannot give fail by themselves; the rest go together.
        let mut targets = Vec::new();
        for target_name in &source.targets {
            match config.target(target_name) {
                Ok(t) => targets.push(t),
                Err(e) => results.push((source.name.clone(), target_name.clone(), Err(e))),
            }
        }
        let done = backup_targets(config, source, &targets, opts, progress);
        for (t, r) in targets.iter().zip(done) {
            results.push((source.name.clone(), t.name.clone(), r));
        }
    }
    results
}
