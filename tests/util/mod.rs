//! Helpers for the end-to-end tests: a [`Fixture`] (key, config, source, target in one
//! temporary directory), running `coffer` with a clean environment, reading whole trees
//! back for comparison, and a throwaway GnuPG home.

#![allow(dead_code)]

pub mod forge;
pub mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// The host name every fixture config sets (so run paths are predictable).
pub const HOST: &str = "testhost";
/// The source name every fixture config uses.
pub const SOURCE: &str = "home";

/// Exit statuses of `coffer`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_PARTIAL: i32 = 3;

// ---------------------------------------------------------------------------------------
// Running commands

/// The outcome of one command, printable as a whole for assertion messages.
pub struct Out {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nexit status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Asserts the exit status and returns self.
    #[track_caller]
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        self.expect(EXIT_OK)
    }

    /// Asserts that standard error contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "standard error does not mention {needle:?}\n{self}"
        );
        self
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("standard output is not JSON ({e})\n{self}"))
    }
}

/// Runs a prepared command and captures everything.
pub fn run(mut cmd: Command) -> Out {
    let what = format!("{cmd:?}");
    let output = cmd.output().expect("the command starts");
    Out {
        what,
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Any program with a clean environment: only PATH, and HOME set to `home`.
pub fn clean_command(program: impl AsRef<OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    cmd
}

/// Path of the binary under test.
pub fn coffer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coffer"))
}

/// `coffer` with a clean environment (see [`clean_command`]).
pub fn coffer(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("coffer").expect("the coffer binary is built");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    cmd
}

/// `coffer keygen --no-passphrase`; returns (public, secret) key paths.
pub fn keygen(home: &Path, out: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut cmd = coffer(home);
    cmd.arg("keygen")
        .arg("--out")
        .arg(out)
        .args(["--name", name, "--no-passphrase"]);
    run(cmd).ok();
    let public = out.join(format!("{name}.pub.asc"));
    let secret = out.join(format!("{name}.key.asc"));
    assert!(
        public.is_file() && secret.is_file(),
        "keygen wrote both files"
    );
    (public, secret)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `program` is found on PATH.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

// ---------------------------------------------------------------------------------------
// The fixture

/// What goes into the config file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// (chunk_min, chunk_avg, chunk_max); `None` keeps coffer's defaults.
    pub chunking: Option<(u32, u32, u32)>,
    /// The target's pack_size, e.g. "1MiB".
    pub pack_size: Option<String>,
    /// Recipient certificate files; empty means the fixture's own public key.
    pub recipients: Vec<PathBuf>,
    /// `state_dir`; `None` means the fixture's `host/state`.
    pub state_dir: Option<PathBuf>,
}

impl Default for Settings {
    /// Small chunks (4 KiB / 16 KiB / 64 KiB) so a 1 MiB file spans many of them.
    fn default() -> Self {
        Settings {
            chunking: Some((4096, 16384, 65536)),
            pack_size: None,
            recipients: Vec::new(),
            state_dir: None,
        }
    }
}

/// One temporary world: a key pair made by `coffer keygen`, a config, a source tree and a
/// `file://` target.
///
/// ```text
/// <dir>/home/              HOME of every command
/// <dir>/admin/             coffer.pub.asc, coffer.key.asc (the key pair, "off the host")
/// <dir>/host/config.toml   the config; host/coffer.pub.asc is the only key it names
/// <dir>/host/state/        state_dir
/// <dir>/src/               the source "home"
/// <dir>/target/            the target
/// ```
pub struct Fixture {
    pub dir: TempDir,
    pub home: PathBuf,
    pub src: PathBuf,
    pub target: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    /// The public certificate the host holds.
    pub public_key: PathBuf,
    /// The secret key, kept away from the host.
    pub secret_key: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(Settings::default())
    }

    pub fn with(settings: Settings) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("coffer-e2e-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        let admin = root.join("admin");
        let host = root.join("host");
        let src = root.join("src");
        for d in [&home, &admin, &host, &src] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (public, secret_key) = keygen(&home, &admin, "coffer");
        let public_key = host.join("coffer.pub.asc");
        std::fs::copy(&public, &public_key).unwrap();
        let fx = Fixture {
            home,
            src,
            target: root.join("target"),
            state: host.join("state"),
            config: host.join("config.toml"),
            public_key,
            secret_key,
            dir,
        };
        fx.write_config(&settings);
        // A target is set up on purpose (`coffer init`); a backup never creates one.
        std::fs::create_dir_all(&fx.target).unwrap();
        fx
    }

    /// A path inside the fixture (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn target_url(&self) -> String {
        format!("file://{}", self.target.display())
    }

    /// The config text for `settings`, with `state_dir` and the fixture's paths.
    pub fn config_text(&self, settings: &Settings) -> String {
        let recipients: Vec<String> = if settings.recipients.is_empty() {
            vec![toml_str(&self.public_key)]
        } else {
            settings.recipients.iter().map(|p| toml_str(p)).collect()
        };
        let mut t = format!(
            "host = \"{HOST}\"\nstate_dir = {}\n\n[source.{SOURCE}]\npath = {}\n\
             recipients = [{}]\ntargets = [\"local\"]\n",
            toml_str(settings.state_dir.as_ref().unwrap_or(&self.state)),
            toml_str(&self.src),
            recipients.join(", ")
        );
        if let Some((min, avg, max)) = settings.chunking {
            t += &format!("chunk_min = {min}\nchunk_avg = {avg}\nchunk_max = {max}\n");
        }
        t += &format!(
            "\n[target.local]\nurl = {}\n",
            toml_str(Path::new(&self.target_url()))
        );
        if let Some(p) = &settings.pack_size {
            t += &format!("pack_size = \"{p}\"\n");
        }
        t
    }

    pub fn write_config(&self, settings: &Settings) {
        std::fs::write(&self.config, self.config_text(settings)).unwrap();
    }

    /// `coffer -c <config>` with a clean environment.
    pub fn cmd(&self) -> Command {
        let mut cmd = coffer(&self.home);
        cmd.arg("-c").arg(&self.config);
        cmd
    }

    /// `coffer backup --json`, whatever its outcome.
    pub fn backup(&self) -> Out {
        self.backup_using(&self.config)
    }

    /// `coffer -c <config> backup --json` with another config file.
    pub fn backup_using(&self, config: &Path) -> Out {
        let mut cmd = coffer(&self.home);
        cmd.arg("-c").arg(config).args(["backup", "--json"]);
        run(cmd)
    }

    /// A backup that must succeed fully; returns its statistics (`runs[0]`).
    #[track_caller]
    pub fn backup_ok(&self) -> Value {
        let out = self.backup().ok();
        let json = out.json();
        assert_eq!(json["runs"].as_array().map(Vec::len), Some(1), "{out}");
        json["runs"][0].clone()
    }

    /// `coffer restore --key <secret> --source home --to <to> <extra...>`.
    pub fn restore_with(&self, key: &Path, to: &Path, extra: &[&OsStr]) -> Out {
        let mut cmd = self.cmd();
        cmd.arg("restore")
            .arg("--key")
            .arg(key)
            .args(["--source", SOURCE])
            .arg("--to")
            .arg(to)
            .args(extra);
        run(cmd)
    }

    /// Restore with the fixture's own secret key.
    pub fn restore(&self, to: &Path, extra: &[&OsStr]) -> Out {
        self.restore_with(&self.secret_key, to, extra)
    }

    /// The runs listed by `coffer runs --target <url> --json` (no config needed), ok or
    /// not (exit status 3 says some are not).
    pub fn runs(&self) -> Vec<Value> {
        let mut cmd = coffer(&self.home);
        cmd.args(["runs", "--json", "--target", &self.target_url()]);
        let out = run(cmd);
        assert!(matches!(out.code, Some(EXIT_OK | EXIT_PARTIAL)), "{out}");
        out.json().as_array().cloned().unwrap_or_default()
    }

    /// Stored metafiles of the source, in name order.
    pub fn metafiles(&self) -> Vec<PathBuf> {
        let dir = self.target.join("runs").join(HOST).join(SOURCE);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("meta")))
            .collect();
        v.sort();
        v
    }

    /// Stored metafiles of the source, if any.
    pub fn metafiles_or_none(&self) -> Vec<PathBuf> {
        let dir = self.target.join("runs").join(HOST).join(SOURCE);
        if dir.is_dir() {
            self.metafiles()
        } else {
            Vec::new()
        }
    }

    /// Every data object (pack) on the target, not counting uploads in progress.
    pub fn objects(&self) -> Vec<PathBuf> {
        let data = self.target.join("data");
        let mut v = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(&data) {
            for d in dirs {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    let path = f.unwrap().path();
                    // `<key>#<n>`: object_store's staging file for an upload in progress.
                    if !path.to_string_lossy().contains('#') {
                        v.push(path);
                    }
                }
            }
        }
        v.sort();
        v
    }
}

