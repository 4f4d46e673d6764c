//! Key files: generation, loading recipient certificates and secret keys.
//!
//! Keys are OpenPGP v4, as GnuPG 2.2 makes and exports them. Generated certificates
//! advertise SEIPD v1 only, so no implementation encrypts to them with AEAD packets that
//! GnuPG 2.2 cannot read.

use std::path::{Path, PathBuf};

use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::crypto::Password;
use openpgp::parse::Parse;
use openpgp::serialize::SerializeInto;
use openpgp::types::Features;
use openpgp::Cert;
use zeroize::Zeroizing;

use super::{Decryptor, Encryptor, POLICY};
use crate::error::{Error, Result};

/// The public-key algorithm of a generated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// Ed25519 primary key with a Cv25519 encryption subkey (the default).
    Cv25519,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

/// A freshly generated key pair, ASCII-armored.
pub struct GeneratedKey {
    /// The certificate for the hosts that back up.
    pub public_armored: Vec<u8>,
    /// The secret key for whoever restores (protected by the passphrase, if one was given).
    pub secret_armored: Zeroizing<Vec<u8>>,
    /// The primary key's fingerprint.
    pub fingerprint: String,
    /// When the key expires (`None`: never).
    pub expires: Option<std::time::SystemTime>,
}

/// How long a generated key lasts by default: 3 years, as GnuPG's keys do.
pub const DEFAULT_KEY_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(3 * 365 * 86_400);

/// Generates an OpenPGP v4 key pair with a signing and an encryption subkey, valid for
/// [`DEFAULT_KEY_LIFETIME`].
pub fn generate_key(
    user_id: &str,
    algorithm: KeyAlgorithm,
    passphrase: Option<&str>,
) -> Result<GeneratedKey> {
    generate_key_with(user_id, algorithm, passphrase, Some(DEFAULT_KEY_LIFETIME))
}

/// Like [`generate_key`], valid for `lifetime` (`None`: it never expires).
pub fn generate_key_with(
    user_id: &str,
    algorithm: KeyAlgorithm,
    passphrase: Option<&str>,
    lifetime: Option<std::time::Duration>,
) -> Result<GeneratedKey> {
    generate(
        CertBuilder::general_purpose(Some(user_id)).set_password(passphrase.map(Password::from)),
        algorithm,
        lifetime,
    )
}

/// Generates the key `builder` describes (its user ids, subkeys and passphrase) as every
/// key coffer makes is: OpenPGP v4 (RFC 4880 profile), advertising SEIPD v1 only,
/// created at the current whole second, valid for `lifetime`, ASCII-armored.
pub(super) fn generate(
    builder: CertBuilder<'_>,
    algorithm: KeyAlgorithm,
    lifetime: Option<std::time::Duration>,
) -> Result<GeneratedKey> {
    // Whole seconds, as OpenPGP records times: a key made "until" a date ends exactly then.
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Usage("the clock is before 1970".into()))?
        .as_secs();
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let suite = match algorithm {
        KeyAlgorithm::Cv25519 => CipherSuite::Cv25519,
        KeyAlgorithm::Rsa3072 => CipherSuite::RSA3k,
        KeyAlgorithm::Rsa4096 => CipherSuite::RSA4k,
    };
    let fail = |e: openpgp::anyhow::Error| Error::crypto("key generation", e);
    let (cert, _revocation) = builder
        .set_cipher_suite(suite)
        .set_profile(openpgp::Profile::RFC4880)
        .map_err(fail)?
        .set_features(Features::empty().set_seipdv1())
        .map_err(fail)?
        .set_creation_time(created)
        .set_validity_period(lifetime.map(|l| l + now.duration_since(created).unwrap_or_default()))
        .generate()
        .map_err(fail)?;
    let public_armored = cert.armored().to_vec().map_err(fail)?;
    let secret_armored = Zeroizing::new(cert.as_tsk().armored().to_vec().map_err(fail)?);
    let expires = cert
        .with_policy(&*POLICY, None)
        .ok()
        .and_then(|v| v.primary_key().key_expiration_time());
    Ok(GeneratedKey {
        public_armored,
        secret_armored,
        fingerprint: cert.fingerprint().to_hex(),
        expires,
    })
}

pub(super) fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::io(path, e))
}

pub(super) fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<Cert>> {
    let parser = CertParser::from_bytes(bytes).map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!("not an OpenPGP key file: {e}"),
    })?;
    let mut certs = Vec::new();
    for cert in parser {
        certs.push(cert.map_err(|e| Error::Key {
            path: path.to_path_buf(),
            reason: format!("cannot parse certificate: {e}"),
        })?);
    }
    if certs.is_empty() {
        return Err(Error::Key {
            path: path.to_path_buf(),
            reason: "holds no OpenPGP certificate".into(),
        });
    }
    Ok(certs)
}

/// Loads the recipients' certificates (several per file allowed) into an [`Encryptor`].
///
/// A file that holds secret key material is refused: the host that backs up must not
/// hold a key that decrypts its backups (the whole point of the design), and its file
/// names the public part to use instead.
///
/// # Errors
///
/// A file that cannot be read, holds no usable encryption-capable certificate, holds a
/// secret key (refused: the host must not hold one), or a certificate that expired.
pub fn load_recipients(paths: &[PathBuf]) -> Result<Encryptor> {
    let mut certs = Vec::new();
    for path in paths {
        let bytes = read_key_file(path)?;
        for cert in parse_certs(path, &bytes)? {
            if cert.is_tsk() {
                return Err(Error::Key {
                    path: path.clone(),
                    reason: format!(
                        "holds the secret key of {fpr}: a host that backs up must hold only \
                         public keys, or a break-in there could read every backup. Give it \
                         the public part instead (`gpg --export --armor {fpr}`, or the \
                         NAME.pub.asc `coffer keygen` wrote), and keep this file off the \
                         host",
                        fpr = cert.fingerprint()
                    ),
                });
            }
            certs.push((path.clone(), cert));
        }
    }
    Encryptor::from_certs(&certs)
}

