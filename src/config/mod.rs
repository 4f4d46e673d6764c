//! The configuration file: TOML parsed into [`RawConfig`], then validated into [`Config`].
//!
//! Every problem is reported with the file and line and what to write instead. Relative
//! paths in the file are taken relative to the file's own directory.
//!
//! Here: the types (as written, and validated) and the public entry points; `validate.rs`
//! turns one into the other; `values.rs` parses sizes, durations and URLs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

mod validate;
mod values;

use validate::{absolute, Ctx};
pub(crate) use values::check_url;
pub use values::{parse_duration, parse_size, InvalidValue};
use values::{Dur, Size};

/// Default chunk sizes: 256 KiB / 1 MiB / 4 MiB.
pub const DEFAULT_CHUNKING: Chunking = Chunking {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: 4 * 1024 * 1024,
};

/// Default chunk sizes of a stream source (a command's output, standard input: a
/// database dump, typically): 16 KiB / 64 KiB / 256 KiB. A nightly dump that changed in
/// a thousand scattered rows then stores tens of MB instead of most of itself (measured
/// on a 1 GiB dump pair, scripts/gen-dump.py: 28 MB instead of 255 MB), for a metafile of
/// about 75 bytes per 64 KiB of dump.
pub const STREAM_CHUNKING: Chunking = Chunking {
    min: 16 * 1024,
    avg: 64 * 1024,
    max: 256 * 1024,
};

/// Default pack size: chunks are packed into objects of about this many bytes.
pub const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;

/// Default number of concurrent uploads per target.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// The file as written (see `config.example.toml` for every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    host: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    signing_key: Option<Spanned<String>>,
    signers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    source: BTreeMap<Spanned<String>, RawSource>,
    #[serde(default)]
    target: BTreeMap<Spanned<String>, RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    stdin: Option<Spanned<bool>>,
    stream_name: Option<Spanned<String>>,
    recipients: Spanned<Vec<Spanned<String>>>,
    targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    ignore: Vec<Spanned<String>>,
    #[serde(default)]
    one_file_system: bool,
    chunk_min: Option<Spanned<Size>>,
    chunk_avg: Option<Spanned<Size>>,
    chunk_max: Option<Spanned<Size>>,
    keep_last: Option<Spanned<u32>>,
    keep_hourly: Option<Spanned<u32>>,
    keep_daily: Option<Spanned<u32>>,
    keep_weekly: Option<Spanned<u32>>,
    keep_monthly: Option<Spanned<u32>>,
    keep_yearly: Option<Spanned<u32>>,
    keep_within: Option<Spanned<Dur>>,
    max_age: Option<Spanned<Dur>>,
    signers: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: Spanned<String>,
    pack_size: Option<Spanned<Size>>,
    upload_concurrency: Option<Spanned<usize>>,
    upload_rate_limit: Option<Spanned<Size>>,
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    profile: Option<String>,
    credentials_file: Option<Spanned<String>>,
    retries: Option<Spanned<usize>>,
    retry_timeout: Option<Spanned<Dur>>,
    dedup_max_age: Option<Spanned<Dur>>,
    max_run_time: Option<Spanned<Dur>>,
    create: Option<bool>,
    can_read: Option<bool>,
    storage_class: Option<Spanned<String>>,
    object_lock_retention: Option<Spanned<Dur>>,
    object_lock_mode: Option<Spanned<String>>,
    #[serde(default)]
    options: BTreeMap<Spanned<String>, String>,
}

/// FastCDC bounds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Minimum chunk size.
    pub min: u32,
    /// Average (target) chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

/// What a source backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// The tree at this absolute path (`path = "/etc"`).
    Tree(PathBuf),
    /// What a command writes to its standard output (`command = ["mysqldump", ...]`,
    /// run without a shell), stored as one file named `name`; a command that fails
    /// commits no run.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// The file's name in the run (`stream_name`).
        name: String,
    },
    /// Standard input (`stdin = true`; `coffer backup SOURCE --stdin`), stored as one
    /// file named `name`.
    Stdin {
        /// The file's name in the run (`stream_name`, or `--stdin-name`).
        name: String,
    },
}

