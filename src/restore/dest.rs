//! The destination tree, reached only through directory handles restore opened itself.
//!
//! A listing names paths; the destination may hold symbolic links (placed there before
//! the restore, or swapped in while it runs by someone who can write there). So no path
//! below `--to` is ever resolved by the kernel as a whole: each component is opened with
//! `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)` from the handle of the one before,
//! starting at the handle of `--to`, and every entry is created with an `*at` call on
//! its parent's handle. Metadata goes on through the file's own descriptor (`fchown`,
//! `fchmod`, `futimens`) or with `AT_SYMLINK_NOFOLLOW`. A symbolic link where a
//! directory is expected is never followed: it is replaced only with `--overwrite`, and
//! otherwise that part of the tree fails, named. Directories are created 0700 and files
//! 0600; both get their recorded metadata once complete (directories at the very end),
//! so nothing is readable by others before it is whole.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::failure::Failure;
use crate::format::metafile::Meta;

/// A directory handle, shared by the files being written into it.
pub(super) type DirFd = Arc<OwnedFd>;

/// Which recorded metadata restore applies; the rest is left as the restoring user's
/// defaults would make it.
#[derive(Debug, Clone, Copy)]
pub(super) struct MetaPolicy<'a> {
    /// Set owners (as root only: others cannot give files away), by name where the name
    /// exists here, looked up once per name.
    pub owners: Option<&'a OwnerNames>,
    /// Keep setuid and setgid bits on files (never by default: a forged or compromised
    /// run must not hand out setuid-root programs). Directories keep theirs.
    pub setid: bool,
}

/// Setuid and setgid.
const SETID: u32 = 0o6000;

impl MetaPolicy<'_> {
    /// The mode to give an entry recorded with `mode`; directories keep setgid.
    pub fn mode(&self, mode: u32, dir: bool) -> u32 {
        if self.setid || dir {
            mode & 0o7777
        } else {
            mode & 0o7777 & !SETID
        }
    }

    /// Whether restoring `mode` on a non-directory drops bits under this policy.
    pub fn strips(&self, mode: u32) -> bool {
        !self.setid && mode & SETID != 0
    }
}

/// The destination: the handle of `--to` and a cache of the directories on the path of
/// the entry restored last (the listing is depth first, so most lookups hit it).
pub(super) struct Dest {
    root: DirFd,
    /// (path relative to the root, handle, made by this restore) of the directories on
    /// the current path.
    stack: Vec<(Vec<u8>, DirFd, bool)>,
    /// The directory [`Dest::make_dir`] created last, until it is opened.
    made: Option<Vec<u8>>,
    /// Whether `--to` was created by this restore (then its own metadata is restored).
    pub created_root: bool,
}

fn name_of(rel: &[u8]) -> &[u8] {
    rel.rsplit(|&b| b == b'/').next().unwrap_or(rel)
}

/// Opens the directory `name` in `parent`, refusing to follow a symbolic link.
fn open_dir(parent: &impl AsFd, name: &[u8]) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        parent,
        OsStr::from_bytes(name),
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

