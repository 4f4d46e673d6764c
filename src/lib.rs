//! coffer: encrypted, deduplicated, incremental off-site backups in the style of Brackup.
//!
//! Files are split into content-defined chunks (FastCDC), hashed with BLAKE3,
//! deduplicated through a local SQLite index, encrypted to OpenPGP public keys, packed and
//! stored through `object_store`. Each run writes an encrypted metafile listing every file
//! and its chunks; [`restore()`] reads it back. docs/FORMAT.md specifies what is stored.
//!
//! The command line (`coffer --help`) is the main way in; this library is what it is made
//! of, with the same guarantees. Its capabilities are in its types: [`backup()`] holds only
//! public keys ([`Encryptor`]) and a target handle that can only create objects
//! ([`Creator`]); reading needs a [`Reader`] and a [`Decryptor`]; deleting, an [`Admin`]
//! (used by [`prune`] and [`gc`]).
//!
//! ```
//! # fn main() -> coffer::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let (src, target, state) = (dir.path().join("src"), dir.path().join("target"),
//! #     dir.path().join("state"));
//! # std::fs::create_dir(&src).unwrap();
//! # std::fs::write(src.join("hello.txt"), b"hello").unwrap();
//! // A key pair: the public part goes on the host, the secret part stays elsewhere.
//! let key = coffer::generate_key("backup key", coffer::KeyAlgorithm::Cv25519, None)?;
//! # let (public, secret) = (dir.path().join("public.asc"), dir.path().join("secret.asc"));
//! # std::fs::write(&public, &key.public_armored).unwrap();
//! # std::fs::write(&secret, &key.secret_armored).unwrap();
//! let config = coffer::Config::parse(
//!     &format!(
//!         r#"
//!         state_dir = "{state}"
//!         [source.etc]
//!         path = "{src}"
//!         recipients = ["{public}"]
//!         targets = ["offsite"]
//!         [target.offsite]
//!         url = "file://{target}"
//!         create = true
//!         "#,
//!         state = state.display(),
//!         target = target.display(),
//!         src = src.display(),
//!         public = public.display(),
//!     ),
//!     std::path::Path::new("coffer.toml"),
//! )?;
//! let source = &config.sources["etc"];
//! let offsite = config.target("offsite")?;
//! let stats = coffer::backup(
//!     &config,
//!     source,
//!     &offsite,
//!     &coffer::BackupOptions::default(),
//!     &coffer::NoProgress,
//! )?;
//! assert!(stats.complete());
//!
//! // Restoring needs the secret key, and a handle that can read the target.
//! let reader = coffer::Store::open(&offsite, false)?.reader();
//! let runs = reader.list_runs()?;
//! assert_eq!(runs.len(), 1);
//! let decryptor = coffer::load_secret_keys(&secret, &mut || unreachable!("no passphrase"))?;
//! let to = dir.path().join("restored");
//! let what = coffer::MetafileSource::Run {
//!     host: None, source: Some("etc".into()), id: None, at: None,
//! };
//! let opts = coffer::RestoreOptions::new(&to);
//! coffer::restore(&reader, &what, &decryptor, &opts, &coffer::NoProgress)?;
//! assert_eq!(std::fs::read(to.join("hello.txt")).unwrap(), b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! A backup's handle cannot read: this does not compile.
//!
//! ```compile_fail,E0599
//! fn peek(creator: &coffer::Creator) {
//!     let _ = creator.list_runs();
//! }
//! ```

#![warn(unnameable_types)]

mod backup;
pub mod bench;
mod cancel;
pub mod chain;
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
mod keyset;
pub mod lock;
pub mod policies;
mod prng;
mod progress;
pub mod prune;
mod restore;
pub mod retention;
pub mod runs;
pub mod setup;
mod source;
pub use source::check_ignore_pattern;
mod state;
pub mod status;
mod store;
mod text;
pub mod verify;
mod when;

// Commands.
pub use backup::{
    backup, backup_all, backup_targets, dry_run_source, BackupOptions, BackupStats, DryRun,
};
pub use bench::{bench, BenchInput, BenchReport};
pub use format::refs::RunStats;
pub use restore::{
    cat, diff, dump, ls, restore, CatStats, Change, Compared, DumpStats, Listed, LsOptions,
    MetafileSource, RecoveredPack, RestoreOptions, RestoreStats,
};
pub use text::escape as escape_name;
pub use when::parse_when;

// Configuration.
pub use config::{
    config_path, default_state_dir, parse_duration, parse_size, valid_stream_name, Chunking,
    Config, Input, InvalidValue, ObjectLock, SourceConfig, StorageClass, TargetConfig,
};
pub use retention::Retention;

// Keys: the public half encrypts, the secret half decrypts.
pub use crypto::{
    generate_key, generate_key_with, generate_signing_key, load_recipients, load_secret_keys,
    Decryptor, Encryptor, Expiry, GeneratedKey, KeyAlgorithm, Signers, SigningKey, Verdict,
    DEFAULT_KEY_LIFETIME,
};

// Targets, and what each kind of handle may do there.
pub use store::{Admin, Creator, ObjectList, Reader, Requests, RunInfo, Store};

// What is stored (docs/FORMAT.md), and the names in it.
pub use format::{metafile, refs};
pub use ids::{ChunkHash, ObjectKey, RunId};

// Running a command.
pub use cancel::Cancel;
pub use error::{Error, Result};
pub use progress::{NoProgress, Problem, Progress};

/// Not a stable API: what the benches (`benches/`) and the test suite measure and build
/// inputs with.
#[doc(hidden)]
pub mod internals {
    pub use crate::crypto::PackSession;
    pub use crate::index::{CachedFile, FileStamp, Index};
    pub use crate::prng::{noise, Prng};
    pub use crate::state::StateLock;
}
