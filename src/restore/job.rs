//! One restore pass over a checked listing: each entry created beneath the destination
//! handle, small files handed to the workers, links and directory metadata at the end.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};

use nix::sys::stat::{makedev, Mode, SFlag};

use super::dest::{apply_meta_at, apply_meta_fd, Dest, DirFd};
use super::failure::Failure;
use super::files::{self, Place};
use super::packs::PackCache;
use super::{check_path, is_ancestor_of, selected, Checked, RestoreOptions, RestoreStats};
use crate::error::Error;
use crate::format::metafile::{ChunkRef, Entry, Kind, Meta};
use crate::progress::{Problem, Progress};
use crate::source::os;
use crate::store::Reader;

/// Batches of files waiting for a worker, at most.
pub(super) const QUEUED_BATCHES: usize = 4;
/// Small files go to the workers in batches of up to this many files or bytes, so that
/// a tree of small files costs a few thread hand-offs per batch, not per file.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 1 << 20;
/// Files whose stored chunks total at most this go to the workers whole; larger ones
/// are written by the restoring thread, their chunks decrypted in parallel batches.
const WORKER_FILE_BYTES: u64 = 8 << 20;
/// Bytes of fetched chunks handed to workers and not yet written, at most.
const WORKER_BYTES: u64 = 8 << 20;
/// Problems kept for the report.
const MAX_PROBLEMS: usize = 1000;

/// The workers' queue and answers.
pub(super) struct Pool {
    pub jobs: SyncSender<Vec<files::FileJob>>,
    pub done: Receiver<Vec<files::Done>>,
    /// Files handed to the workers and not answered yet, and their fetched bytes.
    pub in_flight: usize,
    pub held: u64,
    /// Files gathered for the next batch, and their bytes.
    pub batch: Vec<files::FileJob>,
    pub batch_held: u64,
}

enum Deferred {
    Hardlink { target: Vec<u8> },
    Symlink { target: Vec<u8>, meta: Meta },
}

pub(super) struct Job<'a> {
    pub store: &'a Reader,
    pub opts: &'a RestoreOptions,
    pub progress: &'a dyn Progress,
    pub stats: RestoreStats,
    pub dest: Dest,
    pub settings: files::Settings<'a>,
    pub pool: Pool,
    /// Unselected hard-link targets whose data goes to a selected link's path.
    pub borrowed: HashMap<Vec<u8>, Vec<u8>>,
    /// Borrowed targets already restored: target path -> the link path holding the data.
    relocated: HashMap<Vec<u8>, Vec<u8>>,
    pub packs: PackCache,
    /// Directories whose recorded metadata is applied at the end.
    dirs: Vec<(Vec<u8>, Meta)>,
    links: Vec<(Vec<u8>, Deferred)>,
    /// A directory that could not be restored: everything below it fails with it.
    failed_dir: Option<(Vec<u8>, u64)>,
    /// A worker failed in a way that must stop the restore.
    fatal: Option<String>,
}

impl<'a> Job<'a> {
    pub(super) fn new(
        store: &'a Reader,
        opts: &'a RestoreOptions,
        progress: &'a dyn Progress,
        dest: Dest,
        settings: files::Settings<'a>,
        pool: Pool,
        checked: Checked,
    ) -> Self {
        Job {
            store,
            opts,
            progress,
            stats: RestoreStats {
                run: checked.run,
                ..Default::default()
            },
            dest,
            settings,
            pool,
            borrowed: checked.borrowed,
            relocated: HashMap::new(),
            packs: PackCache::new(!opts.paths.is_empty()).with_prefetch(if store.is_remote() {
                super::packs::PREFETCH_PACKS
            } else {
                0
            }),
            dirs: Vec::new(),
            links: Vec::new(),
            failed_dir: None,
            fatal: None,
        }
    }

    fn shown(&self, path: &[u8]) -> PathBuf {
        self.opts.to.join(os(path))
    }

    /// Reports a problem about the entry at `path`.
    fn problem(&mut self, path: &[u8], message: String) {
        self.progress.warn(&message);
        if self.stats.problems.len() < MAX_PROBLEMS {
            self.stats.problems.push(Problem::at(path, message));
        }
    }

