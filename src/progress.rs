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
    /// What was done to one item, for whoever asked for detail (`--verbose`): built
    /// only when [`Progress::wants_detail`] says so.
    fn detail(&self, _line: &str) {}
    /// Whether [`Progress::detail`] is shown (so its text need not be made otherwise).
    fn wants_detail(&self) -> bool {
        false
    }
    /// The phase is over.
    fn done(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Something that went wrong with one entry (or a note about one); the work went on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// The entry's path, when the problem is about one: its bytes percent-encoded as in
    /// the metafile (docs/FORMAT.md section 4.5), so any name survives exactly.
    pub path: Option<String>,
    /// What happened, for people; names in it are escaped (control characters and invalid UTF-8 shown as escapes).
    pub message: String,
}

impl Problem {
    /// A problem about the entry at `path` (bytes).
    pub fn at(path: &[u8], message: String) -> Self {
        Problem {
            path: Some(crate::format::encode_field(path)),
            message,
        }
    }

    /// A problem about no entry in particular.
    pub fn general(message: String) -> Self {
        Problem {
            path: None,
            message,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
