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
//!   the MDC, and nothing after it; or, signed, the compressed packet holds a one-pass
//!   signature packet, the literal packet and one signature packet (section 4.1).
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

use std::io::{self, Read};

use sequoia_openpgp as openpgp;

use openpgp::crypto::symmetric::{BlockCipherMode, Decryptor as Cfb, UnpaddingMode};
use openpgp::crypto::SessionKey;
use openpgp::packet::PKESK;
use openpgp::parse::buffered_reader;
use openpgp::KeyHandle;

use super::{Decryptor, SecretKey, Signers, SYMMETRIC};

mod packets;
mod stream;

use crate::error::{Error, Result};
use packets::*;
use stream::*;

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
        // Where the data lies in `plain`, to move it to the front in place: one copy
        // within the buffer instead of a second allocation (coffer's own chunks, with
        // definite lengths, always borrow).
        let inner_start = inner.as_ptr() as usize - plain.as_ptr() as usize;
        let range = match literal_in(inner).map_err(corrupt)? {
            std::borrow::Cow::Borrowed(data) => {
                let start = inner_start + (data.as_ptr() as usize - inner.as_ptr() as usize);
                start..start + data.len()
            }
            std::borrow::Cow::Owned(data) => return Ok(data),
        };
        let len = range.len();
        plain.copy_within(range, 0);
        plain.truncate(len);
        Ok(plain)
    }

    /// Streams the text of a metafile message (docs/FORMAT.md section 4.1) from
    /// `source`. The reader reports end of input only once the MDC and the message's
    /// structure checked out; any failure is an I/O error that says what was wrong.
    ///
    /// A signed metafile (a one-pass signature packet before the literal packet, the
    /// signature after it) is read too; its signature must then be made by one of
    /// `signers`, unless there are none (it is then only parsed).
    pub(crate) fn metafile_reader<'a, R: Read + Send + Sync + 'a>(
        &self,
        what: &str,
        mut source: R,
        signers: &Signers,
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
        let (mut tag, mut len) = stream_header(&mut deflate).map_err(corrupt)?;
        let mut signed = None;
        if tag == 4 {
            signed = Some(Signed::start(&mut deflate, len, signers, what).map_err(corrupt)?);
            (tag, len) = stream_header(&mut deflate).map_err(corrupt)?;
        }
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
            signed,
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
        let cached = || self.cache.lock().ok().and_then(|c| c.get(raw).cloned());
        if let Some(sk) = cached() {
            return Ok(sk);
        }
        // One recovery at a time, so that threads reading one pack ask the key (and a
        // gpg-agent, and a card) once between them.
        let _recovering = self.recovering.lock();
        if let Some(sk) = cached() {
            return Ok(sk);
        }
        let mut other_cipher = None;
        let mut matched = false;
        let mut agent_said = None;
        for pkesk in pkesks {
            for key in self.keys.iter() {
                let ours = match pkesk.recipient() {
                    Some(handle) => handle.aliases(KeyHandle::from(key.public().keyid())),
                    None => true, // anonymous recipient: try every key
                };
                if !ours {
                    continue;
                }
                matched = true;
                let decrypted = match key {
                    SecretKey::InMemory(pair) => pkesk.decrypt(&mut pair.clone(), None),
                    SecretKey::Agent(agent) => {
                        let d = pkesk.decrypt(&mut agent.clone(), None);
                        if d.is_none() {
                            agent_said = agent.take_error().or(agent_said);
                        }
                        d
                    }
                };
                match decrypted {
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
        if let Some(said) = agent_said {
            return Err(Error::WrongKey {
                what: what.to_string(),
                reason: format!("its session key could not be recovered: {said}"),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PackSession;
    use openpgp::serialize::stream::{
        Compressor, Encryptor as SqEncryptor, LiteralWriter, Message,
    };
    use openpgp::types::{CompressionAlgorithm, DataFormat};
    use std::io::Write;

    use crate::crypto::test_pair as pair;

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
        let mut r = dec.metafile_reader(
            "metafile",
            io::Cursor::new(message.to_vec()),
            &Signers::default(),
        )?;
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
        let mut w = enc.message_writer(Vec::new(), None).unwrap();
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
        let mut w = enc.message_writer(Vec::new(), None).unwrap();
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