impl Input {
    /// The tree's path, for a tree.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Input::Tree(p) => Some(p),
            _ => None,
        }
    }

    /// The name of the one file a stream source stores.
    pub fn stream_name(&self) -> Option<&str> {
        match self {
            Input::Tree(_) => None,
            Input::Command { name, .. } | Input::Stdin { name } => Some(name),
        }
    }
}

/// Whether `name` can be the one file of a stream source: one path component that is
/// not `.` or `..`, no NUL, at most 255 bytes.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// A validated source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceConfig {
    /// The section name, `[source.NAME]`.
    pub name: String,
    /// What is backed up: a tree, a command's output or standard input.
    pub input: Input,
    /// Certificate files of the recipients (absolute).
    pub recipients: Vec<PathBuf>,
    /// Names of the targets this source goes to.
    pub targets: Vec<String>,
    /// Ignore patterns (glob; see `config.example.toml`).
    pub ignore: Vec<String>,
    /// Stay on the file system `path` is on.
    pub one_file_system: bool,
    /// Chunk size bounds.
    pub chunking: Chunking,
    /// Retention rules `coffer prune` applies to this source's runs (empty: none set).
    pub retention: crate::retention::Retention,
    /// `coffer status` calls the source critical when its newest complete run is older.
    pub max_age: Option<std::time::Duration>,
    /// Certificates whose signatures this source's runs must carry (the source's own
    /// `signers`, else the file's): restore, verify, prune and status refuse or flag
    /// other runs. Empty: runs need no signature.
    pub signers: Vec<PathBuf>,
}

/// A validated target.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TargetConfig {
    /// The section name, `[target.NAME]`.
    pub name: String,
    /// The target's URL (no credentials in it).
    pub url: String,
    /// Pack size in bytes.
    pub pack_size: u64,
    /// Concurrent uploads.
    pub upload_concurrency: usize,
    /// Upload rate limit in bytes per second, if any.
    pub upload_rate_limit: Option<u64>,
    /// Object store endpoint (S3-compatible stores), overriding `AWS_ENDPOINT_URL`; for
    /// `gs://` the API's base URL, for `az://` the blob endpoint.
    pub endpoint: Option<String>,
    /// Region, overriding `AWS_REGION`.
    pub region: Option<String>,
    /// Allow plain HTTP (test servers), overriding `AWS_ALLOW_HTTP`.
    pub allow_http: Option<bool>,
    /// Profile in the AWS shared credentials file (else `AWS_PROFILE`, else "default").
    pub profile: Option<String>,
    /// AWS-style shared credentials file (else `AWS_SHARED_CREDENTIALS_FILE`, else
    /// `~/.aws/credentials`); read only when `AWS_ACCESS_KEY_ID` is not set.
    pub credentials_file: Option<PathBuf>,
    /// How many times a failed request is retried (with exponential backoff).
    pub retries: usize,
    /// Give up retrying a request after this long.
    pub retry_timeout: std::time::Duration,
    /// A chunk the local index lists is reused only if it was stored less than this long
    /// ago, or if its object belongs to the newest run of one of this host's sources.
    /// Part of gc's safety rule (docs/FORMAT.md, "Garbage collection").
    pub dedup_max_age: std::time::Duration,
    /// A backup that has run longer than this is not committed (it fails). Part of gc's
    /// safety rule: gc's grace period must be at least `dedup_max_age + max_run_time`.
    pub max_run_time: std::time::Duration,
    /// Create a `file://` target's folder if it is missing (otherwise a missing folder,
    /// such as an unmounted disk, fails the backup).
    pub create: bool,
    /// Whether the backup's credential may read (HEAD, GET, LIST) the target: backups
    /// then confirm that the packs they reuse still exist. Always so for `file://`
    /// targets; for others only when the config says so (a put-only credential cannot).
    pub can_read: bool,
    /// The S3 storage class packs are stored in (`storage_class`; metafiles, object lists
    /// and markers stay in STANDARD: monitoring and restore read them). `None`: the
    /// bucket's default.
    pub storage_class: Option<StorageClass>,
    /// S3 Object Lock: every object a backup stores is locked in this mode until this
    /// long after the backup started (the bucket must have Object Lock on). `None`: no
    /// lock headers.
    pub object_lock: Option<ObjectLock>,
    /// Further object_store options for the scheme (e.g. `aws_virtual_hosted_style_request`).
    /// Never logged.
    pub options: BTreeMap<String, String>,
}

