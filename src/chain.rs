//! Hash-chained runs, checked without a key (docs/FORMAT.md section 6.2).
//!
//! Every run a host makes of a source records, in its object list, its place in a chain:
//! the chain's random id, its sequence number, and the BLAKE3 of the object list and
//! metafile of the run before it. When prune deletes a run it leaves a small record of
//! it (`<run>.pruned`, a [`Tombstone`]) that keeps the chain walkable. [`walk`] then tells,
//! per host and source, what a store or an intruder did that retention did not:
//!
//! - **deleted**: sequence numbers missing between two runs of a chain, with no record
//!   that prune deleted them;
//! - **fork**: two different runs with the same number in one chain;
//! - **swapped**: a run whose recorded predecessor digests do not match the run before
//!   it (it was forged, or the run before it was replaced);
//! - **restart**: a chain that starts after another one (the host lost its local
//!   state, or someone started a chain of their own);
//! - **rollback** ([`Seen`]): the newest run an earlier check saw is gone and nothing
//!   newer in its chain exists: runs were deleted, or the target was rolled back.
//!
//! Runs that are not ok ([`crate::runs::check`]) take no part: they were never trusted.
//! A swapped run, and the runs of a fork that no later run builds on, become suspicious.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::refs::{Chain, Link};
use crate::format::{decode_field, encode_field};
use crate::ids::{ChunkHash, RunId};
use crate::runs::RunStatus;
use crate::store::{run_path, Admin, Reader, RunInfo, RunObject};

/// A tombstone is never longer than this.
const MAX_TOMBSTONE: u64 = 4096;

/// What prune leaves of a run it deleted: enough to walk the chain through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// The deleted run's id.
    pub run: String,
    /// Its place in its chain.
    pub chain: Chain,
    /// BLAKE3 of its object list and of its metafile.
    pub link: Link,
}

