//! The packet framing of RFC 4880 as coffer's strict readers need it: headers and
//! lengths, the PKESK packets, the literal packet's fields, CFB decryption with the
//! quick check. Every length is checked before it is used; nothing here decides what a
//! message may hold (mod.rs does).

use std::io::{self, Read};

use sequoia_openpgp as openpgp;

use openpgp::crypto::symmetric::{BlockCipherMode, Decryptor as Cfb, UnpaddingMode};
use openpgp::crypto::SessionKey;
use openpgp::packet::PKESK;
use openpgp::parse::{buffered_reader, Parse};

use sha1::Digest;

use super::super::{MDC_HEADER, SYMMETRIC};

/// At most this many PKESK packets (recipient keys) per message.
pub(super) const MAX_PKESKS: usize = 256;
/// A PKESK packet's body is at most this long (an RSA-16384 key needs about 2 KiB).
pub(super) const MAX_PKESK_LEN: usize = 16 << 10;
/// The SEIPD plaintext's random prefix (16 bytes and a repetition of the last two).
pub(super) const PREFIX: usize = 18;
/// The MDC packet: header and SHA-1.
pub(super) const MDC_LEN: usize = 22;

/// A packet's body length, as its header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Len {
    /// The whole body, this many bytes.
    Definite(usize),
    /// A partial body length: this many bytes, then another length.
    Partial(usize),
    /// An old-format indeterminate length: the body runs to the end of its container.
    Indeterminate,
}

/// Why a message was refused (becomes [`crate::Error::Corrupt`] or an I/O error).
pub(super) fn refused(reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

/// Parses a new-format body length from `next`; `partial_ok` says whether the packet
/// type may use partial lengths (RFC 4880 section 4.2.2.4: only data packets may).
pub(super) fn read_len(
    next: &mut impl FnMut() -> io::Result<u8>,
    partial_ok: bool,
) -> io::Result<Len> {
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
pub(super) fn read_header(
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
pub(super) fn is_data(tag: u8) -> bool {
    matches!(tag, 8 | 11 | 18)
}

/// Names a packet tag for messages.
pub(super) fn tag_name(tag: u8) -> String {
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
pub(super) fn expect_tag(tag: u8, want: u8, place: &str) -> io::Result<()> {
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
pub(super) struct Slice<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Slice<'a> {
    pub(super) fn byte(&mut self) -> io::Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| refused("truncated: a packet header runs past the end"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| refused("truncated: a packet runs past the end"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// A packet header: its tag and first length.
    pub(super) fn header(&mut self) -> io::Result<(u8, Len)> {
        read_header(&mut || self.byte(), is_data)
    }

    /// A packet's whole body, gathering partial parts.
    pub(super) fn body(&mut self, first: Len) -> io::Result<std::borrow::Cow<'a, [u8]>> {
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
pub(super) fn pkesks_from_slice(s: &mut Slice<'_>) -> io::Result<(usize, Vec<PKESK>, Len)> {
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
pub(super) fn parse_pkesk(
    len: Len,
    take: impl FnOnce(usize) -> io::Result<Vec<u8>>,
) -> io::Result<PKESK> {
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
pub(super) fn unframe(plain: &[u8]) -> io::Result<&[u8]> {
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
pub(super) fn literal_in(inner: &[u8]) -> io::Result<std::borrow::Cow<'_, [u8]>> {
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
pub(super) fn check_format(format: u8) -> io::Result<()> {
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
pub(super) fn literal_fields_len(body: &[u8]) -> io::Result<usize> {
    let short = || refused("truncated literal data packet");
    check_format(*body.first().ok_or_else(short)?)?;
    let len = 1 + 1 + *body.get(1).ok_or_else(short)? as usize + 4;
    if body.len() < len {
        return Err(short());
    }
    Ok(len)
}

/// OpenPGP CFB decryption (zero IV, no resynchronisation) of `ciphertext` into `out`.
pub(super) fn cfb_decrypt(sk: &SessionKey, ciphertext: &[u8], out: &mut [u8]) -> io::Result<()> {
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
pub(super) fn quick_check(sk: &SessionKey, ciphertext: &[u8]) -> bool {
    let Some(first) = ciphertext.get(..PREFIX) else {
        return false;
    };
    let mut prefix = [0u8; PREFIX];
    cfb_decrypt(sk, first, &mut prefix).is_ok() && prefix[14..16] == prefix[16..18]
}

pub(super) fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        refused("truncated: the message ends inside a packet")
    } else {
        e
    }
}

pub(super) fn read_byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(b[0])
}

/// A packet header read from a stream.
pub(super) fn stream_header(r: &mut impl Read) -> io::Result<(u8, Len)> {
    read_header(&mut || read_byte(r), is_data)
}
