//! The target: a concrete [`Store`] over `Arc<dyn ObjectStore>`, and the key layout.
//!
//! Layout under the target URL (docs/FORMAT.md):
//! - `data/<first 2 hex>/<64 hex>`: a pack, named by the BLAKE3 of its bytes;
//! - `runs/<host>/<source>/<run-id>.meta`: a run's encrypted metafile;
//! - `runs/<host>/<source>/<run-id>.refs`: the object keys the run references (plain).
//!
//! Objects are created with create-only semantics and never overwritten: "already
//! exists" on a data object is a dedup hit, not an error.
//!
//! **Capabilities are types.** An opened [`Store`] does nothing itself; it hands out
//! handles that can do one kind of thing each: a [`Creator`] only creates objects (what
//! a backup gets: it has no method that reads, lists or deletes, and no way to the raw
//! store), a [`Reader`] reads and lists (restore, runs, and a backup whose config says
//! its credential may), an [`Admin`] also deletes (prune, gc). So "a backup makes no GET,
//! LIST or DELETE" is the compiler's to check, not only the tests'.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::limit::LimitStore;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

mod limit;
mod open;
pub(crate) use open::option_is_known;

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

/// A stored metafile is cut into pieces of this size (docs/FORMAT.md section 1), each
/// uploaded with one create-only put: S3 cannot make a multipart upload create-only
/// through object_store, and a piece is what one put holds in memory.
pub const METAFILE_PIECE: u64 = 8 << 20;

/// How many pieces a stored metafile of `bytes` bytes is cut into (at least one).
pub fn metafile_pieces(bytes: u64, piece: u64) -> u32 {
    u32::try_from(bytes.div_ceil(piece.max(1)).max(1)).unwrap_or(u32::MAX)
}

/// An opened target: hands out the handles that use it.
#[derive(Clone, Debug)]
pub struct Store {
    core: Core,
}

/// What every handle shares: the object store, the target's name, the piece size.
#[derive(Clone, Debug)]
struct Core {
    inner: Arc<dyn ObjectStore>,
    name: String,
    metafile_piece: u64,
}

impl Core {
    fn map_err(&self, what: &StorePath, op: &str, e: object_store::Error) -> Error {
        map_store_error(&self.name, what, op, e)
    }
}

/// Creates objects, and nothing else: what a backup gets.
#[derive(Clone, Debug)]
pub struct Creator {
    core: Core,
}

/// Reads and lists objects.
#[derive(Clone, Debug)]
pub struct Reader {
    core: Core,
}

/// Reads, lists and deletes objects: what prune and gc get.
#[derive(Clone, Debug)]
pub struct Admin {
    reader: Reader,
}

impl std::ops::Deref for Admin {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        &self.reader
    }
}

/// A run as listed on a target: no key needed. Its `status` says whether it may count as
/// a backup ([`crate::runs`] explains the checks).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunInfo {
    /// Host that made it.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: String,
    /// The start time the run claims (its id; UTC, RFC 3339).
    pub time: String,
    /// When the target stored its metafile (UTC, RFC 3339): what orders and dates runs.
    pub stored: String,
    /// Size of the stored metafile in bytes (all its pieces).
    pub metafile_bytes: u64,
    /// What a keyless reader can tell of it.
    pub status: crate::runs::RunStatus,
    #[serde(skip)]
    pub(crate) stored_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip)]
    pub(crate) claimed_at: chrono::DateTime<chrono::Utc>,
    /// Its object list's size, if it has one.
    #[serde(skip)]
    pub(crate) refs_bytes: Option<u64>,
    /// Piece numbers listed and their sizes, in order.
    #[serde(skip)]
    pub(crate) pieces: Vec<(u32, u64)>,
}

impl RunInfo {
    /// The run's id, parsed.
    pub fn run_id(&self) -> Result<RunId> {
        self.id.parse()
    }

    /// When the target stored the run's metafile.
    pub fn stored_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.stored_at
    }
}

