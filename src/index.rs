//! The local index (SQLite): dedup state per target and the digest cache. All the SQL of
//! the state directory (the temporary key sets of gc and verify, src/keyset.rs, are the
//! only other SQL, on throwaway files).
//!
//! It is a cache, never the truth: losing it costs re-uploads, never data. It records a
//! chunk only after the target acknowledged the pack holding it (invariant 2), so a crash
//! at any instant leaves it listing only stored chunks. The digest cache lists a file's
//! chunk hashes; a hit is used only when every one of those chunks is in the chunk table,
//! so a file row written before its chunks were acknowledged is harmless.
//!
//! Dedup state is per target *and* per recipient set: chunks encrypted to one set of keys
//! are never reused for a run encrypted to another. A target is known by its URL and by
//! the marker this index left on it (`markers/<id>`, docs/FORMAT.md section 1): a wiped,
//! replaced or different target at the same URL lacks the marker, so the state recorded
//! for it is never used for that target ([`Index::domains`], backup.rs).
//!
//! gc on another host may delete objects this index still lists (the stale-index hazard),
//! so a listed chunk is reused only when gc cannot have deleted its object (docs/FORMAT.md,
//! "Garbage collection"): it was stored after the dedup horizon (`dedup_max_age` before
//! the run started), or its object belongs to the newest committed run of one of this
//! host's sources (table `protected`), which prune never deletes. Backups sharing the
//! index hold its lock ([`crate::state::StateLock`]), so that set cannot change under a running backup.
//!
//! No secret is stored here: plaintext hashes and paths, never contents or keys.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::{Error, Result};
use crate::format::metafile::{ChunkRef, Encoding};
use crate::ids::{ChunkHash, ObjectKey};

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    keyset TEXT NOT NULL,
    marker TEXT NOT NULL DEFAULT '',
    last_used INTEGER NOT NULL DEFAULT 0,
    UNIQUE (url, keyset, marker)
);
CREATE TABLE IF NOT EXISTS chunks (
    target INTEGER NOT NULL,
    hash BLOB NOT NULL,
    object BLOB NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    encoding INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (target, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    target INTEGER NOT NULL,
    source TEXT NOT NULL,
    path BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    hash BLOB NOT NULL,
    chunks BLOB NOT NULL,
    trusted INTEGER NOT NULL,
    PRIMARY KEY (target, source, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS protected (
    target INTEGER NOT NULL,
    object BLOB NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (target, object, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_runs (
    target INTEGER NOT NULL,
    source TEXT NOT NULL,
    run TEXT NOT NULL,
    PRIMARY KEY (target, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chains (
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    refs BLOB NOT NULL,
    meta BLOB NOT NULL,
    PRIMARY KEY (url, host, source)
) WITHOUT ROWID;
";

/// What identifies an unchanged file: if all of these match the last run, it is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
}

/// A digest-cache row.
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// The stamp recorded.
    pub stamp: FileStamp,
    /// Whole-file BLAKE3.
    pub hash: ChunkHash,
    /// Chunk hashes in order.
    pub chunks: Vec<ChunkHash>,
    /// Whether a matching stamp proves the content unchanged. False for files modified
    /// so close to the run that a later change could keep the same timestamp: those are
    /// read again, and the hash tells whether they changed.
    pub trusted: bool,
}

/// An open index.
pub struct Index {
    conn: Connection,
    path: PathBuf,
    horizon: i64,
}

impl Index {
    /// Opens (creating if needed) `state_dir/index.sqlite`.
    pub fn open(state_dir: &Path) -> Result<Index> {
        crate::state::prepare_state_dir(state_dir)?;
        let path = state_dir.join("index.sqlite");
        let fail = |e: rusqlite::Error| index_err(&path, e);
        let (conn, version) = retry_busy(|| init(&path).map_err(fail))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Index {
                path: path.clone(),
                message: format!(
                    "schema version {version} is newer than this coffer ({SCHEMA_VERSION}); \
                     upgrade coffer, or move the file away (it is only a cache)"
                ),
                source: None,
            });
        }
        Ok(Index {
            conn,
            path,
            horizon: i64::MIN,
        })
    }

    /// Chunks stored before `unix_secs` are reused only if their object is protected
    /// (see the module documentation). Until this is called every listed chunk is used.
    pub fn set_dedup_horizon(&mut self, unix_secs: i64) {
        self.horizon = unix_secs;
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        index_err(&self.path, e)
    }

    /// The id of the dedup domain for (target URL, recipient set, marker), created on
    /// first use, and marked as used now.
    pub fn target_id(&self, url: &str, keyset: &str, marker: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO targets (url, keyset, marker) VALUES (?1, ?2, ?3)",
                params![url, keyset, marker],
            )
            .map_err(|e| self.err(e))?;
        // Inserted just above if it was missing.
        let id = self
            .find_target_id(url, keyset, marker)?
            .ok_or_else(|| self.corrupt_row())?;
        self.conn
            .execute(
                "UPDATE targets SET last_used = ?2 WHERE id = ?1",
                params![id, chrono::Utc::now().timestamp()],
            )
            .map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// The id of the domain (URL, recipient set, marker), if this index has one: no row is
    /// made or touched (a dry run only reads).
    pub fn find_target_id(&self, url: &str, keyset: &str, marker: &str) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT id FROM targets WHERE url = ?1 AND keyset = ?2 AND marker = ?3",
                params![url, keyset, marker],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The markers of the dedup domains this index holds for (URL, recipient set), most
    /// recently used first; `""` is a domain recorded before markers existed.
    pub fn domains(&self, url: &str, keyset: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT marker FROM targets WHERE url = ?1 AND keyset = ?2
                 ORDER BY last_used DESC, id DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![url, keyset], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| self.err(e))
    }

    /// Gives the domain `old` (of URL and recipient set) the marker `new`: state recorded
    /// before markers existed is adopted by the marker first left on the target.
    pub fn rename_domain(&mut self, url: &str, keyset: &str, old: &str, new: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE targets SET marker = ?4 WHERE url = ?1 AND keyset = ?2 AND marker = ?3",
                params![url, keyset, old, new],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forgets everything recorded about a dedup domain (the target it described is gone
    /// or was replaced): its chunks, digest cache, protected objects and last runs.
    pub fn forget_domain(&mut self, target: i64) -> Result<()> {
        self.write(|tx| {
            for table in ["chunks", "files", "protected", "last_runs"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE target = ?1"),
                    params![target],
                )?;
            }
            Ok(())
        })
    }

    /// Forgets the chunks stored in `object` (it is gone from the target), so that no
    /// later run reuses them.
    pub fn forget_object(&mut self, target: i64, object: &ObjectKey) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM chunks WHERE target = ?1 AND object = ?2",
                params![target, &object.0[..]],
            )?;
            tx.execute(
                "DELETE FROM protected WHERE target = ?1 AND object = ?2",
                params![target, &object.0[..]],
            )?;
            Ok(())
        })
    }

    /// Starts a read transaction for a batch of lookups, ending the previous batch's: one
    /// set of SQLite's WAL read locks per batch instead of per statement. A batch sees the
    /// index as it was when it began, so chunks acknowledged meanwhile look unknown to it
    /// (they are then deduplicated by the packer, which reads outside any batch).
    pub fn renew_read_batch(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(|e| self.err(e))
    }

    /// Ends the current read batch, if any.
    pub fn end_read_batch(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Where a chunk is stored on `target`, if it was acknowledged and may still be
    /// reused (stored after the dedup horizon, or in a protected object).
    pub fn lookup_chunk(&self, target: i64, hash: &ChunkHash) -> Result<Option<ChunkRef>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT object, offset, length, size, encoding FROM chunks c
                 WHERE target = ?1 AND hash = ?2 AND (stored_at >= ?3 OR EXISTS
                   (SELECT 1 FROM protected p WHERE p.target = c.target AND p.object = c.object))",
            )
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row(params![target, &hash.0[..], self.horizon], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((object, offset, length, size, encoding)) = row else {
            return Ok(None);
        };
        let object: [u8; 32] = object.try_into().map_err(|_| self.corrupt_row())?;
        Ok(Some(ChunkRef {
            object: ObjectKey(object),
            offset: offset as u64,
            length: length as u64,
            size: size as u64,
            hash: *hash,
            encoding: Encoding::from_code(encoding).ok_or_else(|| self.corrupt_row())?,
        }))
    }

    fn corrupt_row(&self) -> Error {
        Error::Index {
            path: self.path.clone(),
            message: "malformed row; move the file away (it is only a cache) and run again".into(),
            source: None,
        }
    }

    /// Records the chunks of an acknowledged pack, in one transaction. `stored_at` (unix
    /// seconds) must not be later than the object's creation on the target: the time the
    /// pack was sealed, before its upload began.
    pub fn record_chunks(
        &mut self,
        target: i64,
        chunks: &[ChunkRef],
        stored_at: i64,
    ) -> Result<()> {
        // In key order: a pack's chunks land all over the table (their hashes are
        // random), and sorted they are written in one sweep over its pages instead of
        // one random page each.
        let mut sorted: Vec<&ChunkRef> = chunks.iter().collect();
        sorted.sort_unstable_by_key(|c| c.hash);
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO chunks
                 (target, hash, object, offset, length, size, encoding, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for c in sorted {
                stmt.execute(params![
                    target,
                    &c.hash.0[..],
                    &c.object.0[..],
                    c.offset as i64,
                    c.length as i64,
                    c.size as i64,
                    c.encoding.code(),
                    stored_at
                ])?;
            }
            Ok(())
        })
    }

    /// Bytes of the files the last run of `source` to `target` recorded: what the next
    /// run will go through, about (the progress display's estimate). Zero before a
    /// first run.
    pub fn source_bytes(&self, target: i64, source: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE target = ?1 AND source = ?2",
                params![target, source],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// The id of the last run of `source` to `target` this index saw committed.
    pub fn last_run(&self, target: i64, source: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT run FROM last_runs WHERE target = ?1 AND source = ?2",
                params![target, source],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Called just before a run of `source` is committed: its previous run stops
    /// protecting objects, since prune may delete it once the new run exists. If the
    /// commit fails, nothing protects them until the next committed run: safe, at the
    /// cost of re-uploading chunks older than the dedup horizon.
    pub fn begin_commit(&mut self, target: i64, source: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM protected WHERE target = ?1 AND source = ?2",
                params![target, source],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records a committed run: the objects it references are protected (prune never
    /// deletes a source's newest run) until the source's next commit.
    pub fn committed(
        &mut self,
        target: i64,
        source: &str,
        run: &str,
        objects: impl IntoIterator<Item = ObjectKey>,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM protected WHERE target = ?1 AND source = ?2",
                params![target, source],
            )?;
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO protected (target, object, source) VALUES (?1, ?2, ?3)",
            )?;
            for o in objects {
                stmt.execute(params![target, &o.0[..], source])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO last_runs (target, source, run) VALUES (?1, ?2, ?3)",
                params![target, source, run],
            )?;
            Ok(())
        })
    }

    /// The chain position of the last run this index committed for `host` and `source`
    /// to the target at `url`, with the digests of that run's object list and metafile:
    /// what the next run records as its predecessor. `None`: start a new chain.
    pub fn chain_head(
        &self,
        url: &str,
        host: &str,
        source: &str,
    ) -> Result<Option<(crate::format::refs::Chain, crate::format::refs::Link)>> {
        let row: Option<(String, i64, Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT chain, seq, refs, meta FROM chains
                 WHERE url = ?1 AND host = ?2 AND source = ?3",
                params![url, host, source],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((id, seq, refs, meta)) = row else {
            return Ok(None);
        };
        let hash = |b: Vec<u8>| <[u8; 32]>::try_from(b).ok().map(ChunkHash);
        match (u64::try_from(seq).ok(), hash(refs), hash(meta)) {
            (Some(seq @ 1..), Some(refs), Some(metafile)) => Ok(Some((
                crate::format::refs::Chain {
                    id,
                    seq,
                    previous: None,
                },
                crate::format::refs::Link { refs, metafile },
            ))),
            // A damaged row: a new chain is what a lost index would give too.
            _ => Ok(None),
        }
    }

    /// Records the run just committed as the head of its chain (see [`Index::chain_head`]).
    pub fn record_chain_head(
        &mut self,
        url: &str,
        host: &str,
        source: &str,
        chain: &crate::format::refs::Chain,
        link: &crate::format::refs::Link,
    ) -> Result<()> {
        let seq = i64::try_from(chain.seq).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO chains (url, host, source, chain, seq, refs, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    url,
                    host,
                    source,
                    chain.id,
                    seq,
                    &link.refs.0[..],
                    &link.metafile.0[..]
                ],
            )?;
            Ok(())
        })
    }

    /// The digest-cache row for a path.
    pub fn lookup_file(
        &self,
        target: i64,
        source: &str,
        path: &[u8],
    ) -> Result<Option<CachedFile>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT size, mtime_ns, ctime_ns, inode, hash, chunks, trusted FROM files
                 WHERE target = ?1 AND source = ?2 AND path = ?3",
            )
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row(params![target, source, path], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((size, mtime_ns, ctime_ns, inode, hash, chunks, trusted)) = row else {
            return Ok(None);
        };
        if chunks.len() % 32 != 0 {
            return Err(self.corrupt_row());
        }
        Ok(Some(CachedFile {
            stamp: FileStamp {
                size: size as u64,
                mtime_ns,
                ctime_ns,
                inode: inode as u64,
            },
            hash: ChunkHash(hash.try_into().map_err(|_| self.corrupt_row())?),
            chunks: chunks
                .chunks_exact(32)
                .map(|c| ChunkHash(c.try_into().expect("32 bytes")))
                .collect(),
            trusted,
        }))
    }

    /// Writes digest-cache rows, in one transaction.
    pub fn record_files(
        &mut self,
        target: i64,
        source: &str,
        files: &[(Vec<u8>, CachedFile)],
    ) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO files
                 (target, source, path, size, mtime_ns, ctime_ns, inode, hash, chunks, trusted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (p, f) in files {
                let chunks: Vec<u8> = f.chunks.iter().flat_map(|c| c.0).collect();
                stmt.execute(params![
                    target,
                    source,
                    p,
                    f.stamp.size as i64,
                    f.stamp.mtime_ns,
                    f.stamp.ctime_ns,
                    f.stamp.inode as i64,
                    &f.hash.0[..],
                    chunks,
                    f.trusted
                ])?;
            }
            Ok(())
        })
    }

    /// Runs `f` in one write transaction, taken at its start (so concurrent writers wait
    /// on SQLite's lock instead of failing half way), and commits it.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let run = || {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| index_err(&self.path, e))
    }
}

