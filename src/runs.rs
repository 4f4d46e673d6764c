//! Which runs on a target count as backups, decided without a key.
//!
//! Anyone who can write to a target (a broken-into host with its put-only credential,
//! say) can store objects under any run's name. So the run id's time is only a claim:
//! runs are ordered and dated by when the target stored their metafile, which a put-only
//! credential cannot forge, and a run is checked against its own object list before it
//! may count as "the newest" or toward retention:
//!
//! - from the listing alone (`from_listing`): its object list exists; its metafile's
//!   pieces are all there; the time it claims lies between [`CLOCK_TOLERANCE`] after and
//!   the longest valid `max_run_time` plus that tolerance before the time the target
//!   stored it;
//! - reading its object list, its signature if it has one, and the start of its metafile
//!   ([`check`], two or three small requests): the list is well formed and names this
//!   run, its settings are ones a valid config could have made, the claimed time fits the
//!   run's own `max_run_time`, the metafile's stored size and piece count are what the
//!   list records, the signature is good where signers are trusted ([`Trust`]), and the
//!   metafile starts as an encrypted message (PKESK packets, then an SEIPD packet);
//! - [`crate::chain`] walks the chains of the runs that pass;
//! - `coffer verify --storage` hashes the whole metafile against the list.
//!
//! A run that fails is [`RunStatus::Suspicious`] (it may have been planted) or
//! [`RunStatus::Damaged`] (it cannot be restored whole); either way it never counts as
//! newest, never counts toward keep rules, and prune keeps it for a person to look at.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::crypto::{Signers, Verdict, MAX_SIGNATURE_BYTES};
use crate::format::refs::{self, MAX_MAX_RUN_TIME};
use crate::ids::RunId;
use crate::retention::humantime;
use crate::store::{piece_path, run_path, Reader, RunInfo, RunObject};

/// How far the clocks of the hosts and the target may disagree.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(86_400);
/// How much of a metafile's start is read to check its framing.
const FRAMING_PREFIX: u64 = 16 << 10;
/// How much of an object list is read for its header.
const REFS_HEADER_PREFIX: u64 = 64 << 10;

/// What a keyless reader can tell of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum RunStatus {
    /// Nothing wrong was found.
    Ok,
    /// It may have been planted or tampered with: its claims disagree with the target.
    Suspicious(String),
    /// It cannot be restored whole: something it needs is missing or malformed.
    Damaged(String),
}

impl RunStatus {
    /// Whether the run counts as a backup.
    pub fn is_ok(&self) -> bool {
        matches!(self, RunStatus::Ok)
    }

    /// A word for tables: `ok`, `suspicious`, `damaged`.
    pub fn word(&self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Suspicious(_) => "suspicious",
            RunStatus::Damaged(_) => "damaged",
        }
    }

    /// The reason, if not ok.
    pub fn reason(&self) -> Option<&str> {
        match self {
            RunStatus::Ok => None,
            RunStatus::Suspicious(r) | RunStatus::Damaged(r) => Some(r),
        }
    }
}

