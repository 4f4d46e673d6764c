//! Decrypting through a real gpg-agent (`--key gpg:FINGERPRINT`, `--gpg-agent`): the
//! secret key lives in a throwaway GnuPG home and its agent. To count what coffer asks
//! of the agent, coffer is given a second GnuPG home with the public certificate only,
//! whose agent socket is a proxy the test listens on: it passes every byte to the real
//! agent and counts the PKDECRYPT requests: one session-key recovery per pack and per
//! metafile, never per chunk. A passphrase-protected key is unlocked by the agent's own
//! prompt (a scripted pinentry here), never by coffer; a cancelled prompt fails by name.
//!
//! Needs gpg, gpg-agent and gpgconf on the PATH (`scripts/setup.sh` installs gnupg).

mod util;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use util::*;

/// A GnuPG home and its running agent, holding the fixture's secret key (imported from
/// the file `coffer keygen` made).
struct AgentHome {
    gpg: Gpg,
}

impl AgentHome {
    fn new(pinentry: Option<&str>) -> AgentHome {
        let gpg = Gpg::new();
        if let Some(script) = pinentry {
            let path = gpg.home.path().join("pinentry.sh");
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let conf = format!("pinentry-program {}\n", path.display());
            std::fs::write(gpg.home.path().join("gpg-agent.conf"), conf).unwrap();
        }
        AgentHome { gpg }
    }

    fn gpgconf(home: &Path, args: &[&str]) {
        let out = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", home)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpgconf {args:?}: {out:?}");
    }

    fn import(&self, key: &Path) {
        self.gpg.run(&["--import".as_ref(), key.as_os_str()], None);
    }

    /// The primary fingerprint of the one certificate with `user_id`.
    fn fingerprint(&self, user_id: &str) -> String {
        let out = self.gpg.run(
            &[
                "--with-colons".as_ref(),
                "--list-keys".as_ref(),
                user_id.as_ref(),
            ],
            None,
        );
        String::from_utf8(out)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .expect("a fingerprint")
    }

    /// Stops this home's agent (it starts again when next needed).
    fn stop(&self) {
        Self::gpgconf(self.gpg.home.path(), &["--kill", "gpg-agent"]);
    }

    /// `coffer -c <config> <args>` with this home as GNUPGHOME.
    fn coffer(&self, fx: &Fixture, args: &[&OsStr]) -> Out {
        coffer_in(self.gpg.home.path(), fx, args)
    }
}

fn coffer_in(gnupghome: &Path, fx: &Fixture, args: &[&OsStr]) -> Out {
    let mut cmd = fx.cmd();
    cmd.env("GNUPGHOME", gnupghome).args(args);
    run(cmd)
}

/// A GnuPG home with only public certificates, whose agent socket is a proxy to the
/// agent of `real`, counting the PKDECRYPT requests that pass.
struct CountingHome {
    gpg: Gpg,
    pkdecrypts: Arc<AtomicUsize>,
}

impl CountingHome {
    fn new(real: &AgentHome, certificate: &Path) -> CountingHome {
        AgentHome::gpgconf(real.gpg.home.path(), &["--launch", "gpg-agent"]);
        let upstream = real.gpg.home.path().join("S.gpg-agent");
        let gpg = Gpg::new();
        let listener = UnixListener::bind(gpg.home.path().join("S.gpg-agent")).unwrap();
        let pkdecrypts = Arc::new(AtomicUsize::new(0));
        let counter = pkdecrypts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(agent) = UnixStream::connect(&upstream) else {
                    return;
                };
                let (counter, mut to_agent) = (counter.clone(), agent.try_clone().unwrap());
                let mut to_client = client.try_clone().unwrap();
                // Agent to client: as it is.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &agent, &mut to_client);
                });
                // Client to agent: line by line (Assuan is line based), counted.
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(client);
                    let mut line = Vec::new();
                    while matches!(lines.read_until(b'\n', &mut line), Ok(1..)) {
                        if line.starts_with(b"PKDECRYPT") {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        if to_agent.write_all(&line).is_err() {
                            return;
                        }
                        line.clear();
                    }
                    let _ = to_agent.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        gpg.run(&["--import".as_ref(), certificate.as_os_str()], None);
        CountingHome { gpg, pkdecrypts }
    }

    fn coffer(&self, fx: &Fixture, args: &[&OsStr]) -> Out {
        coffer_in(self.gpg.home.path(), fx, args)
    }
}

