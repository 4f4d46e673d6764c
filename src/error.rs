//! The library's error type.
//!
//! Every variant carries what it is about (a path, an object key, a target) and the
//! message says what to do next where there is something to do. No variant ever holds a
//! passphrase, a credential or file contents (invariant 7 of DESIGN.md).

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file is invalid; the message names file, line and the fix.
    #[error("{0}")]
    Config(String),

    /// A local file or directory could not be read or written.
    #[error("{}: {source}", crate::text::path(path))]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A key file could not be used.
    #[error("key {}: {reason}", crate::text::path(path))]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// None of the available secret keys can decrypt the data.
    #[error("{what}: {reason}")]
    WrongKey {
        /// The object or metafile concerned.
        what: String,
        /// Details, e.g. which keys the data is encrypted to.
        reason: String,
    },

    /// Encryption or decryption failed for another reason.
    #[error("crypto: {0}")]
    Crypto(String),

    /// The target could not be reached or refused an operation.
    #[error("target {target}: {message}")]
    Store {
        /// The target's name or URL (never credentials).
        target: String,
        /// What failed.
        message: String,
    },

    /// An object or run does not exist on the target.
    #[error("{0}")]
    NotFound(String),

    /// Stored data failed a check (hash mismatch, bad format).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// The object, metafile or record concerned.
        what: String,
        /// What did not match.
        reason: String,
    },

    /// The local index (SQLite) failed.
    #[error("local index {}: {message}", crate::text::path(path))]
    Index {
        /// The index file.
        path: PathBuf,
        /// What failed, with advice where there is any.
        message: String,
    },

    /// The command was interrupted (SIGINT, SIGTERM) and stopped cleanly.
    #[error("interrupted; everything half written was removed")]
    Interrupted,

    /// A bug in coffer, not a problem with the input: report it.
    #[error("internal error: {0} (this is a bug in coffer; please report it)")]
    Internal(String),

    /// Anything else that is the caller's mistake.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// A one-word name of the kind of error, for machine output (`--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Key { .. } => "key",
            Error::WrongKey { .. } => "wrong_key",
            Error::Crypto(_) => "crypto",
            Error::Store { .. } => "target",
            Error::NotFound(_) => "not_found",
            Error::Corrupt { .. } => "corrupt",
            Error::Index { .. } => "index",
            Error::Interrupted => "interrupted",
            Error::Internal(_) => "internal",
            Error::Usage(_) => "usage",
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
