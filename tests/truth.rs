//! Exit statuses and output that tell the truth: what was left out changes the status and
//! is named, counts add up, names cannot forge lines, JSON says when a command failed,
//! messages say things once, and the config refuses what cannot work.

mod util;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use util::*;

fn config_error(fx: &Fixture, text: &str) -> Out {
    std::fs::write(&fx.config, text).unwrap();
    fx.backup().expect(EXIT_ERROR)
}

#[test]
fn restoring_a_path_the_run_does_not_hold_fails_and_names_it() {
    let fx = Fixture::new();
    write(&fx.src.join("etc/nginx.conf"), b"x\n");
    fx.backup_ok();
    let to = fx.path("out");
    fx.restore(&to, &[OsStr::new("etc/nginx.conf"), OsStr::new("etc/nope")])
        .expect(EXIT_ERROR)
        .stderr_has("etc/nope");
    assert!(!to.join("etc/nginx.conf").exists(), "nothing restored");
}

#[test]
fn a_file_that_changes_while_it_is_read_makes_the_exit_status_3_and_is_listed() {
    let fx = Fixture::new();
    let path = fx.src.join("growing.log");
    write(&path, &pseudo_random(1, 24 << 20));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"x").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let out = fx.backup();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let out = out
        .expect(EXIT_PARTIAL)
        .stderr_has("changed while it was read");
    let run = &out.json()["runs"][0];
    assert_eq!(run["files_changed_while_read"], 1, "{out}");
    assert_eq!(run["problems"][0]["path"], "growing.log");
}

#[test]
fn counts_add_up_and_json_says_null_where_the_text_says_nothing() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), &pseudo_random(2, 100_000));
    let first = fx.backup_ok();
    assert!(first["packs_stored"].as_u64().unwrap() >= 1);
    let again = fx.backup_ok();
    assert_eq!(again["packs_stored"], 0, "{again:#}");
    assert_eq!(
        again["run_objects_stored"], 2,
        "object list and metafile: {again:#}"
    );
    assert!(again["dedup_ratio"].is_null(), "{again:#}");
    let mut cmd = fx.cmd();
    cmd.arg("backup");
    let text = run(cmd).ok().stdout;
    assert!(
        text.contains("in 0 packs and 2 objects of the run's own"),
        "{text}"
    );
    assert!(text.contains("dedup ratio    - (nothing new)"), "{text}");
}

#[test]
fn names_on_standard_error_are_escaped_and_json_carries_them_exactly() {
    let fx = Fixture::new();
    write(&fx.src.join("ok"), b"fine\n");
    // A socket is noted (never stored) with its name: the note must stay on its line.
    let name = b"evil\nname \xff";
    let sock = fx.src.join(OsStr::from_bytes(name));
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = fx.backup().ok();
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("socket"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("evil\\nname \\xFF"), "{line}");
    let problems = &out.json()["runs"][0]["problems"];
    assert_eq!(problems[0]["path"], "evil%0Aname%20%FF", "{problems:#}");
}

#[test]
fn a_command_that_fails_with_json_says_so_in_json() {
    let fx = Fixture::new();
    let mut cmd = coffer(&fx.home);
    cmd.args(["runs", "--json", "--target"])
        .arg(format!("file://{}", fx.path("nowhere").display()));
    let out = run(cmd).expect(EXIT_ERROR);
    let json = out.json();
    assert_eq!(json["error"]["kind"], "target", "{out}");
    assert_eq!(json["error"]["exit_status"], 1);
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
}

