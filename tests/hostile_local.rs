//! The threat model, played by a hostile local user (docs/FORMAT.md section 9): symlinks
//! already in the restore destination or swapped in while restore runs, a directory
//! swapped for a symlink while a backup reads the source, a state directory another user
//! could write. Each test races the real binary itself.

mod util;

use std::ffi::OsStr;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::Duration;

use util::*;

/// A directory outside the destination that nothing may touch.
fn precious_dir(fx: &Fixture) -> std::path::PathBuf {
    let outside = fx.path("outside");
    write(&outside.join("target.txt"), b"precious\n");
    chmod(&outside, 0o700);
    outside
}

#[track_caller]
fn assert_untouched(outside: &Path) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["target.txt"], "something was written outside --to");
    assert_eq!(
        std::fs::read(outside.join("target.txt")).unwrap(),
        b"precious\n"
    );
    let mode = std::fs::metadata(outside).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the mode of a directory outside --to changed");
}

#[test]
fn restore_never_follows_a_symlink_already_in_the_destination() {
    let fx = Fixture::new();
    write(&fx.src.join("docs/a.txt"), b"doc a\n");
    write(&fx.src.join("docs/sub/b.txt"), b"doc b\n");
    write(&fx.src.join("top.txt"), b"top\n");
    chmod(&fx.src.join("docs"), 0o777);
    fx.backup_ok();
    let outside = precious_dir(&fx);
    let to = fx.path("out");
    std::fs::create_dir(&to).unwrap();
    symlink(&outside, to.join("docs")).unwrap();
    symlink(outside.join("target.txt"), to.join("top.txt")).unwrap();

    let out = fx
        .restore(&to, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("not a directory");
    assert_untouched(&outside);
    assert!(out.stderr.contains("top.txt"), "{out}");

    fx.restore(&to, &[OsStr::new("--overwrite")]).ok();
    assert_untouched(&outside);
    assert!(std::fs::symlink_metadata(to.join("docs")).unwrap().is_dir());
    assert_eq!(
        std::fs::read(to.join("docs/sub/b.txt")).unwrap(),
        b"doc b\n"
    );
    let top = std::fs::symlink_metadata(to.join("top.txt")).unwrap();
    assert!(top.is_file(), "the link was replaced, not written through");
    assert_eq!(std::fs::read(to.join("top.txt")).unwrap(), b"top\n");
}

#[test]
fn a_symlink_swapped_in_while_restore_runs_redirects_nothing() {
    let fx = Fixture::new();
    let dirs = 60;
    for d in 0..dirs {
        for f in 0..15 {
            write(
                &fx.src.join(format!("d{d:03}/f{f:02}")),
                format!("{d} {f}\n").as_bytes(),
            );
        }
        // World-writable directories: a restore that chmods through a swapped link
        // makes the directory outside 0777.
        chmod(&fx.src.join(format!("d{d:03}")), 0o777);
    }
    fx.backup_ok();
    let outside = precious_dir(&fx);
    for round in 0..3 {
        let to = fx.path(&format!("out{round}"));
        std::fs::create_dir(&to).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (to, outside, stop) = (to.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for d in 0..dirs {
                        let p = to.join(format!("d{d:03}"));
                        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
                        if is_dir
                            && std::fs::rename(&p, to.join(format!("moved-{round}-{d}-{swaps}")))
                                .is_ok()
                        {
                            let _ = symlink(&outside, &p);
                            swaps += 1;
                        }
                    }
                }
                swaps
            })
        };
        let out = fx.restore(&to, &[]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = racer.join().unwrap();
        assert!(
            out.code == Some(EXIT_OK) || out.code == Some(EXIT_PARTIAL),
            "{out}"
        );
        eprintln!("round {round}: {swaps} swaps");
        assert_untouched(&outside);
    }
}

#[test]
fn a_directory_swapped_for_a_symlink_during_backup_stores_nothing_from_elsewhere() {
    let fx = Fixture::new();
    let n = 500;
    let eve = fx.src.join("home/eve");
    for i in 0..n {
        write(
            &eve.join(format!("f{i:03}")),
            format!("eve's file {i}\n").as_bytes(),
        );
    }
    // Files of the same names that the backup must never store under eve's path.
    let secret = fx.path("secret");
    for i in 0..n {
        write(
            &secret.join(format!("f{i:03}")),
            format!("SECRET {i}\n").as_bytes(),
        );
    }
    chmod(&secret, 0o700);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (eve, secret, stop) = (eve.clone(), secret.clone(), stop.clone());
        std::thread::spawn(move || {
            let real = eve.with_file_name("eve.real");
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::rename(&eve, &real).is_ok() {
                    let _ = symlink(&secret, &eve);
                    std::thread::sleep(Duration::from_micros(300));
                    let _ = std::fs::remove_file(&eve);
                    let _ = std::fs::rename(&real, &eve);
                    swaps += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
            swaps
        })
    };
    let mut outs = Vec::new();
    for _ in 0..6 {
        // Without its digest cache each backup reads every file again.
        let _ = std::fs::remove_dir_all(&fx.state);
        outs.push(fx.backup());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{swaps} swaps during 6 backups");
    for (i, out) in outs.iter().enumerate() {
        assert!(
            out.code == Some(EXIT_OK) || out.code == Some(EXIT_PARTIAL),
            "backup {i}\n{out}"
        );
    }
    for run in fx.runs() {
        let id = run["run"].as_str().unwrap().to_string();
        let to = fx.path(&format!("restored-{id}"));
        let out = fx.restore_run(&id, &to, &[]);
        assert_eq!(out.code, Some(EXIT_OK), "{out}");
        for (rel, node) in snapshot(&to) {
            if let NodeKind::File(..) = node.kind {
                let data = std::fs::read(to.join(os(&rel))).unwrap();
                assert!(
                    !data.starts_with(b"SECRET"),
                    "run {id} stored a file from outside the tree as {}",
                    show(&rel)
                );
            }
        }
    }
}

#[test]
fn a_state_dir_another_user_could_write_is_refused() {
    let fx = Fixture::new();
    write(&fx.src.join("a.txt"), b"x\n");
    std::fs::create_dir_all(&fx.state).unwrap();
    chmod(&fx.state, 0o777);
    fx.backup()
        .expect(EXIT_ERROR)
        .stderr_has("writable by others")
        .stderr_has("chmod");
    assert!(fx.metafiles_or_none().is_empty(), "no run was made");
    chmod(&fx.state, 0o700);
    fx.backup_ok();
}
