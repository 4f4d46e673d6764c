//! The run's object list (`<run>.refs`): every object key a run references, in plain text.
//!
//! It reveals nothing about the data (object keys are hashes of ciphertext) and lets `gc`
//! and monitoring work without a secret key.
//!
//! ```text
//! coffer-refs 1
//! <64 hex digits>      one line per object, sorted, unique
//! end <count>
//! ```

use std::io::{BufRead, Write};

use crate::error::{Error, Result};
use crate::ids::ObjectKey;

const MAGIC: &str = "coffer-refs 1";

/// Writes the object list; `keys` must be sorted and unique.
pub fn write(
    out: &mut impl Write,
    keys: impl IntoIterator<Item = ObjectKey>,
) -> std::io::Result<()> {
    writeln!(out, "{MAGIC}")?;
    let mut n = 0u64;
    for k in keys {
        writeln!(out, "{k}")?;
        n += 1;
    }
    writeln!(out, "end {n}")
}

/// Reads an object list, checking its header and trailer; `what` names it in errors.
pub fn read(input: impl BufRead, what: &str) -> Result<Vec<ObjectKey>> {
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    let mut lines = input.lines();
    match lines.next() {
        Some(Ok(l)) if l == MAGIC => {}
        Some(Ok(l))
            if l.strip_prefix("coffer-refs ")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| v > 1) =>
        {
            return Err(corrupt(format!(
                "format {l:?} is newer than this coffer understands; upgrade coffer"
            )))
        }
        _ => return Err(corrupt("not a coffer object list".into())),
    }
    let mut keys = Vec::new();
    for line in lines {
        let line = line.map_err(|e| corrupt(e.to_string()))?;
        if let Some(n) = line.strip_prefix("end ") {
            if n.parse::<usize>().ok() != Some(keys.len()) {
                return Err(corrupt(format!(
                    "trailer says {n} objects, found {}",
                    keys.len()
                )));
            }
            return Ok(keys);
        }
        keys.push(line.parse()?);
    }
    Err(corrupt("truncated (no end line)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let keys = vec![ObjectKey::of(b"a"), ObjectKey::of(b"b")];
        let mut buf = Vec::new();
        write(&mut buf, keys.clone()).unwrap();
        assert_eq!(read(&buf[..], "r").unwrap(), keys);
        let cut = &buf[..buf.len() - 8];
        assert!(read(cut, "r").is_err());
    }
}
