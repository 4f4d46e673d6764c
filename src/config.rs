//! The configuration file: TOML parsed into [`RawConfig`], then validated into [`Config`].
//!
//! Every problem is reported with the file and line and what to write instead. Relative
//! paths in the file are taken relative to the file's own directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

/// Default chunk sizes: 256 KiB / 1 MiB / 4 MiB.
pub const DEFAULT_CHUNKING: Chunking = Chunking {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: 4 * 1024 * 1024,
};

/// Default pack size: chunks are packed into objects of about this many bytes.
pub const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;

/// Default number of concurrent uploads per target.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// A value in a config file or on the command line that cannot be used; the message says
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        InvalidValue(message.into())
    }
}

impl From<InvalidValue> for Error {
    fn from(e: InvalidValue) -> Self {
        Error::Usage(e.0)
    }
}

/// A byte size: an integer or a string such as "256KiB", "4MiB", "1M".
#[derive(Debug, Clone, Copy)]
struct Size(u64);

/// Deserializes a value written either as an integer or as a string for `parse`.
fn int_or_text<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    from_int: impl FnOnce(u64) -> T,
    parse: impl FnOnce(&str) -> std::result::Result<T, InvalidValue>,
) -> std::result::Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Negative(i64),
        Float(f64),
        Text(String),
    }
    match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a number or a string such as \"16MiB\" or \"7d\"")
    })? {
        Raw::Int(n) => Ok(from_int(n)),
        Raw::Negative(n) => Err(serde::de::Error::custom(format!("{n}: must be positive"))),
        Raw::Float(x) => Err(serde::de::Error::custom(format!(
            "{x}: must be a whole number, or a string with a unit (\"1.5MiB\")"
        ))),
        Raw::Text(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        int_or_text(d, Size, |s| parse_size(s).map(Size))
    }
}

/// Splits "1.5MiB" into the number 1.5 (as thousandths: 1500) and the unit "MiB".
fn number_and_unit(s: &str, what: &str) -> std::result::Result<(u128, u128, String), InvalidValue> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(InvalidValue(format!("{s:?}: a {what} must be positive")));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let bad = || InvalidValue(format!("{s:?} is not a {what}"));
    if whole.is_empty() || frac.len() > 9 || (num.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    Ok((whole * scale + frac, scale, unit.trim().to_string()))
}

/// Parses a duration: "90s", "15m", "2h", "7d", "2w", "6M" (months of 30 days), "1y"
/// (365 days), "1.5h", or a number of seconds. Units are as duplicity writes them too:
/// "3D", "2W", "1Y"; "m" is minutes and "M" months.
///
/// # Errors
///
/// [`InvalidValue`] saying what is wrong with `s` (the number, the unit, its sign).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, InvalidValue> {
    let hint = "write e.g. \"30s\", \"15m\", \"2h\", \"7d\", \"2w\", \"6M\" or \"1y\"";
    let (n, scale, unit) =
        number_and_unit(s, "duration").map_err(|e| InvalidValue(format!("{e}; {hint}")))?;
    let mult: u128 = match unit.as_str() {
        "" | "s" | "S" | "sec" => 1,
        "m" | "min" => 60,
        "h" | "H" => 3600,
        "d" | "D" => 86_400,
        "w" | "W" => 7 * 86_400,
        "M" => 30 * 86_400,
        "y" | "Y" => 365 * 86_400,
        _ => {
            return Err(InvalidValue(format!(
                "{s:?}: unknown unit; use s, m, h, d, w, M (months) or y"
            )))
        }
    };
    let secs = n * mult / scale;
    u64::try_from(secs)
        .map(std::time::Duration::from_secs)
        .map_err(|_| InvalidValue(format!("{s:?} is too long")))
}

/// A duration in the config: a string such as "30s" or an integer number of seconds.
#[derive(Debug, Clone, Copy)]
struct Dur(std::time::Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        int_or_text(
            d,
            |n| Dur(std::time::Duration::from_secs(n)),
            |s| parse_duration(s).map(Dur),
        )
    }
}