impl Tombstone {
    /// The text stored as `<run>.pruned`.
    pub fn to_text(&self, pruned: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "coffer-pruned 1\nrun {}\nhost {}\nsource {}\nchain {}\nrefs {}\nmetafile {}\n\
             pruned {}\n",
            self.run,
            encode_field(self.host.as_bytes()),
            encode_field(self.source.as_bytes()),
            self.chain.field(),
            self.link.refs,
            self.link.metafile,
            pruned.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// Parses a tombstone read from a target (untrusted); `None` if it is malformed.
    pub fn parse(text: &[u8]) -> Option<Tombstone> {
        let text = std::str::from_utf8(text).ok()?;
        let mut lines = text.strip_suffix('\n')?.split('\n');
        if lines.next()? != "coffer-pruned 1" {
            return None;
        }
        let mut fields = BTreeMap::new();
        for line in lines {
            let (k, v) = line.split_once(' ')?;
            if fields.insert(k, v).is_some() {
                return None;
            }
        }
        let text = |k: &str| {
            fields
                .get(k)
                .and_then(|v| decode_field(v))
                .and_then(|b| String::from_utf8(b).ok())
        };
        let chain = crate::format::refs::parse_chain(fields.get("chain")?)?;
        chrono::DateTime::parse_from_rfc3339(fields.get("pruned")?).ok()?;
        Some(Tombstone {
            host: text("host")?,
            source: text("source")?,
            run: fields.get("run")?.parse::<RunId>().ok()?.to_string(),
            chain,
            link: Link {
                refs: fields.get("refs")?.parse().ok()?,
                metafile: fields.get("metafile")?.parse().ok()?,
            },
        })
    }

    /// The tombstone of a checked, chained run; `None` for runs without a chain.
    pub fn of(run: &RunInfo) -> Option<Tombstone> {
        Some(Tombstone {
            host: run.host.clone(),
            source: run.source.clone(),
            run: run.id.clone(),
            chain: run.chain.clone()?,
            link: Link {
                refs: run.refs_hash?,
                metafile: run.metafile_digest?.hash,
            },
        })
    }
}

/// The runs on a target, checked ([`crate::runs::check`]) and their chains walked.
#[derive(Debug, Default)]
pub struct History {
    /// The runs, oldest first, with their status.
    pub runs: Vec<RunInfo>,
    /// What prune left of the runs it deleted.
    pub tombstones: Vec<Tombstone>,
    /// Breaks in the chains.
    pub findings: Vec<Finding>,
    /// Records of prune that could not be used.
    pub problems: Vec<String>,
}

/// Lists the runs of the hosts and sources `keep` accepts, checks them against `trust`
/// and walks their chains: one LIST, and a few small reads per run. Every run is held
/// at once; [`histories`] hands them out one host and source at a time.
///
/// # Errors
///
/// The target cannot be listed or read.
pub fn history(
    store: &Reader,
    trust: &crate::runs::Trust,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<History> {
    let mut all = History::default();
    histories(store, trust, keep, |_, _, h| {
        all.runs.extend(h.runs);
        all.tombstones.extend(h.tombstones);
        all.findings.extend(h.findings);
        all.problems.extend(h.problems);
        Ok(())
    })?;
    crate::store::sort_runs(&mut all.runs);
    Ok(all)
}

/// Like [`history`], one host and source at a time (by host, then source): `each` gets
/// the host, the source and their [`History`] (runs, or only prune's records of runs),
/// so memory holds one group's runs however many hosts share the target (and about 60
/// bytes per object under `runs/`, the listing).
///
/// # Errors
///
/// The target cannot be listed or read, or `each` fails.
pub fn histories(
    store: &Reader,
    trust: &crate::runs::Trust,
    keep: impl Fn(&str, &str) -> bool,
    mut each: impl FnMut(&str, &str, History) -> Result<()>,
) -> Result<()> {
    let listing = store.list_run_listing()?;
    for group in listing.groups().filter(|g| keep(g.host, g.source)) {
        let (mut runs, pruned) = group.runs();
        crate::runs::check(store, &mut runs, trust)?;
        let (tombstones, problems) = read_tombstones(store, &pruned)?;
        let findings = walk(&mut runs, &tombstones);
        each(
            group.host,
            group.source,
            History {
                runs,
                tombstones,
                findings,
                problems,
            },
        )?;
    }
    Ok(())
}

/// Reads the tombstones among `objects` (one small GET each). A malformed one, or one
/// that names another run than its key, is a problem, returned as text.
///
/// # Errors
///
/// The target cannot be read.
pub(crate) fn read_tombstones(
    store: &Reader,
    objects: &[RunObject],
) -> Result<(Vec<Tombstone>, Vec<String>)> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for o in objects.iter().filter(|o| o.ext == "pruned") {
        let bytes = store.get_range(&o.path, 0..o.size.min(MAX_TOMBSTONE))?;
        match Tombstone::parse(&bytes) {
            Some(t)
                if (t.host.as_str(), t.source.as_str(), t.run.as_str())
                    == (o.host.as_str(), o.source.as_str(), o.id.as_str()) =>
            {
                out.push(t)
            }
            _ => problems.push(format!(
                "{} is not a record prune wrote (malformed, or naming another run); it is \
                 ignored",
                o.path
            )),
        }
    }
    Ok((out, problems))
}

/// Leaves the tombstone of `run` before prune deletes it (create-only: one already
/// there is kept).
pub(crate) fn put_tombstone(store: &Admin, t: &Tombstone) -> Result<()> {
    let id: RunId = t.run.parse()?;
    let path = run_path(&t.host, &t.source, &id, "pruned");
    store.put_create(&path, t.to_text(chrono::Utc::now()).into())?;
    Ok(())
}

/// What kind of break in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Runs are missing from the middle of a chain.
    Deleted,
    /// Two runs have the same sequence number.
    Fork,
    /// A run's predecessor digests do not match the run before it.
    Swapped,
    /// A new chain starts after another.
    Restart,
    /// The newest run an earlier check saw is gone.
    Rollback,
}

