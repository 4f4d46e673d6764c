//! `coffer status`: keyless monitoring. For every host and source on a target: when the
//! newest run that checks out was stored, its age, and the runs that do not check out
//! ([`crate::runs`]); a source whose newest complete run is older than its `max_age` is
//! critical. It needs only a credential that may list `runs/` and read the object lists
//! and the first bytes of the metafiles: the monitoring machine's, never a host's key.
//!
//! The health of each source and of the whole check follows the monitoring-plugin
//! convention (Nagios, Icinga): OK, WARNING, CRITICAL, UNKNOWN. [`prometheus`] writes the
//! same as a node_exporter textfile-collector file.
//!
//! Where signers are trusted, unsigned runs do not check out; breaks in a source's run
//! chain ([`crate::chain`]) are warnings, and a rollback (the newest run an earlier check
//! saw is gone) is critical.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::retention::humantime;
use crate::store::RunInfo;

/// The health of a source, or of the whole check, ordered from best to worst as the
/// overall result combines them (an unknown target outranks a warning, not a critical
/// source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    /// Fresh and every run checks out.
    Ok,
    /// Someone should look: runs that do not check out, or nearly stale.
    Warning,
    /// The check could not be made (the target could not be read).
    Unknown,
    /// No complete run, or the newest complete run is too old.
    Critical,
}

impl Health {
    /// The monitoring-plugin exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_status(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Warning => 1,
            Health::Critical => 2,
            Health::Unknown => 3,
        }
    }

    /// The word: OK, WARNING, CRITICAL, UNKNOWN.
    pub fn word(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
            Health::Unknown => "UNKNOWN",
        }
    }
}

/// What is expected of the sources.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StatusOptions {
    /// A source whose newest complete run is older than this is critical.
    pub max_age: Option<Duration>,
    /// ... and older than this, a warning.
    pub warn_age: Option<Duration>,
    /// `max_age` per source name (from the config), over the one above.
    pub max_age_of: BTreeMap<String, Duration>,
    /// (host, source) pairs that must have runs even if the target has none (a config's
    /// own sources): missing, they are critical.
    pub expected: Vec<(String, String)>,
}

impl StatusOptions {
    /// No age limits, nothing expected.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The state of one host's source on one target.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SourceStatus {
    /// The target's name.
    pub target: String,
    /// The host that makes the runs.
    pub host: String,
    /// The source.
    pub source: String,
    /// Its health.
    pub health: Health,
    /// Why it is not OK (empty when it is).
    pub reasons: Vec<String>,
    /// Runs on the target.
    pub runs: u64,
    /// Runs that check out.
    pub runs_ok: u64,
    /// When the target stored the newest run that checks out (RFC 3339).
    pub last_complete: Option<String>,
    /// That run's id.
    pub last_complete_run: Option<String>,
    /// Its age in seconds, at the check.
    pub age_secs: Option<u64>,
    /// The age limit applied, in seconds.
    pub max_age_secs: Option<u64>,
    /// When the first of its recipient certificates expires, if within 30 days (checked
    /// when the config names the source's recipients).
    pub recipient_expires: Option<String>,
    /// The newest complete run's signature.
    pub signature: Option<crate::runs::Signature>,
    /// Breaks found in the source's run chain.
    pub chain_findings: u64,
    #[serde(skip)]
    last_complete_at: Option<DateTime<Utc>>,
}

impl SourceStatus {
    /// Adds what the source's recipient certificates (`recipients`, from the config)
    /// say: CRITICAL when they cannot be used (expired, say: its backups fail), WARNING
    /// when one expires within 30 days (its backups will fail then).
    pub fn check_recipients(&mut self, recipients: &[std::path::PathBuf]) {
        match crate::crypto::load_recipients(recipients) {
            Err(e) => self.raise(
                Health::Critical,
                format!("its recipients cannot be used, so its backups fail: {e}"),
            ),
            Ok(enc) => {
                let mut soonest: Option<std::time::SystemTime> = None;
                for e in enc.expiring_within(crate::backup::EXPIRY_WARNING) {
                    soonest = Some(soonest.map_or(e.expires, |s| s.min(e.expires)));
                    self.raise(
                        Health::Warning,
                        format!(
                            "recipient certificate {} ({}) expires on {}: extend it before \
                             then (`coffer backup` prints how)",
                            e.fingerprint,
                            crate::text::path(&e.path),
                            DateTime::<Utc>::from(e.expires).format("%Y-%m-%d")
                        ),
                    );
                }
                self.recipient_expires = soonest.map(|t| DateTime::<Utc>::from(t).to_rfc3339());
            }
        }
    }

