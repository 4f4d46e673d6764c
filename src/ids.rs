//! Typed identifiers: plaintext chunk hashes, object keys and run ids.
//!
//! A [`ChunkHash`] is the BLAKE3 of plaintext and never leaves the encrypted metafile and
//! the local index. An [`ObjectKey`] is the BLAKE3 of stored (encrypted) bytes and is
//! public: it names objects on the target.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The BLAKE3 of `data`.
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }
            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Through a stack buffer: metafiles print two of these per chunk line.
                let mut buf = [0u8; 64];
                hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..16])
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                decode_hex32(s.as_bytes()).map(Self).ok_or_else(|| Error::Corrupt {
                    what: format!("{} {s:?}", stringify!($name)),
                    reason: "expected 64 hex digits".into(),
                })
            }
        }
    };
}

/// The value of each hex digit (either case), 0xFF for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// 64 hex digits as 32 bytes: a table lookup per digit (a metafile holds two hashes
/// per file, and `hex::decode_to_slice` made parsing them a fifth of reading a listing).
fn decode_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0F);
    }
    // Valid digits are below 16; any 0xFF sets the high bits.
    (bad < 16).then_some(out)
}

hash_id!(
    /// BLAKE3 of a chunk's (or a whole file's) plaintext.
    ChunkHash
);
hash_id!(
    /// BLAKE3 of an object's stored bytes; the object's name on the target.
    ObjectKey
);

/// A run's id: `YYYYMMDDTHHMMSSZ-RRRRRRRR` (UTC start time, 32 random bits in hex).
///
/// Unique per host and source: two runs in the same second differ in the random part.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RunId(String);

impl RunId {
    /// A fresh id for a run starting at `time`.
    pub fn new(time: chrono::DateTime<chrono::Utc>) -> Self {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).expect("the system random generator is available");
        RunId(format!(
            "{}-{}",
            time.format("%Y%m%dT%H%M%SZ"),
            hex::encode(r)
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time encoded in the id.
    pub fn time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let t = self.0.get(..16)?;
        chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ")
            .ok()
            .map(|n| n.and_utc())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = s.len() == 25
            && s.as_bytes()[15] == b'Z'
            && s.as_bytes()[16] == b'-'
            && s[17..].bytes().all(|b| b.is_ascii_hexdigit());
        let id = RunId(s.to_string());
        if ok && id.time().is_some() {
            Ok(id)
        } else {
            Err(Error::Usage(format!(
                "{s:?} is not a run id (expected e.g. 20261125T012932Z-3f9a1c2e; \
                 `coffer runs` lists them)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip() {
        let h = ObjectKey::of(b"abc");
        assert_eq!(h.to_hex().parse::<ObjectKey>().unwrap(), h);
        assert!("zz".parse::<ObjectKey>().is_err());
    }

    /// The table decoder against the hex crate on every byte in every position.
    #[test]
    fn hex_decoding_agrees_with_the_hex_crate() {
        let h = ChunkHash::of(b"xyz").to_hex();
        assert_eq!(h.to_uppercase().parse::<ChunkHash>().unwrap().to_hex(), h);
        for pos in 0..64 {
            for b in 0..=255u8 {
                let mut s = h.clone().into_bytes();
                s[pos] = b;
                let mut want = [0u8; 32];
                let want = hex::decode_to_slice(&s, &mut want).ok().map(|()| want);
                assert_eq!(decode_hex32(&s), want, "byte {b:#x} at {pos}");
            }
        }
        assert_eq!(decode_hex32(&h.as_bytes()[..63]), None);
        assert_eq!(decode_hex32(b""), None);
    }

    #[test]
    fn run_id_roundtrip_and_unique() {
        let now = chrono::Utc::now();
        let a = RunId::new(now);
        let b = RunId::new(now);
        assert_ne!(a, b);
        let parsed: RunId = a.as_str().parse().unwrap();
        assert_eq!(parsed, a);
        assert_eq!(a.time().unwrap().timestamp(), now.timestamp());
        assert!("2026-11-25".parse::<RunId>().is_err());
    }
}
