//! coffer: encrypted, deduplicated, incremental off-site backups in the style of Brackup.
//!
//! Files are split into content-defined chunks (FastCDC), hashed with BLAKE3,
//! deduplicated through a local SQLite index, encrypted to OpenPGP public keys, packed and
//! stored through `object_store`. Each run writes an encrypted metafile listing every file
//! and its chunks; `restore` reads it back. docs/FORMAT.md specifies what is stored.

mod backup;
pub mod bench;
mod cancel;
mod chunker;
mod config;
mod crypto;
mod error;
mod format;
#[cfg(test)]
mod fuzz;
pub mod gc;
mod ids;
mod index;
mod progress;
pub mod prune;
mod restore;
pub mod retention;
pub mod runs;
mod source;
mod store;
#[cfg(test)]
mod test_data;
pub mod text;

pub use backup::{backup, backup_all, BackupOptions, BackupStats};
pub use bench::{bench, BenchInput, BenchReport};
pub use cancel::Cancel;
pub use config::{
    config_path, default_state_dir, parse_duration, parse_size, Config, SourceConfig, TargetConfig,
};
pub use crypto::{
    generate_key, generate_key_with, load_recipients, load_secret_keys, Decryptor, Encryptor,
    Expiry, GeneratedKey, KeyAlgorithm, PackSession, DEFAULT_KEY_LIFETIME,
};
pub use error::{Error, Result};
pub use format::{metafile, refs};
pub use ids::{ChunkHash, ObjectKey, RunId};
/// The local SQLite index, public for benchmarks (`benches/index.rs`); its methods take
/// [`ChunkHash`]es and [`metafile::ChunkRef`]s.
pub use index::Index;
pub use progress::{NoProgress, Problem, Progress};
pub use restore::{restore, MetafileSource, RestoreOptions, RestoreStats};
pub use retention::Retention;
pub use store::{RunInfo, Store};
