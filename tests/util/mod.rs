//! Helpers for the end-to-end tests: a [`Fixture`] (key, config, source, target in one
//! temporary directory), running `coffer` with a clean environment, reading whole trees
//! back for comparison, and a throwaway GnuPG home.

#![allow(dead_code)]

pub mod forge;
mod gpg;
pub mod target;
mod tree;

// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use gpg::*;
#[allow(unused_imports)]
pub use tree::*;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
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

    /// Restore of run `id` with the fixture's own secret key; `extra` are more flags.
    pub fn restore_run(&self, id: &str, to: &Path, extra: &[&str]) -> Out {
        let mut args: Vec<&OsStr> = vec!["--run".as_ref(), id.as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        self.restore(to, &args)
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
pub fn nested_tree(src: &Path) {
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost\n");
    write(&src.join("etc/app/config.toml"), b"[a]\nb = 1\n");
    write(&src.join("data.bin"), &pseudo_random(1, 1_500_000));
    write(&src.join("empty"), b"");
    std::os::unix::fs::symlink("etc/hosts", src.join("hosts-link")).unwrap();
    set_past_mtimes(src, 1_600_000_000);
}

/// A source with a few files, a symlink, a fifo and a hard link pair; mtimes in the past.
pub fn small_tree(src: &Path) {
    write(&src.join("file1.txt"), b"first file\n");
    write(&src.join("sub/file2.txt"), b"second file\n");
    write(&src.join("sub/empty"), b"");
    write(&src.join("pair_a"), b"hard linked\n");
    std::fs::hard_link(src.join("pair_a"), src.join("sub/pair_b")).unwrap();
    std::os::unix::fs::symlink("file1.txt", src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    set_past_mtimes(src, 1_600_000_000);
}

pub fn as_u64(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

pub fn as_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v:#}"))
}

/// 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
        + 1
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A TOML basic string holding `p`.
pub fn toml_str(p: &Path) -> String {
    let s = p.to_str().expect("fixture paths are UTF-8");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
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
