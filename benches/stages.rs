//! Per-stage throughput: FastCDC chunking, BLAKE3 hashing and OpenPGP encryption of one
//! chunk with a pack's shared session key. Run with `cargo bench --bench stages`; figures
//! are MB/s (criterion's throughput), compare them with each other in the same run.

use std::io::Write;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};

fn data(len: usize) -> Vec<u8> {
    coffer::internals::noise(len, 1)
}

fn chunking(c: &mut Criterion) {
    let input = data(64 << 20);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.sample_size(10);
    for (min, avg, max) in [
        (256 << 10, 1 << 20, 4 << 20),
        (16 << 10, 64 << 10, 256 << 10),
    ] {
        g.bench_with_input(BenchmarkId::new("fastcdc2020", avg), &input, |b, input| {
            b.iter(|| fastcdc::v2020::FastCDC::new(input, min, avg, max).count())
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let chunk = data(1 << 20);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("blake3 1MiB", |b| b.iter(|| coffer::ChunkHash::of(&chunk)));
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = coffer::generate_key("bench", coffer::KeyAlgorithm::Cv25519, None).unwrap();
    let cert = dir.path().join("bench.pub.asc");
    std::fs::File::create(&cert)
        .unwrap()
        .write_all(&key.public_armored)
        .unwrap();
    let encryptor = coffer::load_recipients(&[cert]).unwrap();
    let session = encryptor.session().unwrap();
    let mut g = c.benchmark_group("encrypt");
    for size in [4 << 10, 1 << 20] {
        let chunk = data(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("chunk in pack", size),
            &chunk,
            |b, chunk| {
                let mut out = Vec::with_capacity(size + 1024);
                b.iter(|| {
                    out.clear();
                    session.encrypt_into(chunk, &mut out).unwrap();
                })
            },
        );
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("new pack session (public-key work)", |b| {
        b.iter(|| encryptor.session().unwrap())
    });
    g.finish();
}

// criterion's macro defines an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::chunking, super::hashing, super::encryption);
}
criterion_main!(group::benches);
