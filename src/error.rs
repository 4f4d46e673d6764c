//! The library's error type.
//!
//! The rules, in the manner of rustic_core's:
//!
//! 1. Every variant says what it is about (a path, an object, a target), and its message
//!    says what to do next where there is something to do.
//! 2. A lower-level cause is kept as the variant's `#[source]`, so a program can look at
//!    it; the message shows the cause's text too, on one line (the command line prints an
//!    error and its causes without repeating a text already shown).
//! 3. No variant ever holds a passphrase, a credential or file contents (invariant 7 of
//!    ../shared/DESIGN.md): object store errors name the request, never its signature.
//! 4. [`Error::is_retryable`] says whether trying the same thing again may help (a busy
//!    index, a dropped connection); callers that retry ask it, and nothing else.
//! 5. Bugs are [`Error::Internal`], never blamed on the user or the input.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cause kept with an error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    #[error("crypto: {context}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Crypto {
        /// What was being done.
        context: String,
        /// The cryptographic library's error.
        #[source]
        source: Option<Cause>,
    },

    /// The target could not be reached or refused an operation.
    #[error("target {target}: {message}")]
    Store {
        /// The target's name or URL (never credentials).
        target: String,
        /// What failed, with the object store's answer.
        message: String,
        /// The object store's error.
        #[source]
        source: Option<Box<object_store::Error>>,
    },

    /// An object or run does not exist on the target.
    #[error("{0}")]
    NotFound(String),
    /// An object in a cold storage class (S3 GLACIER, DEEP_ARCHIVE) that must be thawed
    /// (`aws s3api restore-object`) before it can be read.
    #[error(
        "target {target}: {key} is in a cold storage class (GLACIER or DEEP_ARCHIVE) and \
         must be thawed before it can be read"
    )]
    Frozen {
        /// The target's name.
        target: String,
        /// The object's key under the target.
        key: String,
    },

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
        /// SQLite's error.
        #[source]
        source: Option<Box<rusqlite::Error>>,
    },

    /// The data of a stream source did not arrive whole: its command failed (exited
    /// with a status other than 0, or was killed), or standard input broke. No run was
    /// committed.
    #[error("{0}")]
    Input(String),

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
    /// The same error again, for another target of a run that one failure stopped (the
    /// source's root unreadable, say, when it goes to two targets): the same variant and
    /// message; a cause is kept as its text.
    pub(crate) fn duplicate(&self) -> Error {
        let text = |c: &Cause| -> Cause { c.to_string().into() };
        match self {
            Error::Config(m) => Error::Config(m.clone()),
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Key { path, reason } => Error::Key {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::WrongKey { what, reason } => Error::WrongKey {
                what: what.clone(),
                reason: reason.clone(),
            },
            Error::Crypto { context, source } => Error::Crypto {
                context: context.clone(),
                source: source.as_ref().map(text),
            },
            Error::Store {
                target, message, ..
            } => Error::Store {
                target: target.clone(),
                message: message.clone(),
                source: None,
            },
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::Frozen { target, key } => Error::Frozen {
                target: target.clone(),
                key: key.clone(),
            },
            Error::Corrupt { what, reason } => Error::Corrupt {
                what: what.clone(),
                reason: reason.clone(),
            },
            Error::Index { path, message, .. } => Error::Index {
                path: path.clone(),
                message: message.clone(),
                source: None,
            },
            Error::Input(m) => Error::Input(m.clone()),
            Error::Interrupted => Error::Interrupted,
            Error::Internal(m) => Error::Internal(m.clone()),
            Error::Usage(m) => Error::Usage(m.clone()),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A cryptographic failure while doing `context`.
    pub(crate) fn crypto(context: &str, source: impl Into<Cause>) -> Self {
        Error::Crypto {
            context: context.to_string(),
            source: Some(source.into()),
        }
    }

    /// A one-word name of the kind of error, for machine output (`--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Key { .. } => "key",
            Error::WrongKey { .. } => "wrong_key",
            Error::Crypto { .. } => "crypto",
            Error::Store { .. } => "target",
            Error::NotFound(_) => "not_found",
            Error::Frozen { .. } => "frozen",
            Error::Corrupt { .. } => "corrupt",
            Error::Index { .. } => "index",
            Error::Input(_) => "input",
            Error::Interrupted => "interrupted",
            Error::Internal(_) => "internal",
            Error::Usage(_) => "usage",
        }
    }

    /// Whether the same operation may succeed if tried again: a connection that dropped
    /// or timed out (once object_store's own retries are spent), a busy local index, an
    /// interrupted system call. A missing or damaged object, a wrong key, a refusal, a bad
    /// config are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            Error::Store { source, .. } => match source.as_deref() {
                Some(
                    object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. },
                ) => false,
                Some(e) => !crate::store::is_refusal(e),
                None => false,
            },
            Error::Index { source, .. } => source.as_deref().is_some_and(sqlite_busy),
            _ => false,
        }
    }
}

/// SQLite answered busy or locked: another process holds the database for a moment.
pub(crate) fn sqlite_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_is_only_what_may_work_the_second_time() {
        let io = |k| Error::io("/x", std::io::Error::from(k));
        assert!(io(std::io::ErrorKind::TimedOut).is_retryable());
        assert!(!io(std::io::ErrorKind::NotFound).is_retryable());
        let store = |e: object_store::Error| Error::Store {
            target: "t".into(),
            message: "m".into(),
            source: Some(Box::new(e)),
        };
        let generic = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        assert!(store(generic).is_retryable());
        let missing = object_store::Error::NotFound {
            path: "p".into(),
            source: "no".into(),
        };
        assert!(!store(missing).is_retryable());
        let refused = object_store::Error::Generic {
            store: "S3",
            source: "403 Forbidden: AccessDenied".into(),
        };
        assert!(!store(refused).is_retryable());
        assert!(!Error::NotFound("x".into()).is_retryable());
        assert!(!Error::Corrupt {
            what: "x".into(),
            reason: "y".into()
        }
        .is_retryable());
    }

    #[test]
    fn a_duplicate_says_the_same() {
        let errors = [
            Error::io("/x", std::io::Error::from(std::io::ErrorKind::NotFound)),
            Error::crypto("session key", std::io::Error::other("bad")),
            Error::Config("c".into()),
            Error::Input("i".into()),
            Error::Interrupted,
        ];
        for e in errors {
            let d = e.duplicate();
            assert_eq!(d.to_string(), e.to_string());
            assert_eq!(d.kind(), e.kind());
        }
    }

    #[test]
    fn causes_are_kept() {
        use std::error::Error as _;
        let e = Error::io("/x", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(e.source().is_some());
        let e = Error::crypto("session key", std::io::Error::other("bad"));
        assert!(e.source().is_some());
        assert_eq!(e.to_string(), "crypto: session key: bad");
    }
}