/// A few files in nested directories, with a symlink; mtimes in the past.
pub fn small_tree(src: &Path) {
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost\n");
    write(&src.join("etc/app/config.toml"), b"[a]\nb = 1\n");
    write(&src.join("data.bin"), &pseudo_random(1, 1_500_000));
    write(&src.join("empty"), b"");
    std::os::unix::fs::symlink("etc/hosts", src.join("hosts-link")).unwrap();
    set_past_mtimes(src, 1_600_000_000);
}

/// A TOML basic string holding `p`.
pub fn toml_str(p: &Path) -> String {
    let s = p.to_str().expect("fixture paths are UTF-8");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------------------
// Building trees

/// Deterministic pseudo-random bytes: the project's one generator (src/prng.rs).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    coffer::internals::noise(len, seed)
}

/// Writes a file, creating its parent directories.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Sets the modification (and access) time without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nsec);
    filetime::set_symlink_file_times(path, t, t)
        .unwrap_or_else(|e| panic!("utimes {}: {e}", path.display()));
}

/// Gives every entry below and including `root` a distinct mtime in the past with
/// nanoseconds; directories last and deepest first, so setting them sticks.
pub fn set_past_mtimes(root: &Path, base: i64) {
    let mut paths: Vec<PathBuf> = snapshot_paths(root);
    // Children sort after their parents: reverse order visits them first.
    paths.sort();
    paths.reverse();
    let (dirs, others): (Vec<_>, Vec<_>) = paths
        .into_iter()
        .partition(|p| std::fs::symlink_metadata(p).unwrap().is_dir());
    for (i, p) in others.iter().chain(dirs.iter()).enumerate() {
        set_mtime(p, base + i as i64 * 7, 100_000_001 + i as u32 * 1_234_567);
    }
}

