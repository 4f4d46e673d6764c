//! The plumbing under the handles: the async runtime that drives object_store, the
//! create-only put, blocking readers over object streams, and the mapping of
//! object_store's errors to coffer's (which names the request, never its credential).

use std::sync::OnceLock;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::PutOutcome;
use crate::error::Error;

/// The process-wide async runtime that drives object_store.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Few blocking threads (local files are read on them), kept: every new
            // thread that allocates a pack's buffer gets a malloc arena of its own,
            // which keeps freed packs resident.
            .max_blocking_threads(4)
            .thread_keep_alive(std::time::Duration::from_secs(600))
            .thread_name("coffer-io")
            .enable_all()
            .build()
            .expect("tokio runtime starts")
    })
}

/// Blocking `Read` over an object's body stream (behind a lock only to be `Sync`: one
/// reader uses it).
pub(super) struct StreamReader {
    pub(super) stream:
        std::sync::Mutex<futures::stream::BoxStream<'static, object_store::Result<Bytes>>>,
    pub(super) current: Bytes,
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

/// Readers one after the other.
pub(super) struct Chained<R> {
    pub(super) readers: std::vec::IntoIter<R>,
    pub(super) current: Option<R>,
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
    put_create_with(store, path, payload, object_store::Attributes::new()).await
}

/// [`put_create`] with `attributes` (a pack's storage class).
pub(crate) async fn put_create_with(
    store: &dyn ObjectStore,
    path: &StorePath,
    payload: impl Into<PutPayload>,
    attributes: object_store::Attributes,
) -> object_store::Result<PutOutcome> {
    let opts = PutOptions {
        mode: PutMode::Create,
        attributes,
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
        // Creating or listing never finds an object missing: a 404 there is the store
        // saying the bucket (container) is not there, or the URL points elsewhere.
        if matches!(op, "create" | "list") {
            return Error::Store {
                target: target.to_string(),
                message: format!(
                    "{op} {what}: the store answered 404 Not Found: the target's bucket (or \
                     container) does not exist, or its url or endpoint points elsewhere; \
                     coffer never creates a bucket: create it, or correct the url ({e})"
                ),
                source: Some(Box::new(e)),
            };
        }
        return Error::NotFound(format!("target {target}: object {what} is missing"));
    }
    // S3 answers a read of an object not thawed from GLACIER or DEEP_ARCHIVE with 403
    // InvalidObjectState: not a refusal of the credential.
    if e.to_string().contains("InvalidObjectState") {
        return Error::Frozen {
            target: target.to_string(),
            key: what.to_string(),
        };
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