/// S3 Object Lock for what backups store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// `COMPLIANCE` (nobody can shorten or remove it) or `GOVERNANCE` (a credential with
    /// s3:BypassGovernanceRetention can).
    pub compliance: bool,
    /// How long after the backup starts its objects stay locked.
    pub retention: std::time::Duration,
}

impl ObjectLock {
    /// The mode as S3 names it.
    pub fn mode(&self) -> &'static str {
        lock_mode(self.compliance)
    }
}

/// An Object Lock mode as S3 names it: COMPLIANCE, else GOVERNANCE.
pub(crate) fn lock_mode(compliance: bool) -> &'static str {
    if compliance {
        "COMPLIANCE"
    } else {
        "GOVERNANCE"
    }
}

/// An S3 storage class for packs, with what it means for restore and gc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    /// STANDARD
    Standard,
    /// STANDARD_IA: 30 days minimum.
    StandardIa,
    /// ONEZONE_IA: 30 days minimum.
    OnezoneIa,
    /// INTELLIGENT_TIERING
    IntelligentTiering,
    /// GLACIER_IR (Glacier Instant Retrieval): 90 days minimum.
    GlacierIr,
    /// GLACIER (Flexible Retrieval): 90 days minimum, thawed before a read.
    Glacier,
    /// DEEP_ARCHIVE: 180 days minimum, thawed before a read (up to 48 hours).
    DeepArchive,
}

impl StorageClass {
    /// Every class, as S3 names it.
    pub const ALL: [(&'static str, StorageClass); 7] = [
        ("STANDARD", StorageClass::Standard),
        ("STANDARD_IA", StorageClass::StandardIa),
        ("ONEZONE_IA", StorageClass::OnezoneIa),
        ("INTELLIGENT_TIERING", StorageClass::IntelligentTiering),
        ("GLACIER_IR", StorageClass::GlacierIr),
        ("GLACIER", StorageClass::Glacier),
        ("DEEP_ARCHIVE", StorageClass::DeepArchive),
    ];

    /// The name S3 uses (the `x-amz-storage-class` header).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("STANDARD", |(n, _)| n)
    }

    /// How long S3 bills an object of this class at least: deleting one younger costs
    /// the rest of it anyway.
    pub fn minimum_days(self) -> u64 {
        match self {
            StorageClass::Standard | StorageClass::IntelligentTiering => 0,
            StorageClass::StandardIa | StorageClass::OnezoneIa => 30,
            StorageClass::GlacierIr | StorageClass::Glacier => 90,
            StorageClass::DeepArchive => 180,
        }
    }

    /// Whether an object must be thawed (restore-object) before it can be read.
    pub fn is_frozen(self) -> bool {
        matches!(self, StorageClass::Glacier | StorageClass::DeepArchive)
    }
}

/// Default `dedup_max_age`: a week.
pub const DEFAULT_DEDUP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
/// Default `max_run_time`: a week.
pub const DEFAULT_MAX_RUN_TIME: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Default number of retries of a failed request.
pub const DEFAULT_RETRIES: usize = 10;
/// Default time after which a failing request is not retried any more.
pub const DEFAULT_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

