//! Fetching chunk messages from packs: whole packs cached for a full restore, ranged
//! reads for a filtered one.

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::format::metafile::{ChunkRef, Entry, Kind};
use crate::ids::ObjectKey;
use crate::store::{self, Reader};

/// Packs held in memory for a full restore, which reads chunks in about the order they
/// were packed: each pack is then fetched once, whole. A filtered restore, which may
/// need a few chunks of many packs, reads ranges instead: the run of following chunks
/// of the same file that lie next to each other in the pack, in one request. So does a
/// full restore for a pack it already held and let go (a chunk deduplicated from far
/// back): a pack is fetched whole at most once, and memory holds at most
/// [`PACK_CACHE_BYTES`] of whole packs (or the one pack being read, if larger).
pub(super) struct PackCache {
    ranged: bool,
    packs: std::collections::VecDeque<(ObjectKey, Bytes)>,
    held: u64,
    /// The largest pack read whole so far.
    largest: u64,
    /// Packs fetched whole and since let go: read in ranges from then on.
    dropped: std::collections::HashSet<ObjectKey>,
    /// A ranged read's bytes: (object, start offset, bytes).
    window: Option<(ObjectKey, u64, Bytes)>,
    /// Bytes fetched from the target so far, and the requests that fetched them.
    read: u64,
    requests: u64,
    /// Objects that cannot be had (missing, damaged, refused): every chunk that needs one
    /// fails with the same cause, without asking the target again.
    bad: std::collections::HashMap<ObjectKey, Arc<Error>>,
    /// Whole packs whose stored bytes did not match their name, read from an earlier
    /// version that does.
    recovered: Vec<RecoveredPack>,
    /// Whole packs fetched at most at once ahead of need (0: none; see [`Lookahead`]).
    prefetch: usize,
    /// Packs the listing ahead will need, in the order it needs them, not fetched yet.
    queue: std::collections::VecDeque<ObjectKey>,
    /// Packs being fetched ahead of need.
    in_flight: std::collections::HashMap<ObjectKey, JoinHandle<Result<Option<Bytes>>>>,
    /// A filtered restore's ranges ahead: the window [`PackCache::fetch`] will have
    /// after each, as it computes it; the ranges known and not fetched yet; those
    /// being fetched, in order, and their bytes.
    next_window: Option<Range>,
    ranges: std::collections::VecDeque<Range>,
    ranges_in_flight: std::collections::VecDeque<(Range, JoinHandle<Result<Bytes>>)>,
    range_bytes: u64,
}

/// A range of a pack: (pack, start, end).
type Range = (ObjectKey, u64, u64);

/// Where the range read for `chunks[0]` ends: the following chunks of the same file that
/// continue it in the same pack, up to [`SPAN_LIMIT`] bytes. `None` on an overflow.
fn span_end(chunks: &[ChunkRef]) -> Option<u64> {
    let c = chunks.first()?;
    let mut end = c.offset.checked_add(c.length)?;
    for next in &chunks[1..] {
        let Some(next_end) = next.offset.checked_add(next.length) else {
            break;
        };
        if next.object != c.object || next.offset != end || next_end - c.offset > SPAN_LIMIT {
            break;
        }
        end = next_end;
    }
    Some(end)
}

/// What a read started ahead of need gave, once it is needed.
fn joined<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    store::runtime()
        .block_on(handle)
        .map_err(|e| Error::Internal(format!("a read started ahead of need: {e}")))?
}

impl Drop for PackCache {
    fn drop(&mut self) {
        for (_, h) in self.in_flight.drain() {
            h.abort();
        }
        for (_, h) in self.ranges_in_flight.drain(..) {
            h.abort();
        }
    }
}

