//! The metafile: one per run, the run's complete listing, encrypted to the recipients.
//!
//! Line-oriented text in the spirit of Brackup's `.brackup` file; docs/FORMAT.md is the
//! specification. Every field is one space-free token: names and paths are
//! percent-encoded (`encode_field` in src/format/mod.rs), so any byte sequence survives.
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
//!
//! One file on purpose (about 580 lines before its tests): the types, the writer and the
//! strict reader of one format, which must change together and be read side by side.

use std::io::{BufRead, Read, Write};

use super::{decode_field, encode_field};
use crate::error::{Error, Result};
use crate::ids::{ChunkHash, ObjectKey};

const MAGIC: &str = "coffer-metafile";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// The longest line a reader accepts, its LF included (docs/FORMAT.md section 4.2). A
/// reader holds one line at a time, so this bounds its memory whatever the input; the
/// writer's caller leaves out entries whose line could be longer ([`record_fits`]).
pub const MAX_LINE: usize = 64 << 10;
/// The largest chunk (FastCDC's largest maximum chunk size).
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;
/// The longest chunk message: the largest chunk plus room for the packets around it.
pub const MAX_MESSAGE_LEN: u64 = MAX_CHUNK_SIZE + (1 << 20);

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

/// Whether the record of an entry at `path` (with a link `target`, if any) surely fits
/// in [`MAX_LINE`], counting every byte of its names as percent-encoded (three bytes
/// each) and its numbers at their longest.
pub fn record_fits(path: &[u8], target: &[u8], meta: &Meta) -> bool {
    let names = meta.user.as_ref().map_or(0, Vec::len) + meta.group.as_ref().map_or(0, Vec::len);
    let encoded = (path.len() + target.len() + names).saturating_mul(3);
    // Record type, mode, ids, mtime, size, hash, counts, spaces: under 256 bytes.
    encoded.saturating_add(256) <= MAX_LINE
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

    /// The next line without its LF; `None` at the end of the input. A line longer than
    /// [`MAX_LINE`], one without its LF and one that is not ASCII are refused.
    fn next_line(&mut self) -> Result<Option<String>> {
        let mut buf = std::mem::take(&mut self.line).into_bytes();
        buf.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::Corrupt {
                what: self.what.clone(),
                reason: format!("read failed after line {}: {e}", self.line_no),
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Err(self.corrupt(if n == MAX_LINE {
                "line too long"
            } else {
                "truncated line"
            }));
        }
        buf.pop();
        if !buf.is_ascii() {
            return Err(self.corrupt("not ASCII"));
        }
        let line = String::from_utf8(buf).map_err(|_| self.corrupt("not ASCII"))?;
        Ok(Some(line))
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
            self.totals.bytes = self
                .totals
                .bytes
                .checked_add(size)
                .ok_or_else(|| self.corrupt("file sizes add up to more than 2^64"))?;
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
                let sum = chunks
                    .iter()
                    .try_fold(0u64, |sum, c| sum.checked_add(c.size));
                if sum != Some(size) {
                    let sum = sum.map_or("more than 2^64".to_string(), |s| s.to_string());
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
        let c = ChunkRef {
            object: f[1].parse().map_err(|_| self.corrupt("bad object key"))?,
            offset: self.num(f.get(2))?,
            length: self.num(f.get(3))?,
            size: self.num(f.get(4))?,
            hash: f[5].parse().map_err(|_| self.corrupt("bad chunk hash"))?,
            encoding,
        };
        if c.size > MAX_CHUNK_SIZE || c.length == 0 || c.length > MAX_MESSAGE_LEN {
            return Err(self.corrupt(&format!(
                "chunk of {} bytes stored in {} (at most {MAX_CHUNK_SIZE} in \
                 {MAX_MESSAGE_LEN})",
                c.size, c.length
            )));
        }
        if c.offset.checked_add(c.length).is_none() {
            return Err(self.corrupt("chunk offset + length is more than 2^64"));
        }
        Ok(c)
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
        let secs = match secs.strip_prefix('-') {
            Some(s) => decimal(s).and_then(|s| 0i64.checked_sub_unsigned(s)),
            None => decimal(secs).and_then(|s| i64::try_from(s).ok()),
        };
        let id = |s: &str, what: &str| {
            decimal(s)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.corrupt(&format!("bad {what}")))
        };
        Ok(Meta {
            mode: Some(f[0])
                .filter(|m| {
                    !m.is_empty() && m.len() <= 5 && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
                })
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .filter(|&m| m <= 0o7777)
                .ok_or_else(|| self.corrupt("bad mode"))?,
            uid: id(f[1], "uid")?,
            gid: id(f[2], "gid")?,
            user: name(f[3])?,
            group: name(f[4])?,
            mtime: secs.ok_or_else(|| self.corrupt("bad mtime"))?,
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
        s.and_then(|s| decimal(s))
            .ok_or_else(|| self.corrupt("bad number"))
    }

    fn bytes(&self, s: &str) -> Result<Vec<u8>> {
        decode_field(s).ok_or_else(|| self.corrupt("bad percent-encoding"))
    }
}

/// An unsigned decimal as the format writes it: digits only, no leading zeros, at most
/// `u64::MAX`.
pub(crate) fn decimal(s: &str) -> Option<u64> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
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
            0u64..u64::MAX - MAX_MESSAGE_LEN,
            1..=MAX_MESSAGE_LEN,
            0..=MAX_CHUNK_SIZE,
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
