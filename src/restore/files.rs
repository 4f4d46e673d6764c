//! Writing regular files: decrypting and checking chunks, writing them to a temporary
//! file in the file's directory (through its handle), applying metadata on the open
//! descriptor and moving the file into place. Runs on worker threads for small files and
//! on the restoring thread, in parallel batches, for large ones.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use rayon::prelude::*;

use super::dest::{apply_meta_fd, DirFd, MetaPolicy};
use super::failure::Failure;
use crate::crypto::Decryptor;
use crate::error::Error;
use crate::format::metafile::{ChunkRef, Encoding, Meta};
use crate::ids::ChunkHash;
use crate::progress::Progress;

/// How many chunks are decrypted at once on the restoring thread, at most, and how
/// many bytes of plaintext such a batch may make (at least one chunk).
pub(super) const BATCH: usize = 8;
const BATCH_BYTES: u64 = 8 << 20;

/// The next batch of `chunks` from `start`: up to [`BATCH`] chunks, and no more than
/// [`BATCH_BYTES`] of plaintext unless one chunk alone is larger.
fn batch_end(chunks: &[ChunkRef], start: usize) -> usize {
    let mut end = start;
    let mut bytes = 0u64;
    while end < chunks.len() && end - start < BATCH {
        bytes = bytes.saturating_add(chunks[end].size);
        if end > start && bytes > BATCH_BYTES {
            break;
        }
        end += 1;
    }
    end
}

/// The prefix of temporary files.
pub(super) const TEMP_PREFIX: &str = ".coffer-restore-";

/// Gives a chunk's stored message; its arguments are the chunk and the rest of the file.
pub(super) type Fetch<'f> = dyn FnMut(&ChunkRef, &[ChunkRef]) -> Result<Bytes, Failure> + 'f;

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
    pub cancel: &'a crate::cancel::Cancel,
    pub overwrite: bool,
    pub policy: MetaPolicy<'a>,
    pub temp_names: &'a TempNames,
}

/// Where a file goes: its directory's handle and its name there.
pub(super) struct Place {
    pub parent: DirFd,
    pub name: Vec<u8>,
    /// The whole destination path, for messages.
    pub shown: PathBuf,
}

/// A small file whose chunks were already fetched, for a worker.
pub(super) struct FileJob {
    pub path: Vec<u8>,
    pub place: Place,
    pub chunks: Vec<ChunkRef>,
    pub messages: Vec<Bytes>,
    pub expected: Expected,
}

/// A worker's answer. `fatal` means the worker failed in a way that must stop the
/// restore (a bug, never the input: see [`worker`]).
pub(super) struct Done {
    pub path: Vec<u8>,
    pub shown: PathBuf,
    pub bytes: u64,
    pub held: u64,
    pub result: Result<(), Failure>,
    pub fatal: bool,
}

/// Runs batches of jobs until the sender hangs up, answering each batch at once. A job
/// that panics is answered as fatal, so the restoring thread stops instead of waiting
/// for an answer that never comes.
pub(super) fn worker(
    jobs: Arc<Mutex<Receiver<Vec<FileJob>>>>,
    done: Sender<Vec<Done>>,
    s: Settings<'_>,
) {
    loop {
        let batch = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let answers: Vec<Done> = batch.into_iter().map(|job| run_job(&s, job)).collect();
        if done.send(answers).is_err() {
            return;
        }
    }
}

/// Writes one small file whose messages were fetched.
fn run_job(s: &Settings<'_>, job: FileJob) -> Done {
    let held = job.messages.iter().map(|m| m.len() as u64).sum();
    let (path, shown, size) = (job.path.clone(), job.place.shown.clone(), job.expected.size);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if s.cancel.is_cancelled() {
            return Err(Failure::Interrupted);
        }
        let mut messages = job.messages.into_iter();
        write_file(s, &job.place, &job.chunks, &job.expected, &mut |_, _| {
            messages.next().ok_or_else(|| {
                Failure::from(Error::Internal(
                    "a restore worker lacks a chunk's message".into(),
                ))
            })
        })
    }));
    let (result, fatal) = match outcome {
        Ok(r) => (r, false),
        Err(_) => (Err(Failure::Interrupted), true),
    };
    Done {
        path,
        shown,
        bytes: size,
        held,
        result,
        fatal,
    }
}

