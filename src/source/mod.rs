//! Stage 1: walking a source tree. Yields every entry below the root with its `lstat`
//! metadata, in a stable (name-sorted) order, applying the ignore rules ([`walk()`]).
//!
//! The walk holds a handle on every directory it is in and reaches each entry relative
//! to its directory's handle, never by a path: a user who swaps a directory of the tree
//! for a symbolic link while a root backup runs cannot redirect it to files she may not
//! read ([`walk()`] says how).
//!
//! Ignore patterns are globs. A pattern with no `/` matches an entry's name at any depth
//! (`*.tmp`, `node_modules`); a pattern with a `/` matches the path relative to the source
//! root (`/var/cache`, `home/*/.cache`; a leading `/` is optional). An ignored directory
//! is not descended into.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::format::metafile::Meta;
use crate::index::FileStamp;

mod sparse;
mod walk;

pub(crate) use sparse::SparseReader;
pub use walk::{walk, Skipped, Stat, Walker};

/// One walked entry.
#[derive(Debug)]
pub struct Item {
    /// Absolute path on this machine, for messages only: nothing is opened by it.
    pub abs: PathBuf,
    /// Path relative to the source root, `/`-separated bytes; `.` for the root.
    pub rel: Vec<u8>,
    /// The handle of the directory holding it (the root's own handle for the root).
    pub parent: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Its name in `parent` (`.` for the root).
    pub name: std::ffi::OsString,
    /// `lstat` metadata taken during the walk (`fstatat` on `parent`).
    pub stat: Stat,
}

/// Ignore rules compiled into glob sets.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    by_name: GlobSet,
    by_path: GlobSet,
}

/// Checks one ignore pattern (as the config's `ignore` and `backup --exclude` take them).
///
/// # Errors
///
/// The pattern is not a valid glob ([`Error::Usage`], naming it).
pub fn check_ignore_pattern(pattern: &str) -> Result<()> {
    IgnoreRules::new(&[pattern.to_string()])
        .map(|_| ())
        .map_err(|e| Error::Usage(format!("bad --exclude pattern: {e}")))
}

impl IgnoreRules {
    /// Compiles the patterns (already validated by the config).
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let anchored = p.trim_start_matches('/').trim_end_matches('/');
            let glob = GlobBuilder::new(anchored)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Config(format!("ignore pattern {p:?}: {e}")))?;
            if p.trim_end_matches('/').contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Config(e.to_string()));
        Ok(IgnoreRules {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    /// Whether the entry at `rel` (relative path) is ignored.
    pub fn is_ignored(&self, rel: &Path) -> bool {
        let name_hit = rel
            .file_name()
            .is_some_and(|n| self.by_name.is_match(Path::new(n)));
        name_hit || self.by_path.is_match(rel)
    }
}

/// The digest-cache stamp of a file.
pub fn stamp(m: &Stat) -> FileStamp {
    FileStamp {
        size: m.size,
        mtime_ns: m
            .mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec),
        ctime_ns: m
            .ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(m.ctime_nsec),
        inode: m.ino,
    }
}

/// Resolves uid/gid to names, caching the answers.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, Option<Vec<u8>>>,
    groups: HashMap<u32, Option<Vec<u8>>>,
}

impl Names {
    /// The metafile metadata of an entry.
    pub fn meta(&mut self, m: &Stat) -> Meta {
        let (uid, gid) = (m.uid, m.gid);
        let user = self
            .users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name.into_bytes())
            })
            .clone();
        let group = self
            .groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name.into_bytes())
            })
            .clone();
        Meta {
            mode: m.mode & 0o7777,
            uid,
            gid,
            user,
            group,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

/// A relative path's bytes as an `OsStr`.
pub fn os(rel: &[u8]) -> &OsStr {
    OsStr::from_bytes(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules() {
        let r = IgnoreRules::new(&["*.tmp".into(), "/var/cache".into(), "home/*/.cache/".into()])
            .unwrap();
        assert!(r.is_ignored(Path::new("a/b/x.tmp")));
        assert!(r.is_ignored(Path::new("var/cache")));
        assert!(!r.is_ignored(Path::new("x/var/cache")));
        assert!(r.is_ignored(Path::new("home/al/.cache")));
        assert!(!r.is_ignored(Path::new("home/al/b/.cache")));
        assert!(!r.is_ignored(Path::new("a/b/x.tmpl")));
    }

    #[test]
    fn walk_sorted_and_ignoring() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        std::fs::write(d.path().join("b/x.tmp"), "").unwrap();
        std::fs::write(d.path().join("b/y"), "").unwrap();
        std::fs::write(d.path().join("a"), "").unwrap();
        let rules = IgnoreRules::new(&["*.tmp".into()]).unwrap();
        let rels: Vec<Vec<u8>> = walk(d.path(), false, rules)
            .unwrap()
            .map(|i| i.unwrap().rel)
            .collect();
        assert_eq!(
            rels,
            vec![b".".to_vec(), b"a".to_vec(), b"b".to_vec(), b"b/y".to_vec()]
        );
    }
}