/// Whole packs fetched ahead of need on a remote target: while the chunks of one pack
/// are worked on, the next ones arrive (each is a round trip and a transfer that would
/// otherwise wait for the work). Memory: this many packs more.
pub(super) const PREFETCH_PACKS: usize = 2;
/// Ranges read ahead in a filtered restore: known at most, in flight at most, and
/// their bytes in flight at most (a larger range is read when needed).
const RANGES_AHEAD: usize = 32;
const RANGES_IN_FLIGHT: usize = 8;
const RANGE_BYTES_IN_FLIGHT: u64 = 32 << 20;
const RANGE_AHEAD_MAX: u64 = 8 << 20;
/// Entries read ahead at most, to find the packs to come.
const AHEAD_ENTRIES: usize = 50_000;

/// The listing read a little ahead of the entry being worked on, so that the packs its
/// next entries need are known ([`PackCache::announce`]) and fetched ahead of need:
/// entries are read until the packs not yet used number [`PREFETCH_PACKS`] + 2, or
/// [`AHEAD_ENTRIES`] entries wait. Entries come out in the listing's order.
pub(super) struct Lookahead {
    on: bool,
    /// A filtered restore: the paths restored (ranges of those entries are announced).
    ranged: Option<Vec<Vec<u8>>>,
    waiting: std::collections::VecDeque<Entry>,
    /// Packs announced and not used yet by an entry handed out, in order.
    ahead: std::collections::VecDeque<ObjectKey>,
    announced: std::collections::HashSet<ObjectKey>,
    /// A read that failed ahead: returned once the entries before it are handed out,
    /// as it would have been without reading ahead.
    failed: Option<Error>,
}

impl Lookahead {
    /// Reading ahead for `packs` if it fetches ahead of need (a restore or check of a
    /// remote target), else entries pass straight through: whole packs are announced,
    /// or, where it reads ranges (a restore of `paths`), the ranges the entries under
    /// `paths` need.
    pub(super) fn new(packs: &PackCache, paths: &[Vec<u8>]) -> Lookahead {
        Lookahead {
            on: packs.prefetch > 0,
            ranged: packs.ranged.then(|| paths.to_vec()),
            waiting: Default::default(),
            ahead: Default::default(),
            announced: Default::default(),
            failed: None,
        }
    }

    /// The next entry of the listing `read` reads.
    pub(super) fn next(
        &mut self,
        read: &mut dyn FnMut() -> Result<Option<Entry>>,
        packs: &mut PackCache,
    ) -> Result<Option<Entry>> {
        if !self.on {
            return read();
        }
        let enough = |me: &Lookahead, packs: &PackCache| match me.ranged {
            Some(_) => packs.ranges_waiting() >= RANGES_AHEAD,
            None => me.ahead.len() >= PREFETCH_PACKS + 2,
        };
        while self.failed.is_none() && self.waiting.len() < AHEAD_ENTRIES && !enough(self, packs) {
            let entry = match read() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            };
            match (&entry.kind, &self.ranged) {
                (Kind::File { chunks, .. }, Some(paths)) if super::selected(paths, &entry.path) => {
                    packs.announce_ranges(chunks);
                }
                (Kind::File { .. }, Some(_)) => {}
                (Kind::File { chunks, .. }, None) => {
                    for c in chunks {
                        if self.announced.insert(c.object) {
                            self.ahead.push_back(c.object);
                            packs.announce(c.object);
                        }
                    }
                }
                _ => {}
            }
            self.waiting.push_back(entry);
        }
        let Some(entry) = self.waiting.pop_front() else {
            return match self.failed.take() {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        if let Kind::File { chunks, .. } = &entry.kind {
            self.ahead
                .retain(|k| !chunks.iter().any(|c| c.object == *k));
        }
        Ok(Some(entry))
    }
}

/// A pack whose stored bytes did not hash to its name, read from an earlier version of
/// it that does (a versioned S3 bucket; docs/FORMAT.md section 7).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveredPack {
    /// The pack's key, `data/xx/<name>`.
    pub object: String,
    /// The version used.
    pub version: String,
    /// When the store kept that version, as it says.
    pub stored: String,
    /// For people: what happened, and the command that makes the version current again.
    pub message: String,
}

