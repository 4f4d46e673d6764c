//! Decryption through the user's gpg-agent: `--key gpg:FINGERPRINT` and `--gpg-agent`.
//!
//! The secret key stays where it is (in the agent's key store, or on an OpenPGP card or
//! YubiKey the agent drives through scdaemon) and never enters coffer's memory: coffer
//! sends the agent an encrypted session key and gets the session key back, as `gpg -d`
//! does. Which secret keys exist, and their keygrips (the agent's names for keys), come
//! from `gpg --with-colons --with-keygrip --list-secret-keys`; their public halves (which
//! ECDH needs to unwrap what the agent returns) from `gpg --export`. So the key's
//! certificate must be in the GnuPG keyring, as it is wherever gpg itself could decrypt.
//!
//! The agent speaks the Assuan protocol on a Unix socket (`gpgconf --list-dirs
//! agent-socket`): `SETKEY <keygrip>`, then `PKDECRYPT`, answering the agent's `INQUIRE
//! CIPHERTEXT` with the ciphertext as a canonical S-expression, and reading back
//! `(5:value<len>:<bytes>)`: for RSA the PKCS#1 v1.5 block (padding removed here, unless
//! the agent said `S PADDING 0`), for ECDH the shared point, which the RFC 6637 key
//! derivation and AES key unwrap turn into the session key. One connection serves the
//! whole command; [`super::Decryptor`] caches session keys by their PKESK packets and
//! recovers each one once, so the agent (and a card, and its PIN prompt) is asked once
//! per pack and once per metafile, never per chunk.
//!
//! What the agent sends is bounded (lines, data) and checked like any other input.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use sequoia_openpgp as openpgp;

use openpgp::crypto::mpi;
use openpgp::crypto::SessionKey;
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::packet::Key;
use openpgp::parse::Parse;

use crate::error::{Error, Result};

/// Longest line accepted from the agent (Assuan's own limit is 1000 bytes).
const MAX_LINE: usize = 4096;

/// Most data accepted from the agent for one reply (an RSA-16384 block is 2 KiB).
const MAX_DATA: usize = 16 << 10;

/// Longest line sent: Assuan's limit, less room for "D " and the newline.
const SEND_LINE: usize = 990;

/// What the user asked for: `--key gpg:SELECTOR`, or `--gpg-agent` (every key).
fn key_path(selector: Option<&str>) -> PathBuf {
    PathBuf::from(match selector {
        Some(s) => format!("gpg:{s}"),
        None => "--gpg-agent".into(),
    })
}

/// A secret encryption key held by the agent, used through it.
#[derive(Clone)]
pub(crate) struct AgentKey {
    public: Key<PublicParts, UnspecifiedRole>,
    keygrip: String,
    agent: Arc<Mutex<Connection>>,
}

impl AgentKey {
    /// The key's public half.
    pub fn public(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.public
    }

    /// Why the last request to the agent failed, if it did (sequoia's PKESK decryption
    /// keeps only "it did not work"): no such key, a cancelled prompt, a lost connection.
    pub fn take_error(&self) -> Option<String> {
        self.agent.lock().ok().and_then(|mut c| c.last_error.take())
    }
}

impl openpgp::crypto::Decryptor for AgentKey {
    fn public(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.public
    }

    fn decrypt(
        &mut self,
        ciphertext: &mpi::Ciphertext,
        plaintext_len: Option<usize>,
    ) -> openpgp::Result<SessionKey> {
        let mut agent = self
            .agent
            .lock()
            .map_err(|_| anyhow_like("the gpg-agent connection was poisoned"))?;
        let result = agent.pkdecrypt(&self.keygrip, &self.public, ciphertext);
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                agent.last_error = Some(e.clone());
                return Err(anyhow_like(&e));
            }
        };
        drop(agent);
        // A value that does not unwrap is the message's fault (a modified PKESK packet),
        // not the agent's: it is not kept as the agent's error.
        finish(&self.public, ciphertext, plaintext_len, value).map_err(|e| anyhow_like(&e))
    }
}