/// Loads the secret keys in `path` into a [`Decryptor`].
///
/// `passphrase` is asked for only if a key is protected; it is tried on every protected
/// key. A file holding only public certificates is refused with a message that says so.
pub fn load_secret_keys(
    path: &Path,
    passphrase: &mut dyn FnMut() -> Result<Zeroizing<String>>,
) -> Result<Decryptor> {
    let bytes = read_key_file(path)?;
    let certs = parse_certs(path, &bytes)?;
    decryptor_from_certs(path, &certs, passphrase)
}

fn decryptor_from_certs(
    path: &Path,
    certs: &[Cert],
    passphrase: &mut dyn FnMut() -> Result<Zeroizing<String>>,
) -> Result<Decryptor> {
    let key_err = |reason: String| Error::Key {
        path: path.to_path_buf(),
        reason,
    };
    let mut pairs = Vec::new();
    let mut password: Option<Password> = None;
    let mut any_secret = false;
    for cert in certs {
        // Use every secret encryption key, even expired or revoked ones: old backups
        // must stay restorable.
        let keys = cert
            .keys()
            .with_policy(&*POLICY, None)
            .supported()
            .secret()
            .for_storage_encryption()
            .for_transport_encryption();
        for ka in keys {
            any_secret = true;
            let mut key = ka.key().clone().role_into_unspecified();
            if !key.has_unencrypted_secret() {
                if password.is_none() {
                    let text = passphrase()?;
                    password = Some(Password::from(text.as_str()));
                }
                let pw = password.as_ref().expect("set above");
                key = key.decrypt_secret(pw).map_err(|_| {
                    key_err(format!(
                        "wrong passphrase for key {} (set it with --passphrase-file, \
                         COFFER_PASSPHRASE, or at the prompt)",
                        ka.key().keyid()
                    ))
                })?;
            }
            let pair = key
                .into_keypair()
                .map_err(|e| key_err(format!("unusable secret key: {e}")))?;
            pairs.push(super::SecretKey::InMemory(pair));
        }
    }
    if !any_secret {
        if certs.iter().any(Cert::is_tsk) {
            return Err(key_err(
                "holds secret keys, but none that can decrypt (no secret encryption subkey: \
                 it may have been exported without its subkeys, or made for signing only); \
                 restore needs the secret key of the recipients' encryption subkey (`gpg \
                 --export-secret-keys --armor FINGERPRINT`, or NAME.key.asc from `coffer \
                 keygen`)"
                    .into(),
            ));
        }
        return Err(key_err(
            "holds no secret encryption key: it is a public certificate, which can make \
             backups but not restore them; restore needs the secret key file \
             (NAME.key.asc from `coffer keygen`, or `gpg --export-secret-keys --armor`)"
                .into(),
        ));
    }
    Ok(Decryptor::new(pairs))
}

#[cfg(test)]
pub(crate) fn parse_certs_for_test(bytes: &[u8]) -> Vec<(PathBuf, Cert)> {
    parse_certs(Path::new("test"), bytes)
        .unwrap()
        .into_iter()
        .map(|c| (PathBuf::from("test"), c))
        .collect()
}

#[cfg(test)]
pub(crate) fn decryptor_from_bytes(bytes: &[u8], pass: Option<&str>) -> Result<Decryptor> {
    let certs = parse_certs(Path::new("test"), bytes)?;
    let pass = pass.map(str::to_string);
    decryptor_from_certs(Path::new("test"), &certs, &mut || {
        pass.clone()
            .map(Zeroizing::new)
            .ok_or_else(|| Error::Usage("no passphrase".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_v4_and_protected() {
        let key = generate_key("t", KeyAlgorithm::Cv25519, Some("pw")).unwrap();
        let certs = parse_certs_for_test(&key.public_armored);
        assert_eq!(certs[0].1.primary_key().key().version(), 4);
        assert!(decryptor_from_bytes(&key.secret_armored, Some("nope")).is_err());
        assert!(decryptor_from_bytes(&key.secret_armored, Some("pw")).is_ok());
        // a public certificate cannot restore
        let err = decryptor_from_bytes(&key.public_armored, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("public certificate"), "{err}");
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_refused() {
        let key = generate_key("t", KeyAlgorithm::Cv25519, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("admin.key.asc");
        std::fs::write(&secret, &*key.secret_armored).unwrap();
        let err = load_recipients(std::slice::from_ref(&secret))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("secret key") && err.contains("gpg --export --armor"),
            "{err}"
        );
        let public = dir.path().join("admin.pub.asc");
        std::fs::write(&public, &key.public_armored).unwrap();
        load_recipients(&[public]).unwrap();
    }

    #[test]
    fn lifetimes() {
        let never = generate_key_with("t", KeyAlgorithm::Cv25519, None, None).unwrap();
        assert_eq!(never.expires, None);
        let day = std::time::Duration::from_secs(86_400);
        let short = generate_key_with("t", KeyAlgorithm::Cv25519, None, Some(day)).unwrap();
        let left = short
            .expires
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left <= day && left > day / 2, "{left:?}");
    }
}
