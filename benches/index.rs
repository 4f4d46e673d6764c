//! Local index lookups: `Index::lookup_chunk` on an index holding 100,000 chunks, for
//! chunks it holds (hits: a later run, or a duplicate) and chunks it does not (misses:
//! new data). Backup makes one lookup per chunk it reads. Run with
//! `cargo bench --bench index`; figures are lookups per second (criterion's throughput).

use coffer::internals::Index;
use coffer::metafile::{ChunkRef, Encoding};
use coffer::{ChunkHash, ObjectKey};
use criterion::{criterion_main, Criterion, Throughput};

const CHUNKS: u64 = 100_000;
/// Chunks per pack, as with 1 MiB chunks in 16 MiB packs.
const PER_PACK: u64 = 16;

fn hash(i: u64) -> ChunkHash {
    ChunkHash::of(&i.to_le_bytes())
}

fn lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::open(dir.path()).unwrap();
    let target = index.target_id("file:///bench", "BENCH", "bench").unwrap();
    let refs: Vec<ChunkRef> = (0..CHUNKS)
        .map(|i| ChunkRef {
            object: ObjectKey::of(&(i / PER_PACK).to_le_bytes()),
            offset: (i % PER_PACK) << 20,
            length: (1 << 20) + 600,
            size: 1 << 20,
            hash: hash(i),
            encoding: Encoding::Raw,
        })
        .collect();
    // One transaction per pack would be what backup does; larger ones fill it faster.
    for batch in refs.chunks(1000) {
        index.record_chunks(target, batch, 0).unwrap();
    }
    // Precomputed, so the loop measures the lookup, not BLAKE3.
    let hits: Vec<ChunkHash> = (0..4096).map(|i| hash(i * 24 % CHUNKS)).collect();
    let misses: Vec<ChunkHash> = (0..4096).map(|i| hash(CHUNKS + i)).collect();

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_chunk hit, 100k chunks", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % hits.len();
            let found = index.lookup_chunk(target, &hits[i]).unwrap();
            assert!(found.is_some());
        })
    });
    g.bench_function("lookup_chunk miss, 100k chunks", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % misses.len();
            let found = index.lookup_chunk(target, &misses[i]).unwrap();
            assert!(found.is_none());
        })
    });
    g.finish();
}

// criterion's macro defines an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::lookups);
}
criterion_main!(group::benches);