/// Key of a data object.
pub fn data_path(key: &ObjectKey) -> StorePath {
    let hex = key.to_hex();
    StorePath::from(format!("data/{}/{}", &hex[..2], hex))
}

/// Escapes a host name into a path segment: `[A-Za-z0-9._-]` stay, other bytes are `+XX`.
pub fn encode_segment(s: &str) -> String {
    let mut out = crate::format::escape(s.as_bytes(), b'+', |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    });
    if out.starts_with('.') {
        out.replace_range(..1, "+2E");
    }
    out
}

/// Inverse of [`encode_segment`].
pub(crate) fn decode_segment(s: &str) -> Option<String> {
    String::from_utf8(crate::format::unescape(s, b'+')?).ok()
}

/// Key of a marker a local index left on the target.
pub fn marker_path(id: &str) -> StorePath {
    StorePath::from(format!("markers/{id}"))
}

/// A marker id: 32 lowercase hex digits.
pub fn valid_marker(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh marker id.
pub fn new_marker() -> Result<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).map_err(|e| Error::Internal(format!("random marker: {e}")))?;
    Ok(hex::encode(r))
}

/// Key of piece `n` (from 1) of a run's metafile: `<id>.meta`, then `<id>.meta.0002` ...
pub fn piece_path(host: &str, source: &str, id: &RunId, n: u32) -> StorePath {
    if n <= 1 {
        run_path(host, source, id, "meta")
    } else {
        run_path(host, source, id, &format!("meta.{n:04}"))
    }
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
    /// Opens a target. With `create`, a missing local folder is created (`coffer init`);
    /// without, it must exist. Nothing is requested from the target here.
    ///
    /// # Errors
    ///
    /// A URL that cannot be used, unknown options, a missing folder, credentials that
    /// cannot be read ([`Error::Store`]).
    pub fn open(target: &TargetConfig, create: bool) -> Result<Store> {
        Ok(Store {
            core: Core {
                inner: open::open(target, create)?,
                name: target.name.clone(),
                metafile_piece: METAFILE_PIECE,
            },
        })
    }

    /// Cuts metafiles into pieces of `bytes` (default 8 MiB; at least
    /// 64 KiB).
    pub fn with_metafile_piece(mut self, bytes: u64) -> Self {
        self.core.metafile_piece = bytes.max(64 << 10);
        self
    }

    /// The target's name (for messages).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// A handle that only creates objects, with the target's upload limits: at most
    /// `upload_concurrency` requests at once, and `upload_rate_limit` on average.
    pub fn creator(&self, target: &TargetConfig) -> Creator {
        let limited = LimitStore::new(self.core.inner.clone(), target.upload_concurrency.max(1));
        let inner: Arc<dyn ObjectStore> = match target.upload_rate_limit {
            Some(rate) => Arc::new(limit::RateLimited::new(limited, rate)),
            None => Arc::new(limited),
        };
        Creator {
            core: Core {
                inner,
                ..self.core.clone()
            },
        }
    }

    /// A handle that reads and lists.
    pub fn reader(&self) -> Reader {
        Reader {
            core: self.core.clone(),
        }
    }

    /// A handle that reads, lists and deletes.
    pub fn admin(&self) -> Admin {
        Admin {
            reader: self.reader(),
        }
    }
}

impl Creator {
    /// The target's name (for messages).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// How many pieces a metafile of `bytes` bytes is stored in on this target.
    pub fn pieces_for(&self, bytes: u64) -> u32 {
        metafile_pieces(bytes, self.core.metafile_piece)
    }

