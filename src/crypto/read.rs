//! Reading what coffer stored: strict parsers for the two message shapes of
//! docs/FORMAT.md section 2, decrypted with the session keys the secret keys recover.
//!
//! Anyone who can write to a target can store any bytes under any name, and anyone who
//! holds a recipient's *public* key can encrypt. So nothing here trusts its input:
//!
//! - a **chunk message** must be exactly PKESK packets, then one SEIPD v1 packet holding
//!   one literal data packet and the MDC, and nothing after it;
//! - a **metafile** must be exactly PKESK packets, then one SEIPD v1 packet holding one
//!   compressed data packet (algorithm 1, DEFLATE) holding one literal data packet, then
//!   the MDC, and nothing after it.
//!
//! Anything else is refused before its content is used: a bare (unencrypted) literal
//! packet, a compressed packet outside the encryption, SED without MDC, AEAD, signatures,
//! compression inside a chunk, nested compression, a second literal packet, trailing
//! data. Every length is checked before it is used. A chunk's plaintext is never longer
//! than its message (CFB keeps lengths and chunks hold no compression), and the metafile
//! is streamed, its DEFLATE output handed on only as fast as the consumer reads it (the
//! metafile reader bounds its lines), so memory stays flat whatever the input claims.
//! The MDC of the streamed metafile is checked when its last byte has been read: the
//! stream reports end of input only after the MDC and the structure checked out.

use std::io::{self, BufRead, Read};

use sequoia_openpgp as openpgp;

use openpgp::crypto::symmetric::{BlockCipherMode, Decryptor as Cfb, UnpaddingMode};
use openpgp::crypto::SessionKey;
use openpgp::packet::PKESK;
use openpgp::parse::{buffered_reader, Parse};
use openpgp::KeyHandle;
use sha1::Digest;

use super::{Decryptor, MDC_HEADER, SYMMETRIC};
use crate::error::{Error, Result};

/// At most this many PKESK packets (recipient keys) per message.
const MAX_PKESKS: usize = 256;
/// A PKESK packet's body is at most this long (an RSA-16384 key needs about 2 KiB).
const MAX_PKESK_LEN: usize = 16 << 10;
/// The SEIPD plaintext's random prefix (16 bytes and a repetition of the last two).
const PREFIX: usize = 18;
/// The MDC packet: header and SHA-1.
const MDC_LEN: usize = 22;

/// A packet's body length, as its header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    /// The whole body, this many bytes.
    Definite(usize),
    /// A partial body length: this many bytes, then another length.
    Partial(usize),
    /// An old-format indeterminate length: the body runs to the end of its container.
    Indeterminate,
}

