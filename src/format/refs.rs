//! The run's object list (`<run>.refs`): every object key a run references, in plain text.
//!
//! It reveals nothing about the data (object keys are hashes of ciphertext) and lets `gc`
//! and monitoring work without a secret key.
//!
//! ```text
//! coffer-refs 1
//! dedup-max-age <seconds>   the backup's `dedup_max_age` setting
//! max-run-time <seconds>    the backup's `max_run_time` setting
//! <64 hex digits>           one line per object, sorted, unique
//! end <count>
//! ```
//!
//! The two settings let `gc` check that its grace period covers every backup's bounds
//! (docs/FORMAT.md, "Garbage collection").

use std::io::{BufRead, Write};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ids::ObjectKey;

const MAGIC: &str = "coffer-refs 1";

/// The backup settings an object list records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The run's `dedup_max_age`.
    pub dedup_max_age: Duration,
    /// The run's `max_run_time`.
    pub max_run_time: Duration,
}

impl Bounds {
    /// The shortest grace period gc may use for runs made with these bounds.
    pub fn min_grace(&self) -> Duration {
        self.dedup_max_age + self.max_run_time
    }
}

/// Writes the object list; `keys` must be sorted and unique.
pub fn write(
    out: &mut impl Write,
    bounds: &Bounds,
    keys: impl IntoIterator<Item = ObjectKey>,
) -> std::io::Result<()> {
    writeln!(out, "{MAGIC}")?;
    writeln!(out, "dedup-max-age {}", bounds.dedup_max_age.as_secs())?;
    writeln!(out, "max-run-time {}", bounds.max_run_time.as_secs())?;
    let mut n = 0u64;
    for k in keys {
        writeln!(out, "{k}")?;
        n += 1;
    }
    writeln!(out, "end {n}")
}

/// Reads an object list, checking its header and trailer, into memory; `what` names it
/// in errors.
pub fn read(input: impl BufRead, what: &str) -> Result<(Bounds, Vec<ObjectKey>)> {
    let mut keys = Vec::new();
    let bounds = read_each(input, what, |k| {
        keys.push(k);
        Ok(())
    })?;
    Ok((bounds, keys))
}

/// Reads an object list, handing each key to `each` as it is read (memory stays bounded
/// however long the list). Returns the bounds once the trailer checked out; on error,
/// `each` may have seen some keys.
pub fn read_each(
    input: impl BufRead,
    what: &str,
    mut each: impl FnMut(ObjectKey) -> Result<()>,
) -> Result<Bounds> {
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    let mut lines = input.lines();
    let mut next = || -> Result<String> {
        match lines.next() {
            Some(Ok(l)) => Ok(l),
            Some(Err(e)) => Err(corrupt(e.to_string())),
            None => Err(corrupt("truncated (no end line)".into())),
        }
    };
    match next()? {
        l if l == MAGIC => {}
        l if l
            .strip_prefix("coffer-refs ")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v > 1) =>
        {
            return Err(corrupt(format!(
                "format {l:?} is newer than this coffer understands; upgrade coffer"
            )))
        }
        _ => return Err(corrupt("not a coffer object list".into())),
    }
    let mut setting = |name: &str| -> Result<Duration> {
        let line = next()?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| corrupt(format!("expected \"{name} <seconds>\", found {line:?}")))
    };
    let bounds = Bounds {
        dedup_max_age: setting("dedup-max-age")?,
        max_run_time: setting("max-run-time")?,
    };
    let mut count = 0usize;
    let mut last: Option<ObjectKey> = None;
    loop {
        let line = next()?;
        if let Some(n) = line.strip_prefix("end ") {
            if n.parse::<usize>().ok() != Some(count) {
                return Err(corrupt(format!("trailer says {n} objects, found {count}")));
            }
            return Ok(bounds);
        }
        let key: ObjectKey = line.parse()?;
        if last.is_some_and(|l| l >= key) {
            return Err(corrupt("object keys are not sorted and unique".into()));
        }
        last = Some(key);
        count += 1;
        each(key)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let mut keys = vec![ObjectKey::of(b"a"), ObjectKey::of(b"b")];
        keys.sort();
        let bounds = Bounds {
            dedup_max_age: Duration::from_secs(60),
            max_run_time: Duration::from_secs(7),
        };
        let mut buf = Vec::new();
        write(&mut buf, &bounds, keys.clone()).unwrap();
        assert_eq!(read(&buf[..], "r").unwrap(), (bounds, keys.clone()));
        assert_eq!(bounds.min_grace(), Duration::from_secs(67));
        let mut unsorted = Vec::new();
        write(&mut unsorted, &bounds, keys.iter().rev().copied()).unwrap();
        assert!(read(&unsorted[..], "r").is_err());
        let cut = &buf[..buf.len() - 8];
        assert!(read(cut, "r").is_err());
    }
}
