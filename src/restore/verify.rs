//! `verify --data`: a run's every chunk fetched, decrypted and checked as restore checks
//! it (its message's structure and MDC, its plaintext's size and BLAKE3, each file's
//! whole BLAKE3), with nothing written anywhere. Packs come through restore's pack cache,
//! so each is read once however many chunks of it the run uses.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::files::open_chunk;
use super::packs::{Lookahead, PackCache, PREFETCH_PACKS};
use super::{fetch_and_check, MetafileSource, RestoreOptions};
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{ChunkRef, Kind};
use crate::ids::{ChunkHash, ObjectKey};
use crate::progress::{Problem, Progress};
use crate::store::Reader;

/// At most this many damaged files are named (the count is complete).
const MAX_NAMED: usize = 1000;

/// A share of a run's packs to check, and the record of what earlier samples checked.
pub struct Sample<'a> {
    /// The share, in (0, 1].
    pub share: f64,
    /// Packs checked in this round; those are picked last.
    pub coverage: &'a mut crate::keyset::Coverage,
}

/// How `verify --data` runs.
#[derive(Default)]
#[non_exhaustive]
pub struct DataOptions<'a> {
    /// Check only a share of the run's packs.
    pub sample: Option<Sample<'a>>,
    /// Stop once this many bytes were fetched from the target.
    pub max_bytes: Option<u64>,
    /// Stop once this many requests were made to the target.
    pub max_requests: Option<u64>,
    /// Whose signatures the run must carry.
    pub trust: crate::runs::Trust,
}

/// What `verify --data` found in one run.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct DataReport {
    /// The run checked.
    pub run: String,
    /// Packs the run references.
    pub packs: u64,
    /// Packs checked this time (all of them without a sample).
    pub packs_checked: u64,
    /// With a sample: packs checked in this round so far, this time's included (when it
    /// reaches `packs`, the next sample starts a new round).
    pub packs_covered: Option<u64>,
    /// Chunks left out because their pack was not in the sample.
    pub chunks_skipped: u64,
    /// Bytes fetched from the target.
    pub bytes_fetched: u64,
    /// Requests that fetched them.
    pub requests: u64,
    /// Why the check stopped before the end (`--max-bytes`, `--max-requests`); the
    /// files after that point were not checked.
    pub stopped: Option<String>,
    /// Files not checked because it stopped.
    pub files_unchecked: u64,
    /// Files whose every byte checked out.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks decrypted and checked.
    pub chunks: u64,
    /// Files that would not restore whole.
    pub failed: u64,
    /// Each such file, with the reason (the first 1000).
    pub problems: Vec<Problem>,
    /// Packs whose stored bytes did not match their name, checked from an earlier
    /// version that does (a versioned S3 bucket): restorable, but the target needs
    /// repair (each says how), so the report is not clean.
    pub recovered: Vec<super::RecoveredPack>,
    /// Packs in a cold storage class (S3 GLACIER, DEEP_ARCHIVE) that must be thawed
    /// before the files in them can be checked (keys under the target, `data/xx/…`).
    pub frozen: Vec<String>,
    /// Seconds.
    pub elapsed_secs: f64,
}

impl DataReport {
    /// Whether every file checked out.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.recovered.is_empty()
    }
}

