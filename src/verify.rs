//! `verify`. `--data` (with the key: every chunk of a run decrypted and checked, nothing
//! written) is [`verify_data`], and `--against` (a run compared with a tree here) is
//! [`verify_against`], next to restore whose checks they make.
//!
//! `verify --storage`: what can be checked of a target without a key, with a read-only
//! credential (the monitoring machine's, say). docs/FORMAT.md section 6.1 describes it.
//!
//! - every run's keyless checks ([`crate::runs::check`]: its object list's header, its
//!   metafile's size, pieces and framing); a run that fails them is named;
//! - every object a run's object list names is on the target, and no data object has an
//!   implausible size (from the listing: no object is read for this);
//! - with `read_data`, every data object's bytes hash to its name (BLAKE3), and every
//!   metafile hashes to the digest its object list records; each object is read once.
//!
//! - signatures where signers are trusted, and every host's and source's chain
//!   ([`crate::chain`]): deleted, forked, swapped and restarted chains are findings, and
//!   so is a rollback against what the last check saw, when a state directory is given.
//!
//! Memory stays bounded: the referenced keys go into a temporary key set
//! (src/keyset.rs), the listing and each object are streamed.

use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::keyset::Coverage;
pub use crate::restore::{
    verify_against, verify_data, AgainstReport, DataOptions, DataReport, Sample,
};

use crate::error::{Error, Result};
use crate::ids::{ChunkHash, ObjectKey, RunId};
use crate::keyset::{name_missing, KeySet};
use crate::progress::Progress;
use crate::store::{run_path, Reader, Recovery};

/// Data objects listed per page.
const PAGE: usize = 1000;
/// At most this many findings of one kind are reported (the counts are complete).
const MAX_FINDINGS: usize = 1000;
/// The smallest stored pack: one OpenPGP message (a PKESK packet, an SEIPD packet with
/// its prefix, a literal packet and the MDC) is larger than this.
pub const MIN_OBJECT_BYTES: u64 = 64;

/// How `verify --storage` runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Read every data object and metafile and hash it (downloads the whole target).
    pub read_data: bool,
    /// Where the temporary key set goes.
    pub tmp_dir: PathBuf,
    /// Whose signatures runs must carry.
    pub trust: crate::runs::Trust,
    /// Where the newest run each check saw is kept (`None`: rollbacks are not looked
    /// for).
    pub state_dir: Option<PathBuf>,
    /// The target's URL (what [`crate::chain::Seen`] keys its records by).
    pub url: String,
}

impl VerifyOptions {
    /// Checks from the listing only, with the key set in `tmp_dir`.
    pub fn new(tmp_dir: impl Into<PathBuf>) -> Self {
        VerifyOptions {
            read_data: false,
            tmp_dir: tmp_dir.into(),
            trust: crate::runs::Trust::none(),
            state_dir: None,
            url: String::new(),
        }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// `run` (a run failed its keyless checks, its signature included), `list` (an
    /// object list cannot be read whole), `missing` (a referenced object is not there),
    /// `size` (an object's size cannot be a pack's), `hash` (an object's bytes do not
    /// hash to its name), `metafile` (a metafile does not hash to what its object list
    /// records), the chain's `deleted`, `fork`, `swapped`, `restart` and `rollback`
    /// ([`crate::chain::Kind`]), `record` (a record prune left is malformed).
    pub kind: &'static str,
    /// The object concerned, if one is (`data/xx/…` or a run's key).
    pub object: Option<String>,
    /// The runs concerned: `host/source/run`.
    pub runs: Vec<String>,
    /// What is wrong, and what to do where there is something to do.
    pub message: String,
}

/// What `verify --storage` found.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The target's name.
    pub target: String,
    /// Whether the data objects and metafiles were read and hashed.
    pub read_data: bool,
    /// Runs on the target.
    pub runs: u64,
    /// Runs that passed every check made.
    pub runs_ok: u64,
    /// Data objects listed.
    pub objects: u64,
    /// Their bytes, as the listing reports them.
    pub bytes: u64,
    /// Distinct objects the runs reference.
    pub objects_referenced: u64,
    /// Objects under `data/` whose names are not coffer's (left alone).
    pub objects_foreign: u64,
    /// Bytes read and hashed (with `read_data`).
    pub bytes_read: u64,
    /// What is wrong; empty when everything checked out.
    pub findings: Vec<Finding>,
    /// Findings not listed (beyond the first 1000 of a kind).
    pub findings_more: u64,
    /// Seconds.
    pub elapsed_secs: f64,
    /// The requests made of the target.
    pub requests: crate::store::Requests,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
    pub fn clean(&self) -> bool {
        self.findings.is_empty() && self.findings_more == 0
    }

