//! Building source trees for the tests, and reading trees back to compare them: every
//! entry's type, mode, owner, times and content, by relative path (as bytes).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes: the project's one generator (src/prng.rs).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    coffer::internals::noise(len, seed)
}

/// Writes a file, creating its parent directories.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Sets the modification (and access) time without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nsec);
    filetime::set_symlink_file_times(path, t, t)
        .unwrap_or_else(|e| panic!("utimes {}: {e}", path.display()));
}

/// Gives every entry below and including `root` a distinct mtime in the past with
/// nanoseconds; directories last and deepest first, so setting them sticks.
pub fn set_past_mtimes(root: &Path, base: i64) {
    let mut paths: Vec<PathBuf> = snapshot_paths(root);
    // Children sort after their parents: reverse order visits them first.
    paths.sort();
    paths.reverse();
    let (dirs, others): (Vec<_>, Vec<_>) = paths
        .into_iter()
        .partition(|p| std::fs::symlink_metadata(p).unwrap().is_dir());
    for (i, p) in others.iter().chain(dirs.iter()).enumerate() {
        set_mtime(p, base + i as i64 * 7, 100_000_001 + i as u32 * 1_234_567);
    }
}

/// Every path below and including `root`.
fn snapshot_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Reading trees back

/// What a tree entry is, with its type-specific content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    /// Size and BLAKE3 of the content.
    File(u64, String),
    /// Target bytes, shown lossily.
    Symlink(Vec<u8>),
    Fifo,
    CharDev(u64, u64),
    BlockDev(u64, u64),
    Socket,
}

/// One entry as `lstat` and its content show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// (device, inode): not compared directly; used to check hard links.
    pub inode: (u64, u64),
    pub nlink: u64,
}

/// The tree below and including `root`, keyed by relative path bytes (`.` for the root).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    for p in snapshot_paths(root) {
        let rel = p.strip_prefix(root).unwrap();
        let rel = if rel.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            rel.as_os_str().as_bytes().to_vec()
        };
        out.insert(rel, node(&p));
    }
    out
}

fn node(p: &Path) -> Node {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let dev = || {
        let r = m.rdev();
        (nix::sys::stat::major(r), nix::sys::stat::minor(r))
    };
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        NodeKind::File(data.len() as u64, blake3::hash(&data).to_hex().to_string())
    } else if ft.is_symlink() {
        NodeKind::Symlink(
            std::fs::read_link(p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        let (a, b) = dev();
        NodeKind::CharDev(a, b)
    } else if ft.is_block_device() {
        let (a, b) = dev();
        NodeKind::BlockDev(a, b)
    } else {
        NodeKind::Socket
    };
    Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        inode: (m.dev(), m.ino()),
        nlink: m.nlink(),
    }
}

/// A relative path for messages.
pub fn show(rel: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(rel))
}

/// Every difference between two trees: entries missing or extra, and for common entries
/// type, content, mode bits, owner, mtime (seconds and nanoseconds) and link count. Hard
/// links are checked as well: names sharing an inode in `a` must share one in `b`.
pub fn tree_differences(a: &Path, b: &Path) -> Vec<String> {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let mut diffs = Vec::new();
    for (rel, na) in &sa {
        let Some(nb) = sb.get(rel) else {
            diffs.push(format!("{} missing from the restored tree", show(rel)));
            continue;
        };
        let mut check = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{} {what}: {x} != {y}", show(rel)));
            }
        };
        check("kind", format!("{:?}", na.kind), format!("{:?}", nb.kind));
        check("mode", format!("{:o}", na.mode), format!("{:o}", nb.mode));
        check("uid", na.uid.to_string(), nb.uid.to_string());
        check("gid", na.gid.to_string(), nb.gid.to_string());
        check(
            "mtime",
            format!("{:?}", na.mtime),
            format!("{:?}", nb.mtime),
        );
        if na.kind != NodeKind::Dir {
            check("nlink", na.nlink.to_string(), nb.nlink.to_string());
        }
    }
    for rel in sb.keys().filter(|r| !sa.contains_key(*r)) {
        diffs.push(format!("{} is extra in the restored tree", show(rel)));
    }
    // Hard links: group a's non-directories by inode.
    let mut groups: BTreeMap<(u64, u64), Vec<&Vec<u8>>> = BTreeMap::new();
    for (rel, n) in &sa {
        if n.kind != NodeKind::Dir {
            groups.entry(n.inode).or_default().push(rel);
        }
    }
    for names in groups.values().filter(|g| g.len() > 1) {
        let inodes: Vec<Option<(u64, u64)>> =
            names.iter().map(|r| sb.get(*r).map(|n| n.inode)).collect();
        if inodes.iter().any(|i| *i != inodes[0]) {
            let shown: Vec<String> = names.iter().map(|r| show(r)).collect();
            diffs.push(format!(
                "hard links {} do not share an inode in the restored tree",
                shown.join(", ")
            ));
        }
    }
    diffs
}

#[track_caller]
pub fn assert_same_tree(original: &Path, restored: &Path) {
    let diffs = tree_differences(original, restored);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n  {}",
        diffs.len(),
        original.display(),
        restored.display(),
        diffs.join("\n  ")
    );
}

/// Every path (relative) below `root`, excluding the root itself.
pub fn relative_paths(root: &Path) -> Vec<Vec<u8>> {
    snapshot(root)
        .into_keys()
        .filter(|k| k.as_slice() != b".")
        .collect()
}

/// Names of leftover temporary restore files anywhere below `root`.
pub fn leftover_temporaries(root: &Path) -> Vec<String> {
    relative_paths(root)
        .into_iter()
        .filter(|r| {
            r.rsplit(|&b| b == b'/')
                .next()
                .is_some_and(|n| n.starts_with(b".coffer-restore-"))
        })
        .map(|r| show(&r))
        .collect()
}

pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}
