//! A source with several targets is read once and each target gets its own run: the
//! same files, its own packs and dedup. A target that fails during the run (its packs
//! cannot be stored) drops out and the other completes; a command source's command runs
//! once for all of them.

mod util;

use std::path::{Path, PathBuf};

use util::*;

/// The fixture's config with a second folder target `other` for the source.
fn two_targets(fx: &Fixture, extra_source_lines: &str) -> PathBuf {
    let other = fx.path("other-target");
    std::fs::create_dir_all(&other).unwrap();
    let text = fx.config_text(&Settings::default()).replace(
        "targets = [\"local\"]",
        &format!("targets = [\"local\", \"other\"]\n{extra_source_lines}"),
    ) + &format!("\n[target.other]\nurl = \"file://{}\"\n", other.display());
    std::fs::write(&fx.config, text).unwrap();
    other
}

fn restore_from(fx: &Fixture, target: &Path, to: &Path) -> Out {
    let mut cmd = coffer(&fx.home);
    cmd.args(["restore", "--target"])
        .arg(format!("file://{}", target.display()))
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--to"])
        .arg(to);
    run(cmd)
}

/// Every `data/xx` prefix of a folder target made a file, so that no pack can be stored
/// there (the object store cannot make the directory).
fn block_packs(target: &Path, blocked: bool) {
    let data = target.join("data");
    for i in 0..=255u8 {
        let p = data.join(format!("{i:02x}"));
        if blocked {
            if p.is_dir() {
                std::fs::rename(&p, p.with_extension("moved")).unwrap();
            }
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(&p, b"not a directory").unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
            if p.with_extension("moved").is_dir() {
                std::fs::rename(p.with_extension("moved"), &p).unwrap();
            }
        }
    }
}

#[test]
fn one_read_feeds_two_targets_and_a_failing_one_does_not_stop_the_other() {
    let fx = Fixture::new();
    nested_tree(&fx.src);
    write(&fx.src.join("big.bin"), &pseudo_random(7, 3_000_000));
    set_past_mtimes(&fx.src, 1_600_000_000);
    let other = two_targets(&fx, "");

    let out = fx.backup().ok();
    let runs = out.json()["runs"].as_array().cloned().unwrap();
    assert_eq!(runs.len(), 2, "{out}");
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!(
        (as_str(a, "target"), as_str(b, "target")),
        ("local", "other")
    );
    for key in ["files", "bytes_read", "chunks", "chunks_new"] {
        assert_eq!(a[key], b[key], "{key}: {out}");
    }
    assert_eq!(as_u64(a, "files_new"), as_u64(a, "files"), "{out}");
    // Each target has its own packs: the same chunks, encrypted to its own sessions.
    let a_packs: Vec<_> = fx
        .objects()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert!(!a_packs.is_empty());
    assert!(
        !a_packs.iter().any(|p| other
            .join("data")
            .join(&p.to_string_lossy()[..2])
            .join(p)
            .exists()),
        "no pack is the same bytes on both targets"
    );
    for (target, name) in [(&fx.target, "a"), (&other, "b")] {
        let to = fx.path(&format!("restored-{name}"));
        restore_from(&fx, target, &to).ok();
        assert_same_tree(&fx.src, &to);
    }

    // Nothing changed: neither target reads or stores anything.
    let out = fx.backup().ok();
    for r in out.json()["runs"].as_array().unwrap() {
        assert_eq!(as_u64(r, "chunks_new"), 0, "{out}");
        assert_eq!(as_u64(r, "files_unchanged"), as_u64(r, "files"), "{out}");
        assert_eq!(as_u64(r, "bytes_read"), 0, "{out}");
    }

    // The second target cannot store packs: it fails, the first completes.
    write(&fx.src.join("big.bin"), &pseudo_random(8, 3_000_000));
    block_packs(&other, true);
    let out = fx.backup().expect(EXIT_ERROR);
    let json = out.json();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{out}");
    assert_eq!(as_str(&runs[0], "target"), "local");
    assert_eq!(json["failed"][0]["target"], "other", "{out}");
    let to = fx.path("restored-after");
    restore_from(&fx, &fx.target, &to).ok();
    assert_same_tree(&fx.src, &to);

    // Unblocked: the next run brings the second target up to date, read once again.
    block_packs(&other, false);
    let out = fx.backup().ok();
    assert_eq!(out.json()["runs"].as_array().unwrap().len(), 2, "{out}");
    let to = fx.path("restored-other");
    restore_from(&fx, &other, &to).ok();
    assert_same_tree(&fx.src, &to);
}

#[test]
fn a_command_source_with_two_targets_runs_its_command_once() {
    let fx = Fixture::new();
    let counter = fx.path("runs-of-the-command");
    let script = format!("echo run >> {}; seq 1 100000", counter.display());
    let other = two_targets(&fx, "");
    let text = std::fs::read_to_string(&fx.config).unwrap().replace(
        &format!("path = {}", toml_str(&fx.src)),
        &format!("command = [\"sh\", \"-c\", {script:?}]\nstream_name = \"n.txt\""),
    );
    std::fs::write(&fx.config, text).unwrap();
    let out = fx.backup().ok();
    assert_eq!(out.json()["runs"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n", "{out}");
    let want: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    for target in [&fx.target, &other] {
        let to = fx.path(&format!(
            "r-{}",
            target.file_name().unwrap().to_string_lossy()
        ));
        restore_from(&fx, target, &to).ok();
        assert_eq!(std::fs::read_to_string(to.join("n.txt")).unwrap(), want);
    }
}

/// A host's daily run costs requests in proportion to what it stores, not to what the
/// target holds: 3,000 other objects and 300 other runs on the target change nothing.
#[test]
fn a_run_costs_the_same_requests_however_full_the_target_is() {
    let fx = Fixture::new();
    nested_tree(&fx.src);
    fx.backup_ok();
    write(&fx.src.join("etc/hosts"), b"127.0.0.1 changed\n");
    let before = fx.backup_ok()["requests"].clone();
    // Other hosts' packs and runs (placeholders: this host never reads them).
    for i in 0..3000u32 {
        let key = blake3::hash(&i.to_le_bytes()).to_hex().to_string();
        write(&fx.target.join("data").join(&key[..2]).join(&key), b"x");
    }
    for i in 0..300u32 {
        let dir = fx.target.join(format!("runs/host{}/home", i % 30));
        write(
            &dir.join(format!("20260101T{:06}Z-0000{:04x}.refs", i, i)),
            b"x",
        );
        write(
            &dir.join(format!("20260101T{:06}Z-0000{:04x}.meta", i, i)),
            b"x",
        );
    }
    write(&fx.src.join("etc/hosts"), b"127.0.0.1 changed again\n");
    let after = fx.backup_ok()["requests"].clone();
    assert_eq!(before, after, "the same work, the same requests");
    assert!(as_u64(&after, "listed") < 50, "{after}");
    assert!(
        as_u64(&after, "puts") <= 3,
        "a pack, the object list, the metafile: {after}"
    );
}
