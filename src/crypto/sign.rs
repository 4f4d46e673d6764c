//! Signing runs, and checking their signatures without any secret key.
//!
//! A host may hold a signing key ([`SigningKey`]): an OpenPGP v4 key that can sign and
//! cannot decrypt (a key file that also holds a secret encryption key is refused, so a
//! break-in still cannot read backups). It signs each run's object list with a detached
//! signature (`<run>.refs.sig`, ASCII-armored, what `gpg --verify SIG REFS` checks). The
//! side that restores, verifies, prunes or monitors names the certificates it trusts
//! ([`Signers`]); a run counts only if one of them made its signature.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::crypto::hash;
use openpgp::crypto::KeyPair;
use openpgp::packet::one_pass_sig::OnePassSig3;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::{key, Key, Packet, Signature};
use openpgp::parse::Parse;
use openpgp::policy::Policy;
use openpgp::serialize::{MarshalInto, Serialize};
use openpgp::types::{HashAlgorithm, SignatureType};
use openpgp::Cert;

use super::keys::{generate, parse_certs, read_key_file, GeneratedKey, KeyAlgorithm};
use super::POLICY;
use crate::error::{Error, Result};

/// A detached signature is never longer than this (an RSA-4096 signature, armored, is
/// under 1 KiB): a reader refuses a larger `.refs.sig` without parsing it.
pub const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

/// A host's signing key: signs, never decrypts.
pub struct SigningKey {
    pair: KeyPair,
    fingerprint: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint)
    }
}

impl SigningKey {
    /// Loads the signing key in `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read or parsed; it is readable by group or others (it signs
    /// runs: whoever reads it can forge them); it holds a secret key that can decrypt
    /// (the host must never hold one); it has no usable secret signing key, or only a
    /// passphrase-protected one (a host signs unattended).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let key_err = |reason: String| Error::Key {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = read_key_file(path)?;
        let certs = parse_certs(path, &bytes)?;
        let mut found: Option<SigningKey> = None;
        for cert in &certs {
            let decrypting = cert
                .keys()
                .secret()
                .filter(|k| {
                    k.key().has_secret()
                        && cert
                            .keys()
                            .with_policy(&*POLICY, None)
                            .key_handle(k.key().key_handle())
                            .any(|v| {
                                v.has_any_key_flag(
                                    openpgp::types::KeyFlags::empty()
                                        .set_storage_encryption()
                                        .set_transport_encryption(),
                                )
                            })
                })
                .count();
            if decrypting > 0 {
                return Err(key_err(format!(
                    "holds the secret key of an encryption key of {}: a host must never \
                     hold a key that decrypts backups. Use a key made for signing only \
                     (`coffer keygen --sign-only`), or export only the signing subkey \
                     (`gpg --export-secret-subkeys --armor SUBKEYID!`)",
                    cert.fingerprint()
                )));
            }
            let now = std::time::SystemTime::now();
            let Ok(valid) = cert.with_policy(&*POLICY, now) else {
                continue;
            };
            for ka in valid
                .keys()
                .secret()
                .for_signing()
                .alive()
                .revoked(false)
                .supported()
            {
                let key = ka.key().clone().role_into_unspecified();
                if !key.has_unencrypted_secret() {
                    return Err(key_err(format!(
                        "its signing key {} is protected by a passphrase: a host signs \
                         unattended, so the key file must be unprotected and kept mode 0600 \
                         (`gpg --passwd` to remove the passphrase before exporting, or \
                         `coffer keygen --sign-only`)",
                        ka.key().keyid()
                    )));
                }
                if found.is_none() {
                    let pair = key
                        .into_keypair()
                        .map_err(|e| key_err(format!("unusable signing key: {e}")))?;
                    found = Some(SigningKey {
                        pair,
                        fingerprint: cert.fingerprint().to_hex(),
                    });
                }
            }
        }
        if found.is_some() {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            if mode & 0o077 != 0 {
                return Err(key_err(format!(
                    "is readable by others (mode {:o}): whoever reads a signing key can sign \
                         runs in this host's name; `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                )));
            }
        }
        found.ok_or_else(|| {
            key_err(
                "holds no secret signing key that is valid now (a public certificate, an \
                 expired or revoked key, or a key without the signing capability); make one \
                 with `coffer keygen --sign-only`"
                    .into(),
            )
        })
    }

    /// The certificate's primary fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A signer for one message (the metafile).
    ///
    /// # Errors
    ///
    /// The hash algorithm is not available.
    pub(crate) fn message_signer(&self) -> Result<MessageSigner> {
        let hash = MESSAGE_HASH
            .context()
            .map_err(|e| Error::crypto("hashing the metafile", e))?
            .for_signature(4);
        Ok(MessageSigner {
            pair: self.pair.clone(),
            hash,
        })
    }

    /// A detached, ASCII-armored signature over `data` (what `gpg --verify SIG DATA`
    /// checks).
    ///
    /// # Errors
    ///
    /// The signing operation fails.
    pub fn sign_detached(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let sig = SignatureBuilder::new(SignatureType::Binary)
            .sign_message(&mut self.pair, data)
            .map_err(|e| Error::crypto("signing the object list", e))?;
        let mut out = Vec::new();
        let mut w = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::Signature)
            .map_err(|e| Error::io("signature", e))?;
        Packet::from(sig)
            .serialize(&mut w)
            .map_err(|e| Error::crypto("serializing the signature", e))?;
        w.finalize().map_err(|e| Error::io("signature", e))?;
        Ok(out)
    }
}

/// The certificates whose signatures are trusted. Cheap to clone.
#[derive(Clone, Default)]
pub struct Signers {
    certs: Arc<Vec<(PathBuf, Cert)>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|(_, c)| c.fingerprint().to_hex()))
            .finish()
    }
}

