//! A backup restores with GnuPG and standard tools alone: `coffer backup`, then
//! `scripts/restore-with-gpg.sh` (gpg, b3sum, coreutils), then the restored tree is
//! compared with the source. Also: a flipped byte in a pack, and a forged metafile with a
//! `..` path, make the script fail and name the file.
//!
//! Needs gpg and b3sum on the PATH (`scripts/setup.sh` installs them).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use filetime::FileTime;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/restore-with-gpg.sh")
}

/// Runs a command and returns its output, with a readable panic if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs it)"))
}

/// Runs a command that must succeed.
fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(base: &Path, rel: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(rel))
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Files: relative path, content, mode. Directories and others are made in `make_tree`.
const BIG: &[u8] = b"big.bin";

fn make_tree(src: &Path) {
    let dirs: [(&[u8], u32); 5] = [
        (b"dir1", 0o750),
        (b"dir1/dir2", 0o755),
        (b"odd dir\n\xfe", 0o700),
        (b"read-only", 0o555),
        (b"setgid", 0o2775),
    ];
    for (d, _) in dirs {
        std::fs::create_dir(p(src, d)).unwrap();
    }
    let files: Vec<(&[u8], Vec<u8>, u32)> = vec![
        (BIG, coffer::internals::noise(300_000, 1), 0o644),
        (b"empty", Vec::new(), 0o644),
        // Compressible: stored as zstd chunks, which the script must decompress.
        (
            b"notes.log",
            b"GET /index.html 200 backup ok\n".repeat(12_000),
            0o644,
        ),
        (b"dir1/dir2/nested.txt", b"nested\n".to_vec(), 0o640),
        (b"with space", b"a space\n".to_vec(), 0o644),
        (b"new\nline", b"a newline\n".to_vec(), 0o600),
        (b"bad\xffname", b"invalid UTF-8\n".to_vec(), 0o644),
        (b"back\\slash \\x41 \\c", b"backslashes\n".to_vec(), 0o644),
        (b"per%cent %41", b"percent\n".to_vec(), 0o644),
        (b"-", b"a dash\n".to_vec(), 0o644),
        (b"trailing newline\n", b"x".to_vec(), 0o644),
        (b"run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        (b"odd dir\n\xfe/inner", b"inner\n".to_vec(), 0o600),
        (b"read-only/kept", b"kept\n".to_vec(), 0o444),
        (b"before-1970", b"old\n".to_vec(), 0o644),
    ];
    for (rel, content, mode) in &files {
        let path = p(src, rel);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    std::fs::hard_link(p(src, BIG), p(src, b"dir1/hard link")).unwrap();
    std::os::unix::fs::symlink("dir1/dir2/nested.txt", p(src, b"link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", p(src, b"dangling")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"new\nline"), p(src, b"odd link\xff")).unwrap();
    nix::unistd::mkfifo(
        &p(src, b"fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();

    // Times with nanoseconds; one before 1970 (stored as -2.750000000 = -1.25 s).
    let mut n = 0;
    for (rel, _, _) in &files {
        n += 1;
        set_mtime(&p(src, rel), 1_600_000_000 + n, 123_456_789 + n as u32);
    }
    set_mtime(&p(src, b"before-1970"), -2, 750_000_000);
    for link in [&b"link"[..], b"dangling", b"odd link\xff", b"fifo"] {
        n += 1;
        set_mtime(&p(src, link), 1_500_000_000 + n, 987_654_321);
    }
    // Directories last, deepest first (adding entries changes a directory's mtime).
    for (d, mode) in dirs.iter().rev() {
        std::fs::set_permissions(p(src, d), std::fs::Permissions::from_mode(*mode)).unwrap();
        n += 1;
        set_mtime(&p(src, d), 1_400_000_000 + n, 555);
    }
    std::fs::set_permissions(src, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_mtime(src, 1_300_000_000, 1);
}

/// What the comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    /// Permission bits (not for symlinks, whose mode means nothing on Linux).
    mode: Option<u32>,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    fn walk(root: &Path, rel: &[u8], out: &mut BTreeMap<Vec<u8>, Node>) {
        let path = if rel == b"." {
            root.to_path_buf()
        } else {
            p(root, rel)
        };
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        out.insert(
            rel.to_vec(),
            Node {
                kind,
                mode: (!ft.is_symlink()).then_some(m.mode() & 0o7777),
                mtime: (m.mtime(), m.mtime_nsec()),
                content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
                link: ft.is_symlink().then(|| {
                    std::fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let name = e.unwrap().file_name();
                let child = if rel == b"." {
                    name.as_bytes().to_vec()
                } else {
                    [rel, b"/", name.as_bytes()].concat()
                };
                walk(root, &child, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, b".", &mut out);
    out
}

fn assert_same_tree(src: &Path, restored: &Path) {
    let (a, b) = (snapshot(src), snapshot(restored));
    for (rel, node) in &a {
        let name = String::from_utf8_lossy(rel);
        match b.get(rel) {
            None => panic!("{name:?} was not restored"),
            Some(got) => assert_eq!(got, node, "{name:?} differs (left: restored)"),
        }
    }
    for rel in b.keys() {
        assert!(
            a.contains_key(rel),
            "{:?} is extra",
            String::from_utf8_lossy(rel)
        );
    }
    let (big, hard) = (
        std::fs::metadata(p(restored, BIG)).unwrap(),
        std::fs::metadata(p(restored, b"dir1/hard link")).unwrap(),
    );
    assert_eq!(big.ino(), hard.ino(), "the hard link is a hard link again");
    assert_eq!(big.nlink(), 2);
}

/// Lets `TempDir` clean up trees holding read-only directories.
fn make_writable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// A private GnuPG home; its agent is stopped when dropped.
struct GnupgHome(PathBuf);

impl GnupgHome {
    fn new(path: PathBuf) -> Self {
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        GnupgHome(path)
    }
    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &self.0).args(["--batch", "--quiet"]);
        c
    }
    fn restore(&self, target: &Path, metafile: &Path, dest: &Path) -> Output {
        run(Command::new("bash")
            .arg(script())
            .args([target, metafile, dest])
            .env("GNUPGHOME", &self.0))
    }
}

impl Drop for GnupgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.0)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// The single file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{found:?} in {}", dir.display());
    found.into_iter().next().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn backup_restores_with_gpg_and_coreutils_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (src, keys, tgt) = (root.join("src"), root.join("keys"), root.join("tgt"));
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);

    ok(Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["keygen", "--name", "admin", "--no-passphrase", "--out"])
        .arg(&keys));
    for name in ["host", "stranger"] {
        ok(Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["keygen", "--sign-only", "--name", name, "--out"])
            .arg(&keys));
    }
    let config = root.join("coffer.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{root}/state\"\nhost = \"test host\"\n\
             signing_key = \"{root}/keys/host.sign.key.asc\"\n\n\
             [source.home]\npath = \"{root}/src\"\nrecipients = [\"{root}/keys/admin.pub.asc\"]\n\
             targets = [\"usb\"]\nchunk_min = 4096\nchunk_avg = 16384\nchunk_max = 65536\n\n\
             [target.usb]\nurl = \"file://{root}/tgt\"\n",
            root = root.display()
        ),
    )
    .unwrap();
    ok(Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["init", "usb", "-c"])
        .arg(&config));
    ok(Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["backup", "-c"])
        .arg(&config));

    // The layout of docs/FORMAT.md: runs/<escaped host>/<source>/<run>.{meta,refs}.
    let run_dir = tgt.join("runs/test+20host/home");
    let metafile = only_file(&run_dir, ".meta");
    let refs = std::fs::read_to_string(only_file(&run_dir, ".refs")).unwrap();
    assert!(refs.starts_with("coffer-refs 3\n"), "{refs}");
    // The object list records the stored metafile's BLAKE3 and size (what b3sum says),
    // so anyone can check it without a key.
    let stored = std::fs::read(&metafile).unwrap();
    let line = format!(
        "\nmetafile {} {} 1\n",
        blake3::hash(&stored).to_hex(),
        stored.len()
    );
    assert!(refs.contains(&line), "{refs} lacks {line}");

    let gnupg = GnupgHome::new(root.join("gnupg"));
    ok(gnupg.gpg().arg("--import").arg(keys.join("admin.key.asc")));

    // The plaintext listing, to check the big file has several chunks and to find one.
    // The metafile is signed by the host: without its certificate gpg decrypts it, says
    // it cannot check the signature (NO_PUBKEY) and exits 2; with it, GOODSIG and 0.
    let out = run(gnupg.gpg().args(["--status-fd", "2", "-d"]).arg(&metafile));
    let said = stderr(&out);
    assert!(
        out.status.code() == Some(2)
            && said.contains("[GNUPG:] NO_PUBKEY ")
            && said.contains("[GNUPG:] DECRYPTION_OKAY")
            && said.contains("[GNUPG:] GOODMDC"),
        "{said}"
    );
    let listing = out.stdout;
    let listing = String::from_utf8(listing).expect("the listing is ASCII");
    let lines: Vec<&str> = listing.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("file big.bin "))
        .expect("big.bin is listed");
    let nchunks: usize = lines[at].split(' ').nth(10).unwrap().parse().unwrap();
    assert!(
        nchunks >= 3,
        "big.bin should have several chunks: {}",
        lines[at]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("chunk ") && l.ends_with(" zstd")),
        "notes.log should be stored compressed"
    );
    let chunk: Vec<&str> = lines[at + 1].split(' ').collect();
    let (object, offset, length): (&str, u64, u64) = (
        chunk[1],
        chunk[2].parse().unwrap(),
        chunk[3].parse().unwrap(),
    );

    // 1. The whole tree comes back.
    let dest = root.join("restored");
    let out = gnupg.restore(&tgt, &metafile, &dest);
    assert!(out.status.success(), "restore failed:\n{}", stderr(&out));
    assert_same_tree(&src, &dest);

    // 1b. With --signer: the host's certificate passes, a stranger's does not.
    let signed = |cert: &str, dest: &Path| {
        run(Command::new("bash")
            .arg(script())
            .arg("--signer")
            .arg(keys.join(cert))
            .args([&tgt, &metafile, dest])
            .env("GNUPGHOME", &gnupg.0))
    };
    let dest1b = root.join("restored-signed");
    let out = signed("host.sign.pub.asc", &dest1b);
    assert!(
        out.status.success(),
        "signed restore failed:\n{}",
        stderr(&out)
    );
    assert_same_tree(&src, &dest1b);
    let out = signed("stranger.sign.pub.asc", &root.join("restored-stranger"));
    assert!(
        !out.status.success() && stderr(&out).contains("no good signature"),
        "a stranger's certificate vouched for the run:\n{}",
        stderr(&out)
    );
    ok(gnupg
        .gpg()
        .arg("--import")
        .arg(keys.join("host.sign.pub.asc")));
    let out = ok(gnupg.gpg().args(["--status-fd", "2", "-d"]).arg(&metafile));
    assert!(
        stderr(&out).contains("[GNUPG:] GOODSIG "),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.stdout, listing.as_bytes());

    // 2. One flipped byte in a chunk of big.bin: the script fails and names the file,
    //    which is not written at all; the other files are restored.
    let pack = tgt.join("data").join(&object[..2]).join(object);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(offset + length / 2) as usize] ^= 0x01;
    std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&pack, &bytes).unwrap();
    let dest2 = root.join("restored-from-damaged");
    let out = gnupg.restore(&tgt, &metafile, &dest2);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a flipped byte went unnoticed:\n{err}"
    );
    assert!(err.contains("big.bin"), "the damaged file is named:\n{err}");
    assert!(
        !p(&dest2, BIG).exists(),
        "a damaged file is never half-written"
    );
    assert_eq!(
        std::fs::read(dest2.join("with space")).unwrap(),
        b"a space\n"
    );
    let flipped = offset + length / 2;
    bytes[flipped as usize] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();

    // 3. A forged metafile (anyone with the public key can make one) with a `..` path:
    //    refused, and nothing is written outside the destination.
    let forged_text = listing.replacen("\nfile with%20space ", "\nfile ../escaped ", 1);
    assert_ne!(forged_text, listing);
    let forged = root.join("forged.meta");
    let mut encrypt = gnupg.gpg();
    encrypt
        .args(["--encrypt", "--recipient-file"])
        .arg(keys.join("admin.pub.asc"))
        .arg("--output")
        .arg(&forged)
        .stdin(std::process::Stdio::piped());
    let mut child = encrypt.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), forged_text.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let dest3 = root.join("restored-from-forged");
    let out = gnupg.restore(&tgt, &forged, &dest3);
    let err = stderr(&out);
    assert!(!out.status.success(), "a '..' path was accepted:\n{err}");
    assert!(
        err.contains("../escaped") && err.contains("refused"),
        "{err}"
    );
    assert!(
        !root.join("escaped").exists(),
        "wrote outside the destination"
    );

    // 4. `gpg -d` exits 0 on a plaintext message, which anyone can plant (`gpg --store`):
    //    the script reads gpg's status and refuses it, as a metafile and as a chunk.
    let store = |data: &[u8], out: &Path| {
        let mut c = gnupg.gpg();
        c.args(["--store", "-z", "0", "--output"])
            .arg(out)
            .stdin(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
        assert!(child.wait().unwrap().success());
    };
    let plain_meta = root.join("plain.meta");
    store(listing.as_bytes(), &plain_meta);
    let dest4 = root.join("restored-from-plaintext");
    let out = gnupg.restore(&tgt, &plain_meta, &dest4);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a plaintext metafile was accepted:\n{err}"
    );
    assert!(err.contains("not an encrypted message"), "{err}");
    assert!(!dest4.join("with space").exists());

    let plain_chunk = root.join("plain.chunk");
    store(b"planted\n", &plain_chunk);
    let planted = std::fs::read(&plain_chunk).unwrap();
    let name = blake3::hash(&planted).to_hex().to_string();
    std::fs::create_dir_all(tgt.join("data").join(&name[..2])).unwrap();
    std::fs::write(tgt.join("data").join(&name[..2]).join(&name), &planted).unwrap();
    let hash = blake3::hash(b"planted\n").to_hex().to_string();
    let at = lines
        .iter()
        .position(|l| l.starts_with("file with%20space "))
        .unwrap();
    let mut forged_lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let f: Vec<&str> = lines[at].split(' ').collect();
    forged_lines[at] = format!("{} 8 {hash} 1", f[..8].join(" "));
    forged_lines[at + 1] = format!("chunk {name} 0 {} 8 {hash} raw", planted.len());
    let text = forged_lines.join("\n") + "\n";
    let (bytes_line, total) = {
        let end = text.lines().last().unwrap();
        let n: Vec<&str> = end.split(' ').collect();
        let old: u64 = f[8].parse().unwrap();
        (end.to_string(), n[2].parse::<u64>().unwrap() - old + 8)
    };
    let entries = bytes_line.split(' ').nth(1).unwrap();
    let text = text.replace(&bytes_line, &format!("end {entries} {total}"));
    let mut encrypt = gnupg.gpg();
    let forged2 = root.join("forged2.meta");
    encrypt
        .args(["--encrypt", "--recipient-file"])
        .arg(keys.join("admin.pub.asc"))
        .arg("--output")
        .arg(&forged2)
        .stdin(std::process::Stdio::piped());
    let mut child = encrypt.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let dest5 = root.join("restored-with-plaintext-chunk");
    let out = gnupg.restore(&tgt, &forged2, &dest5);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a plaintext chunk was accepted:\n{err}"
    );
    assert!(
        err.contains("with\\ space") && err.contains("not an encrypted message"),
        "{err}"
    );
    assert!(!dest5.join("with space").exists());
    assert_eq!(std::fs::read(dest5.join("empty")).unwrap(), b"");

    for dir in [&src, &dest, &dest2, &dest3, &dest4, &dest5] {
        make_writable(dir);
    }
}