/// Checks every file of the run `source` names, as restore would read it, writing
/// nothing.
///
/// # Errors
///
/// What stops a restore before it writes: no such run, a metafile that cannot be read or
/// fails its check, a wrong key. A file whose data is missing or damaged is not an error:
/// it is counted and named in the report.
pub fn verify_data(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    opts: DataOptions<'_>,
    progress: &dyn Progress,
) -> Result<DataReport> {
    let DataOptions {
        sample,
        max_bytes,
        max_requests,
        trust,
    } = opts;
    let started = Instant::now();
    let mut opts = RestoreOptions::new(".");
    opts.trust = trust;
    let (metafile, checked) = fetch_and_check(store, source, decryptor, &opts, progress)?;
    let mut report = DataReport {
        run: checked.run.clone(),
        ..Default::default()
    };
    // With a sample: the run's packs, from its object list, and the share to check.
    // Without one every chunk is checked, and the object list is not needed.
    let run_packs: Vec<ObjectKey> = match metafile.expect.as_ref().filter(|_| sample.is_some()) {
        Some(run) => {
            let id: crate::ids::RunId = run.id.parse()?;
            let path = crate::store::run_path(&run.host, &run.source, &id, "refs");
            crate::format::refs::read(store.stream(&path)?, &format!("object list {path}"))?.1
        }
        None => Vec::new(),
    };
    report.packs = run_packs.len() as u64;
    let mut chosen: Option<std::collections::HashSet<ObjectKey>> = None;
    let mut sample = sample;
    // (A metafile read from a file has no object list to sample from: all is checked.)
    if let Some(s) = sample.as_mut().filter(|_| !run_packs.is_empty()) {
        let n = run_packs.len();
        let want = ((n as f64 * s.share).ceil() as usize).clamp(1, n.max(1));
        let mut fresh = Vec::new();
        for k in &run_packs {
            if !s.coverage.covered(k)? {
                fresh.push(*k);
            }
        }
        if fresh.is_empty() {
            s.coverage.reset()?; // every pack was checked: a new round
            fresh = run_packs.clone();
        }
        let mut rng = crate::prng::Prng::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        );
        // A random share of the unchecked packs (Fisher-Yates, the first `want`).
        for i in 0..fresh.len().min(want) {
            let j = i + rng.below((fresh.len() - i) as u64) as usize;
            fresh.swap(i, j);
        }
        fresh.truncate(want);
        chosen = Some(fresh.into_iter().collect());
    }
    // With a sample and a limit, a pack counts as checked only once all of this run's
    // chunks in it were: how many there are, from a first pass over the listing (it is
    // on this machine).
    let mut pending: HashMap<ObjectKey, u64> = HashMap::new();
    if let Some(set) = chosen
        .as_ref()
        .filter(|_| max_bytes.is_some() || max_requests.is_some())
    {
        let mut first = metafile.open(decryptor)?;
        while let Some(entry) = first.next_entry()? {
            if let Kind::File { chunks, .. } = &entry.kind {
                for c in chunks.iter().filter(|c| set.contains(&c.object)) {
                    *pending.entry(c.object).or_default() += 1;
                }
            }
        }
    }
    progress.phase(&format!("verify {}", checked.run), Some(checked.bytes));
    let mut listing = metafile.open(decryptor)?;
    let mut fetched: std::collections::HashSet<ObjectKey> = Default::default();
    // Packs a chunk failed in: never recorded as checked, so a sample finds them again.
    let mut damaged: std::collections::HashSet<ObjectKey> = Default::default();
    // On a remote target, packs are fetched ahead of need (not with a limit to keep
    // exactly to, nor a sample, which reads only some packs).
    let ahead =
        store.is_remote() && max_bytes.is_none() && max_requests.is_none() && chosen.is_none();
    let mut packs = PackCache::new(false).with_prefetch(if ahead { PREFETCH_PACKS } else { 0 });
    let mut lookahead = Lookahead::new(&packs, &[]);
    // Files are fetched on this thread (the pack cache, the limits) a batch at a time,
    // then checked in parallel (decryption, decompression and hashing are the work),
    // then counted in order.
    let mut batch: Vec<Fetched> = Vec::new();
    let mut batch_bytes = 0u64;
    loop {
        let entry = lookahead.next(&mut || listing.next_entry(), &mut packs)?;
        let flush = entry.is_none() || batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES;
        if flush && !batch.is_empty() {
            let checked: Vec<Checked> = {
                use rayon::prelude::*;
                batch.par_iter().map(|f| check(decryptor, f)).collect()
            };
            for (f, c) in batch.drain(..).zip(checked) {
                report.chunks += c.chunks;
                progress.bytes(c.bytes);
                damaged.extend(c.damaged);
                // The file's first failure, in the order of its chunks.
                let failure = match (f.failure, c.failure) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
                .map(|(_, why)| why);
                match failure {
                    None if f.partial => {}
                    None => {
                        report.files += 1;
                        report.bytes += f.size;
                    }
                    Some(reason) => {
                        report.failed += 1;
                        if report.problems.len() < MAX_NAMED {
                            report.problems.push(Problem::at(&f.path, reason));
                        }
                    }
                }
            }
            batch_bytes = 0;
        }
        let Some(entry) = entry else { break };
        let Kind::File { size, hash, chunks } = entry.kind else {
            continue;
        };
        if report.stopped.is_some() {
            report.files_unchecked += 1;
            continue;
        }
        let mut file = Fetched {
            path: entry.path,
            size,
            hash,
            messages: Vec::with_capacity(chunks.len()),
            failure: None,
            partial: false,
        };
        for (i, c) in chunks.iter().enumerate() {
            if chosen.as_ref().is_some_and(|set| !set.contains(&c.object)) {
                report.chunks_skipped += 1;
                file.partial = true;
                continue;
            }
            // A limit is checked before each chunk of a pack not fetched yet (one large
            // file cannot overrun it; what was fetched is used).
            let new_pack = !fetched.contains(&c.object);
            if let Some(why) = limit_reached(&packs, max_bytes, max_requests).filter(|_| new_pack) {
                report.stopped = Some(why);
                break;
            }
            fetched.insert(c.object);
            if let Some(n) = pending.get_mut(&c.object) {
                *n = n.saturating_sub(1);
            }
            match packs.message(store, c, &chunks[i..]) {
                Ok(message) => {
                    batch_bytes += message.len() as u64;
                    file.messages.push((i, c.clone(), message));
                }
                Err(e) => {
                    damaged.insert(c.object);
                    file.failure.get_or_insert_with(|| (i, e.to_string()));
                    // The file's other chunks are checked too (a damaged or missing pack
                    // fails again at once), unless the target may be unreachable.
                    if e.is_retryable() {
                        break;
                    }
                }
            }
        }
        if report.stopped.is_some() && file.failure.is_none() {
            report.files_unchecked += 1; // stopped inside this file
            continue;
        }
        batch.push(file);
    }
    report.recovered = packs.recovered().to_vec();
    report.frozen = packs.frozen();
    // A recovered pack is not covered: it is found again until the target is repaired.
    damaged.extend(
        report
            .recovered
            .iter()
            .filter_map(|r| crate::gc::data_key(&r.object.as_str().into())),
    );
    report.packs_checked = fetched.len() as u64;
    report.bytes_fetched = packs.bytes_read();
    report.requests = packs.requests();
    if chosen.is_none() {
        report.packs = report.packs_checked;
    }
    if let (Some(s), Some(set)) = (sample, chosen) {
        // Only packs that checked out count as covered: a damaged one is found again.
        let good: Vec<ObjectKey> = set
            .into_iter()
            // Chosen but never fetched (only a failed file needed it): not checked.
            .filter(|k| fetched.contains(k) && !damaged.contains(k))
            .filter(|k| report.stopped.is_none() || pending.get(k) == Some(&0))
            .collect();
        s.coverage.record(&good)?;
        let mut covered = 0;
        for k in &run_packs {
            covered += u64::from(s.coverage.covered(k)?);
        }
        report.packs_covered = Some(covered);
    }
    progress.done();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Files checked together, at most (or their fetched messages' bytes).
const BATCH_FILES: usize = 256;
const BATCH_BYTES: u64 = 16 << 20;

/// A file's fetched chunk messages, waiting to be checked.
struct Fetched {
    path: Vec<u8>,
    size: u64,
    hash: ChunkHash,
    /// Each fetched chunk: its place in the file, itself, its message.
    messages: Vec<(usize, ChunkRef, bytes::Bytes)>,
    /// Where and why it failed already (the first chunk that could not be fetched).
    failure: Option<(usize, String)>,
    /// Whether a sample left some of its chunks out (then its whole hash is not checked).
    partial: bool,
}

/// What checking a file's messages found.
struct Checked {
    /// Chunks that checked out, and their plaintext bytes.
    chunks: u64,
    bytes: u64,
    /// Where and why (the first chunk that failed its check).
    failure: Option<(usize, String)>,
    /// The packs of the chunks that failed.
    damaged: Vec<ObjectKey>,
}

/// Decrypts and checks each of `f`'s fetched chunks (all of them, so that every pack a
/// damaged chunk is in is named, and no fetched pack passes unchecked), and, for a whole
/// file that checked out, its size and BLAKE3. The first failure is the file's.
fn check(decryptor: &Decryptor, f: &Fetched) -> Checked {
    let mut out = Checked {
        chunks: 0,
        bytes: 0,
        failure: None,
        damaged: Vec::new(),
    };
    let mut whole = blake3::Hasher::new();
    for (i, c, message) in &f.messages {
        match open_chunk(decryptor, c, message) {
            Ok(data) => {
                whole.update(&data);
                out.bytes += data.len() as u64;
                out.chunks += 1;
            }
            Err(e) => {
                out.failure.get_or_insert_with(|| (*i, e.to_string()));
                out.damaged.push(c.object);
            }
        }
    }
    if f.failure.is_some() || out.failure.is_some() {
        return out;
    }
    if !f.partial && (out.bytes != f.size || ChunkHash(*whole.finalize().as_bytes()) != f.hash) {
        out.failure = Some((0, "its content does not match its recorded BLAKE3".into()));
    }
    out
}

/// Which limit, if any, the fetches so far have reached.
fn limit_reached(
    packs: &PackCache,
    max_bytes: Option<u64>,
    max_requests: Option<u64>,
) -> Option<String> {
    if let Some(m) = max_bytes.filter(|&m| packs.bytes_read() >= m) {
        return Some(format!("--max-bytes {m} reached"));
    }
    max_requests
        .filter(|&m| packs.requests() >= m)
        .map(|m| format!("--max-requests {m} reached"))
}

/// What `verify --against` found: a run compared with a tree on this machine.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct AgainstReport {
    /// The run compared.
    pub run: String,
    /// The run's entries.
    pub entries: u64,
    /// Those that are the same here (type, content, link target, mode, owner, mtime).
    pub same: u64,
    /// Entries that differ, are missing here, or are here but not in the run.
    pub differences: u64,
    /// Each difference (the first 1000), with the path.
    pub problems: Vec<Problem>,
    /// Seconds.
    pub elapsed_secs: f64,
}