impl TargetConfig {
    /// A target given only by URL (e.g. `restore --target file:///mnt/usb/coffer`).
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a URL coffer cannot use (its scheme, or no bucket).
    pub fn from_url(url: &str) -> Result<Self> {
        check_url(url)?;
        Ok(Self::with_defaults(url))
    }

    /// A target that keeps everything in this process's memory and forgets it when the
    /// backup ends: `coffer bench` measures a whole backup with it. Its `memory://` URL is
    /// refused in config files and by [`TargetConfig::from_url`]: only code reaches it.
    pub(crate) fn in_memory() -> Self {
        let mut t = Self::with_defaults(MEMORY_URL);
        t.name = "memory".into();
        t
    }

    fn with_defaults(url: &str) -> Self {
        TargetConfig {
            name: url.to_string(),
            url: url.to_string(),
            pack_size: DEFAULT_PACK_SIZE,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            upload_rate_limit: None,
            endpoint: None,
            region: None,
            allow_http: None,
            profile: None,
            credentials_file: None,
            retries: DEFAULT_RETRIES,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
            dedup_max_age: DEFAULT_DEDUP_MAX_AGE,
            max_run_time: DEFAULT_MAX_RUN_TIME,
            create: false,
            can_read: url.starts_with("file:") || url == MEMORY_URL,
            storage_class: None,
            object_lock: None,
            options: BTreeMap::new(),
        }
    }
}

/// The URL of [`TargetConfig::in_memory`]; never accepted from a user.
pub(crate) const MEMORY_URL: &str = "memory://coffer-bench";

/// The validated configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where the file was read from.
    pub file: PathBuf,
    /// Host name recorded in runs.
    pub host: String,
    /// Local state (SQLite index).
    pub state_dir: PathBuf,
    /// The host's signing key (it signs every run), if any.
    pub signing_key: Option<PathBuf>,
    /// The file-wide `signers` (each source's [`SourceConfig::signers`] already holds
    /// what applies to it).
    pub signers: Vec<PathBuf>,
    /// Sources by name, in name order.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Targets by name.
    pub targets: BTreeMap<String, TargetConfig>,
}