impl Kind {
    /// The word shown in tables.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Deleted => "deleted",
            Kind::Fork => "fork",
            Kind::Swapped => "swapped",
            Kind::Restart => "restart",
            Kind::Rollback => "rollback",
        }
    }
}

/// A break in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// What is wrong.
    pub kind: Kind,
    /// The runs concerned (ids).
    pub runs: Vec<String>,
    /// What it means, in words.
    pub message: String,
}

/// The nodes of `nodes` that are present runs (not prune's records).
fn present(nodes: &[Node]) -> impl Iterator<Item = &Node> {
    nodes.iter().filter(|n| n.present.is_some())
}

/// One position of a chain: a present run (by index into the runs) or a tombstone.
#[derive(Clone)]
struct Node {
    seq: u64,
    previous: Option<Link>,
    link: Link,
    run: String,
    present: Option<usize>,
    stored: chrono::DateTime<chrono::Utc>,
}

type Group = (String, String);

fn nodes(
    runs: &[RunInfo],
    tombstones: &[Tombstone],
) -> BTreeMap<Group, BTreeMap<String, Vec<Node>>> {
    let mut groups: BTreeMap<Group, BTreeMap<String, Vec<Node>>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        if !r.status.is_ok() {
            continue;
        }
        let (Some(chain), Some(refs), Some(meta)) = (&r.chain, r.refs_hash, r.metafile_digest)
        else {
            continue;
        };
        groups
            .entry((r.host.clone(), r.source.clone()))
            .or_default()
            .entry(chain.id.clone())
            .or_default()
            .push(Node {
                seq: chain.seq,
                previous: chain.previous,
                link: Link {
                    refs,
                    metafile: meta.hash,
                },
                run: r.id.clone(),
                present: Some(i),
                stored: r.stored_at,
            });
    }
    let existing: std::collections::HashSet<(&str, &str, &str)> = runs
        .iter()
        .map(|r| (r.host.as_str(), r.source.as_str(), r.id.as_str()))
        .collect();
    for t in tombstones {
        // A tombstone of a run that still exists adds nothing.
        if existing.contains(&(t.host.as_str(), t.source.as_str(), t.run.as_str())) {
            continue;
        }
        groups
            .entry((t.host.clone(), t.source.clone()))
            .or_default()
            .entry(t.chain.id.clone())
            .or_default()
            .push(Node {
                seq: t.chain.seq,
                previous: t.chain.previous,
                link: t.link,
                run: t.run.clone(),
                present: None,
                stored: chrono::DateTime::<chrono::Utc>::MAX_UTC,
            });
    }
    for chains in groups.values_mut() {
        for nodes in chains.values_mut() {
            nodes.sort_by_key(|n| (n.seq, n.present.is_none()));
        }
    }
    groups
}