fn index_err(path: &Path, e: rusqlite::Error) -> Error {
    let message = if crate::error::sqlite_busy(&e) {
        "in use by another coffer run; wait for it to finish".into()
    } else if matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    ) {
        format!(
            "is damaged ({e}). It is only a cache: move it away (`mv {p} {p}.damaged`, with \
             its -wal and -shm files) and run again; the next backup rebuilds it, uploading \
             again what it cannot prove is stored",
            p = crate::text::path(path)
        )
    } else {
        e.to_string()
    };
    Error::Index {
        path: path.to_path_buf(),
        message,
        source: Some(Box::new(e)),
    }
}

/// Opens the file, switches it to WAL and creates the schema. SQLite does not always call
/// the busy handler here (switching to WAL, recovering a WAL another process is creating),
/// so two runs opening a fresh index at the same moment can fail at once: [`retry_busy`].
/// Returns the connection and the schema version the file had.
fn init(path: &Path) -> rusqlite::Result<(Connection, i64)> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if (1..3).contains(&version) {
        // Version 3 keys targets by their marker too; older rows get the empty marker
        // (adopted by the first marker a backup leaves on the target).
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE targets RENAME TO targets_v2;
             CREATE TABLE targets (
                 id INTEGER PRIMARY KEY,
                 url TEXT NOT NULL,
                 keyset TEXT NOT NULL,
                 marker TEXT NOT NULL DEFAULT '',
                 last_used INTEGER NOT NULL DEFAULT 0,
                 UNIQUE (url, keyset, marker)
             );
             INSERT INTO targets (id, url, keyset) SELECT id, url, keyset FROM targets_v2;
             DROP TABLE targets_v2;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if version <= SCHEMA_VERSION {
        conn.execute_batch(SCHEMA)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
    }
    Ok((conn, version))
}

