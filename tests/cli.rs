//! End-to-end round trips of the `coffer` binary on a `file://` target: every file type
//! and its metadata, incremental runs, runs over many packs, restoring a path, overwrite
//! rules, ignore rules, run ids and concurrent backups, `runs` without a config. Keys and
//! GnuPG are in tests/recipients.rs, damage and bad input in tests/damage.rs.
//!
//! Every test builds its own [`Fixture`] (key pair, config, source, target in a temporary
//! directory) and runs the real binary with a clean environment.

mod util;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use util::*;

// ---------------------------------------------------------------------------------------
// Helpers shared by several tests

/// Overwrites `bytes` at `offset` without changing the file's size.
fn overwrite_in_place(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

fn osargs<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Round trip of every file type

/// Names that stress percent-encoding and shells: spaces, control characters, invalid
/// UTF-8, leading dashes, percent signs, and the longest name a file system allows.
fn awkward_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = [
        &b"with space"[..],
        b"new\nline",
        b"tab\there",
        b"bad\xff\xfe",
        b"-leading-dash",
        b"-",
        b"100%",
        b"%41%2",
        b"trailing space ",
        b"\xc3\xa9t\xc3\xa9 \xe2\x98\x83",
        b"back\\slash",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    names.push(vec![b'L'; 255]);
    names
}

/// Builds a tree with every kind of entry. Returns whether it holds a character device.
fn every_kind_tree(src: &Path) -> bool {
    let root = is_root();
    // Directories: nested, empty, setgid, sticky.
    write(&src.join("dir_a/nested/deeper/file.txt"), b"deep\n");
    std::fs::create_dir(src.join("empty_dir")).unwrap();
    write(&src.join("shared/inside.txt"), b"group file\n");
    std::fs::create_dir(src.join("sticky")).unwrap();
    // Regular files: empty, small, large (many chunks), various modes.
    write(&src.join("empty.bin"), b"");
    write(&src.join("small.txt"), b"hello, coffer\n");
    write(&src.join("private.txt"), b"only me\n");
    write(&src.join("run.sh"), b"#!/bin/sh\necho hi\n");
    write(&src.join("setuid-prog"), b"not really a program\n");
    write(&src.join("large.bin"), &pseudo_random(1, (1 << 20) + 12345));
    write(&src.join("before-1970"), b"old\n");
    // Symbolic links: relative, dangling, with odd target bytes.
    symlink("dir_a/nested/deeper/file.txt", src.join("link_rel")).unwrap();
    symlink("../no/such/file", src.join("dir_a/dangling")).unwrap();
    symlink(os(b"odd \xff target\n"), src.join("odd_link")).unwrap();
    // A hard link pair, the names in different directories.
    write(&src.join("hard_1"), b"linked content\n");
    std::fs::hard_link(src.join("hard_1"), src.join("dir_a/hard_2")).unwrap();
    // A fifo and (as root) a character device.
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let mut has_device = false;
    if root {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        match mknod(
            &src.join("null_dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o620),
            makedev(1, 3),
        ) {
            Ok(()) => has_device = true,
            Err(e) => eprintln!("note: no character device in the tree (mknod: {e})"),
        }
    } else {
        eprintln!("note: not root: no character device and no foreign owners");
    }
    // Awkward names, each holding its own name.
    for name in awkward_names() {
        let p = src.join("names").join(os(&name));
        write(&p, &name);
    }
    // Owners (as root), before the modes: chown clears setuid/setgid bits.
    if root {
        for (p, uid, gid) in [
            ("small.txt", 1234, 5678),
            ("shared", 1234, 5678),
            ("shared/inside.txt", 1234, 5678),
            ("fifo", 1234, 5678),
            ("dir_a/nested", 0, 5678),
            ("setuid-prog", 1234, 5678),
        ] {
            std::os::unix::fs::chown(src.join(p), Some(uid), Some(gid)).unwrap();
        }
        std::os::unix::fs::lchown(src.join("link_rel"), Some(1234), Some(5678)).unwrap();
        if has_device {
            std::os::unix::fs::chown(src.join("null_dev"), Some(0), Some(5678)).unwrap();
        }
    }
    // Modes.
    for (p, mode) in [
        ("private.txt", 0o600),
        ("run.sh", 0o755),
        ("setuid-prog", 0o4755),
        ("shared", 0o2775),
        ("sticky", 0o1777),
        ("dir_a/nested", 0o700),
        ("empty_dir", 0o750),
        ("small.txt", 0o640),
        ("names", 0o711),
    ] {
        chmod(&src.join(p), mode);
    }
    chmod(&src.join("names").join(os(b"bad\xff\xfe")), 0o444);
    // Times in the past with nanoseconds; one before the epoch.
    set_past_mtimes(src, 1_500_000_000);
    set_mtime(&src.join("before-1970"), -40_000_000, 999_999_999);
    has_device
}

#[test]
fn round_trip_preserves_every_file_type_and_its_metadata() {
    let fx = Fixture::new();
    let has_device = every_kind_tree(&fx.src);
    let stats = fx.backup_ok();
    assert_eq!(as_u64(&stats, "files_skipped"), 0, "{stats:#}");
    assert_eq!(
        stats["problems"].as_array().map(Vec::len),
        Some(0),
        "{stats:#}"
    );
    assert!(
        as_u64(&stats, "chunks") > 16,
        "the large file spans many chunks: {stats:#}"
    );

    let dest = fx.path("restored");
    fx.restore(&dest, &osargs(&["--setid", "--devices"])).ok();
    assert_same_tree(&fx.src, &dest);

    // Spot checks that the comparison itself would catch.
    let m = std::fs::symlink_metadata(dest.join("large.bin")).unwrap();
    assert_eq!(m.len(), (1 << 20) + 12345);
    assert_eq!(
        std::fs::read_link(dest.join("odd_link"))
            .unwrap()
            .as_os_str()
            .as_encoded_bytes(),
        b"odd \xff target\n"
    );
    let (h1, h2) = (
        std::fs::metadata(dest.join("hard_1")).unwrap(),
        std::fs::metadata(dest.join("dir_a/hard_2")).unwrap(),
    );
    assert_eq!(
        (h1.dev(), h1.ino()),
        (h2.dev(), h2.ino()),
        "hard links share an inode"
    );
    for name in awkward_names() {
        assert_eq!(read(&dest.join("names").join(os(&name))), name);
    }
    if has_device {
        let d = std::fs::symlink_metadata(dest.join("null_dev")).unwrap();
        assert_eq!(
            (
                nix::sys::stat::major(d.rdev()),
                nix::sys::stat::minor(d.rdev())
            ),
            (1, 3)
        );
    }
    if is_root() {
        let s = std::fs::metadata(dest.join("shared")).unwrap();
        assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (1234, 5678, 0o2775));
    }
}

// ---------------------------------------------------------------------------------------
// 2. Incremental backups

#[test]
fn incremental_backup_stores_only_what_changed() {
    let fx = Fixture::new();
    let large = pseudo_random(7, 1 << 20);
    write(&fx.src.join("large.bin"), &large);
    write(&fx.src.join("a.txt"), b"alpha\n");
    write(&fx.src.join("sub/b.txt"), b"beta\n");
    write(&fx.src.join("sub/empty"), b"");
    std::fs::hard_link(fx.src.join("a.txt"), fx.src.join("sub/a-again")).unwrap();
    // Old mtimes: files modified within 2 s of a run's start are not cached.
    set_past_mtimes(&fx.src, 1_600_000_000);
    const FILES: u64 = 4; // the second hard-link name is not a file of its own

    let first = fx.backup_ok();
    assert_eq!(as_u64(&first, "files"), FILES, "{first:#}");
    assert_eq!(as_u64(&first, "files_new"), FILES, "{first:#}");
    assert!(as_u64(&first, "chunks_new") >= 16, "{first:#}");

    let second = fx.backup_ok();
    assert_eq!(as_u64(&second, "files"), FILES, "{second:#}");
    assert_eq!(as_u64(&second, "files_unchanged"), FILES, "{second:#}");
    assert_eq!(as_u64(&second, "chunks_new"), 0, "{second:#}");
    assert_eq!(as_u64(&second, "bytes_new"), 0, "{second:#}");
    assert_eq!(
        as_u64(&second, "bytes_read"),
        0,
        "unchanged files are not read"
    );
    assert_eq!(
        as_u64(&second, "chunks"),
        as_u64(&first, "chunks"),
        "{second:#}"
    );

    // A few bytes in the middle of the large file, same size.
    let mut edited = large.clone();
    let at = 512 * 1024 + 77;
    edited[at..at + 9].copy_from_slice(b"*EDITED!*");
    overwrite_in_place(&fx.src.join("large.bin"), at as u64, b"*EDITED!*");
    set_mtime(&fx.src.join("large.bin"), 1_650_000_000, 123_456_789);

    let third = fx.backup_ok();
    assert_eq!(as_u64(&third, "files_changed"), 1, "{third:#}");
    assert_eq!(as_u64(&third, "files_unchanged"), FILES - 1, "{third:#}");
    let new = as_u64(&third, "chunks_new");
    assert!(
        (1..=3).contains(&new),
        "only the edited chunks are new: {third:#}"
    );
    let bytes_new = as_u64(&third, "bytes_new");
    assert!(
        bytes_new > 0 && bytes_new * 8 < large.len() as u64,
        "bytes_new {bytes_new} should be a small part of {}",
        large.len()
    );

    // The newest run has the edit...
    let dest = fx.path("newest");
    fx.restore(&dest, &[]).ok();
    assert!(read(&dest.join("large.bin")) == edited, "edited content");
    assert_same_tree(&fx.src, &dest);
    // ...and the first run still has the original.
    let old = fx.path("first");
    let run = as_str(&first, "run");
    fx.restore(&old, &osargs(&["--run", run])).ok();
    assert!(read(&old.join("large.bin")) == large, "original content");
}

// ---------------------------------------------------------------------------------------
// 3. Interoperability with GnuPG

// ---------------------------------------------------------------------------------------
// 4. Keys that cannot restore

// ---------------------------------------------------------------------------------------
// 5. Damaged targets

// ---------------------------------------------------------------------------------------
// 6. Files the backup cannot read

// ---------------------------------------------------------------------------------------
// 7. Config errors

// ---------------------------------------------------------------------------------------
// 8. Restore options, listing runs, run ids

/// `coffer cat`: one file's bytes to standard output, checked, nothing on disk; a hard
/// link is followed, a directory or a symlink refused saying what it is. With a damaged
/// pack under the end of the file, what reached standard output is a prefix of the file
/// (each chunk is checked before it is written), the exit status is 1 and the error names
/// the file.
#[test]
fn cat_writes_one_file_checked_and_names_it_when_it_is_damaged() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    let head = pseudo_random(90, 3 << 20);
    std::fs::create_dir_all(fx.src.join("etc")).unwrap();
    write(&fx.src.join("etc/head"), &head);
    write(&fx.src.join("etc/conf"), b"listen 80;\n");
    std::fs::hard_link(fx.src.join("etc/conf"), fx.src.join("etc/conf.link")).unwrap();
    symlink("conf", fx.src.join("etc/conf.sym")).unwrap();
    write(&fx.src.join("empty"), b"");
    fx.backup_ok();
    let cat = |path: &str, extra: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["cat", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE])
            .args(extra)
            .arg(path);
        cmd.output().expect("coffer runs")
    };
    let ok = |path: &str| {
        let out = cat(path, &[]);
        assert!(
            out.status.success(),
            "cat {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert!(ok("etc/head") == head, "a file of many chunks and packs");
    assert_eq!(ok("./etc/conf"), b"listen 80;\n");
    assert_eq!(
        ok("etc/conf.link"),
        b"listen 80;\n",
        "a hard link is followed"
    );
    assert_eq!(ok("empty"), b"");
    let refused = |path: &str, code: i32, says: &str| {
        let out = cat(path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "cat {path}: {err}");
        assert!(err.contains(says), "cat {path}: {err}");
        assert!(out.stdout.is_empty(), "cat {path}");
    };
    refused("etc", 1, "is a directory");
    refused("etc/conf.sym", 1, "symbolic link to conf");
    refused("etc/nothing", 1, "etc/nothing");
    refused("../x", 1, "path");

    // The same start, and more: the file's later chunks go to packs of the second run.
    let before: BTreeSet<PathBuf> = fx.objects().into_iter().collect();
    let mut longer = head.clone();
    longer.extend(pseudo_random(91, 2 << 20));
    write(&fx.src.join("etc/head"), &longer);
    fx.backup_ok();
    let new: Vec<PathBuf> = fx
        .objects()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!new.is_empty());
    for pack in &new {
        let mut bytes = read(pack);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(pack, &bytes).unwrap();
    }
    let out = cat("etc/head", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{err}");
    assert!(err.contains("etc/head"), "the file is named: {err}");
    assert!(
        !out.stdout.is_empty() && out.stdout.len() < longer.len(),
        "{} bytes out",
        out.stdout.len()
    );
    assert!(
        longer.starts_with(&out.stdout),
        "only checked bytes, in order"
    );
}

/// `coffer ls`: what is directly in a path, or all below it with -R; one line per entry
/// whatever the name holds (a newline, bytes that are not UTF-8: escaped), and in --json
/// the exact bytes, percent-encoded; -l as `tar tv` shows entries; a path the run does
/// not hold fails by name after the others were listed.
#[test]
fn ls_lists_entries_one_line_each_whatever_their_names_hold() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    let odd = std::ffi::OsStr::from_bytes(b"bad\xffname");
    std::fs::create_dir_all(fx.src.join("etc/sub")).unwrap();
    write(&fx.src.join("etc/two\nlines"), b"x");
    write(&fx.src.join("etc").join(odd), b"yy");
    write(&fx.src.join("etc/sub/deep"), b"zzz");
    write(&fx.src.join("top"), b"t");
    symlink("top", fx.src.join("etc/link")).unwrap();
    std::fs::hard_link(fx.src.join("top"), fx.src.join("etc/hard")).unwrap();
    fx.backup_ok();
    let ls = |args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["ls", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE])
            .args(args);
        run(cmd)
    };
    let lines = |out: &Out| out.stdout.lines().map(str::to_string).collect::<Vec<_>>();
    let root = ls(&[]).ok();
    assert_eq!(lines(&root), ["etc", "top"], "{root}");
    let etc = ls(&["etc/"]).ok();
    assert_eq!(
        lines(&etc),
        [
            "etc/bad\\xFFname",
            "etc/hard",
            "etc/link",
            "etc/sub",
            "etc/two\\nlines"
        ],
        "{etc}"
    );
    let all = ls(&["-R"]).ok();
    assert_eq!(lines(&all).len(), 8, "{all}");
    assert!(lines(&all).contains(&"etc/sub/deep".to_string()), "{all}");
    let file = ls(&["etc/sub/deep"]).ok();
    assert_eq!(lines(&file), ["etc/sub/deep"], "a file shows itself");

    // --json: one object per line, the exact bytes percent-encoded.
    let json = ls(&["-R", "--json", "etc"]).ok();
    let decode = |s: &str| -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    };
    let objects: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let paths: Vec<Vec<u8>> = objects
        .iter()
        .map(|o| decode(o["path"].as_str().unwrap()))
        .collect();
    assert!(paths.contains(&b"etc/two\nlines".to_vec()), "{json}");
    assert!(paths.contains(&b"etc/bad\xffname".to_vec()), "{json}");
    let deep = objects
        .iter()
        .find(|o| o["path"] == "etc/sub/deep")
        .unwrap();
    assert_eq!(deep["type"], "file");
    assert_eq!(deep["size"], 3);
    let meta = std::fs::metadata(fx.src.join("etc/sub/deep")).unwrap();
    assert_eq!(deep["mtime"], meta.mtime(), "{deep}");
    assert_eq!(deep["mode"], meta.mode() & 0o7777, "{deep}");
    let link = objects.iter().find(|o| o["path"] == "etc/link").unwrap();
    assert_eq!(
        (&link["type"], &link["target"]),
        (&"symlink".into(), &"top".into())
    );

    // -l: mode, owner, size, time, targets.
    let long = ls(&["-l", "etc"]).ok();
    let line = |name: &str| {
        lines(&long)
            .into_iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name}: {long}"))
    };
    assert!(line("etc/link").starts_with('l'), "{long}");
    assert!(line("etc/link").ends_with("etc/link -> top"), "{long}");
    // `top` is listed after `etc/hard`, so it is the further name.
    let top = ls(&["-l", "top"]).ok();
    assert!(
        top.stdout.trim_end().ends_with(" top link to etc/hard"),
        "{top}"
    );
    assert!(top.stdout.starts_with('h'), "{top}");
    assert!(line("etc/sub").starts_with("drwx"), "{long}");
    assert!(line("two").contains(" 1 "), "size 1: {long}");

    let out = ls(&["etc", "nothing/here"])
        .expect(EXIT_ERROR)
        .stderr_has("\"nothing/here\"");
    assert_eq!(lines(&out).len(), 5, "the others are listed: {out}");
}