/// Packs larger than this are read in ranges.
const WHOLE_PACK_LIMIT: u64 = 64 << 20;
/// Memory for whole packs, the one being read included: one pack of the default 16
/// MiB, or several smaller ones. A larger pack (up to WHOLE_PACK_LIMIT) is held alone.
pub(super) const PACK_CACHE_BYTES: u64 = 16 << 20;
/// A ranged read covers at most this many bytes of following chunks.
const SPAN_LIMIT: u64 = 64 << 20;

/// `bytes[offset, offset + length)`, if it lies within them. The metafile reader has
/// checked that `offset + length` does not overflow; this checks it again.
fn slice(bytes: &Bytes, offset: u64, length: u64) -> Option<Bytes> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    bytes.get(start..end).map(|b| bytes.slice_ref(b))
}

impl PackCache {
    pub(super) fn new(ranged: bool) -> Self {
        PackCache {
            ranged,
            packs: std::collections::VecDeque::new(),
            held: 0,
            largest: 0,
            dropped: Default::default(),
            window: None,
            read: 0,
            requests: 0,
            bad: Default::default(),
            recovered: Vec::new(),
            prefetch: 0,
            queue: Default::default(),
            in_flight: Default::default(),
            next_window: None,
            ranges: Default::default(),
            ranges_in_flight: Default::default(),
            range_bytes: 0,
        }
    }

    /// The ranges a file's `chunks` will be read in, announced ahead of need (a
    /// filtered restore): what [`PackCache::fetch`] will ask, as it will ask it.
    pub(super) fn announce_ranges(&mut self, chunks: &[ChunkRef]) {
        if !self.ranged || self.prefetch == 0 {
            return;
        }
        for (i, c) in chunks.iter().enumerate() {
            let Some(end) = c.offset.checked_add(c.length) else {
                return;
            };
            if let Some((k, start, window_end)) = self.next_window {
                if k == c.object && c.offset >= start && end <= window_end {
                    continue;
                }
            }
            let Some(span) = span_end(&chunks[i..]) else {
                return;
            };
            self.next_window = Some((c.object, c.offset, span));
            if span - c.offset <= RANGE_AHEAD_MAX {
                self.ranges.push_back((c.object, c.offset, span));
            }
        }
    }

    /// Ranges announced and not read yet.
    fn ranges_waiting(&self) -> usize {
        self.ranges.len() + self.ranges_in_flight.len()
    }

    /// Starts reading the next announced ranges, within the limits in flight.
    fn top_up_ranges(&mut self, store: &Reader) {
        while self.ranges_in_flight.len() < RANGES_IN_FLIGHT {
            let Some(&(key, start, end)) = self.ranges.front() else {
                return;
            };
            if self.range_bytes + (end - start) > RANGE_BYTES_IN_FLIGHT {
                return;
            }
            self.ranges.pop_front();
            if self.bad.contains_key(&key) {
                continue;
            }
            let handle = store.spawn_get_range(&store::data_path(&key), start..end);
            self.range_bytes += end - start;
            self.ranges_in_flight.push_back(((key, start, end), handle));
        }
    }

    /// The range `want` if it was read ahead (those read ahead before it and not asked
    /// for are dropped); else `None`, and it is not read ahead after all.
    fn take_range(&mut self, store: &Reader, want: Range) -> Option<JoinHandle<Result<Bytes>>> {
        self.ranges.retain(|r| *r != want);
        let found = self.ranges_in_flight.iter().position(|(r, _)| *r == want);
        let taken = found.map(|n| {
            for _ in 0..n {
                if let Some(((_, s, e), h)) = self.ranges_in_flight.pop_front() {
                    h.abort();
                    self.range_bytes -= e - s;
                }
            }
            let ((_, s, e), h) = self.ranges_in_flight.pop_front().expect("found");
            self.range_bytes -= e - s;
            h
        });
        self.top_up_ranges(store);
        taken
    }

    /// Fetches up to `n` whole packs ahead of need, those [`PackCache::announce`] names
    /// (0: nothing ahead); reading ranges, the ranges [`PackCache::announce_ranges`]
    /// names.
    pub(super) fn with_prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// A pack the listing ahead will need (in the order it needs them).
    pub(super) fn announce(&mut self, key: ObjectKey) {
        if self.prefetch > 0 {
            self.queue.push_back(key);
        }
    }