    /// Commits a run: stores the metafile's pieces after the first, then the object list
    /// `refs`, then the metafile's first piece, the run's commit point (docs/FORMAT.md
    /// section 8). Every put is create-only and holds at most one piece in memory; a name
    /// that exists already is an error (run ids are unique).
    pub fn put_run(
        &self,
        host: &str,
        source: &str,
        id: &RunId,
        refs: Bytes,
        metafile: &mut std::fs::File,
        bytes: u64,
    ) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let pieces = self.pieces_for(bytes);
        let mut piece = |n: u32| -> Result<()> {
            let path = piece_path(host, source, id, n);
            let io = |e| Error::io(format!("temporary file for {path}"), e);
            let start = u64::from(n - 1) * self.core.metafile_piece;
            let len = self.core.metafile_piece.min(bytes - start);
            metafile.seek(SeekFrom::Start(start)).map_err(io)?;
            let mut buf = Vec::with_capacity(len as usize);
            (&mut *metafile)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(io)?;
            if buf.len() as u64 != len {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.put_new(&path, buf.into())
        };
        for n in 2..=pieces {
            piece(n)?;
        }
        self.put_new(&run_path(host, source, id, "refs"), refs)?;
        // The commit point: the run exists once its metafile's first piece is stored.
        piece(1)
    }

    /// A create-only put of a name that must not exist yet.
    fn put_new(&self, path: &StorePath, bytes: Bytes) -> Result<()> {
        match self.put_create(path, bytes)? {
            PutOutcome::Created => Ok(()),
            PutOutcome::AlreadyExists => Err(Error::Store {
                target: self.core.name.clone(),
                message: format!("{path} already exists; run ids must be unique"),
                source: None,
            }),
        }
    }

    /// Leaves this index's marker `markers/<id>` on the target (create-only). `Created`
    /// means the target did not hold it: it is new, or was wiped or replaced, or is
    /// another one at the same URL (docs/FORMAT.md section 1).
    pub(crate) fn put_marker(&self, id: &str, host: &str) -> Result<PutOutcome> {
        let text = format!(
            "coffer-marker 1\nhost {}\ncreated {}\n",
            crate::format::encode_field(host.as_bytes()),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        self.put_create(&marker_path(id), Bytes::from(text))
    }

    /// Creates `path` with `bytes` unless it exists (blocking).
    pub(crate) fn put_create(&self, path: &StorePath, bytes: Bytes) -> Result<PutOutcome> {
        let store = self.core.inner.clone();
        let p = path.clone();
        let res = runtime().block_on(async move { put_create(&*store, &p, bytes).await });
        res.map_err(|e| self.core.map_err(path, "create", e))
    }

    /// Creates a pack (create-only; "already exists" is a dedup hit: its name is the
    /// hash of its bytes).
    pub(crate) async fn put_pack(&self, key: &ObjectKey, parts: Vec<Bytes>) -> Result<PutOutcome> {
        let path = data_path(key);
        let payload = PutPayload::from_iter(parts);
        put_create(&*self.core.inner, &path, payload)
            .await
            .map_err(|e| self.core.map_err(&path, "create", e))
    }
}

impl Reader {
    /// The target's name (for messages).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The markers on the target (needs list rights).
    pub(crate) fn list_markers(&self) -> Result<Vec<String>> {
        let store = self.core.inner.clone();
        let prefix = StorePath::from("markers");
        let metas: Vec<object_store::ObjectMeta> = runtime()
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| self.core.map_err(&StorePath::from("markers/"), "list", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|n| valid_marker(n))
            .collect())
    }

    /// Whether an object exists (one HEAD; needs read rights).
    pub(crate) fn exists(&self, path: &StorePath) -> Result<bool> {
        let store = self.core.inner.clone();
        let p = path.clone();
        match runtime().block_on(async move { store.head(&p).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.core.map_err(path, "check", e)),
        }
    }

    /// A reader of a run's whole stored metafile: its pieces, in order, streamed.
    ///
    /// # Errors
    ///
    /// The metafile or one of its pieces cannot be read.
    pub fn metafile_reader(&self, run: &RunInfo) -> Result<impl std::io::Read + Send + Sync> {
        let id = run.run_id()?;
        let mut readers = Vec::new();
        for &(n, _) in &run.pieces {
            readers.push(self.stream(&piece_path(&run.host, &run.source, &id, n))?);
        }
        Ok(Chained {
            readers: readers.into_iter(),
            current: None,
        })
    }