/// Three packs' worth of chunks (16 KiB on average) in a few files.
fn fixture() -> Fixture {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    write(&fx.src.join("a.bin"), &pseudo_random(1, 2_000_000));
    write(&fx.src.join("dir/b.bin"), &pseudo_random(2, 900_000));
    write(&fx.src.join("dir/small.txt"), b"small\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    fx.backup_ok();
    fx
}

#[test]
fn restore_through_gpg_agent_asks_it_once_per_pack_not_per_chunk() {
    let fx = fixture();
    let packs = fx.objects().len();
    let chunks = {
        let stats = fx.backup_ok(); // a second run: same chunks, no new pack
        as_u64(&stats, "chunks")
    };
    assert!(
        packs >= 3 && chunks > 10 * packs as u64,
        "{packs} packs, {chunks} chunks"
    );
    let home = AgentHome::new(None);
    home.import(&fx.secret_key);
    let fpr = home.fingerprint("coffer");
    let counted = CountingHome::new(&home, &fx.public_key);

    let to = fx.path("restored");
    let gpg_key = format!("gpg:{fpr}");
    counted.coffer(&fx, &restore_args(&gpg_key, &to)).ok();
    assert_same_tree(&fx.src, &to);
    // One request per pack, one for the metafile.
    assert_eq!(
        counted.pkdecrypts.load(Ordering::SeqCst),
        packs + 1,
        "{packs} packs"
    );

    // Any key of the keyring, for a browsing command and a whole check.
    let out = home
        .coffer(
            &fx,
            &[
                "cat".as_ref(),
                "--gpg-agent".as_ref(),
                "--source".as_ref(),
                SOURCE.as_ref(),
                "dir/small.txt".as_ref(),
            ],
        )
        .ok();
    assert_eq!(out.stdout, "small\n");
    home.coffer(
        &fx,
        &[
            "verify".as_ref(),
            "--data".as_ref(),
            "--gpg-agent".as_ref(),
            "--source".as_ref(),
            SOURCE.as_ref(),
        ],
    )
    .ok();
}

#[test]
fn a_protected_key_is_unlocked_by_the_agents_prompt_and_a_cancelled_prompt_fails_by_name() {
    let fx = fixture();
    // The same key, protected in the agent's store by a passphrase coffer never sees.
    let unlocking = AgentHome::new(Some(&pinentry("D agent-only-secret")));
    unlocking.import(&fx.secret_key);
    let fpr = unlocking.fingerprint("coffer");
    protect(&unlocking, &fpr, "agent-only-secret");
    let gpg_key = format!("gpg:{fpr}");
    let restore = |home: &AgentHome, to: &Path| home.coffer(&fx, &restore_args(&gpg_key, to));
    let to = fx.path("unlocked");
    restore(&unlocking, &to).ok();
    assert_same_tree(&fx.src, &to);

    let cancelling = AgentHome::new(Some(&pinentry(
        "ERR 83886179 Operation cancelled <Pinentry>",
    )));
    cancelling.import(&fx.secret_key);
    protect(&cancelling, &fpr, "agent-only-secret");
    let to = fx.path("cancelled");
    let out = restore(&cancelling, &to)
        .expect(EXIT_ERROR)
        .stderr_has("gpg-agent")
        .stderr_has("cancelled");
    assert!(!out.stderr.contains("agent-only-secret"), "{out}");
    assert!(
        !to.exists() || relative_paths(&to).len() <= 1,
        "nothing restored\n{out}"
    );
}

#[test]
fn a_key_gpg_does_not_hold_and_a_key_that_does_not_fit_are_named() {
    let fx = fixture();
    let home = AgentHome::new(None);
    home.import(&fx.secret_key);
    // Another key, which the run is not encrypted to.
    home.gpg.generate("other", "");
    let other = home.fingerprint("other");
    let to = fx.path("r");
    let restore = |key: &str| home.coffer(&fx, &restore_args(key, &to));
    restore(&format!("gpg:{other}"))
        .expect(EXIT_ERROR)
        .stderr_has("none of the given secret keys");
    restore("gpg:0000000000000000000000000000000000000000")
        .expect(EXIT_ERROR)
        .stderr_has("gpg:0000000000000000000000000000000000000000");
    let mut cmd = fx.cmd();
    cmd.args(["restore", "--source", SOURCE, "--to"])
        .arg(fx.path("r"));
    run(cmd)
        .expect(2)
        .stderr_has("--key <FILE|gpg:FPR>|--gpg-agent");
}

/// `restore --key KEY --source home --to TO`.
fn restore_args<'a>(key: &'a str, to: &'a Path) -> [&'a OsStr; 7] {
    [
        "restore".as_ref(),
        "--key".as_ref(),
        key.as_ref(),
        "--source".as_ref(),
        SOURCE.as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
    ]
}

/// A pinentry that answers every request with OK and GETPIN with `answer`.
fn pinentry(answer: &str) -> String {
    format!(
        "#!/bin/sh\necho 'OK Pleased to meet you'\nwhile read -r cmd rest; do\n  case \"$cmd\" in\n    \
         GETPIN) echo '{answer}'; echo OK ;;\n    BYE) echo OK; exit 0 ;;\n    *) echo OK ;;\n  \
         esac\ndone\n"
    )
}

/// Protects the keys in `home`'s agent store with `passphrase` (`gpg --passwd` through
/// loopback), then stops the agent so that nothing stays unlocked in its cache.
fn protect(home: &AgentHome, fpr: &str, passphrase: &str) {
    home.gpg.run(
        &[
            "--passphrase".as_ref(),
            passphrase.as_ref(),
            "--passwd".as_ref(),
            fpr.as_ref(),
        ],
        None,
    );
    home.stop();
}
