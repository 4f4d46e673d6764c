//! Where things are on a target (docs/FORMAT.md section 1): the keys of packs, runs,
//! metafile pieces and markers, the escaping of host names into a key segment, and what
//! a listed key under `runs/` names. Pure functions of names: no request is made here.

use object_store::path::Path as StorePath;

use crate::error::{Error, Result};
use crate::ids::{ObjectKey, RunId};

/// A stored metafile is cut into pieces of this size (docs/FORMAT.md section 1), each
/// uploaded with one create-only put: S3 cannot make a multipart upload create-only
/// through object_store, and a piece is what one put holds in memory.
pub const METAFILE_PIECE: u64 = 8 << 20;

/// How many pieces a stored metafile of `bytes` bytes is cut into (at least one).
pub fn metafile_pieces(bytes: u64, piece: u64) -> u32 {
    u32::try_from(bytes.div_ceil(piece.max(1)).max(1)).unwrap_or(u32::MAX)
}

/// A run as listed on a target: no key needed. Its `status` says whether it may count as
/// a backup ([`crate::runs`] explains the checks).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunInfo {
    /// Host that made it.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: String,
    /// The start time the run claims (its id; UTC, RFC 3339).
    pub time: String,
    /// When the target stored its metafile (UTC, RFC 3339): what orders and dates runs.
    pub stored: String,
    /// Size of the stored metafile in bytes (all its pieces).
    pub metafile_bytes: u64,
    /// What a keyless reader can tell of it.
    pub status: crate::runs::RunStatus,
    /// What it read and stored, as its object list records it (known once checked;
    /// `None` for lists that do not record it).
    pub stats: Option<crate::format::refs::RunStats>,
    #[serde(skip)]
    pub(crate) stored_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip)]
    pub(crate) claimed_at: chrono::DateTime<chrono::Utc>,
    /// Its object list's size, if it has one.
    #[serde(skip)]
    pub(crate) refs_bytes: Option<u64>,
    /// Piece numbers listed and their sizes, in order.
    #[serde(skip)]
    pub(crate) pieces: Vec<(u32, u64)>,
    /// Its signature's size (`<id>.refs.sig`), if it has one.
    #[serde(skip)]
    pub(crate) sig_bytes: Option<u64>,
    /// Whether, and by whom, it is signed ([`crate::runs::check`] finds out).
    pub signature: crate::runs::Signature,
    /// Its place in its host's and source's chain, as its object list records it
    /// (object lists from version 3 on; known once checked).
    #[serde(skip)]
    pub(crate) chain: Option<crate::format::refs::Chain>,
    /// BLAKE3 of its whole object list (known once checked, for chained runs).
    #[serde(skip)]
    pub(crate) refs_hash: Option<crate::ids::ChunkHash>,
    /// The stored metafile as its object list records it (known once checked).
    #[serde(skip)]
    pub(crate) metafile_digest: Option<crate::format::refs::MetafileDigest>,
}

impl RunInfo {
    /// The run's id, parsed.
    pub fn run_id(&self) -> Result<RunId> {
        self.id.parse()
    }

    /// When the target stored the run's metafile.
    pub fn stored_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.stored_at
    }

    /// A run stored when its id says it started, and ok (for tests).
    #[cfg(test)]
    pub(crate) fn for_test(host: &str, source: &str, id: &str) -> RunInfo {
        let at = id.parse::<RunId>().unwrap().time().unwrap();
        RunInfo {
            host: host.into(),
            source: source.into(),
            id: id.into(),
            time: String::new(),
            stored: String::new(),
            metafile_bytes: 1,
            status: crate::runs::RunStatus::Ok,
            stored_at: at,
            claimed_at: at,
            refs_bytes: Some(1),
            pieces: vec![(1, 1)],
            sig_bytes: None,
            signature: crate::runs::Signature::None,
            chain: None,
            refs_hash: None,
            metafile_digest: None,
            stats: None,
        }
    }
}