impl Config {
    /// Parses and validates configuration text; `file` is used for messages and to
    /// resolve relative paths.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `file`, the line and what to write instead.
    pub fn parse(text: &str, file: &Path) -> Result<Config> {
        let file = absolute(file);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                text[..s.start.min(text.len())]
                    .bytes()
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1
            });
            let msg = e.message().replace('`', "");
            match line {
                Some(l) => Error::Config(format!("{}:{l}: {msg}", file.display())),
                None => Error::Config(format!("{}: {msg}", file.display())),
            }
        })?;
        let ctx = Ctx { file: &file, text };
        Self::validate(raw, &ctx)
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: the file cannot be read, or is invalid (with the line).
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read config {}: {e} (give one with -c FILE or COFFER_CONFIG; \
                 config.example.toml documents every key)",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    /// The named sources, or all of them when `names` is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] naming a source the config does not have.
    pub fn select_sources(&self, names: &[String]) -> Result<Vec<&SourceConfig>> {
        if names.is_empty() {
            if self.sources.is_empty() {
                return Err(Error::Config(format!(
                    "{}: no [source.NAME] section",
                    self.file.display()
                )));
            }
            return Ok(self.sources.values().collect());
        }
        names
            .iter()
            .map(|n| {
                self.sources.get(n).ok_or_else(|| {
                    Error::Usage(format!(
                        "no source {n:?} in {} (defined: {})",
                        self.file.display(),
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })
            })
            .collect()
    }

    /// A target by name, or by URL (anything containing "://").
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] when no target has that name or URL.
    pub fn target(&self, name: &str) -> Result<TargetConfig> {
        if name.contains("://") {
            return TargetConfig::from_url(name);
        }
        self.targets.get(name).cloned().ok_or_else(|| {
            Error::Usage(format!(
                "no target {name:?} in {} (defined: {})",
                self.file.display(),
                self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home() -> Result<PathBuf> {
    env_path("HOME")
        .ok_or_else(|| Error::Config("HOME is not set; set state_dir in the config or HOME".into()))
}

/// `$XDG_STATE_HOME/coffer`, else `~/.local/state/coffer`.
pub fn default_state_dir() -> Result<PathBuf> {
    match env_path("XDG_STATE_HOME") {
        Some(p) => Ok(p.join("coffer")),
        None => Ok(home()?.join(".local/state/coffer")),
    }
}

/// The config file to use: `explicit`, else `COFFER_CONFIG`, else
/// `$XDG_CONFIG_HOME/coffer/config.toml` (else `~/.config/coffer/config.toml`).
pub fn config_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("COFFER_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match env_path("XDG_CONFIG_HOME") {
        Some(p) => Ok(p.join("coffer/config.toml")),
        None => Ok(home()?.join(".config/coffer/config.toml")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[source.home]
path = "/home/alice"
recipients = ["/etc/coffer/admin.pub.asc"]
targets = ["usb"]

[target.usb]
url = "file:///mnt/usb/coffer"
"#;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(t, Path::new("/etc/coffer/coffer.toml"))
    }

    #[test]
    fn smallest_config() {
        let c = parse(MIN).unwrap();
        let s = &c.sources["home"];
        assert_eq!(s.input, Input::Tree("/home/alice".into()));
        assert_eq!(s.targets, vec!["usb"]);
        assert_eq!(s.chunking, DEFAULT_CHUNKING);
        assert_eq!(c.targets["usb"].url, "file:///mnt/usb/coffer");
    }

    #[test]
    fn unknown_key_names_line() {
        let t = MIN.replace("targets = [\"usb\"]", "targets = [\"usb\"]\ncompresion = 3");
        let e = parse(&t).unwrap_err().to_string();
        assert!(e.contains("coffer.toml:6"), "{e}");
        assert!(e.contains("compresion"), "{e}");
        assert!(e.contains("one_file_system"), "lists valid keys: {e}");
    }

    #[test]
    fn undefined_target_and_bad_values() {
        let e = parse(&MIN.replace("[\"usb\"]", "[\"usbb\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":5:") && e.contains("usbb"), "{e}");
        let e = parse(&MIN.replace("file:///mnt", "ftp://mnt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":8:") && e.contains("ftp"), "{e}");
        let t = MIN.replace(
            "targets = [\"usb\"]",
            "targets = [\"usb\"]\nchunk_min = \"8MiB\"",
        );
        let e = parse(&t).unwrap_err().to_string();
        assert!(e.contains(":6:") && e.contains("chunk_min"), "{e}");
        let t = MIN.replace(
            "targets = [\"usb\"]",
            "targets = [\"usb\"]\nchunk_avg = \"1XB\"",
        );
        assert!(parse(&t).unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn command_and_stdin_sources_and_their_mistakes() {
        let with = |lines: &str| MIN.replace("path = \"/home/alice\"", lines);
        let c = parse(&with(
            "command = [\"mysqldump\", \"--single-transaction\", \"shop\"]\nstream_name = \"shop.sql\"",
        ))
        .unwrap();
        assert_eq!(
            c.sources["home"].input,
            Input::Command {
                argv: vec![
                    "mysqldump".into(),
                    "--single-transaction".into(),
                    "shop".into()
                ],
                name: "shop.sql".into()
            }
        );
        let c = parse(&with("stdin = true")).unwrap();
        assert_eq!(
            c.sources["home"].input,
            Input::Stdin {
                name: "home".into()
            }
        );
        let refused = |lines: &str, needle: &str| {
            let e = parse(&with(lines)).unwrap_err().to_string();
            assert!(
                e.contains("coffer.toml:") && e.contains(needle),
                "{lines}: {e}"
            );
        };
        refused("path = \"/a\"\ncommand = [\"x\"]", "exactly one of path");
        refused("stdin = false", "exactly one of path");
        refused("command = []", "command must name a program");
        refused("command = [\"\"]", "command must name a program");
        refused("command = [\"x\"]\nstream_name = \"a/b\"", "one file name");
        refused("command = [\"x\"]\nstream_name = \"..\"", "one file name");
        refused("path = \"/a\"\nstream_name = \"x\"", "remove it");
        refused("command = [\"x\"]\nignore = [\"*.tmp\"]", "ignore applies");
        refused(
            "stdin = true\none_file_system = true",
            "one_file_system applies",
        );
        let two = with("stdin = true")
            .replace("targets = [\"usb\"]", "targets = [\"usb\", \"usb2\"]")
            + "\n[target.usb2]\nurl = \"file:///mnt/usb2\"\n";
        // Standard input is read once and goes to every target of the source.
        assert_eq!(parse(&two).unwrap().sources["home"].targets.len(), 2);
    }

    #[test]
    fn chunk_sizes_default_by_input_and_follow_chunk_avg_alone() {
        let with = |lines: &str| {
            let t = MIN.replace(
                "targets = [\"usb\"]",
                &format!("targets = [\"usb\"]\n{lines}"),
            );
            parse(&t).map(|c| c.sources["home"].chunking)
        };
        let c = |min, avg, max| Chunking { min, avg, max };
        assert_eq!(with("").unwrap(), DEFAULT_CHUNKING);
        let stream = MIN.replace("path = \"/home/alice\"", "command = [\"pg_dump\"]");
        assert_eq!(
            parse(&stream).unwrap().sources["home"].chunking,
            STREAM_CHUNKING
        );
        // chunk_avg alone: a quarter and four times it.
        assert_eq!(
            with("chunk_avg = \"64KiB\"").unwrap(),
            c(16 << 10, 64 << 10, 256 << 10)
        );
        // ... within FastCDC's limits.
        assert_eq!(with("chunk_avg = 256").unwrap(), c(64, 256, 1024));
        assert_eq!(
            with("chunk_avg = \"4MiB\"").unwrap(),
            c(1 << 20, 4 << 20, 16 << 20)
        );
        // A bound given stays as given.
        assert_eq!(
            with("chunk_avg = \"64KiB\"\nchunk_max = \"1MiB\"").unwrap(),
            c(16 << 10, 64 << 10, 1 << 20)
        );
        assert_eq!(
            with("chunk_max = \"8MiB\"").unwrap(),
            c(256 << 10, 1 << 20, 8 << 20)
        );
        let e = with("chunk_avg = \"64KiB\"\nchunk_min = \"64KiB\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunk_min < chunk_avg") && e.contains("a quarter"),
            "{e}"
        );
    }

    #[test]
    fn retention_rules_and_gc_bounds() {
        let c = parse(MIN).unwrap();
        assert!(c.sources["home"].retention.is_empty());
        assert_eq!(c.targets["usb"].dedup_max_age, DEFAULT_DEDUP_MAX_AGE);
        assert_eq!(c.targets["usb"].max_run_time, DEFAULT_MAX_RUN_TIME);
        let t = MIN
            .replace(
                "targets = [\"usb\"]",
                "targets = [\"usb\"]\nkeep_last = 3\nkeep_weekly = 4\nkeep_within = \"2d\"",
            )
            .replace(
                "url = \"file:///mnt/usb/coffer\"",
                "url = \"file:///mnt/usb/coffer\"\ndedup_max_age = \"0s\"\nmax_run_time = 90",
            );
        let c = parse(&t).unwrap();
        let r = c.sources["home"].retention;
        assert_eq!((r.last, r.weekly, r.daily), (Some(3), Some(4), None));
        assert_eq!(r.within, Some(std::time::Duration::from_secs(172_800)));
        assert_eq!(c.targets["usb"].dedup_max_age, std::time::Duration::ZERO);
        assert_eq!(c.targets["usb"].max_run_time.as_secs(), 90);
        let e = parse(&MIN.replace("targets = [\"usb\"]", "targets = [\"usb\"]\nkeep_daily = 0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":6:") && e.contains("keep_daily must be at least 1"),
            "{e}"
        );
        let e = parse(&MIN.replace(
            "url = \"file:///mnt/usb/coffer\"",
            "url = \"file:///mnt/usb/coffer\"\nmax_run_time = \"0s\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(":9:") && e.contains("max_run_time"), "{e}");
    }

    /// The config's keep_* keys and prune's --keep-* flags are the same rules: for every
    /// flag clap derives from `Retention`, the key of the same name sets the same rule.
    #[test]
    fn every_prune_flag_is_a_config_key_for_the_same_rule() {
        use clap::{Args, FromArgMatches};
        let cmd = crate::retention::Retention::augment_args(clap::Command::new("prune"));
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert_eq!(flags.len(), 7, "{flags:?}");
        for flag in flags {
            let (value, toml) = if flag == "keep-within" {
                ("3d", "\"3d\"")
            } else {
                ("2", "2")
            };
            let from_cli = crate::retention::Retention::from_arg_matches(
                &cmd.clone()
                    .try_get_matches_from(["prune", &format!("--{flag}"), value])
                    .unwrap(),
            )
            .unwrap();
            let key = flag.replace('-', "_");
            let text = MIN.replace(
                "targets = [\"usb\"]",
                &format!("targets = [\"usb\"]\n{key} = {toml}"),
            );
            let c = parse(&text).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(c.sources["home"].retention, from_cli, "{key} and --{flag}");
            assert!(!from_cli.is_empty());
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let t = MIN.replace("/etc/coffer/admin.pub.asc", "keys/admin.pub.asc");
        let c = parse(&t).unwrap();
        assert_eq!(
            c.sources["home"].recipients[0],
            Path::new("/etc/coffer/keys/admin.pub.asc")
        );
    }

    #[test]
    fn object_store_targets() {
        let t = MIN.replace(
            "url = \"file:///mnt/usb/coffer\"",
            "url = \"s3://bucket/host1\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             allow_http = true\nretries = 2\nretry_timeout = \"30s\"\n\
             upload_rate_limit = \"1MiB\"",
        );
        let c = parse(&t).unwrap();
        let u = &c.targets["usb"];
        assert_eq!(u.url, "s3://bucket/host1");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.retries, 2);
        assert_eq!(u.retry_timeout, std::time::Duration::from_secs(30));
        assert_eq!(u.upload_rate_limit, Some(1 << 20));
        // The options table is checked against the scheme's keys, with the line.
        let with = |url: &str, extra: &str| {
            MIN.replace(
                "url = \"file:///mnt/usb/coffer\"",
                &format!("url = \"{url}\"\n{extra}"),
            )
        };
        let ok = parse(&with(
            "s3://bucket/h",
            "options = { aws_virtual_hosted_style_request = \"true\" }",
        ))
        .unwrap();
        assert_eq!(
            ok.targets["usb"].options["aws_virtual_hosted_style_request"],
            "true"
        );
        let az = "options = { azure_storage_use_emulator = \"true\" }";
        parse(&with("az://container/h", az)).unwrap();
        for (url, extra, line) in [
            (
                "s3://bucket/h",
                "retries = 1\n[target.usb.options]\naws_no_such = \"1\"",
                ":11:",
            ),
            ("s3://bucket/h", az, ":9:"), // an Azure key on an S3 target
            ("file:///mnt/usb/coffer", az, ":9:"),
        ] {
            let e = parse(&with(url, extra)).unwrap_err().to_string();
            assert!(e.contains(line) && e.contains("unknown option"), "{e}");
        }
        let e = parse(&with("s3://bucket/h", "retry_timeout = \"0s\"")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains(":9:") && e.contains("retry_timeout"), "{e}");
        // Packs' storage class: S3 only, one of S3's names, with the line.
        let cold = parse(&with("s3://bucket/h", "storage_class = \"DEEP_ARCHIVE\"")).unwrap();
        let class = cold.targets["usb"].storage_class.unwrap();
        assert_eq!((class.name(), class.minimum_days()), ("DEEP_ARCHIVE", 180));
        assert!(class.is_frozen());
        for (url, class, says) in [
            ("s3://bucket/h", "ARCTIC", "unknown storage_class"),
            ("file:///mnt/usb/coffer", "GLACIER", "applies to s3://"),
            ("gs://bucket/h", "GLACIER", "applies to s3://"),
        ] {
            let e = parse(&with(url, &format!("storage_class = \"{class}\"")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(":9:") && e.contains(says), "{e}");
        }
        // Object Lock: S3 only, a day at least, a known mode; GOVERNANCE by default.
        let locked = parse(&with("s3://bucket/h", "object_lock_retention = \"30d\"")).unwrap();
        let lock = locked.targets["usb"].object_lock.unwrap();
        assert_eq!(lock.mode(), "GOVERNANCE");
        assert_eq!(lock.retention.as_secs(), 30 * 86_400);
        for (url, extra, says) in [
            (
                "s3://bucket/h",
                "object_lock_retention = \"1h\"",
                "at least 1d",
            ),
            (
                "file:///mnt/usb/coffer",
                "object_lock_retention = \"2d\"",
                "s3://",
            ),
            (
                "s3://bucket/h",
                "object_lock_retention = \"2d\"\nobject_lock_mode = \"STRICT\"",
                "unknown object_lock_mode",
            ),
            (
                "s3://bucket/h",
                "object_lock_mode = \"COMPLIANCE\"",
                "needs object_lock_retention",
            ),
        ] {
            let e = parse(&with(url, extra)).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = parse(&MIN.replace("file:///mnt/usb/coffer", "s3:///x")).unwrap_err();
        assert!(e.to_string().contains("name the bucket"), "{e}");
        // FastCDC's own limits: larger sizes would make it panic.
        for (key, value) in [
            ("chunk_max", "32MiB"),
            ("chunk_avg", "8MiB"),
            ("chunk_min", "2MiB"),
        ] {
            let t = MIN.replace(
                "targets = [\"usb\"]",
                &format!("targets = [\"usb\"]\n{key} = \"{value}\""),
            );
            let e = parse(&t).unwrap_err().to_string();
            assert!(e.contains("FastCDC's limits"), "{key}: {e}");
        }
        let e = parse(&MIN.replace("file:///mnt/usb/coffer", "s3:///x")).unwrap_err();
        assert!(e.to_string().contains("name the bucket"), "{e}");
    }

    #[test]
    fn memory_targets_are_for_code_only() {
        let e = parse(&MIN.replace("file:///mnt/usb/coffer", MEMORY_URL)).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        assert!(TargetConfig::from_url(MEMORY_URL).is_err());
        assert_eq!(TargetConfig::in_memory().url, MEMORY_URL);
    }

    #[test]
    fn negative_and_fractional_numbers_in_the_config_say_what_is_wrong() {
        let text = "[target.t]\nurl = \"file:///x\"\npack_size = -5\n";
        let e = Config::parse(text, Path::new("/etc/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be positive") && e.contains(":3:"), "{e}");
        let text = "[target.t]\nurl = \"file:///x\"\npack_size = 1.5\n";
        let e = Config::parse(text, Path::new("/etc/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number"), "{e}");
    }
}