/// Walks every chain among `runs` (checked) and `tombstones`, marks swapped runs and the
/// runs of a fork that nothing builds on as suspicious, and returns what it found.
pub fn walk(runs: &mut [RunInfo], tombstones: &[Tombstone]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut suspicious: Vec<(usize, String)> = Vec::new();
    for ((host, source), chains) in nodes(runs, tombstones) {
        let finding = |kind, runs: Vec<String>, message: String| Finding {
            host: host.clone(),
            source: source.clone(),
            kind,
            runs,
            message,
        };
        // Chains in the order their first present run was stored; a chain of which only
        // prune's records are left is history.
        let mut order: Vec<(&String, &Vec<Node>)> = chains
            .iter()
            .filter(|(_, n)| present(n).next().is_some())
            .collect();
        order.sort_by_key(|(id, n)| (n.iter().map(|n| n.stored).min(), *id));
        for (pos, (id, nodes)) in order.iter().enumerate() {
            let short = &id[..8];
            if pos > 0 {
                let first = &nodes[0];
                findings.push(finding(
                    Kind::Restart,
                    vec![first.run.clone()],
                    if first.seq == 1 {
                        format!(
                            "run {} starts a new chain ({short}…) after another: expected when \
                             the host lost its local state (reinstalled, state_dir deleted); \
                             otherwise someone else is writing runs under its name",
                            first.run
                        )
                    } else {
                        format!(
                            "chain {short}… starts at run {} with number {}: runs 1 to {} of \
                             it are missing and were not pruned",
                            first.run,
                            first.seq,
                            first.seq - 1
                        )
                    },
                ));
            }
            for pair in nodes.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if a.seq == b.seq {
                    if a.link == b.link {
                        continue; // the same run twice (a tombstone of a run kept)
                    }
                    // The one the next run builds on is the genuine continuation.
                    let next = nodes.iter().find(|n| n.seq == a.seq + 1);
                    let built_on = |n: &Node| next.is_some_and(|x| x.previous == Some(n.link));
                    for n in [a, b] {
                        if let (Some(i), false) = (n.present, built_on(n)) {
                            suspicious.push((
                                i,
                                format!(
                                    "it has the same number ({}) in its chain as run {}: a \
                                     fork (a replayed or copied run, or a host whose local \
                                     state was rolled back)",
                                    n.seq,
                                    if std::ptr::eq(n, a) { &b.run } else { &a.run }
                                ),
                            ));
                        }
                    }
                    findings.push(finding(
                        Kind::Fork,
                        vec![a.run.clone(), b.run.clone()],
                        format!(
                            "runs {} and {} both have number {} in chain {short}…",
                            a.run, b.run, a.seq
                        ),
                    ));
                } else if b.seq == a.seq + 1 {
                    // Against every run with the number before (a fork has several).
                    let linked = nodes
                        .iter()
                        .any(|n| n.seq == a.seq && b.previous == Some(n.link));
                    if !linked {
                        if let Some(i) = b.present {
                            suspicious.push((
                                i,
                                format!(
                                    "the predecessor it records is not run {}, the run before \
                                     it in its chain: it was forged, or that run was replaced",
                                    a.run
                                ),
                            ));
                        }
                        findings.push(finding(
                            Kind::Swapped,
                            vec![a.run.clone(), b.run.clone()],
                            format!(
                                "run {} does not record run {} (number {}) as its \
                                 predecessor: one of them was forged or replaced",
                                b.run, a.run, a.seq
                            ),
                        ));
                    }
                } else {
                    findings.push(finding(
                        Kind::Deleted,
                        vec![a.run.clone(), b.run.clone()],
                        format!(
                            "{} of chain {short}… missing between runs {} and {}, and prune \
                             left no record of deleting {}: deleted behind its back",
                            if b.seq - a.seq == 2 {
                                format!("run number {} is", a.seq + 1)
                            } else {
                                format!("runs number {} to {} are", a.seq + 1, b.seq - 1)
                            },
                            a.run,
                            b.run,
                            if b.seq - a.seq == 2 { "it" } else { "them" }
                        ),
                    ));
                }
            }
        }
    }
    for (i, why) in suspicious {
        if runs[i].status.is_ok() {
            runs[i].status = RunStatus::Suspicious(why);
        }
    }
    findings
}

fn seen_err(path: &Path, e: rusqlite::Error) -> Error {
    crate::keyset::key_set_err(path, "the record of the runs earlier checks saw", e)
}

/// The newest run each host and source had when last checked, kept in local state
/// (`state_dir/monitor.sqlite`), per target URL: how a check notices a rollback.
pub struct Seen {
    conn: rusqlite::Connection,
    path: std::path::PathBuf,
}

