//! `backup`: one source to one target, as one run.
//!
//! ```text
//! read.rs     walk, read, chunk, hash          (the calling thread)
//!               │ chunks and entries, in walk order: bounded by the read-ahead budget
//!               ▼                                (budget.rs) and a message count
//! packer.rs   dedup, pack, metafile            (a scoped thread)
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
//! Every thread is scoped to the call. One cancellation flag (a child of the command's,
//! set on SIGINT and SIGTERM) is observed by every stage; a stage that fails sets it, so
//! the others stop at their next safe point, and the error that stopped the run is the
//! one reported. A cancelled run commits nothing, and leaves no temporary file: the
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
mod listing;
mod pack;
mod packer;
mod read;
mod reuse;
mod stream;
mod upload;

use std::collections::HashMap;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::config::{Config, Input, SourceConfig, TargetConfig};
use crate::crypto::{load_recipients, Encryptor};
use crate::error::{Error, Result};
use crate::format::metafile::Header;
use crate::index::Index;
use crate::progress::{Problem, Progress};
use crate::source::{self, IgnoreRules, Names};
use crate::store::Store;

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
}

const MAX_PROBLEMS: usize = 1000;

/// Backups warn this long before a recipient certificate expires.
pub(crate) const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Chunk bytes read ahead of the packer (while it seals a pack, say), at most.
const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Messages queued for the packer, at most (entries without data count too).
const READ_AHEAD_MESSAGES: usize = 4096;

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