    /// Reads a whole object (blocking).
    #[cfg(test)]
    pub(crate) fn get(&self, path: &StorePath) -> Result<Bytes> {
        let store = self.core.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move { store.get(&p).await?.bytes().await })
            .map_err(|e| self.core.map_err(path, "read", e))
    }

    /// Opens an object for reading as a stream: memory stays bounded by the reader's
    /// buffer whatever the object's size. Errors while reading name the object.
    pub(crate) fn stream(&self, path: &StorePath) -> Result<impl std::io::BufRead + Send + Sync> {
        let store = self.core.inner.clone();
        let p = path.clone();
        let stream = runtime()
            .block_on(async move { store.get(&p).await.map(|r| r.into_stream()) })
            .map_err(|e| self.core.map_err(path, "read", e))?;
        Ok(std::io::BufReader::with_capacity(
            1 << 16,
            StreamReader {
                stream: std::sync::Mutex::new(stream),
                current: Bytes::new(),
            },
        ))
    }

    /// Reads a whole object if it is at most `limit` bytes; `None` if it is larger (the
    /// body of a larger one is not downloaded). One request either way.
    pub(crate) fn get_small(&self, path: &StorePath, limit: u64) -> Result<Option<Bytes>> {
        let store = self.core.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move {
                let result = store.get(&p).await?;
                if result.meta.size > limit {
                    return Ok(None);
                }
                result.bytes().await.map(Some)
            })
            .map_err(|e| self.core.map_err(path, "read", e))
    }

    /// Reads `range` of an object (blocking).
    pub(crate) fn get_range(&self, path: &StorePath, range: std::ops::Range<u64>) -> Result<Bytes> {
        let store = self.core.inner.clone();
        let p = path.clone();
        runtime()
            .block_on(async move { store.get_range(&p, range).await })
            .map_err(|e| self.core.map_err(path, "read", e))
    }

    /// Lists the runs on the target (committed ones: with a metafile), oldest first by
    /// when the target stored them, each with the status its listing alone shows
    /// ([`crate::runs::check`] reads more). One LIST of `runs/`.
    ///
    /// # Errors
    ///
    /// The target cannot be listed (a credential without the right: [`Error::Store`]
    /// says which).
    pub fn list_runs(&self) -> Result<Vec<RunInfo>> {
        let mut groups: std::collections::BTreeMap<(String, String, String), Vec<RunObject>> =
            Default::default();
        for o in self.list_run_objects()? {
            groups
                .entry((o.host.clone(), o.source.clone(), o.id.to_string()))
                .or_default()
                .push(o);
        }
        let mut runs: Vec<RunInfo> = groups
            .into_values()
            .filter_map(crate::runs::from_listing)
            .collect();
        runs.sort_by(|a, b| {
            (a.stored_at, a.claimed_at, &a.host, &a.source, &a.id).cmp(&(
                b.stored_at,
                b.claimed_at,
                &b.host,
                &b.source,
                &b.id,
            ))
        });
        Ok(runs)
    }

    /// Every metafile piece and object list under `runs/` (other objects there are
    /// ignored). One entry per run and file: a run has far fewer of these than data
    /// objects.
    pub(crate) fn list_run_objects(&self) -> Result<Vec<RunObject>> {
        let store = self.core.inner.clone();
        let prefix = StorePath::from("runs");
        let metas: Vec<object_store::ObjectMeta> = runtime()
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| self.core.map_err(&StorePath::from("runs/"), "list", e))?;
        Ok(metas.into_iter().filter_map(RunObject::from_meta).collect())
    }
}

