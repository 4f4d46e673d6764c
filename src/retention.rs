//! Which runs a retention policy keeps: pure logic, no I/O (`coffer prune` applies it).
//!
//! The runs of one host and source are considered together, newest first. A run is kept
//! when any rule keeps it, and every kept run says which rules keep it:
//! - `last N`: the N newest runs;
//! - `hourly N` ... `yearly N`: for each of the N most recent hours (days, ISO weeks,
//!   months, years) that have runs, the newest run in it (UTC calendar);
//! - `within D`: every run started less than D before the newest run (relative to the
//!   newest run, not to now, so a host that stopped backing up keeps its last runs).
//!
//! The newest run is always kept, whatever the rules say.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::config::InvalidValue;

/// A retention policy. Counts are at least 1 when set; `None` means "rule not used".
///
/// The one declaration of the rules: `coffer prune` takes them as these flags (the
/// struct is its `--keep-*` options), and a source's config as `keep_*` keys of the same
/// names (src/config/validate.rs reads them with their line numbers, through [`count`] and
/// [`within`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct Retention {
    /// Keep the N newest runs
    #[arg(long = "keep-last", value_name = "N", value_parser = count)]
    pub last: Option<u32>,
    /// Keep the newest run of each of the N latest hours with runs
    #[arg(long = "keep-hourly", value_name = "N", value_parser = count)]
    pub hourly: Option<u32>,
    /// Keep the newest run of each of the N latest days with runs
    #[arg(long = "keep-daily", value_name = "N", value_parser = count)]
    pub daily: Option<u32>,
    /// Keep the newest run of each of the N latest ISO weeks with runs
    #[arg(long = "keep-weekly", value_name = "N", value_parser = count)]
    pub weekly: Option<u32>,
    /// Keep the newest run of each of the N latest months with runs
    #[arg(long = "keep-monthly", value_name = "N", value_parser = count)]
    pub monthly: Option<u32>,
    /// Keep the newest run of each of the N latest years with runs
    #[arg(long = "keep-yearly", value_name = "N", value_parser = count)]
    pub yearly: Option<u32>,
    /// Keep every run started within DUR (e.g. 36h, 14d) of its group's newest run
    #[arg(long = "keep-within", value_name = "DUR", value_parser = within)]
    pub within: Option<Duration>,
}

/// A rule's count from the command line: a whole number, at least 1.
pub fn count(s: &str) -> Result<u32, InvalidValue> {
    let n = s.trim().parse::<u32>().map_err(|_| {
        InvalidValue::new(format!(
            "{s:?} is not a count; write a whole number such as 7"
        ))
    })?;
    check_count(n)
}

/// `keep_within`'s duration from the command line: more than nothing.
pub fn within(s: &str) -> Result<Duration, InvalidValue> {
    check_within(crate::config::parse_duration(s)?)
}

/// A count is at least 1.
pub(crate) fn check_count(n: u32) -> Result<u32, InvalidValue> {
    match n {
        0 => Err(InvalidValue::new(
            "must be at least 1 (leave the rule out to not use it)",
        )),
        n => Ok(n),
    }
}

/// A `within` duration is more than nothing.
pub(crate) fn check_within(d: Duration) -> Result<Duration, InvalidValue> {
    match d {
        d if d.is_zero() => Err(InvalidValue::new("must be more than 0s")),
        d => Ok(d),
    }
}

impl Retention {
    /// Whether no rule is set (such a policy would delete all but the newest run).
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }

    /// The rules in words, e.g. "last 3, daily 7, within 2d".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in self.buckets() {
            if let Some(n) = n {
                parts.push(format!("{name} {n}"));
            }
        }
        if let Some(d) = self.within {
            parts.push(format!("within {}", humantime(d)));
        }
        if parts.is_empty() {
            "no rules".into()
        } else {
            parts.join(", ")
        }
    }

    fn buckets(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }
}

/// A duration in the largest whole unit that config files accept ("90s", "2d", "1w").
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= secs && s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

/// The decision for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the run is kept.
    pub keep: bool,
    /// The rules that keep it (empty when deleted), e.g. `["newest", "last 1", "daily 3"]`.
    pub reasons: Vec<String>,
    /// When the calendar rules that keep it (`hourly` ... `yearly`, `within`) stop
    /// keeping it if backups go on at least once a period: the start of the period N
    /// periods after its own (`within`: its time plus the duration). `None` when only
    /// `newest` or `last` keep it (their end depends on the runs still to come) or it is
    /// deleted. What an Object Lock on the run must cover ([`crate::lock`]).
    #[serde(skip)]
    pub until: Option<DateTime<Utc>>,
}

