//! Keys that stop working without warning: lifetimes, expiry warnings, expired
//! certificates, hosts whose clocks are off, and secret keys where public ones belong.
//! Clocks are moved with `faketime` (scripts/setup.sh installs it).

mod util;

use std::path::{Path, PathBuf};

use util::*;

/// `coffer keygen --no-passphrase --expires WHEN` into `dir`; returns its output and the
/// public key's path.
fn keygen_expiring(fx: &Fixture, name: &str, when: &str) -> (Out, PathBuf) {
    let dir = fx.path("keys");
    let mut cmd = coffer(&fx.home);
    cmd.arg("keygen").arg("--out").arg(&dir).args([
        "--name",
        name,
        "--no-passphrase",
        "--expires",
        when,
    ]);
    (run(cmd), dir.join(format!("{name}.pub.asc")))
}

fn use_recipient(fx: &Fixture, public: &Path) {
    fx.write_config(&Settings {
        recipients: vec![public.to_path_buf()],
        ..Default::default()
    });
}

/// `coffer backup --json` with the clock moved by `offset` (faketime's syntax: "+2d").
fn backup_at(fx: &Fixture, offset: &str) -> Out {
    assert!(
        have_program("faketime"),
        "faketime is missing: run scripts/setup.sh"
    );
    let mut cmd = clean_command("faketime", &fx.home);
    // Only the clock is moved: file times as the file system has them.
    cmd.env("NO_FAKE_STAT", "1")
        .args(["-f", offset])
        .arg(coffer_bin())
        .arg("-c")
        .arg(&fx.config)
        .args(["backup", "--json"]);
    run(cmd)
}

#[test]
fn keygen_says_when_a_key_expires_and_never_means_never() {
    let fx = Fixture::new();
    let (out, _) = keygen_expiring(&fx, "forever", "never");
    out.ok();
    assert!(
        fx.path("keys/forever.pub.asc").exists(),
        "the key was written"
    );
    let (out, _) = keygen_expiring(&fx, "dated", "2031-06-30");
    let out = out.ok();
    assert!(out.stdout.contains("expires     2031-06-30"), "{out}");
    let (out, _) = keygen_expiring(&fx, "default", "3y");
    let out = out.ok();
    let year = chrono::Utc::now()
        .format("%Y")
        .to_string()
        .parse::<i32>()
        .unwrap()
        + 3;
    assert!(
        out.stdout.contains(&format!("expires     {year}-")),
        "{out}"
    );
    assert!(out.stdout.contains("gpg --quick-set-expire"), "{out}");
    let mut cmd = coffer(&fx.home);
    cmd.arg("keygen").arg("--out").arg(fx.path("keys")).args([
        "--name",
        "x",
        "--no-passphrase",
        "--expires",
        "2001-01-01",
    ]);
    run(cmd).expect(EXIT_ERROR).stderr_has("not in the future");
    // A key that never expires stays usable for backups however far the clock runs.
    let forever = fx.path("keys/forever.pub.asc");
    use_recipient(&fx, &forever);
    write(&fx.src.join("a"), b"a\n");
    backup_at(&fx, "+3650d").ok();
}

#[test]
fn a_recipient_that_expires_soon_is_warned_about_with_the_command_that_extends_it() {
    let fx = Fixture::new();
    let (out, public) = keygen_expiring(&fx, "soon", "10d");
    out.ok();
    use_recipient(&fx, &public);
    write(&fx.src.join("a"), b"a\n");
    let out = fx
        .backup()
        .ok()
        .stderr_has("expires on")
        .stderr_has("gpg --quick-set-expire");
    let problems = out.json()["runs"][0]["problems"].to_string();
    assert!(problems.contains("expires on"), "{problems}");
    // Once expired, the message says so, and how to extend it.
    backup_at(&fx, "+11d")
        .expect(EXIT_ERROR)
        .stderr_has("expired on")
        .stderr_has("quick-set-expire");
}

#[test]
fn a_host_clock_a_little_behind_still_backs_up_and_one_far_behind_is_named() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"a\n");
    // The key was made "now" by the fixture; this host's clock is behind it.
    backup_at(&fx, "-2m").ok();
    backup_at(&fx, "-20h").ok();
    backup_at(&fx, "-3d")
        .expect(EXIT_ERROR)
        .stderr_has("set the clock");
}

#[test]
fn a_secret_key_named_as_recipient_is_refused_with_how_to_export_the_public_part() {
    let fx = Fixture::new();
    use_recipient(&fx, &fx.secret_key.clone());
    write(&fx.src.join("a"), b"a\n");
    fx.backup()
        .expect(EXIT_ERROR)
        .stderr_has("holds the secret key")
        .stderr_has("gpg --export --armor");
    assert!(fx.metafiles_or_none().is_empty());
}

/// `coffer status` sees the config's recipients: WARNING when one expires within 30 days,
/// CRITICAL once it has expired (the source's backups fail from then on).
#[test]
fn status_warns_of_a_recipient_that_expires_and_is_critical_once_it_has() {
    let fx = Fixture::new();
    let (out, public) = keygen_expiring(&fx, "soon", "10d");
    out.ok();
    use_recipient(&fx, &public);
    write(&fx.src.join("a"), b"a\n");
    fx.backup().ok();
    let mut cmd = fx.cmd();
    cmd.args(["status", "--json"]);
    let out = run(cmd).expect(1);
    let s = &out.json()["sources"][0];
    assert_eq!(s["health"], "WARNING", "{out}");
    assert!(
        s["reasons"][0].as_str().unwrap().contains("expires on"),
        "{out}"
    );
    assert!(s["recipient_expires"].is_string(), "{out}");

    let mut cmd = clean_command("faketime", &fx.home);
    cmd.env("NO_FAKE_STAT", "1")
        .args(["-f", "+11d"])
        .arg(coffer_bin())
        .arg("-c")
        .arg(&fx.config)
        .arg("status");
    let out = run(cmd).expect(2);
    assert!(
        out.stdout.starts_with("COFFER CRITICAL - ") && out.stdout.contains("expired"),
        "{out}"
    );
}