/// Why a message was refused (becomes [`Error::Corrupt`] or an I/O error).
fn refused(reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

/// Parses a new-format body length from `next`; `partial_ok` says whether the packet
/// type may use partial lengths (RFC 4880 section 4.2.2.4: only data packets may).
fn read_len(next: &mut impl FnMut() -> io::Result<u8>, partial_ok: bool) -> io::Result<Len> {
    let first = next()?;
    Ok(match first {
        0..=191 => Len::Definite(first as usize),
        192..=223 => {
            let second = next()?;
            Len::Definite(((first as usize - 192) << 8) + second as usize + 192)
        }
        255 => {
            let mut n = 0usize;
            for _ in 0..4 {
                n = (n << 8) | next()? as usize;
            }
            Len::Definite(n)
        }
        _ if partial_ok => Len::Partial(1 << (first & 0x1F)),
        _ => {
            return Err(refused(
                "a partial body length on a packet that may not have one",
            ))
        }
    })
}

/// A packet header's tag and length. coffer writes new-format headers; GnuPG writes
/// old-format ones for some packets (RFC 4880 section 4.2.1), which are read too.
/// `partial_ok(tag)` says whether the packet type may have a partial or indeterminate
/// length (only data packets may).
fn read_header(
    next: &mut impl FnMut() -> io::Result<u8>,
    partial_ok: impl Fn(u8) -> bool,
) -> io::Result<(u8, Len)> {
    let octet = next()?;
    if octet & 0x80 == 0 {
        return Err(refused(format!(
            "octet {octet:#04x} is not a packet header: not an OpenPGP message (plain text \
             is not encrypted)"
        )));
    }
    if octet & 0x40 != 0 {
        let tag = octet & 0x3F;
        return Ok((tag, read_len(next, partial_ok(tag))?));
    }
    let tag = (octet >> 2) & 0x0F;
    let mut be = |n: usize| -> io::Result<usize> {
        let mut v = 0usize;
        for _ in 0..n {
            v = (v << 8) | next()? as usize;
        }
        Ok(v)
    };
    let len = match octet & 3 {
        0 => Len::Definite(be(1)?),
        1 => Len::Definite(be(2)?),
        2 => Len::Definite(be(4)?),
        _ if partial_ok(tag) => Len::Indeterminate,
        _ => {
            return Err(refused(
                "an indeterminate length on a packet that may not have one",
            ))
        }
    };
    Ok((tag, len))
}

/// Data packets: compressed, literal, SEIPD.
fn is_data(tag: u8) -> bool {
    matches!(tag, 8 | 11 | 18)
}

/// Names a packet tag for messages.
fn tag_name(tag: u8) -> String {
    match tag {
        1 => "a PKESK packet".into(),
        2 => "a signature packet".into(),
        3 => "an SKESK (password) packet".into(),
        4 => "a one-pass signature packet".into(),
        8 => "a compressed data packet".into(),
        9 => "an SED packet (encryption without integrity protection)".into(),
        10 => "a marker packet".into(),
        11 => "a literal data packet".into(),
        18 => "an SEIPD packet".into(),
        19 => "an MDC packet".into(),
        20 => "an AEAD packet".into(),
        t => format!("a packet with tag {t}"),
    }
}

/// Refuses a packet other than `want` where `want` must come.
fn expect_tag(tag: u8, want: u8, place: &str) -> io::Result<()> {
    if tag == want {
        return Ok(());
    }
    let why = if tag == 11 && place == "the message" {
        " (plaintext: not encrypted)".to_string()
    } else {
        String::new()
    };
    Err(refused(format!(
        "{} where {place} must have {}{why}",
        tag_name(tag),
        tag_name(want)
    )))
}

// ---------------------------------------------------------------------------------------
// Chunk messages, held in memory

/// A cursor over a message in memory.
struct Slice<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Slice<'a> {
    fn byte(&mut self) -> io::Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| refused("truncated: a packet header runs past the end"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| refused("truncated: a packet runs past the end"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// A packet header: its tag and first length.
    fn header(&mut self) -> io::Result<(u8, Len)> {
        read_header(&mut || self.byte(), is_data)
    }

    /// A packet's whole body, gathering partial parts.
    fn body(&mut self, first: Len) -> io::Result<std::borrow::Cow<'a, [u8]>> {
        match first {
            Len::Definite(n) => Ok(self.take(n)?.into()),
            Len::Indeterminate => Ok(self.take(self.buf.len() - self.pos)?.into()),
            Len::Partial(n) => {
                let mut out = self.take(n)?.to_vec();
                loop {
                    match read_len(&mut || self.byte(), true)? {
                        Len::Partial(n) => out.extend_from_slice(self.take(n)?),
                        Len::Definite(n) => {
                            out.extend_from_slice(self.take(n)?);
                            return Ok(out.into());
                        }
                        Len::Indeterminate => return Err(refused("bad partial length")),
                    }
                }
            }
        }
    }
}

/// The PKESK packets that start a message: (their raw bytes, parsed), then the first
/// length of the SEIPD packet that must follow them.
fn pkesks_from_slice(s: &mut Slice<'_>) -> io::Result<(usize, Vec<PKESK>, Len)> {
    let mut pkesks = Vec::new();
    loop {
        let start = s.pos;
        let (tag, len) = s.header()?;
        if tag == 18 && !pkesks.is_empty() {
            return Ok((start, pkesks, len));
        }
        expect_tag(tag, 1, "the message")?;
        pkesks.push(parse_pkesk(len, |n| s.take(n).map(<[u8]>::to_vec))?);
    }
}

/// Parses one PKESK body of length `len`, read by `take`.
fn parse_pkesk(len: Len, take: impl FnOnce(usize) -> io::Result<Vec<u8>>) -> io::Result<PKESK> {
    let Len::Definite(n) = len else {
        return Err(refused("a PKESK packet with a partial length"));
    };
    if n > MAX_PKESK_LEN {
        return Err(refused(format!("a PKESK packet of {n} bytes")));
    }
    let body = take(n)?;
    let pkesk = PKESK::from_bytes(&body).map_err(|e| refused(format!("bad PKESK packet: {e}")))?;
    if !matches!(pkesk, PKESK::V3(_)) {
        return Err(refused("a PKESK packet of a version other than 3"));
    }
    Ok(pkesk)
}

/// Checks the SEIPD plaintext's frame (prefix and MDC) and returns what lies between.
fn unframe(plain: &[u8]) -> io::Result<&[u8]> {
    if plain.len() < PREFIX + MDC_LEN {
        return Err(refused("truncated: the encrypted packet is too short"));
    }
    let (body, mdc) = plain.split_at(plain.len() - MDC_LEN);
    let mut sha = sha1::Sha1::new();
    sha.update(body);
    sha.update(MDC_HEADER);
    if mdc[..2] != MDC_HEADER || sha.finalize()[..] != mdc[2..] {
        return Err(refused(
            "the integrity check (MDC) failed: the message was modified or damaged",
        ));
    }
    Ok(&body[PREFIX..])
}

/// The literal packet that must fill `inner` exactly; returns the data's range in it.
fn literal_in(inner: &[u8]) -> io::Result<std::borrow::Cow<'_, [u8]>> {
    let mut s = Slice { buf: inner, pos: 0 };
    let (tag, len) = s.header()?;
    expect_tag(tag, 11, "a chunk message")?;
    let body = s.body(len)?;
    if !s.at_end() {
        let (tag, _) = s.header()?;
        return Err(refused(format!(
            "{} after the literal data packet",
            tag_name(tag)
        )));
    }
    let start = literal_fields_len(&body)?;
    Ok(match body {
        std::borrow::Cow::Borrowed(b) => b[start..].into(),
        std::borrow::Cow::Owned(mut v) => {
            v.drain(..start);
            v.into()
        }
    })
}

