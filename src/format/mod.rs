//! Versioned on-store formats: the metafile (one per run) and the run's object list.
//! Bytes in, bytes out; no store or file-system access here. docs/FORMAT.md is the
//! specification these modules implement.

pub mod metafile;
pub mod refs;

/// Percent-encodes arbitrary bytes so they fit in one space-separated field: every byte
/// outside `!`..=`~`, and `%` itself, becomes `%XX`. A lone `-` is encoded as `%2D` so it
/// cannot be mistaken for "absent".
pub fn encode_field(bytes: &[u8]) -> String {
    if bytes == b"-" {
        return "%2D".into();
    }
    if bytes.is_empty() {
        return "%".into(); // never produced for paths; marks an empty string
    }
    escape(bytes, b'%', |b| (0x21..=0x7e).contains(&b) && b != b'%')
}

/// Inverse of [`encode_field`].
pub fn decode_field(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    unescape(s, b'%')
}

/// Writes each byte `keep` accepts as itself and every other as `marker` and two
/// uppercase hex digits. The one escaping of every name coffer writes: fields of the
/// metafile and object list (`%XX`) and segments of store paths (`+XX`).
pub(crate) fn escape(bytes: &[u8], marker: u8, keep: impl Fn(u8) -> bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "{}{b:02X}", marker as char);
        }
    }
    out
}

/// Inverse of [`escape`]: `None` unless every `marker` is followed by two hex digits.
pub(crate) fn unescape(s: &str, marker: u8) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == marker {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn field_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let enc = encode_field(&bytes);
            prop_assert!(!enc.is_empty());
            prop_assert!(enc.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            prop_assert_eq!(decode_field(&enc).unwrap(), bytes);
        }
    }

    #[test]
    fn awkward_names() {
        assert_eq!(encode_field(b"a b\nc%"), "a%20b%0Ac%25");
        assert_eq!(encode_field(b"-"), "%2D");
        assert_eq!(decode_field("%zz"), None);
        // from_str_radix alone would take a sign: "%+1" is not an escape.
        assert_eq!(decode_field("%+1"), None);
        assert_eq!(unescape("a+-1", b'+'), None);
        assert_eq!(decode_field("%4"), None);
    }
}
