//! The streamed metafile: a reader of a partial-length packet body, one that checks the
//! MDC when the last byte has been read, and the DEFLATE stream on top, so the metafile
//! is handed on only as fast as its consumer reads it and memory stays flat.

use std::io::{self, BufRead, Read};

use sequoia_openpgp as openpgp;

use openpgp::crypto::hash;
use openpgp::crypto::symmetric::Decryptor as Cfb;
use openpgp::types::HashAlgorithm;
use openpgp::{KeyHandle, KeyID};
use sha1::Digest;

use crate::crypto::sign::parse_signature;
use crate::crypto::{Signers, Verdict, MAX_SIGNATURE_BYTES};

use super::super::MDC_HEADER;
use super::packets::*;

/// The body of one packet read from `inner`: a definite length, or partial parts.
pub(super) struct Body<R> {
    pub(super) inner: R,
    /// Bytes left in the current part.
    pub(super) left: usize,
    /// Whether the current part is the last.
    pub(super) last: bool,
    /// An indeterminate length: the body is the rest of `inner`.
    pub(super) to_end: bool,
    /// Whether `inner` must end where this body ends (the packet is its container's
    /// last).
    pub(super) ends_inner: bool,
    pub(super) ended: bool,
}

impl<R: Read> Body<R> {
    pub(super) fn new(inner: R, first: Len, ends_inner: bool) -> Self {
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
    pub(super) fn end(&mut self) -> io::Result<usize> {
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
pub(super) struct Mdc<R> {
    pub(super) inner: R,
    pub(super) sha: sha1::Sha1,
    pub(super) buf: Vec<u8>,
    /// Bytes of `buf` already handed on.
    pub(super) pos: usize,
    pub(super) eof: bool,
}

/// Bytes read ahead from the cipher at a time.
pub(super) const MDC_BUF: usize = 1 << 16;

impl<R: Read> Mdc<R> {
    pub(super) fn new(mut inner: R) -> io::Result<Self> {
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
    pub(super) fn fill(&mut self) -> io::Result<()> {
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
    pub(super) fn verify(&mut self) -> io::Result<()> {
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

pub(super) type Inflate<'a> = flate2::bufread::DeflateDecoder<io::BufReader<Body<Mdc<Cfb<'a>>>>>;

/// The text of a metafile (see [`crate::Decryptor::metafile_reader`]). Its end of input means
/// the whole message checked out: the literal packet was the compressed packet's only
/// content (or, signed, came between a one-pass signature and a signature that checked
/// out), the DEFLATE stream filled that packet, the MDC matched and nothing followed
/// the encrypted packet.
pub(crate) struct MetafileStream<'a> {
    pub(super) literal: Body<Inflate<'a>>,
    pub(super) signed: Option<Signed>,
    pub(super) done: bool,
}

/// A signed metafile's one-pass signature, and the hash of its text so far.
pub(super) struct Signed {
    hash: hash::Context,
    issuer: KeyID,
    signers: Signers,
    what: String,
}

/// The length of a version 3 one-pass signature packet's body.
const ONE_PASS_LEN: usize = 13;

impl Signed {
    /// Reads the one-pass signature packet (its header read: `len`) from `r`.
    pub(super) fn start(
        r: &mut impl Read,
        len: Len,
        signers: &Signers,
        what: &str,
    ) -> io::Result<Signed> {
        if len != Len::Definite(ONE_PASS_LEN) {
            return Err(refused("a one-pass signature packet of the wrong length"));
        }
        let mut body = [0u8; ONE_PASS_LEN];
        r.read_exact(&mut body).map_err(truncated)?;
        let [version, typ, algo, _pk, issuer @ .., last] = body;
        if version != 3 || typ != 0 || last == 0 {
            return Err(refused(
                "a one-pass signature other than one over a document, version 3, alone",
            ));
        }
        let algo = HashAlgorithm::from(algo);
        if !matches!(
            algo,
            HashAlgorithm::SHA256 | HashAlgorithm::SHA384 | HashAlgorithm::SHA512
        ) {
            return Err(refused(format!(
                "a signature made with {algo} (coffer reads SHA-256, SHA-384 and SHA-512)"
            )));
        }
        let hash = algo.context().map_err(io::Error::other)?.for_signature(4);
        Ok(Signed {
            hash,
            issuer: KeyID::from_bytes(&issuer),
            signers: signers.clone(),
            what: what.to_string(),
        })
    }

    /// Reads the signature packet that ends the compressed packet and checks it.
    fn finish(self, r: &mut impl Read) -> io::Result<()> {
        let mut header = Vec::with_capacity(6);
        let (tag, len) = read_header(
            &mut || {
                let b = read_byte(r)?;
                header.push(b);
                Ok(b)
            },
            |_| false,
        )
        .map_err(truncated)?;
        expect_tag(tag, 2, "a signed metafile's end")?;
        let Len::Definite(n) = len else {
            return Err(refused("a signature packet of no definite length"));
        };
        if n as u64 > MAX_SIGNATURE_BYTES {
            return Err(refused("a signature larger than any coffer writes"));
        }
        let mut packet = header;
        let start = packet.len();
        packet.resize(start + n, 0);
        r.read_exact(&mut packet[start..]).map_err(truncated)?;
        let sig = parse_signature(&packet).map_err(refused)?;
        let issuer = KeyHandle::from(self.issuer.clone());
        if !sig.get_issuers().iter().any(|h| h.aliases(&issuer)) {
            return Err(refused(
                "the signature's issuer is not the one its one-pass packet names",
            ));
        }
        if sig.hash_algo() != self.hash.algo() {
            return Err(refused(
                "the signature's hash is not the one its one-pass packet names",
            ));
        }
        if self.signers.is_empty() {
            return Ok(());
        }
        match self.signers.check_hash(&sig, self.hash, &self.what) {
            Verdict::Good(_) => Ok(()),
            Verdict::Bad(why) => Err(refused(format!("the metafile's signature: {why}"))),
        }
    }
}

impl MetafileStream<'_> {
    pub(super) fn finish(&mut self) -> io::Result<()> {
        let deflate = &mut self.literal.inner;
        if let Some(signed) = self.signed.take() {
            signed.finish(deflate)?;
        }
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
        } else if let Some(signed) = &mut self.signed {
            signed.hash.update(&buf[..n]);
        }
        Ok(n)
    }
}
