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
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`encode_field`].
pub fn decode_field(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
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
    }
}
