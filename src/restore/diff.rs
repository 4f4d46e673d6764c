//! `coffer diff`: what changed between two runs, from their metafiles alone.

use std::cmp::Ordering;

use serde::Serialize;

use super::ls::Listed;
use super::Listing;
use super::{fetch_and_check, MetafileSource, RestoreOptions};
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Kind};
use crate::progress::Progress;
use crate::store::Reader;

/// One path that differs between the two runs.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Change {
    /// The path, percent-encoded as in the metafile (docs/FORMAT.md 4.5).
    pub path: String,
    /// `added` (only in the newer run), `removed` (only in the older) or `changed`.
    pub change: &'static str,
    /// For `changed`: what differs, of `type`, `content`, `target`, `mode`, `owner`,
    /// `mtime`, `device`.
    pub what: Vec<&'static str>,
    /// The entry in the older run, if it has one.
    pub old: Option<Listed>,
    /// The entry in the newer run, if it has one.
    pub new: Option<Listed>,
}

impl Change {
    /// The path's bytes.
    pub fn raw_path(&self) -> &[u8] {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map_or(&[], |l| l.raw_path.as_slice())
    }
}

/// The two runs compared, older first.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Compared {
    /// The older run's id.
    pub old: String,
    /// The newer run's id.
    pub new: String,
}

/// Compares the runs `a` and `b` name (in either order: the older is the "old" side)
/// below `paths` (everything if empty), handing each difference to `each` in the
/// metafiles' order. Content is compared by the recorded size and BLAKE3 of each file,
/// so nothing but the two metafiles is read, and memory stays bounded.
///
/// # Errors
///
/// What stops a restore before it writes, for either run; a metafile whose entries are
/// not in walk order ([`Error::Corrupt`]: it was not written by coffer); whatever `each`
/// returns.
#[allow(clippy::too_many_arguments)]
pub fn diff(
    store: &Reader,
    a: &MetafileSource,
    b: &MetafileSource,
    decryptor: &Decryptor,
    paths: &[Vec<u8>],
    trust: crate::runs::Trust,
    progress: &dyn Progress,
    each: &mut dyn FnMut(&Change) -> Result<()>,
) -> Result<Compared> {
    let mut opts = RestoreOptions::new(".");
    opts.trust = trust;
    let mut one = fetch_and_check(store, a, decryptor, &opts, progress)?;
    let mut two = fetch_and_check(store, b, decryptor, &opts, progress)?;
    if one.1.run > two.1.run {
        std::mem::swap(&mut one, &mut two);
    }
    let wanted = |p: &[u8]| p != b"." && super::selected(paths, p);
    let mut old = Ordered::new(one.0.open(decryptor)?, &one.1.run);
    let mut new = Ordered::new(two.0.open(decryptor)?, &two.1.run);
    let (mut x, mut y) = (old.next()?, new.next()?);
    let removed = |e: Entry| {
        wanted(&e.path).then(|| Change {
            path: crate::format::encode_field(&e.path),
            change: "removed",
            what: Vec::new(),
            old: Some(Listed::of(e)),
            new: None,
        })
    };
    let added = |f: Entry| {
        wanted(&f.path).then(|| Change {
            path: crate::format::encode_field(&f.path),
            change: "added",
            what: Vec::new(),
            old: None,
            new: Some(Listed::of(f)),
        })
    };
    loop {
        let change = match (x.take(), y.take()) {
            (None, None) => break,
            (Some(e), None) => {
                x = old.next()?;
                removed(e)
            }
            (None, Some(f)) => {
                y = new.next()?;
                added(f)
            }
            (Some(e), Some(f)) => match walk_order(&e.path, &f.path) {
                Ordering::Less => {
                    (x, y) = (old.next()?, Some(f));
                    removed(e)
                }
                Ordering::Greater => {
                    (x, y) = (Some(e), new.next()?);
                    added(f)
                }
                Ordering::Equal => {
                    (x, y) = (old.next()?, new.next()?);
                    let what = differences(&e, &f);
                    (wanted(&e.path) && !what.is_empty()).then(|| Change {
                        path: crate::format::encode_field(&e.path),
                        change: "changed",
                        what,
                        old: Some(Listed::of(e)),
                        new: Some(Listed::of(f)),
                    })
                }
            },
        };
        if let Some(c) = change {
            each(&c)?;
        }
    }
    Ok(Compared {
        old: one.1.run,
        new: two.1.run,
    })
}

