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
use openpgp::crypto::KeyPair;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::Packet;
use openpgp::parse::Parse;
use openpgp::policy::Policy;
use openpgp::serialize::Serialize;
use openpgp::types::SignatureType;
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
        let bad = |s: &str| Verdict::Bad(s.to_string());
        if sig.len() as u64 > MAX_SIGNATURE_BYTES {
            return bad("its signature is larger than any signature coffer writes");
        }
        let sig = match Packet::from_bytes(sig) {
            Ok(Packet::Signature(s)) => s,
            Ok(_) | Err(_) => return bad("its signature file is not an OpenPGP signature"),
        };
        let Some(made) = sig.signature_creation_time() else {
            return bad("its signature records no creation time");
        };
        if made > not_after {
            return bad("its signature claims to be made after the target stored the run");
        }
        if POLICY
            .signature(&sig, openpgp::policy::HashAlgoSecurity::CollisionResistance)
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
                if sig.verify_message(ka.key(), data).is_ok() {
                    return Verdict::Good(cert.fingerprint().to_hex());
                }
                return bad(&format!(
                    "its signature, by the key of {}, does not match the object list: it \
                     was altered",
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