/// `coffer find`: a file's history across runs (--all-runs, newest first, with its size
/// in each), by name glob, path glob or regex; by default only the newest run.
#[test]
fn find_names_the_runs_that_hold_a_path() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.src.join("etc/nginx")).unwrap();
    write(&fx.src.join("etc/nginx/nginx.conf"), b"a\n");
    write(&fx.src.join("etc/other\nname.conf"), b"o");
    let first = as_str(&fx.backup_ok(), "run").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(&fx.src.join("etc/nginx/nginx.conf"), b"abc\n");
    let second = as_str(&fx.backup_ok(), "run").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::remove_file(fx.src.join("etc/nginx/nginx.conf")).unwrap();
    let third = as_str(&fx.backup_ok(), "run").to_string();
    let find = |args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["find", "--key"]).arg(&fx.secret_key).args(args);
        run(cmd)
    };
    let history = find(&["--all-runs", "--json", "nginx.conf"]).ok();
    let found: Vec<(String, u64)> = history
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["entry"]["path"], "etc/nginx/nginx.conf", "{history}");
            (
                v["run"].as_str().unwrap().to_string(),
                v["entry"]["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [(second.clone(), 4), (first.clone(), 2)],
        "{history}"
    );
    let newest = find(&["nginx.conf"]).ok();
    assert_eq!(
        newest.stdout, "",
        "the newest run ({third}) has none: {newest}"
    );
    let by_path = find(&["--all-runs", "etc/*/*.conf"]).ok();
    assert_eq!(by_path.stdout.lines().count(), 2, "{by_path}");
    assert!(by_path
        .stdout
        .lines()
        .all(|l| l.ends_with("etc/nginx/nginx.conf")));
    let odd = find(&["other*"]).ok();
    assert!(odd.stdout.starts_with(&third), "{odd}");
    assert!(
        odd.stdout.trim_end().ends_with("etc/other\\nname.conf"),
        "{odd}"
    );
    let regex = find(&["--all-runs", "--regex", r"^etc/nginx/.*\.conf$"]).ok();
    assert_eq!(regex.stdout.lines().count(), 2, "{regex}");
    find(&["--regex", "("])
        .expect(EXIT_ERROR)
        .stderr_has("--regex");
}