/// Checks a literal packet's format octet: `b` (binary), as coffer writes it.
fn check_format(format: u8) -> io::Result<()> {
    if format != b'b' {
        return Err(refused(format!(
            "a literal data packet of format {:?} (coffer writes 'b')",
            format as char
        )));
    }
    Ok(())
}

/// The length of a literal packet's fields before its data: format, file name length,
/// file name, date.
fn literal_fields_len(body: &[u8]) -> io::Result<usize> {
    let short = || refused("truncated literal data packet");
    check_format(*body.first().ok_or_else(short)?)?;
    let len = 1 + 1 + *body.get(1).ok_or_else(short)? as usize + 4;
    if body.len() < len {
        return Err(short());
    }
    Ok(len)
}

/// OpenPGP CFB decryption (zero IV, no resynchronisation) of `ciphertext` into `out`.
fn cfb_decrypt(sk: &SessionKey, ciphertext: &[u8], out: &mut [u8]) -> io::Result<()> {
    let source = buffered_reader::Memory::with_cookie(ciphertext, Default::default());
    let mut cfb = Cfb::new(
        SYMMETRIC,
        BlockCipherMode::CFB,
        UnpaddingMode::None,
        sk,
        None,
        source,
    )
    .map_err(io::Error::other)?;
    cfb.read_exact(out)
}

/// Whether `sk` decrypts the start of `ciphertext` to a valid prefix (its last two bytes
/// repeat the two before them: RFC 4880 section 5.13's quick check).
fn quick_check(sk: &SessionKey, ciphertext: &[u8]) -> bool {
    let Some(first) = ciphertext.get(..PREFIX) else {
        return false;
    };
    let mut prefix = [0u8; PREFIX];
    cfb_decrypt(sk, first, &mut prefix).is_ok() && prefix[14..16] == prefix[16..18]
}

/// Checks, without a key, that `start` (the first bytes of a stored message, or all of
/// it) begins as coffer's messages do: PKESK v3 packets, then an SEIPD v1 packet. Bytes
/// that end among the PKESK packets pass (there is nothing wrong yet).
pub fn check_framing(start: &[u8]) -> io::Result<()> {
    let mut s = Slice { buf: start, pos: 0 };
    let mut pkesks = 0;
    loop {
        if s.at_end() && pkesks > 0 {
            return Ok(());
        }
        let (tag, len) = match s.header() {
            Ok(h) => h,
            Err(_) if pkesks > 0 => return Ok(()),
            Err(e) => return Err(e),
        };
        if tag == 18 && pkesks > 0 {
            return match s.byte() {
                Ok(1) | Err(_) => Ok(()),
                Ok(v) => Err(refused(format!("an SEIPD packet of version {v}"))),
            };
        }
        expect_tag(tag, 1, "the message")?;
        let Len::Definite(n) = len else {
            return Err(refused("a PKESK packet with a partial length"));
        };
        match s.take(n) {
            Ok(body) if body.first() != Some(&3) => {
                return Err(refused("a PKESK packet of a version other than 3"))
            }
            Ok(_) => pkesks += 1,
            Err(_) => return Ok(()),
        }
    }
}

