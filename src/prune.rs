//! `prune`: deletes the runs a retention policy does not keep. Needs no key.
//!
//! Runs are grouped by host and source (two hosts with a source of the same name are
//! counted apart) and each group gets its policy ([`crate::retention`]). Runs are dated
//! by when the target stored them, not by the time their ids claim, and only runs that
//! pass the keyless checks of [`crate::runs`] count: a suspicious or damaged run (one a
//! broken-into host planted, say) is never "the newest", never fills a keep rule, and is
//! never deleted by prune either: it is kept and named, for a person to look at. A run is
//! deleted by deleting its metafile's first piece (the run stops existing), then its
//! other pieces, then its object list. The objects the deleted runs referenced are left
//! for `gc`.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::progress::Progress;
use crate::retention::{self, Retention};
use crate::store::{piece_path, run_path, Admin, RunInfo};

/// One run and what prune does with it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PruneItem {
    /// Host that made the run.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub run: String,
    /// The start time its id claims (RFC 3339).
    pub time: String,
    /// When the target stored it (RFC 3339): what retention dates it by.
    pub stored: String,
    /// Whether it is kept.
    pub keep: bool,
    /// How many pieces its metafile has (all are deleted with it).
    #[serde(skip)]
    pub pieces: u32,
    /// The rules that keep it; empty when it is deleted.
    pub reasons: Vec<String>,
    /// When the calendar rules that keep it stop keeping it if backups go on (RFC 3339;
    /// absent when only `newest` or `last` keep it): an Object Lock covers it until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_until: Option<String>,
    /// The same, as a time.
    #[serde(skip)]
    pub(crate) until: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it passed the checks (a run kept because it did not is never locked).
    #[serde(skip)]
    pub(crate) counted: bool,
    /// Whether the listing showed its object list, and its signature: only what is
    /// there is deleted (a delete of a missing key leaves a delete marker on a
    /// versioned S3 bucket) or locked.
    #[serde(skip)]
    pub(crate) has_refs: bool,
    #[serde(skip)]
    pub(crate) has_sig: bool,
    /// The record left when it is deleted, so that the chain stays walkable (set by
    /// [`plan_records`] where a kept run needs it).
    #[serde(skip)]
    pub(crate) tombstone: Option<crate::chain::Tombstone>,
}

/// A group of runs (one host, one source) and its policy.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PruneGroup {
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// The policy in words, or `None` when no policy applies (every run is kept).
    pub policy: Option<String>,
    /// Its runs, oldest first.
    pub runs: Vec<PruneItem>,
}

/// What prune decided, and did unless it was a dry run.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// Target name.
    pub target: String,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// Every group of runs on the target (or of the sources asked for).
    pub groups: Vec<PruneGroup>,
    /// Runs kept.
    pub kept: u64,
    /// Runs deleted (or that would be, in a dry run).
    pub deleted: u64,
    /// Records of runs deleted earlier that no kept run needs any more (deleted too).
    pub records_dropped: u64,
    /// On a target with Object Lock: the locks extended for the kept runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::lock::LockStats>,
    #[serde(skip)]
    stale_records: Vec<object_store::path::Path>,
}