/// `coffer dump | tar -x` gives back the tree: names with a newline, bytes that are not
/// UTF-8 and more than 100 bytes, a long symlink target, hard links, a fifo, modes,
/// owners and (whole-second) mtimes. A hard link whose file is outside the paths dumped
/// arrives as the file. A damaged pack stops the archive short: coffer exits 1 naming
/// the file and tar fails, so it never unpacks as if whole.
#[test]
fn dump_piped_into_tar_gives_back_the_tree() {
    use std::os::unix::ffi::OsStrExt;
    use std::process::Stdio;
    let fx = Fixture::new();
    let t = fx.src.join("t");
    let long_dir = t.join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::create_dir_all(t.join("sub")).unwrap();
    write(&t.join("two\nlines"), b"x");
    write(&t.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"yy");
    write(&long_dir.join("f".repeat(90)), &pseudo_random(95, 2 << 20));
    write(&t.join("empty"), b"");
    write(&t.join("aaa"), b"linked\n");
    std::fs::hard_link(t.join("aaa"), t.join("sub/h3")).unwrap();
    write(&t.join("h1"), b"pair\n");
    std::fs::hard_link(t.join("h1"), t.join("h2")).unwrap();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&t.join("h1"), 0o751);
    symlink("z".repeat(200), t.join("far")).unwrap();
    nix::unistd::mkfifo(
        &t.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let mut all: Vec<PathBuf> = walkdir(&t);
    all.sort();
    for (i, p) in all.iter().rev().enumerate() {
        set_mtime(p, 1_700_000_000 + i as i64, 0);
    }
    set_mtime(&t, 1_699_999_000, 0);
    fx.backup_ok();

    let dump = |paths: &[&str], into: &Path| {
        std::fs::create_dir_all(into).unwrap();
        let mut coffer = std::process::Command::new(coffer_bin())
            .env_clear()
            .env("HOME", &fx.home)
            .arg("-c")
            .arg(&fx.config)
            .args(["dump", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE])
            .args(paths)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tar = std::process::Command::new("tar")
            .args(["-x", "-p", "-C"])
            .arg(into)
            .stdin(coffer.stdout.take().unwrap())
            .output()
            .unwrap();
        let coffer = coffer.wait_with_output().unwrap();
        (coffer, tar)
    };
    let dest = fx.path("untarred");
    let (coffer, tar) = dump(&["t"], &dest);
    let err = String::from_utf8_lossy(&coffer.stderr);
    assert!(coffer.status.success(), "{err}");
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    assert_same_tree(&t, &dest.join("t"));

    let part = fx.path("part");
    let (coffer, tar) = dump(&["t/sub"], &part);
    assert!(coffer.status.success() && tar.status.success());
    assert_eq!(
        read(&part.join("t/sub/h3")),
        b"linked\n",
        "the file, not a link"
    );
    assert!(!part.join("t/aaa").exists());

    for pack in fx.objects() {
        let mut bytes = read(&pack);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&pack, &bytes).unwrap();
    }
    let (coffer, tar) = dump(&["t"], &fx.path("damaged"));
    let err = String::from_utf8_lossy(&coffer.stderr);
    assert_eq!(coffer.status.code(), Some(EXIT_ERROR), "{err}");
    assert!(err.contains("file t/"), "the file is named: {err}");
    assert!(!tar.status.success(), "tar saw a whole archive");
}