fn anyhow_like(message: &str) -> openpgp::anyhow::Error {
    openpgp::anyhow::anyhow!("{message}")
}

/// What the agent returned for one PKDECRYPT: the value, and whether it still carries
/// PKCS#1 padding (`None`: the agent did not say).
struct Value {
    bytes: zeroize::Zeroizing<Vec<u8>>,
    padded: Option<bool>,
}

/// Turns the agent's value into the session key block PKESK decryption expects
/// (algorithm, key, checksum).
fn finish(
    public: &Key<PublicParts, UnspecifiedRole>,
    ciphertext: &mpi::Ciphertext,
    plaintext_len: Option<usize>,
    value: Value,
) -> std::result::Result<SessionKey, String> {
    match (public.mpis(), ciphertext) {
        (mpi::PublicKey::RSA { .. }, mpi::Ciphertext::RSA { .. }) => {
            let block = if value.padded == Some(false) {
                &value.bytes[..]
            } else {
                unpad_pkcs1(&value.bytes)?
            };
            Ok(SessionKey::from(block))
        }
        (mpi::PublicKey::ECDH { curve, .. }, mpi::Ciphertext::ECDH { .. }) => {
            let shared = shared_secret(&value.bytes, curve.field_size().unwrap_or(0))?;
            openpgp::crypto::ecdh::decrypt_unwrap(public, &shared.into(), ciphertext, plaintext_len)
                .map_err(|e| format!("unwrapping the session key the agent recovered: {e}"))
        }
        _ => Err(format!(
            "key {} uses {}, which coffer cannot decrypt through gpg-agent (RSA and ECDH \
             only)",
            public.keyid(),
            public.pk_algo()
        )),
    }
}

/// The shared secret of ECDH from the point the agent returns: the x coordinate, from
/// `0x40 || x` (Curve25519) or `0x04 || x || y` (the NIST and Brainpool curves).
fn shared_secret(point: &[u8], field: usize) -> std::result::Result<Vec<u8>, String> {
    match point.split_first() {
        Some((0x40, x)) if !x.is_empty() => Ok(x.to_vec()),
        Some((0x04, xy)) if xy.len() % 2 == 0 && !xy.is_empty() => {
            let x = &xy[..xy.len() / 2];
            if field != 0 && x.len() != field {
                return Err(format!(
                    "gpg-agent returned a point of {} bytes for a curve of {field}-byte \
                     coordinates",
                    point.len()
                ));
            }
            Ok(x.to_vec())
        }
        _ => Err("gpg-agent returned a shared point in an unknown encoding".into()),
    }
}

/// Removes PKCS#1 v1.5 encryption padding: `[0x00] 0x02 PS 0x00 M` with at least 8
/// non-zero bytes of PS (the agent leaves off the leading zero).
fn unpad_pkcs1(block: &[u8]) -> std::result::Result<&[u8], String> {
    let bad = || "gpg-agent returned an RSA block without PKCS#1 padding".to_string();
    let block = block.strip_prefix(&[0]).unwrap_or(block);
    let rest = block.strip_prefix(&[2]).ok_or_else(bad)?;
    let zero = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
    if zero < 8 {
        return Err(bad());
    }
    Ok(&rest[zero + 1..])
}

/// One connection to the agent.
struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The last failure, for the message (see [`AgentKey::take_error`]).
    last_error: Option<String>,
}

/// A reply to a command: the data lines it sent, and the `S PADDING` status.
#[derive(Default)]
struct Reply {
    data: zeroize::Zeroizing<Vec<u8>>,
    padding: Option<bool>,
}

