//! The run's object list (`<run>.refs`): every object key a run references, in plain text,
//! and what a keyless reader needs to check the run (docs/FORMAT.md section 6).
//!
//! It reveals nothing about the data (object keys are hashes of ciphertext) and lets `gc`,
//! `prune`, `runs` and monitoring work without a secret key.
//!
//! ```text
//! coffer-refs 3
//! run <id>                        header: "KEY SP VALUE" lines (values percent-encoded)
//! host <host>
//! source <source>
//! dedup-max-age <seconds>         the backup's `dedup_max_age` setting
//! max-run-time <seconds>          the backup's `max_run_time` setting
//! metafile <blake3> <bytes> <pieces>
//! chain <id> <seq> <prev-refs> <prev-meta>
//!                                 the run's place in its host's and source's chain;
//!                                 `-` `-` for the first run of a chain
//!                                 an empty line ends the header
//! <64 hex digits>                 one line per object, sorted, unique
//! end <count>
//! ```
//!
//! Version 2 (still read) had no chain line; version 1 had the two settings as its only
//! header lines and no empty line. Everything here comes from the target, so nothing is trusted: lines are bounded,
//! numbers checked, and [`Bounds::plausible`] says which settings a valid config could have made.

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use super::{decode_field, encode_field};
use crate::error::{Error, Result};
use crate::format::metafile::decimal;
use crate::ids::{ChunkHash, ObjectKey};

/// The version this code writes.
pub const VERSION: u32 = 3;
/// No line of an object list is longer (header values included).
const MAX_LINE: usize = 4096;

/// The largest `dedup_max_age` a config may set: values read from a target beyond it are
/// suspicious, never trusted (they would stretch gc's grace period).
pub const MAX_DEDUP_MAX_AGE: Duration = Duration::from_secs(366 * 86_400);
/// The largest `max_run_time` a config may set.
pub const MAX_MAX_RUN_TIME: Duration = Duration::from_secs(92 * 86_400);

/// The backup settings an object list records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The run's `dedup_max_age`.
    pub dedup_max_age: Duration,
    /// The run's `max_run_time`.
    pub max_run_time: Duration,
}

impl Bounds {
    /// The shortest grace period gc may use for runs made with these bounds.
    pub fn min_grace(&self) -> Duration {
        self.dedup_max_age.saturating_add(self.max_run_time)
    }

    /// Whether a valid config could have made these bounds.
    pub fn plausible(&self) -> bool {
        self.dedup_max_age <= MAX_DEDUP_MAX_AGE && self.max_run_time <= MAX_MAX_RUN_TIME
    }
}

/// The stored metafile as the object list describes it: what a keyless reader checks the
/// `.meta` objects against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetafileDigest {
    /// BLAKE3 of the whole stored metafile (all its pieces, in order).
    pub hash: ChunkHash,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many objects it is stored in (docs/FORMAT.md section 1).
    pub pieces: u32,
}

/// What names the run an object list belongs to (version 2 on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunName {
    /// Run id.
    pub run: String,
    /// Host name (unescaped).
    pub host: String,
    /// Source name.
    pub source: String,
}

/// A run's place in the chain of its host's and source's runs (version 3 on): the
/// chain a host started (a random id; a host that lost its local state starts a new
/// one), the run's number in it (from 1), and the digests of the run before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain's id: 32 lowercase hex digits.
    pub id: String,
    /// The run's sequence number in the chain, from 1.
    pub seq: u64,
    /// The run before it (`None` exactly when `seq` is 1).
    pub previous: Option<Link>,
}

/// What a run records of its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// BLAKE3 of the predecessor's whole object list, as stored.
    pub refs: ChunkHash,
    /// BLAKE3 of the predecessor's whole stored metafile.
    pub metafile: ChunkHash,
}

impl Chain {
    /// A new chain: a random id, sequence number 1.
    ///
    /// # Errors
    ///
    /// The system's random source fails.
    pub fn start() -> Result<Chain> {
        let mut r = [0u8; 16];
        getrandom::fill(&mut r).map_err(|e| Error::Internal(format!("random chain id: {e}")))?;
        Ok(Chain {
            id: hex::encode(r),
            seq: 1,
            previous: None,
        })
    }

