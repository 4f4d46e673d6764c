//! Damage and bad input, end to end: a corrupt or missing pack fails only the files in
//! it, an unreadable file is skipped and named, a config error names its file and line,
//! planted or renamed metafiles are refused.

mod util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use util::*;

#[test]
fn corrupt_or_missing_pack_fails_only_the_files_in_it() {
    let fx = Fixture::new();
    let a = pseudo_random(11, 200_000);
    let b = pseudo_random(12, 200_000);
    write(&fx.src.join("a.bin"), &a);
    write(&fx.src.join("c.txt"), b"small, same pack as a\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    fx.backup_ok();
    let first_pack = fx.objects();
    assert_eq!(first_pack.len(), 1, "one pack for the first run");
    let first_pack = first_pack[0].clone();

    // b arrives in the second run, in a pack of its own.
    write(&fx.src.join("b.bin"), &b);
    set_mtime(&fx.src.join("b.bin"), 1_600_000_500, 5);
    fx.backup_ok();
    let second_pack: Vec<PathBuf> = fx
        .objects()
        .into_iter()
        .filter(|p| *p != first_pack)
        .collect();
    assert_eq!(second_pack.len(), 1, "one new pack for the second run");
    let second_pack = second_pack[0].clone();

    // One byte flipped in the middle of b's pack.
    let original = read(&second_pack);
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    std::fs::write(&second_pack, &damaged).unwrap();

    let dest = fx.path("after-corruption");
    let out = fx
        .restore(&dest, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has(&dest.join("b.bin").display().to_string());
    assert!(!dest.join("b.bin").exists(), "no partial b.bin\n{out}");
    assert_eq!(leftover_temporaries(&dest), Vec::<String>::new());
    assert!(read(&dest.join("a.bin")) == a);
    assert_eq!(read(&dest.join("c.txt")), b"small, same pack as a\n");
    assert!(!out.stderr.contains("a.bin"), "a.bin is fine\n{out}");

    // Repaired b's pack, deleted a's and c's.
    std::fs::write(&second_pack, &original).unwrap();
    std::fs::remove_file(&first_pack).unwrap();
    let dest = fx.path("after-deletion");
    let out = fx
        .restore(&dest, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has(&dest.join("a.bin").display().to_string())
        .stderr_has(&dest.join("c.txt").display().to_string());
    assert!(!dest.join("a.bin").exists() && !dest.join("c.txt").exists());
    assert_eq!(leftover_temporaries(&dest), Vec::<String>::new());
    assert!(read(&dest.join("b.bin")) == b, "b.bin restored\n{out}");
}

const NOBODY: u32 = 65534;

/// Hands every entry below `root` to `uid:gid`.
fn chown_tree(root: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).unwrap();
    for rel in relative_paths(root) {
        std::os::unix::fs::lchown(root.join(os(&rel)), Some(uid), Some(gid)).unwrap();
    }
}

#[test]
fn unreadable_file_is_skipped_named_and_the_rest_backed_up() {
    if !is_root() || !have_program("setpriv") {
        eprintln!("skipping: needs root and setpriv to back up as an unprivileged user");
        return;
    }
    let fx = Fixture::new();
    write(&fx.src.join("readable.txt"), b"anyone may read\n");
    write(&fx.src.join("sub/also.txt"), b"also readable\n");
    write(&fx.src.join("sub/locked.txt"), b"nobody may read\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    chown_tree(fx.dir.path(), NOBODY, NOBODY);
    let locked = fx.src.join("sub/locked.txt");
    chmod(&locked, 0o000);

    // The binary must be reachable by that user; copy it in if it is not.
    let ids = [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
    ];
    let mut bin = coffer_bin();
    let mut probe = clean_command("setpriv", &fx.home);
    probe.args(&ids).arg(&bin).arg("--version");
    if run(probe).code != Some(0) {
        let copy = fx.path("coffer-bin");
        std::fs::copy(&bin, &copy).unwrap();
        chmod(&copy, 0o755);
        bin = copy;
    }

    let mut cmd = clean_command("setpriv", &fx.home);
    cmd.args(&ids)
        .arg(&bin)
        .arg("-c")
        .arg(&fx.config)
        .args(["backup", "--json"]);
    let out = run(cmd)
        .expect(EXIT_PARTIAL)
        .stderr_has(&locked.display().to_string());
    let stats = out.json()["runs"][0].clone();
    assert_eq!(as_u64(&stats, "files_skipped"), 1, "{out}");
    assert_eq!(as_u64(&stats, "files"), 3, "{out}");

    let dest = fx.path("restored");
    fx.restore(&dest, &[]).ok();
    assert_eq!(read(&dest.join("readable.txt")), b"anyone may read\n");
    assert_eq!(read(&dest.join("sub/also.txt")), b"also readable\n");
    assert!(!dest.join("sub/locked.txt").exists());
    let mut got = relative_paths(&dest);
    got.sort();
    assert_eq!(
        got,
        vec![
            b"readable.txt".to_vec(),
            b"sub".to_vec(),
            b"sub/also.txt".to_vec()
        ]
    );
}

/// Writes `text` as the config, runs a backup, and checks exit 1 and `<file>:<line>`.
fn assert_config_error(fx: &Fixture, text: &str, line: usize, mentions: &str) {
    std::fs::write(&fx.config, text).unwrap();
    let where_ = format!("{}:{line}", fx.config.display());
    fx.backup()
        .expect(EXIT_ERROR)
        .stderr_has(&where_)
        .stderr_has(mentions);
}

#[test]
fn config_errors_name_file_and_line() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    let good = fx.config_text(&Settings::default());

    let unknown = good.replace(
        "targets = [\"local\"]\n",
        "targets = [\"local\"]\ncompression_level = 3\n",
    );
    assert_ne!(unknown, good);
    let line = line_of(&unknown, "compression_level");
    assert_config_error(&fx, &unknown, line, "compression_level");

    let undefined = good.replace("targets = [\"local\"]", "targets = [\"offsite\"]");
    assert_ne!(undefined, good);
    let line = line_of(&undefined, "offsite");
    assert_config_error(&fx, &undefined, line, "offsite");

    // And nothing was stored by either.
    assert_eq!(std::fs::read_dir(&fx.target).unwrap().count(), 0);
}

/// Whoever can write to the target must not be able to make restore use a metafile it
/// planted: one in plaintext is refused from the target (only a local --index file may be
/// plaintext), and an encrypted one stored under another run's name is refused too. By
/// default restore passes over such runs to the newest one that checks out, and says so.
#[test]
fn planted_or_renamed_metafiles_are_refused() {
    let fx = Fixture::new();
    write(&fx.src.join("real.txt"), b"the real data\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    fx.backup_ok();
    let stored = fx.metafiles()[0].clone();
    let dir = stored.parent().unwrap().to_path_buf();

    // A plaintext metafile named as a newer run, listing no file.
    let planted_id = "20300101T000000Z-00000000";
    let plain = format!(
        "coffer-metafile 1\nhost {HOST}\nsource {SOURCE}\nrun {planted_id}\n\n\
         dir . 755 0 0 - - 0.000000000\nend 1 0\n"
    );
    write(&dir.join(format!("{planted_id}.meta")), plain.as_bytes());
    let dest = fx.path("planted");
    fx.restore(&dest, &[OsStr::new("--run"), OsStr::new(planted_id)])
        .expect(EXIT_ERROR)
        .stderr_has("not encrypted");
    assert!(!dest.join("real.txt").exists());
    let dest = fx.path("default");
    fx.restore(&dest, &[]).ok().stderr_has(planted_id);
    assert_eq!(read(&dest.join("real.txt")), b"the real data\n");

    // The same plaintext given explicitly with --index is the user's choice: accepted.
    let explicit = fx.path("explicit.meta");
    write(&explicit, plain.as_bytes());
    let mut cmd = fx.cmd();
    cmd.arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .arg("--index")
        .arg(&explicit)
        .arg("--to")
        .arg(fx.path("explicit"));
    run(cmd).ok();

    // The genuine encrypted metafile copied under a newer run's name.
    std::fs::remove_file(dir.join(format!("{planted_id}.meta"))).unwrap();
    std::fs::copy(&stored, dir.join(format!("{planted_id}.meta"))).unwrap();
    let dest = fx.path("renamed");
    fx.restore(&dest, &[OsStr::new("--run"), OsStr::new(planted_id)])
        .expect(EXIT_ERROR)
        .stderr_has("planted or moved");
    // With a copied object list as well, it gets past the keyless checks; the metafile's
    // own header still gives it away, and restore falls back to the genuine run.
    let refs = stored.with_extension("refs");
    std::fs::copy(&refs, dir.join(format!("{planted_id}.refs"))).unwrap();
    let dest = fx.path("renamed-default");
    fx.restore(&dest, &[]).ok().stderr_has(planted_id);
    assert_eq!(read(&dest.join("real.txt")), b"the real data\n");
}
