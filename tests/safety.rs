//! Nothing silently lost: a backup that exits 0 has a newest run that restores whole,
//! whatever happened to the target behind the local index's back (wiped, replaced by
//! another disk, unmounted, a pack deleted), and exit statuses tell the truth.

mod util;

use std::path::Path;

use util::*;

fn restore_newest(fx: &Fixture, to: &Path) -> Out {
    fx.restore(to, &[])
}

fn packs(fx: &Fixture) -> Vec<std::path::PathBuf> {
    fx.objects()
}

#[test]
fn a_wiped_target_is_never_mistaken_for_the_one_the_index_describes() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), &pseudo_random(1, 300_000));
    write(&fx.src.join("b"), b"bee\n");
    fx.backup_ok();
    std::fs::remove_dir_all(&fx.target).unwrap();
    std::fs::create_dir(&fx.target).unwrap();
    write(&fx.src.join("b"), b"changed\n");
    let out = fx.backup().ok().stderr_has("holds none of the markers");
    let stats = &out.json()["runs"][0];
    assert!(
        stats["chunks_new"].as_u64().unwrap() > 1,
        "everything stored again: {stats:#}"
    );
    let to = fx.path("out");
    restore_newest(&fx, &to).ok();
    assert_same_tree(&fx.src, &to);
}

#[test]
fn rotated_disks_behind_one_mount_point_each_get_whole_runs() {
    let fx = Fixture::new();
    let (disk_a, disk_b) = (fx.path("disk-a"), fx.path("disk-b"));
    write(&fx.src.join("a"), &pseudo_random(2, 300_000));
    fx.backup_ok(); // onto disk A, mounted at the target's place
    std::fs::rename(&fx.target, &disk_a).unwrap();
    std::fs::create_dir(&fx.target).unwrap(); // disk B, empty
    write(&fx.src.join("b"), b"second\n");
    fx.backup().ok().stderr_has("holds none of the markers");
    std::fs::rename(&fx.target, &disk_b).unwrap();
    std::fs::rename(&disk_a, &fx.target).unwrap(); // disk A again
    write(&fx.src.join("c"), b"third\n");
    let out = fx.backup().ok();
    assert!(
        !out.stderr.contains("markers"),
        "disk A is recognised\n{out}"
    );
    let to = fx.path("out-a");
    restore_newest(&fx, &to).ok();
    assert_same_tree(&fx.src, &to);
    // Disk B's run restores whole too, from disk B alone.
    let mut cmd = coffer(&fx.home);
    cmd.args(["restore", "--target"])
        .arg(format!("file://{}", disk_b.display()))
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--to"])
        .arg(fx.path("out-b"));
    run(cmd).ok();
    assert_eq!(
        std::fs::read(fx.path("out-b").join("b")).unwrap(),
        b"second\n"
    );
}

#[test]
fn a_missing_target_folder_fails_the_backup_until_it_is_set_up() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"x\n");
    std::fs::remove_dir(&fx.target).unwrap();
    fx.backup()
        .expect(EXIT_ERROR)
        .stderr_has("does not exist (is the disk mounted?)")
        .stderr_has("coffer init");
    assert!(!fx.target.exists(), "nothing was created");
    let mut cmd = fx.cmd();
    cmd.args(["init", "local"]);
    let out = run(cmd).ok();
    // It says what a folder guarantees, and what it does not.
    assert!(
        out.stdout.contains("create-only: yes") && out.stdout.contains("put-only credential: none"),
        "{out}"
    );
    fx.backup_ok();
}

#[test]
fn a_pack_deleted_from_the_target_is_stored_again_and_gc_names_the_runs_it_breaks() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Default::default()
    });
    write(&fx.src.join("a"), &pseudo_random(3, 3 << 20));
    write(&fx.src.join("b"), &pseudo_random(4, 200_000));
    let first = fx.backup_ok()["run"].as_str().unwrap().to_string();
    let before = packs(&fx);
    assert!(before.len() >= 3, "{before:?}");
    let gone = before[1].clone();
    std::fs::remove_file(&gone).unwrap();
    let gone_name = gone.file_name().unwrap().to_string_lossy().into_owned();

    // gc sees the hole: it names the object and the run that needs it, and exits 3.
    let mut cmd = fx.cmd();
    cmd.args(["gc", "--dry-run", "--json"]);
    let out = run(cmd).expect(EXIT_PARTIAL).stderr_has("--forget-cache");
    let missing = &out.json()[0]["missing"];
    assert_eq!(missing.as_array().map(Vec::len), Some(1), "{out}");
    assert!(missing[0]["object"].as_str().unwrap().ends_with(&gone_name));
    assert_eq!(missing[0]["runs"][0], format!("{HOST}/{SOURCE}/{first}"));

    // The next backup (nothing changed) notices and stores those chunks again; its exit
    // status says something was found wrong.
    let out = fx
        .backup()
        .expect(EXIT_PARTIAL)
        .stderr_has("missing from target");
    assert_eq!(out.json()["runs"][0]["packs_missing"], 1);
    let to = fx.path("out");
    restore_newest(&fx, &to).ok();
    assert_same_tree(&fx.src, &to);
}

