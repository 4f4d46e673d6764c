//! What a backup may reuse from its local index: only state that describes the target as
//! it is now (invariant 8: the index never outranks the target).
//!
//! - **Identity.** The index keeps its state per dedup domain: target URL, recipient set
//!   and the marker `markers/<id>` it left on that target. A target that lacks the
//!   marker (wiped, replaced, another disk mounted at the same place) is not the one the
//!   state describes. A backup that can list the target looks for its markers there; one
//!   with a put-only credential makes one create-only PUT of its marker, whose success
//!   (the marker did not exist) says the target is new to this state. Either way the
//!   stale state is not used, and everything is uploaded again.
//! - **Presence.** A backup that can read the target checks that each pack it reuses
//!   still exists (one HEAD or stat per distinct pack per run) and stores again the
//!   chunks of a pack that is gone. A put-only backup cannot look; `gc` names missing
//!   objects and the runs they break, and `backup --forget-cache` makes the host store
//!   everything again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::config::TargetConfig;
use crate::error::Result;
use crate::ids::ObjectKey;
use crate::index::Index;
use crate::progress::Progress;
use crate::store::{self, Creator, PutOutcome, Reader};

/// Finds (or starts) the dedup domain that describes `target` as it is now; returns its
/// id in the index. With `forget`, its recorded state is dropped first.
#[allow(clippy::too_many_arguments)]
pub(super) fn domain(
    index: &mut Index,
    creator: &Creator,
    reader: Option<&Reader>,
    target: &TargetConfig,
    keyset: &str,
    host: &str,
    forget: bool,
    progress: &dyn Progress,
) -> Result<i64> {
    let url = target.url.as_str();
    let known = index.domains(url, keyset)?;
    let stale = |progress: &dyn Progress| {
        progress.warn(&format!(
            "target {} holds none of the markers this host's local index left on it: it is \
             new, or was wiped or replaced, or another disk is mounted at its place; what \
             the index recorded about it is not used, and everything is uploaded again",
            target.name
        ))
    };
    let id = if let Some(reader) = reader {
        let present: HashSet<String> = reader.list_markers()?.into_iter().collect();
        match known.iter().find(|m| present.contains(*m)) {
            Some(m) => index.target_id(url, keyset, m)?,
            None => {
                if known.iter().any(|m| !m.is_empty()) {
                    stale(progress);
                }
                fresh(
                    index,
                    creator,
                    url,
                    keyset,
                    host,
                    known.iter().any(String::is_empty),
                )?
            }
        }
    } else {
        match known.first() {
            None => fresh(index, creator, url, keyset, host, false)?,
            Some(m) if m.is_empty() => fresh(index, creator, url, keyset, host, true)?,
            Some(m) => {
                let id = index.target_id(url, keyset, m)?;
                if creator.put_marker(m, host)? == PutOutcome::Created {
                    stale(progress);
                    index.forget_domain(id)?;
                }
                id
            }
        }
    };
    if forget {
        index.forget_domain(id)?;
    }
    Ok(id)
}

/// A new marker left on the target, for a new domain or (`adopt`) for the one recorded
/// before markers existed, whose state is then kept: nothing tells it apart, and on a
/// target the backup can read the presence check covers it.
fn fresh(
    index: &mut Index,
    creator: &Creator,
    url: &str,
    keyset: &str,
    host: &str,
    adopt: bool,
) -> Result<i64> {
    let marker = store::new_marker()?;
    creator.put_marker(&marker, host)?;
    if adopt {
        index.rename_domain(url, keyset, "", &marker)?;
    }
    index.target_id(url, keyset, &marker)
}

/// Which packs the backup reuses still exist on the target: one request per distinct
/// pack per run, and none at all when the backup cannot read the target.
pub(crate) struct Presence {
    reader: Option<Reader>,
    seen: Mutex<HashMap<ObjectKey, bool>>,
}

impl Presence {
    /// Checks with `reader`, if the backup has one; otherwise takes every pack on trust.
    pub(crate) fn new(reader: Option<Reader>) -> Self {
        Presence {
            reader,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `pack` is on the target (as far as the backup can tell). The first answer
    /// for a pack is kept for the run.
    pub(crate) fn exists(&self, pack: &ObjectKey) -> Result<bool> {
        let Some(reader) = &self.reader else {
            return Ok(true);
        };
        if let Some(&known) = self
            .seen
            .lock()
            .ok()
            .and_then(|s| s.get(pack).copied())
            .as_ref()
        {
            return Ok(known);
        }
        let there = reader.exists(&store::data_path(pack))?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(*pack, there);
        }
        Ok(there)
    }

    /// The packs found missing, sorted.
    pub(crate) fn missing(&self) -> Vec<ObjectKey> {
        let mut gone: Vec<ObjectKey> = self
            .seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, there)| !**there)
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        gone.sort();
        gone
    }
}