/// Decrypts, decompresses and checks one chunk's message.
pub(super) fn open_chunk(d: &Decryptor, c: &ChunkRef, message: &[u8]) -> Result<Vec<u8>, Error> {
    let what = format!("chunk at {}+{} of object {}", c.offset, c.length, c.object);
    let plain = d.open_chunk(&what, message)?;
    let data = match c.encoding {
        // Never more than the recorded size (itself bounded by the metafile reader): a
        // forged chunk cannot inflate without bound.
        Encoding::Zstd => decompress(&plain, c.size as usize).map_err(|e| Error::Corrupt {
            what: what.clone(),
            reason: format!("cannot decompress: {e}"),
        })?,
        _ => plain,
    };
    if data.len() as u64 != c.size || ChunkHash::of(&data) != c.hash {
        return Err(Error::Corrupt {
            what,
            reason: "content does not match its recorded BLAKE3".into(),
        });
    }
    Ok(data)
}

thread_local! {
    /// A decompression context per thread: making one for every chunk cost a seventh of
    /// a restore's CPU time.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a zstd chunk of at most `capacity` bytes with this thread's context.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(data, capacity)
    })
}

/// Names for temporary files: one random part per restore and a counter, so a file
/// costs no call for randomness; `O_EXCL` makes a name taken by anything else (a file
/// an attacker planted, a concurrent restore) move on to the next.
#[derive(Debug)]
pub(super) struct TempNames {
    random: String,
    next: std::sync::atomic::AtomicU64,
}

