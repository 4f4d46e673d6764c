//! OpenPGP encryption and decryption; the only module that uses sequoia.
//!
//! The capability split lives in the types: [`Encryptor`] holds recipient *public*
//! certificates only, so `backup` cannot decrypt anything; [`Decryptor`] holds secret keys
//! and is only built by `restore`.
//!
//! Everything written is OpenPGP that GnuPG 2.2 reads: v3 PKESK packets and a SEIPD v1
//! packet (with MDC), AES-256. A [`PackSession`] draws one random session key per pack and
//! serializes the PKESK packets once; every chunk in the pack is then a complete message
//! (those PKESK packets followed by its own SEIPD v1 packet, which starts with a fresh
//! random prefix), so public-key
//! work is paid per pack, not per chunk, and `gpg -d` still decrypts each chunk alone.

mod agent;
pub(crate) mod keys;
mod read;
mod sign;
mod stream;

pub use keys::{
    generate_key, generate_key_with, load_recipients, load_secret_keys, GeneratedKey, KeyAlgorithm,
    DEFAULT_KEY_LIFETIME,
};
pub use read::check_framing;
pub use sign::{generate_signing_key, Signers, SigningKey, Verdict, MAX_SIGNATURE_BYTES};
pub use stream::MessageWriter;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use sequoia_openpgp as openpgp;

use openpgp::crypto::{KeyPair, SessionKey};
use openpgp::packet::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::Serialize;
use openpgp::types::SymmetricAlgorithm;
use openpgp::Cert;

use crate::error::{Error, Result};

const SYMMETRIC: SymmetricAlgorithm = SymmetricAlgorithm::AES256;

pub(crate) static POLICY: std::sync::LazyLock<StandardPolicy<'static>> =
    std::sync::LazyLock::new(StandardPolicy::new);

fn crypto_err(context: &str, e: impl Into<crate::error::Cause>) -> Error {
    Error::crypto(context, e)
}

/// The recipients' encryption keys (public parts only). Cheap to clone.
#[derive(Clone)]
pub struct Encryptor {
    keys: Arc<Vec<Key<key::PublicParts, key::UnspecifiedRole>>>,
    fingerprints: Arc<Vec<String>>,
    expiries: Arc<Vec<Expiry>>,
}

/// When a recipient certificate stops being usable for encryption.
#[derive(Debug, Clone)]
pub struct Expiry {
    /// The certificate's primary fingerprint.
    pub fingerprint: String,
    /// The file it was read from.
    pub path: std::path::PathBuf,
    /// The earliest expiry of the certificate and the encryption keys coffer uses.
    pub expires: std::time::SystemTime,
}

/// How far behind the machine that made a key a host's clock may be: a key (or binding
/// signature) created up to this long "in the future" is still used.
pub const CLOCK_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(86_400);

fn date(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M UTC")
        .to_string()
}

/// Why `cert` has no encryption key usable now, in words that say what to do.
fn unusable(cert: &Cert, now: std::time::SystemTime) -> String {
    let fpr = cert.fingerprint();
    let created = cert.primary_key().key().creation_time();
    if created > now + CLOCK_TOLERANCE {
        return format!(
            "certificate {fpr} was made at {}, more than a day after this host's clock \
             ({}): set the clock (with NTP, say); coffer allows a day of difference",
            date(created),
            date(now)
        );
    }
    if let Ok(valid) = cert.with_policy(&*POLICY, created.max(std::time::UNIX_EPOCH)) {
        if let Some(t) = valid.primary_key().key_expiration_time() {
            if t <= now {
                return format!(
                    "certificate {fpr} expired on {}. Extend it where its secret key is: \
                     `gpg --quick-set-expire {fpr} 2y` and `gpg --quick-set-expire {fpr} 2y \
                     '*'` (the subkeys; import NAME.key.asc first if coffer made it), then \
                     copy the new public key here (`gpg --export --armor {fpr}`)",
                    date(t)
                );
            }
        }
    }
    format!(
        "certificate {fpr} has no usable encryption key (expired, revoked or missing; with \
         GnuPG add one: gpg --quick-add-key {fpr} cv25519 encr)"
    )
}