/// Every path below `root` (not `root` itself), symlinks not followed.
fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

/// `coffer diff`: added, removed, changed (content, metadata) between two runs from their
/// metafiles alone, whichever order the runs are given in; one run alone is compared
/// with the newest; paths narrow it.
#[test]
fn diff_says_what_changed_between_two_runs() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.src.join("c")).unwrap();
    write(&fx.src.join("a"), b"one");
    write(&fx.src.join("b"), b"gone soon");
    write(&fx.src.join("c/d"), b"same");
    set_mtime(&fx.src.join("a"), 1_700_000_000, 0);
    let first = as_str(&fx.backup_ok(), "run").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(&fx.src.join("a"), b"two");
    set_mtime(&fx.src.join("a"), 1_700_000_000, 0);
    std::fs::remove_file(fx.src.join("b")).unwrap();
    write(&fx.src.join("new\nline"), b"e");
    std::fs::set_permissions(
        fx.src.join("c/d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let second = as_str(&fx.backup_ok(), "run").to_string();
    let diff = |args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["diff", "--key"]).arg(&fx.secret_key).args(args);
        run(cmd)
    };
    let lines = |out: &Out| -> Vec<String> {
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("+ .") && !l.starts_with("U .") && *l != "U c (mtime)")
            .map(str::to_string)
            .collect()
    };
    let out = diff(&["--run", &first, "--run", &second]).ok();
    assert_eq!(
        lines(&out),
        ["M a (content)", "- b", "U c/d (mode)", "+ new\\nline"],
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("from run {first} to run {second}")),
        "{out}"
    );
    let reversed = diff(&["--run", &second, "--run", &first]).ok();
    assert_eq!(
        lines(&reversed),
        lines(&out),
        "the older run is the old side"
    );
    let with_newest = diff(&["--source", SOURCE, "--run", &first]).ok();
    assert_eq!(lines(&with_newest), lines(&out));
    let narrowed = diff(&["--run", &first, "--run", &second, "c"]).ok();
    assert_eq!(lines(&narrowed), ["U c/d (mode)"], "{narrowed}");
    let json = diff(&["--run", &first, "--run", &second, "--json", "a"]).ok();
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["change"], "changed", "{json}");
    assert_eq!(v["what"], serde_json::json!(["content"]), "{json}");
    assert_eq!(
        (v["old"]["size"].as_u64(), v["new"]["size"].as_u64()),
        (Some(3), Some(3))
    );
    diff(&["--run", &first, "--run", &second, "--run", &first])
        .expect(EXIT_ERROR)
        .stderr_has("two runs");
}

/// `coffer runs` shows, without a key, what each run read and stored: the object list's
/// `stats` line (docs/FORMAT.md 6), which `gpg`-free readers see as plain text.
#[test]
fn runs_show_files_bytes_added_and_duration_without_a_key() {
    let fx = Fixture::new();
    write(&fx.src.join("a"), &pseudo_random(60, 300_000));
    write(&fx.src.join("b"), b"bee\n");
    let first = as_str(&fx.backup_ok(), "run").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = as_str(&fx.backup_ok(), "run").to_string();
    let runs = fx.runs();
    let stats = |id: &str| runs.iter().find(|r| r["run"] == id).expect("listed")["stats"].clone();
    let s1 = stats(&first);
    assert_eq!(s1["files"], 2, "{s1}");
    assert_eq!(s1["bytes"], 300_004, "{s1}");
    assert_eq!(s1["bytes_new"], 300_004, "{s1}");
    assert!(s1["bytes_stored"].as_u64().unwrap() > 300_000, "{s1}");
    assert!(s1["seconds"].is_u64(), "{s1}");
    let s2 = stats(&second);
    assert_eq!(
        (s2["files"].as_u64(), s2["bytes_new"].as_u64()),
        (Some(2), Some(0)),
        "{s2}"
    );
    let list =
        std::fs::read_to_string(fx.target.join(format!("runs/{HOST}/{SOURCE}/{first}.refs")))
            .unwrap();
    let line = format!(
        "stats 2 300004 300004 {} {}",
        s1["bytes_stored"], s1["seconds"]
    );
    assert!(list.lines().any(|l| l == line), "{line} in {list}");
    let mut cmd = coffer(&fx.home);
    cmd.args(["runs", "--target", &fx.target_url()]);
    let table = run(cmd).ok();
    let head = table.stdout.lines().next().unwrap_or("").to_string();
    for column in ["FILES", "SIZE", "ADDED", "TOOK"] {
        assert!(head.contains(column), "{table}");
    }
}

