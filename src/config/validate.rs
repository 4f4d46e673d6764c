//! Validation of the file as written ([`RawConfig`]) into a [`Config`]: every problem is
//! reported with the file, the line and what to write instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::*;
use crate::error::{Error, Result};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
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

pub(super) fn absolute(p: &Path) -> PathBuf {
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

impl Config {
    pub(super) fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config> {
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
        let signing_key = raw.signing_key.as_ref().map(|k| ctx.path(k)).transpose()?;
        let signers = match &raw.signers {
            Some(list) => Self::validate_signers(list, ctx)?,
            None => Vec::new(),
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
            let storage_class = match &t.storage_class {
                None => None,
                Some(c) if scheme != "s3" => {
                    return ctx.err(
                        c.span(),
                        "storage_class applies to s3:// targets (packs in a colder S3 class)",
                    )
                }
                Some(c) => match super::StorageClass::ALL
                    .iter()
                    .find(|(n, _)| *n == c.get_ref().as_str())
                {
                    Some((_, class)) => Some(*class),
                    None => {
                        return ctx.err(
                            c.span(),
                            format!(
                                "unknown storage_class {:?}: one of {}",
                                c.get_ref(),
                                super::StorageClass::ALL
                                    .iter()
                                    .map(|(n, _)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    }
                },
            };
            let object_lock = match (&t.object_lock_retention, &t.object_lock_mode) {
                (None, None) => None,
                (None, Some(m)) => {
                    return ctx.err(
                        m.span(),
                        "object_lock_mode needs object_lock_retention (how long objects stay \
                         locked)",
                    )
                }
                (Some(r), _) if scheme != "s3" => {
                    return ctx.err(r.span(), "object_lock_retention applies to s3:// targets")
                }
                (Some(r), _) if r.get_ref().0 < std::time::Duration::from_secs(86_400) => {
                    return ctx.err(r.span(), "object_lock_retention must be at least 1d")
                }
                (Some(r), m) => {
                    let compliance = match m.as_ref().map(|m| m.get_ref().as_str()) {
                        None | Some("GOVERNANCE") => false,
                        Some("COMPLIANCE") => true,
                        Some(other) => {
                            return ctx.err(
                                m.as_ref().map_or(r.span(), |m| m.span()),
                                format!(
                                    "unknown object_lock_mode {other:?}: GOVERNANCE or \
                                     COMPLIANCE"
                                ),
                            )
                        }
                    };
                    Some(super::ObjectLock {
                        compliance,
                        retention: r.get_ref().0,
                    })
                }
            };
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
                    storage_class,
                    object_lock,
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
            let mut source = Self::validate_source(&name, s, &targets, ctx)?;
            if source.signers.is_empty() {
                source.signers = signers.clone();
            }
            sources.insert(name.into_inner(), source);
        }
        Ok(Config {
            file: ctx.file.to_path_buf(),
            host,
            state_dir,
            signing_key,
            signers,
            sources,
            targets,
        })
    }

    fn validate_signers(list: &[Spanned<String>], ctx: &Ctx<'_>) -> Result<Vec<PathBuf>> {
        if list.is_empty() {
            return Err(Error::Config(format!(
                "{}: signers is empty; list the certificates whose signatures runs must \
                 carry (signers = [\"/etc/coffer/web1.sign.pub.asc\"]), or leave it out",
                ctx.file.display()
            )));
        }
        list.iter().map(|p| ctx.path(p)).collect()
    }

    fn validate_source(
        section: &Spanned<String>,
        s: RawSource,
        targets: &BTreeMap<String, TargetConfig>,
        ctx: &Ctx<'_>,
    ) -> Result<SourceConfig> {
        let name = section.get_ref().as_str();
        let input = Self::validate_input(section, &s, ctx)?;
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
            let Some(path) = input.path() else { break };
            if let Ok(rel) = dir.strip_prefix(path) {
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
        let chunking = Self::validate_chunking(&s, &input, ctx)?;
        let retention = Self::validate_retention(&s, ctx)?;
        let max_age = match &s.max_age {
            Some(d) if d.get_ref().0.is_zero() => {
                return ctx.err(d.span(), "max_age must be more than 0s (or leave it out)")
            }
            d => d.as_ref().map(|d| d.get_ref().0),
        };
        Ok(SourceConfig {
            name: name.to_string(),
            input,
            recipients,
            targets: names,
            ignore: s.ignore.into_iter().map(Spanned::into_inner).collect(),
            one_file_system: s.one_file_system,
            chunking,
            retention,
            max_age,
            signers: match &s.signers {
                Some(list) => Self::validate_signers(list, ctx)?,
                None => Vec::new(),
            },
        })
    }

    /// Exactly one of `path`, `command` and `stdin`; `stream_name` only with the last
    /// two, and the tree's own settings only with the first.
    fn validate_input(section: &Spanned<String>, s: &RawSource, ctx: &Ctx<'_>) -> Result<Input> {
        let name = section.get_ref();
        let stdin = s.stdin.as_ref().filter(|b| *b.get_ref());
        let given = [s.path.is_some(), s.command.is_some(), stdin.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            let span = [
                s.path.as_ref().map(Spanned::span),
                s.command.as_ref().map(Spanned::span),
                stdin.map(Spanned::span),
            ]
            .into_iter()
            .flatten()
            .nth(1)
            .unwrap_or(section.span());
            return ctx.err(
                span,
                format!(
                    "source {name:?} needs exactly one of path (a tree: path = \"/etc\"), \
                     command (a command's output: command = [\"mysqldump\", \"shop\"]) \
                     and stdin (standard input: stdin = true)"
                ),
            );
        }
        let stream_name = match &s.stream_name {
            Some(n) if s.path.is_some() => {
                return ctx.err(
                    n.span(),
                    "stream_name names the file a command or stdin source stores; a path \
                     source stores its tree's own names: remove it",
                )
            }
            Some(n) if !valid_stream_name(n.get_ref()) => {
                return ctx.err(
                    n.span(),
                    format!(
                        "stream_name {:?} must be one file name: not empty, no '/', not \
                         '.' or '..', at most 255 bytes",
                        n.get_ref()
                    ),
                )
            }
            Some(n) => n.get_ref().clone(),
            None => name.clone(),
        };
        if s.path.is_none() {
            if let Some(p) = s.ignore.first() {
                return ctx.err(
                    p.span(),
                    "ignore applies to the tree of a path source; a command or stdin \
                     source stores one stream: remove it",
                );
            }
            if s.one_file_system {
                return ctx.err(
                    section.span(),
                    format!(
                        "source {name:?}: one_file_system applies to the tree of a path \
                         source; remove it"
                    ),
                );
            }
        }
        if let Some(p) = &s.path {
            return Ok(Input::Tree(ctx.path(p)?));
        }
        if let Some(argv) = &s.command {
            let argv: Vec<String> = argv.get_ref().iter().map(|a| a.get_ref().clone()).collect();
            if argv
                .first()
                .is_none_or(|p| p.is_empty() || p.contains('\0'))
                || argv.iter().any(|a| a.contains('\0'))
            {
                return ctx.err(
                    s.command.as_ref().map_or(section.span(), Spanned::span),
                    "command must name a program and its arguments, run without a shell: \
                     command = [\"mysqldump\", \"--single-transaction\", \"shop\"] (for a \
                     pipeline, name a script)",
                );
            }
            return Ok(Input::Command {
                argv,
                name: stream_name,
            });
        }
        Ok(Input::Stdin { name: stream_name })
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

    /// The source's chunk size bounds. Without any, a tree's defaults or a stream's
    /// (smaller: dumps change in scattered places). With chunk_avg alone (the one
    /// setting a user chooses, say "64KiB" for a tree of dump files), the bounds not
    /// given are a quarter and four times it, within FastCDC's limits.
    fn validate_chunking(s: &RawSource, input: &Input, ctx: &Ctx<'_>) -> Result<Chunking> {
        use fastcdc::v2020 as cdc;
        let base = match input {
            Input::Tree(_) => DEFAULT_CHUNKING,
            _ => STREAM_CHUNKING,
        };
        let given = |v: &Option<Spanned<Size>>| v.as_ref().map(|s| s.get_ref().0);
        let avg = given(&s.chunk_avg).unwrap_or(base.avg as u64);
        let (min_default, max_default) = match given(&s.chunk_avg) {
            Some(avg) => (
                (avg / 4).clamp(cdc::MINIMUM_MIN as u64, cdc::MINIMUM_MAX as u64),
                avg.saturating_mul(4)
                    .clamp(cdc::MAXIMUM_MIN as u64, cdc::MAXIMUM_MAX as u64),
            ),
            None => (base.min as u64, base.max as u64),
        };
        let min = given(&s.chunk_min).unwrap_or(min_default);
        let max = given(&s.chunk_max).unwrap_or(max_default);
        let span = s
            .chunk_min
            .as_ref()
            .or(s.chunk_avg.as_ref())
            .or(s.chunk_max.as_ref())
            .map_or(0..0, |s| s.span());
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
                     {max}); the defaults are \"256KiB\", \"1MiB\", \"4MiB\" (a \
                     command or stdin source: \"16KiB\", \"64KiB\", \"256KiB\"), and \
                     chunk_avg alone sets the others to a quarter and four times it"
                ),
            );
        }
        Ok(Chunking {
            min: min as u32,
            avg: avg as u32,
            max: max as u32,
        })
    }
}

fn bad_name(kind: &str, name: &str) -> String {
    format!(
        "{kind} name {name:?} is not allowed: use letters, digits, '-', '_' and '.', \
         not starting with '.', at most 64 characters"
    )
}
