//! `bench`: how fast each stage of a backup runs on this machine, and how fast a whole
//! backup runs, on the same input.
//!
//! The input (a file, a directory's regular files, or generated data) is read into memory
//! once, so that the stage figures do not measure the disk. Each figure is the median of
//! [`REPETITIONS`] runs, in MB/s: 10^6 bytes *of input* per second.
//!
//! Stages, each on one core unless said otherwise:
//! 1. chunking with both FastCDC variants of the `fastcdc` crate and several size bounds,
//!    each file chunked on its own as backup does;
//! 2. BLAKE3 of the chunks backup makes (FastCDC 2020 with the default bounds: the
//!    *default chunks*);
//! 3. the packer's zstd decision and compression of the default chunks;
//! 4. OpenPGP encryption of the default chunks with one pack session, on one core and on
//!    all cores (rayon's pool, which backup uses too); then compression and encryption
//!    on all cores with a session per pack, as backup does;
//! 5. whole backups (walk, read, chunk, hash, dedup, compress, encrypt, pack, store,
//!    metafile), with a fresh local index each time: of the input into an in-memory
//!    target, and of as much pseudo-random data to a folder target.
//!
//! Encryption on all cores is the baseline a whole backup is compared with: a backup of
//! incompressible data cannot be faster, and the gap is what the other stages, the disk
//! and the plumbing cost.

mod input;
mod report;

pub use report::{
    BenchReport, CeilingFigures, ChunkingFigures, CompressionFigures, EncryptionFigures, InputInfo,
    PipelineFigures, SizeSpread, Throughput,
};

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Chunking, Config, SourceConfig, TargetConfig, DEFAULT_CHUNKING};
use crate::crypto::{generate_key, load_recipients, Encryptor, KeyAlgorithm};
use crate::error::{Error, Result};
use crate::format::metafile::Encoding;
use crate::ids::ChunkHash;
use crate::progress::{NoProgress, Progress};
use input::{generate, load, Loaded};

/// The largest input `bench` reads into memory.
pub const MAX_INPUT: u64 = 4 << 30;
/// The smallest generated input.
pub const MIN_GENERATED: u64 = 1 << 20;
/// How many times each figure is measured; the median is reported.
pub const REPETITIONS: usize = 5;
/// Generated data is split into files of at most this size (large enough that the
/// largest chunk bounds measured, 16 MiB, are rarely cut short by a file's end).
const GENERATED_FILE: u64 = 16 << 20;
/// The chunk size bounds measured besides the default: a quarter and four times it.
const CHUNK_SETTINGS: [Chunking; 3] = [
    Chunking {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
    },
    DEFAULT_CHUNKING,
    Chunking {
        min: 1 << 20,
        avg: 4 << 20,
        max: 16 << 20,
    },
];

/// What to measure with.
#[derive(Debug, Clone)]
pub enum BenchInput {
    /// Deterministic data of this many bytes: half pseudo-random (incompressible), half
    /// text-like (compressible), in files of up to 16 MiB.
    Generated(u64),
    /// A file, or every regular file below a directory (read recursively).
    Path(PathBuf),
}
const UNIT: &str = "MB/s = 10^6 bytes of input per second";