/// `--at WHEN` chooses the newest run that started at or before WHEN (inclusive, by the
/// time the run claims): a time, a date (the whole day), an age; before the first run it
/// fails naming the oldest run; nonsense is refused saying what to write.
#[test]
fn at_chooses_the_newest_run_at_or_before_a_time() {
    let fx = Fixture::new();
    let mut runs = Vec::new();
    for v in ["one\n", "two\n", "three\n"] {
        write(&fx.src.join("v"), v.as_bytes());
        runs.push(as_str(&fx.backup_ok(), "run").to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let listed = fx.runs();
    let time = |id: &str| {
        let r = listed.iter().find(|r| r["run"] == id).expect("listed");
        chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap()
    };
    let z = |t: chrono::DateTime<chrono::FixedOffset>| {
        t.to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    let restored = |at: &str| {
        let dest = fx.path(&format!("at-{}", at.replace([':', ' '], "_")));
        fx.restore(&dest, &osargs(&["--at", at])).ok();
        std::fs::read_to_string(dest.join("v")).unwrap()
    };
    let second = time(&runs[1]);
    assert_eq!(restored(&z(second)), "two\n", "at its own start time");
    assert_eq!(
        restored(&z(second - chrono::Duration::seconds(1))),
        "one\n",
        "a second before"
    );
    assert_eq!(restored("now"), "three\n");
    assert_eq!(restored("0s"), "three\n");
    let day = time(&runs[2]).to_utc().format("%Y-%m-%d").to_string();
    assert_eq!(restored(&day), "three\n", "a date is the whole day");

    let early = fx.path("early");
    let out = fx
        .restore(&early, &osargs(&["--at", "3D"]))
        .expect(EXIT_ERROR)
        .stderr_has("started at or before")
        .stderr_has(&runs[0]);
    assert!(!early.join("v").exists(), "{out}");
    fx.restore(&early, &osargs(&["--at", "yesterday"]))
        .expect(2)
        .stderr_has("3D");
    fx.restore(&early, &osargs(&["--at", "now", "--run", &runs[0]]))
        .expect(2);

    // verify --data chooses the same way.
    let verify = |at: &str| {
        let mut cmd = fx.cmd();
        cmd.args(["verify", "--data", "--json", "--key"])
            .arg(&fx.secret_key)
            .args(["--at", at]);
        run(cmd)
    };
    let out = verify(&z(second)).ok();
    assert_eq!(out.json()["data"][0]["run"], runs[1].as_str(), "{out}");
    verify("3D")
        .expect(EXIT_ERROR)
        .stderr_has("started at or before");
}

#[test]
fn restore_does_not_overwrite_without_the_flag() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    fx.backup_ok();

    let dest = fx.path("restored");
    let existing = dest.join("file1.txt");
    write(&existing, b"local edit, keep me\n");
    set_mtime(&existing, 1_234_567_890, 42);

    fx.restore(&dest, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has(&existing.display().to_string())
        .stderr_has("--overwrite");
    assert_eq!(read(&existing), b"local edit, keep me\n", "untouched");
    let m = std::fs::metadata(&existing).unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_234_567_890, 42),
        "untouched"
    );
    assert_eq!(read(&dest.join("sub/file2.txt")), b"second file\n");
    assert_eq!(leftover_temporaries(&dest), Vec::<String>::new());

    // With --overwrite everything (file, links, fifo) is replaced.
    fx.restore(&dest, &osargs(&["--overwrite"])).ok();
    assert_same_tree(&fx.src, &dest);
}

/// Packs fill while earlier ones are still being sealed: chunks of one file land in
/// several packs, later files repeat chunks of packs not sealed yet, and every pointer
/// must still name the right pack, offset and length.
#[test]
fn a_run_over_many_packs_restores_exactly() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    for i in 0..40u64 {
        let data = pseudo_random(i, 300 << 10);
        write(&fx.src.join(format!("d{:02}/f.bin", i)), &data);
        write(
            &fx.src.join(format!("d{:02}/note.txt", i)),
            format!("file {i}\n").as_bytes(),
        );
        if i % 5 == 4 {
            // The same content as a file a few steps back, and half of the one before.
            let again = pseudo_random(i - 2, 300 << 10);
            write(&fx.src.join(format!("d{:02}/again.bin", i)), &again);
            let prev = pseudo_random(i - 1, 300 << 10);
            write(
                &fx.src.join(format!("d{:02}/half.bin", i)),
                &prev[..150 << 10],
            );
        }
    }
    set_past_mtimes(&fx.src, 1_600_000_000);
    let stats = fx.backup_ok();
    let (chunks, new) = (as_u64(&stats, "chunks"), as_u64(&stats, "chunks_new"));
    assert!(new < chunks, "repeated content is stored once: {stats:#}");
    let packs = fx.objects().len();
    assert!(packs >= 10, "12 MiB in packs of 1 MiB: {packs} objects");
    let dest = fx.path("restored");
    fx.restore(&dest, &[]).ok();
    assert_same_tree(&fx.src, &dest);
}

