//! The uploader: sealed packs to the target with create-only puts, at most
//! `upload_concurrency` packs in flight (so at most that many packs' bytes in memory); the
//! rate limit and the request limit are the store's (`store::limit`). Each acknowledged
//! pack's chunks go back to the packer, which records them in the local index.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};

use super::pack::SealedPack;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::format::metafile::ChunkRef;
use crate::store::{self, Creator, PutOutcome};

/// An acknowledged pack: its chunks, and when it was sealed.
pub(super) type Ack = (Vec<ChunkRef>, i64);

/// What the uploader stored.
#[derive(Debug, Default)]
pub(super) struct Uploaded {
    pub bytes: u64,
    pub created: u64,
}

type Task = tokio::task::JoinHandle<Result<(u64, PutOutcome)>>;

/// Uploads the packs `packs` yields until it ends, or the run is cancelled, or a put
/// fails (then the error).
pub(super) fn upload(
    creator: &Creator,
    concurrency: usize,
    packs: Receiver<SealedPack>,
    acks: Sender<Ack>,
    cancel: &Cancel,
) -> Result<Uploaded> {
    let mut done = Uploaded::default();
    let mut tasks: VecDeque<Task> = VecDeque::new();
    let mut failed = None;
    for pack in packs.iter() {
        if cancel.is_cancelled() {
            break;
        }
        while tasks.len() >= concurrency.max(1) {
            if let Err(e) = finish(tasks.pop_front(), &mut done) {
                failed = Some(e);
                break;
            }
        }
        if failed.is_some() {
            break;
        }
        let creator = creator.clone();
        let acks = acks.clone();
        tasks.push_back(store::runtime().spawn(async move {
            let len = pack.len();
            let outcome = creator.put_pack(&pack.key, pack.parts).await?;
            let _ = acks.send((pack.chunks, pack.sealed_at));
            Ok((len, outcome))
        }));
    }
    // Whatever else happened, every upload started ends before this returns.
    while !tasks.is_empty() {
        if let Err(e) = finish(tasks.pop_front(), &mut done) {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Waits for one upload and counts it.
fn finish(task: Option<Task>, done: &mut Uploaded) -> Result<()> {
    let Some(task) = task else { return Ok(()) };
    let (bytes, outcome) = store::runtime()
        .block_on(task)
        .map_err(|e| Error::Internal(format!("an upload task failed: {e}")))??;
    if outcome == PutOutcome::Created {
        done.bytes += bytes;
        done.created += 1;
    }
    Ok(())
}