    /// The chain line's value: `<id> <seq> <prev-refs> <prev-meta>` (`-` `-` for the
    /// first run); the metafile's header records the same as its `chain` field.
    pub fn field(&self) -> String {
        let (refs, meta) = self
            .previous
            .map_or(("-".to_string(), "-".to_string()), |l| {
                (l.refs.to_string(), l.metafile.to_string())
            });
        format!("{} {} {refs} {meta}", self.id, self.seq)
    }

    /// The run after the one this chain position describes, whose object list and
    /// metafile had these digests.
    pub fn next(&self, link: Link) -> Chain {
        Chain {
            id: self.id.clone(),
            seq: self.seq.saturating_add(1),
            previous: Some(link),
        }
    }
}

/// An object list's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format version read.
    pub version: u32,
    /// The backup's settings.
    pub bounds: Bounds,
    /// The run it belongs to (`None` in version 1).
    pub name: Option<RunName>,
    /// The stored metafile (`None` in version 1).
    pub metafile: Option<MetafileDigest>,
    /// The run's place in its chain (`None` before version 3).
    pub chain: Option<Chain>,
    /// What the run read and stored (`None` where the list has no `stats` line).
    pub stats: Option<RunStats>,
}

/// What a run read and stored, as its object list records it (its `stats` line), so
/// that `coffer runs` shows it without a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    /// Regular files in the run.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of chunks this run stored first (before compression and encryption).
    pub bytes_new: u64,
    /// Bytes the run uploaded (packs and metafile, as stored).
    pub bytes_stored: u64,
    /// Seconds from the run's start to its commit.
    pub seconds: u64,
}

/// Writes an object list; `keys` must be sorted and unique.
pub fn write(
    out: &mut impl Write,
    name: &RunName,
    bounds: &Bounds,
    metafile: &MetafileDigest,
    chain: &Chain,
    stats: Option<&RunStats>,
    keys: impl IntoIterator<Item = ObjectKey>,
) -> std::io::Result<()> {
    writeln!(out, "coffer-refs {VERSION}")?;
    writeln!(out, "run {}", encode_field(name.run.as_bytes()))?;
    writeln!(out, "host {}", encode_field(name.host.as_bytes()))?;
    writeln!(out, "source {}", encode_field(name.source.as_bytes()))?;
    writeln!(out, "dedup-max-age {}", bounds.dedup_max_age.as_secs())?;
    writeln!(out, "max-run-time {}", bounds.max_run_time.as_secs())?;
    writeln!(
        out,
        "metafile {} {} {}",
        metafile.hash, metafile.bytes, metafile.pieces
    )?;
    writeln!(out, "chain {}", chain.field())?;
    if let Some(s) = stats {
        writeln!(
            out,
            "stats {} {} {} {} {}",
            s.files, s.bytes, s.bytes_new, s.bytes_stored, s.seconds
        )?;
    }
    writeln!(out)?;
    let mut n = 0u64;
    for k in keys {
        writeln!(out, "{k}")?;
        n += 1;
    }
    writeln!(out, "end {n}")
}

/// Reads an object list, checking its header and trailer, into memory; `what` names it
/// in errors.
pub fn read(input: impl BufRead, what: &str) -> Result<(Header, Vec<ObjectKey>)> {
    let mut keys = Vec::new();
    let header = read_each(input, what, |k| {
        keys.push(k);
        Ok(())
    })?;
    Ok((header, keys))
}

/// Reads only an object list's header (the keys are not read).
pub fn read_header(input: impl BufRead, what: &str) -> Result<Header> {
    Lines::new(input, what).header()
}