#[test]
fn restore_of_a_path_restores_only_that_subtree() {
    let fx = Fixture::new();
    write(&fx.src.join("docs/a.txt"), b"a\n");
    write(&fx.src.join("docs/deep/b.txt"), b"b\n");
    write(&fx.src.join("docsx.txt"), b"same prefix, not below docs\n");
    write(&fx.src.join("other/c.txt"), b"c\n");
    write(&fx.src.join("top.txt"), b"top\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    fx.backup_ok();

    let dest = fx.path("docs-only");
    fx.restore(&dest, &osargs(&["docs"])).ok();
    let got = relative_paths(&dest);
    let want: Vec<Vec<u8>> = ["docs", "docs/a.txt", "docs/deep", "docs/deep/b.txt"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want, "only docs/ and below");
    let (src, back) = (snapshot(&fx.src), snapshot(&dest));
    for rel in &want {
        assert_eq!(src[rel].kind, back[rel].kind, "{}", show(rel));
        assert_eq!(src[rel].mode, back[rel].mode, "{}", show(rel));
        assert_eq!(src[rel].mtime, back[rel].mtime, "{}", show(rel));
    }

    let dest = fx.path("one-file");
    fx.restore(&dest, &osargs(&["./docs/deep/b.txt"])).ok();
    assert_eq!(read(&dest.join("docs/deep/b.txt")), b"b\n");
    assert_eq!(
        relative_paths(&dest),
        vec![
            b"docs".to_vec(),
            b"docs/deep".to_vec(),
            b"docs/deep/b.txt".to_vec()
        ]
    );
}

#[test]
fn restore_of_a_path_holding_a_hard_link_to_a_file_outside_it() {
    let fx = Fixture::new();
    write(&fx.src.join("a_dir/orig.txt"), b"shared by two names\n");
    std::fs::create_dir(fx.src.join("b_dir")).unwrap();
    std::fs::hard_link(fx.src.join("a_dir/orig.txt"), fx.src.join("b_dir/link.txt")).unwrap();
    set_past_mtimes(&fx.src, 1_600_000_000);
    fx.backup_ok();

    for (dir, args) in [
        ("b-only", &["b_dir"][..]),
        ("b-only-overwrite", &["--overwrite", "b_dir"][..]),
    ] {
        let dest = fx.path(dir);
        let out = fx.restore(&dest, &osargs(args));
        let restored = std::fs::read(dest.join("b_dir/link.txt"));
        assert!(
            restored.is_ok_and(|b| b == b"shared by two names\n"),
            "b_dir/link.txt restored with its content\n{out}"
        );
        assert!(
            !dest.join("a_dir").exists(),
            "a_dir was not selected\n{out}"
        );
        out.ok();
    }
}

#[test]
fn runs_lists_a_target_url_without_config_or_key() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    let first = fx.backup_ok();
    let second = fx.backup_ok();
    let ids = [as_str(&first, "run"), as_str(&second, "run")];

    // A HOME with no config at all, and no key anywhere in the command.
    let empty_home = fx.path("empty-home");
    std::fs::create_dir(&empty_home).unwrap();
    let mut cmd = coffer(&empty_home);
    cmd.args(["runs", "--target", &fx.target_url()]);
    let out = run(cmd).ok();
    for id in ids {
        assert!(out.stdout.contains(id), "{id} listed\n{out}");
    }
    assert!(
        out.stdout.contains(HOST) && out.stdout.contains(SOURCE),
        "{out}"
    );

    let mut cmd = coffer(&empty_home);
    cmd.args(["runs", "--json", "--target", &fx.target_url()]);
    let list = run(cmd).ok().json();
    let listed: Vec<&str> = list
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|r| {
            assert_eq!(as_str(r, "host"), HOST);
            assert_eq!(as_str(r, "source"), SOURCE);
            assert!(as_u64(r, "metafile_bytes") > 0);
            as_str(r, "run")
        })
        .collect();
    assert_eq!(listed, ids, "oldest first");
}

/// Two backups started at once, each with its own config file.
fn concurrent_backups(fx: &Fixture, configs: [&Path; 2]) -> [Out; 2] {
    std::thread::scope(|s| {
        let x = s.spawn(|| fx.backup_using(configs[0]));
        let y = s.spawn(|| fx.backup_using(configs[1]));
        [x.join().unwrap(), y.join().unwrap()]
    })
}

#[test]
fn backups_started_in_the_same_second_get_distinct_run_ids() {
    let fx = Fixture::new();
    write(&fx.src.join("f.txt"), b"tiny\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    // Same host, source and target; separate state directories, so the two runs share
    // nothing but the target.
    let other_config = fx.path("host/config2.toml");
    std::fs::write(
        &other_config,
        fx.config_text(&Settings {
            state_dir: Some(fx.path("host/state2")),
            ..Settings::default()
        }),
    )
    .unwrap();
    let mut all = Vec::new();
    let mut same_second = None;
    // Almost always the first pair; a pair can straddle a second boundary. Each pair
    // starts from empty state directories: an index never lets a source's next run id
    // go back to or before its last one, which would push later pairs apart.
    for _ in 0..10 {
        for state in [fx.state.clone(), fx.path("host/state2")] {
            let _ = std::fs::remove_dir_all(state);
        }
        let [x, y] = concurrent_backups(&fx, [&fx.config, &other_config]);
        let x = as_str(&x.ok().json()["runs"][0], "run").to_string();
        let y = as_str(&y.ok().json()["runs"][0], "run").to_string();
        all.push(x.clone());
        all.push(y.clone());
        if x[..16] == y[..16] {
            same_second = Some((x, y));
            break;
        }
    }
    let (x, y) = same_second.expect("two concurrent backups started in the same second");
    assert_ne!(x, y, "run ids of the same second differ");
    let mut listed: Vec<String> = fx
        .runs()
        .iter()
        .map(|r| as_str(r, "run").to_string())
        .collect();
    listed.sort();
    all.sort();
    assert_eq!(listed, all, "every run is stored and listed");
}

#[test]
fn concurrent_first_backups_sharing_a_state_dir_both_succeed() {
    // Probabilistic: about one pair in five shows the failure, so try fifteen pairs,
    // each on a fresh index.
    let fx = Fixture::new();
    write(&fx.src.join("f.txt"), b"tiny\n");
    set_past_mtimes(&fx.src, 1_600_000_000);
    for _ in 0..15 {
        let _ = std::fs::remove_dir_all(&fx.state);
        for out in concurrent_backups(&fx, [&fx.config, &fx.config]) {
            out.ok();
        }
    }
}

/// Ignore rules from the config: a name pattern at any depth, an anchored path, and an
/// ignored directory whose contents are not even walked.
#[test]
fn ignore_rules_leave_out_what_they_match() {
    let fx = Fixture::new();
    let text = fx.config_text(&Settings::default()).replace(
        "targets = [\"local\"]",
        "targets = [\"local\"]\nignore = [\"*.tmp\", \"/var/cache\", \"node_modules\"]",
    );
    std::fs::write(&fx.config, text).unwrap();
    for path in [
        "a.txt",
        "a.tmp",
        "deep/er/b.tmp",
        "deep/er/b.tmpl",
        "var/cache/x",
        "var/log/cache/y",
        "srv/var/cache/z",
        "app/node_modules/m.js",
    ] {
        write(&fx.src.join(path), path.as_bytes());
    }
    set_past_mtimes(&fx.src, 1_600_000_000);
    let stats = fx.backup_ok();
    assert_eq!(as_u64(&stats, "files"), 4, "{stats}");
    let dest = fx.path("restored");
    fx.restore(&dest, &[]).ok();
    for (path, keep) in [
        ("a.txt", true),
        ("a.tmp", false),
        ("deep/er/b.tmp", false),
        ("deep/er/b.tmpl", true),
        ("var/cache", false),
        ("var/log/cache/y", true),
        ("srv/var/cache/z", true),
        ("app/node_modules", false),
        ("app", true),
    ] {
        assert_eq!(dest.join(path).exists(), keep, "{path}");
    }
}

/// `verify --against`: a run compared with the tree it came from; each kind of change
/// since is named with its path, and nothing is written.
#[test]
fn verify_against_names_every_change_since_the_run() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    fx.backup_ok();
    let against = |extra: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["verify", "--against"])
            .arg(&fx.src)
            .arg("--key")
            .arg(&fx.secret_key)
            .args(["--source", SOURCE])
            .args(extra);
        run(cmd)
    };
    let out = against(&[]).ok();
    assert!(out.stdout.contains(", 0 differences"), "{out}");

    // Same size, other bytes; another mode; gone; new; another link target; a hard
    // link broken. The directories' and the changed file's mtimes are put back, so that
    // each change shows once.
    let mtimes: Vec<(PathBuf, i64, i64)> = [".", "sub", "file1.txt"]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(fx.src.join(p)).unwrap();
            (fx.src.join(p), m.mtime(), m.mtime_nsec())
        })
        .collect();
    write(&fx.src.join("file1.txt"), b"First file\n");
    chmod(&fx.src.join("sub/file2.txt"), 0o600);
    std::fs::remove_file(fx.src.join("sub/empty")).unwrap();
    write(&fx.src.join("new.txt"), b"new\n");
    std::fs::remove_file(fx.src.join("link")).unwrap();
    symlink("sub/file2.txt", fx.src.join("link")).unwrap();
    std::fs::remove_file(fx.src.join("sub/pair_b")).unwrap();
    write(&fx.src.join("sub/pair_b"), b"hard linked\n");
    for (p, secs, nsec) in &mtimes {
        set_mtime(p, *secs, *nsec as u32);
    }
    let before = snapshot(&fx.src);
    let out = against(&["--json"]).expect(4);
    let problems = &out.json()["against"][0]["problems"];
    let found: Vec<(String, String)> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("file1.txt", "content differs (same size"),
        ("sub/file2.txt", "mode 0600 here, 0644 in the run"),
        ("sub/empty", "missing here"),
        ("new.txt", "here but not in the run"),
        (
            "link",
            "links to sub/file2.txt here, to file1.txt in the run",
        ),
        ("sub/pair_b", "not a hard link to pair_a"),
    ];
    for (path, words) in expect {
        assert!(
            found.iter().any(|(p, m)| p == path && m.contains(words)),
            "{path}: {words}\n{out}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{out}");
    assert_eq!(snapshot(&fx.src), before, "verify wrote nothing");
    against(&[]).expect(4).stderr_has("sub/empty");
}