impl Admin {
    /// Lists the data objects (`data/`) in batches of up to `batch`, streaming, and
    /// deletes the objects each call of `f` returns before listing further. Memory is
    /// bounded by the batch, however many objects the target holds.
    pub(crate) fn scan_data(
        &self,
        batch: usize,
        mut f: impl FnMut(&[object_store::ObjectMeta]) -> Result<Vec<StorePath>>,
    ) -> Result<()> {
        use futures::StreamExt;
        let store = self.core.inner.clone();
        let prefix = StorePath::from("data");
        runtime().block_on(async move {
            let mut pages = store.list(Some(&prefix)).try_chunks(batch);
            while let Some(page) = pages.next().await {
                let page =
                    page.map_err(|e| self.core.map_err(&StorePath::from("data/"), "list", e.1))?;
                let doomed = f(&page)?;
                if !doomed.is_empty() {
                    self.delete_all(doomed).await?;
                }
            }
            Ok(())
        })
    }

    /// Deletes objects; one that is already gone is not an error.
    pub(crate) fn delete(&self, paths: Vec<StorePath>) -> Result<()> {
        runtime().block_on(self.delete_all(paths))
    }

    async fn delete_all(&self, paths: Vec<StorePath>) -> Result<()> {
        use futures::StreamExt;
        // Batch deletes do not always say which object failed: name the batch's first.
        let Some(first) = paths.first().cloned() else {
            return Ok(());
        };
        let input = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.core.inner.delete_stream(input);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.core.map_err(&first, "delete", e)),
            }
        }
        Ok(())
    }
}

