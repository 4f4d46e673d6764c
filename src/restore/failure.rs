//! Why one entry of a restore failed. Such an entry is named with its reason and left
//! out, and the restore goes on (src/restore/mod.rs); what stops the whole restore is an
//! [`Error`] instead.

use std::sync::Arc;

use nix::errno::Errno;

use crate::error::Error;

/// Why an entry was not restored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// A call on the destination failed: what was being done, and the system's answer.
    #[error("{doing}: {source}")]
    Os {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// Something is already where the entry goes: a directory (never replaced by
    /// anything else), or anything at all without `--overwrite`.
    #[error("{}", if *directory { "exists as a directory" } else { "exists; pass --overwrite to replace it" })]
    Exists { directory: bool },
    /// What is in the destination, or in the run, does not allow it; the message says
    /// how to go on where there is a way.
    #[error("{0}")]
    Refused(String),
    /// The stored data could not be fetched, decrypted or checked. Shared: every later
    /// entry that needs the same object fails for the same reason without asking again.
    #[error("{0}")]
    Stored(#[source] Arc<Error>),
    /// The restore was interrupted before the entry was complete (it was removed).
    #[error("interrupted")]
    Interrupted,
}

impl Failure {
    /// A failed system call while `doing`.
    pub(crate) fn os(doing: impl Into<String>, e: Errno) -> Failure {
        Failure::io(doing, std::io::Error::from(e))
    }

    /// A failed I/O operation while `doing`.
    pub(crate) fn io(doing: impl Into<String>, source: std::io::Error) -> Failure {
        Failure::Os {
            doing: doing.into(),
            source,
        }
    }

    /// `Err(Failure::os(doing, e))`, for `map_err`.
    pub(crate) fn when(doing: &'static str) -> impl Fn(Errno) -> Failure {
        move |e| Failure::os(doing, e)
    }

    /// A refusal.
    pub(crate) fn refused(why: impl Into<String>) -> Failure {
        Failure::Refused(why.into())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Stored(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_was_done_and_keep_the_cause() {
        let f = Failure::os("cannot set owner", Errno::EPERM);
        assert_eq!(
            f.to_string(),
            "cannot set owner: Operation not permitted (os error 1)"
        );
        let source = std::error::Error::source(&f).expect("the system's error is kept");
        assert_eq!(
            source
                .downcast_ref::<std::io::Error>()
                .unwrap()
                .raw_os_error(),
            Some(1)
        );
        let stored = Failure::from(Error::NotFound("object x is missing".into()));
        assert_eq!(stored.to_string(), "object x is missing");
        assert!(std::error::Error::source(&stored).is_some());
    }
}