    /// The destination path of `path`, for a message.
    fn show(&self, path: &[u8]) -> String {
        crate::text::path(&self.shown(path))
    }

    fn fail(&mut self, path: &[u8], reason: impl std::fmt::Display) {
        self.stats.failed += 1;
        let msg = format!("{}: {reason}", self.show(path));
        self.problem(path, msg);
    }

    /// An entry below a directory that failed: counted, reported once with the count.
    fn inside_failed_dir(&mut self, path: &[u8]) -> bool {
        let Some((dir, n)) = &mut self.failed_dir else {
            return false;
        };
        if path.starts_with(dir) && path.get(dir.len()) == Some(&b'/') {
            *n += 1;
            self.stats.failed += 1;
            return true;
        }
        self.close_failed_dir();
        false
    }

    fn close_failed_dir(&mut self) {
        if let Some((dir, n)) = self.failed_dir.take() {
            if n > 0 {
                let msg = format!(
                    "{}: {n} entries below it were not restored with it",
                    self.show(&dir)
                );
                self.problem(&dir, msg);
            }
        }
    }

    /// Restores one entry of the listing (or leaves it, if not selected).
    pub(super) fn entry(&mut self, mut entry: Entry) -> crate::error::Result<()> {
        if let Some(reason) = self.fatal.take() {
            return Err(Error::Internal(reason));
        }
        self.opts.cancel.check()?;
        if let Err(reason) = check_path(&entry.path) {
            self.fail(&entry.path.clone(), format!("refused: {reason}"));
            return Ok(());
        }
        if self.inside_failed_dir(&entry.path) {
            return Ok(());
        }
        if !selected(&self.opts.paths, &entry.path) {
            let ancestor = matches!(entry.kind, Kind::Dir)
                && entry.path != b"."
                && is_ancestor_of(&self.opts.paths, &entry.path);
            match self.borrowed.remove(&entry.path) {
                _ if ancestor => {}
                Some(link) if matches!(entry.kind, Kind::File { .. }) => {
                    self.relocated.insert(entry.path.clone(), link.clone());
                    entry.path = link;
                }
                _ => return Ok(()),
            }
        }
        if let Kind::Hardlink { target } = &mut entry.kind {
            if let Some(holder) = self.relocated.get(target.as_slice()) {
                if *holder == entry.path {
                    return Ok(()); // this link's name already holds the data
                }
                *target = holder.clone();
            }
        }
        let result = match &entry.kind {
            Kind::File { .. } => self.file(&entry),
            Kind::Dir => self.dir(&entry),
            Kind::Symlink { target } => {
                let d = Deferred::Symlink {
                    target: target.clone(),
                    meta: entry.meta.clone(),
                };
                self.links.push((entry.path.clone(), d));
                Ok(())
            }
            Kind::Hardlink { target } => match check_path(target) {
                Err(r) => Err(Failure::Refused(format!("refused hard link target: {r}"))),
                Ok(()) => {
                    let d = Deferred::Hardlink {
                        target: target.clone(),
                    };
                    self.links.push((entry.path.clone(), d));
                    Ok(())
                }
            },
            Kind::CharDev { .. } | Kind::BlockDev { .. } if !self.opts.devices => {
                self.stats.skipped += 1;
                let msg = format!(
                    "{}: device node not created (pass --devices to create device nodes)",
                    self.show(&entry.path)
                );
                self.problem(&entry.path, msg);
                Ok(())
            }
            Kind::Fifo | Kind::CharDev { .. } | Kind::BlockDev { .. } => self.special(&entry),
        };
        if let Err(reason) = result {
            self.fail(&entry.path, reason);
        }
        Ok(())
    }

    fn dir(&mut self, entry: &Entry) -> std::result::Result<(), Failure> {
        let apply = if entry.path == b"." {
            self.dest.created_root || self.opts.overwrite
        } else {
            match self.dest.make_dir(&entry.path, self.opts.overwrite) {
                Ok(created) => created || self.opts.overwrite,
                Err(reason) => {
                    self.close_failed_dir();
                    self.fail(&entry.path, reason);
                    self.failed_dir = Some((entry.path.clone(), 0));
                    return Ok(());
                }
            }
        };
        // An existing directory keeps its own metadata unless --overwrite is given, or it
        // already has the run's recorded mode and owner: then an earlier restore of this
        // run made it (and was interrupted), and its mtime is set again once it is full.
        if apply || self.restored_before(&entry.path, &entry.meta) {
            self.dirs.push((entry.path.clone(), entry.meta.clone()));
        }
        self.stats.other_entries += 1;
        Ok(())
    }