impl Decryptor {
    /// Decrypts one chunk message (docs/FORMAT.md section 3) and returns the literal
    /// packet's data. Anything but PKESK packets and one SEIPD v1 packet holding one
    /// literal packet is refused; `what` names the chunk in errors.
    pub(crate) fn open_chunk(&self, what: &str, message: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |e: io::Error| Error::Corrupt {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let mut s = Slice {
            buf: message,
            pos: 0,
        };
        let (seipd_at, pkesks, len) = pkesks_from_slice(&mut s).map_err(corrupt)?;
        let body = s.body(len).map_err(corrupt)?;
        if !s.at_end() {
            return Err(corrupt(refused("data after the encrypted packet")));
        }
        let ciphertext = match body.split_first() {
            Some((1, rest)) => rest,
            _ => {
                return Err(corrupt(refused(
                    "an SEIPD packet of a version other than 1",
                )))
            }
        };
        let sk = self.session_key(what, &message[..seipd_at], &pkesks, ciphertext)?;
        let mut plain = vec![0u8; ciphertext.len()];
        cfb_decrypt(&sk, ciphertext, &mut plain).map_err(corrupt)?;
        let inner = unframe(&plain).map_err(corrupt)?;
        literal_in(inner).map(|d| d.into_owned()).map_err(corrupt)
    }

    /// Streams the text of a metafile message (docs/FORMAT.md section 4.1) from
    /// `source`. The reader reports end of input only once the MDC and the message's
    /// structure checked out; any failure is an I/O error that says what was wrong.
    pub(crate) fn metafile_reader<'a, R: Read + Send + Sync + 'a>(
        &self,
        what: &str,
        mut source: R,
    ) -> Result<MetafileStream<'a>> {
        let corrupt = |e: io::Error| Error::Corrupt {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let mut raw = Vec::new();
        let mut pkesks = Vec::new();
        let seipd_len = loop {
            let header_start = raw.len();
            let mut next = || {
                let b = read_byte(&mut source)?;
                raw.push(b);
                Ok(b)
            };
            let (tag, len) = read_header(&mut next, is_data).map_err(corrupt)?;
            if tag == 18 && !pkesks.is_empty() {
                raw.truncate(header_start);
                break len;
            }
            expect_tag(tag, 1, "the message").map_err(corrupt)?;
            if pkesks.len() == MAX_PKESKS {
                return Err(corrupt(refused("too many PKESK packets")));
            }
            let pkesk = parse_pkesk(len, |n| {
                let mut body = vec![0u8; n];
                source.read_exact(&mut body).map_err(truncated)?;
                raw.extend_from_slice(&body);
                Ok(body)
            })
            .map_err(corrupt)?;
            pkesks.push(pkesk);
        };
        let mut seipd = Body::new(source, seipd_len, true);
        if read_byte(&mut seipd).map_err(corrupt)? != 1 {
            return Err(corrupt(refused(
                "an SEIPD packet of a version other than 1",
            )));
        }
        // The first blocks, for the session key's quick check, then the rest.
        let mut first = Vec::with_capacity(PREFIX);
        (&mut seipd)
            .take(PREFIX as u64)
            .read_to_end(&mut first)
            .map_err(corrupt)?;
        let sk = self.session_key(what, &raw, &pkesks, &first)?;
        let ciphertext = io::Cursor::new(first).chain(seipd);
        let cfb = Cfb::new(
            SYMMETRIC,
            BlockCipherMode::CFB,
            UnpaddingMode::None,
            &sk,
            None,
            buffered_reader::Generic::with_cookie(ciphertext, None, Default::default()),
        )
        .map_err(|e| corrupt(io::Error::other(e)))?;
        let mut plain = Mdc::new(cfb).map_err(corrupt)?;
        let (tag, len) = stream_header(&mut plain).map_err(corrupt)?;
        expect_tag(tag, 8, "a metafile").map_err(corrupt)?;
        let mut compressed = Body::new(plain, len, true);
        let algorithm = read_byte(&mut compressed).map_err(corrupt)?;
        if algorithm != 1 {
            return Err(corrupt(refused(format!(
                "compression algorithm {algorithm} (coffer writes 1, DEFLATE)"
            ))));
        }
        let mut deflate =
            flate2::bufread::DeflateDecoder::new(io::BufReader::with_capacity(1 << 16, compressed));
        let (tag, len) = stream_header(&mut deflate).map_err(corrupt)?;
        expect_tag(tag, 11, "a metafile's compressed packet").map_err(corrupt)?;
        let mut literal = Body::new(deflate, len, false);
        // Format, file name length, file name, date.
        let mut fields = [0u8; 2];
        literal
            .read_exact(&mut fields)
            .map_err(truncated)
            .map_err(corrupt)?;
        check_format(fields[0]).map_err(corrupt)?;
        let skip = fields[1] as u64 + 4;
        let skipped = io::copy(&mut (&mut literal).take(skip), &mut io::sink()).map_err(corrupt)?;
        if skipped != skip {
            return Err(corrupt(refused("truncated literal data packet")));
        }
        Ok(MetafileStream {
            literal,
            done: false,
        })
    }

    /// The session key of a message whose PKESK packets are `raw` (parsed: `pkesks`),
    /// checked against the start of its ciphertext. Keys already recovered are cached by
    /// the PKESK bytes, so a pack's chunks cost one public-key operation together.
    fn session_key(
        &self,
        what: &str,
        raw: &[u8],
        pkesks: &[PKESK],
        ciphertext: &[u8],
    ) -> Result<SessionKey> {
        if let Some(sk) = self.cache.lock().ok().and_then(|c| c.get(raw).cloned()) {
            return Ok(sk);
        }
        let mut other_cipher = None;
        let mut matched = false;
        for pkesk in pkesks {
            for pair in self.keys.iter() {
                let ours = match pkesk.recipient() {
                    Some(handle) => handle.aliases(KeyHandle::from(pair.public().keyid())),
                    None => true, // anonymous recipient: try every key
                };
                if !ours {
                    continue;
                }
                matched = true;
                let mut pair = pair.clone();
                match pkesk.decrypt(&mut pair, None) {
                    Some((Some(algo), sk)) if algo == SYMMETRIC && quick_check(&sk, ciphertext) => {
                        if let Ok(mut cache) = self.cache.lock() {
                            if cache.len() > 4096 {
                                cache.clear();
                            }
                            cache.insert(raw.to_vec(), sk.clone());
                        }
                        return Ok(sk);
                    }
                    Some((Some(algo), _)) if algo == SYMMETRIC => {}
                    Some((algo, _)) => other_cipher = algo,
                    None => {}
                }
            }
        }
        if let Some(algo) = other_cipher {
            return Err(Error::Corrupt {
                what: what.to_string(),
                reason: format!("encrypted with {algo} (coffer writes AES-256 only)"),
            });
        }
        if matched {
            return Err(Error::Corrupt {
                what: what.to_string(),
                reason: "its session key does not decrypt it: the message was modified, or \
                         it was not made for these keys"
                    .into(),
            });
        }
        let wanted: Vec<String> = pkesks
            .iter()
            .filter_map(|p| p.recipient().map(|r| r.to_hex()))
            .collect();
        Err(Error::WrongKey {
            what: what.to_string(),
            reason: format!(
                "none of the given secret keys ({}) can decrypt it; it is encrypted to key(s) {}",
                self.key_ids.join(", "),
                if wanted.is_empty() {
                    "(anonymous)".to_string()
                } else {
                    wanted.join(", ")
                }
            ),
        })
    }
}

// ---------------------------------------------------------------------------------------
// The metafile, streamed

fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        refused("truncated: the message ends inside a packet")
    } else {
        e
    }
}