impl Seen {
    /// Opens (creating) `state_dir/monitor.sqlite`.
    ///
    /// # Errors
    ///
    /// The state directory or the file cannot be used.
    pub fn open(state_dir: &Path) -> Result<Seen> {
        crate::state::prepare_state_dir(state_dir)?;
        let path = state_dir.join("monitor.sqlite");
        let fail = |e| seen_err(&path, e);
        let conn = rusqlite::Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(fail)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS seen (
                 url TEXT NOT NULL, host TEXT NOT NULL, source TEXT NOT NULL,
                 chain TEXT NOT NULL, seq INTEGER NOT NULL, refs BLOB NOT NULL,
                 run TEXT NOT NULL,
                 PRIMARY KEY (url, host, source)
             ) WITHOUT ROWID;",
        )
        .map_err(fail)?;
        Ok(Seen { conn, path })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        seen_err(&self.path, e)
    }

    /// Compares what is on the target at `url` now with what the last check saw, reports
    /// a rollback for each host and source whose last seen run is gone with nothing newer
    /// in its chain, and records the newest ok chained run of the others.
    ///
    /// # Errors
    ///
    /// The state file fails.
    pub fn check(
        &mut self,
        url: &str,
        runs: &[RunInfo],
        tombstones: &[Tombstone],
    ) -> Result<Vec<Finding>> {
        let mut check = self.begin(url)?;
        let mut findings = check.compare(runs, tombstones);
        findings.extend(check.finish()?);
        Ok(findings)
    }

    /// Starts a check of the target at `url` that is given its runs a few hosts and
    /// sources at a time ([`SeenCheck::compare`]), then finished ([`SeenCheck::finish`]).
    ///
    /// # Errors
    ///
    /// The state file fails.
    pub fn begin(&mut self, url: &str) -> Result<SeenCheck<'_>> {
        let mut last: BTreeMap<Group, Head> = BTreeMap::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT host, source, chain, seq, refs, run FROM seen WHERE url = ?1")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([url], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (h, s, chain, seq, refs, run) = row.map_err(|e| self.err(e))?;
                if let (Ok(seq), Ok(refs)) = (u64::try_from(seq), <[u8; 32]>::try_from(refs)) {
                    let refs = ChunkHash(refs);
                    last.insert(
                        (h, s),
                        Head {
                            chain,
                            seq,
                            refs,
                            run,
                        },
                    );
                }
            }
        }
        Ok(SeenCheck {
            seen: self,
            url: url.to_string(),
            last,
            newest: Vec::new(),
        })
    }

    /// Forgets what was seen on the target at `url` (after a person looked at a
    /// rollback and accepted the target as it is).
    ///
    /// # Errors
    ///
    /// The state file fails.
    pub fn forget(&mut self, url: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM seen WHERE url = ?1", [url])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// The newest run of a host's and source's chain that a check saw.
struct Head {
    chain: String,
    seq: u64,
    refs: ChunkHash,
    run: String,
}

/// A check against what earlier checks saw, given a target's runs a few hosts and
/// sources at a time ([`Seen::begin`]).
pub struct SeenCheck<'a> {
    seen: &'a mut Seen,
    url: String,
    /// What the last check saw, of the groups not compared yet.
    last: BTreeMap<Group, Head>,
    /// What this check saw, recorded when it finishes.
    newest: Vec<(Group, Head)>,
}

