//! `gc`: deletes the data objects no committed run references. Needs list, read and
//! delete rights on the target and no key: it reads only the runs' plain object lists.
//!
//! The safety rule (docs/FORMAT.md, "Garbage collection"), in short: an unreferenced
//! object is deleted only if the target stored it more than `grace` before gc started,
//! and `grace` is at least `dedup_max_age + max_run_time` of every backup (each object
//! list records its run's settings). A backup reuses from its local index only objects
//! stored after its dedup horizon or protected by its source's newest run, and does not
//! commit after `max_run_time`; so nothing a running or later backup references can be
//! older than the grace period and unreferenced at once.
//!
//! Memory stays bounded: the referenced keys go into a temporary SQLite file, and the
//! target's listing is streamed in pages.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::refs::Bounds;
use crate::ids::ObjectKey;
pub use crate::keyset::MissingObject;
use crate::keyset::{name_missing, KeySet};
use crate::progress::Progress;
use crate::retention::humantime;
use crate::store::{Admin, RunObject};

/// Objects listed and decided on per page.
const PAGE: usize = 1000;
/// Object lists read at once: each is a round trip.
const LIST_CONCURRENCY: usize = 16;
/// Object lists up to this size are read whole (16 at most in memory); larger ones are
/// streamed, one at a time.
const LIST_READ_WHOLE: u64 = 4 << 20;

/// How gc runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GcOptions {
    /// The grace period asked for; `None` uses the shortest safe one.
    pub grace: Option<Duration>,
    /// The bounds of the config's target section (the hosts' settings, if they share
    /// this config); the object lists add the bounds each run was made with.
    pub bounds: Bounds,
    /// List and count, delete nothing.
    pub dry_run: bool,
    /// Where the temporary SQLite file goes.
    pub tmp_dir: std::path::PathBuf,
    /// The storage class the target's packs are in: an unreferenced pack younger than
    /// the class's minimum storage duration is kept (deleting it would cost the rest of
    /// that duration anyway) unless `early_delete`.
    pub storage_class: Option<crate::config::StorageClass>,
    /// Delete unreferenced packs younger than their class's minimum duration too.
    pub early_delete: bool,
}

impl GcOptions {
    /// Options with the given bounds, temporary directory and defaults otherwise.
    pub fn new(bounds: Bounds, tmp_dir: &Path) -> Self {
        GcOptions {
            grace: None,
            bounds,
            dry_run: false,
            tmp_dir: tmp_dir.to_path_buf(),
            storage_class: None,
            early_delete: false,
        }
    }
}

/// What gc found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcStats {
    /// Target name.
    pub target: String,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// The grace period used, in seconds.
    pub grace_secs: u64,
    /// Committed runs whose objects were kept.
    pub runs: u64,
    /// Data objects referenced by a run, kept.
    pub objects_referenced: u64,
    /// Their bytes.
    pub bytes_referenced: u64,
    /// Unreferenced data objects kept because they are younger than the grace period
    /// (a backup may be about to reference them).
    pub objects_young: u64,
    /// Their bytes.
    pub bytes_young: u64,
    /// Unreferenced packs kept because they are younger than their storage class's
    /// minimum duration (without `early_delete`): deleted by a later gc.
    pub objects_cold_kept: u64,
    /// Their bytes.
    pub bytes_cold_kept: u64,
    /// Unreferenced data objects deleted (or that would be, in a dry run).
    pub objects_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Object lists of runs that never committed (no metafile), older than the grace
    /// period, deleted.
    pub lists_deleted: u64,
    /// Objects under `data/` whose names are not coffer's: never deleted.
    pub objects_foreign: u64,
    /// Runs whose object lists could not be used whole, referenced objects that are
    /// missing, and why (gc went on: what it could read of the lists was kept).
    pub problems: Vec<String>,
    /// Objects some run references that the target does not hold (first 1000), with the
    /// runs they break.
    pub missing: Vec<MissingObject>,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
    /// The requests made of the target.
    pub requests: crate::store::Requests,
}