fn read_byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(b[0])
}

/// A packet header read from a stream.
fn stream_header(r: &mut impl Read) -> io::Result<(u8, Len)> {
    read_header(&mut || read_byte(r), is_data)
}

/// The body of one packet read from `inner`: a definite length, or partial parts.
struct Body<R> {
    inner: R,
    /// Bytes left in the current part.
    left: usize,
    /// Whether the current part is the last.
    last: bool,
    /// An indeterminate length: the body is the rest of `inner`.
    to_end: bool,
    /// Whether `inner` must end where this body ends (the packet is its container's
    /// last).
    ends_inner: bool,
    ended: bool,
}

impl<R: Read> Body<R> {
    fn new(inner: R, first: Len, ends_inner: bool) -> Self {
        let (left, last, to_end) = match first {
            Len::Definite(n) => (n, true, false),
            Len::Partial(n) => (n, false, false),
            Len::Indeterminate => (0, true, true),
        };
        Body {
            inner,
            left,
            last,
            to_end,
            ends_inner,
            ended: false,
        }
    }

    /// At the body's end: checks that nothing follows, if nothing may.
    fn end(&mut self) -> io::Result<usize> {
        if !self.ended && self.ends_inner {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(refused("data after the last packet"));
            }
        }
        self.ended = true;
        Ok(0)
    }
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_end {
            return self.inner.read(buf);
        }
        while self.left == 0 {
            if self.last {
                return self.end();
            }
            match read_len(&mut || read_byte(&mut self.inner), true)? {
                Len::Definite(n) => (self.left, self.last) = (n, true),
                Len::Partial(n) => self.left = n,
                Len::Indeterminate => return Err(refused("bad partial length")),
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(refused("truncated: the message ends inside a packet"));
        }
        self.left -= n;
        Ok(n)
    }
}

