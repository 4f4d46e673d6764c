//! Values written in a config file or on the command line: sizes ("4MiB", "1.5GB"),
//! durations ("3d", duplicity's "2W"), target URLs. Each parser fails with an
//! [`InvalidValue`] that says what to write instead.

use serde::Deserialize;

use crate::error::Error;

/// A value in a config file or on the command line that cannot be used; the message says
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub(super) String);

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
pub(super) struct Size(pub(super) u64);

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
pub(super) struct Dur(pub(super) std::time::Duration);

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

/// URL schemes coffer accepts.
pub(crate) const SCHEMES: &[&str] = &["file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

pub(crate) fn check_url(url: &str) -> std::result::Result<(), InvalidValue> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
