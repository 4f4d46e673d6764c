//! What one LIST of `runs/` found, held compactly and handed out one host and source at a
//! time, so that checking a fleet's runs costs memory for one group of runs at a time
//! plus about 60 bytes per listed object, not a [`RunInfo`] per run of every host.
//!
//! A listing is not trusted (anyone who can write to the target can add keys): a key
//! whose host segment is not the canonical escaping of its name is not one coffer wrote
//! and is left out, so the key rebuilt from a listed object's names
//! ([`crate::store::run_path`]) is always the key that was listed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::layout::{encode_segment, piece_path, run_path, RunInfo, RunObject};
use crate::ids::RunId;

/// The kinds of object under `runs/`, in the order a run's objects sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ext {
    Meta,
    Refs,
    Sig,
    Pruned,
}

impl Ext {
    fn of(ext: &str) -> Option<Ext> {
        Some(match ext {
            "meta" => Ext::Meta,
            "refs" => Ext::Refs,
            "sig" => Ext::Sig,
            "pruned" => Ext::Pruned,
            _ => return None,
        })
    }

    fn word(self) -> &'static str {
        match self {
            Ext::Meta => "meta",
            Ext::Refs => "refs",
            Ext::Sig => "sig",
            Ext::Pruned => "pruned",
        }
    }
}

/// One listed object, without its key (rebuilt from the group's names and the id).
#[derive(Debug, Clone, Copy)]
struct Entry {
    group: u32,
    piece: u32,
    ext: Ext,
    id: [u8; 25],
    size: u64,
    modified: DateTime<Utc>,
}

impl Entry {
    /// Only ids that parsed are kept, so this is always `Some`.
    fn id(&self) -> Option<RunId> {
        std::str::from_utf8(&self.id).ok()?.parse().ok()
    }

    fn run(&self) -> (u32, [u8; 25]) {
        (self.group, self.id)
    }
}

/// The objects under `runs/`, by host and source.
#[derive(Debug, Default)]
pub(crate) struct RunListing {
    /// (host, source) of each group, sorted.
    groups: Vec<(String, String)>,
    /// Sorted by group, run id, kind and piece.
    entries: Vec<Entry>,
    /// Interning while the listing comes in.
    index: HashMap<(String, String), u32>,
}

impl RunListing {
    /// Adds one listed object; other keys under `runs/` are ignored.
    pub(super) fn add(&mut self, meta: object_store::ObjectMeta) {
        let Some(o) = RunObject::from_meta(meta) else {
            return;
        };
        let canonical =
            o.path.parts().nth(1).map(|p| p.as_ref().to_string()) == Some(encode_segment(&o.host));
        let (Some(ext), Ok(id), true) = (
            Ext::of(&o.ext),
            <[u8; 25]>::try_from(o.id.as_str().as_bytes()),
            canonical,
        ) else {
            return;
        };
        let next = u32::try_from(self.index.len()).unwrap_or(u32::MAX);
        let group = *self.index.entry((o.host, o.source)).or_insert(next);
        self.entries.push(Entry {
            group,
            piece: o.piece,
            ext,
            id,
            size: o.size,
            modified: o.last_modified,
        });
    }

    /// Ends the listing: groups sorted by host and source, runs by id.
    pub(super) fn finish(mut self) -> RunListing {
        let mut names: Vec<((String, String), u32)> = self.index.drain().collect();
        names.sort();
        let mut rank = vec![0u32; names.len()];
        for (new, (_, old)) in names.iter().enumerate() {
            rank[*old as usize] = u32::try_from(new).unwrap_or(u32::MAX);
        }
        for e in &mut self.entries {
            e.group = rank[e.group as usize];
        }
        self.entries
            .sort_unstable_by_key(|e| (e.group, e.id, e.ext, e.piece, e.modified));
        self.entries.shrink_to_fit();
        RunListing {
            groups: names.into_iter().map(|(n, _)| n).collect(),
            entries: self.entries,
            index: HashMap::new(),
        }
    }

    /// The groups, by host and source.
    pub(crate) fn groups(&self) -> impl Iterator<Item = Group<'_>> {
        self.entries
            .chunk_by(|a, b| a.group == b.group)
            .map(|entries| {
                let (host, source) = &self.groups[entries[0].group as usize];
                Group {
                    host,
                    source,
                    entries,
                }
            })
    }
}

/// The listed objects of one host and source.
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    /// The host.
    pub host: &'a str,
    /// The source.
    pub source: &'a str,
    entries: &'a [Entry],
}

impl<'a> Group<'a> {
    fn object(self, e: &Entry) -> Option<RunObject> {
        let id = e.id()?;
        let path = match e.ext {
            Ext::Meta => piece_path(self.host, self.source, &id, e.piece),
            Ext::Sig => run_path(self.host, self.source, &id, "refs.sig"),
            other => run_path(self.host, self.source, &id, other.word()),
        };
        Some(RunObject {
            host: self.host.to_string(),
            source: self.source.to_string(),
            id,
            ext: e.ext.word().to_string(),
            piece: e.piece,
            path,
            size: e.size,
            last_modified: e.modified,
        })
    }

    /// Each run's objects (metafile pieces, object list, signature and prune's record),
    /// one run at a time, by id.
    pub(crate) fn run_objects(self) -> impl Iterator<Item = Vec<RunObject>> + 'a {
        self.entries
            .chunk_by(|a, b| a.run() == b.run())
            .map(move |run| run.iter().filter_map(|e| self.object(e)).collect())
    }

    /// The group's runs (committed ones: with a metafile), oldest first by when the
    /// target stored them, each with the status its listing alone shows, and prune's
    /// records of the runs it deleted.
    pub(crate) fn runs(self) -> (Vec<RunInfo>, Vec<RunObject>) {
        let mut runs = Vec::new();
        let mut pruned = Vec::new();
        for mut objects in self.run_objects() {
            if let Some(i) = objects.iter().position(|o| o.ext == "pruned") {
                pruned.push(objects.remove(i));
            }
            runs.extend(crate::runs::from_listing(objects));
        }
        sort_runs(&mut runs);
        (runs, pruned)
    }
}

/// Sorts runs oldest first by when the target stored them (then by the time they claim
/// and their names, so the order is total).
pub(crate) fn sort_runs(runs: &mut [RunInfo]) {
    runs.sort_by(|a, b| {
        (a.stored_at, a.claimed_at, &a.host, &a.source, &a.id).cmp(&(
            b.stored_at,
            b.claimed_at,
            &b.host,
            &b.source,
            &b.id,
        ))
    });
}
