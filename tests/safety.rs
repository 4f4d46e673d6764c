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
    run(cmd).ok();
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

    // The next backup (nothing changed) notices and stores those chunks again.
    let out = fx.backup().ok().stderr_has("missing from target");
    assert_eq!(out.json()["runs"][0]["packs_missing"], 1);
    let to = fx.path("out");
    restore_newest(&fx, &to).ok();
    assert_same_tree(&fx.src, &to);
}
