//! Signed, hash-chained runs against every kind of target (tests/util/target.rs), each
//! step playing the attacker: a run forged by someone holding only the public encryption
//! key (unsigned, or signed by a key of their own) is refused by restore and flagged by
//! `runs`, `status` and `verify`; a run deleted from the middle of the chain, the newest
//! runs deleted (a rollback), and an old run replayed are reported by `verify --storage`
//! and `status` with no secret key; prune's deletions are not. What coffer signs is
//! checked by `gpg --verify`. Backups use the put-only credential, everything else the
//! admin's (standing in for the monitor's read-only one).

mod util;

use std::path::{Path, PathBuf};

use util::target::{Cred, Kind, On};
use util::*;

per_kind!(signed_chained_runs_resist_forgery_deletion_and_rollback);

/// `coffer keygen --sign-only`: the signing key and its certificate.
fn signing_key(t: &On, name: &str) -> (PathBuf, PathBuf) {
    let dir = t.fx.path("sign");
    let mut cmd = coffer(&t.fx.home);
    cmd.args(["keygen", "--sign-only", "--name", name, "--out"])
        .arg(&dir);
    let out = run(cmd).ok();
    assert!(out.stdout.contains("signing_key = "), "{out}");
    (
        dir.join(format!("{name}.sign.key.asc")),
        dir.join(format!("{name}.sign.pub.asc")),
    )
}