/// Parses a size: "123", "64KiB", "4 MiB", "1.5MiB", "1M", "2G" (K, M, G, T, KiB, MiB,
/// GiB, TiB: binary multiples), or with SI units "5MB" (10^6, as SI has it).
///
/// # Errors
///
/// [`InvalidValue`] saying what is wrong with `s` (the number, the unit, its sign).
pub fn parse_size(s: &str) -> std::result::Result<u64, InvalidValue> {
    let hint = "write e.g. 1048576, \"1MiB\", \"256KiB\" or \"1.5GiB\"";
    let (n, scale, unit) =
        number_and_unit(s, "size").map_err(|e| InvalidValue(format!("{e}; {hint}")))?;
    let mult: u128 = match unit.as_str() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(InvalidValue(format!(
                "{s:?}: unknown unit; use B, KiB, MiB, GiB, TiB (binary) or kB, MB, GB, TB \
                 (decimal)"
            )))
        }
    };
    u64::try_from(n * mult / scale).map_err(|_| InvalidValue(format!("{s:?} is too large")))
}

/// The file as written (see `config.example.toml` for every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    host: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    source: BTreeMap<Spanned<String>, RawSource>,
    #[serde(default)]
    target: BTreeMap<Spanned<String>, RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Spanned<String>,
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