    /// Starts fetching the next announced packs, up to the limit in flight; not those
    /// held, let go, failed or being fetched.
    fn top_up(&mut self, store: &Reader) {
        while self.in_flight.len() < self.prefetch {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            if self.packs.iter().any(|(k, _)| *k == key)
                || self.dropped.contains(&key)
                || self.bad.contains_key(&key)
                || self.in_flight.contains_key(&key)
            {
                continue;
            }
            let handle = store.spawn_get_small(&store::data_path(&key), WHOLE_PACK_LIMIT);
            self.in_flight.insert(key, handle);
        }
    }

    /// The packs that could not be read because they are in a cold storage class, by
    /// key (`data/xx/…`).
    pub(super) fn frozen(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .bad
            .iter()
            .filter(|(_, e)| matches!(***e, Error::Frozen { .. }))
            .map(|(k, _)| crate::store::data_path(k).to_string())
            .collect();
        keys.sort();
        keys
    }

    /// The packs read from an earlier version so far.
    pub(super) fn recovered(&self) -> &[RecoveredPack] {
        &self.recovered
    }

    /// Bytes fetched from the target so far.
    pub(super) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Requests made to the target so far.
    pub(super) fn requests(&self) -> u64 {
        self.requests
    }

    /// The stored bytes of chunk `c` (its OpenPGP message); `ahead` is `c` and the rest
    /// of its file. A missing object is named as such; an object that failed for good
    /// fails again at once, while what may work the next time (a dropped connection, once
    /// the store's own retries are spent) is asked again by the next chunk that needs it.
    pub(super) fn message(
        &mut self,
        store: &Reader,
        c: &ChunkRef,
        ahead: &[ChunkRef],
    ) -> std::result::Result<Bytes, Arc<Error>> {
        if let Some(e) = self.bad.get(&c.object) {
            return Err(e.clone());
        }
        self.fetch(store, c, ahead).map_err(|e| {
            let e = Arc::new(match e {
                Error::NotFound(_) => {
                    Error::NotFound(format!("object {} is missing from the target", c.object))
                }
                e => e,
            });
            if !e.is_retryable() {
                self.bad.insert(c.object, e.clone());
            }
            e
        })
    }

    fn fetch(&mut self, store: &Reader, c: &ChunkRef, ahead: &[ChunkRef]) -> Result<Bytes> {
        let truncated = || Error::Corrupt {
            what: format!("object {}", c.object),
            reason: "truncated: a chunk lies beyond its end".into(),
        };
        let end = c.offset.checked_add(c.length).ok_or_else(truncated)?;
        if let Some((_, pack)) = self.packs.iter().find(|(k, _)| *k == c.object) {
            return slice(pack, c.offset, c.length).ok_or_else(truncated);
        }
        if let Some((k, start, bytes)) = &self.window {
            if *k == c.object && c.offset >= *start {
                if let Some(b) = slice(bytes, c.offset - start, c.length) {
                    return Ok(b);
                }
            }
        }
        let path = store::data_path(&c.object);
        if !self.ranged && !self.dropped.contains(&c.object) {
            // Room first, for a pack as large as the largest so far: the packs held and
            // the one arriving stay within PACK_CACHE_BYTES (or are just the new one).
            while !self.packs.is_empty() && self.held + self.largest > PACK_CACHE_BYTES {
                let (key, old) = self.packs.pop_front().expect("not empty");
                self.held -= old.len() as u64;
                self.dropped.insert(key);
            }
            self.requests += 1;
            // This one now, and the next ones ahead of need while it is worked on.
            let ahead = self.in_flight.remove(&c.object);
            self.queue.retain(|k| *k != c.object);
            self.top_up(store);
            let got = match ahead {
                Some(handle) => joined(handle)?,
                None => store.get_small(&path, WHOLE_PACK_LIMIT)?,
            };
            if let Some(pack) = got {
                self.read += pack.len() as u64;
                let pack = self.matching(store, &c.object, pack)?;
                let b = slice(&pack, c.offset, c.length).ok_or_else(truncated)?;
                self.held += pack.len() as u64;
                self.largest = self.largest.max(pack.len() as u64);
                self.packs.push_back((c.object, pack));
                return Ok(b);
            }
        }
        // The following chunks of this file that continue this one in the same pack. A
        // range cannot be checked against the pack's name: a chunk read from an
        // overwritten pack fails its own check instead (restore, without paths, reads
        // whole packs and can fall back on an earlier version).
        let span_end = span_end(ahead).unwrap_or(end);
        self.requests += 1;
        let bytes = match self.take_range(store, (c.object, c.offset, span_end)) {
            Some(handle) => joined(handle)?,
            None => store.get_range(&path, c.offset..span_end)?,
        };
        self.read += bytes.len() as u64;
        let b = slice(&bytes, 0, c.length).ok_or_else(truncated)?;
        self.window = Some((c.object, c.offset, bytes));
        Ok(b)
    }