/// Measures every stage, then whole backups. `progress` hears of each phase.
///
/// # Errors
///
/// The input cannot be read, or a stage fails (it runs the real code paths).
pub fn bench(input: &BenchInput, progress: &dyn Progress) -> Result<BenchReport> {
    let loaded = match input {
        BenchInput::Generated(size) => {
            progress.phase("generating the input", None);
            generate(*size)?
        }
        BenchInput::Path(path) => {
            progress.phase(&format!("reading {}", path.display()), None);
            load(path)?
        }
    };
    let info = loaded.info.clone();
    let tmp = tempfile::Builder::new()
        .prefix("coffer-bench-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    progress.phase("making a throwaway key", None);
    let key = generate_key("coffer bench", KeyAlgorithm::Cv25519, None)?;
    let cert = tmp.path().join("bench.pub.asc");
    std::fs::write(&cert, &key.public_armored).map_err(|e| Error::io(&cert, e))?;
    let encryptor = load_recipients(std::slice::from_ref(&cert))?;

    let stages = stages(&loaded, &encryptor, progress)?;
    // Whole backups run on the calling thread, as `coffer backup` runs them.
    let mut pipeline = whole_backups(
        &loaded,
        Destination::Memory,
        "input",
        tmp.path(),
        &cert,
        progress,
    )?;
    drop(loaded);
    pipeline.ceiling = Some(ceiling(&stages.rates, &pipeline, info.bytes));
    progress.phase("generating incompressible data", None);
    let random = input::incompressible(info.bytes.max(MIN_GENERATED));
    let random_rates = rates(&random, &encryptor, progress)?;
    let mut folder = whole_backups(
        &random,
        Destination::Folder,
        "random",
        tmp.path(),
        &cert,
        progress,
    )?;
    progress.done();
    let baseline = stages
        .encryption
        .all_cores
        .mb_per_sec
        .max(f64::MIN_POSITIVE);
    pipeline.of_encryption_all_cores = pipeline.throughput.mb_per_sec / baseline;
    folder.of_encryption_all_cores = folder.throughput.mb_per_sec / baseline;
    folder.ceiling = Some(ceiling(&random_rates, &folder, random.info.bytes));
    for p in [&mut pipeline, &mut folder] {
        p.of_ceiling = p.throughput.mb_per_sec
            / p.ceiling
                .map_or(f64::INFINITY, |c| c.mb_per_sec.max(f64::MIN_POSITIVE));
    }
    Ok(BenchReport {
        input: info,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads: rayon::current_num_threads(),
        repetitions: REPETITIONS,
        unit: UNIT,
        chunking: stages.chunking,
        hashing: stages.hashing,
        compression: stages.compression,
        encryption: stages.encryption,
        pipeline,
        incompressible_to_folder: folder,
    })
}

struct Stages {
    chunking: Vec<ChunkingFigures>,
    hashing: Throughput,
    compression: CompressionFigures,
    encryption: EncryptionFigures,
    rates: Rates,
}

/// One core's speed at each stage of a backup, on one input, and how much of the input
/// each stage sees.
struct Rates {
    chunking: Throughput,
    hashing: Throughput,
    compression: Throughput,
    encryption: Throughput,
    /// 1 + the share of the input in files of several default chunks.
    hashes_per_byte: f64,
    /// What compression leaves, per byte of input.
    compressed_per_byte: f64,
}

/// The ceiling the stage `rates` allow, for the backup `p` of `bytes` of input.
fn ceiling(rates: &Rates, p: &PipelineFigures, bytes: u64) -> CeilingFigures {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let secs_per_mb = |t: &Throughput| 1.0 / t.mb_per_sec.max(f64::MIN_POSITIVE);
    let stored_per_byte = p.bytes_stored as f64 / bytes.max(1) as f64;
    let c = CeilingFigures {
        mb_per_sec: 0.0,
        cores,
        chunking: secs_per_mb(&rates.chunking),
        hashing: secs_per_mb(&rates.hashing) * rates.hashes_per_byte,
        compression: secs_per_mb(&rates.compression),
        encryption: secs_per_mb(&rates.encryption) * rates.compressed_per_byte,
        pack_hashing: secs_per_mb(&rates.hashing) * stored_per_byte,
        hashes_per_byte: rates.hashes_per_byte,
        stored_per_byte,
    };
    let sum = c.chunking + c.hashing + c.compression + c.encryption + c.pack_hashing;
    CeilingFigures {
        mb_per_sec: cores as f64 / sum.max(f64::MIN_POSITIVE),
        ..c
    }
}

/// The share of `chunks` bytes that lie in files of more than one chunk, plus one.
fn hashes_per_byte(files: &[(String, Range<usize>)], chunks: &[Range<usize>]) -> f64 {
    let total: usize = files.iter().map(|(_, r)| r.len()).sum();
    let mut multi = 0usize;
    let mut i = 0;
    for (_, file) in files {
        let mut n = 0;
        while i < chunks.len() && chunks[i].start < file.end {
            n += 1;
            i += 1;
        }
        if n > 1 {
            multi += file.len();
        }
    }
    1.0 + multi as f64 / total.max(1) as f64
}

/// [`Rates`] of `loaded`: the default chunking, hashing, compression and encryption on
/// one core.
fn rates(loaded: &Loaded, encryptor: &Encryptor, progress: &dyn Progress) -> Result<Rates> {
    let (reps, bytes, data) = (REPETITIONS, loaded.info.bytes, &loaded.data[..]);
    let total = bytes * reps as u64;
    progress.phase("chunking the incompressible data", Some(total));
    let (chunking, chunks) = measure(reps, bytes, progress, || {
        Ok(chunk_all(
            data,
            &loaded.files,
            Variant::V2020,
            &DEFAULT_CHUNKING,
        ))
    })?;
    progress.phase("hashing the incompressible data", Some(total));
    let (hashing, _) = measure(reps, bytes, progress, || {
        Ok(chunks
            .iter()
            .fold(0u8, |acc, r| acc ^ ChunkHash::of(&data[r.clone()]).0[0]))
    })?;
    progress.phase("compressing the incompressible data", Some(total));
    let (compression, out) = measure(reps, bytes, progress, || {
        Ok(chunks
            .iter()
            .map(|r| crate::backup::encode(&data[r.clone()]).0.len() as u64)
            .sum::<u64>())
    })?;
    let session = encryptor.session()?;
    progress.phase("encrypting the incompressible data", Some(total));
    let (encryption, _) = measure(reps, bytes, progress, || {
        chunks
            .iter()
            .try_for_each(|r| session.encrypt(&data[r.clone()]).map(drop))
    })?;
    Ok(Rates {
        chunking,
        hashing,
        compression,
        encryption,
        hashes_per_byte: hashes_per_byte(&loaded.files, &chunks),
        compressed_per_byte: out as f64 / bytes.max(1) as f64,
    })
}

/// Chunking, hashing, compression and encryption of the input in memory.
fn stages(loaded: &Loaded, encryptor: &Encryptor, progress: &dyn Progress) -> Result<Stages> {
    let reps = REPETITIONS;
    let bytes = loaded.info.bytes;
    let total = bytes * reps as u64;
    let data = &loaded.data[..];

    let mut chunking = Vec::new();
    let mut settings = CHUNK_SETTINGS.to_vec();
    if !settings.contains(&DEFAULT_CHUNKING) {
        settings.push(DEFAULT_CHUNKING);
    }
    let mut default_chunks = Vec::new();
    for c in &settings {
        for variant in [Variant::V2016, Variant::V2020] {
            progress.phase(
                &format!("chunking, FastCDC {}", variant.name()),
                Some(total),
            );
            let (throughput, chunks) = measure(reps, bytes, progress, || {
                Ok(chunk_all(data, &loaded.files, variant, c))
            })?;
            let backup_default = variant == Variant::V2020 && *c == DEFAULT_CHUNKING;
            let lengths: Vec<u64> = chunks.iter().map(|r| r.len() as u64).collect();
            chunking.push(ChunkingFigures {
                variant: variant.name(),
                min: c.min,
                avg: c.avg,
                max: c.max,
                backup_default,
                throughput,
                chunks: chunks.len() as u64,
                sizes: spread(lengths, c.max as u64),
            });
            if backup_default {
                default_chunks = chunks;
            }
        }
    }
    let chunks = &default_chunks[..];

    progress.phase("hashing, BLAKE3", Some(total));
    let (hashing, _) = measure(reps, bytes, progress, || {
        Ok(chunks
            .iter()
            .map(|r| ChunkHash::of(&data[r.clone()]))
            .fold(0u8, |acc, h| acc ^ h.0[0]))
    })?;

    progress.phase("compressing, zstd", Some(total));
    let (throughput, (compressed, bytes_out)) = measure(reps, bytes, progress, || {
        let mut compressed = 0u64;
        let mut out = 0u64;
        for r in chunks {
            let (payload, encoding) = crate::backup::encode(&data[r.clone()]);
            compressed += u64::from(encoding == Encoding::Zstd);
            out += payload.len() as u64;
        }
        Ok((compressed, out))
    })?;
    let compression = CompressionFigures {
        throughput,
        chunks: chunks.len() as u64,
        chunks_compressed: compressed,
        bytes_out,
        ratio: bytes as f64 / bytes_out.max(1) as f64,
    };

    use rayon::prelude::*;
    let session = encryptor.session()?;
    progress.phase("encrypting, one core", Some(total));
    let (one_core, _) = measure(reps, bytes, progress, || {
        chunks
            .iter()
            .try_for_each(|r| session.encrypt(&data[r.clone()]).map(drop))
    })?;
    progress.phase("encrypting, all cores", Some(total));
    let (all_cores, _) = measure(reps, bytes, progress, || {
        chunks
            .par_iter()
            .try_for_each(|r| session.encrypt(&data[r.clone()]).map(drop))
    })?;
    progress.phase(
        "compressing and encrypting, a session per pack",
        Some(total),
    );
    let packs = packs(chunks, crate::config::DEFAULT_PACK_SIZE);
    let (seal_all_cores, _) = measure(reps, bytes, progress, || {
        for pack in &packs {
            let session = encryptor.session()?;
            let sealed: Vec<Vec<u8>> = pack
                .par_iter()
                .map(|r| session.encrypt(&crate::backup::encode(&data[r.clone()]).0))
                .collect::<Result<_>>()?;
            drop(sealed);
        }
        Ok(())
    })?;
    let default_rate = chunking
        .iter()
        .find(|c| c.backup_default)
        .map(|c| c.throughput)
        .ok_or_else(|| Error::Internal("no default chunking figure".into()))?;
    let rates = Rates {
        chunking: default_rate,
        hashing,
        compression: compression.throughput,
        encryption: one_core,
        hashes_per_byte: hashes_per_byte(&loaded.files, chunks),
        compressed_per_byte: compression.bytes_out as f64 / bytes.max(1) as f64,
    };
    Ok(Stages {
        rates,
        chunking,
        hashing,
        compression,
        encryption: EncryptionFigures {
            key: "Cv25519",
            one_core,
            all_cores,
            seal_all_cores,
        },
    })
}

/// Where whole backups go.
#[derive(Clone, Copy)]
enum Destination {
    /// An in-memory target: the pipeline alone.
    Memory,
    /// A new folder target under the temporary directory for each backup, written and
    /// synced as `file://` targets are.
    Folder,
}

/// Backs `loaded` up [`REPETITIONS`] times, each time into a new target with a new local
/// index (so nothing is deduplicated against an earlier run). `name` labels its files in
/// the temporary directory and its progress.
fn whole_backups(
    loaded: &Loaded,
    into: Destination,
    name: &str,
    tmp: &Path,
    cert: &Path,
    progress: &dyn Progress,
) -> Result<PipelineFigures> {
    let reps = REPETITIONS;
    let tree = match &loaded.tree {
        Some(t) => t.clone(),
        None => {
            progress.phase(&format!("writing the {name} files"), None);
            let dir = tmp.join(format!("{name}-input"));
            for (file, range) in &loaded.files {
                let path = dir.join(file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                std::fs::write(&path, &loaded.data[range.clone()])
                    .map_err(|e| Error::io(&path, e))?;
            }
            dir
        }
    };
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for rep in 0..reps {
        let (target, folder) = match into {
            Destination::Memory => (TargetConfig::in_memory(), None),
            Destination::Folder => {
                let dir = tmp.join(format!("{name}-target-{rep}"));
                let url = format!("file://{}", dir.display());
                let mut target = TargetConfig::from_url(&url)?;
                target.create = true; // a throwaway folder, made for the bench
                (target, Some(dir))
            }
        };
        let source = SourceConfig {
            name: "bench".into(),
            input: crate::config::Input::Tree(tree.clone()),
            recipients: vec![cert.to_path_buf()],
            targets: vec![target.name.clone()],
            ignore: Vec::new(),
            one_file_system: false,
            chunking: DEFAULT_CHUNKING,
            retention: crate::retention::Retention::default(),
            max_age: None,
            signers: Vec::new(),
        };
        let where_to = match into {
            Destination::Memory => "into memory",
            Destination::Folder => "to a folder",
        };
        progress.phase(
            &format!("backing up {name} {where_to} ({}/{reps})", rep + 1),
            Some(loaded.info.bytes * reps as u64),
        );
        let state_dir = tmp.join(format!("state-{name}-{rep}"));
        let config = Config {
            file: PathBuf::from("(coffer bench)"),
            host: "bench".into(),
            state_dir: state_dir.clone(),
            signing_key: None,
            signers: Vec::new(),
            sources: Default::default(),
            targets: Default::default(),
        };
        let started = Instant::now();
        let stats =
            crate::backup::backup(&config, &source, &target, &Default::default(), &NoProgress)?;
        times.push(started.elapsed().as_secs_f64());
        progress.bytes(loaded.info.bytes);
        for dir in std::iter::once(&state_dir).chain(&folder) {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        last = Some(stats);
    }
    let stats = last.expect("at least one repetition");
    Ok(PipelineFigures {
        throughput: throughput(loaded.info.bytes, times),
        of_encryption_all_cores: 0.0,
        ceiling: None,
        of_ceiling: 0.0,
        files: stats.files,
        bytes_read: stats.bytes_read,
        chunks: stats.chunks,
        chunks_new: stats.chunks_new,
        bytes_stored: stats.bytes_stored,
        objects_stored: stats.packs_stored + stats.run_objects_stored,
        problems: stats.problems.into_iter().map(|p| p.message).collect(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    V2016,
    V2020,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::V2016 => "v2016",
            Variant::V2020 => "v2020",
        }
    }
}

/// Every chunk of every file, as ranges of `data`.
fn chunk_all(
    data: &[u8],
    files: &[(String, Range<usize>)],
    variant: Variant,
    c: &Chunking,
) -> Vec<Range<usize>> {
    let (min, avg, max) = (c.min as usize, c.avg as usize, c.max as usize);
    let mut out = Vec::new();
    for (_, file) in files {
        let bytes = &data[file.clone()];
        let base = file.start;
        let mut push = |offset: usize, length: usize| {
            out.push(base + offset..base + offset + length);
        };
        match variant {
            Variant::V2016 => fastcdc::v2016::FastCDC::new(bytes, min, avg, max)
                .for_each(|ch| push(ch.offset, ch.length)),
            Variant::V2020 => fastcdc::v2020::FastCDC::new(bytes, min, avg, max)
                .for_each(|ch| push(ch.offset, ch.length)),
        }
    }
    out
}

/// The chunks grouped as the packer groups them: a pack is sealed once it holds at least
/// `pack_size` bytes.
fn packs(chunks: &[Range<usize>], pack_size: u64) -> Vec<Vec<Range<usize>>> {
    let mut out = vec![Vec::new()];
    let mut filled = 0u64;
    for r in chunks {
        if filled >= pack_size {
            out.push(Vec::new());
            filled = 0;
        }
        filled += r.len() as u64;
        out.last_mut().expect("one pack at least").push(r.clone());
    }
    out
}

fn spread(mut lengths: Vec<u64>, max: u64) -> SizeSpread {
    lengths.sort_unstable();
    let n = lengths.len();
    if n == 0 {
        return SizeSpread {
            smallest: 0,
            median: 0,
            p90: 0,
            largest: 0,
            average: 0.0,
            at_max: 0,
        };
    }
    // Nearest rank: the smallest size at least `p` of the chunks are not larger than.
    let rank = |p: f64| lengths[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    SizeSpread {
        smallest: lengths[0],
        median: rank(0.5),
        p90: rank(0.9),
        largest: lengths[n - 1],
        average: lengths.iter().sum::<u64>() as f64 / n as f64,
        at_max: lengths.iter().filter(|&&l| l == max).count() as u64,
    }
}

/// Runs `f` `reps` times; its throughput over `bytes`, and its last result.
/// `progress` hears of `bytes` after each run.
fn measure<T>(
    reps: usize,
    bytes: u64,
    progress: &dyn Progress,
    mut f: impl FnMut() -> Result<T>,
) -> Result<(Throughput, T)> {
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        let out = std::hint::black_box(f()?);
        times.push(started.elapsed().as_secs_f64());
        progress.bytes(bytes);
        last = Some(out);
    }
    Ok((throughput(bytes, times), last.expect("at least one run")))
}

fn throughput(bytes: u64, mut times: Vec<f64>) -> Throughput {
    times.sort_by(f64::total_cmp);
    let median = match times.len() {
        0 => 0.0,
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2.0,
    };
    Throughput {
        mb_per_sec: bytes as f64 / median.max(1e-9) / 1e6,
        median_secs: median,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_packs() {
        let s = spread((1..=10).collect(), 10);
        assert_eq!((s.smallest, s.median, s.p90, s.largest), (1, 5, 9, 10));
        assert_eq!(s.at_max, 1);
        assert_eq!(s.average, 5.5);
        let chunks = [0..6, 6..12, 12..13, 13..20];
        let p = packs(&chunks, 10);
        assert_eq!(p, vec![vec![0..6, 6..12], vec![12..13, 13..20]]);
    }
}
