//! The target: a concrete [`Store`] over `Arc<dyn ObjectStore>` and the handles it gives
//! out. The key layout is in `layout.rs`, the runtime, create-only put and error mapping in
//! `io.rs`, the backends in `open.rs`, the rate limit in `limit.rs`.
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

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::limit::LimitStore;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

mod count;
mod io;
pub(crate) mod layout;
mod limit;
mod listing;
mod open;
mod retention;
mod s3api;

pub use count::Requests;
pub(crate) use io::{is_refusal, map_store_error, put_create, runtime};
use io::{Chained, StreamReader};
pub use layout::{
    data_path, marker_path, metafile_pieces, new_marker, piece_path, run_path, valid_marker,
    RunInfo, RunObject, METAFILE_PIECE,
};
pub(crate) use listing::{sort_runs, RunListing};
pub(crate) use open::option_is_known;
pub(crate) use retention::{LockOutcome, LockWork};
pub(crate) use s3api::{ApiError, S3Api};

use crate::config::TargetConfig;
use crate::error::{Error, Result};
use crate::ids::{ObjectKey, RunId};

/// The outcome of a create-only put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An object of that name was already there (for content-named objects: same bytes).
    AlreadyExists,
}

/// An opened target: hands out the handles that use it.
#[derive(Clone, Debug)]
pub struct Store {
    core: Core,
}

/// A run's object list as stored: its text and, from a host with a signing key, its
/// detached signature.
#[derive(Debug, Clone)]
pub struct ObjectList {
    /// `<run>.refs`.
    pub text: Bytes,
    /// `<run>.refs.sig`.
    pub signature: Option<Bytes>,
}

/// What every handle shares: the object store, the target's name, the piece size, and
/// on S3 what makes the requests object_store has no call for (versions, Object Lock).
#[derive(Clone, Debug)]
struct Core {
    inner: Arc<dyn ObjectStore>,
    name: String,
    metafile_piece: u64,
    s3api: Option<Arc<s3api::S3Api>>,
    /// Every request made through any handle of this store.
    counters: Arc<count::Counters>,
    /// The storage class packs are put in (S3), if not the bucket's default.
    storage_class: Option<crate::config::StorageClass>,
    /// With `object_lock`: the store a backup creates objects through, every request
    /// carrying the lock headers.
    locked: Option<Arc<dyn ObjectStore>>,
    /// Whether requests cross a network (not a folder): round trips are worth hiding.
    remote: bool,
}

/// An earlier version of an object whose bytes hash to its name.
#[derive(Debug, Clone)]
pub(crate) struct Recovered {
    /// The version's id.
    pub version: String,
    /// When the store kept it, as it says.
    pub stored: String,
    /// Its bytes.
    pub bytes: Bytes,
    /// The AWS CLI command that makes it current again.
    pub repair: String,
    /// Requests made to find it, and bytes fetched (its own included).
    pub requests: u64,
    pub fetched: u64,
}

impl Recovered {
    /// For people: which version matched, `what` was done with it, and how to make it
    /// current again.
    pub fn advice(&self, what: &str) -> String {
        format!(
            "its earlier version {} (stored {}) matches its name{what}: make it current \
             again with `{}`",
            self.version, self.stored, self.repair
        )
    }
}

/// What looking for an earlier, matching version of a damaged object found.
#[derive(Debug)]
pub(crate) enum Recovery {
    /// A version that matches.
    Found(Recovered),
    /// None does: `.0` says what was looked at, for people.
    NotFound(String),
}

/// The largest earlier version `recover` reads into memory: the largest pack a restore
/// reads whole.
const MAX_RECOVERED_BYTES: u64 = 64 << 20;
/// Earlier versions fetched at most, newest first, when looking for one that matches.
const MAX_VERSIONS_TRIED: usize = 16;

impl Core {
    fn map_err(&self, what: &StorePath, op: &str, e: object_store::Error) -> Error {
        map_store_error(&self.name, what, op, e)
    }
}

impl Store {
    /// The requests made of the target through this store's handles so far (counted
    /// with listings in pages of 1,000 keys).
    pub fn requests(&self) -> Requests {
        self.core.counters.snapshot()
    }
}

impl Reader {
    /// The requests made of the target through this store's handles so far.
    pub fn requests(&self) -> Requests {
        self.core.counters.snapshot()
    }
}