/// Every path below and including `root`.
fn snapshot_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Reading trees back

/// What a tree entry is, with its type-specific content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    /// Size and BLAKE3 of the content.
    File(u64, String),
    /// Target bytes, shown lossily.
    Symlink(Vec<u8>),
    Fifo,
    CharDev(u64, u64),
    BlockDev(u64, u64),
    Socket,
}

/// One entry as `lstat` and its content show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// (device, inode): not compared directly; used to check hard links.
    pub inode: (u64, u64),
    pub nlink: u64,
}

/// The tree below and including `root`, keyed by relative path bytes (`.` for the root).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    for p in snapshot_paths(root) {
        let rel = p.strip_prefix(root).unwrap();
        let rel = if rel.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            rel.as_os_str().as_bytes().to_vec()
        };
        out.insert(rel, node(&p));
    }
    out
}

fn node(p: &Path) -> Node {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let dev = || {
        let r = m.rdev();
        (nix::sys::stat::major(r), nix::sys::stat::minor(r))
    };
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        NodeKind::File(data.len() as u64, blake3::hash(&data).to_hex().to_string())
    } else if ft.is_symlink() {
        NodeKind::Symlink(
            std::fs::read_link(p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        let (a, b) = dev();
        NodeKind::CharDev(a, b)
    } else if ft.is_block_device() {
        let (a, b) = dev();
        NodeKind::BlockDev(a, b)
    } else {
        NodeKind::Socket
    };
    Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        inode: (m.dev(), m.ino()),
        nlink: m.nlink(),
    }
}

/// A relative path for messages.
pub fn show(rel: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(rel))
}

/// Every difference between two trees: entries missing or extra, and for common entries
/// type, content, mode bits, owner, mtime (seconds and nanoseconds) and link count. Hard
/// links are checked as well: names sharing an inode in `a` must share one in `b`.
pub fn tree_differences(a: &Path, b: &Path) -> Vec<String> {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let mut diffs = Vec::new();
    for (rel, na) in &sa {
        let Some(nb) = sb.get(rel) else {
            diffs.push(format!("{} missing from the restored tree", show(rel)));
            continue;
        };
        let mut check = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{} {what}: {x} != {y}", show(rel)));
            }
        };
        check("kind", format!("{:?}", na.kind), format!("{:?}", nb.kind));
        check("mode", format!("{:o}", na.mode), format!("{:o}", nb.mode));
        check("uid", na.uid.to_string(), nb.uid.to_string());
        check("gid", na.gid.to_string(), nb.gid.to_string());
        check(
            "mtime",
            format!("{:?}", na.mtime),
            format!("{:?}", nb.mtime),
        );
        if na.kind != NodeKind::Dir {
            check("nlink", na.nlink.to_string(), nb.nlink.to_string());
        }
    }
    for rel in sb.keys().filter(|r| !sa.contains_key(*r)) {
        diffs.push(format!("{} is extra in the restored tree", show(rel)));
    }
    // Hard links: group a's non-directories by inode.
    let mut groups: BTreeMap<(u64, u64), Vec<&Vec<u8>>> = BTreeMap::new();
    for (rel, n) in &sa {
        if n.kind != NodeKind::Dir {
            groups.entry(n.inode).or_default().push(rel);
        }
    }
    for names in groups.values().filter(|g| g.len() > 1) {
        let inodes: Vec<Option<(u64, u64)>> =
            names.iter().map(|r| sb.get(*r).map(|n| n.inode)).collect();
        if inodes.iter().any(|i| *i != inodes[0]) {
            let shown: Vec<String> = names.iter().map(|r| show(r)).collect();
            diffs.push(format!(
                "hard links {} do not share an inode in the restored tree",
                shown.join(", ")
            ));
        }
    }
    diffs
}

