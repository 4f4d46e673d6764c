//! `coffer ls`: the entries of a run, streamed from its metafile (bounded memory for a
//! run of any size), with nothing fetched but the metafile.

use serde::Serialize;

use super::{fetch_and_check, MetafileSource, RestoreOptions};
use crate::crypto::Decryptor;
use crate::error::{Error, Result};
use crate::format::metafile::{Entry, Kind};
use crate::progress::Progress;
use crate::source::os;
use crate::store::Reader;

/// One entry of a run, as `ls` shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Listed {
    /// Its path relative to the source root, bytes percent-encoded as in the metafile
    /// (docs/FORMAT.md section 4.5), so that any name survives exactly.
    pub path: String,
    /// `dir`, `file`, `symlink`, `hardlink`, `fifo`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits, without the file type (so 0o644 is 420).
    pub mode: u32,
    /// Owner and group ids, and names where the backup knew them (percent-encoded).
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
    /// Size in bytes (files; 0 for the rest).
    pub size: u64,
    /// Modification time, seconds since the epoch, and nanoseconds.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// A symlink's target, or the path a hard link names (percent-encoded).
    pub target: Option<String>,
    /// A device's major and minor numbers.
    pub device: Option<(u64, u64)>,
    /// The path's bytes, exactly.
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    /// The target's bytes.
    #[serde(skip)]
    pub raw_target: Option<Vec<u8>>,
    /// The owner's and group's names, bytes.
    #[serde(skip)]
    pub raw_names: (Option<Vec<u8>>, Option<Vec<u8>>),
}

impl Listed {
    pub(super) fn of(entry: Entry) -> Listed {
        use crate::format::encode_field as enc;
        let (kind, size, target, device) = match &entry.kind {
            Kind::Dir => ("dir", 0, None, None),
            Kind::File { size, .. } => ("file", *size, None, None),
            Kind::Symlink { target } => ("symlink", 0, Some(target.clone()), None),
            Kind::Hardlink { target } => ("hardlink", 0, Some(target.clone()), None),
            Kind::Fifo => ("fifo", 0, None, None),
            Kind::CharDev { major, minor } => ("chardev", 0, None, Some((*major, *minor))),
            Kind::BlockDev { major, minor } => ("blockdev", 0, None, Some((*major, *minor))),
        };
        let m = &entry.meta;
        Listed {
            path: enc(&entry.path),
            kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            user: m.user.as_deref().map(enc),
            group: m.group.as_deref().map(enc),
            size,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            target: target.as_deref().map(enc),
            device,
            raw_path: entry.path,
            raw_target: target,
            raw_names: (m.user.clone(), m.group.clone()),
        }
    }
}

/// Which entries `ls` shows.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LsOptions {
    /// Paths relative to the source root (empty: the root). A directory shows what is
    /// in it, a file itself.
    pub paths: Vec<Vec<u8>>,
    /// Everything below the paths, not only what is directly in them.
    pub recursive: bool,
    /// Which signers to trust, as restore does.
    pub trust: crate::runs::Trust,
}

/// Streams the entries of the run `source` names that `opts` selects to `each`, in the
/// metafile's order (sorted by path), and returns the run's id. Only the metafile is
/// read; memory does not grow with the number of entries.
///
/// # Errors
///
/// What stops a restore before it writes (no such run, a metafile that fails its check,
/// a wrong key); a path asked for that the run does not hold (after the others were
/// listed: [`Error::NotFound`] naming it); whatever `each` returns (a closed pipe).
pub fn ls(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    opts: LsOptions,
    progress: &dyn Progress,
    each: &mut dyn FnMut(&Listed) -> Result<()>,
) -> Result<String> {
    walk(
        store,
        source,
        decryptor,
        &opts.paths,
        opts.recursive,
        opts.trust,
        progress,
        &mut |entry, _| each(&Listed::of(entry)),
    )
}

/// The run a [`walk`] reads, for a callback that needs more of it.
pub(super) struct Walked<'a> {
    /// The metafile, to read again (a hard link's target).
    pub metafile: &'a super::Fetched,
    /// The run's id.
    pub run: &'a str,
    /// The paths asked for, as given.
    paths: &'a [Vec<u8>],
}

impl Walked<'_> {
    /// Whether a recursive walk hands out `path`.
    pub fn covers(&self, path: &[u8]) -> bool {
        super::selected(self.paths, path)
    }
}

/// Hands the entries of the run that `paths` select (see [`ls`]; the root itself never)
/// to `each`, in the metafile's order; the run's id.
#[allow(clippy::too_many_arguments)]
pub(super) fn walk(
    store: &Reader,
    source: &MetafileSource,
    decryptor: &Decryptor,
    asked: &[Vec<u8>],
    recursive: bool,
    trust: crate::runs::Trust,
    progress: &dyn Progress,
    each: &mut dyn FnMut(Entry, &Walked<'_>) -> Result<()>,
) -> Result<String> {
    let mut paths = Vec::with_capacity(asked.len());
    for p in asked {
        super::check_path(p).map_err(|r| Error::Usage(format!("path {:?}: {r}", os(p))))?;
        paths.push(if p == b"." { Vec::new() } else { p.clone() });
    }
    if paths.is_empty() {
        paths.push(Vec::new());
    }
    let mut restore_opts = RestoreOptions::new(".");
    restore_opts.trust = trust;
    let (metafile, checked) = fetch_and_check(store, source, decryptor, &restore_opts, progress)?;
    let walked = Walked {
        metafile: &metafile,
        run: &checked.run,
        paths: asked,
    };
    let mut found = vec![false; paths.len()];
    let mut listing = metafile.open(decryptor)?;
    while let Some(entry) = listing.next_entry()? {
        let path = entry.path.as_slice();
        if path == b"." {
            // The root: "found" for an empty path, shown by none.
            if let Some(i) = paths.iter().position(Vec::is_empty) {
                found[i] = true;
            }
            continue;
        }
        let mut show = false;
        for (i, p) in paths.iter().enumerate() {
            let inside = if p.is_empty() {
                Some(path)
            } else if path == p.as_slice() {
                found[i] = true;
                // A directory asked for shows what is in it; anything else itself.
                show |= !matches!(entry.kind, Kind::Dir) || recursive;
                None
            } else {
                path.strip_prefix(p.as_slice())
                    .and_then(|rest| rest.strip_prefix(b"/"))
            };
            if let Some(rest) = inside {
                show |= recursive || !rest.contains(&b'/');
            }
        }
        if show {
            each(entry, &walked)?;
        }
    }
    let missing: Vec<String> = paths
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|(p, _)| format!("\"{}\"", crate::text::escape(p)))
        .collect();
    if !missing.is_empty() {
        return Err(Error::NotFound(format!(
            "run {} holds no {} (paths are relative to the source root)",
            checked.run,
            missing.join(", ")
        )));
    }
    Ok(checked.run)
}
