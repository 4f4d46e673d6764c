//! Cancellation: one flag every stage of a command observes. The command line sets it on
//! SIGINT and SIGTERM; a stage that fails sets its run's flag so the other stages stop
//! too. Work that sees it stops at the next safe point and removes what it had half
//! written (temporary files), so an interrupted command leaves nothing behind but
//! complete results.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared cancellation flag. Cheap to clone; clones share the flag. A [`child`](Cancel::child)
/// (`Cancel::child`) also sees its parent's: cancelling one run of a command stops that
/// run, an interrupt stops them all.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    own: Arc<AtomicBool>,
    parents: Vec<Arc<AtomicBool>>,
}

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// A new flag that is also set whenever this one is.
    pub fn child(&self) -> Cancel {
        let mut parents = self.parents.clone();
        parents.push(self.own.clone());
        Cancel {
            own: Arc::new(AtomicBool::new(false)),
            parents,
        }
    }

    /// Sets the flag.
    pub fn cancel(&self) {
        self.own.store(true, Ordering::SeqCst);
    }

    /// Whether the flag (or a parent's) is set.
    pub fn is_cancelled(&self) -> bool {
        self.own.load(Ordering::SeqCst) || self.interrupted()
    }

    /// Whether a parent's flag is set: the command as a whole was interrupted.
    pub fn interrupted(&self) -> bool {
        self.parents.iter().any(|p| p.load(Ordering::SeqCst))
    }

    /// The flag itself, for a signal handler to set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.own.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_its_parent_and_not_the_other_way() {
        let command = Cancel::new();
        let run = command.child();
        run.cancel();
        assert!(run.is_cancelled() && !run.interrupted());
        assert!(
            !command.is_cancelled(),
            "one run failing does not stop the others"
        );
        let next = command.child();
        command.cancel();
        assert!(next.is_cancelled() && next.interrupted());
    }
}