    /// Adds what the certificates trusted to sign the source's runs say: WARNING when
    /// one expires within 30 days or cannot be read (its runs will stop checking out:
    /// a signature made after the key expired is not good).
    pub fn check_signers(&mut self, signers: &[std::path::PathBuf]) {
        if signers.is_empty() {
            return;
        }
        match crate::crypto::Signers::load(signers) {
            Err(e) => self.raise(Health::Warning, format!("its signers cannot be read: {e}")),
            Ok(list) => {
                let soon = std::time::SystemTime::now() + crate::backup::EXPIRY_WARNING;
                for (path, cert) in list.certs() {
                    let expires = cert
                        .with_policy(&*crate::crypto::POLICY, None)
                        .ok()
                        .and_then(|v| v.primary_key().key_expiration_time());
                    match expires {
                        Some(t) if t <= std::time::SystemTime::now() => self.raise(
                            Health::Critical,
                            format!(
                                "signer certificate {} ({}) expired on {}: new runs signed \
                                 with it do not check out",
                                cert.fingerprint(),
                                crate::text::path(path),
                                DateTime::<Utc>::from(t).format("%Y-%m-%d")
                            ),
                        ),
                        Some(t) if t <= soon => self.raise(
                            Health::Warning,
                            format!(
                                "signer certificate {} ({}) expires on {}: extend it \
                                 (gpg --quick-set-expire) and give the hosts and this \
                                 machine the new certificate",
                                cert.fingerprint(),
                                crate::text::path(path),
                                DateTime::<Utc>::from(t).format("%Y-%m-%d")
                            ),
                        ),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Adds the breaks found in the source's chain: a rollback is CRITICAL, the others
    /// WARNING.
    pub fn add_chain_findings(&mut self, findings: &[crate::chain::Finding]) {
        let mine: Vec<&crate::chain::Finding> = findings
            .iter()
            .filter(|f| (&f.host, &f.source) == (&self.host, &self.source))
            .collect();
        for f in mine {
            self.chain_findings += 1;
            let health = if f.kind == crate::chain::Kind::Rollback {
                Health::Critical
            } else {
                Health::Warning
            };
            self.raise(health, format!("{}: {}", f.kind.word(), f.message));
        }
    }

    fn raise(&mut self, health: Health, why: String) {
        self.health = self.health.max(health);
        self.reasons.push(why);
    }
}

/// The status of every host and source among `runs` (checked by [`crate::runs::check`]),
/// at `now`.
pub fn of_runs(
    target: &str,
    runs: &[RunInfo],
    now: DateTime<Utc>,
    opts: &StatusOptions,
) -> Vec<SourceStatus> {
    let mut groups: BTreeMap<(String, String), Vec<&RunInfo>> = BTreeMap::new();
    for (host, source) in &opts.expected {
        groups.entry((host.clone(), source.clone())).or_default();
    }
    for r in runs {
        groups
            .entry((r.host.clone(), r.source.clone()))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((host, source), runs)| of_source(target, &host, &source, &runs, now, opts))
        .collect()
}

/// The status of one host's source from its runs (checked, in stored order), at `now`.
pub fn of_source(
    target: &str,
    host: &str,
    source: &str,
    runs: &[&RunInfo],
    now: DateTime<Utc>,
    opts: &StatusOptions,
) -> SourceStatus {
    let max_age = opts.max_age_of.get(source).copied().or(opts.max_age);
    judge(
        target,
        host.to_string(),
        source.to_string(),
        runs,
        now,
        max_age,
        opts.warn_age,
    )
}

fn judge(
    target: &str,
    host: String,
    source: String,
    runs: &[&RunInfo],
    now: DateTime<Utc>,
    max_age: Option<Duration>,
    warn_age: Option<Duration>,
) -> SourceStatus {
    // Runs are in stored order; the newest that checks out counts.
    let last = runs.iter().rev().find(|r| r.status.is_ok());
    let age = last.map(|r| (now - r.stored_at()).to_std().unwrap_or(Duration::ZERO));
    let flagged = runs.iter().filter(|r| !r.status.is_ok()).count();
    let mut s = SourceStatus {
        target: target.to_string(),
        host,
        source,
        health: Health::Ok,
        reasons: Vec::new(),
        runs: runs.len() as u64,
        runs_ok: (runs.len() - flagged) as u64,
        last_complete: last.map(|r| r.stored.clone()),
        last_complete_run: last.map(|r| r.id.clone()),
        age_secs: age.map(|a| a.as_secs()),
        max_age_secs: max_age.map(|m| m.as_secs()),
        recipient_expires: None,
        signature: last.map(|r| r.signature.clone()),
        chain_findings: 0,
        last_complete_at: last.map(|r| r.stored_at()),
    };
    match age {
        None if runs.is_empty() => s.raise(Health::Critical, "no run on the target".into()),
        None => s.raise(
            Health::Critical,
            format!("none of its {} runs checks out", runs.len()),
        ),
        Some(age) => {
            if let Some(max) = max_age.filter(|&m| age > m) {
                s.raise(
                    Health::Critical,
                    format!(
                        "the newest complete run is {} old, more than max-age {}",
                        humantime(round(age)),
                        humantime(max)
                    ),
                );
            } else if let Some(warn) = warn_age.filter(|&w| age > w) {
                s.raise(
                    Health::Warning,
                    format!(
                        "the newest complete run is {} old, more than warn-age {}",
                        humantime(round(age)),
                        humantime(warn)
                    ),
                );
            }
        }
    }
    let newest_flagged = runs.last().filter(|r| !r.status.is_ok());
    if let Some(newest) = newest_flagged {
        s.raise(
            Health::Warning,
            format!(
                "the newest run {} is {}: {}",
                newest.id,
                newest.status.word(),
                newest.status.reason().unwrap_or("")
            ),
        );
    }
    if flagged > usize::from(newest_flagged.is_some()) {
        s.raise(
            Health::Warning,
            format!("{flagged} runs are suspicious or damaged (`coffer runs` says why)"),
        );
    }
    s
}

/// Ages are shown to the second (in minutes beyond an hour).
fn round(d: Duration) -> Duration {
    let s = d.as_secs();
    Duration::from_secs(if s >= 3600 { s / 60 * 60 } else { s })
}

/// The whole check's health: the worst of the sources' and of the targets that could not
/// be read.
pub fn overall(sources: &[SourceStatus], unreadable: usize) -> Health {
    let worst = sources.iter().map(|s| s.health).max().unwrap_or(Health::Ok);
    if unreadable > 0 {
        worst.max(Health::Unknown)
    } else {
        worst
    }
}

/// A node_exporter textfile-collector file (Prometheus text format 0.0.4) of `sources`;
/// `targets` says for each target whether it could be read.
pub fn prometheus(sources: &[SourceStatus], targets: &[(String, bool)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let labels = |s: &SourceStatus| {
        format!(
            "target=\"{}\",host=\"{}\",source=\"{}\"",
            label(&s.target),
            label(&s.host),
            label(&s.source)
        )
    };
    family(
        "coffer_target_up",
        "Whether coffer status could read the target's runs (1) or not (0).",
        targets
            .iter()
            .map(|(t, up)| {
                (
                    format!("target=\"{}\"", label(t)),
                    u8::from(*up).to_string(),
                )
            })
            .collect(),
    );
    family(
        "coffer_source_health",
        "A source's health: 0 OK, 1 WARNING, 2 CRITICAL (the monitoring-plugin codes).",
        sources
            .iter()
            .map(|s| (labels(s), s.health.exit_status().to_string()))
            .collect(),
    );
    family(
        "coffer_last_complete_run_timestamp_seconds",
        "When the target stored the newest run of the source that checks out (Unix time).",
        sources
            .iter()
            .filter_map(|s| {
                s.last_complete_at
                    .map(|t| (labels(s), t.timestamp().to_string()))
            })
            .collect(),
    );
    family(
        "coffer_last_complete_run_signed",
        "Whether the newest run of the source that checks out carries a good signature of \
         a trusted signer (1) or not (0).",
        sources
            .iter()
            .filter_map(|s| {
                s.signature.as_ref().map(|sig| {
                    (
                        labels(s),
                        u8::from(matches!(sig, crate::runs::Signature::Good(_))).to_string(),
                    )
                })
            })
            .collect(),
    );
    family(
        "coffer_chain_problems",
        "Breaks found in the source's run chain (deleted, forked, swapped or restarted \
         runs, rollbacks).",
        sources
            .iter()
            .map(|s| (labels(s), s.chain_findings.to_string()))
            .collect(),
    );
    family(
        "coffer_last_complete_run_age_seconds",
        "Age of the newest run of the source that checks out, at the check.",
        sources
            .iter()
            .filter_map(|s| s.age_secs.map(|a| (labels(s), a.to_string())))
            .collect(),
    );
    family(
        "coffer_runs",
        "Runs of the source on the target, by whether they check out.",
        sources
            .iter()
            .flat_map(|s| {
                [
                    (format!("{},state=\"ok\"", labels(s)), s.runs_ok.to_string()),
                    (
                        format!("{},state=\"flagged\"", labels(s)),
                        (s.runs - s.runs_ok).to_string(),
                    ),
                ]
            })
            .collect(),
    );
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_health_wins_and_unknown_outranks_only_warnings() {
        assert_eq!(overall(&[], 0), Health::Ok);
        assert_eq!(overall(&[], 1), Health::Unknown);
        assert!(Health::Warning < Health::Unknown && Health::Unknown < Health::Critical);
        assert_eq!(
            [
                Health::Ok,
                Health::Warning,
                Health::Critical,
                Health::Unknown
            ]
            .map(Health::exit_status),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn an_expected_source_without_runs_is_critical() {
        let mut opts = StatusOptions::new();
        opts.expected.push(("web1".into(), "etc".into()));
        let s = of_runs("t", &[], Utc::now(), &opts);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].health, Health::Critical);
        assert_eq!(s[0].reasons, ["no run on the target"]);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