impl SeenCheck<'_> {
    /// Compares the runs of some hosts and sources (`runs` checked and walked, each
    /// host's and source's runs and `tombstones` given whole, and once) with what the
    /// last check saw: a rollback for each whose last seen run is gone with nothing
    /// newer in its chain.
    pub fn compare(&mut self, runs: &[RunInfo], tombstones: &[Tombstone]) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (group, chains) in nodes(runs, tombstones) {
            if let Some(head) = self.last.remove(&group) {
                let fine = chains.get(&head.chain).is_some_and(|nodes| {
                    nodes.iter().any(|n| {
                        n.seq > head.seq || (n.seq == head.seq && n.link.refs == head.refs)
                    })
                });
                if !fine {
                    findings.push(rollback(group, &head));
                    continue; // keep reporting it until a person looks
                }
            }
            // The chain of the run stored last, and in it the run with the highest number
            // (a run put back later is stored later, but is not newer).
            let latest = chains
                .iter()
                .filter_map(|(id, nodes)| present(nodes).map(|n| n.stored).max().map(|t| (t, id)))
                .max();
            let Some((_, chain)) = latest else {
                continue;
            };
            let Some(head) = present(&chains[chain]).max_by_key(|n| n.seq) else {
                continue;
            };
            let head = Head {
                chain: chain.clone(),
                seq: head.seq,
                refs: head.link.refs,
                run: head.run.clone(),
            };
            self.newest.push((group, head));
        }
        findings
    }

    /// Reports a rollback for each host and source the last check saw of which no
    /// chained run was compared (all its runs gone), and records what this check saw.
    ///
    /// # Errors
    ///
    /// The state file fails.
    pub fn finish(self) -> Result<Vec<Finding>> {
        let findings: Vec<Finding> = self
            .last
            .into_iter()
            .map(|(group, head)| rollback(group, &head))
            .collect();
        let path = self.seen.path.clone();
        let tx = self
            .seen
            .conn
            .transaction()
            .map_err(|e| seen_err(&path, e))?;
        for ((host, source), head) in &self.newest {
            tx.execute(
                "INSERT OR REPLACE INTO seen (url, host, source, chain, seq, refs, run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    self.url,
                    host,
                    source,
                    head.chain,
                    i64::try_from(head.seq).unwrap_or(i64::MAX),
                    &head.refs.0[..],
                    head.run
                ],
            )
            .map_err(|e| seen_err(&path, e))?;
        }
        tx.commit().map_err(|e| seen_err(&path, e))?;
        Ok(findings)
    }
}