/// Decides, without touching the target, which runs to keep. `policy_for(host, source)`
/// gives a group's policy; `None` keeps the whole group. Fails if no group has a policy
/// (the caller gave no rules at all).
///
/// # Errors
///
/// [`Error::Usage`] when no group has a policy.
pub fn plan(
    target: &str,
    runs: &[RunInfo],
    policy_for: &dyn Fn(&str, &str) -> Option<Retention>,
) -> Result<PruneReport> {
    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&RunInfo>> = Default::default();
    for r in runs {
        groups.entry((&r.host, &r.source)).or_default().push(r);
    }
    let mut report = PruneReport {
        target: target.to_string(),
        ..Default::default()
    };
    let mut any_policy = false;
    for ((host, source), runs) in groups {
        let policy = policy_for(host, source).filter(|p| !p.is_empty());
        any_policy |= policy.is_some();
        // Only runs that pass the checks count; the rules see them alone.
        let counted: Vec<usize> = (0..runs.len())
            .filter(|&i| runs[i].status.is_ok())
            .collect();
        let times: Vec<_> = counted.iter().map(|&i| runs[i].stored_at()).collect();
        let mut decisions: Vec<retention::Decision> = runs
            .iter()
            .map(|r| retention::Decision {
                keep: true,
                reasons: vec![format!(
                    "not counted, kept: {} ({})",
                    r.status.word(),
                    r.status.reason().unwrap_or("")
                )],
                until: None,
            })
            .collect();
        match &policy {
            Some(p) => {
                for (d, &i) in retention::apply(p, &times).into_iter().zip(&counted) {
                    decisions[i] = d;
                }
            }
            None => {
                for &i in &counted {
                    decisions[i].reasons = vec!["no rules for this source".into()];
                }
            }
        }
        // Defence in depth: the newest run is always kept, so this cannot happen.
        if !decisions.is_empty() && !decisions.iter().any(|d| d.keep) {
            return Err(Error::Usage(format!(
                "refusing to delete every run of {host}/{source}"
            )));
        }
        let items: Vec<PruneItem> = runs
            .iter()
            .zip(decisions)
            .map(|(r, d)| PruneItem {
                host: r.host.clone(),
                source: r.source.clone(),
                run: r.id.clone(),
                time: r.time.clone(),
                stored: r.stored.clone(),
                keep: d.keep,
                kept_until: d
                    .until
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                until: d.until,
                counted: r.status.is_ok(),
                has_refs: r.refs_bytes.is_some(),
                has_sig: r.sig_bytes.is_some(),
                reasons: d.reasons,
                pieces: r.pieces.len() as u32,
                tombstone: None,
            })
            .collect();
        report.kept += items.iter().filter(|i| i.keep).count() as u64;
        report.deleted += items.iter().filter(|i| !i.keep).count() as u64;
        report.groups.push(PruneGroup {
            host: host.to_string(),
            source: source.to_string(),
            policy: policy.map(|p| p.describe()),
            runs: items,
        });
    }
    if !any_policy && !report.groups.is_empty() {
        return Err(Error::Usage(
            "no retention rules apply to any run: give --keep-last, --keep-daily ... \
             --keep-within, or set keep_* in the sources' config sections"
                .into(),
        ));
    }
    Ok(report)
}

/// Decides which records of deleted runs ([`crate::chain::Tombstone`]) the chains need
/// once `report` is carried out: a record is needed where it fills a gap between two
/// kept runs of its chain. The runs to be deleted get a record where so needed; the
/// records already on the target that are no longer needed are dropped.
pub fn plan_records(
    report: &mut PruneReport,
    runs: &[RunInfo],
    tombstones: &[crate::chain::Tombstone],
) {
    use std::collections::BTreeMap;
    // The kept, chained runs: (host, source, chain) -> their numbers.
    let kept: std::collections::HashSet<(&str, &str, &str)> = report
        .groups
        .iter()
        .flat_map(|g| &g.runs)
        .filter(|i| i.keep)
        .map(|i| (i.host.as_str(), i.source.as_str(), i.run.as_str()))
        .collect();
    let mut seqs: BTreeMap<(String, String, String), Vec<u64>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.status.is_ok()) {
        if let (Some(c), true) = (&r.chain, kept.contains(&(&r.host, &r.source, &r.id))) {
            seqs.entry((r.host.clone(), r.source.clone(), c.id.clone()))
                .or_default()
                .push(c.seq);
        }
    }
    let needed = |host: &str, source: &str, chain: &crate::format::refs::Chain| {
        seqs.get(&(host.to_string(), source.to_string(), chain.id.clone()))
            .is_some_and(|s| s.iter().any(|&k| k < chain.seq) && s.iter().any(|&k| k > chain.seq))
    };
    let by_id: BTreeMap<(&str, &str, &str), &RunInfo> = runs
        .iter()
        .map(|r| ((r.host.as_str(), r.source.as_str(), r.id.as_str()), r))
        .collect();
    for item in report.groups.iter_mut().flat_map(|g| g.runs.iter_mut()) {
        if item.keep {
            continue;
        }
        item.tombstone = by_id
            .get(&(item.host.as_str(), item.source.as_str(), item.run.as_str()))
            .and_then(|r| crate::chain::Tombstone::of(r))
            .filter(|t| needed(&t.host, &t.source, &t.chain));
    }
    for t in tombstones {
        let still_run = by_id.contains_key(&(t.host.as_str(), t.source.as_str(), t.run.as_str()));
        if !still_run && !needed(&t.host, &t.source, &t.chain) {
            if let Ok(id) = t.run.parse::<RunId>() {
                report
                    .stale_records
                    .push(run_path(&t.host, &t.source, &id, "pruned"));
            }
        }
    }
    report.records_dropped = report.stale_records.len() as u64;
}

