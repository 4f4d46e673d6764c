//! Progress reporting, injected by the caller. The library never prints.

/// Receives progress and warnings. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A phase begins (`total` bytes or items, when known).
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    /// `n` more bytes processed.
    fn bytes(&self, _n: u64) {}
    /// One more item processed; `name` is for display.
    fn item(&self, _name: &str) {}
    /// Something went wrong with one item; the work goes on.
    fn warn(&self, _message: &str) {}
    /// The phase is over.
    fn done(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
