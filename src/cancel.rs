//! Cancellation: one flag every stage of a command observes. The command line sets it on
//! SIGINT and SIGTERM; a stage that fails may set it so the others stop too. Work that
//! sees it stops at the next safe point and removes what it had half written (temporary
//! files), so an interrupted command leaves nothing behind but complete results.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared cancellation flag. Cheap to clone; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Sets the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag itself, for a signal handler to set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    /// `Err(Error::Interrupted)` once the flag is set.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.is_cancelled() {
            Err(crate::error::Error::Interrupted)
        } else {
            Ok(())
        }
    }
}