impl Connection {
    /// Connects to the agent of the current GnuPG home (`$GNUPGHOME`, else ~/.gnupg),
    /// starting it if it is not running, and tells it where to show a PIN or passphrase
    /// prompt (this terminal, or this X display), as gpg does.
    fn open() -> Result<Connection> {
        let socket = gpgconf(&["--list-dirs", "agent-socket"])?;
        let socket = PathBuf::from(socket.trim());
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(_) => {
                gpgconf(&["--launch", "gpg-agent"])?;
                UnixStream::connect(&socket).map_err(|e| {
                    usage(format!(
                        "cannot reach gpg-agent at {}: {e} (start it with `gpgconf --launch \
                         gpg-agent`)",
                        socket.display()
                    ))
                })?
            }
        };
        let writer = stream
            .try_clone()
            .map_err(|e| Error::io("the gpg-agent socket", e))?;
        let mut c = Connection {
            reader: BufReader::new(stream),
            writer,
            last_error: None,
        };
        c.expect_ok("the agent's greeting").map_err(usage)?;
        for option in session_options() {
            // An option this agent does not know is no reason to stop.
            let _ = c.command(&option, None);
        }
        Ok(c)
    }

    /// Asks the agent to decrypt `ciphertext` with the key `keygrip`.
    fn pkdecrypt(
        &mut self,
        keygrip: &str,
        public: &Key<PublicParts, UnspecifiedRole>,
        ciphertext: &mpi::Ciphertext,
    ) -> std::result::Result<Value, String> {
        let sexp = ciphertext_sexp(ciphertext)?;
        self.command(&format!("SETKEY {keygrip}"), None)?;
        let desc = format!(
            "coffer needs the secret key {} to decrypt a backup.",
            public.fingerprint()
        );
        self.command(&format!("SETKEYDESC {}", plus_escape(&desc)), None)?;
        let reply = self.command("PKDECRYPT", Some(&sexp))?;
        let bytes = value_of(&reply.data)?;
        Ok(Value {
            bytes: zeroize::Zeroizing::new(bytes.to_vec()),
            padded: reply.padding,
        })
    }

    /// Sends `line` and reads the reply up to OK or ERR, answering the agent's inquiry
    /// for the ciphertext with `inquired`, and any other inquiry with nothing.
    fn command(
        &mut self,
        line: &str,
        inquired: Option<&[u8]>,
    ) -> std::result::Result<Reply, String> {
        self.send(line.as_bytes())?;
        let mut reply = Reply::default();
        loop {
            let l = self.line()?;
            if l == b"OK" || l.starts_with(b"OK ") {
                return Ok(reply);
            }
            if let Some(rest) = l.strip_prefix(b"ERR ") {
                return Err(agent_error(rest));
            }
            if let Some(d) = l.strip_prefix(b"D ") {
                unescape_into(d, &mut reply.data)?;
                if reply.data.len() > MAX_DATA {
                    return Err("gpg-agent sent more data than any key needs".into());
                }
            } else if let Some(s) = l.strip_prefix(b"S ") {
                match s {
                    b"PADDING 0" => reply.padding = Some(false),
                    b"PADDING 1" => reply.padding = Some(true),
                    _ => {}
                }
            } else if let Some(what) = l.strip_prefix(b"INQUIRE ") {
                if let (Some(b"CIPHERTEXT"), Some(data)) =
                    (what.split(|&b| b == b' ').next(), inquired)
                {
                    for part in escape_data(data) {
                        self.send(&part)?;
                    }
                }
                self.send(b"END")?;
            } else if !(l.starts_with(b"#") || l.is_empty()) {
                return Err(format!(
                    "gpg-agent sent an unexpected line: {}",
                    crate::text::escape(&l[..l.len().min(80)])
                ));
            }
        }
    }

    fn expect_ok(&mut self, what: &str) -> std::result::Result<(), String> {
        let l = self.line()?;
        if l == b"OK" || l.starts_with(b"OK ") {
            Ok(())
        } else {
            Err(format!(
                "gpg-agent did not answer {what} as expected: {}",
                crate::text::escape(&l[..l.len().min(80)])
            ))
        }
    }

    fn send(&mut self, line: &[u8]) -> std::result::Result<(), String> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.writer
            .write_all(&buf)
            .map_err(|e| format!("writing to gpg-agent: {e}"))
    }

    /// One line from the agent, without its newline; bounded.
    fn line(&mut self) -> std::result::Result<Vec<u8>, String> {
        let mut l = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut l)
            .map_err(|e| format!("reading from gpg-agent: {e}"))?;
        if n == 0 {
            return Err("gpg-agent closed the connection".into());
        }
        if l.pop() != Some(b'\n') {
            return Err("gpg-agent sent a line longer than the protocol allows".into());
        }
        Ok(l)
    }
}