/// A copy of the fixture's config with `top` lines before the sources and its own state
/// directory (another machine: a forger's, or the monitor's).
fn config_with(t: &On, name: &str, top: &str) -> PathBuf {
    let text = std::fs::read_to_string(&t.fx.config).unwrap();
    let state = t.fx.path(&format!("state-{name}"));
    let text = text.replacen(
        &format!("state_dir = {}", toml_str(&t.fx.state)),
        &format!("state_dir = {}\n{top}", toml_str(&state)),
        1,
    );
    assert!(text.contains(top), "{text}");
    let path = t.fx.path(&format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn with(t: &On, config: &Path, cred: Cred, args: &[&str]) -> Out {
    let mut cmd = t.with_cred(coffer(&t.fx.home), cred);
    cmd.arg("-c").arg(config).args(args);
    run(cmd)
}

fn run_keys(t: &On, run: &str) -> Vec<String> {
    let prefix = format!("runs/{HOST}/{SOURCE}/{run}.");
    t.keys()
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .collect()
}

/// Every object of `run` with its bytes, to delete and later put back.
fn saved(t: &On, run: &str) -> Vec<(String, Vec<u8>)> {
    run_keys(t, run)
        .into_iter()
        .map(|k| {
            let bytes = t.download(&k);
            (k, bytes)
        })
        .collect()
}

fn signed_chained_runs_resist_forgery_deletion_and_rollback(kind: Kind) {
    let t = On::new(kind, "trust");
    let (sign_key, sign_cert) = signing_key(&t, "web1");
    // The host signs; the monitor and the admin trust only that signer.
    let host = config_with(
        &t,
        "host",
        &format!("signing_key = {}", toml_str(&sign_key)),
    );
    let admin = config_with(
        &t,
        "admin",
        &format!("signers = [{}]", toml_str(&sign_cert)),
    );
    let target = t.target();
    let status = |args: &[&str]| {
        let mut all = vec!["status", "--target", target];
        all.extend_from_slice(args);
        with(&t, &admin, Cred::Admin, &all)
    };
    let runs_json = |code: i32| {
        with(
            &t,
            &admin,
            Cred::Admin,
            &["runs", "--json", "--target", target],
        )
        .expect(code)
        .json()
    };
    let verify = || {
        with(
            &t,
            &admin,
            Cred::Admin,
            &["verify", "--storage", "--target", target],
        )
    };

    let mut runs = Vec::new();
    for i in 0..4 {
        std::fs::write(t.fx.src.join("file"), format!("version {i}\n")).unwrap();
        runs.push(t.backup_run(&host));
    }
    let listed = runs_json(0);
    for r in listed.as_array().unwrap() {
        assert_eq!(r["signature"]["state"], "good", "{listed}");
        assert_eq!(r["status"]["state"], "ok", "{listed}");
    }
    // The object list's detached signature, as gpg checks it.
    let gpg = Gpg::new();
    gpg.run(&[OsStr::new("--import"), sign_cert.as_os_str()], None);
    let dir = t.fx.path("gpg-check");
    std::fs::create_dir_all(&dir).unwrap();
    let base = format!("runs/{HOST}/{SOURCE}/{}", runs[1]);
    std::fs::write(dir.join("refs"), t.download(&format!("{base}.refs"))).unwrap();
    std::fs::write(
        dir.join("refs.sig"),
        t.download(&format!("{base}.refs.sig")),
    )
    .unwrap();
    let gpg_verify = || {
        gpg.cmd()
            .args(["--status-fd", "1", "--verify"])
            .arg(dir.join("refs.sig"))
            .arg(dir.join("refs"))
            .output()
            .unwrap()
    };
    let out = gpg_verify();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("[GNUPG:] GOODSIG"),
        "{said}"
    );
    let refs = String::from_utf8(t.download(&format!("{base}.refs"))).unwrap();
    assert!(
        refs.starts_with("coffer-refs 3\n") && refs.contains("\nchain "),
        "{refs}"
    );
    // ... and a changed list does not pass.
    std::fs::write(
        dir.join("refs"),
        refs.replace("max-run-time", "max-run-tima"),
    )
    .unwrap();
    assert!(
        !gpg_verify().status.success(),
        "gpg accepted an altered object list"
    );

    // The metafile is signed inside its encryption: `gpg -d` checks the signature while
    // it decrypts (GOODSIG by the host's signing key, intact MDC).
    gpg.run(&[OsStr::new("--import"), t.fx.secret_key.as_os_str()], None);
    let meta = t.download(&format!("{base}.meta"));
    let out = gpg
        .cmd()
        .args(["--status-fd", "2", "-d"])
        .write_stdin(meta.clone())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    for needed in ["DECRYPTION_OKAY", "GOODMDC", "GOODSIG", "VALIDSIG"] {
        assert!(
            out.status.success() && said.contains(&format!("[GNUPG:] {needed}")),
            "gpg -d did not say {needed}: {said}"
        );
    }
    let sign_fpr = String::from_utf8(gpg.run(
        &[
            "--with-colons".as_ref(),
            "--list-keys".as_ref(),
            "web1".as_ref(),
        ],
        None,
    ))
    .unwrap();
    let primary = sign_fpr
        .lines()
        .find_map(|l| l.strip_prefix("fpr:::::::::"))
        .map(|f| f.trim_end_matches(':'))
        .unwrap();
    assert!(said.contains(&format!(" {primary}\n")), "{said}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("coffer-metafile 1\n"));

    status(&["--max-age", "1h"]).expect(0); // the monitor records what it saw

    // A forger with the public key (and the put-only credential) plants a newer run:
    // unsigned, then signed by a key of their own.
    let (forger_key, _) = signing_key(&t, "mallory");
    let unsigned = config_with(&t, "forger", "");
    let stranger = config_with(
        &t,
        "stranger",
        &format!("signing_key = {}", toml_str(&forger_key)),
    );
    std::fs::write(t.fx.src.join("file"), "evil\n").unwrap();
    // Newer: stored a second later at least (remote stores date objects to the second).
    if kind.is_remote() {
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let forged = [t.backup_run(&unsigned), t.backup_run(&stranger)];
    let listed = runs_json(3);
    let state_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
            .clone()
    };
    let r = state_of(&forged[0]);
    assert_eq!(r["status"]["state"], "suspicious", "{r}");
    assert!(
        r["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("not signed"),
        "{r}"
    );
    let r = state_of(&forged[1]);
    assert_eq!(r["signature"]["state"], "bad", "{r}");
    assert!(
        r["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("none of the trusted signers"),
        "{r}"
    );
    // restore takes the newest signed run, and refuses a forged one by name.
    let to = t.fx.path("restored");
    let restore = |config: &Path, extra: &[&str], to: &Path| {
        let mut cmd = t.with_cred(coffer(&t.fx.home), Cred::Admin);
        cmd.arg("-c")
            .arg(config)
            .arg("restore")
            .arg("--key")
            .arg(&t.fx.secret_key)
            .args(["--source", SOURCE, "--target", target])
            .args(extra)
            .arg("--to")
            .arg(to);
        run(cmd)
    };
    restore(&admin, &[], &to).expect(0);
    assert_eq!(std::fs::read(to.join("file")).unwrap(), b"version 3\n");
    for id in &forged {
        let out = restore(&admin, &["--run", id], &t.fx.path(&format!("r-{id}")));
        assert_ne!(out.code, Some(0), "{out}");
        let out = out.stderr_has("no trusted signer");
        assert!(
            !t.fx.path(&format!("r-{id}")).join("file").exists(),
            "{out}"
        );
    }
    let anyway = t.fx.path("anyway");
    restore(&admin, &["--run", &forged[0], "--allow-unsigned"], &anyway).expect(0);
    assert_eq!(std::fs::read(anyway.join("file")).unwrap(), b"evil\n");
    // The monitor sees the newest run is not one it trusts.
    let out = status(&["--max-age", "1h"]).expect(1);
    assert!(
        out.stdout.contains(&forged[0]) || out.stdout.contains(&forged[1]),
        "{out}"
    );
    for id in &forged {
        for k in run_keys(&t, id) {
            t.remove(&k);
        }
    }
    status(&["--max-age", "1h"]).expect(0);

    // A run deleted from the middle of the chain.
    let middle = saved(&t, &runs[1]);
    assert_eq!(middle.len(), 3, "meta, refs and refs.sig: {middle:?}");
    for (k, _) in &middle {
        t.remove(k);
    }
    let out = verify().expect(4).stderr_has("deleted");
    assert!(
        out.stderr.contains(&runs[0]) && out.stderr.contains(&runs[2]),
        "{out}"
    );
    let out = status(&["--max-age", "1h"]).expect(1);
    assert!(out.stdout.contains("deleted"), "{out}");
    // Put back (a versioned bucket keeps it): whole again.
    for (k, bytes) in middle.iter().rev() {
        t.overwrite(k, bytes);
    }
    verify().expect(0);

    // A run swapped for another run's content under its name.
    let refs_key = format!("runs/{HOST}/{SOURCE}/{}.refs", runs[2]);
    let genuine = t.download(&refs_key);
    let other = String::from_utf8(t.download(&format!("runs/{HOST}/{SOURCE}/{}.refs", runs[1])))
        .unwrap()
        .replace(&runs[1], &runs[2]);
    t.overwrite(&refs_key, other.as_bytes());
    let out = verify().expect(4);
    assert!(out.stderr.contains(&runs[2]), "{out}");
    t.overwrite(&refs_key, &genuine);
    // The signature still covers the genuine list.
    verify().expect(0);

    // Rollback: the newest run deleted (or the whole target replaced by an older copy).
    let newest = saved(&t, &runs[3]);
    for (k, _) in &newest {
        t.remove(k);
    }
    let out = status(&["--max-age", "1h"]).expect(2);
    assert!(
        out.stdout.starts_with("COFFER CRITICAL - ") && out.stdout.contains("rollback"),
        "{out}"
    );
    assert!(out.stdout.contains(&runs[3]), "{out}");
    let out = verify().expect(4).stderr_has("rollback");
    assert!(out.stderr.contains(&runs[3]), "{out}");
    // Replaying it under a new id does not help: its list names the old run.
    let replay = util::forge::run_id(chrono::Utc::now().timestamp() + 5, "0000cafe");
    for (k, bytes) in newest.iter().rev() {
        t.overwrite(&k.replace(&runs[3], &replay), bytes);
    }
    let out = status(&["--max-age", "1h"]).expect(2);
    assert!(out.stdout.contains("rollback"), "{out}");
    for (k, _) in &newest {
        t.remove(&k.replace(&runs[3], &replay));
    }
    // Put back, all is well; deleted again, a person looks and accepts the target as
    // it is.
    for (k, bytes) in newest.iter().rev() {
        t.overwrite(k, bytes);
    }
    status(&["--max-age", "1h"]).expect(0);
    for (k, _) in &newest {
        t.remove(k);
    }
    status(&["--max-age", "1h"]).expect(2);
    status(&["--max-age", "1h", "--accept-rollback"]).expect(0);
    for (k, bytes) in newest.iter().rev() {
        t.overwrite(k, bytes);
    }
    status(&["--max-age", "1h"]).expect(0);

    // prune's own deletions are not deletions behind its back: it leaves a record of a
    // run it deletes between two it keeps, and none of the runs before the oldest kept.
    std::fs::write(t.fx.src.join("file"), "version 4\n").unwrap();
    runs.push(t.backup_run(&host));
    let rules: &[&str] = match kind {
        Kind::S3 | Kind::S3Ministack | Kind::Azure | Kind::Gcs => &["--keep-last", "2"],
        Kind::Folder => {
            // The stored time of a folder's object is its mtime: spread the runs over
            // the next days (ahead of the ids' claims by less than max_run_time allows)
            // so that keeping the newest run of the two latest days keeps runs 2 and 4.
            // Noon UTC of the days ahead, so that no run crosses midnight.
            let noon = chrono::Utc::now().timestamp() / 86_400 * 86_400 + 43_200;
            for (i, days) in [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3)] {
                let when = noon + days * 86_400 + i as i64 * 60;
                let meta =
                    t.fx.target
                        .join(format!("runs/{HOST}/{SOURCE}/{}.meta", runs[i]));
                let ok = std::process::Command::new("touch")
                    .arg("-d")
                    .arg(format!("@{when}"))
                    .arg(&meta)
                    .status()
                    .unwrap();
                assert!(ok.success());
            }
            &["--keep-daily", "2"]
        }
    };
    {
        let _lock = t.deletes_lock();
        let mut args = vec!["prune", "--target", target, "--json"];
        args.extend_from_slice(rules);
        let out = with(&t, &admin, Cred::Admin, &args).expect(0);
        assert_eq!(out.json()[0]["deleted"], 3, "{out}");
    }
    let records: Vec<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(".pruned"))
        .collect();
    match kind {
        Kind::S3 | Kind::S3Ministack | Kind::Azure | Kind::Gcs => {
            assert!(records.is_empty(), "{records:?}")
        }
        Kind::Folder => assert_eq!(
            records,
            [format!("runs/{HOST}/{SOURCE}/{}.pruned", runs[3])],
            "a record of the run between the kept ones"
        ),
    }
    verify().expect(0);
    status(&["--max-age", "30d"]).expect(0);
    if kind == Kind::Folder {
        // Without the record, the gap is a deletion.
        t.remove(&records[0]);
        verify().expect(4).stderr_has("deleted");
    }
    restore(&admin, &[], &t.fx.path("after-prune")).expect(0);
}

use std::ffi::OsStr;

/// A monitor watching a bucket many hosts share checks them one host at a time: a host
/// whose runs were all deleted (no run of it left to hold a finding) is a rollback and
/// CRITICAL, not a host that was never there; `runs` lists every host, by host.
#[test]
fn a_host_whose_runs_all_vanish_is_a_rollback_for_the_monitor() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    let mut ids = Vec::new();
    for host in ["web1", "web2"] {
        let config = fx.path(&format!("{host}.toml"));
        // Two machines: each its own name and local state.
        let text = std::fs::read_to_string(&fx.config)
            .unwrap()
            .replacen(
                &format!("host = \"{HOST}\""),
                &format!("host = \"{host}\""),
                1,
            )
            .replacen(
                &format!("state_dir = {}", toml_str(&fx.state)),
                &format!(
                    "state_dir = {}",
                    toml_str(&fx.path(&format!("state-{host}")))
                ),
                1,
            );
        std::fs::write(&config, text).unwrap();
        let out = fx.backup_using(&config).ok();
        ids.push((
            host,
            out.json()["runs"][0]["run"].as_str().unwrap().to_string(),
        ));
    }
    // The monitor's config: its own source goes elsewhere, so nothing is expected here.
    let other = fx.path("other-target");
    let monitor = fx.path("monitor.toml");
    std::fs::write(
        &monitor,
        format!(
            "host = \"monitor\"\nstate_dir = {}\n\n[source.{SOURCE}]\npath = {}\n\
             recipients = [{}]\ntargets = [\"other\"]\n\n[target.local]\nurl = {}\n\n\
             [target.other]\nurl = {}\n",
            toml_str(&fx.path("monitor-state")),
            toml_str(&fx.src),
            toml_str(&fx.public_key),
            toml_str(Path::new(&fx.target_url())),
            toml_str(Path::new(&format!("file://{}", other.display()))),
        ),
    )
    .unwrap();
    let status = || {
        let mut cmd = coffer(&fx.home);
        cmd.arg("-c")
            .arg(&monitor)
            .args(["status", "--target", "local", "--json"]);
        run(cmd)
    };
    let out = status().expect(0);
    let sources = out.json()["sources"].as_array().unwrap().clone();
    let hosts: Vec<&str> = sources.iter().map(|s| as_str(s, "host")).collect();
    assert_eq!(hosts, ["web1", "web2"], "{out}");

    let mut cmd = fx.cmd();
    cmd.args(["runs", "--json"]);
    let listed = run(cmd).expect(0).json();
    let listed: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (as_str(r, "host"), as_str(r, "run")))
        .collect();
    let want: Vec<(&str, &str)> = ids.iter().map(|(h, r)| (*h, r.as_str())).collect();
    assert_eq!(listed, want);

    // Every object of web1's runs deleted behind the monitor's back.
    std::fs::remove_dir_all(fx.target.join("runs/web1")).unwrap();
    let out = status().expect(2);
    let json = out.json();
    assert_eq!(json["health"], "CRITICAL", "{out}");
    let web1 = json["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "web1")
        .unwrap_or_else(|| panic!("web1 is not reported\n{out}"));
    let reasons = web1["reasons"].to_string();
    assert!(
        reasons.contains("rollback") && reasons.contains(&ids[0].1),
        "{out}"
    );
    // Still CRITICAL until a person accepts the target as it is.
    status().expect(2);
    let mut cmd = coffer(&fx.home);
    cmd.arg("-c")
        .arg(&monitor)
        .args(["status", "--target", "local", "--accept-rollback"]);
    run(cmd).expect(0);
    status().expect(0);
}