/// `verify --data --sample`: each run checks a share of the packs, those not checked yet
/// first, so that repeated runs cover every pack; then a new round starts.
#[test]
fn sampled_verification_covers_every_pack_over_repeated_runs() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    write(&fx.src.join("big"), &pseudo_random(80, 6 << 20));
    write(&fx.src.join("small"), b"small\n");
    fx.backup_ok();
    let sample = || {
        let mut cmd = fx.cmd();
        cmd.args(["verify", "--data", "--sample", "30%", "--json", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE]);
        let out = run(cmd).ok();
        out.json()["data"][0].clone()
    };
    let first = sample();
    let packs = as_u64(&first, "packs");
    assert!(packs >= 6, "{first:#}");
    let per_run = (packs as f64 * 0.3).ceil() as u64;
    assert_eq!(as_u64(&first, "packs_checked"), per_run, "{first:#}");
    assert!(as_u64(&first, "chunks_skipped") > 0, "{first:#}");
    assert_eq!(first["failed"], 0);
    let mut covered = as_u64(&first, "packs_covered");
    assert_eq!(covered, per_run);
    let mut runs = 1;
    while covered < packs {
        let r = sample();
        let now = as_u64(&r, "packs_covered");
        assert!(
            now > covered,
            "each sample checks packs not checked yet: {r:#}"
        );
        covered = now;
        runs += 1;
        assert!(runs <= packs.div_ceil(per_run), "too many samples: {r:#}");
    }
    // Every pack checked: the next sample starts a new round.
    let next = sample();
    assert_eq!(as_u64(&next, "packs_covered"), per_run, "{next:#}");
}

/// `verify --data`: a file with damaged chunks in two packs fails once, and both packs
/// are left out of the sample's coverage (so the next sample finds them again); the
/// chunks after the first damaged one are checked too, not skipped.
#[test]
fn every_damaged_pack_of_a_file_is_found_not_only_the_first() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    write(&fx.src.join("big"), &pseudo_random(82, 6 << 20));
    fx.backup_ok();
    let mut packs: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(fx.target.join("data")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            packs.push(f.unwrap().path());
        }
    }
    packs.sort();
    assert!(packs.len() >= 4, "{packs:?}");
    // A flipped byte in the middle of two packs: a chunk in each fails its MDC.
    for pack in [&packs[0], &packs[packs.len() - 1]] {
        let mut bytes = std::fs::read(pack).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::set_permissions(pack, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(pack, bytes).unwrap();
    }
    let mut cmd = fx.cmd();
    cmd.args(["verify", "--data", "--sample", "100%", "--json", "--key"])
        .arg(&fx.secret_key)
        .args(["--source", SOURCE]);
    let out = run(cmd).expect(4);
    let report = &out.json()["data"][0];
    assert_eq!(report["failed"], 1, "{report:#}");
    assert_eq!(
        as_u64(report, "packs_checked"),
        packs.len() as u64,
        "{report:#}"
    );
    assert_eq!(
        as_u64(report, "packs_covered"),
        packs.len() as u64 - 2,
        "neither damaged pack counts as checked: {report:#}"
    );
}

/// `verify --data --max-requests`: the check stops before a pack beyond the limit, says
/// so and counts what it left; capped samples still cover every pack over runs, since
/// a pack counts as checked only once all of the run's chunks in it were.
#[test]
fn capped_verification_stops_at_its_limit_and_capped_samples_still_cover_everything() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    write(&fx.src.join("big"), &pseudo_random(81, 6 << 20));
    write(&fx.src.join("small"), b"small\n");
    fx.backup_ok();
    let check = |extra: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["verify", "--data", "--json", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE])
            .args(extra);
        let out = run(cmd).ok();
        out.json()["data"][0].clone()
    };
    let whole = check(&[]);
    assert_eq!(whole["stopped"], serde_json::Value::Null, "{whole:#}");
    assert_eq!(as_u64(&whole, "files"), 2, "{whole:#}");
    let packs = as_u64(&whole, "packs");
    assert_eq!(
        as_u64(&whole, "requests"),
        packs,
        "one request per pack: {whole:#}"
    );

    let capped = check(&["--max-requests", "2"]);
    assert_eq!(capped["stopped"], "--max-requests 2 reached", "{capped:#}");
    assert_eq!(as_u64(&capped, "requests"), 2, "{capped:#}");
    assert_eq!(as_u64(&capped, "files_unchecked"), 2, "{capped:#}");
    assert_eq!(as_u64(&capped, "failed"), 0, "{capped:#}");
    let by_bytes = check(&["--max-bytes", "1"]);
    assert_eq!(as_u64(&by_bytes, "requests"), 1, "{by_bytes:#}");

    let mut covered = 0;
    for round in 1..=packs {
        let r = check(&["--sample", "100%", "--max-requests", "2"]);
        let now = as_u64(&r, "packs_covered");
        assert!(now > covered, "round {round} covered nothing new: {r:#}");
        covered = now;
        if covered == packs {
            return;
        }
    }
    panic!("capped samples never covered all {packs} packs");
}

