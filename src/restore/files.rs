//! Writing regular files: decrypting and checking chunks, writing them to a temporary
//! file, moving it into place and applying metadata. Runs on worker threads for small
//! files and on the restoring thread, in parallel batches, for large ones.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;

use crate::crypto::Decryptor;
use crate::format::metafile::{ChunkRef, Encoding, Meta};
use crate::ids::ChunkHash;
use crate::progress::Progress;

/// No chunk is larger (the chunker's ceiling).
const MAX_CHUNK: u64 = 1 << 30;

/// How many chunks are decrypted at once on the restoring thread.
pub(super) const BATCH: usize = 8;

/// Gives a chunk's stored message; its arguments are the chunk and the rest of the file.
pub(super) type Fetch<'f> = dyn FnMut(&ChunkRef, &[ChunkRef]) -> Result<Bytes, String> + 'f;

/// What a file must turn out to be.
pub(super) struct Expected {
    pub size: u64,
    pub hash: ChunkHash,
    pub meta: Meta,
}

/// Settings shared by every file of a restore.
#[derive(Clone, Copy)]
pub(super) struct Settings<'a> {
    pub decryptor: &'a Decryptor,
    pub progress: &'a dyn Progress,
    pub overwrite: bool,
    pub is_root: bool,
}

/// A small file whose chunks were already fetched, for a worker.
pub(super) struct FileJob {
    pub path: Vec<u8>,
    pub dest: PathBuf,
    pub chunks: Vec<ChunkRef>,
    pub messages: Vec<Bytes>,
    pub expected: Expected,
}

/// A worker's answer.
pub(super) struct Done {
    pub path: Vec<u8>,
    pub dest: PathBuf,
    pub bytes: u64,
    pub held: u64,
    pub result: Result<(), String>,
}

/// Runs jobs until the sender hangs up.
pub(super) fn worker(jobs: Arc<Mutex<Receiver<FileJob>>>, done: Sender<Done>, s: Settings<'_>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let held = job.messages.iter().map(|m| m.len() as u64).sum();
        let mut messages = job.messages.into_iter();
        let result = write_file(&s, &job.dest, &job.chunks, &job.expected, &mut |_, _| {
            messages
                .next()
                .ok_or_else(|| "internal error: message missing".to_string())
        });
        let _ = done.send(Done {
            path: job.path,
            dest: job.dest,
            bytes: job.expected.size,
            held,
            result,
        });
    }
}

/// Decrypts, decompresses and checks one chunk's message.
pub(super) fn open_chunk(d: &Decryptor, c: &ChunkRef, message: &[u8]) -> Result<Vec<u8>, String> {
    let what = format!("chunk at {}+{} of object {}", c.offset, c.length, c.object);
    let plain = d.decrypt(&what, message).map_err(|e| e.to_string())?;
    let data = match c.encoding {
        // Never more than the recorded size: a forged chunk cannot inflate without bound.
        Encoding::Zstd if c.size <= MAX_CHUNK => zstd::bulk::decompress(&plain, c.size as usize)
            .map_err(|e| format!("{what}: cannot decompress: {e}"))?,
        Encoding::Zstd => return Err(format!("{what}: recorded size {} is too large", c.size)),
        _ => plain,
    };
    if data.len() as u64 != c.size || ChunkHash::of(&data) != c.hash {
        return Err(format!(
            "{what}: content does not match its recorded BLAKE3"
        ));
    }
    Ok(data)
}

/// Writes a file from its chunks: `fetch(chunk, rest of the file)` gives each chunk's
/// stored message, in order; batches of messages are decrypted in parallel. The file is
/// written under a temporary name and moved into place only once every check passed.
pub(super) fn write_file(
    s: &Settings<'_>,
    dest: &Path,
    chunks: &[ChunkRef],
    expected: &Expected,
    fetch: &mut Fetch<'_>,
) -> Result<(), String> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".coffer-restore-")
        .tempfile_in(parent)
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let mut whole = blake3::Hasher::new();
    let mut written = 0u64;
    for (b, batch) in chunks.chunks(BATCH).enumerate() {
        let mut messages = Vec::with_capacity(batch.len());
        for (i, c) in batch.iter().enumerate() {
            messages.push(fetch(c, &chunks[b * BATCH + i..])?);
        }
        let plain: Vec<Vec<u8>> = batch
            .par_iter()
            .zip(messages.par_iter())
            .map(|(c, m)| open_chunk(s.decryptor, c, m))
            .collect::<Result<_, String>>()?;
        for data in plain {
            whole.update(&data);
            tmp.write_all(&data)
                .map_err(|e| format!("write failed: {e}"))?;
            written += data.len() as u64;
            s.progress.bytes(data.len() as u64);
        }
    }
    if written != expected.size || ChunkHash::from(whole.finalize()) != expected.hash {
        return Err("restored content does not match the file's recorded BLAKE3".into());
    }
    let persisted = if s.overwrite {
        tmp.persist(dest).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(dest).map_err(|e| e.error)
    };
    persisted.map_err(|e| format!("cannot move into place: {e}"))?;
    apply_meta(dest, &expected.meta, false, s.is_root)
}

/// Owner (when root), mode (not for symlinks) and mtime.
pub(super) fn apply_meta(
    dest: &Path,
    m: &Meta,
    symlink: bool,
    is_root: bool,
) -> Result<(), String> {
    if is_root {
        let uid = m.user.as_deref().and_then(lookup_user).unwrap_or(m.uid);
        let gid = m.group.as_deref().and_then(lookup_group).unwrap_or(m.gid);
        std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
            .map_err(|e| format!("cannot set owner: {e}"))?;
    }
    if !symlink {
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(m.mode))
            .map_err(|e| format!("cannot set mode: {e}"))?;
    }
    let t = filetime::FileTime::from_unix_time(m.mtime, m.mtime_nsec);
    filetime::set_symlink_file_times(dest, t, t).map_err(|e| format!("cannot set mtime: {e}"))
}

fn lookup_user(name: &[u8]) -> Option<u32> {
    let name = std::str::from_utf8(name).ok()?;
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn lookup_group(name: &[u8]) -> Option<u32> {
    let name = std::str::from_utf8(name).ok()?;
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