    fn found(&mut self, f: Finding) {
        if self.findings.iter().filter(|g| g.kind == f.kind).count() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.findings_more += 1;
        }
    }
}

/// Checks a target without a key: see the module documentation.
///
/// # Errors
///
/// The target cannot be listed or read (a credential without the right, a dropped
/// connection), or the temporary key set fails. What is wrong with the stored data is
/// not an error: it is a [`Finding`].
pub fn verify_storage(
    store: &Reader,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let started = std::time::Instant::now();
    let mut report = VerifyReport {
        target: store.name().to_string(),
        read_data: opts.read_data,
        ..Default::default()
    };
    progress.phase("checking the runs", None);
    let history = crate::chain::history(store, &opts.trust, |_, _| true)?;
    let runs = history.runs;
    report.runs = runs.len() as u64;
    let mut chain_findings = history.findings;
    if let Some(dir) = &opts.state_dir {
        let mut seen = crate::chain::Seen::open(dir)?;
        chain_findings.extend(seen.check(&opts.url, &runs, &history.tombstones)?);
    }
    for f in chain_findings {
        report.found(Finding {
            kind: f.kind.word(),
            object: None,
            runs: f
                .runs
                .iter()
                .map(|r| format!("{}/{}/{r}", f.host, f.source))
                .collect(),
            message: f.message,
        });
    }
    for p in history.problems {
        report.found(Finding {
            kind: "record",
            object: None,
            runs: Vec::new(),
            message: p,
        });
    }

    std::fs::create_dir_all(&opts.tmp_dir).map_err(|e| Error::io(&opts.tmp_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("verify-")
        .suffix(".sqlite")
        .tempfile_in(&opts.tmp_dir)
        .map_err(|e| Error::io(&opts.tmp_dir, e))?;
    let mut referenced = KeySet::create(tmp.path(), "verify's temporary key set")?;

    // Each run's keyless checks, then its object list into the key set.
    let mut lists = Vec::new();
    let mut bad_runs = std::collections::BTreeSet::new();
    let mut metafiles = Vec::new();
    for run in &runs {
        let name = format!("{}/{}/{}", run.host, run.source, run.id);
        if let Some(reason) = run.status.reason() {
            bad_runs.insert(name.clone());
            report.found(Finding {
                kind: "run",
                object: None,
                runs: vec![name.clone()],
                message: format!("{}: {reason}", run.status.word()),
            });
        }
        let id: RunId = run.id.parse()?;
        if run.refs_bytes.is_none() {
            continue; // named above: a run without its object list is damaged
        }
        let path = run_path(&run.host, &run.source, &id, "refs");
        match referenced.add(store.stream(&path)?, &format!("object list {path}"))? {
            Ok(header) => {
                if let Some(m) = header.metafile {
                    metafiles.push((run, name.clone(), m));
                }
            }
            Err(e) => {
                bad_runs.insert(name.clone());
                report.found(Finding {
                    kind: "list",
                    object: Some(path.to_string()),
                    runs: vec![name.clone()],
                    message: format!("{e}; the objects it names after the damage are not checked"),
                });
            }
        }
        lists.push((name, path));
    }

    // The listing: every data object, its size, and with read_data its bytes.
    progress.phase(
        if opts.read_data {
            "listing and reading the objects"
        } else {
            "listing the objects"
        },
        None,
    );
    // Objects whose size or bytes are wrong, named with their runs below; memory stays
    // bounded: beyond what can be listed, they are only counted.
    let mut wrong: Vec<(ObjectKey, &'static str, String)> = Vec::new();
    let mut note = |report: &mut VerifyReport, item: (ObjectKey, &'static str, String)| {
        if wrong.len() < 2 * MAX_FINDINGS {
            wrong.push(item);
        } else {
            report.findings_more += 1;
        }
    };
    store.list_data(PAGE, |page| {
        for m in page {
            let Some(key) = crate::gc::data_key(&m.location) else {
                report.objects_foreign += 1;
                continue;
            };
            report.objects += 1;
            report.bytes += m.size;
            if referenced.contains(&key)? {
                report.objects_referenced += 1;
            }
            if m.size < MIN_OBJECT_BYTES {
                note(
                    &mut report,
                    (
                        key,
                        "size",
                        format!(
                            "{} is {} bytes, smaller than any pack: it was truncated or \
                         replaced",
                            m.location, m.size
                        ),
                    ),
                );
            } else if opts.read_data {
                let (hash, n) = hash_stream(store.stream(&m.location)?, m.location.to_string())?;
                report.bytes_read += n;
                if hash != key.0 {
                    let recovery = match store.recover(&key)? {
                        Recovery::Found(r) => {
                            report.bytes_read += r.fetched;
                            r.advice("")
                        }
                        Recovery::NotFound(why) => why,
                    };
                    note(
                        &mut report,
                        (
                            key,
                            "hash",
                            format!(
                                "{}: its bytes do not hash to its name (BLAKE3 {}): \
                                     it was damaged or overwritten; {recovery}",
                                m.location,
                                ChunkHash(hash).to_hex()
                            ),
                        ),
                    );
                }
            }
            progress.bytes(m.size);
        }
        Ok(())
    })?;

    // Referenced objects that are not there, and wrong ones, with the runs they break.
    let (missing, more) = referenced.unseen(MAX_FINDINGS)?;
    report.findings_more += u64::from(more);
    report.objects_referenced += missing.len() as u64;
    for m in name_missing(store, lists.iter().cloned(), &missing)? {
        bad_runs.extend(m.runs.iter().cloned());
        report.found(Finding {
            kind: "missing",
            message: format!(
                "{} is referenced but not on the target: those runs cannot restore the \
                 files in it; back up again from their hosts with `coffer backup \
                 --forget-cache`",
                m.object
            ),
            object: Some(m.object),
            runs: m.runs,
        });
    }
    if !wrong.is_empty() {
        let keys: Vec<ObjectKey> = wrong.iter().map(|(k, _, _)| *k).collect();
        let named = name_missing(store, lists.iter().cloned(), &keys)?;
        for ((_, kind, message), m) in wrong.into_iter().zip(named) {
            bad_runs.extend(m.runs.iter().cloned());
            report.found(Finding {
                kind,
                object: Some(m.object),
                runs: m.runs,
                message,
            });
        }
    }

    // With read_data, every metafile against the digest its object list records.
    if opts.read_data {
        progress.phase("reading the metafiles", None);
        for (run, name, digest) in metafiles {
            let (hash, n) = hash_stream(
                store.metafile_reader(run)?,
                format!("metafile of run {name}"),
            )?;
            report.bytes_read += n;
            if hash != digest.hash.0 || n != digest.bytes {
                bad_runs.insert(name.clone());
                report.found(Finding {
                    kind: "metafile",
                    object: Some(
                        run_path(&run.host, &run.source, &run.id.parse()?, "meta").to_string(),
                    ),
                    runs: vec![name],
                    message: format!(
                        "the metafile ({n} bytes) does not hash to what its object list \
                         records ({} bytes, BLAKE3 {}): it was damaged or replaced",
                        digest.bytes,
                        digest.hash.to_hex()
                    ),
                });
            }
        }
    }
    report.runs_ok = report.runs.saturating_sub(bad_runs.len() as u64);
    progress.done();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.requests = store.requests();
    Ok(report)
}

/// BLAKE3 of what `reader` yields, streamed, and how many bytes it yielded; `what` names
/// it in an error.
fn hash_stream(reader: impl Read, what: String) -> Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(reader)
        .map_err(|e| Error::io(what, e))?;
    Ok((*hasher.finalize().as_bytes(), hasher.count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_capped_per_kind_and_counted() {
        let mut r = VerifyReport::default();
        assert!(r.clean());
        for i in 0..MAX_FINDINGS + 5 {
            r.found(Finding {
                kind: "missing",
                object: Some(format!("o{i}")),
                runs: vec![],
                message: String::new(),
            });
        }
        r.found(Finding {
            kind: "hash",
            object: None,
            runs: vec![],
            message: String::new(),
        });
        assert_eq!(r.findings.len(), MAX_FINDINGS + 1);
        assert_eq!(r.findings_more, 5);
        assert!(!r.clean());
    }
}