/// Retries `f` while its error may go away on a second try ([`Error::is_retryable`]: for
/// the index, SQLite answering busy or locked), for up to 30 seconds.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f() {
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(dir.path()).unwrap();
        let t = idx.target_id("file:///x", "AAA", "m1").unwrap();
        assert_eq!(idx.target_id("file:///x", "AAA", "m1").unwrap(), t);
        let t2 = idx.target_id("file:///x", "BBB", "m1").unwrap();
        assert_ne!(t, t2, "another recipient set is another dedup domain");
        let h = ChunkHash::of(b"c");
        assert!(idx.lookup_chunk(t, &h).unwrap().is_none());
        let c = ChunkRef {
            object: ObjectKey::of(b"pack"),
            offset: 10,
            length: 20,
            size: 1,
            hash: h,
            encoding: Encoding::Raw,
        };
        idx.record_chunks(t, std::slice::from_ref(&c), 1000)
            .unwrap();
        assert_eq!(idx.lookup_chunk(t, &h).unwrap().unwrap(), c);
        assert!(idx.lookup_chunk(t2, &h).unwrap().is_none());
        let f = CachedFile {
            stamp: FileStamp {
                size: 1,
                mtime_ns: 5,
                ctime_ns: 6,
                inode: 7,
            },
            hash: h,
            chunks: vec![h, h],
            trusted: true,
        };
        idx.record_files(t, "home", &[(b"a\nb".to_vec(), f.clone())])
            .unwrap();
        let back = idx.lookup_file(t, "home", b"a\nb").unwrap().unwrap();
        assert_eq!(back.stamp, f.stamp);
        assert_eq!(back.chunks, f.chunks);
        drop(idx);
        // reopening keeps the data
        let idx = Index::open(dir.path()).unwrap();
        assert!(idx.lookup_chunk(t, &h).unwrap().is_some());
    }

    #[test]
    fn old_chunks_are_reused_only_from_protected_objects() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(dir.path()).unwrap();
        let t = idx.target_id("file:///x", "AAA", "m1").unwrap();
        let chunk = |data: &[u8], pack: &[u8]| ChunkRef {
            object: ObjectKey::of(pack),
            offset: 0,
            length: 1,
            size: 1,
            hash: ChunkHash::of(data),
            encoding: Encoding::Raw,
        };
        let (old, young) = (chunk(b"old", b"p1"), chunk(b"young", b"p2"));
        idx.record_chunks(t, std::slice::from_ref(&old), 100)
            .unwrap();
        idx.record_chunks(t, std::slice::from_ref(&young), 200)
            .unwrap();
        idx.set_dedup_horizon(150);
        assert!(idx.lookup_chunk(t, &old.hash).unwrap().is_none(), "too old");
        assert!(idx.lookup_chunk(t, &young.hash).unwrap().is_some());
        // The newest run of a source protects its objects, whatever their age ...
        idx.committed(t, "home", "run1", [old.object]).unwrap();
        assert_eq!(idx.lookup_chunk(t, &old.hash).unwrap(), Some(old.clone()));
        assert_eq!(idx.last_run(t, "home").unwrap().as_deref(), Some("run1"));
        // ... until the source's next commit begins (prune may then delete that run).
        idx.begin_commit(t, "etc").unwrap();
        assert!(
            idx.lookup_chunk(t, &old.hash).unwrap().is_some(),
            "other source"
        );
        idx.begin_commit(t, "home").unwrap();
        assert!(idx.lookup_chunk(t, &old.hash).unwrap().is_none());
        idx.committed(t, "home", "run2", [young.object]).unwrap();
        assert!(idx.lookup_chunk(t, &old.hash).unwrap().is_none());
        assert_eq!(idx.last_run(t, "home").unwrap().as_deref(), Some("run2"));
    }

    #[test]
    fn domains_are_keyed_by_marker_and_old_indexes_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            // A version-2 index, as coffer before markers made it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE targets (id INTEGER PRIMARY KEY, url TEXT NOT NULL,
                 keyset TEXT NOT NULL, UNIQUE (url, keyset));
                 INSERT INTO targets (id, url, keyset) VALUES (7, 'file:///x', 'AAA');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(dir.path()).unwrap().permissions(),
            0o700,
        );
        let mut idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.domains("file:///x", "AAA").unwrap(), [""]);
        idx.rename_domain("file:///x", "AAA", "", "m1").unwrap();
        assert_eq!(
            idx.target_id("file:///x", "AAA", "m1").unwrap(),
            7,
            "state kept"
        );
        let other = idx.target_id("file:///x", "AAA", "m2").unwrap();
        assert_ne!(other, 7);
        assert_eq!(
            idx.domains("file:///x", "AAA").unwrap()[0],
            "m2",
            "most recent first"
        );
        let c = ChunkRef {
            object: ObjectKey::of(b"p"),
            offset: 0,
            length: 1,
            size: 1,
            hash: ChunkHash::of(b"c"),
            encoding: Encoding::Raw,
        };
        idx.record_chunks(7, std::slice::from_ref(&c), 1).unwrap();
        idx.forget_object(7, &c.object).unwrap();
        assert!(idx.lookup_chunk(7, &c.hash).unwrap().is_none());
        idx.record_chunks(7, std::slice::from_ref(&c), 1).unwrap();
        idx.forget_domain(7).unwrap();
        assert!(idx.lookup_chunk(7, &c.hash).unwrap().is_none());
    }
}
