//! The walk, by directory handles.
//!
//! The root is opened by its path (a symbolic link there is followed: the config names
//! it); from then on every directory is opened relative to its parent's handle with
//! `O_DIRECTORY | O_NOFOLLOW`, and every entry is examined with `fstatat(...,
//! AT_SYMLINK_NOFOLLOW)` on its directory's handle. No path is ever resolved again, so
//! swapping a directory of the tree for a symbolic link while the backup runs redirects
//! nothing: the walk goes on in the directory it holds, or, if the swap happened between
//! the look and the open, finds the entry is no longer a directory. A directory whose
//! handle turns out to be another inode than the one looked at is skipped and reported;
//! the backup opens files the same way and checks them the same way (`backup.rs`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::{IgnoreRules, Item};
use crate::error::{Error, Result};

/// What `lstat` (or `fstat`) says of an entry: the fields coffer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
    /// Status change time, seconds.
    pub ctime: i64,
    /// Status change time, nanoseconds.
    pub ctime_nsec: i64,
    /// Inode number.
    pub ino: u64,
    /// Device of the file system holding it.
    pub dev: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// 512-byte blocks allocated (fewer than the size needs: the file has holes).
    pub blocks: u64,
}

impl Stat {
    fn from_raw(st: &nix::sys::stat::FileStat) -> Self {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        }
    }

    /// `fstat` of an open descriptor.
    pub fn of(fd: impl AsFd) -> std::io::Result<Self> {
        nix::sys::stat::fstat(fd)
            .map(|st| Self::from_raw(&st))
            .map_err(std::io::Error::from)
    }

    fn kind(&self) -> u32 {
        self.mode & SFlag::S_IFMT.bits()
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind() == SFlag::S_IFREG.bits()
    }
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR.bits()
    }
    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind() == SFlag::S_IFLNK.bits()
    }
    /// A named pipe.
    pub fn is_fifo(&self) -> bool {
        self.kind() == SFlag::S_IFIFO.bits()
    }
    /// A character device.
    pub fn is_char_device(&self) -> bool {
        self.kind() == SFlag::S_IFCHR.bits()
    }
    /// A block device.
    pub fn is_block_device(&self) -> bool {
        self.kind() == SFlag::S_IFBLK.bits()
    }
    /// Whether the file's allocated blocks cover less than its size: it has holes.
    pub fn is_sparse(&self) -> bool {
        self.blocks.saturating_mul(512) < self.size
    }

    /// The same inode of the same file system as `other`.
    pub fn same_file(&self, other: &Stat) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// One directory being walked: its handle and the names left in it.
struct Frame {
    fd: Arc<OwnedFd>,
    rel: Vec<u8>,
    abs: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

/// An entry the walk could not look at, or a directory it could not look into.
#[derive(Debug)]
pub struct Skipped {
    /// Path relative to the source root.
    pub rel: Vec<u8>,
    /// Whether it is a directory (whose contents are then left out).
    pub dir: bool,
    /// Why (its message names the absolute path).
    pub error: Error,
}

/// The walk of one source tree: an iterator of entries, depth first, each directory's
/// entries in byte order of their names, each directory before its contents. An entry
/// that cannot be read comes back as a [`Skipped`] naming it, and the walk goes on.
pub struct Walker {
    stack: Vec<Frame>,
    rules: IgnoreRules,
    /// The root's device, when the walk stays on one file system.
    one_fs: Option<u64>,
    pending: VecDeque<std::result::Result<Item, Skipped>>,
}

fn open_dir(parent: &impl AsFd, name: &OsString) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        parent,
        name.as_os_str(),
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory, sorted by their bytes.
fn read_names(fd: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let dir = nix::dir::Dir::from_fd(nix::unistd::dup(fd)?)?;
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from(std::ffi::OsStr::from_bytes(name)));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn io(path: &Path, e: Errno) -> Error {
    Error::io(path, std::io::Error::from(e))
}

/// Walks `root`, a directory. Errors on individual entries come back as `Err` items
/// (path and reason) and the walk goes on; an error on the root itself (it does not
/// exist, is not a directory, cannot be read) is returned at once: a run that could hold
/// nothing of its source is not a backup.
pub fn walk(root: &Path, one_file_system: bool, rules: IgnoreRules) -> Result<Walker> {
    let fd = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR => {
            Error::Config(format!("source path {} is not a directory", root.display()))
        }
        e => io(root, e),
    })?;
    let stat = Stat::of(&fd).map_err(|e| Error::io(root, e))?;
    let names = read_names(&fd).map_err(|e| io(root, e))?;
    let fd = Arc::new(fd);
    let root_item = Item {
        abs: root.to_path_buf(),
        rel: b".".to_vec(),
        parent: fd.clone(),
        name: OsString::from("."),
        stat,
    };
    Ok(Walker {
        stack: vec![Frame {
            fd,
            rel: Vec::new(),
            abs: root.to_path_buf(),
            names: names.into_iter(),
        }],
        rules,
        one_fs: one_file_system.then_some(stat.dev),
        pending: VecDeque::from([Ok(root_item)]),
    })
}

