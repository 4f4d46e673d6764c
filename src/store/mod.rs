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
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

mod open;

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

/// Files larger than this are uploaded in parts (multipart upload), streamed from disk:
/// below it a file is read into memory for one create-only put, so this bounds the memory
/// a large metafile costs (a million entries make tens of MiB).
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Parts of a multipart upload: S3's smallest, so that a large metafile costs little
/// memory (a part being filled and one being sent).
const PART_SIZE: usize = 5 << 20;

/// One target.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    name: String,
    multipart_threshold: u64,
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
    /// it must exist (restore, runs). Nothing is requested from the target here.
    pub fn open(target: &TargetConfig, create: bool) -> Result<Store> {
        Ok(Store {
            inner: open::open(target, create)?,
            name: target.name.clone(),
            multipart_threshold: MULTIPART_THRESHOLD,
        })
    }

    /// Uploads files larger than `bytes` in parts (default [`MULTIPART_THRESHOLD`]; at
    /// least 5 MiB, S3's smallest part).
    pub fn with_multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes.max(5 << 20);
        self
    }

    /// Stores the contents of `file` at `path`: one create-only put when small, a
    /// multipart upload streamed from the file when large (bounded memory). Multipart
    /// uploads cannot be create-only in object_store; they are used only for names that
    /// are unique by construction (metafiles).
    pub fn put_file(&self, path: &StorePath, file: &mut std::fs::File) -> Result<PutOutcome> {
        use std::io::{Read, Seek};
        let io = |e| Error::io(format!("temporary file for {path}"), e);
        let len = file.metadata().map_err(io)?.len();
        file.rewind().map_err(io)?;
        if len <= self.multipart_threshold {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).map_err(io)?;
            return self.put_create(path, bytes.into());
        }
        let store = self.inner.clone();
        let result: std::result::Result<(), object_store::Error> = runtime().block_on(async {
            let upload = store.put_multipart(path).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| object_store::Error::Generic {
                        store: "coffer",
                        source: Box::new(e),
                    })?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(1).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map(|_| ())
        });
        result.map_err(|e| self.map_err(path, "create", e))?;
        Ok(PutOutcome::Created)
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

    /// Opens an object for reading as a stream: memory stays bounded by the reader's
    /// buffer whatever the object's size. Errors while reading name the object.
    pub fn reader(&self, path: &StorePath) -> Result<impl std::io::BufRead> {
        let store = self.inner.clone();
        let p = path.clone();
        let stream = runtime()
            .block_on(async move { store.get(&p).await.map(|r| r.into_stream()) })
            .map_err(|e| self.map_err(path, "read", e))?;
        Ok(std::io::BufReader::with_capacity(
            1 << 16,
            StreamReader {
                stream,
                current: Bytes::new(),
            },
        ))
    }

    /// Reads a whole object if it is at most `limit` bytes; `None` if it is larger (the
    /// body of a larger one is not downloaded). One request either way.
    pub fn get_small(&self, path: &StorePath, limit: u64) -> Result<Option<Bytes>> {
        let store = self.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move {
                let result = store.get(&p).await?;
                if result.meta.size > limit {
                    return Ok(None);
                }
                result.bytes().await.map(Some)
            })
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

    /// Lists the runs on the target (committed ones: with a metafile), oldest first.
    pub fn list_runs(&self) -> Result<Vec<RunInfo>> {
        let mut runs: Vec<(RunInfo, chrono::DateTime<chrono::Utc>)> = self
            .list_run_objects()?
            .into_iter()
            .filter(|o| o.ext == "meta")
            .filter_map(|o| {
                let time = o.id.time()?;
                let info = RunInfo {
                    host: o.host,
                    source: o.source,
                    time: time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    id: o.id.to_string(),
                    metafile_bytes: o.size,
                };
                Some((info, o.last_modified))
            })
            .collect();
        // Ids order runs by their start second; runs started in the same second are
        // ordered by when their metafiles were stored.
        runs.sort_by(|(a, at), (b, bt)| {
            (&a.id[..16], at, &a.host, &a.source).cmp(&(&b.id[..16], bt, &b.host, &b.source))
        });
        Ok(runs.into_iter().map(|(r, _)| r).collect())
    }

    /// Every metafile and object list under `runs/` (other objects there are ignored).
    /// One entry per run and file: a run has far fewer of these than data objects.
    pub fn list_run_objects(&self) -> Result<Vec<RunObject>> {
        let store = self.inner.clone();
        let prefix = StorePath::from("runs");
        let metas: Vec<object_store::ObjectMeta> = runtime()
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| self.map_err(&StorePath::from("runs/"), "list", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_string()).collect();
                if parts.len() != 4 {
                    return None;
                }
                let (id, ext) = parts[3].rsplit_once('.')?;
                if ext != "meta" && ext != "refs" {
                    return None;
                }
                Some(RunObject {
                    host: decode_segment(&parts[1])?,
                    source: parts[2].clone(),
                    id: id.parse().ok()?,
                    ext: ext.to_string(),
                    path: m.location,
                    size: m.size,
                    last_modified: m.last_modified,
                })
            })
            .collect())
    }

    /// Lists the data objects (`data/`) in batches of up to `batch`, streaming, and
    /// deletes the objects each call of `f` returns before listing further. Memory is
    /// bounded by the batch, however many objects the target holds.
    pub fn scan_data(
        &self,
        batch: usize,
        mut f: impl FnMut(&[object_store::ObjectMeta]) -> Result<Vec<StorePath>>,
    ) -> Result<()> {
        use futures::StreamExt;
        let store = self.inner.clone();
        let prefix = StorePath::from("data");
        runtime().block_on(async move {
            let mut pages = store.list(Some(&prefix)).try_chunks(batch);
            while let Some(page) = pages.next().await {
                let page =
                    page.map_err(|e| self.map_err(&StorePath::from("data/"), "list", e.1))?;
                let doomed = f(&page)?;
                if !doomed.is_empty() {
                    self.delete_all(doomed).await?;
                }
            }
            Ok(())
        })
    }

    /// Deletes objects; one that is already gone is not an error.
    pub fn delete(&self, paths: Vec<StorePath>) -> Result<()> {
        runtime().block_on(self.delete_all(paths))
    }

    async fn delete_all(&self, paths: Vec<StorePath>) -> Result<()> {
        use futures::StreamExt;
        // Batch deletes do not always say which object failed: name the batch's first.
        let Some(first) = paths.first().cloned() else {
            return Ok(());
        };
        let input = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.inner.delete_stream(input);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.map_err(&first, "delete", e)),
            }
        }
        Ok(())
    }
}

