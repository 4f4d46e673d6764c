//! What `coffer bench` reports: every figure with its unit, as `--json` prints it and as
//! the command line renders it. Throughputs are medians of [`super::REPETITIONS`] runs in
//! MB/s (10^6 bytes of input per second).

use serde::Serialize;

/// Every figure `bench` measured.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BenchReport {
    /// What was measured.
    pub input: InputInfo,
    /// Cores available to this process.
    pub cores: usize,
    /// Threads of the "all cores" figures (rayon's pool, as backup uses).
    pub threads: usize,
    /// Runs per figure; each figure is their median.
    pub repetitions: usize,
    /// The unit of every `mb_per_sec`.
    pub unit: &'static str,
    /// FastCDC, one core, per variant and size bounds.
    pub chunking: Vec<ChunkingFigures>,
    /// BLAKE3 of the default chunks, one core.
    pub hashing: Throughput,
    /// The packer's compression of the default chunks, one core.
    pub compression: CompressionFigures,
    /// OpenPGP encryption of the default chunks.
    pub encryption: EncryptionFigures,
    /// A whole backup into memory.
    pub pipeline: PipelineFigures,
    /// A whole backup of pseudo-random data as large as the input (nothing compresses)
    /// to a folder target on the temporary directory's file system.
    pub incompressible_to_folder: PipelineFigures,
}

/// The input.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct InputInfo {
    /// For people: where it came from and what it is.
    pub description: String,
    /// Bytes (the sum of the files' sizes).
    pub bytes: u64,
    /// Regular files.
    pub files: u64,
    /// Whether it was generated (else read from a path).
    pub generated: bool,
}

/// A rate: input bytes over the median time.
#[derive(Debug, Clone, Copy, Serialize)]
#[non_exhaustive]
pub struct Throughput {
    /// 10^6 bytes of input per second.
    pub mb_per_sec: f64,
    /// The median time of one run over the whole input, in seconds.
    pub median_secs: f64,
}

/// One FastCDC variant with one set of size bounds.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ChunkingFigures {
    /// `v2016` or `v2020` (the `fastcdc` crate's modules).
    pub variant: &'static str,
    /// Minimum chunk size.
    pub min: u32,
    /// Average (target) chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
    /// Whether this is what backup uses (FastCDC 2020, default bounds).
    pub backup_default: bool,
    /// Speed on one core.
    pub throughput: Throughput,
    /// Chunks made.
    pub chunks: u64,
    /// Sizes of the chunks made.
    pub sizes: SizeSpread,
}

/// The distribution of chunk sizes, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
#[non_exhaustive]
pub struct SizeSpread {
    /// The smallest chunk (often a file's last).
    pub smallest: u64,
    /// The median chunk.
    pub median: u64,
    /// 90% of the chunks are at most this large.
    pub p90: u64,
    /// The largest chunk.
    pub largest: u64,
    /// The mean size.
    pub average: f64,
    /// Chunks cut at the maximum size, not at a content-defined point.
    pub at_max: u64,
}

/// The packer's compression.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CompressionFigures {
    /// Speed on one core.
    pub throughput: Throughput,
    /// Chunks.
    pub chunks: u64,
    /// Chunks stored compressed (zstd saved at least a tenth).
    pub chunks_compressed: u64,
    /// Bytes after compression (compressed chunks, and the others as they are).
    pub bytes_out: u64,
    /// Input bytes over output bytes.
    pub ratio: f64,
}

/// OpenPGP encryption of the default chunks with one pack session.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EncryptionFigures {
    /// The algorithm of the throwaway recipient key.
    pub key: &'static str,
    /// Chunk after chunk on one core.
    pub one_core: Throughput,
    /// The chunks spread over all cores (rayon): the baseline a whole backup is
    /// compared with.
    pub all_cores: Throughput,
    /// Compression then encryption on all cores, pack by pack with a new session each,
    /// as backup does.
    pub seal_all_cores: Throughput,
}

/// What the stages of a backup allow on this machine: `cores` over the sum of each
/// stage's seconds per MB of input on one core, each stage counted for as many bytes
/// as a backup gives it (the whole-file hash of files of several chunks, encryption
/// and pack hashing of what compression left). Nothing can run faster; the gap to a
/// whole backup is what reading, dedup, packing, storing and the plumbing cost.
#[derive(Debug, Clone, Copy, Serialize)]
#[non_exhaustive]
pub struct CeilingFigures {
    /// The ceiling, in MB/s of input.
    pub mb_per_sec: f64,
    /// Cores it assumes (all those available).
    pub cores: usize,
    /// Seconds per MB of input: FastCDC 2020 with the default bounds.
    pub chunking: f64,
    /// Seconds per MB of input: BLAKE3 of every chunk, and again of every file of
    /// several chunks.
    pub hashing: f64,
    /// Seconds per MB of input: the packer's zstd decision and compression.
    pub compression: f64,
    /// Seconds per MB of input: encryption of what compression left.
    pub encryption: f64,
    /// Seconds per MB of input: BLAKE3 of the stored packs (their names).
    pub pack_hashing: f64,
    /// Bytes hashed per byte of input (1 + the share of bytes in files of several
    /// chunks).
    pub hashes_per_byte: f64,
    /// Bytes encrypted and stored per byte of input (after compression).
    pub stored_per_byte: f64,
}

/// A whole backup into an in-memory target.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PipelineFigures {
    /// Input bytes over the median duration of a backup.
    pub throughput: Throughput,
    /// `throughput` over the encryption on all cores (1.0: as fast as encryption alone).
    pub of_encryption_all_cores: f64,
    /// What the stages allow for this data (see [`CeilingFigures`]).
    pub ceiling: Option<CeilingFigures>,
    /// `throughput` over the ceiling (1.0: the stages alone, on every core).
    pub of_ceiling: f64,
    /// Regular files backed up.
    pub files: u64,
    /// Bytes read from the files.
    pub bytes_read: u64,
    /// Chunks referenced by the run.
    pub chunks: u64,
    /// Chunks stored (the others were duplicates).
    pub chunks_new: u64,
    /// Bytes stored (packs, object list, metafile).
    pub bytes_stored: u64,
    /// Objects stored.
    pub objects_stored: u64,
    /// What backup reported as skipped or changed while read (last run).
    pub problems: Vec<String>,
}
