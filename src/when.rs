//! Points in time as people give them to choose a run (`--at`): an age (`3D`, `2W`,
//! `1M`, `12h`, as duplicity writes them), a date, or a date and time.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::config::InvalidValue;

/// Parses `--at WHEN` against `now`:
///
/// - `now`;
/// - an age: a duration as the config writes them (`30m`, `12h`, `3D`, `2W`, `1M` = 30
///   days, `1Y` = 365 days), meaning that long before `now`;
/// - a date, `2026-11-20`: the end of that day in UTC (23:59:59), so that the runs made
///   on that day count;
/// - a date and time in UTC, `2026-11-20T04:00Z`, `2026-11-20T04:00:30Z` (the `Z` may be
///   left out, or an offset such as `+01:00` given instead; a space may stand for `T`).
///
/// # Errors
///
/// [`InvalidValue`] saying which forms are accepted.
pub fn parse_when(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, InvalidValue> {
    let t = s.trim();
    let hint = "write an age (3D, 2W, 1M, 12h), a date (2026-11-20: the end of that day, \
                UTC) or a time (2026-11-20T04:00Z)";
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if t.starts_with(|c: char| c.is_ascii_digit()) && !t.contains('-') {
        let age =
            crate::config::parse_duration(t).map_err(|e| InvalidValue::new(format!("{e}")))?;
        let age = chrono::Duration::from_std(age)
            .map_err(|_| InvalidValue::new(format!("{s:?} is too long ago")))?;
        return now
            .checked_sub_signed(age)
            .ok_or_else(|| InvalidValue::new(format!("{s:?} is too long ago")));
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let end = day
            .and_hms_opt(23, 59, 59)
            .ok_or_else(|| InvalidValue::new(format!("{s:?}: {hint}")))?;
        return Ok(Utc.from_utc_datetime(&end));
    }
    let t = t.replacen(' ', "T", 1);
    if let Ok(at) = DateTime::parse_from_rfc3339(&t) {
        return Ok(at.with_timezone(&Utc));
    }
    for zoned in ["%Y-%m-%dT%H:%M%#z", "%Y-%m-%dT%H:%M%:z"] {
        if let Ok(at) = DateTime::parse_from_str(&t, zoned) {
            return Ok(at.with_timezone(&Utc));
        }
    }
    let bare = t.strip_suffix(['Z', 'z']).unwrap_or(&t);
    for plain in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(bare, plain) {
            return Ok(Utc.from_utc_datetime(&at));
        }
    }
    Err(InvalidValue::new(format!(
        "{s:?} is not a point in time; {hint}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Result<String, InvalidValue> {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        parse_when(s, now).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }

    #[test]
    fn ages_dates_and_times_as_people_write_them() {
        for (given, meant) in [
            ("now", "2026-12-03T12:00:00Z"),
            ("3D", "2026-11-30T12:00:00Z"),
            ("2W", "2026-11-19T12:00:00Z"),
            ("1M", "2026-11-03T12:00:00Z"),
            ("12h", "2026-12-03T00:00:00Z"),
            ("90m", "2026-12-03T10:30:00Z"),
            ("0s", "2026-12-03T12:00:00Z"),
            ("2026-11-20", "2026-11-20T23:59:59Z"),
            ("2026-11-20T04:00Z", "2026-11-20T04:00:00Z"),
            ("2026-11-20T04:00", "2026-11-20T04:00:00Z"),
            ("2026-11-20 04:00:30", "2026-11-20T04:00:30Z"),
            ("2026-11-20T04:00:30Z", "2026-11-20T04:00:30Z"),
            ("2026-11-20T05:00+01:00", "2026-11-20T04:00:00Z"),
            ("2026-11-20T05:00:00+01:00", "2026-11-20T04:00:00Z"),
        ] {
            assert_eq!(at(given).unwrap(), meant, "{given}");
        }
    }

    #[test]
    fn anything_else_is_refused_saying_what_to_write() {
        for bad in [
            "",
            "yesterday",
            "3 days",
            "2026-13-01",
            "2026-11-20T25:00Z",
            "-3D",
            "3X",
            "99999999999Y",
        ] {
            let e = at(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(at("yesterday").unwrap_err().to_string().contains("3D"));
    }
}
