//! The target: a concrete [`Store`] over `Arc<dyn ObjectStore>`, and the key layout.
//!
//! Layout under the target URL (docs/FORMAT.md):
//! - `data/<first 2 hex>/<64 hex>`: a pack, named by the BLAKE3 of its bytes;
//! - `runs/<host>/<source>/<run-id>.meta`: a run's encrypted metafile;
//! - `runs/<host>/<source>/<run-id>.refs`: the object keys the run references (plain).
//!
//! Objects are created with create-only semantics and never overwritten: "already
//! exists" on a data object is a dedup hit, not an error.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::TargetConfig;
use crate::error::{Error, Result};
use crate::ids::{ObjectKey, RunId};

/// The process-wide async runtime that drives object_store.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-io")
            .enable_all()
            .build()
            .expect("tokio runtime starts")
    })
}

/// The outcome of a create-only put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An object of that name was already there (for content-named objects: same bytes).
    AlreadyExists,
}

/// One target.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    name: String,
}

/// A run as listed on a target (from object names alone: no key needed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunInfo {
    /// Host that made it.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: String,
    /// Start time (UTC, RFC 3339).
    pub time: String,
    /// Size of the encrypted metafile in bytes.
    pub metafile_bytes: u64,
}

/// Key of a data object.
pub fn data_path(key: &ObjectKey) -> StorePath {
    let hex = key.to_hex();
    StorePath::from(format!("data/{}/{}", &hex[..2], hex))
}

/// Escapes a host name into a path segment: `[A-Za-z0-9._-]` stay, other bytes are `+XX`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    if out.starts_with('.') {
        out.replace_range(..1, "+2E");
    }
    out
}

fn decode_segment(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Key of a run's metafile (`ext` = "meta") or object list (`ext` = "refs").
pub fn run_path(host: &str, source: &str, id: &RunId, ext: &str) -> StorePath {
    StorePath::from(format!(
        "runs/{}/{}/{}.{ext}",
        encode_segment(host),
        source,
        id
    ))
}

impl Store {
    /// Opens a target. With `create`, a missing local folder is created (backup); without,
    /// it must exist (restore, runs).
    pub fn open(target: &TargetConfig, create: bool) -> Result<Store> {
        let fail = |message: String| Error::Store {
            target: target.name.clone(),
            message,
        };
        let url = url::Url::parse(&target.url).map_err(|e| fail(format!("bad URL: {e}")))?;
        let inner: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| fail(format!("{} is not a local path", target.url)))?;
                if create {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
                } else if !dir.is_dir() {
                    return Err(fail(format!(
                        "{} does not exist (is the disk mounted?)",
                        dir.display()
                    )));
                }
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| fail(e.to_string()))?
                    .with_fsync(true);
                Arc::new(fs)
            }
            other => return Err(fail(format!("unsupported scheme {other:?}"))),
        };
        Ok(Store {
            inner,
            name: target.name.clone(),
        })
    }

    /// The target's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    pub(crate) fn map_err(&self, what: &StorePath, op: &str, e: object_store::Error) -> Error {
        map_store_error(&self.name, what, op, e)
    }

    /// Creates `path` with `bytes` unless it exists (blocking).
    pub fn put_create(&self, path: &StorePath, bytes: Bytes) -> Result<PutOutcome> {
        let store = self.inner.clone();
        let p = path.clone();
        let res = runtime().block_on(async move { put_create(&*store, &p, bytes).await });
        res.map_err(|e| self.map_err(path, "create", e))
    }

    /// Reads a whole object (blocking).
    pub fn get(&self, path: &StorePath) -> Result<Bytes> {
        let store = self.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move { store.get(&p).await?.bytes().await })
            .map_err(|e| self.map_err(path, "read", e))
    }

    /// Reads `range` of an object (blocking).
    pub fn get_range(&self, path: &StorePath, range: std::ops::Range<u64>) -> Result<Bytes> {
        let store = self.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move { store.get_range(&p, range).await })
            .map_err(|e| self.map_err(path, "read", e))
    }

    /// Lists the runs on the target, oldest first.
    pub fn list_runs(&self) -> Result<Vec<RunInfo>> {
        let store = self.inner.clone();
        let prefix = StorePath::from("runs");
        let metas: Vec<object_store::ObjectMeta> = runtime()
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| self.map_err(&StorePath::from("runs/"), "list", e))?;
        let mut runs: Vec<(RunInfo, chrono::DateTime<chrono::Utc>)> = metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_string()).collect();
                if parts.len() != 4 {
                    return None;
                }
                let id: RunId = parts[3].strip_suffix(".meta")?.parse().ok()?;
                let time = id.time()?;
                let info = RunInfo {
                    host: decode_segment(&parts[1])?,
                    source: parts[2].clone(),
                    time: time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    id: id.to_string(),
                    metafile_bytes: m.size,
                };
                Some((info, m.last_modified))
            })
            .collect();
        // Ids order runs by their start second; runs started in the same second are
        // ordered by when their metafiles were stored.
        runs.sort_by(|(a, at), (b, bt)| {
            (&a.id[..16], at, &a.host, &a.source).cmp(&(&b.id[..16], bt, &b.host, &b.source))
        });
        Ok(runs.into_iter().map(|(r, _)| r).collect())
    }
}

/// Create-only put; "already exists" is an outcome, not an error.
pub(crate) async fn put_create(
    store: &dyn ObjectStore,
    path: &StorePath,
    bytes: Bytes,
) -> object_store::Result<PutOutcome> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, PutPayload::from(bytes), opts).await {
        Ok(_) => Ok(PutOutcome::Created),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
        Err(e) => Err(e),
    }
}

pub(crate) fn map_store_error(
    target: &str,
    what: &StorePath,
    op: &str,
    e: object_store::Error,
) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::NotFound(format!("target {target}: object {what} is missing"))
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::Store {
            target: target.to_string(),
            message: format!(
                "{op} {what}: the credential lacks the right to {op} ({e}); backups need \
                     only create rights, but runs, restore, prune and gc need read/list rights"
            ),
        },
        e => Error::Store {
            target: target.to_string(),
            message: format!("{op} {what}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        for s in ["web1", "a b/c", ".hidden", "ünï"] {
            let e = encode_segment(s);
            assert!(!e.starts_with('.'));
            assert!(e
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)));
            assert_eq!(decode_segment(&e).unwrap(), s);
        }
    }

    #[test]
    fn create_only_and_runs_listing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&TargetConfig::from_url(&url).unwrap(), true).unwrap();
        let key = ObjectKey::of(b"x");
        let p = data_path(&key);
        assert_eq!(
            store.put_create(&p, Bytes::from_static(b"x")).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store.put_create(&p, Bytes::from_static(b"y")).unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(&store.get(&p).unwrap()[..], b"x", "never overwritten");
        let id = RunId::new(chrono::Utc::now());
        let rp = run_path("my host", "home", &id, "meta");
        store.put_create(&rp, Bytes::from_static(b"m")).unwrap();
        let runs = store.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].host, "my host");
        assert_eq!(runs[0].id, id.to_string());
        let missing = store.get(&data_path(&ObjectKey::of(b"nope"))).unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
    }
}