/// The SEIPD plaintext: checks the prefix, hands on what lies between it and the MDC
/// packet, and checks the MDC at the end. It holds back the last [`MDC_LEN`] bytes read,
/// since only the end of the input tells that they are the MDC packet.
struct Mdc<R> {
    inner: R,
    sha: sha1::Sha1,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed on.
    pos: usize,
    eof: bool,
}

/// Bytes read ahead from the cipher at a time.
const MDC_BUF: usize = 1 << 16;

impl<R: Read> Mdc<R> {
    fn new(mut inner: R) -> io::Result<Self> {
        let mut prefix = [0u8; PREFIX];
        inner.read_exact(&mut prefix).map_err(truncated)?;
        if prefix[14..16] != prefix[16..18] {
            return Err(refused("the encrypted packet's prefix is wrong"));
        }
        let mut sha = sha1::Sha1::new();
        sha.update(prefix);
        Ok(Mdc {
            inner,
            sha,
            buf: Vec::with_capacity(MDC_BUF + MDC_LEN),
            pos: 0,
            eof: false,
        })
    }

    /// Reads until more than the held-back bytes are buffered, or the input ends.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        while !self.eof && self.buf.len() <= MDC_LEN {
            let have = self.buf.len();
            self.buf.resize(have + MDC_BUF, 0);
            let n = self.inner.read(&mut self.buf[have..])?;
            self.buf.truncate(have + n);
            self.eof = n == 0;
        }
        Ok(())
    }

    /// At the end of the input: the held-back bytes must be the MDC packet over
    /// everything before it.
    fn verify(&mut self) -> io::Result<()> {
        let tail = &self.buf[self.pos..];
        if tail.len() != MDC_LEN {
            return Err(refused("truncated: the MDC packet is missing"));
        }
        if tail[..2] != MDC_HEADER {
            return Err(refused(
                "the encrypted packet does not end with an MDC packet",
            ));
        }
        let mut sha = self.sha.clone();
        sha.update(MDC_HEADER);
        if sha.finalize()[..] != tail[2..] {
            return Err(refused(
                "the integrity check (MDC) failed: the message was modified or damaged",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Mdc<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.len() - self.pos <= MDC_LEN {
            self.fill()?;
        }
        let ready = (self.buf.len() - self.pos).saturating_sub(MDC_LEN);
        if ready == 0 {
            self.verify()?;
            return Ok(0);
        }
        let n = ready.min(out.len());
        let part = &self.buf[self.pos..self.pos + n];
        out[..n].copy_from_slice(part);
        self.sha.update(part);
        self.pos += n;
        Ok(n)
    }
}

type Inflate<'a> = flate2::bufread::DeflateDecoder<io::BufReader<Body<Mdc<Cfb<'a>>>>>;

/// The text of a metafile (see [`Decryptor::metafile_reader`]). Its end of input means
/// the whole message checked out: the literal packet was the compressed packet's only
/// content, the DEFLATE stream filled that packet, the MDC matched and nothing followed
/// the encrypted packet.
pub(crate) struct MetafileStream<'a> {
    literal: Body<Inflate<'a>>,
    done: bool,
}

impl MetafileStream<'_> {
    fn finish(&mut self) -> io::Result<()> {
        let deflate = &mut self.literal.inner;
        let mut probe = [0u8; 1];
        if deflate.read(&mut probe)? != 0 {
            return Err(refused(
                "more data after the literal packet in the compressed packet",
            ));
        }
        // The DEFLATE stream is over: nothing may follow it in the compressed packet, and
        // reading on to its end reaches the MDC, which is then checked.
        let rest = deflate.get_mut();
        if !rest.fill_buf()?.is_empty() {
            return Err(refused(
                "data after the DEFLATE stream in the compressed packet",
            ));
        }
        self.done = true;
        Ok(())
    }
}

