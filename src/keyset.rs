//! A set of object keys too large for memory: the keys that runs reference, in a
//! temporary SQLite file (gc and verify), each marked once the target's listing showed
//! it, so that what is referenced and missing falls out at the end. Memory stays
//! bounded however many objects the target holds (invariant 5). This and the local index
//! (src/index.rs) are the only SQL.

use std::collections::BTreeMap;
use std::path::Path;

use object_store::path::Path as StorePath;
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::refs;
use crate::ids::ObjectKey;
use crate::store::Reader;

/// A set of object keys in a temporary SQLite file, each marked once the target's
/// listing showed it.
pub(crate) struct KeySet {
    conn: Connection,
    path: std::path::PathBuf,
    what: &'static str,
}

/// An error of the temporary key set (`what`) at `path`.
pub(crate) fn key_set_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

impl KeySet {
    /// A new set in the file at `path`; `what` names it in errors.
    pub(crate) fn create(path: &Path, what: &'static str) -> Result<Self> {
        let fail = |e| key_set_err(path, what, e);
        let conn = Connection::open(path).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE keys (key BLOB PRIMARY KEY, seen INTEGER NOT NULL DEFAULT 0)
                 WITHOUT ROWID;",
        )
        .map_err(fail)?;
        Ok(KeySet {
            conn,
            path: path.to_path_buf(),
            what,
        })
    }

    /// Adds an object list's keys. The outer result is the key set's own failure; the
    /// inner one the list's: on a malformed list, the keys read before the damage are
    /// still added (keeping too much is safe, too little is not).
    pub(crate) fn add(
        &mut self,
        list: impl std::io::BufRead,
        what: &str,
    ) -> Result<std::result::Result<refs::Header, Error>> {
        let (path, what_set) = (&self.path, self.what);
        let fail = |e| key_set_err(path, what_set, e);
        let tx = self.conn.transaction().map_err(fail)?;
        let mut failed = None;
        let read = {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO keys (key) VALUES (?1)")
                .map_err(fail)?;
            refs::read_each(list, what, |k| {
                stmt.execute(params![&k.0[..]]).map(drop).map_err(|e| {
                    let e = fail(e);
                    failed = Some(e);
                    Error::Internal("the key set failed".into())
                })
            })
        };
        if let Some(e) = failed {
            return Err(e);
        }
        tx.commit().map_err(fail)?;
        Ok(read)
    }

    /// Adds `key`; whether it was not in the set before.
    pub(crate) fn insert_new(&mut self, key: &ObjectKey) -> Result<bool> {
        let fail = |e| key_set_err(&self.path, self.what, e);
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO keys (key) VALUES (?1)")
            .map_err(fail)?;
        stmt.execute(params![&key.0[..]])
            .map(|n| n > 0)
            .map_err(fail)
    }

    /// Whether `key` is referenced; marks it as found on the target.
    pub(crate) fn contains(&self, key: &ObjectKey) -> Result<bool> {
        let fail = |e| key_set_err(&self.path, self.what, e);
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE keys SET seen = 1 WHERE key = ?1")
            .map_err(fail)?;
        stmt.execute(params![&key.0[..]])
            .map(|n| n > 0)
            .map_err(fail)
    }

    /// Referenced keys the listing of the target did not show, at most `limit`, and
    /// whether there were more.
    pub(crate) fn unseen(&self, limit: usize) -> Result<(Vec<ObjectKey>, bool)> {
        let fail = |e| key_set_err(&self.path, self.what, e);
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM keys WHERE seen = 0 ORDER BY key LIMIT ?1")
            .map_err(fail)?;
        let rows = stmt
            .query_map(params![limit as i64 + 1], |r| r.get::<_, Vec<u8>>(0))
            .map_err(fail)?;
        let mut keys = Vec::new();
        for row in rows {
            let bytes = row.map_err(fail)?;
            if let Ok(k) = <[u8; 32]>::try_from(bytes.as_slice()) {
                keys.push(ObjectKey(k));
            }
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok((keys, more))
    }
}

/// A set of byte strings (paths) in a temporary SQLite file.
pub(crate) struct PathSet {
    conn: Connection,
    path: std::path::PathBuf,
}