impl Encryptor {
    /// Builds an encryptor from certificates, using every valid encryption-capable key.
    /// Validity is judged at the current time, or up to [`CLOCK_TOLERANCE`] later for a
    /// certificate made after the host's clock says it is now (a clock a little behind).
    pub(crate) fn from_certs(certs: &[(std::path::PathBuf, Cert)]) -> Result<Self> {
        let mut keys = Vec::new();
        let mut fingerprints = Vec::new();
        let mut expiries = Vec::new();
        let now = std::time::SystemTime::now();
        for (path, cert) in certs {
            let created = cert.primary_key().key().creation_time();
            let at = if created > now && created <= now + CLOCK_TOLERANCE {
                created
            } else {
                now
            };
            let valid = cert.with_policy(&*POLICY, at).map_err(|e| Error::Key {
                path: path.clone(),
                reason: if created > now + CLOCK_TOLERANCE {
                    unusable(cert, now)
                } else {
                    format!("certificate {} is not valid: {e}", cert.fingerprint())
                },
            })?;
            let before = keys.len();
            let mut earliest = valid.primary_key().key_expiration_time();
            for ka in valid
                .keys()
                .supported()
                .alive()
                .revoked(false)
                .for_storage_encryption()
                .for_transport_encryption()
            {
                if let Some(t) = ka.key_expiration_time() {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
                keys.push(ka.key().clone().role_into_unspecified());
            }
            if keys.len() == before {
                return Err(Error::Key {
                    path: path.clone(),
                    reason: unusable(cert, now),
                });
            }
            if let Some(expires) = earliest {
                expiries.push(Expiry {
                    fingerprint: cert.fingerprint().to_hex(),
                    path: path.clone(),
                    expires,
                });
            }
            fingerprints.push(cert.fingerprint().to_hex());
        }
        if keys.is_empty() {
            return Err(Error::Usage("no recipients given".into()));
        }
        fingerprints.sort();
        Ok(Encryptor {
            keys: Arc::new(keys),
            fingerprints: Arc::new(fingerprints),
            expiries: Arc::new(expiries),
        })
    }

    /// The recipients that stop being usable within `within` from now, with when.
    pub fn expiring_within(&self, within: std::time::Duration) -> Vec<Expiry> {
        let limit = std::time::SystemTime::now() + within;
        self.expiries
            .iter()
            .filter(|e| e.expires <= limit)
            .cloned()
            .collect()
    }

    /// The recipients' primary fingerprints, sorted (identifies the key set).
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Draws a fresh session key and encrypts it to every recipient (the public-key work).
    #[doc(hidden)]
    pub fn session(&self) -> Result<PackSession> {
        let sk = SessionKey::new(
            SYMMETRIC
                .key_size()
                .map_err(|e| crypto_err("key size", e))?,
        )
        .map_err(|e| crypto_err("session key", e))?;
        let mut header = Vec::new();
        for key in self.keys.iter() {
            let mut pkesk = PKESK3::for_recipient(SYMMETRIC, &sk, key)
                .map_err(|e| crypto_err("encrypting the session key", e))?;
            pkesk.set_recipient(Some(key.keyid()));
            Packet::PKESK(pkesk.into())
                .serialize(&mut header)
                .map_err(|e| crypto_err("serializing PKESK", e))?;
        }
        Ok(PackSession { sk, header })
    }

    /// A writer that encrypts everything written to it into `sink` as one OpenPGP message
    /// (compressed with DEFLATE, OpenPGP algorithm 1, inside the encryption; `gpg -d`
    /// undoes it by itself), signed by `signer` if given (see [`SigningKey`]). Call
    /// [`MessageWriter::finish`] to write the last packets.
    pub(crate) fn message_writer<W: Write + Send + Sync>(
        &self,
        sink: W,
        signer: Option<&SigningKey>,
    ) -> Result<MessageWriter<W>> {
        let signer = signer.map(SigningKey::message_signer).transpose()?;
        MessageWriter::new(sink, &self.session()?, signer)
    }
}

/// One session key with its PKESK packets already serialized; used for one pack.
pub struct PackSession {
    sk: SessionKey,
    header: Vec<u8>,
}

impl PackSession {
    /// The exact length of the message [`PackSession::encrypt_into`] makes of `len`
    /// bytes of plaintext.
    pub fn message_len(&self, len: usize) -> usize {
        let literal = 1 + length_len(LITERAL_FIELDS.len() + len) + LITERAL_FIELDS.len();
        let body = 1 + 18 + literal + len + 22;
        self.header.len() + 1 + length_len(body) + body
    }

