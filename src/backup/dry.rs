//! `coffer backup --dry-run`: what a backup of a tree source would read and store, from
//! the source and the local index alone. Nothing is encrypted, uploaded or committed, no
//! request is made of the target, and the local index is only read.
//!
//! It walks the tree with the backup's own walk and ignore rules; a file whose stamp
//! (size, mtime, ctime, inode) matches the index's digest cache is unchanged (a backup
//! may still read a file the cache does not trust, so "to read" is a lower bound); the
//! others are read and cut into chunks as a backup cuts them, and a chunk is new unless
//! the index holds it within the dedup horizon or it came earlier in this same walk.
//! Chunk hashes seen are kept in a temporary key set on disk, so memory stays flat.

use serde::Serialize;

use crate::chunker::Chunker;
use crate::config::{Config, Input, SourceConfig, TargetConfig};
use crate::error::{Error, Result};
use crate::ids::{ChunkHash, ObjectKey};
use crate::index::Index;
use crate::source::{self, IgnoreRules};

/// What a backup of one source to one target would do.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct DryRun {
    /// Source name.
    pub source: String,
    /// Target name.
    pub target: String,
    /// Whether the local index knows this target for this source's recipients (if not,
    /// everything counts as new, as it would in a first backup).
    pub known_target: bool,
    /// Regular files found.
    pub files: u64,
    /// Files the digest cache says are unchanged (not read).
    pub files_unchanged: u64,
    /// Files that would be read.
    pub files_to_read: u64,
    /// Entries that could not be read (named in `problems`).
    pub skipped: u64,
    /// Bytes of all regular files.
    pub bytes_total: u64,
    /// Bytes that would be read.
    pub bytes_to_read: u64,
    /// Chunks of the files read.
    pub chunks: u64,
    /// Chunks that would be stored (before compression and encryption).
    pub chunks_new: u64,
    /// Their bytes.
    pub bytes_new: u64,
    /// What could not be read, and why.
    pub problems: Vec<String>,
}

/// What a backup of `source` (a tree) to each of its targets would read and store.
pub fn dry_run_source(config: &Config, source: &SourceConfig) -> Vec<Result<DryRun>> {
    let keyset = match crate::crypto::load_recipients(&source.recipients) {
        Ok(e) => e.fingerprints().join(","),
        Err(e) => return vec![Err(e)],
    };
    source
        .targets
        .iter()
        .map(|name| {
            let target = config.target(name)?;
            dry_run(config, source, &target, &keyset)
        })
        .collect()
}

/// What a backup of `source` (a tree) to `target` would read and store.
///
/// # Errors
///
/// A source that is not a tree (a command or stdin source: its output is only known by
/// running it), an unreadable source root, a local index that cannot be read.
pub fn dry_run(
    config: &Config,
    source: &SourceConfig,
    target: &TargetConfig,
    keyset: &str,
) -> Result<DryRun> {
    let Input::Tree(root) = &source.input else {
        return Err(Error::Usage(format!(
            "source {} stores a command's output or standard input: a dry run cannot know \
             it without running the command",
            source.name
        )));
    };
    let mut out = DryRun {
        source: source.name.clone(),
        target: target.name.clone(),
        ..Default::default()
    };
    let mut index = Index::open(&config.state_dir)?;
    let horizon = chrono::Utc::now().timestamp() - target.dedup_max_age.as_secs() as i64;
    index.set_dedup_horizon(horizon);
    let target_id = match index.domains(&target.url, keyset)?.first() {
        Some(marker) => index.find_target_id(&target.url, keyset, marker)?,
        None => None,
    };
    out.known_target = target_id.is_some();
    let tmp_dir = config.state_dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("dry-run-")
        .suffix(".sqlite")
        .tempfile_in(&tmp_dir)
        .map_err(|e| Error::io(&tmp_dir, e))?;
    let mut seen = crate::keyset::KeySet::create(tmp.path(), "the dry run's chunk set")?;
    let rules = IgnoreRules::new(&source.ignore)?;
    for walked in source::walk(root, source.one_file_system, rules)? {
        let item = match walked {
            Ok(item) => item,
            Err(skipped) => {
                out.skipped += 1;
                out.problems.push(skipped.error.to_string());
                continue;
            }
        };
        if !item.stat.is_file() {
            continue;
        }
        out.files += 1;
        out.bytes_total += item.stat.size;
        let stamp = source::stamp(&item.stat);
        let cached = match target_id {
            Some(t) => index.lookup_file(t, &source.name, &item.rel)?,
            None => None,
        };
        if cached.is_some_and(|c| c.trusted && c.stamp == stamp) {
            out.files_unchanged += 1;
            continue;
        }
        out.files_to_read += 1;
        out.bytes_to_read += item.stat.size;
        let read = super::read::open_beneath(&item).and_then(|file| {
            let reader = source::SparseReader::new(&file, item.stat.is_sparse());
            let mut chunks = Vec::new();
            for data in Chunker::new(reader, source.chunking, item.stat.size) {
                let data = data?;
                chunks.push((ChunkHash::of(&data), data.len() as u64));
            }
            Ok(chunks)
        });
        let chunks = match read {
            Ok(c) => c,
            Err(e) => {
                out.skipped += 1;
                out.problems
                    .push(format!("{}: {e}", crate::text::path(&item.abs)));
                continue;
            }
        };
        for (hash, len) in chunks {
            out.chunks += 1;
            let stored = match target_id {
                Some(t) => index.lookup_chunk(t, &hash)?.is_some(),
                None => false,
            };
            if stored || !seen.insert_new(&ObjectKey(hash.0))? {
                continue;
            }
            out.chunks_new += 1;
            out.bytes_new += len;
        }
    }
    Ok(out)
}