/// What differs between two entries at the same path.
fn differences(e: &Entry, f: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    let data = match (&e.kind, &f.kind) {
        (
            Kind::File { size, hash, .. },
            Kind::File {
                size: s2, hash: h2, ..
            },
        ) => (size != s2 || hash != h2).then_some("content"),
        (Kind::Symlink { target: a }, Kind::Symlink { target: b })
        | (Kind::Hardlink { target: a }, Kind::Hardlink { target: b }) => {
            (a != b).then_some("target")
        }
        (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => Some("type"),
        // The same kind without content: directories, fifos, devices (their numbers).
        (a, b) => (a != b).then_some("device"),
    };
    what.extend(data);
    let hardlink =
        matches!(e.kind, Kind::Hardlink { .. }) || matches!(f.kind, Kind::Hardlink { .. });
    if !hardlink {
        let (m, n) = (&e.meta, &f.meta);
        if m.mode != n.mode {
            what.push("mode");
        }
        if (m.uid, m.gid, &m.user, &m.group) != (n.uid, n.gid, &n.user, &n.group) {
            what.push("owner");
        }
        if (m.mtime, m.mtime_nsec) != (n.mtime, n.mtime_nsec) {
            what.push("mtime");
        }
    }
    what
}

/// The order entries come in (docs/FORMAT.md 4.2): depth first, names in byte order;
/// that is, paths compared component by component.
fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    let key = |p: &[u8]| -> Vec<Vec<u8>> {
        if p == b"." {
            Vec::new()
        } else {
            p.split(|&c| c == b'/').map(<[u8]>::to_vec).collect()
        }
    };
    key(a).cmp(&key(b))
}

/// A listing whose entries must come in walk order: a merge of two is only right then.
struct Ordered<'a> {
    listing: Listing,
    last: Option<Vec<u8>>,
    run: &'a str,
}

impl<'a> Ordered<'a> {
    fn new(listing: Listing, run: &'a str) -> Self {
        Ordered {
            listing,
            last: None,
            run,
        }
    }

    fn next(&mut self) -> Result<Option<Entry>> {
        let Some(e) = self.listing.next_entry()? else {
            return Ok(None);
        };
        if let Some(last) = &self.last {
            if walk_order(last, &e.path) != Ordering::Less {
                return Err(Error::Corrupt {
                    what: format!("the metafile of run {}", self.run),
                    reason: format!(
                        "its entries are out of order at {} (coffer writes them depth first, \
                         names in byte order)",
                        crate::text::escape(&e.path)
                    ),
                });
            }
        }
        self.last = Some(e.path.clone());
        Ok(Some(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk lists a directory's entries right after it, names in byte order: "a",
    /// then what is in "a", then "a.txt" (although "." sorts before "/" as bytes).
    #[test]
    fn walk_order_is_depth_first_by_name() {
        let walked: [&[u8]; 7] = [b".", b"a", b"a/b", b"a/b/c", b"a/c", b"a.txt", b"b\xff"];
        for pair in walked.windows(2) {
            assert_eq!(walk_order(pair[0], pair[1]), Ordering::Less, "{pair:?}");
            assert_eq!(walk_order(pair[1], pair[0]), Ordering::Greater, "{pair:?}");
        }
        assert_eq!(walk_order(b"a/b", b"a/b"), Ordering::Equal);
        assert!(
            b"a.txt".as_slice() < b"a/b".as_slice(),
            "plain byte order differs"
        );
    }

    #[test]
    fn what_changed_is_named_for_each_kind() {
        let file = |size, seed: &[u8]| Entry {
            path: b"f".to_vec(),
            kind: Kind::File {
                size,
                hash: crate::ids::ChunkHash::of(seed),
                chunks: Vec::new(),
            },
            meta: Default::default(),
        };
        let a = file(1, b"x");
        assert!(differences(&a, &a.clone()).is_empty());
        assert_eq!(differences(&a, &file(1, b"y")), ["content"]);
        let mut moved = a.clone();
        moved.meta.mode = 0o600;
        moved.meta.mtime = 5;
        assert_eq!(differences(&a, &moved), ["mode", "mtime"]);
        let link = Entry {
            kind: Kind::Symlink {
                target: b"t".to_vec(),
            },
            ..a.clone()
        };
        assert_eq!(differences(&a, &link), ["type"]);
    }
}
