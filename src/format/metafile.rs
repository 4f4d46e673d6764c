//! The metafile: one per run, the run's complete listing, encrypted to the recipients.
//!
//! Line-oriented text in the spirit of Brackup's `.brackup` file; docs/FORMAT.md is the
//! specification. Every field is one space-free token: names and paths are
//! percent-encoded ([`super::encode_field`]), so any byte sequence survives.
//!
//! ```text
//! coffer-metafile 1
//! <key> <value>                  header lines, until an empty line
//!
//! dir <path> <meta>
//! file <path> <meta> <size> <blake3> <nchunks>
//! chunk <object> <offset> <length> <size> <blake3> <encoding>   (nchunks of them)
//! symlink <path> <meta> <target>
//! hardlink <path> <earlier-path>
//! fifo <path> <meta>
//! chardev|blockdev <path> <meta> <major> <minor>
//! end <entries> <file-bytes>
//! ```
//! where `<meta>` is `<mode-octal> <uid> <gid> <user> <group> <mtime>`, `<mtime>` is
//! `<seconds>.<9-digit nanoseconds>` and `<user>`/`<group>` are `-` when unknown.

use std::io::{BufRead, Write};

use super::{decode_field, encode_field};
use crate::error::{Error, Result};
use crate::ids::{ChunkHash, ObjectKey};

const MAGIC: &str = "coffer-metafile";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// How a chunk's plaintext was encoded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// Stored as is.
    Raw,
    /// Compressed with zstd (one frame).
    Zstd,
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
        }
    }
    /// The numeric code used in the local index.
    pub fn code(self) -> i64 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zstd => 1,
        }
    }
    /// Inverse of [`Encoding::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// Where a chunk is stored and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// The object (pack) holding the chunk's OpenPGP message.
    pub object: ObjectKey,
    /// Byte offset of the message in the object.
    pub offset: u64,
    /// Length of the message in bytes.
    pub length: u64,
    /// Plaintext size of the chunk.
    pub size: u64,
    /// BLAKE3 of the plaintext chunk.
    pub hash: ChunkHash,
    /// Encoding applied before encryption.
    pub encoding: Encoding,
}

/// Ownership, permissions and time of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits (including setuid/setgid/sticky), without the file type.
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, if known.
    pub user: Option<Vec<u8>>,
    /// Group name, if known.
    pub group: Option<Vec<u8>>,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds.
    pub mtime_nsec: u32,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its content.
    File {
        /// Size in bytes.
        size: u64,
        /// BLAKE3 of the whole content.
        hash: ChunkHash,
        /// The content, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as stored in the link.
        target: Vec<u8>,
    },
    /// A further name of a regular file listed earlier.
    Hardlink {
        /// The earlier entry's path.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDev {
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
}

/// One entry of the listing. `path` is relative to the source root, `/`-separated bytes;
/// the root itself is `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path.
    pub path: Vec<u8>,
    /// Type and type-specific data.
    pub kind: Kind,
    /// Metadata (ignored for hard links, which share their target's).
    pub meta: Meta,
}

/// The header: what run this is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// Ordered key-value pairs. Known keys: host, source, run, root, started, chunker,
    /// recipients. Readers ignore keys they do not know.
    pub fields: Vec<(String, String)>,
}

impl Header {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Totals written in the `end` line; a reader checks them to detect truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Number of entries.
    pub entries: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

/// Streams a metafile out.
pub struct Writer<W: Write> {
    out: W,
    totals: Totals,
}

impl<W: Write> Writer<W> {
    /// Writes the magic line and the header.
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        writeln!(out, "{MAGIC} {VERSION}")?;
        for (k, v) in &header.fields {
            writeln!(out, "{k} {}", encode_field(v.as_bytes()))?;
        }
        writeln!(out)?;
        Ok(Writer {
            out,
            totals: Totals::default(),
        })
    }