impl Walker {
    /// A directory just looked at: open it beneath its parent and queue its names.
    fn enter(&mut self, mut item: Item) -> std::result::Result<Item, Skipped> {
        let skipped = |item: &Item, error: Error| Skipped {
            rel: item.rel.clone(),
            dir: true,
            error,
        };
        let replaced = |item: &Item| {
            skipped(
                item,
                Error::io(
                    &item.abs,
                    std::io::Error::other("was replaced while the backup walked it; skipped"),
                ),
            )
        };
        if self.one_fs.is_some_and(|dev| dev != item.stat.dev) {
            return Ok(item); // a mount point: recorded, not entered
        }
        let fd = match open_dir(&*item.parent, &item.name) {
            Ok(fd) => fd,
            Err(Errno::ENOTDIR | Errno::ELOOP) => return Err(replaced(&item)),
            Err(e) => {
                // Listed (its own metadata is known), but its contents cannot be read.
                let error = io(&item.abs, e);
                self.pending.push_back(Err(skipped(&item, error)));
                return Ok(item);
            }
        };
        let real = match Stat::of(&fd) {
            Ok(st) => st,
            Err(e) => return Err(skipped(&item, Error::io(&item.abs, e))),
        };
        if !real.same_file(&item.stat) {
            return Err(replaced(&item));
        }
        item.stat = real;
        match read_names(&fd) {
            Ok(names) => self.stack.push(Frame {
                fd: Arc::new(fd),
                rel: item.rel.clone(),
                abs: item.abs.clone(),
                names: names.into_iter(),
            }),
            Err(e) => {
                let error = io(&item.abs, e);
                self.pending.push_back(Err(skipped(&item, error)));
            }
        }
        Ok(item)
    }
}

impl Iterator for Walker {
    type Item = std::result::Result<Item, Skipped>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ready) = self.pending.pop_front() {
                return Some(ready);
            }
            let frame = self.stack.last_mut()?;
            let Some(name) = frame.names.next() else {
                self.stack.pop();
                continue;
            };
            let rel = if frame.rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [&frame.rel[..], b"/", name.as_bytes()].concat()
            };
            if self
                .rules
                .is_ignored(Path::new(std::ffi::OsStr::from_bytes(&rel)))
            {
                continue;
            }
            let abs = frame.abs.join(&name);
            let parent = frame.fd.clone();
            let stat = match nix::sys::stat::fstatat(
                &*parent,
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => Stat::from_raw(&st),
                Err(e) => {
                    return Some(Err(Skipped {
                        rel,
                        dir: false,
                        error: io(&abs, e),
                    }))
                }
            };
            let item = Item {
                abs,
                rel,
                parent,
                name,
                stat,
            };
            if item.stat.is_dir() {
                return Some(self.enter(item));
            }
            return Some(Ok(item));
        }
    }
}