/// `backup --exclude` and `--exclude-file` leave out what their patterns match for that
/// run (the config's `ignore` rules); a bad pattern or a missing file is refused before
/// anything is stored.
#[test]
fn backup_excludes_what_the_command_line_says() {
    let fx = Fixture::new();
    write(&fx.src.join("keep.txt"), b"kept\n");
    write(&fx.src.join("debug.log"), b"noise\n");
    write(&fx.src.join("var/cache/blob"), b"cache\n");
    write(&fx.src.join("var/lib/state"), b"state\n");
    write(&fx.src.join("sub/trace.log"), b"noise\n");
    let patterns = fx.path("exclude.txt");
    std::fs::write(&patterns, "# caches are rebuilt\n\nvar/cache\n").unwrap();
    let backup = |args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["backup", "--json"]).args(args);
        run(cmd)
    };
    // Refused before anything is stored.
    backup(&["--exclude", "a[b"]).expect(1).stderr_has("a[b");
    let missing = fx.path("nope.txt");
    backup(&["--exclude-file", missing.to_str().unwrap()])
        .expect(1)
        .stderr_has("nope.txt");
    assert!(fx.metafiles_or_none().is_empty(), "nothing stored");

    backup(&[
        "--exclude",
        "*.log",
        "--exclude-file",
        patterns.to_str().unwrap(),
    ])
    .ok();
    let files = |run_args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(["find", "--key"])
            .arg(&fx.secret_key)
            .args(["--source", SOURCE, "*"])
            .args(run_args);
        let out = run(cmd).ok();
        let mut names: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        names.sort();
        names
    };
    let listed = files(&[]);
    assert!(listed.iter().any(|l| l.contains("keep.txt")), "{listed:?}");
    assert!(
        listed.iter().any(|l| l.contains("var/lib/state")),
        "{listed:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|l| l.contains(".log") || l.contains("var/cache/blob")),
        "{listed:?}"
    );
    // Only for that run: the next one without them has everything.
    backup(&[]).ok();
    let listed = files(&[]);
    assert!(
        listed.iter().any(|l| l.contains("sub/trace.log")),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|l| l.contains("var/cache/blob")),
        "{listed:?}"
    );
}

/// `-q` says only what went wrong (a backup and a restore print nothing at all when all
/// is well, and --json still prints its JSON); `-v` names each file a backup stores (new
/// or changed, not unchanged) and each file a restore writes, on standard error.
#[test]
fn quiet_says_nothing_when_all_is_well_and_verbose_names_each_file() {
    let fx = Fixture::new();
    write(&fx.src.join("a.txt"), b"a\n");
    write(&fx.src.join("b.txt"), b"b\n");
    let coffer_with = |args: &[&str]| {
        let mut cmd = fx.cmd();
        cmd.args(args);
        run(cmd)
    };
    let out = coffer_with(&["backup", "-q"]).ok();
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out}");
    let out = coffer_with(&["-q", "backup", "--json"]).ok();
    assert_eq!(out.json()["runs"][0]["files"], 2, "{out}");

    write(&fx.src.join("b.txt"), b"b changed\n");
    write(&fx.src.join("c.txt"), b"c\n");
    let out = coffer_with(&["backup", "-v"]).ok();
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("coffer backup: "))
        .collect();
    let b = fx.src.join("b.txt").display().to_string();
    let c = fx.src.join("c.txt").display().to_string();
    assert_eq!(said, [format!("changed {b}"), format!("new {c}")], "{out}");
    assert!(out.stdout.contains("files"), "the summary too: {out}");

    let key = fx.secret_key.to_str().unwrap().to_string();
    let to = fx.path("r");
    let to_s = to.to_str().unwrap().to_string();
    let restore = |extra: &str, dir: &str| {
        coffer_with(&[
            "restore", extra, "--key", &key, "--source", SOURCE, "--to", dir,
        ])
    };
    let out = restore("-q", &to_s).ok();
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out}");
    let to2 = fx.path("r2").to_str().unwrap().to_string();
    let out = restore("-v", &to2).ok();
    let restored = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("coffer restore: restored "))
        .count();
    assert_eq!(restored, 3, "{out}");
    // Both at once is a usage error.
    coffer_with(&["-q", "-v", "backup"]).expect(2);
}

/// `backup --dry-run` says what a backup would read and store without storing anything
/// or making a request (the target stays empty), and agrees with the backup that then
/// runs: the same new chunks and bytes; after it, nothing is new.
#[test]
fn a_dry_run_predicts_the_backup_and_stores_nothing() {
    let fx = Fixture::new();
    nested_tree(&fx.src);
    let dry = || {
        let mut cmd = fx.cmd();
        cmd.args(["backup", "--dry-run", "--json"]);
        run(cmd).ok().json()[0].clone()
    };
    let first = dry();
    assert_eq!(first["known_target"], false, "{first:#}");
    assert_eq!(first["files_to_read"], first["files"], "{first:#}");
    assert!(as_u64(&first, "bytes_new") > 1_000_000, "{first:#}");
    assert!(
        fx.objects().is_empty() && fx.metafiles_or_none().is_empty(),
        "a dry run stored something"
    );
    let stats = fx.backup_ok();
    assert_eq!(
        stats["bytes_new"], first["bytes_new"],
        "{stats:#}\n{first:#}"
    );

    write(&fx.src.join("etc/hosts"), b"127.0.0.1 changed\n");
    write(&fx.src.join("added.bin"), &pseudo_random(7, 300_000));
    let second = dry();
    assert_eq!(second["known_target"], true, "{second:#}");
    assert!(as_u64(&second, "files_unchanged") >= 1, "{second:#}");
    let stats = fx.backup_ok();
    assert_eq!(
        stats["bytes_new"], second["bytes_new"],
        "{stats:#}\n{second:#}"
    );
    assert_eq!(
        stats["chunks_new"], second["chunks_new"],
        "{stats:#}\n{second:#}"
    );
    let third = dry();
    assert_eq!(third["bytes_new"], 0, "{third:#}");
    // For people: one block per source and target.
    let mut cmd = fx.cmd();
    cmd.args(["backup", "--dry-run"]);
    let out = run(cmd).ok();
    assert!(out.stdout.contains("dry run: nothing stored"), "{out}");
}

/// `coffer init --policies DIR` writes into a directory of the user's own: a new one is
/// made 0700, one others may write is refused before anything is written there (another
/// local user could replace apply.sh or a key before it is used).
#[test]
fn init_policies_writes_only_into_a_directory_of_ones_own() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let init = |dir: &Path| {
        let mut cmd = coffer(home.path());
        cmd.args(["init", "s3://acme-backups/web1", "--policies"])
            .arg(dir);
        run(cmd)
    };
    let fresh = home.path().join("setup");
    init(&fresh).ok();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(fresh.join("apply.sh").is_file() && fresh.join("host-policy.json").is_file());
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    init(&shared)
        .expect(1)
        .stderr_has("mode 777")
        .stderr_has("chmod 700");
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing written"
    );
}