/// The start of the period `n` periods after the one `t` is in (rule `i` of
/// [`Retention::buckets`], 1 to 5), on the UTC calendar; `None` past chrono's range.
fn period_end(i: usize, t: DateTime<Utc>, n: u32) -> Option<DateTime<Utc>> {
    use chrono::{Days, Months, TimeDelta};
    let midnight = t.date_naive().and_hms_opt(0, 0, 0)?.and_utc();
    match i {
        1 => t
            .with_minute(0)?
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(TimeDelta::try_hours(i64::from(n))?),
        2 => midnight.checked_add_days(Days::new(u64::from(n))),
        3 => midnight
            .checked_sub_days(Days::new(u64::from(t.weekday().num_days_from_monday())))?
            .checked_add_days(Days::new(u64::from(n).checked_mul(7)?)),
        4 => midnight.with_day(1)?.checked_add_months(Months::new(n)),
        5 => midnight
            .with_day(1)?
            .with_month(1)?
            .checked_add_months(Months::new(n.checked_mul(12)?)),
        _ => None,
    }
}

/// Applies `policy` to the start times of one host's runs of one source, given in any
/// order; the result is in the same order as `times`.
pub fn apply(policy: &Retention, times: &[DateTime<Utc>]) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    // Newest first; equal times keep their given order (the later-listed one is newer).
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));
    let mut out: Vec<Decision> = times
        .iter()
        .map(|_| Decision {
            keep: false,
            reasons: Vec::new(),
            until: None,
        })
        .collect();
    let Some(&newest) = order.first() else {
        return out;
    };
    out[newest].reasons.push("newest".into());

    type Period = fn(&DateTime<Utc>) -> (i32, u32);
    let periods: [Period; 6] = [
        |_| (0, 0), // "last": unused, every run is its own bucket
        |t| (t.num_days_from_ce(), t.hour()),
        |t| (t.num_days_from_ce(), 0),
        |t| {
            let w = t.iso_week();
            (w.year(), w.week())
        },
        |t| (t.year(), t.month()),
        |t| (t.year(), 0),
    ];
    for (i, (name, count)) in policy.buckets().into_iter().enumerate() {
        let Some(count) = count else { continue };
        let mut seen = 0u32;
        let mut last_period = None;
        for &run in &order {
            if seen == count {
                break;
            }
            let period = if i == 0 {
                None
            } else {
                Some(periods[i](&times[run]))
            };
            if i != 0 && period == last_period {
                continue; // an older run in a period already represented
            }
            last_period = period;
            seen += 1;
            out[run].reasons.push(format!("{name} {seen}"));
            let end = period_end(i, times[run], count);
            out[run].until = out[run].until.max(end);
        }
    }
    if let Some(within) = policy.within {
        let newest_time = times[newest];
        for &run in &order {
            let age = (newest_time - times[run]).to_std().unwrap_or_default();
            if age < within {
                out[run]
                    .reasons
                    .push(format!("within {}", humantime(within)));
                let end = chrono::TimeDelta::from_std(within)
                    .ok()
                    .and_then(|d| times[run].checked_add_signed(d));
                out[run].until = out[run].until.max(end);
            }
        }
    }
    for d in &mut out {
        d.keep = !d.reasons.is_empty();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn kept(policy: &Retention, times: &[&str]) -> Vec<String> {
        let times: Vec<_> = times.iter().map(|s| t(s)).collect();
        let mut kept: Vec<String> = apply(policy, &times)
            .iter()
            .zip(&times)
            .filter(|(d, _)| d.keep)
            .map(|(_, t)| t.format("%Y-%m-%dT%H:%M").to_string())
            .collect();
        kept.sort();
        kept
    }

    const RUNS: &[&str] = &[
        "2025-12-31T23:00:00Z",
        "2026-01-01T01:00:00Z",
        "2026-01-01T01:30:00Z",
        "2026-01-01T09:00:00Z",
        "2026-01-02T09:00:00Z",
        "2026-01-05T09:00:00Z", // Monday: a new ISO week
        "2026-01-06T09:00:00Z",
        "2026-01-06T21:00:00Z",
        "2026-02-01T09:00:00Z",
        "2026-03-15T09:00:00Z",
        "2026-03-15T09:10:00Z",
    ];

    #[test]
    fn last_keeps_the_newest_n() {
        let p = Retention {
            last: Some(3),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, RUNS),
            ["2026-02-01T09:00", "2026-03-15T09:00", "2026-03-15T09:10"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_run_of_each_recent_day() {
        let p = Retention {
            daily: Some(4),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, RUNS),
            [
                "2026-01-05T09:00",
                "2026-01-06T21:00",
                "2026-02-01T09:00",
                "2026-03-15T09:10"
            ]
        );
    }

    #[test]
    fn hourly_weekly_monthly_yearly() {
        let hourly = Retention {
            hourly: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&hourly, RUNS),
            ["2026-02-01T09:00", "2026-03-15T09:10"]
        );
        let weekly = Retention {
            weekly: Some(3),
            ..Default::default()
        };
        // ISO weeks: 2026-W11 (Mar 15 is a Sunday), 2026-W05 (Feb 1, Sunday), 2026-W02.
        assert_eq!(
            kept(&weekly, RUNS),
            ["2026-01-06T21:00", "2026-02-01T09:00", "2026-03-15T09:10"]
        );
        let monthly = Retention {
            monthly: Some(12),
            ..Default::default()
        };
        assert_eq!(
            kept(&monthly, RUNS),
            [
                "2025-12-31T23:00",
                "2026-01-06T21:00",
                "2026-02-01T09:00",
                "2026-03-15T09:10"
            ]
        );
        let yearly = Retention {
            yearly: Some(5),
            ..Default::default()
        };
        assert_eq!(
            kept(&yearly, RUNS),
            ["2025-12-31T23:00", "2026-03-15T09:10"]
        );
    }

    #[test]
    fn within_is_relative_to_the_newest_run() {
        let p = Retention {
            within: Some(Duration::from_secs(45 * 86_400)),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, RUNS),
            ["2026-02-01T09:00", "2026-03-15T09:00", "2026-03-15T09:10"]
        );
    }

    #[test]
    fn rules_combine_and_say_why() {
        let p = Retention {
            last: Some(1),
            daily: Some(2),
            yearly: Some(2),
            ..Default::default()
        };
        let times: Vec<_> = RUNS.iter().map(|s| t(s)).collect();
        let d = apply(&p, &times);
        assert_eq!(d[10].reasons, ["newest", "last 1", "daily 1", "yearly 1"]);
        assert_eq!(d[8].reasons, ["daily 2"]);
        assert_eq!(d[0].reasons, ["yearly 2"]);
        assert!(!d[9].keep && d[9].reasons.is_empty());
        assert_eq!(d.iter().filter(|d| d.keep).count(), 3);
    }

    #[test]
    fn newest_is_always_kept_and_input_order_is_kept() {
        let p = Retention::default();
        let times = [t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z")];
        let d = apply(&p, &times);
        assert!(!d[0].keep);
        assert_eq!(d[1].reasons, ["newest"]);
        assert!(apply(&p, &[]).is_empty());
    }

    #[test]
    fn describe_and_humantime() {
        let p = Retention {
            last: Some(3),
            weekly: Some(4),
            within: Some(Duration::from_secs(2 * 86_400)),
            ..Default::default()
        };
        assert_eq!(p.describe(), "last 3, weekly 4, within 2d");
        assert_eq!(humantime(Duration::from_secs(90)), "90s");
        assert_eq!(humantime(Duration::from_secs(1_209_600)), "2w");
    }

    /// The date each calendar rule keeps a run until, and the latest of them.
    #[test]
    fn until_is_the_end_of_the_latest_calendar_rule() {
        let until = |p: Retention, at: &str| {
            let times = [t(at)];
            apply(&p, &times)[0]
                .until
                .map(|u| u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        let at = "2026-03-18T09:10:11Z"; // a Wednesday
        let one = |f: fn(&mut Retention)| {
            let mut p = Retention::default();
            f(&mut p);
            until(p, at)
        };
        assert_eq!(
            one(|p| p.hourly = Some(24)).unwrap(),
            "2026-03-19T09:00:00Z"
        );
        assert_eq!(one(|p| p.daily = Some(7)).unwrap(), "2026-03-25T00:00:00Z");
        assert_eq!(one(|p| p.weekly = Some(4)).unwrap(), "2026-04-13T00:00:00Z");
        assert_eq!(
            one(|p| p.monthly = Some(12)).unwrap(),
            "2027-03-01T00:00:00Z"
        );
        assert_eq!(one(|p| p.yearly = Some(3)).unwrap(), "2029-01-01T00:00:00Z");
        assert_eq!(
            one(|p| p.within = Some(Duration::from_secs(36 * 3600))).unwrap(),
            "2026-03-19T21:10:11Z"
        );
        assert_eq!(one(|p| p.last = Some(5)), None, "last has no date");
        let both = Retention {
            daily: Some(7),
            monthly: Some(2),
            ..Default::default()
        };
        assert_eq!(until(both, at).unwrap(), "2026-05-01T00:00:00Z");
        // Absurd counts stay within the calendar: no date rather than a panic.
        assert_eq!(one(|p| p.yearly = Some(u32::MAX)), None);
        // A deleted run has none.
        let p = Retention {
            last: Some(1),
            daily: Some(1),
            ..Default::default()
        };
        let times = [t("2026-03-17T09:00:00Z"), t(at)];
        assert_eq!(apply(&p, &times)[0].until, None);
    }
}