/// Backs up `source` to `target` as one new run.
///
/// # Errors
///
/// Anything that stops the run before its metafile is stored: a recipient certificate
/// that cannot be used, a target that is missing or refuses a request, the local index
/// failing, the source's root unreadable, a run longer than `max_run_time`, or the
/// cancellation flag ([`Error::Interrupted`]). Files that cannot be read are not
/// errors: they are counted and named in the statistics.
pub fn backup(
    config: &Config,
    source: &SourceConfig,
    target: &TargetConfig,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats> {
    let started = Instant::now();
    let encryptor = load_recipients(&source.recipients)?;
    let mut signing_key = config
        .signing_key
        .as_deref()
        .map(crate::crypto::SigningKey::load)
        .transpose()?;
    let mut stats = BackupStats {
        source: source.name.clone(),
        target: target.name.clone(),
        host: config.host.clone(),
        ..Default::default()
    };
    warn_expiring(&encryptor, &mut stats, progress);
    let store = Store::open(target, target.create)?;
    let creator = store.creator(target);
    // Only a backup that may read the target gets a handle that can.
    let reader = target.can_read.then(|| store.reader());
    let keyset = encryptor.fingerprints().join(",");
    let _lock = crate::state::StateLock::take(&config.state_dir, |path| {
        progress.warn(&format!(
            "waiting for another coffer backup using {} to finish",
            crate::text::path(path)
        ))
    })?;
    let start_time = chrono::Utc::now();
    let mut index = Index::open(&config.state_dir)?;
    let target_id = reuse::domain(
        &mut index,
        &creator,
        reader.as_ref(),
        target,
        &keyset,
        &config.host,
        opts.forget_cache,
        progress,
    )?;
    let presence = Arc::new(reuse::Presence::new(reader));
    let run = commit::next_run_id(&index, target_id, &source.name, start_time)?;
    let head = index.chain_head(&target.url, &config.host, &source.name)?;
    let first_run = head.is_none();
    let chain = match head {
        Some((head, link)) => head.next(link),
        None => crate::format::refs::Chain::start()?,
    };
    // gc's safety rule: reuse only what gc cannot have deleted (see index.rs).
    let horizon = start_time.timestamp() - target.dedup_max_age.as_secs() as i64;
    index.set_dedup_horizon(horizon);
    let mut writer_index = Index::open(&config.state_dir)?;
    writer_index.set_dedup_horizon(horizon);
    let walker = match &source.input {
        Input::Tree(path) => {
            let rules = IgnoreRules::new(&source.ignore)?;
            Some(source::walk(path, source.one_file_system, rules)?)
        }
        _ => None,
    };
    let mut header = header(config, source, &run, start_time, keyset);
    header.fields.push(("chain".into(), chain.field()));
    if let Some(k) = &signing_key {
        header
            .fields
            .push(("signer".into(), k.fingerprint().to_string()));
    }
    let tmp_dir = config.state_dir.join("tmp");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&tmp_dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| Error::io(&tmp_dir, e))?;
    let listing = listing::Listing::create(&tmp_dir, &encryptor, signing_key.as_ref(), &header)?;

    // This run's flag: a stage that fails stops this run, not the command's others.
    let cancel = opts.cancel.child();
    let budget = Arc::new(budget::Budget::new(READ_AHEAD_BYTES, cancel.clone()));
    let packer = packer::Packer::new(packer::PackerSetup {
        encryptor,
        index: writer_index,
        target_id,
        source: source.name.clone(),
        listing,
        pack_size: target.pack_size,
        budget: budget.clone(),
        cancel: cancel.clone(),
        racy_after_ns: start_time.timestamp_nanos_opt().unwrap_or(i64::MAX) - 2_000_000_000,
        presence: presence.clone(),
    })?;
    // A stream's producer starts last, once everything it could fail on is ready.
    let stream = match (&walker, source.input.stream_name()) {
        (None, Some(name)) => Some((stream::Stream::open(&source.input)?, name)),
        _ => None,
    };
    progress.phase(&format!("{} -> {}", source.name, target.name), None);
    let (tx, rx) = sync_channel::<packer::Msg>(READ_AHEAD_MESSAGES);
    let (pack_tx, pack_rx) = sync_channel(1);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let (read, packed, uploaded) = std::thread::scope(|scope| {
        let packed = scope.spawn(|| stopping(&cancel, packer.run(rx, pack_tx, ack_rx)));
        let uploaded = scope.spawn(|| {
            let r = upload::upload(
                &creator,
                target.upload_concurrency,
                pack_rx,
                ack_tx,
                &cancel,
            );
            stopping(&cancel, r)
        });
        let mut reader = read::Reader {
            source,
            index: &index,
            presence: &presence,
            target_id,
            tx,
            budget: &budget,
            cancel: &cancel,
            names: Names::default(),
            hardlinks: HashMap::new(),
            progress,
            stats: &mut stats,
        };
        let read = match (walker, stream) {
            (Some(walker), _) => reader.run(walker),
            (None, Some((stream, name))) => {
                reader.run_stream(stream, name, start_time, opts.allow_empty_stream)
            }
            (None, None) => Err(Error::Internal(
                "a source with neither tree nor stream".into(),
            )),
        };
        let read = stopping(&cancel, read);
        drop(reader); // hangs up: the packer finishes
        (read, join(packed), join(uploaded))
    });
    progress.done();
    let (output, uploaded) = settle(read, packed, uploaded, &cancel)?;
    report_missing(&presence, target, &mut stats, progress);
    stats.chunks = output.chunks;
    stats.chunks_new = output.chunks_new;
    if source.input.path().is_none() {
        // A stream has no earlier stamp to compare: it is new in the first run this host
        // made of the source, else it changed if it stored anything new.
        if first_run {
            stats.files_new = stats.files;
        } else if output.chunks_new == 0 {
            stats.files_unchanged = stats.files;
        } else {
            stats.files_changed = stats.files;
        }
    }
    stats.bytes_new = output.bytes_new;
    stats.bytes_stored = uploaded.bytes;
    stats.packs_stored = uploaded.created;
    commit::Commit {
        creator: &creator,
        index: &mut index,
        target_id,
        target,
        host: &config.host,
        source: &source.name,
        run: &run,
        start_time,
        chain: &chain,
        signing_key: signing_key.as_mut(),
    }
    .finish(output.metafile, &mut stats)?;
    stats.run = run.to_string();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    stats.read_bytes_per_sec = stats.bytes_read as f64 / stats.elapsed_secs.max(1e-9);
    stats.dedup_ratio =
        (stats.bytes_new > 0).then(|| stats.bytes_total as f64 / stats.bytes_new as f64);
    Ok(stats)
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
            if opts.cancel.is_cancelled() {
                results.push((
                    source.name.clone(),
                    target_name.clone(),
                    Err(Error::Interrupted),
                ));
                continue;
            }
            let result = config
                .target(target_name)
                .and_then(|t| backup(config, source, &t, opts, progress));
            results.push((source.name.clone(), target_name.clone(), result));
        }
    }
    results
}