impl TempNames {
    pub(super) fn new() -> Result<TempNames, Failure> {
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).map_err(|e| {
            Failure::io(
                "cannot name a temporary file",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(TempNames {
            random: hex::encode(r),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn next(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{TEMP_PREFIX}{}-{n}", self.random).into_bytes()
    }
}

/// A temporary file in `parent`, created with `O_EXCL | O_NOFOLLOW`, mode 0600.
fn temporary(parent: &DirFd, names: &TempNames) -> Result<(File, Vec<u8>), Failure> {
    for _ in 0..100 {
        let name = names.next();
        match nix::fcntl::openat(
            &**parent,
            OsStr::from_bytes(&name),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((File::from(fd), name)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(Failure::os("cannot create a temporary file", e)),
        }
    }
    Err(Failure::refused(
        "cannot create a temporary file: every name tried exists",
    ))
}

/// Removes a temporary file (best effort: it is already a failure being reported).
pub(super) fn remove_temporary(parent: &DirFd, name: &[u8]) {
    let _ = nix::unistd::unlinkat(
        &**parent,
        OsStr::from_bytes(name),
        UnlinkatFlags::NoRemoveDir,
    );
}

/// Moves `tmp` to `name` in `parent`: without `overwrite` only if nothing is there
/// (`RENAME_NOREPLACE`, or a hard link where the file system lacks it); with it,
/// replacing anything but a directory.
fn persist(parent: &DirFd, tmp: &[u8], name: &[u8], overwrite: bool) -> Result<(), Failure> {
    let (tmp, name) = (OsStr::from_bytes(tmp), OsStr::from_bytes(name));
    let fail = |e: Errno| match e {
        Errno::EEXIST | Errno::ENOTEMPTY => Failure::Exists { directory: false },
        Errno::EISDIR => Failure::Exists { directory: true },
        e => Failure::os("cannot move into place", e),
    };
    if overwrite {
        return nix::fcntl::renameat(&**parent, tmp, &**parent, name).map_err(fail);
    }
    match nix::fcntl::renameat2(
        &**parent,
        tmp,
        &**parent,
        name,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            nix::unistd::linkat(
                &**parent,
                tmp,
                &**parent,
                name,
                nix::fcntl::AtFlags::empty(),
            )
            .map_err(fail)?;
            nix::unistd::unlinkat(&**parent, tmp, UnlinkatFlags::NoRemoveDir)
                .map_err(Failure::when("cannot remove the temporary file"))
        }
        Err(e) => Err(fail(e)),
    }
}

/// Writes a file from its chunks: `fetch(chunk, rest of the file)` gives each chunk's
/// stored message, in order; batches of messages are decrypted in parallel. The file is
/// written under a temporary name and moved into place only once every check passed and
/// its metadata is set; on failure the temporary file is removed.
pub(super) fn write_file(
    s: &Settings<'_>,
    place: &Place,
    chunks: &[ChunkRef],
    expected: &Expected,
    fetch: &mut Fetch<'_>,
) -> Result<(), Failure> {
    let (mut tmp, tmp_name) = temporary(&place.parent, s.temp_names)?;
    let result = fill(s, &mut tmp, chunks, expected, fetch)
        .and_then(|()| apply_meta_fd(&tmp, &expected.meta, false, &s.policy))
        .and_then(|()| {
            drop(tmp);
            persist(&place.parent, &tmp_name, &place.name, s.overwrite)
        });
    if result.is_err() {
        remove_temporary(&place.parent, &tmp_name);
    }
    result
}

fn fill(
    s: &Settings<'_>,
    tmp: &mut File,
    chunks: &[ChunkRef],
    expected: &Expected,
    fetch: &mut Fetch<'_>,
) -> Result<(), Failure> {
    // A file of one chunk whose recorded BLAKE3 is the chunk's: the chunk's own check
    // is the file's (the same function of the same bytes), so it is hashed once.
    let whole_is_chunk =
        matches!(chunks, [c] if c.hash == expected.hash && c.size == expected.size);
    let mut whole = blake3::Hasher::new();
    let mut written = 0u64;
    let mut data_end = 0u64;
    let mut start = 0;
    while start < chunks.len() {
        if s.cancel.is_cancelled() {
            return Err(Failure::Interrupted);
        }
        let end = batch_end(chunks, start);
        let batch = &chunks[start..end];
        let mut messages = Vec::with_capacity(batch.len());
        for (i, c) in batch.iter().enumerate() {
            messages.push(fetch(c, &chunks[start + i..])?);
        }
        start = end;
        let plain: Vec<Vec<u8>> = if let ([c], [m]) = (batch, &messages[..]) {
            vec![open_chunk(s.decryptor, c, m)?]
        } else {
            batch
                .par_iter()
                .zip(messages.par_iter())
                .map(|(c, m)| open_chunk(s.decryptor, c, m))
                .collect::<Result<_, Error>>()?
        };
        for data in plain {
            if !whole_is_chunk {
                whole.update(&data);
            }
            let end =
                write_sparse(tmp, &data, written).map_err(|e| Failure::io("write failed", e))?;
            if let Some(end) = end {
                data_end = written + end as u64;
            }
            written += data.len() as u64;
            s.progress.bytes(data.len() as u64);
        }
    }
    let hash_ok = whole_is_chunk || ChunkHash::from(whole.finalize()) == expected.hash;
    if written != expected.size || !hash_ok {
        return Err(Failure::refused(
            "restored content does not match the file's recorded BLAKE3",
        ));
    }
    // Zero blocks were skipped, not written: the length makes a hole at the end too.
    if data_end < written {
        tmp.set_len(written)
            .map_err(|e| Failure::io("write failed", e))?;
    }
    Ok(())
}

/// File system blocks are at most this large where holes are made.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset`, skipping every whole, aligned block of zeros: what is not
/// written reads back as zeros and takes no space (a hole), so restored VM images and
/// database files stay as sparse as the run's zeros allow. Runs of non-zero blocks are
/// written with one call each. Returns where in `data` the last write ended (`None`:
/// nothing written).
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<Option<usize>> {
    use std::os::unix::fs::FileExt;
    let mut pos = 0usize;
    let mut pending: Option<usize> = None; // start of data not yet written
    let mut end = None;
    while pos < data.len() {
        let at = offset + pos as u64;
        let block = (HOLE_BLOCK - at % HOLE_BLOCK).min((data.len() - pos) as u64) as usize;
        let whole = block as u64 == HOLE_BLOCK;
        let zero = whole && data[pos..pos + block].iter().all(|&b| b == 0);
        match (zero, pending) {
            (true, Some(start)) => {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
                end = Some(pos);
                pending = None;
            }
            (false, None) => pending = Some(pos),
            _ => {}
        }
        pos += block;
    }
    if let Some(start) = pending {
        file.write_all_at(&data[start..], offset + start as u64)?;
        end = Some(data.len());
    }
    Ok(end)
}

/// Whether `name` in `parent` is already a regular file with exactly the expected
/// content (size and BLAKE3): a file an interrupted restore completed.
pub(super) fn identical(parent: &DirFd, name: &[u8], expected: &Expected) -> bool {
    use std::io::Read;
    let Ok(fd) = nix::fcntl::openat(
        &**parent,
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut file = File::from(fd);
    match crate::source::Stat::of(&file) {
        Ok(st) if st.is_file() && st.size == expected.size => {}
        _ => return false,
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(_) => return false,
        }
    }
    ChunkHash::from(hasher.finalize()) == expected.hash
}