fn rollback((host, source): Group, head: &Head) -> Finding {
    let Head {
        chain, seq, run, ..
    } = head;
    Finding {
        host,
        source,
        kind: Kind::Rollback,
        runs: vec![run.clone()],
        message: format!(
            "run {run} (number {seq} of chain {}…), the newest an earlier check saw, is gone \
             or was replaced, and no newer run of its chain exists: runs were deleted or the \
             target was rolled back",
            &chain[..chain.len().min(8)]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u64) -> ChunkHash {
        ChunkHash::of(&n.to_le_bytes())
    }

    /// A chain of `n` runs as a host would make them, each ok and checked.
    fn chain(n: u64) -> Vec<RunInfo> {
        let mut c = Chain::start().unwrap();
        let mut out = Vec::new();
        for i in 1..=n {
            let id = format!("2026010{}T000000Z-0000000{}", i.min(9), i % 10);
            let mut r = RunInfo::for_test("web1", "home", &id);
            r.chain = Some(c.clone());
            r.refs_hash = Some(hash(i));
            r.metafile_digest = Some(crate::format::refs::MetafileDigest {
                hash: hash(100 + i),
                bytes: 1,
                pieces: 1,
            });
            out.push(r);
            c = c.next(Link {
                refs: hash(i),
                metafile: hash(100 + i),
            });
        }
        out
    }

    fn kinds(f: &[Finding]) -> Vec<Kind> {
        f.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn an_intact_chain_and_a_pruned_one_are_clean() {
        let mut runs = chain(5);
        assert!(walk(&mut runs, &[]).is_empty());
        let stones: Vec<Tombstone> = [1, 2]
            .iter()
            .map(|&i| Tombstone::of(&runs[i]).unwrap())
            .collect();
        let mut kept = vec![runs[0].clone(), runs[3].clone(), runs[4].clone()];
        assert!(walk(&mut kept, &stones).is_empty());
        // The oldest runs pruned and their records gone: nothing to report either.
        let mut tail = runs[3..].to_vec();
        assert!(walk(&mut tail, &[]).is_empty());
        // Without the records, the gap is a deletion.
        let f = walk(&mut kept, &stones[..1]);
        assert_eq!(kinds(&f), [Kind::Deleted]);
        assert!(kept.iter().all(|r| r.status.is_ok()));
    }

    #[test]
    fn forks_swaps_and_restarts_are_found() {
        // A run replaced by a forged one with the same number.
        let mut runs = chain(3);
        let mut forged = runs[1].clone();
        forged.id = "20260102T000000Z-000000ff".into();
        forged.refs_hash = Some(hash(999));
        runs.push(forged);
        let f = walk(&mut runs, &[]);
        assert_eq!(kinds(&f), [Kind::Fork]);
        assert!(
            runs[1].status.is_ok(),
            "the run the next builds on stays ok"
        );
        assert!(!runs[3].status.is_ok());

        // A run whose predecessor digest does not match.
        let mut runs = chain(3);
        runs[1].refs_hash = Some(hash(999));
        let f = walk(&mut runs, &[]);
        assert_eq!(kinds(&f), [Kind::Swapped]);
        assert!(!runs[2].status.is_ok());

        // A second chain after the first.
        let mut runs = chain(2);
        runs.extend(chain(1).into_iter().map(|mut r| {
            r.id = "20260105T000000Z-00000005".into();
            r.stored_at += chrono::Duration::days(10);
            r
        }));
        assert_eq!(kinds(&walk(&mut runs, &[])), [Kind::Restart]);
        // Runs not ok take no part.
        let mut runs = chain(3);
        runs[1].status = RunStatus::Suspicious("x".into());
        assert_eq!(kinds(&walk(&mut runs, &[])), [Kind::Deleted]);
    }

    #[test]
    fn a_rollback_is_found_against_what_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut seen = Seen::open(&state).unwrap();
        let runs = chain(4);
        assert!(seen.check("u", &runs[..3], &[]).unwrap().is_empty());
        assert!(seen.check("u", &runs, &[]).unwrap().is_empty());
        // The newest run deleted: the one seen last is gone.
        let f = seen.check("u", &runs[..3], &[]).unwrap();
        assert_eq!(kinds(&f), [Kind::Rollback]);
        assert_eq!(f[0].runs, [runs[3].id.clone()]);
        // Reported again until a person looks; another URL is not concerned.
        assert_eq!(seen.check("u", &runs[..3], &[]).unwrap().len(), 1);
        assert!(seen.check("v", &runs[..3], &[]).unwrap().is_empty());
        seen.forget("u").unwrap();
        assert!(seen.check("u", &runs[..3], &[]).unwrap().is_empty());
        // Pruned (with a record) is not a rollback; replaced is.
        let stone = Tombstone::of(&runs[2]).unwrap();
        let mut rest = vec![runs[0].clone(), runs[1].clone()];
        rest.push(runs[3].clone());
        assert!(seen.check("u", &rest, &[stone]).unwrap().is_empty());
        let mut replaced = runs.clone();
        replaced[3].refs_hash = Some(hash(12345));
        assert_eq!(
            kinds(&seen.check("u", &replaced, &[]).unwrap()),
            [Kind::Rollback]
        );
    }

    #[test]
    fn tombstones_round_trip_and_junk_is_refused() {
        let runs = chain(2);
        let t = Tombstone::of(&runs[1]).unwrap();
        let text = t.to_text(chrono::Utc::now());
        assert_eq!(Tombstone::parse(text.as_bytes()), Some(t));
        for cut in 0..text.len() {
            assert!(Tombstone::parse(&text.as_bytes()[..cut]).is_none(), "{cut}");
        }
        assert!(Tombstone::parse(text.replace("run ", "run x").as_bytes()).is_none());
        assert!(Tombstone::parse(&[0xff, b'\n']).is_none());
    }
}
