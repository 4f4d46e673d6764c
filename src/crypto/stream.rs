//! The metafile's writer: one OpenPGP message of unknown length, streamed with small
//! buffers.
//!
//! The layout is the one sequoia's streaming writer made (docs/FORMAT.md section 2): the
//! PKESK packets, then a SEIPD v1 packet holding a compressed data packet (DEFLATE)
//! holding a literal data packet, each of the three with partial body lengths and a
//! definite length for its last part. It is assembled here because sequoia's writer
//! buffers up to 4 MiB per packet layer (and grows past it): 21 MB of a no-change run of
//! a million files, and twice the memory of the same run on ten thousand. Here each layer
//! holds one 64 KiB part. A host with a signing key signs the text inside the
//! compression: a one-pass signature packet, the literal packet, the signature packet
//! (docs/FORMAT.md section 4.1), so `gpg -d` checks the signature while it decrypts.

use std::io::{self, Write};

use sequoia_openpgp as openpgp;

use openpgp::crypto::symmetric::Encryptor as Cfb;
use sha1::Digest;

use super::sign::MessageSigner;
use super::{
    cfb_writer, crypto_err, push_length, random_prefix, PackSession, LITERAL_FIELDS, MDC_HEADER,
};
use crate::error::Result;

/// Partial body lengths are 2^PART_LOG2 bytes (RFC 4880 section 4.2.2.4 wants the first
/// part to be at least 512 bytes).
const PART_LOG2: u8 = 16;
const PART: usize = 1 << PART_LOG2;

/// The body of one packet, written in parts of [`PART`] bytes and a last part of a
/// definite length.
struct Partial<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Partial<W> {
    /// Writes the packet's (new-format) tag; the body follows.
    fn new(mut inner: W, tag: u8) -> io::Result<Self> {
        inner.write_all(&[0xC0 | tag])?;
        Ok(Partial {
            inner,
            buf: Vec::with_capacity(PART),
        })
    }

    /// Writes the last part; returns the writer the packet went to.
    fn finish(mut self) -> io::Result<W> {
        let mut length = Vec::with_capacity(5);
        push_length(&mut length, self.buf.len()).map_err(io::Error::other)?;
        self.inner.write_all(&length)?;
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Partial<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART {
            self.inner.write_all(&[0xE0 | PART_LOG2])?;
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    /// Flushes what was written before; a part is written only once it is whole.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes the plaintext of the SEIPD packet for its MDC on the way to the cipher.
struct Mdc<W: Write> {
    inner: W,
    sha: sha1::Sha1,
}

impl<W: Write> Write for Mdc<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.sha.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Seipd<W> = Mdc<Cfb<Partial<W>>>;
type Literal<W> = Partial<flate2::write::DeflateEncoder<Partial<Seipd<W>>>>;

/// A streaming encrypting writer (see [`super::Encryptor::message_writer`]). Call
/// [`MessageWriter::finish`]: without it the message is truncated, and readers refuse it.
pub struct MessageWriter<W: Write + Send + Sync> {
    literal: Literal<W>,
    signer: Option<MessageSigner>,
}

impl<W: Write + Send + Sync> MessageWriter<W> {
    pub(super) fn new(
        mut sink: W,
        session: &PackSession,
        signer: Option<MessageSigner>,
    ) -> Result<Self> {
        let io = |e| crypto_err("writing the message", e);
        sink.write_all(&session.header).map_err(io)?;
        let mut seipd = Partial::new(sink, 18).map_err(io)?;
        seipd.write_all(&[1]).map_err(io)?; // SEIPD version 1
        let cfb = cfb_writer(&session.sk, seipd)?;
        let mut plain = Mdc {
            inner: cfb,
            sha: sha1::Sha1::new(),
        };
        plain.write_all(&random_prefix()?).map_err(io)?;
        // A compressed data packet, algorithm 1 (DEFLATE), at DEFLATE's fastest level:
        // the metafile is written on the packer thread, and at the default level
        // compressing it took a fifth of a no-change run's time.
        let mut compressed = Partial::new(plain, 8).map_err(io)?;
        compressed.write_all(&[1]).map_err(io)?;
        let mut deflate =
            flate2::write::DeflateEncoder::new(compressed, flate2::Compression::fast());
        // Signed: the one-pass signature packet first, the signature after the text.
        if let Some(signer) = &signer {
            deflate.write_all(&signer.one_pass_packet()?).map_err(io)?;
        }
        // A literal data packet: format 'b', no file name, date 0.
        let mut literal = Partial::new(deflate, 11).map_err(io)?;
        literal.write_all(&LITERAL_FIELDS).map_err(io)?;
        Ok(MessageWriter { literal, signer })
    }

    /// Writes the last parts and the MDC packet, and flushes; returns the sink. Its
    /// errors are the sink's (a full disk, say): the caller names the file.
    pub fn finish(self) -> io::Result<W> {
        let mut deflate = self.literal.finish()?;
        if let Some(signer) = self.signer {
            deflate.write_all(&signer.finish().map_err(io::Error::other)?)?;
        }
        let compressed = deflate.finish()?;
        let mut plain = compressed.finish()?;
        plain.write_all(&MDC_HEADER)?;
        let Mdc {
            inner: mut cfb,
            sha,
        } = plain;
        cfb.write_all(&sha.finalize())?;
        // Writes the last partial block to the sink: its errors are the sink's.
        let seipd = cfb.finalize().map_err(io::Error::other)?;
        let mut sink = seipd.finish()?;
        sink.flush()?;
        Ok(sink)
    }
}

impl<W: Write + Send + Sync> Write for MessageWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.literal.write(buf)?;
        if let Some(signer) = &mut self.signer {
            signer.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.literal.flush()
    }
}