impl Creator {
    /// The requests made of the target through this store's handles so far.
    pub fn requests(&self) -> Requests {
        self.core.counters.snapshot()
    }
}

/// A whole object of at most `limit` bytes, or `None` when it is larger (its body is
/// not downloaded): what [`Reader::get_small`] and [`Reader::spawn_get_small`] read.
async fn get_small(
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    limit: u64,
) -> object_store::Result<Option<Bytes>> {
    let result = store.get(&path).await?;
    if result.meta.size > limit {
        return Ok(None);
    }
    result.bytes().await.map(Some)
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

impl Store {
    /// Opens a target. With `create`, a missing local folder is created (`coffer init`);
    /// without, it must exist. Nothing is requested from the target here.
    ///
    /// # Errors
    ///
    /// A URL that cannot be used, unknown options, a missing folder, credentials that
    /// cannot be read ([`Error::Store`]).
    pub fn open(target: &TargetConfig, create: bool) -> Result<Store> {
        let (inner, versions) = open::open(target, create)?;
        let counters = Arc::new(count::Counters::default());
        let locked = match &target.object_lock {
            Some(lock) => {
                let store = open::open_locked(target, lock)?;
                let counted: Arc<dyn ObjectStore> =
                    Arc::new(count::Counted::new(store, counters.clone()));
                Some(counted)
            }
            None => None,
        };
        Ok(Store {
            core: Core {
                inner: Arc::new(count::Counted::new(inner, counters.clone())),
                name: target.name.clone(),
                metafile_piece: METAFILE_PIECE,
                s3api: versions,
                counters,
                storage_class: target.storage_class,
                locked,
                remote: !target.url.starts_with("file:") && target.url != crate::config::MEMORY_URL,
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
        let base = self
            .core
            .locked
            .clone()
            .unwrap_or_else(|| self.core.inner.clone());
        let limited = LimitStore::new(base, target.upload_concurrency.max(1));
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

    /// On S3: what makes the requests object_store has no call for (`init --apply`).
    pub(crate) fn s3api(&self) -> Option<Arc<S3Api>> {
        self.core.s3api.clone()
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
        list: ObjectList,
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
        if let Some(sig) = list.signature {
            self.put_new(&run_path(host, source, id, "refs.sig"), sig)?;
        }
        self.put_new(&run_path(host, source, id, "refs"), list.text)?;
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
        let mut attributes = object_store::Attributes::new();
        if let Some(class) = self.core.storage_class {
            attributes.insert(object_store::Attribute::StorageClass, class.name().into());
        }
        io::put_create_with(&*self.core.inner, &path, payload, attributes)
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

    /// Reads whole the listed objects `objects` (key, listed size) of at most `limit`
    /// bytes, up to `concurrency` at once, and hands each to `f` in the order given, on
    /// this thread: its bytes, or `None` for one listed larger than `limit` (not read:
    /// the caller streams it). `f` must not block on the target itself.
    ///
    /// # Errors
    ///
    /// A read that fails (named), or `f`'s error; nothing after it is handed on.
    pub(crate) fn read_small_objects(
        &self,
        objects: &[(StorePath, u64)],
        limit: u64,
        concurrency: usize,
        mut f: impl FnMut(usize, Option<Bytes>) -> Result<()>,
    ) -> Result<()> {
        use futures::StreamExt;
        let reads = objects.iter().enumerate().map(|(i, (path, size))| {
            let store = self.core.inner.clone();
            let (path, size) = (path.clone(), *size);
            async move {
                if size > limit {
                    return (i, path, Ok(None));
                }
                let got = async { store.get(&path).await?.bytes().await }.await;
                (i, path, got.map(Some))
            }
        });
        runtime().block_on(async {
            let mut done = futures::stream::iter(reads).buffered(concurrency.max(1));
            while let Some((i, path, got)) = done.next().await {
                let bytes = got.map_err(|e| self.core.map_err(&path, "read", e))?;
                f(i, bytes)?;
            }
            Ok(())
        })
    }

    /// Reads a whole object if it is at most `limit` bytes; `None` if it is larger (the
    /// body of a larger one is not downloaded). One request either way.
    pub(crate) fn get_small(&self, path: &StorePath, limit: u64) -> Result<Option<Bytes>> {
        runtime()
            .block_on(get_small(self.core.inner.clone(), path.clone(), limit))
            .map_err(|e| self.core.map_err(path, "read", e))
    }

    /// Whether requests cross a network (not a folder).
    pub(crate) fn is_remote(&self) -> bool {
        self.core.remote
    }

    /// Starts reading a whole object of at most `limit` bytes in the background, as
    /// [`Reader::get_small`] does: its answer, or `None` when it is larger.
    pub(crate) fn spawn_get_small(
        &self,
        path: &StorePath,
        limit: u64,
    ) -> tokio::task::JoinHandle<Result<Option<Bytes>>> {
        let store = self.core.inner.clone();
        let (p, name) = (path.clone(), self.core.name.clone());
        runtime().spawn(async move {
            get_small(store, p.clone(), limit)
                .await
                .map_err(|e| map_store_error(&name, &p, "read", e))
        })
    }

    /// Starts reading `range` of an object in the background, as [`Reader::get_range`]
    /// does.
    pub(crate) fn spawn_get_range(
        &self,
        path: &StorePath,
        range: std::ops::Range<u64>,
    ) -> tokio::task::JoinHandle<Result<Bytes>> {
        let store = self.core.inner.clone();
        let (p, name) = (path.clone(), self.core.name.clone());
        runtime().spawn(async move {
            store
                .get_range(&p, range)
                .await
                .map_err(|e| map_store_error(&name, &p, "read", e))
        })
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
        Ok(self.list_history()?.0)
    }

    /// Like [`Reader::list_runs`], one host and source at a time (by host, then source;
    /// each one's runs oldest first): memory holds one group's runs however many hosts
    /// share the target.
    ///
    /// # Errors
    ///
    /// As [`Reader::list_runs`], or `each` fails.
    pub fn list_runs_by_source(
        &self,
        mut each: impl FnMut(&str, &str, Vec<RunInfo>) -> Result<()>,
    ) -> Result<()> {
        let listing = self.list_run_listing()?;
        for group in listing.groups() {
            let (runs, _) = group.runs();
            if !runs.is_empty() {
                each(group.host, group.source, runs)?;
            }
        }
        Ok(())
    }

    /// Like [`Reader::list_runs`], and also the records prune left of the runs it
    /// deleted (`<run>.pruned`, [`crate::chain::Tombstone`]), from the same LIST.
    ///
    /// # Errors
    ///
    /// As [`Reader::list_runs`].
    pub(crate) fn list_history(&self) -> Result<(Vec<RunInfo>, Vec<RunObject>)> {
        let listing = self.list_run_listing()?;
        let mut runs = Vec::new();
        let mut pruned = Vec::new();
        for group in listing.groups() {
            let (r, p) = group.runs();
            runs.extend(r);
            pruned.extend(p);
        }
        sort_runs(&mut runs);
        Ok((runs, pruned))
    }

    /// Every metafile piece, object list, signature and prune's record under `runs/`
    /// (other objects there are ignored), from one LIST read as it comes: memory is
    /// about 60 bytes per object however many hosts share the target.
    pub(crate) fn list_run_listing(&self) -> Result<RunListing> {
        use futures::StreamExt;
        let store = self.core.inner.clone();
        let prefix = StorePath::from("runs");
        runtime()
            .block_on(async move {
                let mut listing = RunListing::default();
                let mut objects = store.list(Some(&prefix));
                while let Some(m) = objects.next().await {
                    listing.add(m?);
                }
                Ok(listing.finish())
            })
            .map_err(|e| self.core.map_err(&StorePath::from("runs/"), "list", e))
    }
}

impl Reader {
    /// Looks for an earlier version of the data object `key` whose bytes hash to its
    /// name, for one whose stored bytes do not (overwritten, or damaged in place). Only
    /// S3 keeps versions coffer can read (a versioned bucket, and a credential with
    /// s3:ListBucketVersions and s3:GetObjectVersion); the newest
    /// [`MAX_VERSIONS_TRIED`] earlier versions of at most [`MAX_RECOVERED_BYTES`] are fetched and
    /// hashed. Nothing the listing says is trusted: a version is taken only if its bytes
    /// match.
    ///
    /// # Errors
    ///
    /// Only for a version that cannot be fetched for a reason that may pass (a dropped
    /// connection); a refused or failed listing is a [`Recovery::NotFound`] that says so.
    pub(crate) fn recover(&self, key: &ObjectKey) -> Result<Recovery> {
        use object_store::GetOptions;
        let Some(versions) = &self.core.s3api else {
            return Ok(Recovery::NotFound(
                "this kind of target keeps no earlier versions of an object".into(),
            ));
        };
        let path = data_path(key);
        let listed = match runtime().block_on(versions.list(path.as_ref())) {
            Ok(v) => v,
            Err(s3api::ApiError::Refused(why)) => {
                return Ok(Recovery::NotFound(format!(
                    "the credential may not list object versions ({why}): one with \
                     s3:ListBucketVersions and s3:GetObjectVersion can look for an earlier \
                     version that matches"
                )))
            }
            Err(why) => {
                return Ok(Recovery::NotFound(format!(
                    "its earlier versions could not be listed: {why}"
                )))
            }
        };
        let earlier: Vec<_> = listed.iter().filter(|v| !v.latest).collect();
        if earlier.is_empty() {
            return Ok(Recovery::NotFound(
                "the bucket keeps no earlier version of it (turn versioning on: README, \
                 'Overwrite protection')"
                    .into(),
            ));
        }
        let (mut tried, mut fetched) = (0, 0);
        for v in earlier
            .iter()
            .filter(|v| v.size <= MAX_RECOVERED_BYTES)
            .take(MAX_VERSIONS_TRIED)
        {
            tried += 1;
            let store = self.core.inner.clone();
            let (p, id) = (path.clone(), v.id.clone());
            let got = runtime().block_on(async move {
                let options = GetOptions {
                    version: Some(id),
                    ..Default::default()
                };
                let result = store.get_opts(&p, options).await?;
                // The listing's size is the store's word: the response's is checked too.
                if result.meta.size > MAX_RECOVERED_BYTES {
                    return Ok(None);
                }
                result.bytes().await.map(Some)
            });
            let bytes = match got {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    let e = self.core.map_err(&path, "read a version of", e);
                    if e.is_retryable() {
                        return Err(e);
                    }
                    continue;
                }
            };
            fetched += bytes.len() as u64;
            if blake3::hash(&bytes).as_bytes() == &key.0 {
                let full = versions.bucket_key(path.as_ref());
                let bucket = &versions.bucket;
                return Ok(Recovery::Found(Recovered {
                    repair: format!(
                        "aws s3api copy-object --bucket {bucket} --key '{full}' \
                         --copy-source '{bucket}/{full}?versionId={}'",
                        v.id
                    ),
                    version: v.id.clone(),
                    stored: v.stored.clone(),
                    bytes,
                    requests: 1 + tried,
                    fetched,
                }));
            }
        }
        Ok(Recovery::NotFound(format!(
            "none of its {} earlier versions checked ({tried} fetched) matches its name",
            earlier.len()
        )))
    }

    /// Lists the data objects (`data/`) in pages of up to `page`, streaming, handing each
    /// page to `f` on the calling thread (so `f` may read objects). Memory is bounded by
    /// two pages, however many objects the target holds.
    pub(crate) fn list_data(
        &self,
        page: usize,
        mut f: impl FnMut(&[object_store::ObjectMeta]) -> Result<()>,
    ) -> Result<()> {
        use futures::StreamExt;
        let store = self.core.inner.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        // The listing runs on the runtime; its pages come here one at a time. Dropping
        // the receiver (an error below) ends it.
        let lister = runtime().spawn(async move {
            let prefix = StorePath::from("data");
            let mut pages = store.list(Some(&prefix)).try_chunks(page);
            while let Some(p) = pages.next().await {
                let failed = p.is_err();
                if tx.send(p.map_err(|e| e.1)).await.is_err() || failed {
                    break;
                }
            }
        });
        let result = (|| {
            while let Some(p) = rx.blocking_recv() {
                let p = p.map_err(|e| self.core.map_err(&StorePath::from("data/"), "list", e))?;
                f(&p)?;
            }
            Ok(())
        })();
        drop(rx);
        let _ = runtime().block_on(lister);
        result
    }
}

impl Admin {
    /// A create-only put of a record prune or gc leaves (blocking).
    pub(crate) fn put_create(&self, path: &StorePath, bytes: Bytes) -> Result<PutOutcome> {
        Creator {
            core: self.reader.core.clone(),
        }
        .put_create(path, bytes)
    }

    /// Lists the data objects (`data/`) in batches of up to `batch`, as
    /// [`Reader::list_data`] does, and deletes the objects each call of `f` returns
    /// before handing on the next batch. Memory is bounded by the batches, however many
    /// objects the target holds.
    pub(crate) fn scan_data(
        &self,
        batch: usize,
        mut f: impl FnMut(&[object_store::ObjectMeta]) -> Result<Vec<StorePath>>,
    ) -> Result<()> {
        self.list_data(batch, |page| {
            let doomed = f(page)?;
            if doomed.is_empty() {
                Ok(())
            } else {
                self.delete(doomed)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut w = enc.message_writer(Vec::new(), None).unwrap();
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
        let chain = crate::format::refs::Chain::start().unwrap();
        crate::format::refs::write(&mut refs, &name, &bounds, &digest, &chain, None, []).unwrap();
        creator
            .put_run(
                host,
                source,
                &id,
                ObjectList {
                    text: refs.into(),
                    signature: None,
                },
                &mut file,
                message.len() as u64,
            )
            .unwrap();
        let mut runs = reader.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].pieces.len(), 4);
        assert_eq!(runs[0].metafile_bytes, message.len() as u64);
        crate::runs::check(&reader, &mut runs, &crate::runs::Trust::none()).unwrap();
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

    /// The listing hands out runs by host and source, keeps every kind of run object,
    /// and leaves out keys coffer would not have written: a host segment that is not the
    /// canonical escaping of its name (the key rebuilt from the names would be another
    /// object), an unknown extension, a malformed id.
    #[test]
    fn the_run_listing_groups_by_host_and_source_and_drops_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let target = TargetConfig::from_url(&url).unwrap();
        let reader = Store::open(&target, true).unwrap().reader();
        let (a, b) = ("20260101T000000Z-0000000a", "20260102T000000Z-0000000b");
        let keys = [
            format!("runs/web2/etc/{a}.meta"),
            format!("runs/web2/etc/{a}.refs"),
            format!("runs/web1/home/{b}.meta"),
            format!("runs/web1/home/{b}.meta.0002"),
            format!("runs/web1/home/{b}.refs"),
            format!("runs/web1/home/{b}.refs.sig"),
            format!("runs/web1/etc/{a}.pruned"),
            format!("runs/web1/etc/{b}.meta"),
            format!("runs/web1/etc/{b}.refs"),
            // Not coffer's: "w+65b1" decodes to "web1"; an unknown kind; a bad id.
            format!("runs/w+65b1/etc/{a}.meta"),
            format!("runs/web1/etc/{a}.tmp"),
            "runs/web1/etc/20260101T000000Z-zz.meta".to_string(),
        ];
        for k in &keys {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let listing = reader.list_run_listing().unwrap();
        let groups: Vec<(String, String, Vec<Vec<String>>)> = listing
            .groups()
            .map(|g| {
                let runs = g
                    .run_objects()
                    .map(|objects| objects.iter().map(|o| o.path.to_string()).collect())
                    .collect();
                (g.host.to_string(), g.source.to_string(), runs)
            })
            .collect();
        let names: Vec<(&str, &str)> = groups
            .iter()
            .map(|(h, s, _)| (h.as_str(), s.as_str()))
            .collect();
        assert_eq!(names, [("web1", "etc"), ("web1", "home"), ("web2", "etc")]);
        // Every kept object's rebuilt key is the key that was listed.
        let kept: Vec<&String> = groups
            .iter()
            .flat_map(|(_, _, runs)| runs.iter().flatten())
            .collect();
        assert_eq!(kept.len(), 9, "{kept:?}");
        for k in &kept {
            assert!(keys[..9].contains(k), "{k}");
        }
        assert_eq!(groups[0].2.len(), 2, "web1/etc: a pruned run and a run");
        assert_eq!(groups[1].2[0].len(), 4, "meta, its second piece, refs, sig");
        // As runs: the pruned one is a record, not a run.
        let (runs, pruned) = listing.groups().next().unwrap().runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].id, b);
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].id.to_string(), a);
    }
}