    /// Whether the existing directory `rel` has exactly the mode (and, when owners are
    /// restored, the owner) this restore would give it.
    fn restored_before(&mut self, rel: &[u8], meta: &Meta) -> bool {
        let Ok(fd) = self.dest.dir(rel, false) else {
            return false;
        };
        let Ok(st) = crate::source::Stat::of(&*fd) else {
            return false;
        };
        let policy = &self.settings.policy;
        let owner_ok = policy.owners.is_none() || (st.uid, st.gid) == (meta.uid, meta.gid);
        st.mode & 0o7777 == policy.mode(meta.mode, true) && owner_ok
    }

    fn place(&mut self, path: &[u8]) -> std::result::Result<Place, Failure> {
        self.place_fresh(path).map(|(place, _)| place)
    }

    /// [`Job::place`], and whether this restore made the directory it is in.
    fn place_fresh(&mut self, path: &[u8]) -> std::result::Result<(Place, bool), Failure> {
        let (parent, name, fresh) = self.dest.parent_fresh(path, true)?;
        let place = Place {
            parent,
            name: name.to_vec(),
            shown: self.shown(path),
        };
        Ok((place, fresh))
    }

    fn special(&mut self, entry: &Entry) -> std::result::Result<(), Failure> {
        let place = self.place(&entry.path)?;
        if !self.opts.overwrite && special_is_there(&place, &entry.kind) {
            self.stats.identical += 1;
            return Ok(());
        }
        Dest::clear(&place.parent, &place.name, self.opts.overwrite)?;
        let name = OsStr::from_bytes(&place.name);
        let mode = Mode::from_bits_truncate(0o600);
        let r = match entry.kind {
            Kind::Fifo => nix::unistd::mkfifoat(&*place.parent, name, mode),
            Kind::CharDev { major, minor } => nix::sys::stat::mknodat(
                &*place.parent,
                name,
                SFlag::S_IFCHR,
                mode,
                makedev(major, minor),
            ),
            Kind::BlockDev { major, minor } => nix::sys::stat::mknodat(
                &*place.parent,
                name,
                SFlag::S_IFBLK,
                mode,
                makedev(major, minor),
            ),
            _ => return Err(Error::Internal("not a special file".into()).into()),
        };
        r.map_err(Failure::when("cannot create"))?;
        self.stats.other_entries += 1;
        self.note_setid(&entry.meta);
        apply_meta_at(
            &place.parent,
            &place.name,
            &entry.meta,
            false,
            &self.settings.policy,
        )
    }

    fn note_setid(&mut self, meta: &Meta) {
        if self.settings.policy.strips(meta.mode) {
            self.stats.setid_stripped += 1;
        }
    }