fn to_std(d: chrono::TimeDelta) -> Duration {
    d.to_std().unwrap_or(Duration::MAX)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Checks the run's claimed start time against when the target stored it, allowing a
/// run to take `max_run_time`.
fn time_check(claimed: DateTime<Utc>, stored: DateTime<Utc>, max_run_time: Duration) -> RunStatus {
    if claimed > stored && to_std(claimed - stored) > CLOCK_TOLERANCE {
        return RunStatus::Suspicious(format!(
            "its id claims it started at {}, {} after the target stored it ({}): a clock \
             far ahead, or a planted run",
            rfc3339(claimed),
            humantime(Duration::from_secs(to_std(claimed - stored).as_secs())),
            rfc3339(stored)
        ));
    }
    let allowed = max_run_time.saturating_add(CLOCK_TOLERANCE);
    if stored > claimed && to_std(stored - claimed) > allowed {
        return RunStatus::Suspicious(format!(
            "its id claims it started at {}, {} before the target stored it ({}), longer \
             than its max_run_time allows: a back-dated or copied run",
            rfc3339(claimed),
            humantime(Duration::from_secs(to_std(stored - claimed).as_secs())),
            rfc3339(stored)
        ));
    }
    RunStatus::Ok
}

/// A run from its listed objects (one run's metafile pieces and object list); `None`
/// if it has no metafile (a run not committed: not a run).
pub(crate) fn from_listing(objects: Vec<RunObject>) -> Option<RunInfo> {
    let mut pieces: Vec<(u32, u64)> = Vec::new();
    let mut first: Option<&RunObject> = None;
    let mut refs_bytes = None;
    let mut sig_bytes = None;
    for o in &objects {
        match (o.ext.as_str(), o.piece) {
            ("meta", 1) => first = Some(o),
            ("refs", _) => refs_bytes = Some(o.size),
            ("sig", _) => sig_bytes = Some(o.size),
            _ => {}
        }
        if o.ext == "meta" {
            pieces.push((o.piece, o.size));
        }
    }
    let first = first?;
    pieces.sort();
    let claimed = first.id.time()?;
    let stored = first.last_modified;
    let contiguous = pieces
        .iter()
        .enumerate()
        .all(|(i, (n, _))| *n as usize == i + 1);
    let status = if refs_bytes.is_none() {
        RunStatus::Damaged("it has no object list (.refs)".into())
    } else if !contiguous {
        RunStatus::Damaged("pieces of its metafile are missing".into())
    } else if pieces.iter().any(|&(_, size)| size == 0) {
        RunStatus::Damaged("its metafile is empty".into())
    } else {
        time_check(claimed, stored, MAX_MAX_RUN_TIME)
    };
    Some(RunInfo {
        host: first.host.clone(),
        source: first.source.clone(),
        id: first.id.to_string(),
        time: rfc3339(claimed),
        stored: rfc3339(stored),
        metafile_bytes: pieces.iter().map(|(_, s)| s).sum(),
        status,
        stored_at: stored,
        claimed_at: claimed,
        refs_bytes,
        pieces,
        sig_bytes,
        signature: Signature::None,
        chain: None,
        refs_hash: None,
        metafile_digest: None,
        stats: None,
    })
}

/// How many runs are checked at once: the reads are small, so a check of many runs is
/// bound by the round trips, not by bandwidth.
const CHECK_CONCURRENCY: usize = 16;

/// Reads each run's object list, its signature (where it has one) and the start of its
/// metafile (two or three small requests per run, 16 runs at a time)
/// and updates its status; runs found wrong from the listing alone keep their status.
/// Requests that fail (the credential may not read, the target is unreachable) are
/// errors: an unchecked run must not pass as checked.
///
/// # Errors
///
/// The target cannot be read. What is wrong with a run is its status, not an error.
pub fn check(store: &Reader, runs: &mut [RunInfo], trust: &Trust) -> crate::error::Result<()> {
    let todo: Vec<&mut RunInfo> = runs.iter_mut().filter(|r| r.status.is_ok()).collect();
    let workers = todo.len().min(CHECK_CONCURRENCY);
    let queue = std::sync::Mutex::new(todo.into_iter());
    let failed = std::sync::Mutex::new(None);
    let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).next();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(run) = next() {
                    match check_one(store, run, trust) {
                        Ok(status) => run.status = status,
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            // The others stop at their next run.
                            queue
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .by_ref()
                                .for_each(drop);
                            return;
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether, and by whom, a run is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(tag = "state", content = "by", rename_all = "lowercase")]
pub enum Signature {
    /// It has no signature (or it was not looked at).
    #[default]
    None,
    /// It has one, but no signer is trusted for its source, so it was not checked.
    Unchecked,
    /// Made by the trusted certificate with this fingerprint.
    Good(String),
    /// It has one that is not a good signature of a trusted signer.
    Bad(String),
}

impl Signature {
    /// A word for tables: `no`, `unchecked`, `good`, `BAD`.
    pub fn word(&self) -> &'static str {
        match self {
            Signature::None => "no",
            Signature::Unchecked => "unchecked",
            Signature::Good(_) => "good",
            Signature::Bad(_) => "BAD",
        }
    }
}

/// Whose signatures count, per source: what [`check`] requires of runs.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    default: Signers,
    by_source: std::collections::BTreeMap<String, Signers>,
    allow_unsigned: bool,
}

