//! Upload limits as `ObjectStore` wrappers, in the manner of object_store's own
//! `LimitStore` (which bounds concurrent requests, and is used as it is) and
//! `ThrottledStore`: [`RateLimited`] spaces out puts so that they average at most a given
//! number of bytes per second. Everything else passes through unchanged.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Spaces out uploads so that they average at most a given number of bytes per second.
#[derive(Debug)]
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

/// A store whose puts average at most a given rate.
#[derive(Debug)]
pub(crate) struct RateLimited<T> {
    inner: Arc<T>,
    limit: RateLimit,
}

impl<T: ObjectStore> RateLimited<T> {
    pub(crate) fn new(inner: T, bytes_per_sec: u64) -> Self {
        RateLimited {
            inner: Arc::new(inner),
            limit: RateLimit::new(bytes_per_sec),
        }
    }
}

impl<T: ObjectStore> std::fmt::Display for RateLimited<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimited({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: ObjectStore> ObjectStore for RateLimited<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.limit.acquire(payload.content_length() as u64).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // coffer never uploads in parts (section 8 of docs/FORMAT.md): not limited.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
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

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_store_spaces_its_puts_and_passes_reads_through() {
        use object_store::ObjectStoreExt;
        let store = RateLimited::new(object_store::memory::InMemory::new(), 1000);
        let start = tokio::time::Instant::now();
        for i in 0..3 {
            let p = Path::from(format!("o{i}"));
            store.put(&p, vec![0u8; 1000].into()).await.unwrap();
        }
        assert_eq!(start.elapsed().as_secs(), 2, "3 KB at 1 KB/s");
        let got = store
            .get(&Path::from("o1"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(start.elapsed().as_secs(), 2, "reads are not limited");
    }
}
