//! S3 Object Lock for the runs prune keeps, per retention tier. Needs no key.
//!
//! A host locks what it stores for `object_lock_retention` (R) from the backup's start,
//! the same for every object: it cannot know which runs the rules will keep, nor for
//! how long. After a prune, the admin side does know. For every kept run that passed the
//! checks, its objects (the metafile's pieces, the object list and its signature) and
//! every pack its object list names must stay locked
//!
//! - until its calendar rules stop keeping it if backups go on
//!   ([`crate::retention::Decision::until`]: a run kept as `monthly 12` until twelve
//!   months after its month began, one kept only as `daily 7` for about a week), and
//! - at least R/2 past this prune, whatever keeps it (`newest` and `last` have no date:
//!   their runs are kept for as long as they are kept, prune after prune).
//!
//! An object whose lock ends sooner is extended to the later of its tier's end and R
//! past now, so an object is touched about once every R/2 and not at every prune. A pack
//! several runs share gets the latest of what they need. A lock is never shortened, and
//! one in COMPLIANCE mode stays so. Runs kept because they failed the checks (a run a
//! broken-into host planted, say) are not locked: nothing would remove a lock an
//! attacker made someone extend.
//!
//! What it costs: one HEAD per object of every kept run at each prune, and one
//! PutObjectRetention per object about every R/2. The admin's credential needs
//! s3:GetObjectRetention (without it S3 leaves the lock out of a HEAD, and every object
//! is extended at every prune) and s3:PutObjectRetention.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::ObjectLock;
use crate::error::{Error, Result};
use crate::format::refs;
use crate::ids::{ObjectKey, RunId};
use crate::progress::Progress;
use crate::prune::PruneReport;
use crate::store::{data_path, piece_path, run_path, Admin, LockOutcome, LockWork};

/// Problems named at most; the rest are counted.
const PROBLEMS_NAMED: usize = 20;

/// What extending the locks did (or would do, in a dry run).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct LockStats {
    /// Whether nothing was changed on purpose.
    pub dry_run: bool,
    /// The mode new locks are set in.
    pub mode: String,
    /// Kept runs whose objects were checked.
    pub runs: u64,
    /// Objects checked (each a HEAD).
    pub objects: u64,
    /// Objects whose lock was extended (each a PutObjectRetention).
    pub extended: u64,
    /// Objects locked long enough already.
    pub enough: u64,
    /// Objects a kept run needs that are not there.
    pub missing: u64,
    /// The latest date a lock was extended to (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    /// What went wrong, object by object (at most 20 named).
    pub problems: Vec<String>,
}

/// What one object needs: locked until at least `need`; when extended, until `set`.
#[derive(Debug, Clone, Copy)]
struct Need {
    need: DateTime<Utc>,
    set: DateTime<Utc>,
}

impl Need {
    fn merge(&mut self, other: Need) {
        self.need = self.need.max(other.need);
        self.set = self.set.max(other.set);
    }
}

/// Extends the locks of what the kept runs of `report` need (see the module's
/// documentation), reading their object lists; `now` is when the prune started.
///
/// # Errors
///
/// An object list that cannot be read, the credential refusing, a target without S3's
/// Object Lock calls. Problems with single objects are in [`LockStats::problems`].
pub fn extend(
    store: &Admin,
    report: &PruneReport,
    lock: &ObjectLock,
    now: DateTime<Utc>,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<LockStats> {
    let r = TimeDelta::from_std(lock.retention)
        .map_err(|_| Error::Usage("object_lock_retention is too long".into()))?;
    let floor = |d: TimeDelta| {
        now.checked_add_signed(d)
            .ok_or_else(|| Error::Usage("object_lock_retention is too long".into()))
    };
    let (half, full) = (floor(r / 2)?, floor(r)?);
    let mut stats = LockStats {
        dry_run,
        mode: lock.mode().into(),
        ..Default::default()
    };
    let kept: Vec<_> = report
        .groups
        .iter()
        .flat_map(|g| &g.runs)
        .filter(|i| i.keep && i.counted)
        .collect();
    progress.phase(
        "reading the kept runs' object lists",
        Some(kept.len() as u64),
    );
    let mut own: Vec<(object_store::path::Path, Need)> = Vec::new();
    let mut packs: HashMap<ObjectKey, Need> = HashMap::new();
    for item in kept {
        let id: RunId = item.run.parse()?;
        let need = Need {
            need: item.until.map_or(half, |u| u.max(half)),
            set: item.until.map_or(full, |u| u.max(full)),
        };
        for n in 1..=item.pieces.max(1) {
            own.push((piece_path(&item.host, &item.source, &id, n), need));
        }
        let list = run_path(&item.host, &item.source, &id, "refs");
        own.push((list.clone(), need));
        // Only runs from a host with a signing key have one.
        if item.has_sig {
            own.push((run_path(&item.host, &item.source, &id, "refs.sig"), need));
        }
        let what = format!(
            "object list of run {}/{}/{}",
            item.host, item.source, item.run
        );
        let read = refs::read_each(store.stream(&list)?, &what, |key| {
            packs
                .entry(key)
                .and_modify(|n| n.merge(need))
                .or_insert(need);
            Ok(())
        });
        match read {
            Ok(_) => {}
            // A damaged list (not a failed request): what was read before the damage is
            // locked, the rest is named, and the others go on.
            Err(e @ Error::Corrupt { .. }) => stats.problems.push(format!(
                "{e}; the packs it lists before the damage are locked, any after it are not"
            )),
            Err(e) => return Err(e),
        }
        stats.runs += 1;
        progress.bytes(1);
    }
    let work: Vec<LockWork> = own
        .into_iter()
        .chain(packs.into_iter().map(|(k, n)| (data_path(&k), n)))
        .map(|(path, n)| LockWork {
            path,
            need: n.need,
            set: n.set,
        })
        .collect();
    progress.phase(
        if dry_run {
            "checking Object Lock (dry run)"
        } else {
            "extending Object Lock"
        },
        Some(work.len() as u64),
    );
    let mut latest: Option<DateTime<Utc>> = None;
    let mut unnamed = 0u64;
    store.extend_locks(work, lock.compliance, dry_run, |w, outcome| {
        progress.bytes(1);
        let problem = match outcome {
            Ok(LockOutcome::Enough) => {
                stats.objects += 1;
                stats.enough += 1;
                None
            }
            Ok(LockOutcome::Extended) => {
                stats.objects += 1;
                stats.extended += 1;
                latest = latest.max(Some(w.set));
                None
            }
            Ok(LockOutcome::Missing) => {
                stats.objects += 1;
                stats.missing += 1;
                Some(format!(
                    "{} is missing: a kept run needs it (`coffer gc` names the runs)",
                    w.path
                ))
            }
            Err(e) => {
                stats.objects += 1;
                Some(format!("could not extend its lock: {e}"))
            }
        };
        if let Some(p) = problem {
            if stats.problems.len() < PROBLEMS_NAMED {
                stats.problems.push(p);
            } else {
                unnamed += 1;
            }
        }
    })?;
    if unnamed > 0 {
        stats
            .problems
            .push(format!("and {unnamed} more objects with problems"));
    }
    stats.latest = latest.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    progress.done();
    Ok(stats)
}