/// What checking a detached signature found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Made by this trusted certificate (its primary fingerprint).
    Good(String),
    /// Not a good signature of a trusted signer, and why.
    Bad(String),
}

impl Signers {
    /// Loads the trusted signers' certificates (several per file allowed).
    ///
    /// # Errors
    ///
    /// A file that cannot be read or holds no certificate.
    pub fn load(paths: &[PathBuf]) -> Result<Signers> {
        let mut certs = Vec::new();
        for path in paths {
            let bytes = read_key_file(path)?;
            for cert in parse_certs(path, &bytes)? {
                certs.push((path.clone(), cert.strip_secret_key_material()));
            }
        }
        Ok(Signers {
            certs: Arc::new(certs),
        })
    }

    /// Whether no signer is trusted (signatures are then not required).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The trusted certificates and the files they came from.
    pub fn certs(&self) -> impl Iterator<Item = (&Path, &Cert)> {
        self.certs.iter().map(|(p, c)| (p.as_path(), c))
    }

    /// Checks a detached signature `sig` (armored or binary, as read from a target:
    /// untrusted) over `data`. The signing key must have been valid when the signature
    /// says it was made (a key that expired since still vouches for old runs), and the
    /// signature must not claim to be made after `not_after` (the time the target
    /// stored the run, plus the clock tolerance).
    pub fn check(&self, sig: &[u8], data: &[u8], not_after: std::time::SystemTime) -> Verdict {
        let sig = match parse_signature(sig) {
            Ok(sig) => sig,
            Err(why) => return Verdict::Bad(why.into()),
        };
        self.check_with(&sig, not_after, "the object list", |sig, key| {
            sig.verify_message(key, data).is_ok()
        })
    }

    /// Checks the signature packet a metafile ends with against the hash of its text
    /// (see [`MessageSigner`]); `what` names the metafile.
    pub(crate) fn check_hash(&self, sig: &Signature, hash: hash::Context, what: &str) -> Verdict {
        // The metafile's run was stored when its object list was (that signature is
        // checked against the stored time); here the key's validity is what counts.
        let not_after = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
        let mut hash = Some(hash);
        self.check_with(sig, not_after, what, |sig, key| {
            hash.take().is_some_and(|h| sig.verify_hash(key, h).is_ok())
        })
    }

    fn check_with(
        &self,
        sig: &Signature,
        not_after: std::time::SystemTime,
        what: &str,
        mut verify: impl FnMut(&Signature, &Key<key::PublicParts, key::UnspecifiedRole>) -> bool,
    ) -> Verdict {
        let bad = |s: &str| Verdict::Bad(s.to_string());
        if sig.typ() != SignatureType::Binary {
            return bad("its signature is not a signature over a document");
        }
        let Some(made) = sig.signature_creation_time() else {
            return bad("its signature records no creation time");
        };
        if made > not_after {
            return bad("its signature claims to be made after the target stored the run");
        }
        if POLICY
            .signature(sig, openpgp::policy::HashAlgoSecurity::CollisionResistance)
            .is_err()
        {
            return bad("its signature uses an algorithm the standard policy rejects");
        }
        let issuers = sig.get_issuers();
        for (_, cert) in self.certs.iter() {
            let Ok(valid) = cert.with_policy(&*POLICY, made) else {
                continue;
            };
            for ka in valid.keys().for_signing().alive().revoked(false) {
                if !issuers.iter().any(|h| h.aliases(ka.key().key_handle())) {
                    continue;
                }
                if verify(sig, ka.key().role_as_unspecified()) {
                    return Verdict::Good(cert.fingerprint().to_hex());
                }
                return bad(&format!(
                    "its signature, by the key of {}, does not match {what}: it was altered",
                    cert.fingerprint()
                ));
            }
        }
        let by = issuers
            .first()
            .map_or_else(|| "an unknown key".to_string(), |h| format!("key {h}"));
        Verdict::Bad(format!(
            "it is signed by {by}, which is none of the trusted signers (or was not valid \
             when the signature was made)"
        ))
    }
}

