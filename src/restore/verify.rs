//! `verify --data`: a run's every chunk fetched, decrypted and checked as restore checks
//! it (its message's structure and MDC, its plaintext's size and BLAKE3, each file's
//! whole BLAKE3), with nothing written anywhere. Packs come through restore's pack cache,
//! so each is read once however many chunks of it the run uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::files::open_chunk;
use super::packs::PackCache;
use super::{fetch_and_check, MetafileSource, RestoreOptions};
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::Kind;
use crate::ids::{ChunkHash, ObjectKey};
use crate::progress::{Problem, Progress};
use crate::store::Reader;

/// At most this many damaged files are named (the count is complete).
const MAX_NAMED: usize = 1000;

/// What `verify --data` found in one run.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct DataReport {
    /// The run checked.
    pub run: String,
    /// Files whose every byte checked out.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks decrypted and checked.
    pub chunks: u64,
    /// Files that would not restore whole.
    pub failed: u64,
    /// Each such file, with the reason (the first 1000).
    pub problems: Vec<Problem>,
    /// Seconds.
    pub elapsed_secs: f64,
}

impl DataReport {
    /// Whether every file checked out.
    pub fn clean(&self) -> bool {
        self.failed == 0
    }
}

/// Checks every file of the run `source` names, as restore would read it, writing
/// nothing.
///
/// # Errors
///
/// What stops a restore before it writes: no such run, a metafile that cannot be read or
/// fails its check, a wrong key. A file whose data is missing or damaged is not an error:
/// it is counted and named in the report.
pub fn verify_data(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    progress: &dyn Progress,
) -> Result<DataReport> {
    let started = Instant::now();
    let opts = RestoreOptions::new(".");
    let (metafile, checked) = fetch_and_check(store, source, decryptor, &opts, progress)?;
    let mut report = DataReport {
        run: checked.run.clone(),
        ..Default::default()
    };
    progress.phase(&format!("verify {}", checked.run), None);
    let mut listing = metafile.open(decryptor)?;
    let mut packs = PackCache::new(false);
    // An object that failed for good fails every file that needs it, without asking again.
    let mut bad: HashMap<ObjectKey, Arc<Error>> = HashMap::new();
    while let Some(entry) = listing.next_entry()? {
        let Kind::File { size, hash, chunks } = &entry.kind else {
            continue;
        };
        let mut whole = blake3::Hasher::new();
        let mut got = 0u64;
        let mut failure: Option<String> = None;
        for (i, c) in chunks.iter().enumerate() {
            if let Some(e) = bad.get(&c.object) {
                failure = Some(e.to_string());
                break;
            }
            let checked = packs
                .message(store, c, &chunks[i..])
                .and_then(|message| open_chunk(decryptor, c, &message));
            match checked {
                Ok(data) => {
                    whole.update(&data);
                    got += data.len() as u64;
                    report.chunks += 1;
                    progress.bytes(data.len() as u64);
                }
                Err(e) => {
                    let e = Arc::new(match e {
                        Error::NotFound(_) => Error::NotFound(format!(
                            "object {} is missing from the target",
                            c.object
                        )),
                        e => e,
                    });
                    if !e.is_retryable() {
                        bad.insert(c.object, e.clone());
                    }
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if failure.is_none() && (got != *size || ChunkHash(*whole.finalize().as_bytes()) != *hash) {
            failure = Some("its content does not match its recorded BLAKE3".into());
        }
        match failure {
            None => {
                report.files += 1;
                report.bytes += size;
            }
            Some(reason) => {
                report.failed += 1;
                if report.problems.len() < MAX_NAMED {
                    report.problems.push(Problem::at(&entry.path, reason));
                }
            }
        }
    }
    progress.done();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}
