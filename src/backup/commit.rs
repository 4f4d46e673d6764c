//! Committing a run: its id, then its object list and metafile, stored last (invariant 1),
//! and the local index's record of it.

use chrono::{DateTime, Utc};

use super::listing::Written;
use super::BackupStats;
use crate::config::TargetConfig;
use crate::error::{Error, Result};
use crate::format::refs;
use crate::ids::RunId;
use crate::index::Index;
use crate::retention::humantime;
use crate::store::Creator;

/// The start time a new run's id records: now, but always later than the last run of
/// the source this index committed (`last`), so that the newest run (which prune never
/// deletes) is the one this host last made even if the clock went back.
fn id_time(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    match last {
        Some(t) if t.timestamp() >= now.timestamp() => t + chrono::Duration::seconds(1),
        _ => now,
    }
}

/// The id of a new run of `source` starting `now`.
pub(super) fn next_run_id(
    index: &Index,
    target_id: i64,
    source: &str,
    now: DateTime<Utc>,
) -> Result<RunId> {
    let last = index
        .last_run(target_id, source)?
        .and_then(|r| r.parse::<RunId>().ok())
        .and_then(|r| r.time());
    Ok(RunId::new(id_time(last, now)))
}

/// Commits a run whose packs were all acknowledged.
pub(super) struct Commit<'a> {
    pub creator: &'a Creator,
    pub index: &'a mut Index,
    pub target_id: i64,
    pub target: &'a TargetConfig,
    pub host: &'a str,
    pub source: &'a str,
    pub run: &'a RunId,
    pub start_time: DateTime<Utc>,
    /// The run's place in its chain (docs/FORMAT.md section 6).
    pub chain: &'a refs::Chain,
    /// Signs the object list, if the host has a signing key.
    pub signing_key: Option<&'a mut crate::crypto::SigningKey>,
}

impl Commit<'_> {
    /// Uploads the metafile's further pieces, the object list, then the metafile's first
    /// piece: the run is committed by that last put. Refuses to commit a run older than
    /// `max_run_time` (gc may have deleted what it uploaded first), and records the
    /// committed run's objects as protected.
    pub fn finish(self, mut metafile: Written, stats: &mut BackupStats) -> Result<()> {
        let pieces = self.creator.pieces_for(metafile.bytes);
        stats.bytes_stored += metafile.bytes;
        stats.run_objects_stored = 1 + u64::from(pieces);
        let bounds = refs::Bounds {
            dedup_max_age: self.target.dedup_max_age,
            max_run_time: self.target.max_run_time,
        };
        let name = refs::RunName {
            run: self.run.to_string(),
            host: self.host.to_string(),
            source: self.source.to_string(),
        };
        let digest = refs::MetafileDigest {
            hash: metafile.hash,
            bytes: metafile.bytes,
            pieces,
        };
        let run_stats = refs::RunStats {
            files: stats.files,
            bytes: stats.bytes_total,
            bytes_new: stats.bytes_new,
            bytes_stored: stats.bytes_stored,
            seconds: (Utc::now() - self.start_time)
                .to_std()
                .unwrap_or_default()
                .as_secs(),
        };
        let mut list = Vec::new();
        refs::write(
            &mut list,
            &name,
            &bounds,
            &digest,
            self.chain,
            Some(&run_stats),
            metafile.referenced.iter().copied(),
        )
        .map_err(|e| Error::io("object list", e))?;
        stats.bytes_stored += list.len() as u64;
        let signature = match self.signing_key {
            Some(key) => Some(bytes::Bytes::from(key.sign_detached(&list)?)),
            None => None,
        };
        let link = refs::Link {
            refs: crate::ids::ChunkHash::of(&list),
            metafile: metafile.hash,
        };
        // Wall-clock time: a suspended machine's monotonic clock stands still, gc's does not.
        let took = (Utc::now() - self.start_time).to_std().unwrap_or_default();
        if took > self.target.max_run_time {
            return Err(Error::Store {
                target: self.creator.name().to_string(),
                message: format!(
                    "the run took {}, longer than max_run_time ({}): it is not committed, \
                     because gc may already have deleted what it uploaded first. Run the \
                     backup again (what it uploaded recently is reused), or raise \
                     max_run_time in [target.{}] and gc's --grace with it",
                    humantime(std::time::Duration::from_secs(took.as_secs())),
                    humantime(self.target.max_run_time),
                    self.target.name
                ),
                source: None,
            });
        }
        self.index.begin_commit(self.target_id, self.source)?;
        self.creator.put_run(
            self.host,
            self.source,
            self.run,
            crate::store::ObjectList {
                text: list.into(),
                signature,
            },
            &mut metafile.file,
            metafile.bytes,
        )?;
        self.index.committed(
            self.target_id,
            self.source,
            self.run.as_str(),
            metafile.referenced.iter().copied(),
        )?;
        self.index
            .record_chain_head(&self.target.url, self.host, self.source, self.chain, &link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn run_ids_never_go_back_in_time() {
        let now = t("2026-06-01T10:00:00.5Z");
        assert_eq!(id_time(None, now), now);
        assert_eq!(id_time(Some(t("2026-06-01T09:00:00Z")), now), now);
        // The last run started this very second, or the clock went back: one second on.
        assert_eq!(
            id_time(Some(t("2026-06-01T10:00:00Z")), now),
            t("2026-06-01T10:00:01Z")
        );
        assert_eq!(
            id_time(Some(t("2026-06-02T00:00:00Z")), now),
            t("2026-06-02T00:00:01Z")
        );
    }
}
