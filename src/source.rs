//! Stage 1: walking a source tree. Yields every entry below the root with its `lstat`
//! metadata, in a stable (name-sorted) order, applying the ignore rules.
//!
//! Ignore patterns are globs. A pattern with no `/` matches an entry's name at any depth
//! (`*.tmp`, `node_modules`); a pattern with a `/` matches the path relative to the source
//! root (`/var/cache`, `home/*/.cache`; a leading `/` is optional). An ignored directory
//! is not descended into.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::format::metafile::Meta;
use crate::index::FileStamp;

/// One walked entry.
#[derive(Debug)]
pub struct Item {
    /// Absolute path on this machine.
    pub abs: PathBuf,
    /// Path relative to the source root, `/`-separated bytes; `.` for the root.
    pub rel: Vec<u8>,
    /// `lstat` metadata taken during the walk.
    pub metadata: std::fs::Metadata,
}

/// Ignore rules compiled into glob sets.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    by_name: GlobSet,
    by_path: GlobSet,
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

/// Walks `root`. Errors on individual entries come back as `Err` items (path + reason)
/// and the walk goes on; an error on the root itself is returned at once.
pub fn walk(
    root: &Path,
    one_file_system: bool,
    rules: IgnoreRules,
) -> Result<impl Iterator<Item = Result<Item>>> {
    let root_meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if !root_meta.is_dir() {
        return Err(Error::Config(format!(
            "source path {} is not a directory",
            root.display()
        )));
    }
    let root = root.to_path_buf();
    let walker = walkdir::WalkDir::new(&root)
        .follow_links(false)
        .same_file_system(one_file_system)
        .sort_by_file_name()
        .into_iter()
        .filter_entry({
            let root = root.clone();
            move |e| {
                e.depth() == 0
                    || !rules.is_ignored(e.path().strip_prefix(&root).unwrap_or(e.path()))
            }
        });
    Ok(walker.map(move |res| {
        let entry = res.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.clone());
            let io = e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("file system loop"));
            Error::io(path, io)
        })?;
        let metadata = entry
            .metadata()
            .map_err(|e| Error::io(entry.path(), std::io::Error::other(e.to_string())))?;
        let rel_path = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        let rel = if rel_path.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            rel_path.as_os_str().as_bytes().to_vec()
        };
        Ok(Item {
            abs: entry.into_path(),
            rel,
            metadata,
        })
    }))
}

/// The digest-cache stamp of a file.
pub fn stamp(m: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        inode: m.ino(),
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
    pub fn meta(&mut self, m: &std::fs::Metadata) -> Meta {
        let (uid, gid) = (m.uid(), m.gid());
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
            mode: m.mode() & 0o7777,
            uid,
            gid,
            user,
            group,
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
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