impl AgainstReport {
    /// Whether the tree is what the run holds.
    pub fn clean(&self) -> bool {
        self.differences == 0
    }

    fn differs(&mut self, path: &[u8], what: String) {
        self.differences += 1;
        if self.problems.len() < MAX_NAMED {
            self.problems.push(Problem::at(path, what));
        }
    }
}

/// Compares the run `source` names with the tree at `root`, as duplicity's verify does:
/// every entry's type, content (its BLAKE3, read here), link target, mode, owner and
/// mtime (symbolic links: type and target only), and what is here but not in the run.
/// Only the metafile is read from the target. The run's paths go into a temporary set in
/// `tmp_dir`, so memory stays bounded.
///
/// # Errors
///
/// What stops a restore before it writes (no such run, a metafile that fails its check,
/// a wrong key), or `root` that cannot be walked. Differences are not errors.
pub fn verify_against(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    root: &std::path::Path,
    tmp_dir: &std::path::Path,
    trust: &crate::runs::Trust,
    progress: &dyn Progress,
) -> Result<AgainstReport> {
    use std::os::unix::ffi::OsStrExt;
    let started = Instant::now();
    let mut opts = RestoreOptions::new(".");
    opts.trust = trust.clone();
    let (metafile, checked) = fetch_and_check(store, source, decryptor, &opts, progress)?;
    let mut report = AgainstReport {
        run: checked.run.clone(),
        ..Default::default()
    };
    progress.phase(
        &format!("compare {} with {}", checked.run, root.display()),
        None,
    );
    std::fs::create_dir_all(tmp_dir).map_err(|e| Error::io(tmp_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("against-")
        .suffix(".sqlite")
        .tempfile_in(tmp_dir)
        .map_err(|e| Error::io(tmp_dir, e))?;
    let mut seen = crate::keyset::PathSet::create(tmp.path())?;
    let local = |rel: &[u8]| {
        if rel == b"." {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(rel))
        }
    };
    let mut listing = metafile.open(decryptor)?;
    while let Some(e) = listing.next_entry()? {
        report.entries += 1;
        seen.insert(&e.path)?;
        match compare(&e, &local(&e.path), &local, progress) {
            None => report.same += 1,
            Some(what) => report.differs(&e.path, what),
        }
    }
    let rules = crate::source::IgnoreRules::new(&[])?;
    for item in crate::source::walk(root, false, rules)? {
        match item {
            Ok(item) if !seen.contains(&item.rel)? => {
                report.differs(&item.rel, "is here but not in the run".into())
            }
            Ok(_) => {}
            Err(skipped) => report.differs(
                &skipped.rel,
                format!("cannot be compared: {}", skipped.error),
            ),
        }
    }
    progress.done();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// How the entry `e` differs from what is at `here`, if it does.
fn compare(
    e: &crate::format::metafile::Entry,
    here: &std::path::Path,
    local: &dyn Fn(&[u8]) -> std::path::PathBuf,
    progress: &dyn Progress,
) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = match std::fs::symlink_metadata(here) {
        Ok(m) => m,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Some("is in the run but missing here".into())
        }
        Err(err) => return Some(format!("cannot be compared: {err}")),
    };
    let t = m.file_type();
    let (want, is) = match &e.kind {
        Kind::Dir => ("a directory", t.is_dir()),
        Kind::File { .. } | Kind::Hardlink { .. } => ("a file", t.is_file()),
        Kind::Symlink { .. } => ("a symbolic link", t.is_symlink()),
        Kind::Fifo => ("a fifo", t.is_fifo()),
        Kind::CharDev { .. } => ("a character device", t.is_char_device()),
        Kind::BlockDev { .. } => ("a block device", t.is_block_device()),
    };
    if !is {
        return Some(format!("is {want} in the run, not here"));
    }
    match &e.kind {
        Kind::File { size, hash, .. } => {
            if m.len() != *size {
                return Some(format!(
                    "content differs: {} bytes here, {size} in the run",
                    m.len()
                ));
            }
            match hash_file(here, progress) {
                Ok(h) if h == *hash => {}
                Ok(_) => return Some("content differs (same size, another BLAKE3)".into()),
                Err(err) => return Some(format!("cannot be read here: {err}")),
            }
        }
        Kind::Hardlink { target } => {
            let same = std::fs::symlink_metadata(local(target))
                .is_ok_and(|t| t.ino() == m.ino() && t.dev() == m.dev());
            return (!same)
                .then(|| format!("is not a hard link to {} here", crate::text::escape(target)));
        }
        Kind::Symlink { target } => {
            let here_target = std::fs::read_link(here).ok();
            let here_target = here_target.as_ref().map(|p| p.as_os_str().as_bytes());
            return (here_target != Some(target.as_slice())).then(|| {
                format!(
                    "links to {} here, to {} in the run",
                    here_target.map_or_else(|| "?".into(), crate::text::escape),
                    crate::text::escape(target)
                )
            });
        }
        Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
            let rdev = m.rdev();
            let (ma, mi) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            if (ma, mi) != (*major, *minor) {
                return Some(format!("device {ma}:{mi} here, {major}:{minor} in the run"));
            }
        }
        Kind::Dir | Kind::Fifo => {}
    }
    let meta = &e.meta;
    let mode = m.mode() & 0o7777;
    if mode != meta.mode {
        return Some(format!(
            "mode {mode:04o} here, {:04o} in the run",
            meta.mode
        ));
    }
    if (m.uid(), m.gid()) != (meta.uid, meta.gid) {
        return Some(format!(
            "owner {}:{} here, {}:{} in the run",
            m.uid(),
            m.gid(),
            meta.uid,
            meta.gid
        ));
    }
    if (m.mtime(), m.mtime_nsec()) != (meta.mtime, i64::from(meta.mtime_nsec)) {
        return Some(format!(
            "mtime {}.{:09} here, {}.{:09} in the run",
            m.mtime(),
            m.mtime_nsec(),
            meta.mtime,
            meta.mtime_nsec
        ));
    }
    None
}

/// BLAKE3 of a local file's content, streamed.
fn hash_file(path: &std::path::Path, progress: &dyn Progress) -> std::io::Result<ChunkHash> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(ChunkHash(*hasher.finalize().as_bytes()));
        }
        hasher.update(&buf[..n]);
        progress.bytes(n as u64);
    }
}