impl Trust {
    /// No signer trusted: runs need no signature (signatures are left unchecked).
    pub fn none() -> Trust {
        Trust::default()
    }

    /// Runs of every source must be signed by one of `signers` (unless they are empty).
    pub fn new(signers: Signers) -> Trust {
        Trust {
            default: signers,
            ..Trust::default()
        }
    }

    /// Runs of `source` must be signed by one of `signers` instead.
    #[must_use]
    pub fn with_source(mut self, source: &str, signers: Signers) -> Trust {
        self.by_source.insert(source.to_string(), signers);
        self
    }

    /// Accepts runs that are unsigned or signed by others (each still shows its
    /// [`Signature`]): `--allow-unsigned`.
    #[must_use]
    pub fn allow_unsigned(mut self, allow: bool) -> Trust {
        self.allow_unsigned = allow;
        self
    }

    fn signers(&self, source: &str) -> &Signers {
        self.by_source.get(source).unwrap_or(&self.default)
    }

    /// Whom a metafile's own signature must come from: the source's signers, or none
    /// (signatures only parsed) with `--allow-unsigned`.
    pub(crate) fn metafile_signers(&self, source: &str) -> Signers {
        if self.allow_unsigned {
            Signers::default()
        } else {
            self.signers(source).clone()
        }
    }

    /// Whether runs of `source` must be signed (and `--allow-unsigned` was not given).
    pub fn requires(&self, source: &str) -> bool {
        !self.allow_unsigned && !self.signers(source).is_empty()
    }
}

/// The largest object list read whole (about four million packs, 64 TiB at the default
/// pack size): a longer one is damaged or planted.
pub const MAX_REFS_BYTES: u64 = 256 << 20;