    /// `pack` if its bytes hash to its name; else an earlier version of it that does,
    /// where the target keeps one (noted in [`PackCache::recovered`]); else an error
    /// that says the pack was overwritten or damaged and what was looked at.
    fn matching(&mut self, store: &Reader, key: &ObjectKey, pack: Bytes) -> Result<Bytes> {
        if blake3::hash(&pack).as_bytes() == &key.0 {
            return Ok(pack);
        }
        match store.recover(key)? {
            store::Recovery::Found(r) => {
                self.requests += r.requests;
                self.read += r.fetched;
                let object = store::data_path(key).to_string();
                if !self.recovered.iter().any(|p| p.object == object) {
                    self.recovered.push(RecoveredPack {
                        message: format!(
                            "{object}: its stored bytes do not hash to its name (it was \
                             overwritten or damaged); {}",
                            r.advice(" and was read instead")
                        ),
                        object,
                        version: r.version,
                        stored: r.stored,
                    });
                }
                Ok(r.bytes)
            }
            store::Recovery::NotFound(why) => Err(Error::Corrupt {
                what: format!("object {}", store::data_path(key)),
                reason: format!(
                    "its bytes do not hash to its name: it was overwritten or damaged; {why}"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::metafile::{Encoding, Meta};
    use crate::ids::ChunkHash;

    fn file(path: &str, packs: &[u8]) -> Entry {
        let chunks = packs
            .iter()
            .map(|&p| ChunkRef {
                object: ObjectKey([p; 32]),
                offset: 0,
                length: 1,
                size: 1,
                hash: ChunkHash([0; 32]),
                encoding: Encoding::Raw,
            })
            .collect();
        Entry {
            path: path.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: Kind::File {
                size: 1,
                hash: ChunkHash([0; 32]),
                chunks,
            },
        }
    }

    /// Entries come out in order, each pack is announced once, in first-use order, and
    /// a read that fails ahead fails only after the entries before it.
    #[test]
    fn lookahead_keeps_order_announces_once_and_fails_in_place() {
        let mut listing = vec![
            Ok(file("a", &[1, 1])),
            Ok(file("b", &[1, 2])),
            Ok(file("c", &[3])),
            Ok(file("d", &[2, 4])),
            Err(Error::Internal("damaged".into())),
            Ok(file("never", &[5])),
        ]
        .into_iter();
        let mut read = || listing.next().transpose();
        let mut packs = PackCache::new(false).with_prefetch(PREFETCH_PACKS);
        let mut ahead = Lookahead::new(&packs, &[]);
        let mut got = Vec::new();
        let err = loop {
            match ahead.next(&mut read, &mut packs) {
                Ok(Some(e)) => got.push(String::from_utf8(e.path).unwrap()),
                Ok(None) => panic!("the error was lost"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, ["a", "b", "c", "d"]);
        assert!(err.to_string().contains("damaged"), "{err}");
        let queued: Vec<u8> = packs.queue.iter().map(|k| k.0[0]).collect();
        assert_eq!(queued, [1, 2, 3, 4]);
    }
}