/// The agent's `ERR code description` as a message, with what to do for the common ones.
fn agent_error(rest: &[u8]) -> String {
    let text = String::from_utf8_lossy(rest);
    let (code, desc) = text.split_once(' ').unwrap_or((&text, ""));
    let desc = desc.trim();
    // The low 16 bits are the error code (the rest names the source).
    let hint = match code.parse::<u32>().map(|c| c & 0xFFFF) {
        Ok(17) => {
            ": the agent has no such secret key (for a card: insert it and run \
                   `gpg --card-status`)"
        }
        Ok(99) | Ok(198) => ": the PIN or passphrase prompt was cancelled",
        Ok(11) => ": wrong PIN or passphrase",
        Ok(85) => {
            ": no prompt could be shown (set GPG_TTY=$(tty), or run where a pinentry \
                   can start)"
        }
        _ => "",
    };
    format!("gpg-agent: {desc}{hint}")
}

/// The `OPTION` lines that tell the agent where a prompt can appear.
fn session_options() -> Vec<String> {
    let mut options = Vec::new();
    let tty = std::env::var("GPG_TTY")
        .ok()
        .or_else(|| {
            std::fs::read_link("/proc/self/fd/0")
                .ok()
                .map(|p| p.display().to_string())
        })
        .filter(|t| t.starts_with("/dev/") && !t.contains(['\n', '\r', ' ']));
    if let Some(tty) = tty {
        options.push(format!("OPTION ttyname={tty}"));
    }
    for (var, option) in [
        ("TERM", "ttytype"),
        ("DISPLAY", "display"),
        ("XAUTHORITY", "xauthority"),
    ] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() && !v.contains(['\n', '\r', ' ']) {
                options.push(format!("OPTION {option}={v}"));
            }
        }
    }
    options
}

/// The ciphertext as the agent takes it, as gpg builds it: `(enc-val(rsa(a M)))` or
/// `(enc-val(ecdh(s W)(e E)))` (W: the wrapped key with its length octet).
fn ciphertext_sexp(c: &mpi::Ciphertext) -> std::result::Result<Vec<u8>, String> {
    let mut out = b"(7:enc-val".to_vec();
    match c {
        mpi::Ciphertext::RSA { c } => {
            out.extend_from_slice(b"(3:rsa(1:a");
            atom(&mut out, &signed(c.value()));
            out.extend_from_slice(b"))");
        }
        mpi::Ciphertext::ECDH { e, key } => {
            let mut wrapped = Vec::with_capacity(key.len() + 1);
            wrapped.push(u8::try_from(key.len()).map_err(|_| "an oversized wrapped key")?);
            wrapped.extend_from_slice(key);
            out.extend_from_slice(b"(4:ecdh(1:s");
            atom(&mut out, &wrapped);
            out.extend_from_slice(b")(1:e");
            atom(&mut out, e.value());
            out.extend_from_slice(b"))");
        }
        _ => return Err("a session key encrypted with an algorithm other than RSA or ECDH".into()),
    }
    out.push(b')');
    Ok(out)
}