#[test]
fn messages_say_things_once_and_name_what_to_do() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"a\n");
    // A recipient file that is not there: the cause appears once.
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let missing = text.replace("coffer.pub.asc", "missing.pub.asc");
    let out = config_error(&fx, &missing);
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "{out}"
    );
    std::fs::write(&fx.config, text).unwrap();
    fx.backup_ok();
    // --to a file.
    let file = fx.path("a-file");
    write(&file, b"");
    fx.restore(&file, &[])
        .expect(EXIT_ERROR)
        .stderr_has("must be a directory");
    // A damaged local index is named as a cache, with how to rebuild it.
    std::fs::write(
        fx.state.join("index.sqlite"),
        b"this is not a database, not at all",
    )
    .unwrap();
    for f in ["index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(fx.state.join(f));
    }
    fx.backup()
        .expect(EXIT_ERROR)
        .stderr_has("only a cache")
        .stderr_has("mv ");
}

#[test]
fn a_secret_key_that_cannot_decrypt_is_not_called_a_public_certificate() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"a\n");
    fx.backup_ok();
    let gpg = Gpg::new();
    gpg.run(
        &[
            "--passphrase".as_ref(),
            "".as_ref(),
            "--quick-gen-key".as_ref(),
            "signer".as_ref(),
            "ed25519".as_ref(),
            "sign".as_ref(),
            "never".as_ref(),
        ],
        None,
    );
    let (_, secret) = gpg.export("");
    let key = fx.path("sign-only.key.asc");
    std::fs::write(&key, secret).unwrap();
    let out = fx
        .restore_with(&key, &fx.path("out"), &[])
        .expect(EXIT_ERROR)
        .stderr_has("none that can decrypt");
    assert!(!out.stderr.contains("public certificate"), "{out}");
}

#[test]
fn the_config_refuses_targets_that_cannot_work_and_follows_a_symlinked_source() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"a\n");
    let good = std::fs::read_to_string(&fx.config).unwrap();
    // The same target twice.
    let twice = good.replace("targets = [\"local\"]", "targets = [\"local\", \"local\"]");
    config_error(&fx, &twice).stderr_has("twice");
    // Two names for one folder (a trailing slash).
    let url = fx.target_url();
    let same = format!("{good}\n[target.again]\nurl = \"{url}/\"\n");
    config_error(&fx, &same).stderr_has("same folder");
    // A target inside its source: refused, unless the source ignores it.
    let inner = format!("file://{}", fx.src.join("backups").display());
    let inside = good.replace(&url, &inner);
    config_error(&fx, &inside).stderr_has("inside source");
    let ignored = inside.replace(
        "targets = [\"local\"]",
        "targets = [\"local\"]\nignore = [\"/backups\"]",
    );
    std::fs::write(&fx.config, &ignored).unwrap();
    std::fs::create_dir_all(fx.src.join("backups")).unwrap();
    fx.backup_ok();
    // A source path that is a symlink to a directory is followed (the root only).
    let link = fx.path("src-link");
    std::os::unix::fs::symlink(&fx.src, &link).unwrap();
    let linked = good.replace(&toml_str(&fx.src), &toml_str(&link));
    assert_ne!(linked, good);
    std::fs::write(&fx.config, linked).unwrap();
    let stats = fx.backup_ok();
    assert!(stats["files"].as_u64().unwrap() >= 1, "{stats:#}");
}

#[test]
fn runs_columns_line_up_and_a_run_id_prefix_restores_without_the_source() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"a\n");
    let id = fx.backup_ok()["run"].as_str().unwrap().to_string();
    let mut cmd = coffer(&fx.home);
    cmd.args(["runs", "--target", &fx.target_url()]);
    let out = run(cmd).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let col = |l: &str, word: &str| l.find(word).unwrap_or_else(|| panic!("{l}"));
    assert_eq!(
        col(lines[0], "STATUS"),
        col(lines[1], "ok"),
        "{}",
        out.stdout
    );
    assert_eq!(col(lines[0], "RUN"), col(lines[1], &id), "{}", out.stdout);
    let to = fx.path("out");
    let mut cmd = fx.cmd();
    cmd.arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--run", &id[..20], "--to"])
        .arg(&to);
    run(cmd).ok();
    assert_eq!(std::fs::read(to.join("a")).unwrap(), b"a\n");
}