/// Key of a data object.
pub fn data_path(key: &ObjectKey) -> StorePath {
    let hex = key.to_hex();
    StorePath::from(format!("data/{}/{}", &hex[..2], hex))
}

/// Escapes a host name into a path segment: `[A-Za-z0-9._-]` stay, other bytes are `+XX`.
pub fn encode_segment(s: &str) -> String {
    let mut out = crate::format::escape(s.as_bytes(), b'+', |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    });
    if out.starts_with('.') {
        out.replace_range(..1, "+2E");
    }
    out
}

/// Inverse of [`encode_segment`].
pub(crate) fn decode_segment(s: &str) -> Option<String> {
    String::from_utf8(crate::format::unescape(s, b'+')?).ok()
}

/// Key of a marker a local index left on the target.
pub fn marker_path(id: &str) -> StorePath {
    StorePath::from(format!("markers/{id}"))
}

/// A marker id: 32 lowercase hex digits.
pub fn valid_marker(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh marker id.
pub fn new_marker() -> Result<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).map_err(|e| Error::Internal(format!("random marker: {e}")))?;
    Ok(hex::encode(r))
}

/// Key of piece `n` (from 1) of a run's metafile: `<id>.meta`, then `<id>.meta.0002` ...
pub fn piece_path(host: &str, source: &str, id: &RunId, n: u32) -> StorePath {
    if n <= 1 {
        run_path(host, source, id, "meta")
    } else {
        run_path(host, source, id, &format!("meta.{n:04}"))
    }
}

/// Key of a run's metafile (`ext` = "meta"), object list (`refs`), its signature
/// (`refs.sig`) or the record prune leaves of a deleted run (`pruned`).
pub fn run_path(host: &str, source: &str, id: &RunId, ext: &str) -> StorePath {
    StorePath::from(format!(
        "runs/{}/{}/{}.{ext}",
        encode_segment(host),
        source,
        id
    ))
}

/// A metafile piece or object list as listed on a target.
#[derive(Debug, Clone)]
pub struct RunObject {
    /// Host that made the run.
    pub host: String,
    /// Source name.
    pub source: String,
    /// Run id.
    pub id: RunId,
    /// "meta" (a metafile piece), "refs", "sig" (the object list's signature) or
    /// "pruned" (what prune left of a run it deleted).
    pub ext: String,
    /// For a metafile piece, its number (1 for `<id>.meta`).
    pub piece: u32,
    /// Its key.
    pub path: StorePath,
    /// Size in bytes.
    pub size: u64,
    /// When the target stored it.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

impl RunObject {
    /// Parses a listed key `runs/<host>/<source>/<id>.<ext>`; `None` for other names.
    pub(super) fn from_meta(m: object_store::ObjectMeta) -> Option<RunObject> {
        let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
        if parts.len() != 4 {
            return None;
        }
        let (id, ext) = parts[3].split_once('.')?;
        let (ext, piece) = match ext {
            "meta" => ("meta", 1),
            "refs" => ("refs", 0),
            "refs.sig" => ("sig", 0),
            "pruned" => ("pruned", 0),
            _ => {
                let n = ext.strip_prefix("meta.")?;
                let piece: u32 = n.parse().ok().filter(|&p| p >= 2 && n.len() == 4)?;
                ("meta", piece)
            }
        };
        Some(RunObject {
            host: decode_segment(&parts[1])?,
            source: parts[2].clone(),
            id: id.parse().ok()?,
            ext: ext.to_string(),
            piece,
            path: m.location,
            size: m.size,
            last_modified: m.last_modified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        for s in ["web1", "a b/c", ".hidden", "ünï"] {
            let e = encode_segment(s);
            assert!(!e.starts_with('.'));
            assert!(e
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)));
            assert_eq!(decode_segment(&e).unwrap(), s);
        }
    }
}