/// A validated source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceConfig {
    /// The section name, `[source.NAME]`.
    pub name: String,
    /// Absolute path of the tree to back up.
    pub path: PathBuf,
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
    /// Object store endpoint (S3-compatible stores), overriding `AWS_ENDPOINT_URL`.
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
    /// Further object_store options for the scheme (e.g. `aws_virtual_hosted_style_request`).
    /// Never logged.
    pub options: BTreeMap<String, String>,
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
    /// Sources by name, in name order.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Targets by name.
    pub targets: BTreeMap<String, TargetConfig>,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }
    fn err<T>(&self, span: std::ops::Range<usize>, msg: impl std::fmt::Display) -> Result<T> {
        Err(Error::Config(format!(
            "{}:{}: {msg}",
            self.file.display(),
            self.line(span.start)
        )))
    }
    fn path(&self, s: &Spanned<String>) -> Result<PathBuf> {
        let p = Path::new(s.get_ref());
        if s.get_ref().is_empty() {
            return self.err(s.span(), "empty path");
        }
        if p.is_absolute() {
            Ok(p.to_path_buf())
        } else {
            let base = self.file.parent().unwrap_or(Path::new("."));
            Ok(absolute(&base.join(p)))
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// URL schemes coffer accepts.
pub const SCHEMES: &[&str] = &["file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

fn check_url(url: &str) -> std::result::Result<(), InvalidValue> {
    match url.split_once("://") {
        Some(("file", rest)) if rest.starts_with('/') => Ok(()),
        Some(("file", _)) => Err(InvalidValue(format!(
            "{url:?}: a file URL needs an absolute path, e.g. file:///mnt/usb/coffer"
        ))),
        Some((scheme, rest)) if SCHEMES.contains(&scheme) => {
            if rest.is_empty() || rest.starts_with('/') {
                Err(InvalidValue(format!(
                    "{url:?}: name the bucket or container, e.g. {scheme}://backups/prefix"
                )))
            } else {
                Ok(())
            }
        }
        Some((scheme, _)) => Err(InvalidValue(format!(
            "{url:?}: unsupported scheme {scheme:?}; use file:///PATH, s3://BUCKET/PREFIX, \
             gs://BUCKET/PREFIX or az://CONTAINER/PREFIX"
        ))),
        None => Err(InvalidValue(format!(
            "{url:?} is not a URL; write e.g. url = \"file:///mnt/usb/coffer\""
        ))),
    }
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
    /// The file cannot be read ([`Error::Io`]) or is invalid ([`Error::Config`]).
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

    fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config> {
        let host = match raw.host {
            Some(h) if h.get_ref().trim().is_empty() => {
                return ctx.err(
                    h.span(),
                    "host is empty; remove it to use the system's name",
                )
            }
            Some(h) => h.into_inner(),
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_string()),
        };
        let state_dir = match &raw.state_dir {
            Some(s) => ctx.path(s)?,
            None => default_state_dir()?,
        };
        let mut targets = BTreeMap::new();
        for (name, t) in raw.target {
            if !valid_name(name.get_ref()) {
                return ctx.err(name.span(), bad_name("target", name.get_ref()));
            }
            if let Err(msg) = check_url(t.url.get_ref()) {
                return ctx.err(t.url.span(), msg);
            }
            let pack_size = match t.pack_size {
                Some(s) if s.get_ref().0 < 1 << 20 || s.get_ref().0 > 1 << 30 => {
                    return ctx.err(s.span(), "pack_size must be between \"1MiB\" and \"1GiB\"")
                }
                Some(s) => s.get_ref().0,
                None => DEFAULT_PACK_SIZE,
            };
            let upload_concurrency = match t.upload_concurrency {
                Some(c) if *c.get_ref() == 0 || *c.get_ref() > 256 => {
                    return ctx.err(c.span(), "upload_concurrency must be between 1 and 256")
                }
                Some(c) => c.into_inner(),
                None => DEFAULT_UPLOAD_CONCURRENCY,
            };
            let upload_rate_limit = match t.upload_rate_limit {
                Some(r) if r.get_ref().0 < 1024 => {
                    return ctx.err(r.span(), "upload_rate_limit must be at least \"1KiB\"")
                }
                r => r.map(|r| r.get_ref().0),
            };
            let retries = match t.retries {
                Some(r) if *r.get_ref() > 100 => {
                    return ctx.err(r.span(), "retries must be between 0 and 100")
                }
                r => r.map_or(DEFAULT_RETRIES, |r| r.into_inner()),
            };
            let max_run_time = match &t.max_run_time {
                Some(d) if d.get_ref().0.is_zero() => {
                    return ctx.err(d.span(), "max_run_time must be more than 0s")
                }
                Some(d) if d.get_ref().0 > crate::format::refs::MAX_MAX_RUN_TIME => {
                    return ctx.err(d.span(), "max_run_time must be at most \"92d\"")
                }
                d => d.as_ref().map_or(DEFAULT_MAX_RUN_TIME, |d| d.get_ref().0),
            };
            let dedup_max_age = match &t.dedup_max_age {
                Some(d) if d.get_ref().0 > crate::format::refs::MAX_DEDUP_MAX_AGE => {
                    return ctx.err(d.span(), "dedup_max_age must be at most \"366d\"")
                }
                d => d.as_ref().map_or(DEFAULT_DEDUP_MAX_AGE, |d| d.get_ref().0),
            };
            let retry_timeout = match &t.retry_timeout {
                Some(d) if d.get_ref().0.is_zero() => {
                    return ctx.err(d.span(), "retry_timeout must be more than 0s")
                }
                d => d.as_ref().map_or(DEFAULT_RETRY_TIMEOUT, |d| d.get_ref().0),
            };
            let scheme = t.url.get_ref().split_once(':').map_or("", |(s, _)| s);
            for key in t.options.keys() {
                if !crate::store::option_is_known(scheme, key.get_ref()) {
                    return ctx.err(
                        key.span(),
                        format!(
                            "unknown option {:?} for a {scheme}:// target (the options \
                             table takes object_store's configuration keys for the \
                             scheme, e.g. aws_virtual_hosted_style_request for s3://; \
                             a folder takes none)",
                            key.get_ref()
                        ),
                    );
                }
            }
            let credentials_file = t
                .credentials_file
                .as_ref()
                .map(|f| ctx.path(f))
                .transpose()?;
            let is_file = t.url.get_ref().starts_with("file:");
            if is_file && t.can_read == Some(false) {
                return ctx.err(
                    t.url.span(),
                    "can_read = false makes no sense for a file:// target (the backup can always \
                     read a folder)",
                );
            }
            let name = name.into_inner();
            targets.insert(
                name.clone(),
                TargetConfig {
                    name,
                    url: t.url.into_inner(),
                    pack_size,
                    upload_concurrency,
                    upload_rate_limit,
                    endpoint: t.endpoint,
                    region: t.region,
                    allow_http: t.allow_http,
                    profile: t.profile,
                    credentials_file,
                    retries,
                    retry_timeout,
                    dedup_max_age,
                    max_run_time,
                    create: t.create.unwrap_or(false),
                    can_read: t.can_read.unwrap_or(false) || is_file,
                    options: t
                        .options
                        .into_iter()
                        .map(|(k, v)| (k.into_inner(), v))
                        .collect(),
                },
            );
        }
        // Two names for one folder would share objects but not state: refuse them.
        let mut folders: BTreeMap<PathBuf, &str> = BTreeMap::new();
        for (name, t) in &targets {
            let Some(dir) = url::Url::parse(&t.url)
                .ok()
                .filter(|u| u.scheme() == "file")
                .and_then(|u| u.to_file_path().ok())
            else {
                continue;
            };
            let dir: PathBuf = dir.components().collect();
            if let Some(other) = folders.insert(dir.clone(), name) {
                return Err(Error::Config(format!(
                    "{}: targets {other:?} and {name:?} are the same folder {}; keep one",
                    ctx.file.display(),
                    crate::text::path(&dir)
                )));
            }
        }
        let mut sources = BTreeMap::new();
        for (name, s) in raw.source {
            if !valid_name(name.get_ref()) {
                return ctx.err(name.span(), bad_name("source", name.get_ref()));
            }
            let source = Self::validate_source(name.get_ref(), s, &targets, ctx)?;
            sources.insert(name.into_inner(), source);
        }
        Ok(Config {
            file: ctx.file.to_path_buf(),
            host,
            state_dir,
            sources,
            targets,
        })
    }

    fn validate_source(
        name: &str,
        s: RawSource,
        targets: &BTreeMap<String, TargetConfig>,
        ctx: &Ctx<'_>,
    ) -> Result<SourceConfig> {
        let path = ctx.path(&s.path)?;
        if s.recipients.get_ref().is_empty() {
            return ctx.err(
                s.recipients.span(),
                "recipients is empty; list at least one public certificate file, e.g. \
                 recipients = [\"/etc/coffer/admin.pub.asc\"]",
            );
        }
        let recipients = s
            .recipients
            .get_ref()
            .iter()
            .map(|r| ctx.path(r))
            .collect::<Result<Vec<_>>>()?;
        if s.targets.get_ref().is_empty() {
            return ctx.err(
                s.targets.span(),
                "targets is empty; name at least one [target.NAME]",
            );
        }
        let mut names = Vec::new();
        for t in s.targets.get_ref() {
            if !targets.contains_key(t.get_ref()) {
                let known: Vec<&str> = targets.keys().map(String::as_str).collect();
                return ctx.err(
                    t.span(),
                    format!(
                        "source {name:?} names target {:?}, which no [target.{}] section \
                         defines (defined: {})",
                        t.get_ref(),
                        t.get_ref(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if names.contains(t.get_ref()) {
                return ctx.err(
                    t.span(),
                    format!(
                        "source {name:?} names target {:?} twice; each run would go there \
                         twice",
                        t.get_ref()
                    ),
                );
            }
            names.push(t.get_ref().clone());
        }
        for pattern in &s.ignore {
            if let Err(e) = globset::Glob::new(pattern.get_ref().trim_start_matches('/')) {
                return ctx.err(pattern.span(), format!("bad ignore pattern: {e}"));
            }
        }
        // A folder target inside the source would be backed up into itself, run after
        // run, unless the source ignores it.
        let ignore: Vec<String> = s.ignore.iter().map(|p| p.get_ref().clone()).collect();
        let rules = crate::source::IgnoreRules::new(&ignore)?;
        for t in s.targets.get_ref() {
            let Some(dir) = targets
                .get(t.get_ref())
                .and_then(|t| url::Url::parse(&t.url).ok())
                .filter(|u| u.scheme() == "file")
                .and_then(|u| u.to_file_path().ok())
            else {
                continue;
            };
            if let Ok(rel) = dir.strip_prefix(&path) {
                let ignored = rel
                    .ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .any(|a| rules.is_ignored(a));
                if !ignored {
                    return ctx.err(
                        t.span(),
                        format!(
                            "target {:?} ({}) is inside source {name:?}: each backup would \
                             store the target in itself. Put the target elsewhere, or add \
                             \"/{}\" to the source's ignore list",
                            t.get_ref(),
                            crate::text::path(&dir),
                            crate::text::path(rel)
                        ),
                    );
                }
            }
        }
        let chunking = Self::validate_chunking(&s, ctx)?;
        let retention = Self::validate_retention(&s, ctx)?;
        Ok(SourceConfig {
            name: name.to_string(),
            path,
            recipients,
            targets: names,
            ignore: s.ignore.into_iter().map(Spanned::into_inner).collect(),
            one_file_system: s.one_file_system,
            chunking,
            retention,
        })
    }

    fn validate_retention(s: &RawSource, ctx: &Ctx<'_>) -> Result<crate::retention::Retention> {
        use crate::retention::{check_count, check_within};
        // Each key is the flag of the same rule (`keep_last`, `--keep-last`): retention.rs.
        let count = |v: &Option<Spanned<u32>>, key: &str| match v {
            Some(n) => match check_count(*n.get_ref()) {
                Ok(n) => Ok(Some(n)),
                Err(e) => ctx.err(n.span(), format!("{key} {e}")),
            },
            None => Ok(None),
        };
        let within = match &s.keep_within {
            Some(d) => match check_within(d.get_ref().0) {
                Ok(d) => Some(d),
                Err(e) => return ctx.err(d.span(), format!("keep_within {e}")),
            },
            None => None,
        };
        Ok(crate::retention::Retention {
            last: count(&s.keep_last, "keep_last")?,
            hourly: count(&s.keep_hourly, "keep_hourly")?,
            daily: count(&s.keep_daily, "keep_daily")?,
            weekly: count(&s.keep_weekly, "keep_weekly")?,
            monthly: count(&s.keep_monthly, "keep_monthly")?,
            yearly: count(&s.keep_yearly, "keep_yearly")?,
            within,
        })
    }

    fn validate_chunking(s: &RawSource, ctx: &Ctx<'_>) -> Result<Chunking> {
        let get =
            |v: &Option<Spanned<Size>>, d: u32| v.as_ref().map_or(d as u64, |s| s.get_ref().0);
        let min = get(&s.chunk_min, DEFAULT_CHUNKING.min);
        let avg = get(&s.chunk_avg, DEFAULT_CHUNKING.avg);
        let max = get(&s.chunk_max, DEFAULT_CHUNKING.max);
        let span = s
            .chunk_min
            .as_ref()
            .or(s.chunk_avg.as_ref())
            .or(s.chunk_max.as_ref())
            .map_or(0..0, |s| s.span());
        use fastcdc::v2020 as cdc;
        let within = |v: u64, lo: usize, hi: usize| (lo as u64..=hi as u64).contains(&v);
        let valid = within(min, cdc::MINIMUM_MIN, cdc::MINIMUM_MAX)
            && within(avg, cdc::AVERAGE_MIN, cdc::AVERAGE_MAX)
            && within(max, cdc::MAXIMUM_MIN, cdc::MAXIMUM_MAX)
            && min < avg
            && avg < max;
        if !valid {
            return ctx.err(
                span,
                format!(
                    "chunk sizes must satisfy chunk_min < chunk_avg < chunk_max with \
                     64 <= chunk_min <= \"1MiB\", 256 <= chunk_avg <= \"4MiB\" and \
                     1024 <= chunk_max <= \"16MiB\" (FastCDC's limits; have {min}, {avg}, \
                     {max}); the defaults are \"256KiB\", \"1MiB\", \"4MiB\""
                ),
            );
        }
        Ok(Chunking {
            min: min as u32,
            avg: avg as u32,
            max: max as u32,
        })
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

fn bad_name(kind: &str, name: &str) -> String {
    format!(
        "{kind} name {name:?} is not allowed: use letters, digits, '-', '_' and '.', \
         not starting with '.', at most 64 characters"
    )
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
        assert_eq!(s.path, Path::new("/home/alice"));
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
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        // As duplicity users write them: upper case, M for months.
        assert_eq!(parse_duration("3D").unwrap().as_secs(), 3 * 86400);
        assert_eq!(parse_duration("2W").unwrap().as_secs(), 14 * 86400);
        assert_eq!(parse_duration("1M").unwrap().as_secs(), 30 * 86400);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("3y").unwrap().as_secs(), 3 * 365 * 86400);
        assert_eq!(parse_duration("1.5h").unwrap().as_secs(), 5400);
        let neg = parse_duration("-3d").unwrap_err().to_string();
        assert!(neg.contains("positive"), "{neg}");
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("1.").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB").unwrap(), 262144);
        assert_eq!(parse_size("4 MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("17").unwrap(), 17);
        assert_eq!(parse_size("1.5MiB").unwrap(), 3 << 19);
        assert_eq!(
            parse_size("1M").unwrap(),
            1 << 20,
            "bare letters are binary"
        );
        assert_eq!(
            parse_size("5MB").unwrap(),
            5_000_000,
            "SI units are decimal"
        );
        assert_eq!(parse_size("2kB").unwrap(), 2000);
        assert!(parse_size("x").is_err());
        assert!(parse_size("-5")
            .unwrap_err()
            .to_string()
            .contains("positive"));
        assert!(parse_size("5mb").is_err(), "millibytes? refused");
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
