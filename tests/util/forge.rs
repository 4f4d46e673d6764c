//! The attacker's kit: runs, packs and messages made by hand, with the real `gpg` and
//! the recipients' *public* key only, as a broken-into host or anyone with write access
//! to the target could make them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{clean_command, Fixture, HOST, SOURCE};

/// Percent-encodes a field as docs/FORMAT.md section 4.5 says.
pub fn field(bytes: &[u8]) -> String {
    if bytes == b"-" {
        return "%2D".into();
    }
    let mut out = String::new();
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// BLAKE3 in hex.
pub fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Runs gpg on `input` with a throwaway home; returns its output (panics on failure).
fn gpg(home: &Path, args: &[&OsStr], input: &[u8]) -> Vec<u8> {
    let mut cmd = clean_command("gpg", home);
    cmd.env("GNUPGHOME", home)
        .args(["--batch", "--no-tty", "--quiet", "--yes"])
        .args(args)
        .write_stdin(input.to_vec());
    let out = cmd.output().expect("gpg starts");
    assert!(
        out.status.success(),
        "gpg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Makes messages with gpg from the fixture's public key alone.
pub struct Forger<'a> {
    pub fx: &'a Fixture,
    home: tempfile::TempDir,
}

impl<'a> Forger<'a> {
    pub fn new(fx: &'a Fixture) -> Self {
        let home = tempfile::Builder::new()
            .prefix("coffer-forger-")
            .tempdir()
            .unwrap();
        Forger { fx, home }
    }

    fn encrypt(&self, extra: &[&str], data: &[u8]) -> Vec<u8> {
        let mut args: Vec<&OsStr> = vec![
            "--encrypt".as_ref(),
            "--recipient-file".as_ref(),
            self.fx.public_key.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        gpg(self.home.path(), &args, data)
    }

    /// PKESK + SEIPD(literal) + MDC: the shape of a genuine chunk message.
    pub fn chunk(&self, data: &[u8]) -> Vec<u8> {
        self.encrypt(&["-z", "0"], data)
    }

    /// PKESK + SEIPD(compressed(literal)) + MDC: the shape of a genuine metafile, but
    /// compression is not allowed in a chunk.
    pub fn compressed(&self, data: &[u8]) -> Vec<u8> {
        self.encrypt(&["--compress-algo", "zip", "-z", "9"], data)
    }

    /// A genuine-looking metafile (encrypted and compressed, as coffer writes it).
    pub fn metafile(&self, text: &[u8]) -> Vec<u8> {
        self.encrypt(&["--compress-algo", "zip", "-z", "6"], text)
    }

    /// An unencrypted literal data packet (`gpg --store`): no key needed at all.
    pub fn plaintext(&self, data: &[u8]) -> Vec<u8> {
        gpg(
            self.home.path(),
            &["--store".as_ref(), "-z".as_ref(), "0".as_ref()],
            data,
        )
    }

    /// Stores a pack made of `messages` on the fixture's target; returns its name and
    /// each message's (offset, length).
    pub fn plant_pack(&self, messages: &[Vec<u8>]) -> (String, Vec<(u64, u64)>) {
        let mut pack = Vec::new();
        let mut at = Vec::new();
        for m in messages {
            at.push((pack.len() as u64, m.len() as u64));
            pack.extend_from_slice(m);
        }
        let name = b3(&pack);
        let dir = self.fx.target.join("data").join(&name[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), &pack).unwrap();
        (name, at)
    }

    /// Stores a run's metafile and object list under `runs/<HOST>/<SOURCE>/<id>`.
    pub fn plant_run(&self, id: &str, meta: &[u8], refs: &[u8]) {
        let dir = self.fx.target.join("runs").join(HOST).join(SOURCE);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{id}.meta")), meta).unwrap();
        std::fs::write(dir.join(format!("{id}.refs")), refs).unwrap();
    }
}

/// A metafile's text, built entry by entry (docs/FORMAT.md section 4).
pub struct Listing {
    text: String,
    entries: u64,
    bytes: u64,
}

/// `MODE UID GID USER GROUP MTIME` for a forged entry.
pub fn meta(mode: u32, uid: u32) -> String {
    format!("{mode:o} {uid} {uid} - - 1700000000.000000000")
}

impl Listing {
    /// The header of a run `id` of the fixture's host and source.
    pub fn new(id: &str) -> Self {
        let text = format!(
            "coffer-metafile 1\nhost {HOST}\nsource {SOURCE}\nrun {id}\nroot /forged\n\
             started 2026-01-01T00:00:00+00:00\nchunker fastcdc-2020%204096%2016384%2065536\n\n\
             dir . {}\n",
            meta(0o755, 0)
        );
        Listing {
            text,
            entries: 1,
            bytes: 0,
        }
    }

    /// Any record line, counted as an entry.
    pub fn record(&mut self, line: &str) -> &mut Self {
        self.text.push_str(line);
        self.text.push('\n');
        self.entries += 1;
        self
    }

    /// A file whose content is `data`, stored as one chunk at (`pack`, `offset`,
    /// `length`) with encoding `encoding`.
    pub fn file(
        &mut self,
        path: &[u8],
        meta: &str,
        data: &[u8],
        chunk: (&str, u64, u64),
        encoding: &str,
    ) -> &mut Self {
        let (pack, offset, length) = chunk;
        let hash = b3(data);
        let n = data.len();
        self.record(&format!("file {} {meta} {n} {hash} 1", field(path)));
        self.text.push_str(&format!(
            "chunk {pack} {offset} {length} {n} {hash} {encoding}\n"
        ));
        self.bytes += n as u64;
        self
    }

    /// A text line as is (not counted): for malformed listings.
    pub fn raw(&mut self, line: &str) -> &mut Self {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// The text with its `end` line.
    pub fn finish(&self) -> Vec<u8> {
        format!("{}end {} {}\n", self.text, self.entries, self.bytes).into_bytes()
    }
}

/// A well-formed object list naming `packs` (sorted here).
pub fn refs(packs: &[&str]) -> Vec<u8> {
    let mut packs: Vec<&str> = packs.to_vec();
    packs.sort();
    packs.dedup();
    let mut t = "coffer-refs 1\ndedup-max-age 604800\nmax-run-time 604800\n".to_string();
    for p in &packs {
        t += p;
        t.push('\n');
    }
    t += &format!("end {}\n", packs.len());
    t.into_bytes()
}

/// A run id whose time is `secs` after the epoch.
pub fn run_id(secs: i64, random: &str) -> String {
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap();
    format!("{}-{random}", t.format("%Y%m%dT%H%M%SZ"))
}

/// Bytes of `path` as an `OsStr`.
pub fn os_path(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}