/// Blocking `Read` over an object's body stream.
struct StreamReader {
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use futures::StreamExt;
        while self.current.is_empty() {
            match runtime().block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A metafile or object list as listed on a target.
#[derive(Debug, Clone)]
pub struct RunObject {
    /// Host that made the run.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: RunId,
    /// "meta" or "refs".
    pub ext: String,
    /// Its key.
    pub path: StorePath,
    /// Size in bytes.
    pub size: u64,
    /// When the target stored it.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Spaces out uploads so that they average at most a given number of bytes per second.
pub(crate) struct RateLimit {
    bytes_per_sec: f64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `bytes` more may be sent.
    pub(crate) async fn acquire(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Create-only put; "already exists" is an outcome, not an error.
pub(crate) async fn put_create(
    store: &dyn ObjectStore,
    path: &StorePath,
    payload: impl Into<PutPayload>,
) -> object_store::Result<PutOutcome> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, payload.into(), opts).await {
        Ok(_) => Ok(PutOutcome::Created),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
        Err(e) => Err(e),
    }
}

/// Whether an error means "this credential may not do that". object_store reports some
/// refusals (e.g. of a LIST) as generic errors that carry the HTTP status.
fn is_refusal(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        e => {
            let text = e.to_string();
            [
                "403 Forbidden",
                "401 Unauthorized",
                "AccessDenied",
                "AuthorizationPermissionMismatch",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
    }
}

pub(crate) fn map_store_error(
    target: &str,
    what: &StorePath,
    op: &str,
    e: object_store::Error,
) -> Error {
    if let object_store::Error::NotFound { .. } = e {
        return Error::NotFound(format!("target {target}: object {what} is missing"));
    }
    if is_refusal(&e) {
        return Error::Store {
            target: target.to_string(),
            message: format!(
                "{op} {what}: refused: the credential lacks the right to {op} here. Backups \
                 need only create rights (s3:PutObject); runs and restore need read and list \
                 rights; prune and gc need read, list and delete rights: use such a \
                 credential, not the host's put-only one ({e})"
            ),
        };
    }
    Error::Store {
        target: target.to_string(),
        message: format!("{op} {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_uploads() {
        // Virtual time: the clock only moves when every task sleeps, so this measures the
        // limiter's schedule, not the machine.
        let limit = RateLimit::new(1 << 20);
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            limit.acquire(1 << 20).await;
        }
        // Four 1 MiB uploads at 1 MiB/s: the fourth may start after 3 s, not before.
        assert_eq!(start.elapsed().as_secs(), 3);
        limit.acquire(512 << 10).await;
        assert_eq!(start.elapsed().as_millis(), 4000);
    }

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