#[track_caller]
pub fn assert_same_tree(original: &Path, restored: &Path) {
    let diffs = tree_differences(original, restored);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n  {}",
        diffs.len(),
        original.display(),
        restored.display(),
        diffs.join("\n  ")
    );
}

/// Every path (relative) below `root`, excluding the root itself.
pub fn relative_paths(root: &Path) -> Vec<Vec<u8>> {
    snapshot(root)
        .into_keys()
        .filter(|k| k.as_slice() != b".")
        .collect()
}

/// Names of leftover temporary restore files anywhere below `root`.
pub fn leftover_temporaries(root: &Path) -> Vec<String> {
    relative_paths(root)
        .into_iter()
        .filter(|r| {
            r.rsplit(|&b| b == b'/')
                .next()
                .is_some_and(|n| n.starts_with(b".coffer-restore-"))
        })
        .map(|r| show(&r))
        .collect()
}

pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

// ---------------------------------------------------------------------------------------
// GnuPG

/// A temporary GnuPG home. Its agent is stopped when dropped.
pub struct Gpg {
    pub home: TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("coffer-gpg-")
            .tempdir()
            .expect("temporary GNUPGHOME");
        Gpg { home }
    }

    /// `gpg --batch --no-tty --pinentry-mode loopback <args>` with only this home.
    pub fn cmd(&self) -> Command {
        let mut cmd = clean_command("gpg", self.home.path());
        cmd.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ]);
        cmd
    }

    /// Runs gpg and returns standard output as bytes; panics on failure.
    #[track_caller]
    pub fn run(&self, args: &[&OsStr], stdin: Option<Vec<u8>>) -> Vec<u8> {
        let mut cmd = self.cmd();
        cmd.args(args);
        if let Some(input) = stdin {
            cmd.write_stdin(input);
        }
        let what = format!("{cmd:?}");
        let out = cmd.output().expect("gpg starts");
        assert!(
            out.status.success(),
            "{what} failed: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Makes a key pair (`future-default`: Ed25519 + Cv25519), protected by `passphrase`
    /// unless it is empty.
    pub fn generate(&self, user_id: &str, passphrase: &str) {
        self.run(
            &[
                "--passphrase".as_ref(),
                passphrase.as_ref(),
                "--quick-gen-key".as_ref(),
                user_id.as_ref(),
                "future-default".as_ref(),
                "default".as_ref(),
                "never".as_ref(),
            ],
            None,
        );
    }

    /// Exports (public, secret) armored keys of everything in this home.
    pub fn export(&self, passphrase: &str) -> (Vec<u8>, Vec<u8>) {
        let public = self.run(&["--export".as_ref(), "--armor".as_ref()], None);
        let secret = self.run(
            &[
                "--passphrase".as_ref(),
                passphrase.as_ref(),
                "--export-secret-keys".as_ref(),
                "--armor".as_ref(),
            ],
            None,
        );
        assert!(public.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK"));
        assert!(secret.starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK"));
        (public, secret)
    }

    /// `gpg -d`: decrypts `message` with the secret keys in this home.
    #[track_caller]
    pub fn decrypt(&self, message: &[u8]) -> Vec<u8> {
        self.run(&["--quiet".as_ref(), "-d".as_ref()], Some(message.to_vec()))
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // Stop the agent this home started (only this home's).
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// The keys an object list (`<run>.refs`) names: its lines of 64 hex digits.
pub fn refs_keys(bytes: &[u8]) -> BTreeSet<String> {
    String::from_utf8(bytes.to_vec())
        .expect("object lists are text")
        .lines()
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

/// Asserts that each named file under `to` holds exactly the given bytes; `out` (the
/// restore that wrote them) and `what` go into the failure message.
#[track_caller]
pub fn assert_restored(out: &Out, to: &Path, files: &[(&str, &[u8])], what: &str) {
    for (name, bytes) in files {
        let got = std::fs::read(to.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
        assert!(got == *bytes, "{name} differs after restoring {what}");
    }
}