/// Collects garbage on `store`.
///
/// # Errors
///
/// A `grace` shorter than the backups need ([`Error::Usage`], nothing deleted), a target
/// that cannot be listed, read or deleted from (a credential without the right, a
/// dropped connection), the temporary key set failing. An object list that cannot be
/// used is not an error: it is named in [`GcStats::problems`] and gc keeps going.
pub fn gc(store: &Admin, opts: &GcOptions, progress: &dyn Progress) -> Result<GcStats> {
    let started = std::time::Instant::now();
    let start_time = chrono::Utc::now();
    let mut stats = GcStats {
        target: store.name().to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    progress.phase("reading the runs' object lists", None);
    let listing = store.list_run_listing()?;
    std::fs::create_dir_all(&opts.tmp_dir).map_err(|e| Error::io(&opts.tmp_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("gc-")
        .suffix(".sqlite")
        .tempfile_in(&opts.tmp_dir)
        .map_err(|e| Error::io(&opts.tmp_dir, e))?;
    let mut referenced = KeySet::create(tmp.path(), "gc's temporary key set")?;

    // Every object list: those of committed runs, and of runs that may be committing
    // now (a list without a metafile, younger than the grace period: the metafile comes
    // next). Older lists without a metafile belong to runs that never finished. What the
    // lists say is untrusted (a put-only host can write them): a list that cannot be read
    // whole, or records settings no valid config allows, is reported and gc goes on.
    let mut required = opts.bounds.min_grace();
    let mut stale = Vec::new();
    for group in listing.groups() {
        // A group's object lists are read LIST_CONCURRENCY at a time (each is a round
        // trip), in order, and added to the key set as they come.
        let runs: Vec<RunFiles> = group.run_objects().map(RunFiles::of).collect();
        // Each object list read: what it is (for messages), and its key and size.
        let mut lists: Vec<String> = Vec::new();
        let mut objects = Vec::new();
        for r in &runs {
            let Some(id) = r.id() else {
                continue; // only prune's record of a deleted run
            };
            let name = format!("{}/{}/{id}", group.host, group.source);
            match &r.refs {
                Some(refs) => {
                    lists.push(format!("object list of run {name}"));
                    objects.push((refs.path.clone(), refs.size));
                }
                None if r.committed() => stats.problems.push(format!(
                    "run {name} has a metafile but no object list ({id}.refs): the \
                     objects it needs are unknown and not kept; if it is a genuine run, \
                     put its object list back (a versioned bucket keeps deleted versions)"
                )),
                None => {} // pieces of a run that never got as far as its list
            }
        }
        let mut add = |what: &str, list: &mut dyn std::io::BufRead| -> Result<()> {
            match referenced.add(list, what)? {
                Err(e) => stats.problems.push(format!(
                    "{e}; the objects listed before the damage are kept, any after it are not"
                )),
                Ok(header) if !header.bounds.plausible() => stats.problems.push(format!(
                    "{what} records dedup_max_age {} and max_run_time {}, more than any \
                     valid config allows: ignored for the grace period (its objects are kept)",
                    humantime(header.bounds.dedup_max_age),
                    humantime(header.bounds.max_run_time)
                )),
                Ok(header) => required = required.max(header.bounds.min_grace()),
            }
            Ok(())
        };
        let mut large = Vec::new();
        store.read_small_objects(&objects, LIST_READ_WHOLE, LIST_CONCURRENCY, |k, bytes| {
            match bytes {
                Some(bytes) => add(&lists[k], &mut &bytes[..]),
                None => {
                    large.push(k);
                    Ok(())
                }
            }
        })?;
        for k in large {
            add(&lists[k], &mut store.stream(&objects[k].0)?)?;
        }
        for r in runs {
            if r.id().is_none() {
                continue;
            }
            match (&r.refs, r.committed()) {
                (Some(_), true) => stats.runs += 1,
                (None, true) => {}
                _ => stale.push(r),
            }
        }
    }
    let grace = grace_period(opts.grace, required)?;
    stats.grace_secs = grace.as_secs();
    let cutoff = cutoff(start_time, grace);
    // Packs stored after this are within their class's minimum storage duration.
    let minimum = opts.storage_class.map_or(0, |c| c.minimum_days());
    let cold_cutoff = self::cutoff(start_time, Duration::from_secs(minimum * 86_400));

    progress.phase(
        if opts.dry_run {
            "listing objects (dry run)"
        } else {
            "listing and deleting objects"
        },
        None,
    );
    store.scan_data(PAGE, |page| {
        let mut doomed = Vec::new();
        for m in page {
            let Some(key) = data_key(&m.location) else {
                stats.objects_foreign += 1;
                continue;
            };
            match verdict(referenced.contains(&key)?, m.last_modified, cutoff) {
                Verdict::Referenced => {
                    stats.objects_referenced += 1;
                    stats.bytes_referenced += m.size;
                }
                Verdict::Young => {
                    stats.objects_young += 1;
                    stats.bytes_young += m.size;
                }
                Verdict::Delete if !opts.early_delete && m.last_modified > cold_cutoff => {
                    stats.objects_cold_kept += 1;
                    stats.bytes_cold_kept += m.size;
                }
                Verdict::Delete => {
                    if progress.wants_detail() {
                        progress.detail(&format!(
                            "{} {}",
                            if opts.dry_run {
                                "would delete"
                            } else {
                                "deleting"
                            },
                            m.location
                        ));
                    }
                    stats.objects_deleted += 1;
                    stats.bytes_deleted += m.size;
                    if !opts.dry_run {
                        doomed.push(m.location.clone());
                    }
                }
            }
            progress.bytes(m.size);
            progress.item(m.location.as_ref());
        }
        Ok(doomed)
    })?;

    // Referenced objects that are not there: name them and the runs they break.
    let (unseen, more) = referenced.unseen(MISSING_NAMED)?;
    if !unseen.is_empty() {
        let lists = listing.groups().flat_map(|group| {
            group
                .run_objects()
                .map(RunFiles::of)
                .filter(|r| r.committed())
                .filter_map(move |r| {
                    let refs = r.refs?;
                    Some((
                        format!("{}/{}/{}", group.host, group.source, refs.id),
                        refs.path,
                    ))
                })
        });
        stats.missing = name_missing(store, lists, &unseen)?;
        let hosts: std::collections::BTreeSet<&str> = listing
            .groups()
            .filter(|g| {
                let prefix = format!("{}/{}/", g.host, g.source);
                stats.missing.iter().any(|m| {
                    m.runs
                        .iter()
                        .any(|r| r.strip_prefix(&prefix).is_some_and(|id| !id.contains('/')))
                })
            })
            .map(|g| g.host)
            .collect();
        stats.problems.push(format!(
            "{}{} objects that runs reference are missing from the target: those runs \
             cannot restore the files in them (--json lists each object and its runs). \
             Back up again from the hosts that made them ({}) with `coffer backup \
             --forget-cache`, so that new runs store that data again",
            unseen.len(),
            if more { "+" } else { "" },
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    // Runs that never committed: their object lists and metafile pieces go once all of
    // them are older than the grace period.
    let mut old = Vec::new();
    for r in stale.into_iter().filter(|r| r.all_before(cutoff)) {
        stats.lists_deleted += u64::from(r.refs.is_some());
        old.extend(r.refs.iter().chain(&r.pieces).map(|o| o.path.clone()));
    }
    if !opts.dry_run && !old.is_empty() {
        store.delete(old)?;
    }
    progress.done();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    stats.requests = store.requests();
    Ok(stats)
}

/// The grace period: the one asked for, which may not be shorter than what the backups
/// need (`required`), or that.
fn grace_period(asked: Option<Duration>, required: Duration) -> Result<Duration> {
    match asked {
        Some(g) if g < required => Err(Error::Usage(format!(
            "--grace {} is shorter than dedup_max_age + max_run_time of the backups \
             ({}): objects a running or later backup may still reference could be \
             deleted. Use --grace {} or more (or leave it out); nothing was deleted",
            humantime(g),
            humantime(required),
            humantime(required)
        ))),
        Some(g) => Ok(g),
        None => Ok(required),
    }
}

/// Objects the target stored before this instant are old enough to delete. A grace
/// period longer than the calendar allows keeps everything.
fn cutoff(start: DateTime<Utc>, grace: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(grace)
        .ok()
        .and_then(|g| start.checked_sub_signed(g))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The key of a data object at `location`; `None` for anything else under `data/`
/// (foreign objects are never deleted).
pub(crate) fn data_key(location: &object_store::path::Path) -> Option<ObjectKey> {
    location
        .filename()
        .and_then(|f| f.parse::<ObjectKey>().ok())
        .filter(|k| crate::store::data_path(k) == *location)
}

/// What gc does with one data object.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A run's object list names it: kept.
    Referenced,
    /// Unreferenced but stored at or after the cutoff (a running backup may be about to
    /// reference it): kept.
    Young,
    /// Unreferenced and stored before the cutoff: deleted.
    Delete,
}

fn verdict(referenced: bool, stored: DateTime<Utc>, cutoff: DateTime<Utc>) -> Verdict {
    if referenced {
        Verdict::Referenced
    } else if stored >= cutoff {
        Verdict::Young
    } else {
        Verdict::Delete
    }
}

/// A run's objects under `runs/`.
#[derive(Default)]
struct RunFiles {
    /// Its metafile's pieces (the first, `<id>.meta`, commits the run).
    pieces: Vec<RunObject>,
    refs: Option<RunObject>,
}

impl RunFiles {
    fn committed(&self) -> bool {
        self.pieces.iter().any(|p| p.piece == 1)
    }

    fn all_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
        self.refs
            .iter()
            .chain(&self.pieces)
            .all(|o| o.last_modified < cutoff)
    }
}

impl RunFiles {
    /// One run's objects (prune's record of it, if any, is prune's to keep or drop).
    fn of(objects: Vec<RunObject>) -> RunFiles {
        let mut run = RunFiles::default();
        for o in objects {
            match o.ext.as_str() {
                "meta" => run.pieces.push(o),
                "refs" => run.refs = Some(o),
                // A signature goes with its run's other pieces.
                "sig" => run.pieces.push(o),
                _ => {}
            }
        }
        run
    }

    /// The run's id; `None` for a run of which only prune's record is listed.
    fn id(&self) -> Option<&crate::ids::RunId> {
        self.refs.iter().chain(&self.pieces).map(|o| &o.id).next()
    }
}

/// At most this many missing objects are named (each with the runs that need it).
const MISSING_NAMED: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_path;
    use object_store::path::Path as StorePath;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn an_object_goes_only_when_unreferenced_and_older_than_the_cutoff() {
        let cutoff = at(1_000_000);
        for (referenced, stored, expected) in [
            (true, at(0), Verdict::Referenced),
            (true, at(2_000_000), Verdict::Referenced),
            (false, at(2_000_000), Verdict::Young),
            (false, cutoff, Verdict::Young), // the boundary is kept
            (false, at(999_999), Verdict::Delete),
            (false, at(0), Verdict::Delete),
        ] {
            assert_eq!(verdict(referenced, stored, cutoff), expected, "{stored}");
        }
    }

    #[test]
    fn the_grace_period_is_never_shorter_than_the_backups_need() {
        let need = Duration::from_secs(8 * 86_400);
        assert_eq!(grace_period(None, need).unwrap(), need);
        let longer = Duration::from_secs(30 * 86_400);
        assert_eq!(grace_period(Some(longer), need).unwrap(), longer);
        assert_eq!(grace_period(Some(need), need).unwrap(), need);
        let e = grace_period(Some(Duration::from_secs(3600)), need).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("--grace 8d or more"), "{text}");
        assert!(text.contains("nothing was deleted"), "{text}");
    }

    #[test]
    fn the_cutoff_never_overflows() {
        let start = at(1_800_000_000);
        assert_eq!(cutoff(start, Duration::from_secs(100)), at(1_799_999_900));
        // Longer than the calendar: everything counts as young, nothing panics.
        for huge in [Duration::from_secs(u64::MAX), Duration::from_secs(1 << 50)] {
            assert_eq!(cutoff(start, huge), DateTime::<Utc>::MIN_UTC);
            assert_eq!(verdict(false, at(0), cutoff(start, huge)), Verdict::Young);
        }
    }

    #[test]
    fn only_well_named_data_objects_are_candidates() {
        let key = ObjectKey::of(b"pack");
        assert_eq!(data_key(&data_path(&key)), Some(key));
        let hex = key.to_hex();
        let wrong = if hex.starts_with("00") { "01" } else { "00" };
        for foreign in [
            format!("data/{wrong}/{hex}"),          // in the wrong folder
            format!("data/{}", hex),                // no folder
            format!("data/{}/{}x", &hex[..2], hex), // not a key
            format!("data/{}/README", &hex[..2]),
            format!("other/{}/{hex}", &hex[..2]),
        ] {
            let path = StorePath::from(foreign.as_str());
            assert_eq!(data_key(&path), None, "{foreign}");
        }
    }

    fn object(id: &str, ext: &str, piece: u32, stored: i64) -> RunObject {
        RunObject {
            host: "web1".into(),
            source: "etc".into(),
            id: id.parse().unwrap(),
            ext: ext.into(),
            piece,
            path: StorePath::from(format!("runs/web1/etc/{id}.{ext}")),
            size: 1,
            last_modified: at(stored),
        }
    }

    #[test]
    fn a_run_is_committed_by_its_first_piece_and_stale_when_all_its_parts_are_old() {
        let a = "20260101T000000Z-0000000a";
        let b = "20260101T000000Z-0000000b";
        let ra = RunFiles::of(vec![
            object(a, "refs", 0, 100),
            object(a, "meta", 2, 100), // a later piece alone does not commit
        ]);
        let rb = RunFiles::of(vec![object(b, "refs", 0, 100), object(b, "meta", 1, 300)]);
        assert_eq!(ra.id().map(|i| i.to_string()).as_deref(), Some(a));
        assert!(RunFiles::of(vec![object(b, "pruned", 0, 100)])
            .id()
            .is_none());
        assert!(!ra.committed());
        assert!(rb.committed());
        assert!(ra.refs.is_some() && ra.pieces.len() == 1);
        assert!(ra.all_before(at(101)));
        assert!(
            !ra.all_before(at(100)),
            "stored at the cutoff is not before it"
        );
        assert!(!rb.all_before(at(200)), "one young part keeps the run");
    }
}