/// Runs `coffer backup --json` as an unprivileged user: directly when the tests are not
/// root, else as uid/gid 65534 through setpriv (root reads everything).
fn backup_unprivileged(fx: &Fixture) -> Out {
    if !is_root() {
        return fx.backup();
    }
    // Everything the backup needs must be reachable for that user.
    for p in [fx.dir.path(), fx.config.parent().unwrap()] {
        chmod(p, 0o755);
    }
    chmod(&fx.public_key, 0o644);
    chmod(&fx.config, 0o644);
    std::fs::create_dir_all(&fx.state).unwrap();
    for p in [&fx.state, &fx.target] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let mut cmd = clean_command("setpriv", &fx.home);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(coffer_bin())
        .arg("-c")
        .arg(&fx.config)
        .args(["backup", "--json"]);
    run(cmd)
}

#[test]
fn an_unreadable_source_root_fails_the_backup_and_commits_no_run() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), b"x\n");
    chmod(&fx.src, 0o000);
    let out = backup_unprivileged(&fx);
    chmod(&fx.src, 0o755);
    out.expect(EXIT_ERROR).stderr_has("Permission denied");
    assert!(fx.metafiles_or_none().is_empty(), "no run was committed");
}

#[test]
fn an_existing_directory_keeps_its_own_mode_owner_and_mtime() {
    let fx = Fixture::new();
    write(&fx.src.join("docs/a"), b"a\n");
    chmod(&fx.src.join("docs"), 0o755);
    fx.backup_ok();
    let to = fx.path("out");
    let docs = to.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    chmod(&docs, 0o700);
    if is_root() {
        std::os::unix::fs::chown(&docs, Some(4321), Some(4321)).unwrap();
    }
    set_mtime(&docs, 1_000_000_000, 0);
    let before = snapshot(&docs)[&b"."[..]].clone();
    fx.restore(&to, &[]).ok();
    let after = snapshot(&docs)[&b"."[..]].clone();
    assert_eq!(
        (after.mode, after.uid, after.gid),
        (before.mode, before.uid, before.gid),
        "kept"
    );
    assert_eq!(std::fs::read(docs.join("a")).unwrap(), b"a\n");
    std::fs::remove_file(docs.join("a")).unwrap();
    fx.restore(&to, &[std::ffi::OsStr::new("--overwrite")]).ok();
    let m = snapshot(&docs)[&b"."[..]].clone();
    assert_eq!(m.mode, 0o755, "--overwrite gives it the recorded mode");
}

#[test]
fn an_interrupted_restore_leaves_nothing_half_written_and_a_rerun_completes() {
    let fx = Fixture::new();
    write(&fx.src.join("big"), &pseudo_random(5, 48 << 20));
    for i in 0..200 {
        write(
            &fx.src.join(format!("small/{i:03}")),
            &pseudo_random(i, 3000),
        );
    }
    fx.backup_ok();
    let to = fx.path("out");
    let mut child = std::process::Command::new(coffer_bin())
        .env_clear()
        .env("HOME", &fx.home)
        .arg("-c")
        .arg(&fx.config)
        .arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--to"])
        .arg(&to)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt while a file is being written: a temporary file is there. (A walk that
    // tolerates entries vanishing under it.)
    fn temporaries_now(dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".coffer-restore-")
                || (e.file_type().is_ok_and(|t| t.is_dir()) && temporaries_now(&e.path()))
        })
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !temporaries_now(&to) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary file seen"
        );
        if child.try_wait().unwrap().is_some() {
            panic!("the restore ended before it could be interrupted");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(leftover_temporaries(&to), Vec::<String>::new());
    // Run again: what is complete stays, the rest is restored.
    let out = fx.restore(&to, &[std::ffi::OsStr::new("--json")]).ok();
    assert_same_tree(&fx.src, &to);
    // Every file is either restored now or was complete and identical already.
    let stats = out.json();
    let done = stats["files"].as_u64().unwrap() + stats["identical"].as_u64().unwrap();
    assert_eq!(done, 201, "{stats:#}");
    assert_eq!(stats["failed"], 0);
}

#[test]
fn holes_of_a_sparse_file_are_not_read_and_survive_the_round_trip() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new();
    let path = fx.src.join("disk.img");
    let size: u64 = 256 << 20;
    {
        let mut f = std::fs::File::create(&path).unwrap();
        for at in [0u64, 100 << 20, size - 4096] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&pseudo_random(at, 4096)).unwrap();
        }
        f.set_len(size).unwrap();
    }
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    if allocated(&path) > 4 << 20 {
        eprintln!("note: this file system does not keep holes; nothing to check");
        return;
    }
    let stats = fx.backup_ok();
    assert!(
        stats["bytes_read"].as_u64().unwrap() < 1 << 20,
        "holes are not read: {stats:#}"
    );
    assert!(stats["bytes_holes"].as_u64().unwrap() > size - (1 << 20));
    let to = fx.path("out");
    fx.restore(&to, &[]).ok();
    assert_same_tree(&fx.src, &to);
    let restored = allocated(&to.join("disk.img"));
    assert!(
        restored < 4 << 20,
        "restored with {restored} bytes allocated"
    );
}

#[test]
fn an_unreadable_directory_counts_as_a_skipped_directory_not_a_file() {
    let fx = Fixture::new();
    write(&fx.src.join("open/a"), b"a\n");
    write(&fx.src.join("closed/b"), b"b\n");
    chmod(&fx.src.join("closed"), 0o000);
    let out = backup_unprivileged(&fx);
    chmod(&fx.src.join("closed"), 0o755);
    let out = out.expect(EXIT_PARTIAL);
    let run = &out.json()["runs"][0];
    assert_eq!(run["dirs_skipped"], 1, "{out}");
    assert_eq!(run["files_skipped"], 0, "{out}");
    assert_eq!(run["files"], 1, "{out}");
}