    /// Writes one entry (and its chunk lines).
    pub fn entry(&mut self, e: &Entry) -> std::io::Result<()> {
        let path = encode_field(&e.path);
        let meta = meta_fields(&e.meta);
        let out = &mut self.out;
        match &e.kind {
            Kind::Dir => writeln!(out, "dir {path} {meta}")?,
            Kind::File { size, hash, chunks } => {
                writeln!(out, "file {path} {meta} {size} {hash} {}", chunks.len())?;
                for c in chunks {
                    writeln!(
                        out,
                        "chunk {} {} {} {} {} {}",
                        c.object,
                        c.offset,
                        c.length,
                        c.size,
                        c.hash,
                        c.encoding.as_str()
                    )?;
                }
                self.totals.bytes += size;
            }
            Kind::Symlink { target } => {
                writeln!(out, "symlink {path} {meta} {}", encode_field(target))?
            }
            Kind::Hardlink { target } => writeln!(out, "hardlink {path} {}", encode_field(target))?,
            Kind::Fifo => writeln!(out, "fifo {path} {meta}")?,
            Kind::CharDev { major, minor } => {
                writeln!(out, "chardev {path} {meta} {major} {minor}")?
            }
            Kind::BlockDev { major, minor } => {
                writeln!(out, "blockdev {path} {meta} {major} {minor}")?
            }
        }
        self.totals.entries += 1;
        Ok(())
    }

    /// Writes the `end` line and returns the sink.
    pub fn finish(mut self) -> std::io::Result<(W, Totals)> {
        writeln!(
            self.out,
            "end {} {}",
            self.totals.entries, self.totals.bytes
        )?;
        self.out.flush()?;
        Ok((self.out, self.totals))
    }
}

fn meta_fields(m: &Meta) -> String {
    let name = |n: &Option<Vec<u8>>| n.as_deref().map_or("-".to_string(), encode_field);
    format!(
        "{:o} {} {} {} {} {}.{:09}",
        m.mode,
        m.uid,
        m.gid,
        name(&m.user),
        name(&m.group),
        m.mtime,
        m.mtime_nsec
    )
}

/// Streams a metafile in, one entry at a time.
pub struct Reader<R: BufRead> {
    input: R,
    what: String,
    line_no: u64,
    line: String,
    header: Header,
    totals: Totals,
    done: bool,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the magic line and header; `what` names the metafile in errors.
    pub fn new(input: R, what: &str) -> Result<Self> {
        let mut r = Reader {
            input,
            what: what.to_string(),
            line_no: 0,
            line: String::new(),
            header: Header::default(),
            totals: Totals::default(),
            done: false,
        };
        let first = r.next_line()?.ok_or_else(|| r.corrupt("empty"))?;
        match first.split_once(' ') {
            Some((MAGIC, v)) if v == VERSION.to_string() => {}
            Some((MAGIC, v)) if v.parse::<u32>().is_ok_and(|v| v > VERSION) => {
                return Err(r.corrupt(&format!(
                    "metafile version {v} is newer than this coffer reads ({VERSION}); \
                     upgrade coffer"
                )))
            }
            _ => return Err(r.corrupt("not a coffer metafile (bad first line)")),
        }
        loop {
            let line = r
                .next_line()?
                .ok_or_else(|| r.corrupt("truncated header"))?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(' ').unwrap_or((&line, ""));
            let v = decode_field(v)
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| r.corrupt("bad header value"))?;
            r.header.fields.push((k.to_string(), v));
        }
        Ok(r)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::Corrupt {
            what: self.what.clone(),
            reason: format!("line {}: {reason}", self.line_no),
        }
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        self.line.clear();
        let n = self
            .input
            .read_line(&mut self.line)
            .map_err(|e| Error::Corrupt {
                what: self.what.clone(),
                reason: format!("read failed after line {}: {e}", self.line_no),
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if !self.line.ends_with('\n') {
            return Err(self.corrupt("truncated line"));
        }
        self.line.pop();
        Ok(Some(std::mem::take(&mut self.line)))
    }

    /// The next entry, or `None` after a valid `end` line. A metafile that ends without
    /// one, or whose totals disagree, is an error.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let line = self
            .next_line()?
            .ok_or_else(|| self.corrupt("truncated: no end line"))?;
        let fields: Vec<&str> = line.split(' ').collect();
        let entry = match fields[0] {
            "end" => {
                let want = Totals {
                    entries: self.num(fields.get(1))?,
                    bytes: self.num(fields.get(2))?,
                };
                if want != self.totals {
                    return Err(self.corrupt(&format!(
                        "end line says {want:?}, listing has {:?}",
                        self.totals
                    )));
                }
                if fields.len() != 3 {
                    return Err(self.corrupt("bad end line"));
                }
                if self.next_line()?.is_some() {
                    return Err(self.corrupt("data after the end line"));
                }
                self.done = true;
                return Ok(None);
            }
            "hardlink" => {
                self.expect_len(&fields, 3)?;
                Entry {
                    path: self.bytes(fields[1])?,
                    kind: Kind::Hardlink {
                        target: self.bytes(fields[2])?,
                    },
                    meta: Meta::default(),
                }
            }
            kind => self.parse_entry(kind, &fields)?,
        };
        self.totals.entries += 1;
        if let Kind::File { size, .. } = entry.kind {
            self.totals.bytes += size;
        }
        Ok(Some(entry))
    }