    fn file(&mut self, entry: &Entry) -> std::result::Result<(), Failure> {
        let Kind::File { size, hash, chunks } = &entry.kind else {
            return Err(Error::Internal("not a file".into()).into());
        };
        let (place, fresh) = self.place_fresh(&entry.path)?;
        let expected = files::Expected {
            size: *size,
            hash: *hash,
            meta: entry.meta.clone(),
        };
        // Checked again when the file is moved into place (without replacing anything);
        // this saves the work. A file already there with exactly this content (from an
        // interrupted restore) stays. A directory this restore made (0700) holds only
        // what it put there, which the listing's order rules out here.
        let cleared = if fresh {
            Ok(())
        } else {
            Dest::clear(&place.parent, &place.name, false)
        };
        if let Err(e) = cleared {
            if !self.opts.overwrite && files::identical(&place.parent, &place.name, &expected) {
                self.stats.identical += 1;
                return Ok(());
            }
            match e {
                Failure::Exists { directory: false } if !self.opts.overwrite => {
                    return Err(Failure::refused(
                        "exists and differs from the run; pass --overwrite to replace it",
                    ))
                }
                Failure::Exists { directory: true } => return Err(e),
                e if !self.opts.overwrite => return Err(e),
                _ => {} // --overwrite: the file is moved over what is there
            }
        }
        self.note_setid(&entry.meta);
        let stored = chunks
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(c.length));
        if stored <= WORKER_FILE_BYTES {
            let mut messages = Vec::with_capacity(chunks.len());
            for (i, c) in chunks.iter().enumerate() {
                // A copy, so a queued file does not keep a whole cached pack alive.
                messages.push(bytes::Bytes::copy_from_slice(&self.fetch(c, &chunks[i..])?));
            }
            self.submit(files::FileJob {
                path: entry.path.clone(),
                place,
                chunks: chunks.clone(),
                messages,
                expected,
            });
            return Ok(());
        }
        // The workers get what is gathered while this thread writes a large file.
        self.flush();
        let settings = self.settings;
        files::write_file(&settings, &place, chunks, &expected, &mut |c, ahead| {
            self.fetch(c, ahead)
        })?;
        self.stats.files += 1;
        self.stats.bytes += size;
        self.progress.item(&place.shown.to_string_lossy());
        if self.progress.wants_detail() {
            self.progress
                .detail(&format!("restored {}", crate::text::path(&place.shown)));
        }
        Ok(())
    }

    /// Hands a file to the workers: into the next batch, which goes once it is full.
    fn submit(&mut self, job: files::FileJob) {
        self.pool.batch_held += job.messages.iter().map(|m| m.len() as u64).sum::<u64>();
        self.pool.batch.push(job);
        if self.pool.batch.len() >= BATCH_FILES || self.pool.batch_held >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Sends the batch gathered so far to the workers, first waiting for room.
    fn flush(&mut self) {
        if self.pool.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pool.batch);
        let held = std::mem::take(&mut self.pool.batch_held);
        self.collect(false);
        while self.pool.in_flight > 0 && self.pool.held + held > WORKER_BYTES {
            if !self.collect(true) {
                break;
            }
        }
        let files = batch.len();
        self.pool.in_flight += files;
        self.pool.held += held;
        if let Err(e) = self.pool.jobs.send(batch) {
            // Every worker is gone (they only stop when the queue closes): fail the files.
            self.pool.in_flight -= files;
            self.pool.held -= held;
            self.fatal = Some("no restore worker is left".into());
            for job in e.0 {
                self.fail(&job.path, "internal error: no restore worker left");
            }
        }
    }

    /// Takes in the workers' results: those ready, or (with `block`) at least one batch.
    /// Returns false if the workers are gone.
    fn collect(&mut self, block: bool) -> bool {
        let mut block = block;
        while self.pool.in_flight > 0 {
            let answers = if block {
                match self.pool.done.recv() {
                    Ok(d) => d,
                    Err(_) => {
                        self.fatal = Some("the restore workers stopped".into());
                        return false;
                    }
                }
            } else {
                match self.pool.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => return true,
                }
            };
            block = false;
            for done in answers {
                self.answer(done);
            }
        }
        true
    }

    /// One file's answer from a worker.
    fn answer(&mut self, done: files::Done) {
        self.pool.in_flight -= 1;
        self.pool.held = self.pool.held.saturating_sub(done.held);
        if done.fatal {
            self.fatal = Some(format!(
                "a restore worker failed on {}",
                crate::text::path(&done.shown)
            ));
        }
        match done.result {
            Ok(()) => {
                self.stats.files += 1;
                self.stats.bytes += done.bytes;
                self.progress.item(&done.shown.to_string_lossy());
                if self.progress.wants_detail() {
                    self.progress
                        .detail(&format!("restored {}", crate::text::path(&done.shown)));
                }
            }
            Err(Failure::Interrupted) => {}
            Err(reason) => self.fail(&done.path, reason),
        }
    }

    /// Waits for every queued file.
    pub(super) fn drain(&mut self) -> crate::error::Result<()> {
        self.flush();
        while self.pool.in_flight > 0 {
            if !self.collect(true) {
                break;
            }
        }
        match self.fatal.take() {
            Some(reason) => Err(Error::Internal(reason)),
            None => Ok(()),
        }
    }

    /// The stored message of one chunk. `ahead` is this chunk and the rest of the file,
    /// so a ranged read can cover the following chunks in the same pack too.
    fn fetch(
        &mut self,
        c: &ChunkRef,
        ahead: &[ChunkRef],
    ) -> std::result::Result<bytes::Bytes, Failure> {
        self.packs
            .message(self.store, c, ahead)
            .map_err(Failure::Stored)
    }

    /// Hard links, then symbolic links, then directory metadata (deepest first), each
    /// resolved again from the destination's handle.
    pub(super) fn finish(&mut self) {
        self.close_failed_dir();
        let links = std::mem::take(&mut self.links);
        let (hard, soft): (Vec<_>, Vec<_>) = links
            .into_iter()
            .partition(|(_, d)| matches!(d, Deferred::Hardlink { .. }));
        for (rel, d) in hard.into_iter().chain(soft) {
            if self.opts.cancel.is_cancelled() {
                return;
            }
            match self.link(&rel, &d) {
                Ok(true) => self.stats.other_entries += 1,
                Ok(false) => {}
                Err(reason) => self.fail(&rel, reason),
            }
        }
        self.finish_dirs();
    }

    /// Directory metadata, deepest first, each directory reached again from the
    /// destination's handle.
    pub(super) fn finish_dirs(&mut self) {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, meta) in dirs {
            let r = self
                .dest
                .dir(&rel, false)
                .and_then(|fd| apply_meta_fd(&*fd, &meta, true, &self.settings.policy));
            if let Err(reason) = r {
                self.fail(&rel, reason);
            }
        }
    }

    /// Whether the link `d` is already at `name` (same target, or same inode).
    fn link_is_there(&mut self, parent: &DirFd, name: &[u8], d: &Deferred) -> bool {
        let name = OsStr::from_bytes(name);
        match d {
            Deferred::Symlink { target, .. } => {
                nix::fcntl::readlinkat(&**parent, name).is_ok_and(|t| {
                    std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()) == &target[..]
                })
            }
            Deferred::Hardlink { target } => {
                let at = |p: &DirFd, n: &OsStr| {
                    nix::sys::stat::fstatat(&**p, n, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .ok()
                        .map(|st| (st.st_dev, st.st_ino))
                };
                let here = at(parent, name);
                let Ok((tparent, tname)) = self.dest.parent(target, false) else {
                    return false;
                };
                here.is_some() && here == at(&tparent, OsStr::from_bytes(tname))
            }
        }
    }

    /// Creates a link; `Ok(false)` if it was there already.
    fn link(&mut self, rel: &[u8], d: &Deferred) -> std::result::Result<bool, Failure> {
        let (parent, name) = self.dest.parent(rel, true)?;
        if !self.opts.overwrite && self.link_is_there(&parent, name, d) {
            self.stats.identical += 1;
            return Ok(false);
        }
        Dest::clear(&parent, name, self.opts.overwrite)?;
        let name_os = OsStr::from_bytes(name);
        match d {
            Deferred::Hardlink { target } => {
                let (tparent, tname): (DirFd, &[u8]) = self.dest.parent(target, false)?;
                nix::unistd::linkat(
                    &*tparent,
                    OsStr::from_bytes(tname),
                    &*parent,
                    name_os,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(|e| Failure::os(format!("cannot link to {}", self.show(target)), e))?;
            }
            Deferred::Symlink { target, meta } => {
                nix::unistd::symlinkat(os(target), &*parent, name_os)
                    .map_err(Failure::when("cannot create symlink"))?;
                apply_meta_at(&parent, name, meta, true, &self.settings.policy)?;
            }
        }
        Ok(true)
    }
}

/// Whether a fifo or device of the same kind (and numbers) is already at `place`.
fn special_is_there(place: &Place, kind: &Kind) -> bool {
    let Ok(st) = nix::sys::stat::fstatat(
        &*place.parent,
        OsStr::from_bytes(&place.name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) else {
        return false;
    };
    let ty = st.st_mode & SFlag::S_IFMT.bits();
    match *kind {
        Kind::Fifo => ty == SFlag::S_IFIFO.bits(),
        Kind::CharDev { major, minor } => {
            ty == SFlag::S_IFCHR.bits() && st.st_rdev == makedev(major, minor)
        }
        Kind::BlockDev { major, minor } => {
            ty == SFlag::S_IFBLK.bits() && st.st_rdev == makedev(major, minor)
        }
        _ => false,
    }
}