/// Reads an object list, handing each key to `each` as it is read (memory stays bounded
/// however long the list). Returns the header once the trailer checked out; on error,
/// `each` may have seen some keys (all of them genuine keys of the list, if it is one).
pub fn read_each(
    input: impl BufRead,
    what: &str,
    mut each: impl FnMut(ObjectKey) -> Result<()>,
) -> Result<Header> {
    let mut lines = Lines::new(input, what);
    let header = lines.header()?;
    let mut count = 0u64;
    let mut last: Option<ObjectKey> = None;
    loop {
        let line = lines.next()?;
        if let Some(n) = line.strip_prefix("end ") {
            if decimal(n) != Some(count) {
                return Err(lines.corrupt(format!("trailer says {n} objects, found {count}")));
            }
            if lines.next_opt()?.is_some() {
                return Err(lines.corrupt("data after the end line".into()));
            }
            return Ok(header);
        }
        let key: ObjectKey = line
            .parse()
            .map_err(|_| lines.corrupt(format!("bad object key {line:?}")))?;
        if last.is_some_and(|l| l >= key) {
            return Err(lines.corrupt("object keys are not sorted and unique".into()));
        }
        last = Some(key);
        count += 1;
        each(key)?;
    }
}

/// `<id> <seq> <prev-refs> <prev-meta>`: the first run of a chain (seq 1) and only it
/// has `-` for both digests.
pub(crate) fn parse_chain(line: &str) -> Option<Chain> {
    let f: Vec<&str> = line.split(' ').collect();
    let [id, seq, refs, meta] = f[..] else {
        return None;
    };
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let seq = decimal(seq).filter(|&s| s >= 1)?;
    let previous = match (refs, meta) {
        ("-", "-") if seq == 1 => None,
        _ if seq > 1 => Some(Link {
            refs: refs.parse().ok()?,
            metafile: meta.parse().ok()?,
        }),
        _ => return None,
    };
    Some(Chain {
        id: id.to_string(),
        seq,
        previous,
    })
}