    /// Encrypts `plaintext` as one complete OpenPGP message appended to `out`.
    ///
    /// The SEIPD v1 packet is assembled here, with definite lengths, rather than through
    /// sequoia's streaming writer: that one hashes the MDC with collision-detecting SHA-1
    /// (a seventh of a first backup's CPU time, and pointless when hashing our own data;
    /// readers still check the MDC with it) and sets up a 4 MiB buffer per message. The
    /// cipher is sequoia's (OpenPGP CFB: zero IV, no resynchronisation); the layout is
    /// RFC 4880 section 5.13, as docs/FORMAT.md section 3 describes.
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        use sha1::Digest;
        // Literal data packet header: tag 11, length, format 'b', empty name, date 0.
        let mut literal = Vec::with_capacity(12);
        literal.push(0xC0 | 11);
        push_length(&mut literal, LITERAL_FIELDS.len() + plaintext.len())?;
        literal.extend_from_slice(&LITERAL_FIELDS);
        let prefix = random_prefix()?;
        let mut sha = sha1::Sha1::new();
        sha.update(prefix);
        sha.update(&literal);
        sha.update(plaintext);
        sha.update(MDC_HEADER);
        let mdc = sha.finalize();

        let body = 1 + prefix.len() + literal.len() + plaintext.len() + MDC_HEADER.len() + 20;
        out.reserve(self.message_len(plaintext.len()));
        out.extend_from_slice(&self.header);
        out.push(0xC0 | 18);
        push_length(out, body)?;
        out.push(1); // SEIPD version 1
        let mut cfb = cfb_writer(&self.sk, &mut *out)?;
        for part in [&prefix[..], &literal, plaintext, &MDC_HEADER, &mdc[..]] {
            cfb.write_all(part)
                .map_err(|e| crypto_err("encrypting", e))?;
        }
        // Dropping writes the last partial block into `out`, which cannot fail. (Calling
        // `finalize` would do the same, and then its `Drop` would build an error, with a
        // backtrace when RUST_BACKTRACE is set, for every chunk.)
        drop(cfb);
        Ok(())
    }

    /// Convenience: encrypt into a new buffer.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encrypt_into(plaintext, &mut out)?;
        Ok(out)
    }
}

/// A literal data packet's fields before its data: format 'b' (binary), an empty file
/// name, date 0.
const LITERAL_FIELDS: [u8; 6] = [b'b', 0, 0, 0, 0, 0];

/// The MDC packet's header (tag 19, length 20); the SHA-1 covers it.
const MDC_HEADER: [u8; 2] = [0xC0 | 19, 20];

/// The start of a SEIPD v1 packet's plaintext: 16 random bytes, then a repetition of the
/// last two (the CFB IV itself is all zeros).
fn random_prefix() -> Result<[u8; 18]> {
    let mut prefix = [0u8; 18];
    random_bytes(&mut prefix[..16])?;
    prefix[16] = prefix[14];
    prefix[17] = prefix[15];
    Ok(prefix)
}

/// Fills `out` from the kernel's random source, taken 4 KiB at a time into a buffer of
/// this thread's: a chunk's prefix needs 16 bytes, and a system call for each was a
/// tenth of the system calls of a backup of small files. Bytes are used once and
/// overwritten as they are used.
fn random_bytes(out: &mut [u8]) -> Result<()> {
    use std::cell::RefCell;
    const REFILL: usize = 4096;
    thread_local! {
        static POOL: RefCell<(zeroize::Zeroizing<Vec<u8>>, usize)> =
            RefCell::new((zeroize::Zeroizing::new(vec![0u8; REFILL]), REFILL));
    }
    if out.len() > REFILL {
        return getrandom::fill(out).map_err(|e| crypto_err("random bytes", e.to_string()));
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (buf, used) = &mut *pool;
        if REFILL - *used < out.len() {
            getrandom::fill(&mut buf[..]).map_err(|e| crypto_err("random bytes", e.to_string()))?;
            *used = 0;
        }
        let taken = &mut buf[*used..*used + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        *used += out.len();
        Ok(())
    })
}