impl Dest {
    /// Opens (creating if needed) the destination directory `to`. `to` itself is the
    /// user's choice and may be a symbolic link; nothing below it is followed.
    pub fn open(to: &Path) -> Result<Dest, Failure> {
        let created_root = match std::fs::symlink_metadata(to) {
            Ok(m) if m.is_dir() || std::fs::metadata(to).is_ok_and(|m| m.is_dir()) => false,
            Ok(_) => {
                return Err(Failure::refused(
                    "exists and is not a directory; --to must be a directory",
                ))
            }
            Err(_) => {
                std::fs::create_dir_all(to).map_err(|e| Failure::io("cannot create it", e))?;
                true
            }
        };
        let root = nix::fcntl::open(
            to,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(Failure::when("cannot open it"))?;
        Ok(Dest {
            root: Arc::new(root),
            stack: Vec::new(),
            made: None,
            created_root,
        })
    }

    /// The handle of `--to`.
    pub fn root(&self) -> &DirFd {
        &self.root
    }

    /// The handle of directory `rel` (`.` for the root). With `create`, missing
    /// components are created (0700); a component that is not a directory fails.
    pub fn dir(&mut self, rel: &[u8], create: bool) -> Result<DirFd, Failure> {
        self.dir_fresh(rel, create).map(|(fd, _)| fd)
    }

    /// [`Dest::dir`], and whether this restore made the directory (0700, so nothing is
    /// in it but what this restore put there).
    fn dir_fresh(&mut self, rel: &[u8], create: bool) -> Result<(DirFd, bool), Failure> {
        if rel == b"." || rel.is_empty() {
            return Ok((self.root.clone(), false));
        }
        // Keep the cached directories that are ancestors of (or are) `rel`.
        while let Some((p, _, _)) = self.stack.last() {
            if rel == p.as_slice() || (rel.starts_with(p) && rel.get(p.len()) == Some(&b'/')) {
                break;
            }
            self.stack.pop();
        }
        let done = self.stack.last().map_or(0, |(p, _, _)| p.len() + 1);
        if done > rel.len() {
            let (_, fd, fresh) = self.stack.last().expect("matched above");
            return Ok((fd.clone(), *fresh));
        }
        for component in rel[done..].split(|&b| b == b'/') {
            let parent = self
                .stack
                .last()
                .map_or(&self.root, |(_, fd, _)| fd)
                .clone();
            let path = match self.stack.last() {
                Some((p, _, _)) => [p.as_slice(), b"/", component].concat(),
                None => component.to_vec(),
            };
            let mut fresh = self.made.as_deref() == Some(path.as_slice());
            let fd = match open_dir(&*parent, component) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        &*parent,
                        OsStr::from_bytes(component),
                        Mode::from_bits_truncate(0o700),
                    ) {
                        Ok(()) => fresh = true,
                        Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(Failure::os(format!("cannot create {}", show(&path)), e))
                        }
                    }
                    open_dir(&*parent, component).map_err(|e| not_a_dir(&path, e))?
                }
                Err(e) => return Err(not_a_dir(&path, e)),
            };
            if fresh {
                self.made = None;
            }
            self.stack.push((path, Arc::new(fd), fresh));
        }
        let (_, fd, fresh) = self.stack.last().expect("pushed above");
        Ok((fd.clone(), *fresh))
    }

    /// The handle of the directory holding `rel` and `rel`'s last component.
    pub fn parent<'r>(
        &mut self,
        rel: &'r [u8],
        create: bool,
    ) -> Result<(DirFd, &'r [u8]), Failure> {
        self.parent_fresh(rel, create)
            .map(|(fd, name, _)| (fd, name))
    }

    /// [`Dest::parent`], and whether this restore made that directory.
    pub fn parent_fresh<'r>(
        &mut self,
        rel: &'r [u8],
        create: bool,
    ) -> Result<(DirFd, &'r [u8], bool), Failure> {
        let parent = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &rel[..i],
            None => b".",
        };
        let (fd, fresh) = self.dir_fresh(parent, create)?;
        Ok((fd, name_of(rel), fresh))
    }

    /// Creates directory `rel` (0700) unless it exists. Returns whether it was created.
    /// Something else in its place is replaced only with `overwrite`.
    pub fn make_dir(&mut self, rel: &[u8], overwrite: bool) -> Result<bool, Failure> {
        let (parent, name) = self.parent(rel, true)?;
        let name_os = OsStr::from_bytes(name);
        let mode = Mode::from_bits_truncate(0o700);
        match nix::sys::stat::mkdirat(&*parent, name_os, mode) {
            Ok(()) => {
                self.made = Some(rel.to_vec());
                return Ok(true);
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Failure::os("cannot create", e)),
        }
        match open_dir(&*parent, name) {
            Ok(_) => Ok(false),
            Err(Errno::ENOTDIR | Errno::ELOOP) if overwrite => {
                nix::unistd::unlinkat(&*parent, name_os, UnlinkatFlags::NoRemoveDir)
                    .map_err(Failure::when("cannot replace what is there"))?;
                nix::sys::stat::mkdirat(&*parent, name_os, mode)
                    .map_err(Failure::when("cannot create"))?;
                self.made = Some(rel.to_vec());
                Ok(true)
            }
            Err(e) => Err(not_a_dir(rel, e)),
        }
    }

    /// Makes room for a non-directory at `name` in `parent`: nothing may be there, or,
    /// with `overwrite`, anything but a directory, which is then removed.
    pub fn clear(parent: &DirFd, name: &[u8], overwrite: bool) -> Result<(), Failure> {
        let name_os = OsStr::from_bytes(name);
        match nix::sys::stat::fstatat(&**parent, name_os, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Failure::os("cannot look at what is there", e)),
            Ok(st) if st.st_mode & libc_s_ifmt() == libc_s_ifdir() => {
                Err(Failure::Exists { directory: true })
            }
            Ok(_) if overwrite => {
                nix::unistd::unlinkat(&**parent, name_os, UnlinkatFlags::NoRemoveDir)
                    .map_err(Failure::when("cannot replace it"))
            }
            Ok(_) => Err(Failure::Exists { directory: false }),
        }
    }
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}