/// Parses one signature packet (armored or binary, as read from a target: untrusted).
pub(crate) fn parse_signature(bytes: &[u8]) -> std::result::Result<Signature, &'static str> {
    if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err("its signature is larger than any signature coffer writes");
    }
    match Packet::from_bytes(bytes) {
        Ok(Packet::Signature(s)) => Ok(s),
        Ok(_) | Err(_) => Err("its signature is not an OpenPGP signature packet"),
    }
}

/// The hash a metafile's signature is made with (what GnuPG and sequoia choose).
pub(crate) const MESSAGE_HASH: HashAlgorithm = HashAlgorithm::SHA512;

/// Signs one message as it is written: the one-pass signature packet goes before the
/// literal packet, the text goes through [`MessageSigner::update`], and the signature
/// packet after it (RFC 4880 section 11.3: a signed message, what `gpg -d` checks while
/// it decrypts).
pub(crate) struct MessageSigner {
    pair: KeyPair,
    hash: hash::Context,
}

impl MessageSigner {
    /// The one-pass signature packet.
    pub(crate) fn one_pass_packet(&self) -> Result<Vec<u8>> {
        let mut ops = OnePassSig3::new(SignatureType::Binary);
        ops.set_hash_algo(MESSAGE_HASH);
        ops.set_pk_algo(self.pair.public().pk_algo());
        ops.set_issuer(self.pair.public().keyid());
        ops.set_last(true);
        Packet::from(ops)
            .to_vec()
            .map_err(|e| Error::crypto("serializing the one-pass signature", e))
    }

    /// Hashes literal data as it is written.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hash.update(data);
    }

    /// The signature packet over everything [`MessageSigner::update`] saw.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>> {
        let sig = SignatureBuilder::new(SignatureType::Binary)
            .sign_hash(&mut self.pair, self.hash)
            .map_err(|e| Error::crypto("signing the metafile", e))?;
        Packet::from(sig)
            .to_vec()
            .map_err(|e| Error::crypto("serializing the signature", e))
    }
}