/// Deletes the runs `report` does not keep: each one leaves its record first (where
/// [`plan_records`] decided one is needed), then its metafile goes (the run stops
/// existing), then the rest of its pieces, its signature and its object list. Last,
/// the records no kept run needs any more.
///
/// # Errors
///
/// The target refusing or failing a delete; runs deleted before it stay deleted.
pub fn execute(store: &Admin, report: &PruneReport, progress: &dyn Progress) -> Result<()> {
    let doomed: Vec<&PruneItem> = report
        .groups
        .iter()
        .flat_map(|g| &g.runs)
        .filter(|r| !r.keep)
        .collect();
    progress.phase("deleting runs", Some(doomed.len() as u64));
    for r in doomed {
        let id: RunId = r.run.parse()?;
        if let Some(t) = &r.tombstone {
            crate::chain::put_tombstone(store, t)?;
        }
        store.delete(vec![piece_path(&r.host, &r.source, &id, 1)])?;
        let rest: Vec<_> = (2..=r.pieces.max(1))
            .map(|n| piece_path(&r.host, &r.source, &id, n))
            .collect();
        store.delete(rest)?;
        let lists = [(r.has_sig, "refs.sig"), (r.has_refs, "refs")];
        store.delete(
            lists
                .into_iter()
                .filter(|(there, _)| *there)
                .map(|(_, ext)| run_path(&r.host, &r.source, &id, ext))
                .collect(),
        )?;
        progress.bytes(1);
    }
    store.delete(report.stale_records.clone())?;
    progress.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(host: &str, source: &str, id: &str) -> RunInfo {
        RunInfo::for_test(host, source, id)
    }

    #[test]
    fn runs_are_dated_by_the_store_and_flagged_runs_neither_count_nor_go() {
        // A planted run that claims the far future, stored last: it would be "the
        // newest" by its id. And a genuine one whose id claims an old time but which the
        // target stored recently (a host whose clock is behind, within tolerance).
        let mut planted = run("a", "home", "20991231T000000Z-0000000f");
        planted.stored_at = "2026-01-05T00:00:00Z".parse().unwrap();
        planted.status = crate::runs::RunStatus::Suspicious("planted".into());
        let mut late = run("a", "home", "20260101T000000Z-00000001");
        late.stored_at = "2026-01-04T00:00:00Z".parse().unwrap();
        let runs = [
            late,
            run("a", "home", "20260102T000000Z-00000002"),
            run("a", "home", "20260103T000000Z-00000003"),
            planted,
        ];
        let last2 = Retention {
            last: Some(2),
            ..Default::default()
        };
        let r = plan("t", &runs, &|_, _| Some(last2)).unwrap();
        let g = &r.groups[0];
        let keep: Vec<(&str, bool)> = g.runs.iter().map(|i| (&i.run[17..], i.keep)).collect();
        // By store time 00000001 is the newest genuine run; 00000002 is deleted.
        assert_eq!(
            keep,
            [
                ("00000001", true),
                ("00000002", false),
                ("00000003", true),
                ("0000000f", true)
            ]
        );
        assert_eq!(g.runs[0].reasons[0], "newest");
        assert!(
            g.runs[3].reasons[0].contains("not counted"),
            "{:?}",
            g.runs[3]
        );
    }

    #[test]
    fn hosts_and_sources_are_counted_apart() {
        let runs = [
            run("a", "home", "20260101T000000Z-00000001"),
            run("a", "home", "20260102T000000Z-00000002"),
            run("b", "home", "20260101T000000Z-00000003"),
            run("b", "home", "20260103T000000Z-00000004"),
            run("a", "etc", "20260101T000000Z-00000005"),
        ];
        let last1 = Retention {
            last: Some(1),
            ..Default::default()
        };
        let policy = |_: &str, s: &str| (s == "home").then_some(last1);
        let r = plan("t", &runs, &policy).unwrap();
        let kept: Vec<&str> = r
            .groups
            .iter()
            .flat_map(|g| &g.runs)
            .filter(|i| i.keep)
            .map(|i| &i.run[17..])
            .collect();
        assert_eq!(kept, ["00000005", "00000002", "00000004"]);
        assert_eq!((r.kept, r.deleted), (3, 2));
        assert_eq!(r.groups[0].policy, None, "etc has no rules: all kept");
    }

    #[test]
    fn no_rules_at_all_is_refused() {
        let runs = [run("a", "home", "20260101T000000Z-00000001")];
        let err = plan("t", &runs, &|_, _| None).unwrap_err().to_string();
        assert!(err.contains("no retention rules"), "{err}");
        let empty = |_: &str, _: &str| Some(Retention::default());
        assert!(plan("t", &runs, &empty).is_err());
    }
}