    fn parse_entry(&mut self, kind: &str, f: &[&str]) -> Result<Entry> {
        let extra = match kind {
            "dir" | "fifo" => 0,
            "symlink" => 1,
            "chardev" | "blockdev" => 2,
            "file" => 3,
            other => return Err(self.corrupt(&format!("unknown record type {other:?}"))),
        };
        self.expect_len(f, 8 + extra)?;
        let path = self.bytes(f[1])?;
        let meta = self.parse_meta(&f[2..8])?;
        let kind = match kind {
            "dir" => Kind::Dir,
            "fifo" => Kind::Fifo,
            "symlink" => Kind::Symlink {
                target: self.bytes(f[8])?,
            },
            "chardev" => Kind::CharDev {
                major: self.num(f.get(8))?,
                minor: self.num(f.get(9))?,
            },
            "blockdev" => Kind::BlockDev {
                major: self.num(f.get(8))?,
                minor: self.num(f.get(9))?,
            },
            _ => {
                let size = self.num(f.get(8))?;
                let hash = f[9].parse().map_err(|_| self.corrupt("bad file hash"))?;
                let n = self.num(f.get(10))?;
                let mut chunks = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    chunks.push(self.parse_chunk()?);
                }
                let sum: u64 = chunks.iter().map(|c| c.size).sum();
                if sum != size {
                    return Err(self.corrupt(&format!("chunks add up to {sum}, file size {size}")));
                }
                Kind::File { size, hash, chunks }
            }
        };
        Ok(Entry { path, kind, meta })
    }

    fn parse_chunk(&mut self) -> Result<ChunkRef> {
        let line = self
            .next_line()?
            .ok_or_else(|| self.corrupt("truncated: chunk line expected"))?;
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 7 || f[0] != "chunk" {
            return Err(self.corrupt("chunk line expected"));
        }
        let encoding = match f[6] {
            "raw" => Encoding::Raw,
            "zstd" => Encoding::Zstd,
            e => return Err(self.corrupt(&format!("unknown chunk encoding {e:?}"))),
        };
        Ok(ChunkRef {
            object: f[1].parse().map_err(|_| self.corrupt("bad object key"))?,
            offset: self.num(f.get(2))?,
            length: self.num(f.get(3))?,
            size: self.num(f.get(4))?,
            hash: f[5].parse().map_err(|_| self.corrupt("bad chunk hash"))?,
            encoding,
        })
    }

    fn parse_meta(&self, f: &[&str]) -> Result<Meta> {
        let name = |s: &str| -> Result<Option<Vec<u8>>> {
            if s == "-" {
                Ok(None)
            } else {
                self.bytes(s).map(Some)
            }
        };
        let (secs, nanos) = f[5]
            .split_once('.')
            .ok_or_else(|| self.corrupt("bad mtime"))?;
        Ok(Meta {
            mode: u32::from_str_radix(f[0], 8).map_err(|_| self.corrupt("bad mode"))?,
            uid: f[1].parse().map_err(|_| self.corrupt("bad uid"))?,
            gid: f[2].parse().map_err(|_| self.corrupt("bad gid"))?,
            user: name(f[3])?,
            group: name(f[4])?,
            mtime: secs.parse().map_err(|_| self.corrupt("bad mtime"))?,
            mtime_nsec: Some(nanos)
                .filter(|n| n.len() == 9 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| self.corrupt("bad mtime"))?,
        })
    }

    fn expect_len(&self, f: &[&str], n: usize) -> Result<()> {
        if f.len() == n {
            Ok(())
        } else {
            Err(self.corrupt(&format!("expected {n} fields, found {}", f.len())))
        }
    }

    fn num(&self, s: Option<&&str>) -> Result<u64> {
        s.and_then(|s| s.parse().ok())
            .ok_or_else(|| self.corrupt("bad number"))
    }

    fn bytes(&self, s: &str) -> Result<Vec<u8>> {
        decode_field(s).ok_or_else(|| self.corrupt("bad percent-encoding"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> impl Strategy<Value = Meta> {
        (
            0u32..0o7777,
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 1..8)),
            any::<i64>(),
            0u32..1_000_000_000,
        )
            .prop_map(|(mode, uid, gid, user, mtime, mtime_nsec)| Meta {
                mode,
                uid,
                gid,
                group: user.clone(),
                user,
                mtime,
                mtime_nsec,
            })
    }

    fn chunk() -> impl Strategy<Value = ChunkRef> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            0u64..1 << 30,
            any::<bool>(),
        )
            .prop_map(|(h, offset, length, size, z)| ChunkRef {
                object: ObjectKey(h),
                offset,
                length,
                size,
                hash: ChunkHash(h),
                encoding: if z { Encoding::Zstd } else { Encoding::Raw },
            })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let path = proptest::collection::vec(any::<u8>(), 1..40);
        let kind = prop_oneof![
            Just(Kind::Dir),
            Just(Kind::Fifo),
            path.clone().prop_map(|target| Kind::Symlink { target }),
            (any::<u64>(), any::<u64>()).prop_map(|(major, minor)| Kind::CharDev { major, minor }),
            (any::<u64>(), any::<u64>()).prop_map(|(major, minor)| Kind::BlockDev { major, minor }),
            (any::<[u8; 32]>(), proptest::collection::vec(chunk(), 0..4)).prop_map(
                |(h, chunks)| {
                    Kind::File {
                        size: chunks.iter().map(|c| c.size).sum(),
                        hash: ChunkHash(h),
                        chunks,
                    }
                }
            ),
        ];
        (path, kind, meta()).prop_map(|(path, kind, meta)| Entry { path, kind, meta })
    }

    fn header() -> Header {
        Header {
            fields: vec![
                ("host".into(), "web 1".into()),
                ("source".into(), "home".into()),
            ],
        }
    }

    proptest! {
        #[test]
        fn roundtrip(entries in proptest::collection::vec(entry(), 0..20)) {
            let mut w = Writer::new(Vec::new(), &header()).unwrap();
            for e in &entries { w.entry(e).unwrap(); }
            let (buf, _) = w.finish().unwrap();
            let mut r = Reader::new(&buf[..], "m").unwrap();
            prop_assert_eq!(r.header(), &header());
            let mut back = Vec::new();
            while let Some(e) = r.next_entry().unwrap() { back.push(e); }
            prop_assert_eq!(back, entries);
        }
    }

    #[test]
    fn truncation_and_versions_are_refused() {
        let e = Entry {
            path: b"a".to_vec(),
            kind: Kind::Dir,
            meta: Meta::default(),
        };
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.entry(&e).unwrap();
        w.entry(&e).unwrap();
        let (buf, _) = w.finish().unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        // drop the end line
        let cut = &text[..text.rfind("end").unwrap()];
        let mut r = Reader::new(cut.as_bytes(), "m").unwrap();
        assert!(r.next_entry().unwrap().is_some());
        assert!(r.next_entry().unwrap().is_some());
        assert!(r
            .next_entry()
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // drop an entry but keep the end line
        let lines: Vec<&str> = text.lines().collect();
        let mut dropped = lines.clone();
        dropped.remove(dropped.len() - 2);
        let dropped = dropped.join("\n") + "\n";
        let mut r = Reader::new(dropped.as_bytes(), "m").unwrap();
        assert!(r.next_entry().unwrap().is_some());
        assert!(r.next_entry().is_err());
        let newer = text.replace("coffer-metafile 1", "coffer-metafile 2");
        let err = Reader::new(newer.as_bytes(), "m")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("upgrade coffer"), "{err}");
    }
}