/// Generates an OpenPGP v4 key that can only certify and sign (Ed25519, or RSA when
/// asked; [`KeyAlgorithm::Cv25519`] means Ed25519 here): a host's signing key. The secret key is left unprotected: a host signs
/// unattended; keep the file mode 0600.
///
/// # Errors
///
/// Key generation fails.
pub fn generate_signing_key(
    user_id: &str,
    algorithm: KeyAlgorithm,
    lifetime: Option<std::time::Duration>,
) -> Result<GeneratedKey> {
    generate(
        CertBuilder::new().add_userid(user_id).add_signing_subkey(),
        algorithm,
        lifetime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, key: &GeneratedKey, name: &str) -> (PathBuf, PathBuf) {
        let secret = dir.join(format!("{name}.key.asc"));
        let public = dir.join(format!("{name}.pub.asc"));
        std::fs::write(&secret, &*key.secret_armored).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(&public, &key.public_armored).unwrap();
        (secret, public)
    }

    #[test]
    fn signatures_of_trusted_signers_only_are_good() {
        let dir = tempfile::tempdir().unwrap();
        let mine = generate_signing_key("web1", KeyAlgorithm::Cv25519, None).unwrap();
        let other = generate_signing_key("mallory", KeyAlgorithm::Cv25519, None).unwrap();
        let (secret, public) = key_file(dir.path(), &mine, "web1");
        let (other_secret, _) = key_file(dir.path(), &other, "mallory");
        let mut key = SigningKey::load(&secret).unwrap();
        assert_eq!(key.fingerprint(), mine.fingerprint);
        let signers = Signers::load(&[public]).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let sig = key.sign_detached(b"object list").unwrap();
        assert!(sig.starts_with(b"-----BEGIN PGP SIGNATURE-----"));
        assert_eq!(
            signers.check(&sig, b"object list", later),
            Verdict::Good(mine.fingerprint.clone())
        );
        let Verdict::Bad(why) = signers.check(&sig, b"object lisT", later) else {
            panic!("an altered list passed")
        };
        assert!(why.contains("altered"), "{why}");
        let forged = SigningKey::load(&other_secret)
            .unwrap()
            .sign_detached(b"object list")
            .unwrap();
        let Verdict::Bad(why) = signers.check(&forged, b"object list", later) else {
            panic!("a stranger's signature passed")
        };
        assert!(why.contains("none of the trusted signers"), "{why}");
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        assert!(matches!(
            signers.check(&sig, b"object list", past),
            Verdict::Bad(_)
        ));
        for junk in [&b""[..], b"garbage", &[0xc2; 20000]] {
            assert!(matches!(
                signers.check(junk, b"object list", later),
                Verdict::Bad(_)
            ));
        }
    }

    fn read(dec: &crate::crypto::Decryptor, message: &[u8], signers: &Signers) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut r = dec.metafile_reader("metafile m", std::io::Cursor::new(message), signers)?;
        let mut text = Vec::new();
        r.read_to_end(&mut text).map_err(|e| Error::Corrupt {
            what: "metafile m".into(),
            reason: e.to_string(),
        })?;
        Ok(text)
    }

    #[test]
    fn signed_metafiles_are_read_and_their_signer_checked() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (enc, dec) = crate::crypto::test_pair();
        let mine = generate_signing_key("web1", KeyAlgorithm::Cv25519, None).unwrap();
        let other = generate_signing_key("mallory", KeyAlgorithm::Cv25519, None).unwrap();
        let (secret, public) = key_file(dir.path(), &mine, "web1");
        let (other_secret, other_public) = key_file(dir.path(), &other, "mallory");
        let key = SigningKey::load(&secret).unwrap();
        let trusted = Signers::load(&[public]).unwrap();
        let text = crate::prng::noise(300_000, 7);
        let write = |signer: Option<&SigningKey>| {
            let mut w = enc.message_writer(Vec::new(), signer).unwrap();
            w.write_all(&text).unwrap();
            w.finish().unwrap()
        };
        let signed = write(Some(&key));
        assert_eq!(read(&dec, &signed, &trusted).unwrap(), text);
        assert_eq!(read(&dec, &signed, &Signers::default()).unwrap(), text);
        // An unsigned metafile is read: the signed object list vouches for it by digest.
        assert_eq!(read(&dec, &write(None), &trusted).unwrap(), text);
        // A stranger's signature is refused where signers are named.
        let forged = write(Some(&SigningKey::load(&other_secret).unwrap()));
        let err = read(&dec, &forged, &trusted).unwrap_err().to_string();
        assert!(err.contains("none of the trusted signers"), "{err}");
        let strangers = Signers::load(&[other_public]).unwrap();
        assert!(read(&dec, &signed, &strangers).is_err());
        for cut in (0..signed.len())
            .step_by(97)
            .chain(signed.len() - 200..signed.len())
        {
            assert!(
                read(&dec, &signed[..cut], &trusted).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn signed_messages_from_sequoias_own_writer_are_read() {
        use openpgp::serialize::stream::{
            Compressor, Encryptor as SqEncryptor, LiteralWriter, Message, Signer,
        };
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (enc, dec) = crate::crypto::test_pair();
        let mine = generate_signing_key("web1", KeyAlgorithm::Cv25519, None).unwrap();
        let (secret, public) = key_file(dir.path(), &mine, "web1");
        let key = SigningKey::load(&secret).unwrap();
        let trusted = Signers::load(&[public]).unwrap();
        let session = enc.session().unwrap();
        let mut out = session.header.clone();
        {
            let m = Message::new(&mut out);
            let m = SqEncryptor::with_session_key(m, crate::crypto::SYMMETRIC, session.sk.clone())
                .unwrap()
                .build()
                .unwrap();
            let m = Compressor::new(m)
                .algo(openpgp::types::CompressionAlgorithm::Zip)
                .build()
                .unwrap();
            let m = Signer::new(m, key.pair.clone()).unwrap().build().unwrap();
            let mut lit = LiteralWriter::new(m).build().unwrap();
            lit.write_all(b"coffer-metafile 1\n").unwrap();
            lit.finalize().unwrap();
        }
        assert_eq!(read(&dec, &out, &trusted).unwrap(), b"coffer-metafile 1\n");
    }

    #[test]
    fn keys_that_decrypt_or_leak_are_refused_as_signing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let general =
            super::super::generate_key("admin", super::super::KeyAlgorithm::Cv25519, None).unwrap();
        let (secret, public) = key_file(dir.path(), &general, "admin");
        let err = SigningKey::load(&secret).unwrap_err().to_string();
        assert!(err.contains("never hold a key that decrypts"), "{err}");
        let err = SigningKey::load(&public).unwrap_err().to_string();
        assert!(err.contains("no secret signing key"), "{err}");
        let sign = generate_signing_key("web1", KeyAlgorithm::Cv25519, None).unwrap();
        let (secret, _) = key_file(dir.path(), &sign, "web1");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = SigningKey::load(&secret).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