/// A canonical S-expression atom: `<len>:<bytes>`.
fn atom(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// An unsigned integer as libgcrypt reads it: a leading zero when the top bit is set,
/// else it would be negative.
fn signed(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|&b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(v);
    out
}

/// The bytes of `(5:value<len>:<bytes>)`, which the agent may follow with a NUL.
fn value_of(data: &[u8]) -> std::result::Result<&[u8], String> {
    let bad = || "gpg-agent returned something other than a decrypted value".to_string();
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    let rest = data.strip_prefix(b"(5:value").ok_or_else(bad)?;
    let colon = rest
        .iter()
        .take(6)
        .position(|&b| b == b':')
        .ok_or_else(bad)?;
    let len: usize = std::str::from_utf8(&rest[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = &rest[colon + 1..];
    if body.len() != len.checked_add(1).ok_or_else(bad)? || body[len] != b')' {
        return Err(bad());
    }
    Ok(&body[..len])
}

/// Assuan's escaping of data lines: `%`, CR and LF as `%XX`, in lines that fit.
fn escape_data(data: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut line = b"D ".to_vec();
    for &b in data {
        if line.len() + 3 > SEND_LINE {
            lines.push(std::mem::replace(&mut line, b"D ".to_vec()));
        }
        match b {
            b'%' | b'\r' | b'\n' => line.extend_from_slice(format!("%{b:02X}").as_bytes()),
            _ => line.push(b),
        }
    }
    if line.len() > 2 {
        lines.push(line);
    }
    lines
}

/// Undoes Assuan's `%XX` escaping of a data line into `out`.
fn unescape_into(line: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'%' {
            let hex = line
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("gpg-agent sent a malformed escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    Ok(())
}

/// The escaping of a command's text argument (SETKEYDESC): `+` for a space, `%XX` for
/// `+`, `%`, `"` and control characters.
fn plus_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' ' => out.push('+'),
            b'+' | b'%' | b'"' | 0..=0x1F | 0x7F => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

fn usage(message: String) -> Error {
    Error::Usage(message)
}

/// Runs `gpgconf` with `args` and returns its standard output.
fn gpgconf(args: &[&str]) -> Result<String> {
    run("gpgconf", args).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs a GnuPG program; its failure names it and shows the start of what it said.
fn run(program: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            usage(format!(
                "cannot run {program} ({e}): decrypting through gpg-agent needs GnuPG \
                 installed (Debian: apt install gnupg)"
            ))
        })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(usage(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            said.lines().take(3).collect::<Vec<_>>().join("; ")
        )));
    }
    Ok(out.stdout)
}

/// An encryption subkey (or primary key) of the keyring with a secret half the agent
/// holds or can reach (a card's key is a stub the agent diverts to the card).
#[derive(Debug, PartialEq)]
struct Listed {
    fingerprint: String,
    keygrip: String,
}

/// Reads `gpg --with-colons --with-keygrip --list-secret-keys`: every key that can
/// encrypt (capability `e`), expired or revoked ones too (old backups must stay
/// restorable), whose secret is present or on a card; a key whose secret is missing
/// (`#`) is left out.
fn parse_colons(text: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut current: Option<(bool, Option<String>)> = None; // (usable, fingerprint)
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        match f.first().copied() {
            Some("sec") | Some("ssb") => {
                let caps = f.get(11).copied().unwrap_or("");
                let secret = f.get(14).copied().unwrap_or("");
                let usable = caps.contains('e') && secret != "#";
                current = Some((usable, None));
            }
            Some("fpr") => {
                if let Some((_, fpr @ None)) = &mut current {
                    *fpr = f.get(9).map(|s| s.to_string());
                }
            }
            Some("grp") => {
                if let Some((true, Some(fpr))) = current.take() {
                    if let Some(grip) = f.get(9).filter(|g| is_hex(g, 40)) {
                        out.push(Listed {
                            fingerprint: fpr,
                            keygrip: grip.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The secret encryption keys the agent can use: those of the certificate(s) `selector`
/// names (`--key gpg:FINGERPRINT`), or of every certificate with a secret key in the
/// GnuPG keyring (`selector` `None`, `--gpg-agent`). Fails, saying what to do, when
/// there are none or the agent cannot be reached.
pub(crate) fn load(selector: Option<&str>) -> Result<Vec<AgentKey>> {
    let path = key_path(selector);
    let key_err = |reason: String| Error::Key {
        path: path.clone(),
        reason,
    };
    if let Some(s) = selector {
        if s.is_empty() || s.starts_with('-') || s.contains(['\n', '\0']) {
            return Err(key_err(
                "give the key's fingerprint after gpg:, e.g. --key gpg:0123456789ABCDEF0123456789ABCDEF01234567".into(),
            ));
        }
    }
    let mut args = vec![
        "--batch",
        "--with-colons",
        "--with-keygrip",
        "--list-secret-keys",
    ];
    if let Some(s) = selector {
        args.extend(["--", s]);
    }
    let listing = run("gpg", &args).map_err(|e| key_err(e.to_string()))?;
    let listed = parse_colons(&String::from_utf8_lossy(&listing));
    if listed.is_empty() {
        return Err(key_err(match selector {
            Some(s) => format!(
                "GnuPG has no secret encryption key for {s:?} (`gpg --list-secret-keys {s}` \
                 shows what it has; a card's keys appear once `gpg --card-status` has seen \
                 the card)"
            ),
            None => "the GnuPG keyring holds no secret encryption key (`gpg \
                     --list-secret-keys`)"
                .into(),
        }));
    }
    let mut export = vec!["--batch", "--export", "--"];
    export.extend(listed.iter().map(|l| l.fingerprint.as_str()));
    let certs = run("gpg", &export).map_err(|e| key_err(e.to_string()))?;
    let agent = Arc::new(Mutex::new(
        Connection::open().map_err(|e| key_err(e.to_string()))?,
    ));
    let mut keys = Vec::new();
    let parser = openpgp::cert::CertParser::from_bytes(&certs)
        .map_err(|e| key_err(format!("reading what gpg --export gave: {e}")))?;
    for cert in parser {
        let cert = cert.map_err(|e| key_err(format!("reading what gpg --export gave: {e}")))?;
        for ka in cert.keys() {
            let fpr = ka.key().fingerprint().to_hex();
            if let Some(l) = listed
                .iter()
                .find(|l| l.fingerprint.eq_ignore_ascii_case(&fpr))
            {
                keys.push(AgentKey {
                    public: ka.key().clone().role_into_unspecified(),
                    keygrip: l.keygrip.clone(),
                    agent: agent.clone(),
                });
            }
        }
    }
    if keys.is_empty() {
        return Err(key_err(
            "gpg listed secret keys but exported no matching certificate".into(),
        ));
    }
    let grips: Vec<&str> = keys.iter().map(|k| k.keygrip.as_str()).collect();
    let have = agent
        .lock()
        .map_err(|_| key_err("the gpg-agent connection was poisoned".into()))?
        .command(&format!("HAVEKEY {}", grips.join(" ")), None);
    if let Err(e) = have {
        return Err(key_err(format!(
            "gpg-agent holds none of the secret keys gpg lists ({e})"
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_listing_keeps_encryption_keys_with_a_secret() {
        let text = "\
sec:u:255:22:5DFBBCC0627AEB74:1796620368:::u:::scESC:::+::ed25519:::0:
fpr:::::::::90619E258554E3FF8A26FF1F5DFBBCC0627AEB74:
grp:::::::::79B5BAC50874BC8A5785E5DDA7CA9002725D4C55:
uid:u::::1796620368::0B98::Test <t@x>::::::::::0:
ssb:u:255:18:B045E6916654FAEB:1796620368::::::e:::+::cv25519::
fpr:::::::::E3B70E3FB1D203BEF545F485B045E6916654FAEB:
grp:::::::::7AA5B7186D751093E9DFAD07C0A83C938B9AFA4C:
ssb:e:2048:1:4367A30218F25F83:1796620368::::::e:::#:::23:
fpr:::::::::9EF02C3ED3D520D79D2C25574367A30218F25F83:
grp:::::::::747F8A66AC85B3A1C4A93532C59D6249C0FAD5FD:
ssb:e:2048:1:1111111111111111:1796620368::::::e:::D2760001240103040006:::23:
fpr:::::::::1111111111111111111111111111111111111111:
grp:::::::::2222222222222222222222222222222222222222:
";
        assert_eq!(
            parse_colons(text),
            vec![
                Listed {
                    fingerprint: "E3B70E3FB1D203BEF545F485B045E6916654FAEB".into(),
                    keygrip: "7AA5B7186D751093E9DFAD07C0A83C938B9AFA4C".into(),
                },
                // expired, on a card: kept (old backups must stay restorable)
                Listed {
                    fingerprint: "1111111111111111111111111111111111111111".into(),
                    keygrip: "2222222222222222222222222222222222222222".into(),
                },
            ]
        );
        assert!(parse_colons("sec:u:::::\ngrp:::::::::nothex:\n").is_empty());
    }

    #[test]
    fn values_the_agent_returns_are_read_strictly() {
        assert_eq!(value_of(b"(5:value3:abc)").unwrap(), b"abc");
        assert_eq!(value_of(b"(5:value3:abc)\0").unwrap(), b"abc");
        for bad in [
            &b"(5:value4:abc)"[..],
            b"(5:value2:abc)",
            b"(5:value3:abc",
            b"(5:value99999999999999999999:a)",
            b"(4:vals3:abc)",
            b"",
            b"(5:value:abc)",
        ] {
            assert!(value_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pkcs1_padding_is_removed_and_checked() {
        let mut block = vec![2u8];
        block.extend([7u8; 8]);
        block.push(0);
        block.extend(b"key");
        assert_eq!(unpad_pkcs1(&block).unwrap(), b"key");
        let mut leading = vec![0u8];
        leading.extend(&block);
        assert_eq!(unpad_pkcs1(&leading).unwrap(), b"key");
        assert!(unpad_pkcs1(&block[1..]).is_err(), "no block type");
        let mut short = vec![2u8, 1, 2, 0];
        short.extend(b"key");
        assert!(unpad_pkcs1(&short).is_err(), "padding under 8 bytes");
        assert!(
            unpad_pkcs1(&[2, 5, 5, 5, 5, 5, 5, 5, 5, 5]).is_err(),
            "no separator"
        );
    }

    #[test]
    fn shared_points_give_their_x_coordinate() {
        let mut cv = vec![0x40];
        cv.extend([9u8; 32]);
        assert_eq!(shared_secret(&cv, 32).unwrap(), vec![9u8; 32]);
        let mut p256 = vec![0x04];
        p256.extend([1u8; 32]);
        p256.extend([2u8; 32]);
        assert_eq!(shared_secret(&p256, 32).unwrap(), vec![1u8; 32]);
        assert!(shared_secret(&p256[..40], 32).is_err());
        assert!(shared_secret(&[0x02, 1, 2], 32).is_err());
        assert!(shared_secret(&[], 32).is_err());
    }

    #[test]
    fn assuan_escaping_round_trips_and_keeps_lines_short() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let lines = escape_data(&data);
        assert!(lines.len() > 1);
        let mut back = Vec::new();
        for l in &lines {
            assert!(l.len() <= SEND_LINE, "{}", l.len());
            assert!(!l.contains(&b'\n') && !l.contains(&b'\r'));
            unescape_into(l.strip_prefix(b"D ").unwrap(), &mut back).unwrap();
        }
        assert_eq!(back, data);
        assert!(unescape_into(b"%4", &mut Vec::new()).is_err());
        assert!(unescape_into(b"%zz", &mut Vec::new()).is_err());
        assert_eq!(plus_escape("a b+c%\n"), "a+b%2Bc%25%0A");
    }

    #[test]
    fn agent_errors_say_what_to_do() {
        assert!(agent_error(b"67108881 No secret key <GPG Agent>").contains("card"));
        assert!(agent_error(b"83886179 Operation cancelled <Pinentry>").contains("cancelled"));
        assert!(agent_error(b"junk").starts_with("gpg-agent: "));
    }
}