fn check_one(store: &Reader, run: &mut RunInfo, trust: &Trust) -> crate::error::Result<RunStatus> {
    let id: RunId = run.id.parse()?;
    let refs_path = run_path(&run.host, &run.source, &id, "refs");
    // The list is read whole in one request (a chained or signed list is needed whole:
    // its digest links the next run to it, and the signature covers all of it); only
    // one larger than any run needs is read no further than its header.
    let refs_bytes = run.refs_bytes.unwrap_or(0);
    let head = store.get_range(
        &refs_path,
        0..if refs_bytes > MAX_REFS_BYTES {
            REFS_HEADER_PREFIX
        } else {
            refs_bytes
        },
    )?;
    let header = match refs::read_header(&head[..], &format!("object list {refs_path}")) {
        Ok(h) => h,
        Err(e) => {
            return Ok(RunStatus::Damaged(format!(
                "its object list is malformed: {e}"
            )))
        }
    };
    if !header.bounds.plausible() {
        return Ok(RunStatus::Suspicious(format!(
            "its object list records dedup_max_age {} and max_run_time {}, more than any \
             valid config allows",
            humantime(header.bounds.dedup_max_age),
            humantime(header.bounds.max_run_time)
        )));
    }
    let timing = time_check(run.claimed_at, run.stored_at, header.bounds.max_run_time);
    if !timing.is_ok() {
        return Ok(timing);
    }
    if let Some(name) = &header.name {
        if (name.run.as_str(), name.host.as_str(), name.source.as_str())
            != (run.id.as_str(), run.host.as_str(), run.source.as_str())
        {
            return Ok(RunStatus::Suspicious(format!(
                "its object list names run {}/{}/{}: it was copied or planted",
                name.host, name.source, name.run
            )));
        }
    }
    if let Some(m) = &header.metafile {
        if m.bytes != run.metafile_bytes || m.pieces as usize != run.pieces.len() {
            return Ok(RunStatus::Damaged(format!(
                "its metafile is {} bytes in {} pieces, but its object list records {} \
                 bytes in {}: truncated or replaced",
                run.metafile_bytes,
                run.pieces.len(),
                m.bytes,
                m.pieces
            )));
        }
    }
    run.metafile_digest = header.metafile;
    run.stats = header.stats.clone();
    let signers = trust.signers(&run.source);
    if header.chain.is_some() || (run.sig_bytes.is_some() && !signers.is_empty()) {
        if refs_bytes > MAX_REFS_BYTES {
            return Ok(RunStatus::Damaged(format!(
                "its object list is {refs_bytes} bytes, more than any run needs"
            )));
        }
        let whole = head;
        run.refs_hash = Some(crate::ids::ChunkHash::of(&whole));
        run.chain = header.chain.clone();
        run.signature = match run.sig_bytes {
            None => Signature::None,
            Some(_) if signers.is_empty() => Signature::Unchecked,
            Some(n) => {
                let sig_path = run_path(&run.host, &run.source, &id, "refs.sig");
                let sig = store.get_range(&sig_path, 0..n.min(MAX_SIGNATURE_BYTES + 1))?;
                let not_after = std::time::SystemTime::from(run.stored_at) + CLOCK_TOLERANCE;
                match signers.check(&sig, &whole, not_after) {
                    Verdict::Good(fpr) => Signature::Good(fpr),
                    Verdict::Bad(why) => Signature::Bad(why),
                }
            }
        };
    } else if run.sig_bytes.is_some() {
        run.signature = Signature::Unchecked;
    }
    if trust.requires(&run.source) {
        match &run.signature {
            Signature::Good(_) => {}
            Signature::Bad(why) => {
                return Ok(RunStatus::Suspicious(format!(
                    "{why}; runs of source {} must be signed by a trusted signer \
                     (--allow-unsigned accepts it anyway)",
                    run.source
                )))
            }
            _ => {
                return Ok(RunStatus::Suspicious(format!(
                    "it is not signed, but runs of source {} must be signed by a trusted \
                     signer: it may have been forged by someone holding only the public \
                     key (--allow-unsigned accepts it anyway)",
                    run.source
                )))
            }
        }
    }
    let first = piece_path(&run.host, &run.source, &id, 1);
    let size = run.pieces.first().map_or(0, |&(_, s)| s);
    let start = store.get_range(&first, 0..size.min(FRAMING_PREFIX))?;
    if let Err(reason) = crate::crypto::check_framing(&start) {
        return Ok(RunStatus::Damaged(format!(
            "its metafile is not an encrypted message: {reason}"
        )));
    }
    Ok(RunStatus::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn claimed_times_far_from_the_stored_time_are_suspicious() {
        let stored = t("2026-06-01T00:00:00Z");
        let week = Duration::from_secs(7 * 86_400);
        for (claimed, ok) in [
            ("2026-06-01T00:00:00Z", true),
            ("2026-06-01T23:00:00Z", true),  // a clock somewhat ahead
            ("2026-06-02T01:00:00Z", false), // more than a day ahead
            ("2099-12-31T00:00:00Z", false),
            ("2026-05-24T00:00:00Z", true), // a run of 7 days plus a clock behind
            ("2026-05-23T00:00:00Z", false),
            ("1970-01-01T00:00:00Z", false),
        ] {
            assert_eq!(
                time_check(t(claimed), stored, week).is_ok(),
                ok,
                "{claimed}"
            );
        }
    }
}
