//! Counting the requests a command makes of a target, as an `ObjectStore` wrapper (in
//! the manner of limit.rs): what a check, a gc or a backup costs on a store that bills
//! per request, and whether it grows with the bucket or with the work.
//!
//! Listings are counted in pages of 1,000 keys, as S3 and GCS return them (Azure
//! returns up to 5,000: its figure is an upper bound); a listing that returns nothing is
//! one request too. Deletions are counted per object (S3 deletes up to 1,000 in one
//! request).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use serde::Serialize;

/// Keys in one page of a listing.
const LIST_PAGE: u64 = 1000;

/// What was asked of a target so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Requests {
    /// Reads of an object (whole, a range, or its metadata only).
    pub gets: u64,
    /// Objects created.
    pub puts: u64,
    /// Pages of listings, at 1,000 keys a page.
    pub list_pages: u64,
    /// Keys those listings returned.
    pub listed: u64,
    /// Objects deleted.
    pub deletes: u64,
}

/// The shared counters behind [`Requests`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    gets: AtomicU64,
    puts: AtomicU64,
    list_pages: AtomicU64,
    listed: AtomicU64,
    deletes: AtomicU64,
}

impl Counters {
    /// The counts now.
    pub(crate) fn snapshot(&self) -> Requests {
        Requests {
            gets: self.gets.load(Relaxed),
            puts: self.puts.load(Relaxed),
            list_pages: self.list_pages.load(Relaxed),
            listed: self.listed.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
        }
    }

    /// Counts the pages and keys of a listing as it is read.
    fn listing(
        self: &Arc<Self>,
        stream: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_pages.fetch_add(1, Relaxed);
        let counters = self.clone();
        let mut n = 0u64;
        stream
            .inspect(move |item| {
                if item.is_ok() {
                    n += 1;
                    counters.listed.fetch_add(1, Relaxed);
                    if n > 1 && (n - 1).is_multiple_of(LIST_PAGE) {
                        counters.list_pages.fetch_add(1, Relaxed);
                    }
                }
            })
            .boxed()
    }
}

/// A store whose requests are counted in `counters`.
#[derive(Debug)]
pub(crate) struct Counted {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl Counted {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, counters: Arc<Counters>) -> Self {
        Counted { inner, counters }
    }
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.counters.gets.fetch_add(1, Relaxed);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.counters.gets.fetch_add(ranges.len() as u64, Relaxed);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counters = self.counters.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| {
                if r.is_ok() {
                    counters.deletes.fetch_add(1, Relaxed);
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counters.listing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counters
            .listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let r = self.inner.list_with_delimiter(prefix).await?;
        let keys = (r.objects.len() + r.common_prefixes.len()) as u64;
        self.counters
            .list_pages
            .fetch_add(keys.div_ceil(LIST_PAGE).max(1), Relaxed);
        self.counters.listed.fetch_add(keys, Relaxed);
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn requests_are_counted_and_listings_by_the_page() {
        let counters = Arc::new(Counters::default());
        let store = Counted::new(
            Arc::new(object_store::memory::InMemory::new()),
            counters.clone(),
        );
        for i in 0..2500 {
            store
                .put(&Path::from(format!("d/{i:05}")), vec![1u8].into())
                .await
                .unwrap();
        }
        store.get(&Path::from("d/00007")).await.unwrap();
        let listed: Vec<_> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 2500);
        let empty: Vec<_> = store
            .list(Some(&Path::from("none")))
            .try_collect()
            .await
            .unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            counters.snapshot(),
            Requests {
                gets: 1,
                puts: 2500,
                list_pages: 3 + 1,
                listed: 2500,
                deletes: 0,
            }
        );
        // Exactly 1,000 keys is one page, 1,001 two.
        for (n, pages) in [(1000, 1), (1001, 2)] {
            let c = Arc::new(Counters::default());
            let s = Counted::new(Arc::new(object_store::memory::InMemory::new()), c.clone());
            for i in 0..n {
                s.put(&Path::from(format!("k{i:05}")), vec![0u8].into())
                    .await
                    .unwrap();
            }
            let _: Vec<_> = s.list(None).try_collect().await.unwrap();
            assert_eq!(c.snapshot().list_pages, pages, "{n} keys");
        }
    }
}
