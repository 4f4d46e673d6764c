//! A throwaway GnuPG home, to check that what coffer writes is what gpg reads.

use std::ffi::OsStr;

use super::*;

/// A temporary GnuPG home. Its agent is stopped when dropped.
pub struct Gpg {
    pub home: TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("coffer-gpg-")
            .tempdir()
            .expect("temporary GNUPGHOME");
        Gpg { home }
    }

    /// `gpg --batch --no-tty --pinentry-mode loopback <args>` with only this home.
    pub fn cmd(&self) -> Command {
        let mut cmd = clean_command("gpg", self.home.path());
        cmd.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ]);
        cmd
    }

    /// Runs gpg and returns standard output as bytes; panics on failure.
    #[track_caller]
    pub fn run(&self, args: &[&OsStr], stdin: Option<Vec<u8>>) -> Vec<u8> {
        let mut cmd = self.cmd();
        cmd.args(args);
        if let Some(input) = stdin {
            cmd.write_stdin(input);
        }
        let what = format!("{cmd:?}");
        let out = cmd.output().expect("gpg starts");
        assert!(
            out.status.success(),
            "{what} failed: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Makes a key pair (`future-default`: Ed25519 + Cv25519), protected by `passphrase`
    /// unless it is empty.
    pub fn generate(&self, user_id: &str, passphrase: &str) {
        self.run(
            &[
                "--passphrase".as_ref(),
                passphrase.as_ref(),
                "--quick-gen-key".as_ref(),
                user_id.as_ref(),
                "future-default".as_ref(),
                "default".as_ref(),
                "never".as_ref(),
            ],
            None,
        );
    }

    /// Exports (public, secret) armored keys of everything in this home.
    pub fn export(&self, passphrase: &str) -> (Vec<u8>, Vec<u8>) {
        let public = self.run(&["--export".as_ref(), "--armor".as_ref()], None);
        let secret = self.run(
            &[
                "--passphrase".as_ref(),
                passphrase.as_ref(),
                "--export-secret-keys".as_ref(),
                "--armor".as_ref(),
            ],
            None,
        );
        assert!(public.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK"));
        assert!(secret.starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK"));
        (public, secret)
    }

    /// `gpg -d`: decrypts `message` with the secret keys in this home.
    #[track_caller]
    pub fn decrypt(&self, message: &[u8]) -> Vec<u8> {
        self.run(&["--quiet".as_ref(), "-d".as_ref()], Some(message.to_vec()))
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // Stop the agent this home started (only this home's).
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