/// OpenPGP CFB (zero IV, no resynchronisation) with the session key, into `sink`.
fn cfb_writer<W: Write>(
    sk: &SessionKey,
    sink: W,
) -> Result<openpgp::crypto::symmetric::Encryptor<W>> {
    use openpgp::crypto::symmetric::{BlockCipherMode, Encryptor as Cfb, PaddingMode};
    Cfb::new(
        SYMMETRIC,
        BlockCipherMode::CFB,
        PaddingMode::None,
        sk,
        None,
        sink,
    )
    .map_err(|e| crypto_err("starting encryption", e))
}

/// How many octets [`push_length`] writes for `len`.
fn length_len(len: usize) -> usize {
    match len {
        0..=191 => 1,
        192..=8383 => 2,
        _ => 5,
    }
}

/// Appends an OpenPGP new-format body length (RFC 4880 section 4.2.2): 1, 2 or 5 octets.
fn push_length(out: &mut Vec<u8>, len: usize) -> Result<()> {
    match len {
        0..=191 => out.push(len as u8),
        192..=8383 => {
            let l = len - 192;
            out.extend_from_slice(&[((l >> 8) + 192) as u8, (l & 0xFF) as u8]);
        }
        _ => {
            let l = u32::try_from(len)
                .map_err(|_| crypto_err("encrypting", "a chunk of 4 GiB or more"))?;
            out.push(0xFF);
            out.extend_from_slice(&l.to_be_bytes());
        }
    }
    Ok(())
}

/// Session keys recovered so far, by the PKESK packets they were recovered from.
type SessionCache = HashMap<Vec<u8>, SessionKey>;

/// A secret key that can decrypt session keys: in memory (from a key file), or held by
/// the user's gpg-agent (a keyring, an OpenPGP card), used through it.
#[derive(Clone)]
pub(crate) enum SecretKey {
    /// The secret key itself, decrypted in memory.
    InMemory(KeyPair),
    /// A key the agent holds; coffer never sees its secret.
    Agent(agent::AgentKey),
}

impl SecretKey {
    fn public(&self) -> &Key<key::PublicParts, key::UnspecifiedRole> {
        match self {
            SecretKey::InMemory(k) => openpgp::crypto::Decryptor::public(k),
            SecretKey::Agent(k) => k.public(),
        }
    }
}

/// Secret keys that can decrypt, plus a cache of session keys already recovered, so a
/// pack's chunks cost one public-key operation between them (also when several threads
/// read one pack at once: the first recovers the key while the others wait for it).
#[derive(Clone)]
pub struct Decryptor {
    keys: Arc<Vec<SecretKey>>,
    key_ids: Arc<Vec<String>>,
    cache: Arc<Mutex<SessionCache>>,
    /// Held while a session key is recovered.
    recovering: Arc<Mutex<()>>,
}

impl Decryptor {
    pub(crate) fn new(keys: Vec<SecretKey>) -> Self {
        let key_ids = keys.iter().map(|k| k.public().keyid().to_hex()).collect();
        Decryptor {
            keys: Arc::new(keys),
            key_ids: Arc::new(key_ids),
            cache: Arc::new(Mutex::new(HashMap::new())),
            recovering: Arc::new(Mutex::new(())),
        }
    }

    /// Decrypts through the user's gpg-agent with the secret keys of the certificate
    /// `selector` names (a fingerprint, as gpg takes it), or with every secret
    /// encryption key in the GnuPG keyring if `None`. The secret keys stay with the
    /// agent (or on the card it drives); see the agent module.
    pub fn from_gpg_agent(selector: Option<&str>) -> Result<Decryptor> {
        let keys = agent::load(selector)?;
        Ok(Decryptor::new(
            keys.into_iter().map(SecretKey::Agent).collect(),
        ))
    }
}

