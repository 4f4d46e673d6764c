//! `coffer find`: which runs hold a path that matches, from their metafiles.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Result};

use super::args::FindArgs;
use super::{output, restore_target, secret_key, trust, EXIT_OK, EXIT_PARTIAL};
use coffer::{MetafileSource, Store};

/// What a path must match.
enum Matcher {
    /// A glob over the last component.
    Name(globset::GlobMatcher),
    /// A glob over the whole path.
    Path(globset::GlobMatcher),
    /// A regular expression over the whole path's bytes.
    Regex(regex::bytes::Regex),
}

impl Matcher {
    fn new(pattern: &str, regex: bool) -> Result<Matcher> {
        if regex {
            return regex::bytes::Regex::new(pattern)
                .map(Matcher::Regex)
                .map_err(|e| anyhow!("--regex {pattern:?}: {e}"));
        }
        let whole = pattern.contains('/');
        let glob = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| anyhow!("pattern {pattern:?}: {e}"))?
            .compile_matcher();
        Ok(if whole {
            Matcher::Path(glob)
        } else {
            Matcher::Name(glob)
        })
    }

    fn matches(&self, path: &[u8]) -> bool {
        fn os(b: &[u8]) -> &Path {
            use std::os::unix::ffi::OsStrExt;
            Path::new(std::ffi::OsStr::from_bytes(b))
        }
        match self {
            Matcher::Name(g) => {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                g.is_match(os(name))
            }
            Matcher::Path(g) => g.is_match(os(path)),
            Matcher::Regex(r) => r.is_match(path),
        }
    }
}

pub(super) fn find(config: Option<&Path>, a: FindArgs) -> Result<u8> {
    let matcher = Matcher::new(&a.pattern, a.regex)?;
    let target = restore_target(config, a.target.as_deref(), a.source.as_deref())?;
    let store = Store::open(&target, false)?.reader();
    let decryptor = secret_key(&a.key)?;
    let trust = trust(super::optional_config(config)?.as_ref(), &a.trust)?;
    // The runs to search, newest first: all, or the newest of each (host, source).
    let mut runs: Vec<_> = store
        .list_runs()?
        .into_iter()
        .filter(|r| a.source.as_ref().is_none_or(|s| *s == r.source))
        .filter(|r| a.host.as_ref().is_none_or(|h| *h == r.host))
        .collect();
    runs.reverse();
    let mut skipped = Vec::new();
    runs.retain(|r| {
        let ok = r.status.is_ok();
        if !ok {
            skipped.push(format!("{} ({})", r.id, r.status.word()));
        }
        ok
    });
    if !a.all_runs {
        let mut seen = std::collections::HashSet::new();
        runs.retain(|r| seen.insert((r.host.clone(), r.source.clone())));
    }
    if runs.is_empty() {
        return Err(coffer::Error::NotFound(format!(
            "no run to search on target {}{}",
            store.name(),
            a.source
                .as_ref()
                .map(|s| format!(" of source {s:?}"))
                .unwrap_or_default()
        ))
        .into());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let to_io = |e: std::io::Error| coffer::Error::io("standard output", e);
    let mut failed = 0;
    for r in &runs {
        // The runs were listed once, above: each is read without listing them again.
        let source = MetafileSource::Listed(Box::new(r.clone()));
        let mut opts = coffer::LsOptions::default();
        opts.trust = trust.clone();
        opts.recursive = true;
        let searched = coffer::ls(
            &store,
            &source,
            &decryptor,
            opts,
            &coffer::NoProgress,
            &mut |e| {
                if !matcher.matches(&e.raw_path) {
                    return Ok(());
                }
                let line = if a.json {
                    let entry = serde_json::to_value(e).map_err(|j| to_io(j.into()))?;
                    serde_json::json!({
                        "host": r.host, "source": r.source, "run": r.id, "time": r.time,
                        "entry": entry,
                    })
                    .to_string()
                } else {
                    format!("{} {}", r.id, output::ls_long(e))
                };
                writeln!(out, "{line}").map_err(to_io)
            },
        );
        match searched {
            Ok(_) => {}
            Err(e) if is_output(&e) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                eprintln!("coffer find: run {}/{}/{}: {e}", r.host, r.source, r.id);
            }
        }
    }
    out.flush()?;
    if !skipped.is_empty() {
        eprintln!(
            "coffer find: left out runs that do not check out: {} (see `coffer runs`)",
            skipped.join(", ")
        );
    }
    Ok(if failed > 0 { EXIT_PARTIAL } else { EXIT_OK })
}

/// Whether `e` is standard output failing (a closed pipe), which ends the search.
fn is_output(e: &coffer::Error) -> bool {
    matches!(e, coffer::Error::Io { path, .. } if path == Path::new("standard output"))
}