/// Blocking `Read` over an object's body stream (behind a lock only to be `Sync`: one
/// reader uses it).
struct StreamReader {
    stream: std::sync::Mutex<futures::stream::BoxStream<'static, object_store::Result<Bytes>>>,
    current: Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use futures::StreamExt;
        while self.current.is_empty() {
            let stream = self
                .stream
                .get_mut()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            match runtime().block_on(stream.next()) {
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

/// A metafile piece or object list as listed on a target.
#[derive(Debug, Clone)]
pub struct RunObject {
    /// Host that made the run.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: RunId,
    /// "meta" (a metafile piece) or "refs".
    pub ext: String,
    /// For a metafile piece, its number (1 for `<id>.meta`).
    pub piece: u32,
    /// Its key.
    pub path: StorePath,
    /// Size in bytes.
    pub size: u64,
    /// When the target stored it.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

impl RunObject {
    /// Parses a listed key `runs/<host>/<source>/<id>.<ext>`; `None` for other names.
    fn from_meta(m: object_store::ObjectMeta) -> Option<RunObject> {
        let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
        if parts.len() != 4 {
            return None;
        }
        let (id, ext) = parts[3].split_once('.')?;
        let (ext, piece) = match ext {
            "meta" => ("meta", 1),
            "refs" => ("refs", 0),
            _ => {
                let n = ext.strip_prefix("meta.")?;
                let piece: u32 = n.parse().ok().filter(|&p| p >= 2 && n.len() == 4)?;
                ("meta", piece)
            }
        };
        Some(RunObject {
            host: decode_segment(&parts[1])?,
            source: parts[2].clone(),
            id: id.parse().ok()?,
            ext: ext.to_string(),
            piece,
            path: m.location,
            size: m.size,
            last_modified: m.last_modified,
        })
    }
}

/// Readers one after the other.
struct Chained<R> {
    readers: std::vec::IntoIter<R>,
    current: Option<R>,
}

impl<R: std::io::Read> std::io::Read for Chained<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.current.is_none() {
                match self.readers.next() {
                    Some(r) => self.current = Some(r),
                    None => return Ok(0),
                }
            }
            let n = self.current.as_mut().map_or(Ok(0), |r| r.read(buf))?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.current = None;
        }
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
pub(crate) fn is_refusal(e: &object_store::Error) -> bool {
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
        let message = format!(
            "{op} {what}: refused: the credential lacks the right to {op} here. Backups \
                 need only create rights (s3:PutObject); runs and restore need read and list \
                 rights; prune and gc need read, list and delete rights: use such a \
                 credential, not the host's put-only one ({e})"
        );
        return Error::Store {
            target: target.to_string(),
            message,
            source: Some(Box::new(e)),
        };
    }
    Error::Store {
        target: target.to_string(),
        message: format!("{op} {what}: {e}"),
        source: Some(Box::new(e)),
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
        let target = TargetConfig::from_url(&url).unwrap();
        let store = Store::open(&target, true).unwrap();
        let (creator, reader) = (store.creator(&target), store.reader());
        let key = ObjectKey::of(b"x");
        let p = data_path(&key);
        assert_eq!(
            creator.put_create(&p, Bytes::from_static(b"x")).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            creator.put_create(&p, Bytes::from_static(b"y")).unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(&reader.get(&p).unwrap()[..], b"x", "never overwritten");
        let id = RunId::new(chrono::Utc::now());
        let rp = run_path("my host", "home", &id, "meta");
        creator.put_create(&rp, Bytes::from_static(b"m")).unwrap();
        let runs = reader.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].host, "my host");
        assert_eq!(runs[0].id, id.to_string());
        assert!(
            !runs[0].status.is_ok(),
            "no object list: {:?}",
            runs[0].status
        );
        let missing = reader.get(&data_path(&ObjectKey::of(b"nope"))).unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
    }

    #[test]
    fn a_metafile_in_pieces_is_listed_read_and_checked_as_one() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let target = TargetConfig::from_url(&url).unwrap();
        let store = Store::open(&target, true)
            .unwrap()
            .with_metafile_piece(64 << 10);
        let (creator, reader) = (store.creator(&target), store.reader());
        // Something that starts like an encrypted message (a PKESK and an SEIPD header).
        let key =
            crate::crypto::generate_key("t", crate::crypto::KeyAlgorithm::Cv25519, None).unwrap();
        let certs = crate::crypto::keys::parse_certs_for_test(&key.public_armored);
        let enc = crate::crypto::Encryptor::from_certs(&certs).unwrap();
        let mut w = enc.message_writer(Vec::new()).unwrap();
        w.write_all(&crate::prng::noise(200_000, 9)).unwrap();
        let message = w.finish().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&message).unwrap();
        let id = RunId::new(chrono::Utc::now());
        let (host, source) = ("h", "s");
        let pieces = creator.pieces_for(message.len() as u64);
        assert_eq!(pieces, 4);
        let name = crate::format::refs::RunName {
            run: id.to_string(),
            host: host.into(),
            source: source.into(),
        };
        let digest = crate::format::refs::MetafileDigest {
            hash: crate::ids::ChunkHash::of(&message),
            bytes: message.len() as u64,
            pieces,
        };
        let bounds = crate::format::refs::Bounds {
            dedup_max_age: std::time::Duration::from_secs(60),
            max_run_time: std::time::Duration::from_secs(60),
        };
        let mut refs = Vec::new();
        crate::format::refs::write(&mut refs, &name, &bounds, &digest, []).unwrap();
        creator
            .put_run(
                host,
                source,
                &id,
                refs.into(),
                &mut file,
                message.len() as u64,
            )
            .unwrap();
        let mut runs = reader.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].pieces.len(), 4);
        assert_eq!(runs[0].metafile_bytes, message.len() as u64);
        crate::runs::check(&reader, &mut runs).unwrap();
        assert!(runs[0].status.is_ok(), "{:?}", runs[0].status);
        let mut back = Vec::new();
        reader
            .metafile_reader(&runs[0])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == message);
        // One piece missing: damaged, from the listing alone.
        std::fs::remove_file(dir.path().join(piece_path(host, source, &id, 3).as_ref())).unwrap();
        let runs = reader.list_runs().unwrap();
        assert_eq!(runs[0].status.word(), "damaged");
    }
}
