//! `restore`: a run's metafile back into a tree.
//!
//! Every chunk is checked against the BLAKE3 the metafile records, and every file against
//! its whole-file BLAKE3 (invariant 4). A file whose data cannot be fetched or fails a check
//! is reported with its path and reason and left out (never half-written: files are
//! written to a temporary name and renamed into place), and the rest is restored.
//!
//! The metafile is encrypted to public keys, so anyone who holds a recipient's public key
//! (for instance a compromised backup host) could forge one, and the destination may hold
//! links placed by someone else. Restore therefore checks the whole listing before
//! writing anything, refuses absolute paths and `..` components, creates everything
//! beneath `--to` through directory handles without following a symbolic link
//! ([`dest`]), and restores device nodes and setuid/setgid bits only when asked.
//!
//! Layout: [`files`] writes regular files (temporary file, checks, metadata, rename),
//! [`packs`] fetches chunk messages, [`job`] is the pass over the listing, [`dest`] the
//! destination's handles.

mod cat;
mod dest;
mod diff;
mod dump;
mod failure;
mod files;
mod job;
mod ls;
mod packs;
mod verify;

pub use cat::{cat, CatStats};
pub use diff::{diff, Change, Compared};
pub use dump::{dump, DumpStats};
pub use ls::{ls, Listed, LsOptions};
pub use packs::RecoveredPack;
pub use verify::{verify_against, verify_data, AgainstReport, DataOptions, DataReport, Sample};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{self, Kind};
use crate::ids::RunId;
use crate::progress::Progress;
use crate::source::os;
use crate::store::{self, Reader};
use dest::{Dest, MetaPolicy};
use job::Job;

/// Which metafile to restore from.
#[derive(Debug, Clone)]
pub enum MetafileSource {
    /// A run on the target: the given id (or a unique prefix of one), or the newest of
    /// `source` from `host`.
    Run {
        /// Host whose runs to consider (`None`: any host, if only one has runs of `source`).
        host: Option<String>,
        /// Source name (`None`: any, when `id` is given).
        source: Option<String>,
        /// A specific run: its id, or a prefix of it that only one run's id has.
        id: Option<String>,
        /// Without `id`: the newest run that started at or before this time (and checks
        /// out), instead of the newest of all ([`crate::parse_when`] reads `--at`).
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// A metafile on disk: as stored (encrypted), or already decrypted.
    File(PathBuf),
    /// A run already listed ([`Reader::list_runs`]), so that a command going through
    /// many runs lists the target once, not once per run. Taken as a run given by id.
    Listed(Box<store::RunInfo>),
}

/// How to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Destination directory (created if missing).
    pub to: PathBuf,
    /// Restore only these paths (relative to the source root) and what is below them.
    pub paths: Vec<Vec<u8>>,
    /// Replace existing files instead of reporting them, and give existing directories
    /// their recorded metadata.
    pub overwrite: bool,
    /// Set recorded owners: `None` does so when running as root (only root can).
    pub owners: Option<bool>,
    /// Keep setuid and setgid bits of files (directories always keep theirs).
    pub setid: bool,
    /// Create device nodes (character and block devices).
    pub devices: bool,
    /// Stops the restore when set (SIGINT, say): files being written are removed.
    pub cancel: crate::cancel::Cancel,
    /// Whose signatures runs must carry: a run they require and lack is refused.
    pub trust: crate::runs::Trust,
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
    /// Entries not restored on purpose: device nodes without `devices`.
    pub skipped: u64,
    /// Entries already in the destination exactly as the run has them (a re-run of an
    /// interrupted restore, say), left as they are.
    pub identical: u64,
    /// Files restored without their setuid or setgid bits (without `setid`).
    pub setid_stripped: u64,
    /// Seconds.
    pub elapsed_secs: f64,
    /// Path and reason of each failure (first 1000).
    pub problems: Vec<crate::progress::Problem>,
    /// Packs whose stored bytes did not match their name, restored from an earlier
    /// version that does (a versioned S3 bucket): the files are whole, but the target
    /// needs repair (each says how).
    pub recovered: Vec<RecoveredPack>,
    /// Packs in a cold storage class (S3 GLACIER, DEEP_ARCHIVE) that must be thawed
    /// before the files in them can be restored (keys under the target, `data/xx/…`).
    pub frozen: Vec<String>,
}