fn libc_s_ifdir() -> u32 {
    nix::sys::stat::SFlag::S_IFDIR.bits()
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn not_a_dir(rel: &[u8], e: Errno) -> Failure {
    match e {
        Errno::ENOTDIR | Errno::ELOOP => Failure::Refused(format!(
            "{} exists in the destination and is not a directory (a symbolic link is \
             never followed); pass --overwrite to replace it",
            show(rel)
        )),
        e => Failure::os(format!("cannot open {}", show(rel)), e),
    }
}

/// User and group names already looked up in this system's databases: a restore of
/// many files owned by few users asks once per name (each lookup reads /etc/passwd or
/// /etc/group again, a dozen system calls).
#[derive(Debug, Default)]
pub(super) struct OwnerNames {
    users: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<u32>>>,
    groups: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<u32>>>,
}

impl OwnerNames {
    /// The owner to set: by name where the name exists here, else by number.
    fn ids(&self, m: &Meta) -> (Uid, Gid) {
        let cached = |map: &std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<u32>>>,
                      name: &[u8],
                      lookup: fn(&[u8]) -> Option<u32>| {
            if let Some(id) = map.lock().ok().and_then(|m| m.get(name).copied()) {
                return id;
            }
            let id = lookup(name);
            if let Ok(mut m) = map.lock() {
                m.insert(name.to_vec(), id);
            }
            id
        };
        let uid = m
            .user
            .as_deref()
            .and_then(|n| cached(&self.users, n, lookup_user))
            .unwrap_or(m.uid);
        let gid = m
            .group
            .as_deref()
            .and_then(|n| cached(&self.groups, n, lookup_group))
            .unwrap_or(m.gid);
        (Uid::from_raw(uid), Gid::from_raw(gid))
    }
}

fn times(m: &Meta) -> (TimeSpec, TimeSpec) {
    let t = TimeSpec::new(m.mtime, m.mtime_nsec as _);
    (t, t)
}

/// Applies owner, mode and mtime through an open descriptor (files and directories).
pub(super) fn apply_meta_fd(
    fd: &impl AsFd,
    m: &Meta,
    dir: bool,
    policy: &MetaPolicy<'_>,
) -> Result<(), Failure> {
    // The owner first: chown clears setuid and setgid bits.
    if let Some(names) = policy.owners {
        let (uid, gid) = names.ids(m);
        nix::unistd::fchown(fd, Some(uid), Some(gid)).map_err(Failure::when("cannot set owner"))?;
    }
    let mode = Mode::from_bits_truncate(policy.mode(m.mode, dir) as _);
    nix::sys::stat::fchmod(fd, mode).map_err(Failure::when("cannot set mode"))?;
    let (atime, mtime) = times(m);
    nix::sys::stat::futimens(fd, &atime, &mtime).map_err(Failure::when("cannot set mtime"))
}

/// Applies owner, mode (not for symlinks) and mtime to `name` in `parent`, never
/// following a symbolic link (fifos, devices, symlinks: entries not opened).
pub(super) fn apply_meta_at(
    parent: &DirFd,
    name: &[u8],
    m: &Meta,
    symlink: bool,
    policy: &MetaPolicy<'_>,
) -> Result<(), Failure> {
    let name = OsStr::from_bytes(name);
    if let Some(names) = policy.owners {
        let (uid, gid) = names.ids(m);
        nix::unistd::fchownat(
            &**parent,
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(Failure::when("cannot set owner"))?;
    }
    if !symlink {
        let mode = Mode::from_bits_truncate(policy.mode(m.mode, false) as _);
        nix::sys::stat::fchmodat(&**parent, name, mode, FchmodatFlags::NoFollowSymlink)
            .map_err(Failure::when("cannot set mode"))?;
    }
    let (atime, mtime) = times(m);
    nix::sys::stat::utimensat(
        &**parent,
        name,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(Failure::when("cannot set mtime"))
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