/// A fresh key pair's two halves, for the tests of this module and its readers.
#[cfg(test)]
pub(crate) fn test_pair() -> (Encryptor, Decryptor) {
    let key = generate_key("test", KeyAlgorithm::Cv25519, None).unwrap();
    let certs = keys::parse_certs_for_test(&key.public_armored);
    let enc = Encryptor::from_certs(&certs).unwrap();
    let dec = keys::decryptor_from_bytes(&key.secret_armored, None).unwrap();
    (enc, dec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read};

    use super::test_pair as pair;

    #[test]
    fn chunk_roundtrip_shares_session() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        let a = session.encrypt(b"hello").unwrap();
        let b = session.encrypt(b"").unwrap();
        assert_eq!(dec.open_chunk("a", &a).unwrap(), b"hello");
        assert_eq!(dec.open_chunk("b", &b).unwrap(), b"");
        // tampering is detected
        let mut bad = a.clone();
        let n = bad.len() - 30;
        bad[n] ^= 1;
        assert!(dec.open_chunk("bad", &bad).is_err());
    }

    #[test]
    fn every_length_encoding_decrypts_and_every_byte_is_protected() {
        let (enc, dec) = pair();
        let session = enc.session().unwrap();
        // Literal bodies of 191/192 and 8383/8384 bytes, and the SEIPD lengths around
        // them, switch between 1-, 2- and 5-octet lengths.
        for len in [
            0,
            1,
            185,
            186,
            200,
            8000,
            8347,
            8348,
            8349,
            8377,
            8378,
            8400,
            70_000,
            1 << 20,
        ] {
            let plain = vec![len as u8; len];
            let msg = session.encrypt(&plain).unwrap();
            assert_eq!(dec.open_chunk("m", &msg).unwrap(), plain, "length {len}");
            assert_eq!(session.message_len(len), msg.len(), "length {len}");
        }
        let msg = session.encrypt(&[9u8; 300]).unwrap();
        for i in (session.header.len()..msg.len()).step_by(7) {
            let mut bad = msg.clone();
            bad[i] ^= 0x20;
            assert!(
                dec.open_chunk("bad", &bad).is_err(),
                "flipped byte {i} went unnoticed"
            );
        }
        assert!(dec.open_chunk("cut", &msg[..msg.len() - 1]).is_err());
    }

    #[test]
    fn stream_roundtrip() {
        let (enc, dec) = pair();
        let noise = crate::prng::noise(300_000, 1);
        // Around the 64 KiB parts of the literal packet (6 header bytes, then the data),
        // and long enough that the compressed and SEIPD packets have several parts too.
        let texts: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"x".to_vec(),
            vec![7u8; 100_000],
            noise[..65530].to_vec(),
            noise[..65536].to_vec(),
            noise[..65537].to_vec(),
            noise.clone(),
        ];
        for text in texts {
            let mut w = enc.message_writer(Vec::new(), None).unwrap();
            // In uneven writes, as a BufWriter hands them on.
            for piece in text.chunks(10_000) {
                w.write_all(piece).unwrap();
            }
            let out = w.finish().unwrap();
            let mut r = dec
                .metafile_reader("m", io::Cursor::new(&out), &Signers::default())
                .unwrap();
            let mut plain = Vec::new();
            r.read_to_end(&mut plain).unwrap();
            assert!(plain == text, "{} bytes", text.len());
            let mut bad = out.clone();
            let n = bad.len() / 2;
            bad[n] ^= 1;
            let mut plain = Vec::new();
            let read = dec
                .metafile_reader("bad", io::Cursor::new(bad), &Signers::default())
                .and_then(|mut r| r.read_to_end(&mut plain).map_err(|e| Error::io("m", e)));
            assert!(read.is_err(), "a flipped byte in {} bytes", text.len());
        }
    }

    #[test]
    fn prefixes_are_random_across_refills_of_the_pool() {
        // 1,000 prefixes of 16 random bytes span four refills of the 4 KiB pool.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let p = random_prefix().unwrap();
            assert_eq!(p[14..16], p[16..18]);
            assert!(seen.insert(p), "a prefix came twice");
        }
        let mut big = vec![0u8; 10_000];
        random_bytes(&mut big).unwrap();
        assert!(big.iter().filter(|&&b| b == 0).count() < 200);
    }

    #[test]
    fn wrong_key_is_named() {
        let (enc, _) = pair();
        let (_, other) = pair();
        let msg = enc.session().unwrap().encrypt(b"x").unwrap();
        match other.open_chunk("chunk", &msg) {
            Err(Error::WrongKey { what, reason }) => {
                assert_eq!(what, "chunk");
                assert!(reason.contains("encrypted to key"), "{reason}");
            }
            other => panic!("expected WrongKey, got {:?}", other.map(|_| ())),
        }
    }
}