/// Bounded lines of an object list.
struct Lines<R> {
    input: R,
    what: String,
    line_no: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R, what: &str) -> Self {
        Lines {
            input,
            what: what.to_string(),
            line_no: 0,
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            what: self.what.clone(),
            reason: if self.line_no > 0 {
                format!("line {}: {reason}", self.line_no)
            } else {
                reason
            },
        }
    }

    fn next_opt(&mut self) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.corrupt(format!("read failed: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if buf.pop() != Some(b'\n') {
            return Err(self.corrupt(
                if n == MAX_LINE {
                    "line too long"
                } else {
                    "truncated (no end line)"
                }
                .into(),
            ));
        }
        String::from_utf8(buf)
            .ok()
            .filter(|l| l.is_ascii())
            .map(Some)
            .ok_or_else(|| self.corrupt("not ASCII".into()))
    }

    fn next(&mut self) -> Result<String> {
        self.next_opt()?
            .ok_or_else(|| self.corrupt("truncated (no end line)".into()))
    }

    fn header(&mut self) -> Result<Header> {
        let first = self
            .next_opt()?
            .ok_or_else(|| self.corrupt("empty".into()))?;
        let version = match first.strip_prefix("coffer-refs ").map(decimal) {
            Some(Some(v @ (1..=3))) => v as u32,
            Some(Some(v)) if v > u64::from(VERSION) => {
                return Err(self.corrupt(format!(
                    "format {first:?} is newer than this coffer understands; upgrade coffer"
                )))
            }
            _ => return Err(self.corrupt("not a coffer object list".into())),
        };
        if version == 1 {
            let dedup_max_age = self.setting("dedup-max-age")?;
            let max_run_time = self.setting("max-run-time")?;
            return Ok(Header {
                version,
                bounds: Bounds {
                    dedup_max_age,
                    max_run_time,
                },
                name: None,
                metafile: None,
                chain: None,
                stats: None,
            });
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        loop {
            let line = self.next()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| self.corrupt(format!("bad header line {line:?}")))?;
            if fields.iter().any(|(key, _)| key == k) {
                return Err(self.corrupt(format!("header key {k:?} given twice")));
            }
            fields.push((k.to_string(), v.to_string()));
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| self.corrupt(format!("no {k} line in the header")))
        };
        let text = |k: &str| {
            get(k).and_then(|v| {
                decode_field(v)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| self.corrupt(format!("bad {k} value")))
            })
        };
        let secs = |k: &str| {
            get(k).and_then(|v| {
                decimal(v)
                    .map(Duration::from_secs)
                    .ok_or_else(|| self.corrupt(format!("bad {k} value {v:?}")))
            })
        };
        let metafile = get("metafile")?;
        let m: Vec<&str> = metafile.split(' ').collect();
        let digest = match m[..] {
            [hash, bytes, pieces] => Some(MetafileDigest {
                hash: hash
                    .parse()
                    .map_err(|_| self.corrupt("bad metafile hash".into()))?,
                bytes: decimal(bytes).ok_or_else(|| self.corrupt("bad metafile size".into()))?,
                pieces: decimal(pieces)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|&p| p >= 1)
                    .ok_or_else(|| self.corrupt("bad metafile piece count".into()))?,
            }),
            _ => return Err(self.corrupt(format!("bad metafile line {metafile:?}"))),
        };
        let chain = if version >= 3 {
            let line = get("chain")?;
            Some(
                parse_chain(line)
                    .ok_or_else(|| self.corrupt(format!("bad chain line {line:?}")))?,
            )
        } else {
            None
        };
        // Optional: lists before it have none, and a reader needs none.
        let stats = match fields.iter().find(|(k, _)| k == "stats") {
            None => None,
            Some((_, v)) => {
                let n: Vec<u64> = v.split(' ').filter_map(decimal).collect();
                match n[..] {
                    [files, bytes, bytes_new, bytes_stored, seconds]
                        if v.split(' ').count() == 5 =>
                    {
                        Some(RunStats {
                            files,
                            bytes,
                            bytes_new,
                            bytes_stored,
                            seconds,
                        })
                    }
                    _ => return Err(self.corrupt(format!("bad stats line {v:?}"))),
                }
            }
        };
        Ok(Header {
            stats,
            version,
            bounds: Bounds {
                dedup_max_age: secs("dedup-max-age")?,
                max_run_time: secs("max-run-time")?,
            },
            name: Some(RunName {
                run: text("run")?,
                host: text("host")?,
                source: text("source")?,
            }),
            metafile: digest,
            chain,
        })
    }

    fn setting(&mut self, name: &str) -> Result<Duration> {
        let line = self.next()?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(decimal)
            .map(Duration::from_secs)
            .ok_or_else(|| self.corrupt(format!("expected \"{name} <seconds>\", found {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> RunName {
        RunName {
            run: "20260101T000000Z-00000001".into(),
            host: "web 1".into(),
            source: "home".into(),
        }
    }

    const BOUNDS: Bounds = Bounds {
        dedup_max_age: Duration::from_secs(60),
        max_run_time: Duration::from_secs(7),
    };

    fn digest() -> MetafileDigest {
        MetafileDigest {
            hash: ChunkHash::of(b"m"),
            bytes: 1234,
            pieces: 1,
        }
    }

    fn chain() -> Chain {
        Chain::start().unwrap().next(Link {
            refs: ChunkHash::of(b"r"),
            metafile: ChunkHash::of(b"m"),
        })
    }

    #[test]
    fn roundtrip_and_truncation() {
        let mut keys = vec![ObjectKey::of(b"a"), ObjectKey::of(b"b")];
        keys.sort();
        let stats = RunStats {
            files: 3,
            bytes: 4,
            bytes_new: 5,
            bytes_stored: 6,
            seconds: 7,
        };
        let mut buf = Vec::new();
        write(
            &mut buf,
            &name(),
            &BOUNDS,
            &digest(),
            &chain(),
            Some(&stats),
            keys.clone(),
        )
        .unwrap();
        let (header, back) = read(&buf[..], "r").unwrap();
        assert_eq!(back, keys);
        assert_eq!(header.stats, Some(stats));
        // Without the line (as lists before it), and with a bad one.
        let text = String::from_utf8(buf.clone()).unwrap();
        let without = text.replace("stats 3 4 5 6 7\n", "");
        assert_eq!(read(without.as_bytes(), "r").unwrap().0.stats, None);
        for bad in [
            "stats 3 4 5 6\n",
            "stats 3 4 5 6 7 8\n",
            "stats 3 4 5 6 x\n",
            "stats 3  4 5 6\n",
        ] {
            let broken = text.replace("stats 3 4 5 6 7\n", bad);
            assert!(read(broken.as_bytes(), "r").is_err(), "{bad}");
        }
        assert_eq!(header.bounds, BOUNDS);
        assert_eq!(header.name, Some(name()));
        assert_eq!(header.metafile, Some(digest()));
        let c = header.chain.unwrap();
        assert_eq!(
            (c.seq, c.previous.unwrap().metafile),
            (2, ChunkHash::of(b"m"))
        );
        assert_eq!(BOUNDS.min_grace(), Duration::from_secs(67));
        let mut unsorted = Vec::new();
        write(
            &mut unsorted,
            &name(),
            &BOUNDS,
            &digest(),
            &chain(),
            None,
            keys.iter().rev().copied(),
        )
        .unwrap();
        assert!(read(&unsorted[..], "r").is_err());
        for cut in 0..buf.len() {
            assert!(read(&buf[..cut], "r").is_err(), "cut at {cut}");
        }
        let mut extra = buf.clone();
        extra.extend_from_slice(b"x\n");
        assert!(read(&extra[..], "r").is_err());
    }

    #[test]
    fn version_1_is_still_read() {
        let key = ObjectKey::of(b"a");
        let v1 = format!("coffer-refs 1\ndedup-max-age 60\nmax-run-time 7\n{key}\nend 1\n");
        let (header, keys) = read(v1.as_bytes(), "r").unwrap();
        assert_eq!((header.version, header.bounds), (1, BOUNDS));
        assert_eq!(header.metafile, None);
        assert_eq!(keys, [key]);
        let newer = v1.replace("coffer-refs 1", "coffer-refs 4");
        let err = read(newer.as_bytes(), "r").unwrap_err().to_string();
        assert!(err.contains("upgrade coffer"), "{err}");
    }

    #[test]
    fn chain_lines_are_checked() {
        let id = "0123456789abcdef0123456789abcdef";
        let h = ChunkHash::of(b"x");
        assert!(parse_chain(&format!("{id} 1 - -")).is_some());
        assert!(parse_chain(&format!("{id} 2 {h} {h}")).is_some());
        for bad in [
            format!("{id} 0 - -"),
            format!("{id} 2 - -"),
            format!("{id} 1 {h} {h}"),
            format!("{id} 2 {h} -"),
            format!("{} 1 - -", id.to_uppercase()),
            format!("{id}0 1 - -"),
            format!("{id} 1 - - x"),
            format!("{id} 99999999999999999999 {h} {h}"),
        ] {
            assert!(parse_chain(&bad).is_none(), "{bad}");
        }
        // Version 2 lists (no chain line) are still read; version 3 ones need it.
        let v2 = format!(
            "coffer-refs 2\nrun r\nhost h\nsource s\ndedup-max-age 1\nmax-run-time 1\n\
             metafile {h} 1 1\n\nend 0\n"
        );
        assert_eq!(read(v2.as_bytes(), "r").unwrap().0.chain, None);
        let v3 = v2.replace("coffer-refs 2", "coffer-refs 3");
        assert!(read(v3.as_bytes(), "r").is_err());
    }

    #[test]
    fn hostile_values_are_bounded_and_never_panic() {
        let huge = Bounds {
            dedup_max_age: Duration::from_secs(u64::MAX),
            max_run_time: Duration::from_secs(u64::MAX),
        };
        assert_eq!(huge.min_grace(), Duration::MAX);
        assert!(!huge.plausible());
        assert!(BOUNDS.plausible());
        let long = format!("coffer-refs 2\nrun {}\n", "a".repeat(10_000));
        assert!(read(long.as_bytes(), "r")
            .unwrap_err()
            .to_string()
            .contains("too long"));
        for bad in [
            "coffer-refs 2\nrun x\n\nend 0\n",
            "coffer-refs 1\ndedup-max-age -1\nmax-run-time 7\nend 0\n",
            "coffer-refs 1\ndedup-max-age 99999999999999999999\nmax-run-time 7\nend 0\n",
            "coffer-refs 1\ndedup-max-age 1\nmax-run-time 7\nend +0\n",
        ] {
            assert!(read(bad.as_bytes(), "r").is_err(), "{bad}");
        }
    }
}