impl PathSet {
    /// A new set in the file at `path`.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let fail = |e| key_set_err(path, "verify's temporary path set", e);
        let conn = Connection::open(path).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE paths (path BLOB PRIMARY KEY) WITHOUT ROWID; BEGIN;",
        )
        .map_err(fail)?;
        Ok(PathSet {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn insert(&mut self, p: &[u8]) -> Result<()> {
        let fail = |e| key_set_err(&self.path, "verify's temporary path set", e);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO paths (path) VALUES (?1)")
            .and_then(|mut s| s.execute(params![p]))
            .map(drop)
            .map_err(fail)
    }

    pub(crate) fn contains(&self, p: &[u8]) -> Result<bool> {
        let fail = |e| key_set_err(&self.path, "verify's temporary path set", e);
        self.conn
            .prepare_cached("SELECT 1 FROM paths WHERE path = ?1")
            .and_then(|mut s| s.exists(params![p]))
            .map_err(fail)
    }
}

/// Which packs `verify --data --sample` has checked, per target: a small SQLite file in
/// the state directory, so that repeated samples cover every pack over time. Losing it
/// only means checking some packs again.
pub struct Coverage {
    conn: Connection,
    path: std::path::PathBuf,
    target: String,
}

impl Coverage {
    /// Opens (creating) `state_dir/verify-coverage.sqlite` for the target at `url`.
    ///
    /// # Errors
    ///
    /// The state directory or the file cannot be used.
    pub fn open(state_dir: &Path, url: &str) -> Result<Coverage> {
        crate::state::prepare_state_dir(state_dir)?;
        let path = state_dir.join("verify-coverage.sqlite");
        let fail = |e| key_set_err(&path, "verify's coverage record", e);
        let conn = Connection::open(&path).map_err(fail)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS covered (target TEXT NOT NULL, object BLOB NOT NULL,
                 at INTEGER NOT NULL, PRIMARY KEY (target, object)) WITHOUT ROWID;",
        )
        .map_err(fail)?;
        Ok(Coverage {
            conn,
            path,
            target: url.to_string(),
        })
    }

    fn fail(&self, e: rusqlite::Error) -> Error {
        key_set_err(&self.path, "verify's coverage record", e)
    }

    /// Whether `key` was checked in the current round.
    pub(crate) fn covered(&self, key: &ObjectKey) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM covered WHERE target = ?1 AND object = ?2")
            .and_then(|mut s| s.exists(params![self.target, &key.0[..]]))
            .map_err(|e| self.fail(e))
    }

    /// Records `keys` as checked now.
    pub(crate) fn record(&mut self, keys: &[ObjectKey]) -> Result<()> {
        let now = chrono::Utc::now().timestamp();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| key_set_err(&self.path, "verify's coverage record", e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO covered (target, object, at) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| key_set_err(&self.path, "verify's coverage record", e))?;
            for k in keys {
                stmt.execute(params![self.target, &k.0[..], now])
                    .map_err(|e| key_set_err(&self.path, "verify's coverage record", e))?;
            }
        }
        tx.commit()
            .map_err(|e| key_set_err(&self.path, "verify's coverage record", e))
    }

    /// Starts a new round: every pack counts as unchecked again.
    pub(crate) fn reset(&mut self) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM covered WHERE target = ?1",
                params![self.target],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }
}

/// A referenced object that is not on the target.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MissingObject {
    /// Its name.
    pub object: String,
    /// The runs whose object lists reference it: `host/source/run`.
    pub runs: Vec<String>,
}

/// For each missing object, the runs (`lists`: a name and the key of its object list)
/// that reference it: a second read of the lists, made only when objects are missing.
pub(crate) fn name_missing(
    store: &Reader,
    lists: impl IntoIterator<Item = (String, StorePath)>,
    missing: &[ObjectKey],
) -> Result<Vec<MissingObject>> {
    // A list that cannot be read whole still names what it holds before the damage.
    let wanted: std::collections::HashSet<ObjectKey> = missing.iter().copied().collect();
    let mut by_key: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
    for (name, path) in lists {
        let _ = refs::read_each(store.stream(&path)?, &name, |k| {
            if wanted.contains(&k) {
                by_key.entry(k).or_default().push(name.clone());
            }
            Ok(())
        });
    }
    Ok(missing
        .iter()
        .map(|k| MissingObject {
            object: crate::store::data_path(k).to_string(),
            runs: by_key.remove(k).unwrap_or_default(),
        })
        .collect())
}