/// Restores a run into `opts.to`.
///
/// The metafile is read twice: once to check all of it (its structure, its MDC, its
/// totals, and that every path asked for is in it) before anything is written, then to
/// restore. A run chosen by default (no id given) whose metafile fails that check is
/// skipped for the next newest, with a warning.
///
/// # Errors
///
/// What stops the restore as a whole: no run to restore, a metafile that cannot be read
/// or fails the check (damaged, truncated, forged, made for another key), a path asked
/// for that the run does not hold, a destination that cannot be opened, the cancellation
/// flag ([`Error::Interrupted`]). A file that cannot be restored is not an error: it is
/// counted and named in the statistics, and the others are restored.
pub fn restore(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let started = Instant::now();
    for p in &opts.paths {
        check_path(p).map_err(|r| Error::Usage(format!("path {:?}: {r}", os(p))))?;
    }
    let (metafile, checked) = fetch_and_check(store, source, decryptor, opts, progress)?;
    let dest = Dest::open(&opts.to).map_err(|failure| match failure {
        failure::Failure::Os { source, .. } => Error::io(&opts.to, source),
        other => Error::Usage(format!(
            "restore destination {}: {other}",
            crate::text::path(&opts.to)
        )),
    })?;
    let mut checked = checked;
    let mut listing = match checked.kept.take() {
        Some(entries) => Entries::Kept(entries.into_iter()),
        None => Entries::Listing(Box::new(metafile.open(decryptor)?)),
    };
    progress.phase(&format!("restore {}", checked.run), Some(checked.bytes));
    let owner_names = dest::OwnerNames::default();
    let temp_names = files::TempNames::new().map_err(|f| Error::Internal(f.to_string()))?;
    let settings = files::Settings {
        decryptor,
        progress,
        cancel: &opts.cancel,
        overwrite: opts.overwrite,
        policy: MetaPolicy {
            owners: opts
                .owners
                .unwrap_or_else(|| nix::unistd::geteuid().is_root())
                .then_some(&owner_names),
            setid: opts.setid,
        },
        temp_names: &temp_names,
    };
    let root = dest.root().clone();
    // Small files are decrypted and written by one worker per core while this thread
    // reads the listing and fetches packs. The queue's sender lives in the job, inside
    // the scope: however the loop ends (an error, a panic), it is dropped, the workers
    // see the queue close and stop, and the scope ends.
    let stats = std::thread::scope(|scope| {
        let (jobs, queue) =
            std::sync::mpsc::sync_channel::<Vec<files::FileJob>>(job::QUEUED_BATCHES);
        let (done_tx, done) = std::sync::mpsc::channel::<Vec<files::Done>>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..workers {
            let (queue, done_tx) = (queue.clone(), done_tx.clone());
            scope.spawn(move || files::worker(queue, done_tx, settings));
        }
        drop(done_tx);
        let pool = job::Pool {
            jobs,
            done,
            in_flight: 0,
            held: 0,
            batch: Vec::new(),
            batch_held: 0,
        };
        let mut job = Job::new(store, opts, progress, dest, settings, pool, checked);
        let listed = (|| {
            // From a remote target, a whole restore fetches packs ahead of need, a
            // filtered one the ranges its paths need.
            let mut ahead = packs::Lookahead::new(&job.packs, &opts.paths);
            while let Some(entry) = ahead.next(&mut || listing.next_entry(), &mut job.packs)? {
                job.entry(entry)?;
            }
            Ok::<(), Error>(())
        })();
        let drained = job.drain();
        if listed.is_ok() && drained.is_ok() && !opts.cancel.is_cancelled() {
            job.finish();
        } else {
            // Stopped early: the directories made so far still get their recorded
            // metadata (they were created 0700), and nothing half written remains.
            job.finish_dirs();
        }
        for r in job.packs.recovered() {
            progress.warn(&r.message);
        }
        job.stats.recovered = job.packs.recovered().to_vec();
        job.stats.frozen = job.packs.frozen();
        if !job.stats.frozen.is_empty() {
            progress.warn(&format!(
                "{} packs of this run are in a cold storage class (GLACIER or \
                 DEEP_ARCHIVE): the files in them were not restored. Thaw the packs \
                 (`aws s3api restore-object`; hours, up to 48 from DEEP_ARCHIVE), then \
                 restore again: files already restored are left as they are",
                job.stats.frozen.len()
            ));
        }
        listed.and(drained)?;
        opts.cancel.check()?;
        Ok::<RestoreStats, Error>(job.stats)
    });
    let mut stats = stats?;
    // One flush of the whole destination file system instead of an fsync per file; the
    // restore does not report success before the data is on disk.
    nix::unistd::syncfs(&*root).map_err(|e| Error::io(&opts.to, e.into()))?;
    if stats.setid_stripped > 0 {
        let msg = format!(
            "{} files were restored without their setuid or setgid bits (pass --setid to \
             keep them)",
            stats.setid_stripped
        );
        progress.warn(&msg);
        stats.problems.push(crate::progress::Problem::general(msg));
    }
    progress.done();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Fetches the metafile and checks it whole. A run named by id is restored whatever the
/// keyless checks said of it (with a warning if they found something). Without an id,
/// the newest run that passes them is taken, and if its metafile then turns out damaged
/// or forged, the next newest, each skipped run named in a warning.
fn fetch_and_check(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<(Fetched, Checked)> {
    let (host, source, id, at) = match source {
        MetafileSource::File(path) => {
            let metafile = fetch_file(path)?;
            let checked = metafile.check(decryptor, &opts.paths)?;
            return Ok((metafile, checked));
        }
        MetafileSource::Listed(run) => {
            return fetch_named(store, (**run).clone(), decryptor, opts, progress)
        }
        MetafileSource::Run {
            host,
            source,
            id,
            at,
        } => (host.as_deref(), source.as_deref(), id.as_deref(), *at),
    };
    if let Some(id) = id {
        let runs = runs_of(store, host, source, true)?;
        let run = select_id(store, runs, id)?;
        return fetch_named(store, run, decryptor, opts, progress);
    }
    let Some(source) = source else {
        return Err(Error::Usage(
            "give the source to restore the newest run of (--source), or a run (--run)".into(),
        ));
    };
    let mut runs = runs_of(store, host, Some(source), false)?;
    if let Some(at) = at {
        runs = at_or_before(store, runs, at)?;
    }
    crate::runs::check(store, &mut runs, &opts.trust)?;
    // Swapped and forked runs are not taken (deletions are verify's and status's to
    // report: without prune's records a gap proves nothing here).
    crate::chain::walk(&mut runs, &[]);
    let mut skipped = Vec::new();
    for run in runs.into_iter().rev() {
        if !run.status.is_ok() {
            skipped.push(format!("{} ({})", run.id, run.status.word()));
            continue;
        }
        let id = run.id.clone();
        let attempt = fetch_run(store, run, &opts.trust).and_then(|m| {
            let c = m.check(decryptor, &opts.paths)?;
            Ok((m, c))
        });
        match attempt {
            Ok(found) => {
                if !skipped.is_empty() {
                    progress.warn(&format!(
                        "restoring run {id}, the newest that checks out; skipped newer runs: \
                         {} (see `coffer runs`)",
                        skipped.join(", ")
                    ));
                }
                return Ok(found);
            }
            // A metafile that is forged or damaged must not hide the runs before it.
            Err(e @ Error::Corrupt { .. }) => {
                progress.warn(&format!("skipping run {id}: {e}"));
                skipped.push(format!("{id} (its metafile is damaged)"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::NotFound(format!(
        "no run of source {source:?}{}{} on target {} checks out{}; `coffer runs` lists \
         them with what is wrong, and --run ID restores one anyway",
        host.map(|h| format!(" from host {h:?}"))
            .unwrap_or_default(),
        at.map(|t| format!(" made at or before {}", rfc3339(t)))
            .unwrap_or_default(),
        store.name(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped: {})", skipped.join(", "))
        }
    )))
}

/// Fetches and checks the run asked for by name (an id, or a listed run), whatever the
/// keyless checks say of it (with a warning if they found something), unless a trusted
/// signer is required and did not sign it.
fn fetch_named(
    store: &Reader,
    mut run: store::RunInfo,
    decryptor: &Decryptor,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<(Fetched, Checked)> {
    crate::runs::check(store, std::slice::from_mut(&mut run), &opts.trust)?;
    if opts.trust.requires(&run.source) && !matches!(run.signature, crate::runs::Signature::Good(_))
    {
        return Err(Error::Corrupt {
            what: format!("run {}/{}/{}", run.host, run.source, run.id),
            reason: format!(
                "{}; restore refuses a run that no trusted signer signed \
                 (--allow-unsigned restores it anyway)",
                run.status.reason().unwrap_or("it is not signed")
            ),
        });
    }
    if let Some(reason) = run.status.reason() {
        progress.warn(&format!(
            "run {} is {}: {reason}; restoring it because it was asked for",
            run.id,
            run.status.word()
        ));
    }
    let metafile = fetch_run(store, run, &opts.trust)?;
    let checked = metafile.check(decryptor, &opts.paths)?;
    Ok((metafile, checked))
}

/// A metafile's stored bytes, in memory when small and in an unlinked temporary file
/// (the stored ciphertext, nothing decrypted) when large, so memory stays bounded.
enum Bytes {
    Memory(bytes::Bytes),
    File(std::fs::File),
}

/// Metafiles up to this size are held in memory; larger ones go to a temporary file.
const IN_MEMORY_METAFILE: u64 = 16 << 20;

/// A fetched metafile: its bytes, a name for messages, whether it may be plaintext (a
/// local file the user named, perhaps decrypted with `gpg -d`), and the run it must
/// describe when it came from the target.
struct Fetched {
    what: String,
    bytes: Bytes,
    plaintext_ok: bool,
    expect: Option<store::RunInfo>,
    /// Whom the metafile's own signature (if it has one) must come from.
    signers: crate::crypto::Signers,
}

/// What the check pass learned.
pub(super) struct Checked {
    pub run: String,
    /// Unselected hard-link targets whose data goes to a selected link's path.
    pub borrowed: HashMap<Vec<u8>, Vec<u8>>,
    /// With paths asked for: the entries the restore acts on (those paths and what is
    /// below them, and their directories), kept from the check when they are few, so
    /// the listing is not read a second time. `None`: read it again.
    pub kept: Option<Vec<metafile::Entry>>,
    /// Bytes of the regular files the restore acts on (for the progress display).
    pub bytes: u64,
}

/// How much of the listing a restore of named paths keeps from its check (estimated
/// bytes of entries) instead of reading the listing again.
const KEPT_ENTRY_BYTES: usize = 16 << 20;

/// About how much memory `e` takes.
fn entry_bytes(e: &metafile::Entry) -> usize {
    let chunks = match &e.kind {
        Kind::File { chunks, .. } => chunks.len() * std::mem::size_of::<metafile::ChunkRef>(),
        _ => 0,
    };
    std::mem::size_of::<metafile::Entry>() + e.path.len() + chunks + 64
}

type Listing = metafile::Reader<Box<dyn BufRead + Send + Sync>>;

/// The entries a restore goes through: kept from the check, or read again.
enum Entries {
    Kept(std::vec::IntoIter<metafile::Entry>),
    Listing(Box<Listing>),
}

impl Entries {
    fn next_entry(&mut self) -> Result<Option<metafile::Entry>> {
        match self {
            Entries::Kept(it) => Ok(it.next()),
            Entries::Listing(r) => r.next_entry(),
        }
    }
}

impl Fetched {
    fn raw(&self) -> Result<Box<dyn Read + Send + Sync>> {
        Ok(match &self.bytes {
            Bytes::Memory(b) => Box::new(std::io::Cursor::new(b.clone())),
            Bytes::File(f) => {
                let mut f = f.try_clone().map_err(|e| Error::io(&self.what, e))?;
                f.seek(SeekFrom::Start(0))
                    .map_err(|e| Error::io(&self.what, e))?;
                Box::new(f)
            }
        })
    }

    /// A reader of the listing, from the start.
    fn open(&self, decryptor: &Decryptor) -> Result<Listing> {
        let mut raw = BufReader::with_capacity(1 << 16, self.raw()?);
        let plaintext = self.plaintext_ok
            && raw
                .fill_buf()
                .map_err(|e| Error::io(&self.what, e))?
                .starts_with(b"coffer-metafile ");
        let text: Box<dyn BufRead + Send + Sync> = if plaintext {
            Box::new(raw)
        } else {
            let r = decryptor.metafile_reader(&self.what, raw, &self.signers)?;
            Box::new(BufReader::with_capacity(1 << 16, r))
        };
        let reader = metafile::Reader::new(text, &self.what)?;
        if let Some(expect) = &self.expect {
            check_header(&self.what, reader.header(), expect)?;
        }
        Ok(reader)
    }

    /// Reads the whole listing once, so nothing is restored from a metafile that turns
    /// out damaged or forged at its end, and every path asked for is known to be there.
    fn check(&self, decryptor: &Decryptor, paths: &[Vec<u8>]) -> Result<Checked> {
        let mut r = self.open(decryptor)?;
        let run = r.header().get("run").unwrap_or("?").to_string();
        let mut borrowed = HashMap::new();
        let mut found = vec![paths.is_empty(); paths.len()];
        let mut kept = (!paths.is_empty()).then(Vec::new);
        let mut kept_bytes = 0usize;
        let mut bytes = 0u64;
        while let Some(e) = r.next_entry()? {
            if let Kind::File { size, .. } = &e.kind {
                if selected(paths, &e.path) {
                    bytes = bytes.saturating_add(*size);
                }
            }
            for (p, f) in paths.iter().zip(found.iter_mut()) {
                *f |= selected(std::slice::from_ref(p), &e.path);
            }
            // With a path filter, a selected hard link may name a file outside the
            // selection: its data is restored under the link's name.
            if let Kind::Hardlink { target } = &e.kind {
                if selected(paths, &e.path) && !selected(paths, target) {
                    borrowed.entry(target.clone()).or_insert(e.path.clone());
                }
            }
            let acted_on = selected(paths, &e.path)
                || e.path == b"."
                || (matches!(e.kind, Kind::Dir) && is_ancestor_of(paths, &e.path));
            if let (Some(k), true) = (&mut kept, acted_on) {
                kept_bytes += entry_bytes(&e);
                if kept_bytes > KEPT_ENTRY_BYTES {
                    kept = None;
                } else {
                    k.push(e);
                }
            }
        }
        // A hard link to a file outside the paths needs that file's entry, which came
        // before the link: the listing is read again.
        if !borrowed.is_empty() {
            kept = None;
        }
        let missing: Vec<String> = paths
            .iter()
            .zip(&found)
            .filter(|(_, f)| !**f)
            .map(|(p, _)| format!("{:?}", os(p)))
            .collect();
        if !missing.is_empty() {
            return Err(Error::NotFound(format!(
                "run {run} holds no {}; nothing was restored (list its paths with \
                 `coffer restore --index` into an empty directory, or check the spelling: \
                 paths are relative to the source's root)",
                missing.join(", ")
            )));
        }
        Ok(Checked {
            run,
            borrowed,
            kept,
            bytes,
        })
    }
}

/// A metafile on disk the user names: trusted as given (it may be one decrypted with
/// `gpg -d`).
fn fetch_file(path: &std::path::Path) -> Result<Fetched> {
    Ok(Fetched {
        what: format!("metafile {}", crate::text::path(path)),
        bytes: Bytes::File(std::fs::File::open(path).map_err(|e| Error::io(path, e))?),
        plaintext_ok: true,
        expect: None,
        signers: crate::crypto::Signers::default(),
    })
}

/// A run's metafile from the target: it must be encrypted to us and describe the run it
/// is stored as, since anyone who can write to the target could plant one.
fn fetch_run(store: &Reader, run: store::RunInfo, trust: &crate::runs::Trust) -> Result<Fetched> {
    let id: RunId = run.id.parse()?;
    let path = store::run_path(&run.host, &run.source, &id, "meta");
    let what = format!("metafile {path}");
    let bytes = if run.pieces.len() <= 1 && run.metafile_bytes <= IN_MEMORY_METAFILE {
        match store.get_small(&path, IN_MEMORY_METAFILE)? {
            Some(b) => Bytes::Memory(b),
            None => spool(&what, store.stream(&path)?)?,
        }
    } else {
        spool(&what, store.metafile_reader(&run)?)?
    };
    // The object list records the stored metafile's digest (and, signed, vouches for
    // it): a metafile replaced under the run's name is refused before it is decrypted.
    if let Some(want) = run.metafile_digest {
        let got = match &bytes {
            Bytes::Memory(b) => crate::ids::ChunkHash::of(b),
            Bytes::File(f) => {
                let mut h = blake3::Hasher::new();
                let mut f = f;
                std::io::Seek::rewind(&mut f).map_err(|e| Error::io(&what, e))?;
                h.update_reader(&mut f).map_err(|e| Error::io(&what, e))?;
                std::io::Seek::rewind(&mut f).map_err(|e| Error::io(&what, e))?;
                h.finalize().into()
            }
        };
        if got != want.hash {
            return Err(Error::Corrupt {
                what,
                reason: format!(
                    "its BLAKE3 is {got}, but its object list records {}: it was replaced \
                     or damaged after the run was stored",
                    want.hash
                ),
            });
        }
    }
    let signers = trust.metafile_signers(&run.source);
    Ok(Fetched {
        what,
        bytes,
        plaintext_ok: false,
        expect: Some(run),
        signers,
    })
}

/// Copies a stored metafile into an unlinked temporary file (ciphertext only).
fn spool(what: &str, mut reader: impl Read) -> Result<Bytes> {
    let mut file = tempfile::tempfile().map_err(|e| Error::io(what, e))?;
    std::io::copy(&mut reader, &mut file).map_err(|e| Error::io(what, e))?;
    Ok(Bytes::File(file))
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

/// The runs of `source` (any source if `None`; from `host`, if given), oldest first.
/// Without `mixed`, runs from several hosts are an error (which host's newest?).
fn runs_of(
    store: &Reader,
    host: Option<&str>,
    source: Option<&str>,
    mixed: bool,
) -> Result<Vec<store::RunInfo>> {
    let runs: Vec<store::RunInfo> = store
        .list_runs()?
        .into_iter()
        .filter(|r| source.is_none_or(|s| r.source == s) && host.is_none_or(|h| r.host == h))
        .collect();
    let what = || match source {
        Some(s) => format!("source {s:?}"),
        None => "any source".to_string(),
    };
    let hosts: HashSet<&str> = runs.iter().map(|r| r.host.as_str()).collect();
    if hosts.len() > 1 && !mixed {
        let mut hosts: Vec<&str> = hosts.into_iter().collect();
        hosts.sort();
        return Err(Error::Usage(format!(
            "{} has runs from several hosts ({}); choose one with --host",
            what(),
            hosts.join(", ")
        )));
    }
    if runs.is_empty() {
        return Err(Error::NotFound(format!(
            "no run of {}{} on target {}",
            what(),
            host.map(|h| format!(" from host {h:?}"))
                .unwrap_or_default(),
            store.name()
        )));
    }
    Ok(runs)
}

/// The runs among `runs` (oldest first) that started at or before `at`, by the time each
/// claims; none is an error that names the runs nearest to `at`.
fn at_or_before(
    store: &Reader,
    runs: Vec<store::RunInfo>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<store::RunInfo>> {
    let (before, after): (Vec<_>, Vec<_>) = runs.into_iter().partition(|r| r.claimed_at <= at);
    if before.is_empty() {
        let first = after.iter().min_by_key(|r| r.claimed_at);
        return Err(Error::NotFound(format!(
            "no run on target {} started at or before {}{}",
            store.name(),
            rfc3339(at),
            first.map_or_else(String::new, |r| format!(
                "; the oldest run of {}/{} is {} ({}): give a later --at, or --run ID",
                r.host, r.source, r.id, r.time
            ))
        )));
    }
    Ok(before)
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The run `id` (or the one run whose id starts with it) among `runs`.
fn select_id(store: &Reader, runs: Vec<store::RunInfo>, id: &str) -> Result<store::RunInfo> {
    let exact: Vec<&store::RunInfo> = runs.iter().filter(|r| r.id == id).collect();
    let found: Vec<&store::RunInfo> = if exact.is_empty() {
        runs.iter().filter(|r| r.id.starts_with(id)).collect()
    } else {
        exact
    };
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            // The newest runs, to show what exists.
            let newest: Vec<&str> = runs.iter().rev().take(5).map(|r| r.id.as_str()).collect();
            Err(Error::NotFound(format!(
                "no run {id} on target {} (the newest: {}; `coffer runs` lists them all)",
                store.name(),
                newest.join(", ")
            )))
        }
        many => Err(Error::Usage(format!(
            "{id} could be any of {}: give more of the id, or --source and --host",
            many.iter()
                .map(|r| format!("{}/{}/{}", r.host, r.source, r.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
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

/// Whether `path` is a proper ancestor of a selected path (its directory is then
/// restored with its recorded metadata, as the selection's parent).
fn is_ancestor_of(paths: &[Vec<u8>], path: &[u8]) -> bool {
    paths
        .iter()
        .any(|p| p.starts_with(path) && p.get(path.len()) == Some(&b'/'))
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