impl Read for MetafileStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.literal.read(buf)?;
        if n == 0 {
            self.finish()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{generate_key, keys, Encryptor, KeyAlgorithm, PackSession};
    use openpgp::serialize::stream::{
        Compressor, Encryptor as SqEncryptor, LiteralWriter, Message,
    };
    use openpgp::types::{CompressionAlgorithm, DataFormat};
    use std::io::Write;

    fn pair() -> (Encryptor, Decryptor) {
        let key = generate_key("test", KeyAlgorithm::Cv25519, None).unwrap();
        let certs = keys::parse_certs_for_test(&key.public_armored);
        let enc = Encryptor::from_certs(&certs).unwrap();
        let dec = keys::decryptor_from_bytes(&key.secret_armored, None).unwrap();
        (enc, dec)
    }

    /// What a crafted message holds inside its literal packet, from the outside in.
    #[derive(Clone, Copy)]
    enum Layer {
        Encrypt,
        Compress(CompressionAlgorithm),
    }

    /// A message made by sequoia's streaming writer (partial lengths, as older coffer
    /// versions wrote), with `layers` around a literal packet of `format` holding `data`.
    fn craft(session: &PackSession, layers: &[Layer], format: DataFormat, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if matches!(layers.first(), Some(Layer::Encrypt)) {
            out.extend_from_slice(&session.header);
        }
        {
            let mut m = Message::new(&mut out);
            for layer in layers {
                m = match layer {
                    Layer::Encrypt => {
                        SqEncryptor::with_session_key(m, SYMMETRIC, session.sk.clone())
                            .unwrap()
                            .build()
                            .unwrap()
                    }
                    Layer::Compress(a) => Compressor::new(m).algo(*a).build().unwrap(),
                };
            }
            let mut lit = LiteralWriter::new(m).format(format).build().unwrap();
            lit.write_all(data).unwrap();
            lit.finalize().unwrap();
        }
        out
    }

    fn read_metafile(dec: &Decryptor, message: &[u8]) -> Result<Vec<u8>> {
        let mut r = dec.metafile_reader("metafile", io::Cursor::new(message.to_vec()))?;
        let mut text = Vec::new();
        r.read_to_end(&mut text).map_err(|e| Error::Corrupt {
            what: "metafile".into(),
            reason: e.to_string(),
        })?;
        Ok(text)
    }

    #[track_caller]
    fn refused_with(r: Result<Vec<u8>>, needle: &str) {
        match r {
            Err(e) => assert!(e.to_string().contains(needle), "{e} (wanted {needle:?})"),
            Ok(_) => panic!("accepted; wanted a refusal mentioning {needle:?}"),
        }
    }

    const ZIP: Layer = Layer::Compress(CompressionAlgorithm::Zip);
    const BINARY: DataFormat = DataFormat::Binary;

    #[test]
    fn messages_from_sequoias_writer_with_partial_lengths_are_read() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let data = crate::prng::noise(200_000, 3);
        let chunk = craft(&session, &[Layer::Encrypt], BINARY, &data);
        assert_eq!(dec.open_chunk("chunk", &chunk).unwrap(), data);
        let meta = craft(&session, &[Layer::Encrypt, ZIP], BINARY, &data);
        assert_eq!(read_metafile(&dec, &meta).unwrap(), data);
    }

    #[test]
    fn a_plaintext_message_is_refused_as_chunk_and_as_metafile() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let plain = craft(&session, &[], BINARY, b"forged");
        refused_with(dec.open_chunk("chunk", &plain), "not encrypted");
        refused_with(read_metafile(&dec, &plain), "not encrypted");
        let compressed = craft(&session, &[ZIP], BINARY, b"forged");
        refused_with(
            dec.open_chunk("chunk", &compressed),
            "compressed data packet",
        );
        refused_with(read_metafile(&dec, &compressed), "compressed data packet");
        // PKESK packets in front of a plaintext literal packet: still not encrypted.
        let mut fronted = session.header.clone();
        fronted.extend_from_slice(&plain);
        refused_with(dec.open_chunk("chunk", &fronted), "literal data packet");
        refused_with(read_metafile(&dec, &fronted), "literal data packet");
    }

    #[test]
    fn compression_in_a_chunk_and_nested_compression_are_refused() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let zipped = craft(&session, &[Layer::Encrypt, ZIP], BINARY, b"x");
        refused_with(dec.open_chunk("chunk", &zipped), "compressed data packet");
        let nested = craft(&session, &[Layer::Encrypt, ZIP, ZIP], BINARY, b"x");
        refused_with(read_metafile(&dec, &nested), "compressed data packet");
        let bare = craft(&session, &[Layer::Encrypt], BINARY, b"x");
        refused_with(read_metafile(&dec, &bare), "literal data packet");
        let zlib = Layer::Compress(CompressionAlgorithm::Zlib);
        let zlibbed = craft(&session, &[Layer::Encrypt, zlib], BINARY, b"x");
        refused_with(read_metafile(&dec, &zlibbed), "compression algorithm 2");
        let text = craft(&session, &[Layer::Encrypt], DataFormat::Unicode, b"x");
        refused_with(dec.open_chunk("chunk", &text), "format");
    }

    #[test]
    fn trailing_data_and_unprotected_encryption_are_refused() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let mut chunk = session.encrypt(b"data").unwrap();
        chunk.extend_from_slice(&[0xCB, 3, b'b', 0, 0]);
        refused_with(
            dec.open_chunk("chunk", &chunk),
            "after the encrypted packet",
        );
        let mut w = enc.message_writer(Vec::new()).unwrap();
        w.write_all(b"listing").unwrap();
        let mut meta = w.finish().unwrap();
        assert_eq!(read_metafile(&dec, &meta).unwrap(), b"listing");
        meta.push(0xC0 | 11);
        refused_with(read_metafile(&dec, &meta), "data after the last packet");
        // SED (tag 9): encryption without an integrity check.
        let mut sed = session.header.clone();
        sed.extend_from_slice(&[0xC9, 40]);
        sed.extend_from_slice(&[7u8; 40]);
        refused_with(dec.open_chunk("chunk", &sed), "SED packet");
        refused_with(read_metafile(&dec, &sed), "SED packet");
    }

    #[test]
    fn every_truncation_and_many_flips_are_refused_without_panic() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let chunk = session.encrypt(&[5u8; 300]).unwrap();
        let mut w = enc.message_writer(Vec::new()).unwrap();
        w.write_all(&[b'a'; 3000]).unwrap();
        let meta = w.finish().unwrap();
        for cut in 0..chunk.len() {
            assert!(dec.open_chunk("c", &chunk[..cut]).is_err(), "cut at {cut}");
        }
        for cut in 0..meta.len() {
            assert!(read_metafile(&dec, &meta[..cut]).is_err(), "cut at {cut}");
        }
        // Flips in a PKESK packet can be harmless (X25519 ignores the top bit of a point);
        // everything after them is protected.
        for i in session.header.len()..meta.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = meta.clone();
                bad[i] ^= bit;
                assert!(read_metafile(&dec, &bad).is_err(), "flip {bit:#x} at {i}");
            }
        }
    }

    #[test]
    fn lengths() {
        let parse = |bytes: &[u8], partial| {
            let mut it = bytes.iter().copied();
            read_len(&mut || it.next().ok_or_else(|| refused("eof")), partial)
        };
        assert_eq!(parse(&[100], false).unwrap(), Len::Definite(100));
        assert_eq!(parse(&[192, 0], false).unwrap(), Len::Definite(192));
        assert_eq!(parse(&[223, 255], false).unwrap(), Len::Definite(8383));
        assert_eq!(
            parse(&[255, 0, 1, 0, 0], false).unwrap(),
            Len::Definite(65536)
        );
        assert_eq!(parse(&[0xF0], true).unwrap(), Len::Partial(65536));
        assert!(parse(&[0xF0], false).is_err());
        assert!(parse(&[255, 0], false).is_err());
    }
}
