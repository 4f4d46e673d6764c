//! Fuzzing every parser of untrusted input, on the stable toolchain: property tests that
//! mutate real coffer output (flipped, inserted, removed, repeated and cut bytes) and
//! random bytes, and require each parser to return (a value or an error), never panic.
//!
//! Seeds are made here by coffer's own writers: a metafile's text, a chunk message, a
//! metafile message, an object list, config.example.toml, size and duration strings,
//! escaped host names, run ids. Each target runs `COFFER_FUZZ_CASES` cases (256 by
//! default, a few seconds in all); run them longer with, e.g.,
//!
//! ```text
//! COFFER_FUZZ_CASES=200000 cargo test --release --lib fuzz_
//! ```
//!
//! Memory bounds are a property of the parsers' design (bounded lines, no compression
//! in chunks, output never longer than the input or the recorded size) and are tested
//! end to end under a memory limit (tests/hostile_store.rs, decompression bombs).

use std::io::{Read, Write};

use proptest::prelude::*;

use crate::crypto::{generate_key, keys, Decryptor, Encryptor, KeyAlgorithm};
use crate::format::metafile::{self, ChunkRef, Encoding, Entry, Header, Kind, Meta};
use crate::format::refs;
use crate::ids::{ChunkHash, ObjectKey, RunId};

fn cases() -> u32 {
    std::env::var("COFFER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One change to a seed; positions are taken modulo its length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Remove(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..256).prop_map(|(p, n)| Mutation::Repeat(p, n)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for m in mutations {
        let len = v.len().max(1);
        match m {
            Mutation::Flip(p, b) => {
                if !v.is_empty() {
                    v[p % len] ^= b;
                }
            }
            Mutation::Insert(p, bytes) => {
                let at = p % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(p, n) => {
                let at = p % len;
                let end = (at + n).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            Mutation::Truncate(p) => v.truncate(p % len),
            Mutation::Repeat(p, n) => {
                let at = p % len;
                let end = (at + n).min(v.len());
                if at < end {
                    let piece = v[at..end].to_vec();
                    v.splice(at..at, piece);
                }
            }
        }
    }
    v
}

/// A seed index and mutations, or random bytes.
fn input(seeds: usize) -> impl Strategy<Value = (Option<usize>, Vec<Mutation>, Vec<u8>)> {
    prop_oneof![
        4 => (0..seeds, proptest::collection::vec(mutation(), 1..6))
            .prop_map(|(i, m)| (Some(i), m, Vec::new())),
        1 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(|r| (None, Vec::new(), r)),
    ]
}

fn pick(
    seeds: &[Vec<u8>],
    (seed, mutations, random): &(Option<usize>, Vec<Mutation>, Vec<u8>),
) -> Vec<u8> {
    match seed {
        Some(i) => apply(&seeds[*i], mutations),
        None => random.clone(),
    }
}

fn sample_entries() -> Vec<Entry> {
    let meta = Meta {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: Some(b"al".to_vec()),
        group: None,
        mtime: 1_700_000_000,
        mtime_nsec: 5,
    };
    let chunk = ChunkRef {
        object: ObjectKey::of(b"pack"),
        offset: 0,
        length: 200,
        size: 3,
        hash: ChunkHash::of(b"abc"),
        encoding: Encoding::Raw,
    };
    vec![
        Entry {
            path: b".".to_vec(),
            kind: Kind::Dir,
            meta: meta.clone(),
        },
        Entry {
            path: b"a b\n".to_vec(),
            kind: Kind::File {
                size: 3,
                hash: ChunkHash::of(b"abc"),
                chunks: vec![chunk],
            },
            meta: meta.clone(),
        },
        Entry {
            path: b"l".to_vec(),
            kind: Kind::Symlink {
                target: b"/etc".to_vec(),
            },
            meta: meta.clone(),
        },
        Entry {
            path: b"h".to_vec(),
            kind: Kind::Hardlink {
                target: b"a b\n".to_vec(),
            },
            meta: meta.clone(),
        },
        Entry {
            path: b"d".to_vec(),
            kind: Kind::CharDev { major: 1, minor: 3 },
            meta,
        },
    ]
}

fn metafile_text() -> Vec<u8> {
    let header = Header {
        fields: vec![
            ("host".into(), "web1".into()),
            ("source".into(), "home".into()),
            ("run".into(), "20260101T000000Z-00000001".into()),
        ],
    };
    let mut w = metafile::Writer::new(Vec::new(), &header).unwrap();
    for e in sample_entries() {
        w.entry(&e).unwrap();
    }
    w.finish().unwrap().0
}

fn read_listing(bytes: &[u8]) {
    if let Ok(mut r) = metafile::Reader::new(bytes, "fuzz") {
        while let Ok(Some(_)) = r.next_entry() {}
    }
}

fn keys_pair() -> (Encryptor, Decryptor) {
    let key = generate_key("fuzz", KeyAlgorithm::Cv25519, None).unwrap();
    let certs = keys::parse_certs_for_test(&key.public_armored);
    let enc = Encryptor::from_certs(&certs).unwrap();
    let dec = keys::decryptor_from_bytes(&key.secret_armored, None).unwrap();
    (enc, dec)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn fuzz_metafile_text(i in input(1)) {
        read_listing(&pick(&[metafile_text()], &i));
    }

    #[test]
    fn fuzz_object_list(i in input(2)) {
        let mut v2 = Vec::new();
        let name = refs::RunName {
            run: "20260101T000000Z-00000001".into(),
            host: "web 1".into(),
            source: "home".into(),
        };
        let bounds = refs::Bounds {
            dedup_max_age: std::time::Duration::from_secs(604_800),
            max_run_time: std::time::Duration::from_secs(604_800),
        };
        let digest = refs::MetafileDigest { hash: ChunkHash::of(b"m"), bytes: 9, pieces: 1 };
        let mut keys = vec![ObjectKey::of(b"a"), ObjectKey::of(b"b")];
        keys.sort();
        let chain = refs::Chain::start().unwrap();
        let stats = refs::RunStats {
            files: 2,
            bytes: 10,
            bytes_new: 10,
            bytes_stored: 99,
            seconds: 1,
        };
        refs::write(&mut v2, &name, &bounds, &digest, &chain, Some(&stats), keys.clone()).unwrap();
        let v1 = format!(
            "coffer-refs 1\ndedup-max-age 1\nmax-run-time 2\n{}\n{}\nend 2\n",
            keys[0], keys[1]
        )
        .into_bytes();
        let bytes = pick(&[v2, v1], &i);
        let _ = refs::read(&bytes[..], "fuzz");
        let _ = refs::read_header(&bytes[..], "fuzz");
    }

    #[test]
    fn fuzz_chunk_and_metafile_messages(i in input(3)) {
        thread_local! {
            static SEEDS: (Decryptor, Vec<Vec<u8>>) = {
                let (enc, dec) = keys_pair();
                let session = enc.session().unwrap();
                let chunk = session.encrypt(b"chunk data").unwrap();
                let big = session.encrypt(&[7u8; 10_000]).unwrap();
                let mut w = enc.message_writer(Vec::new(), None).unwrap();
                w.write_all(&metafile_text()).unwrap();
                (dec, vec![chunk, big, w.finish().unwrap()])
            };
        }
        SEEDS.with(|(dec, seeds)| {
            let bytes = pick(seeds, &i);
            let _ = dec.open_chunk("fuzz", &bytes);
            let _ = crate::crypto::check_framing(&bytes);
            if let Ok(r) = dec.metafile_reader("fuzz", std::io::Cursor::new(bytes), &Default::default()) {
                let mut text = Vec::new();
                let _ = r.take(1 << 20).read_to_end(&mut text);
            }
        });
    }

    #[test]
    fn fuzz_config(i in input(1)) {
        let seed = include_bytes!("../config.example.toml").to_vec();
        if let Ok(text) = String::from_utf8(pick(&[seed], &i)) {
            let _ = crate::config::Config::parse(&text, std::path::Path::new("/etc/coffer/fuzz.toml"));
        }
    }

    #[test]
    fn fuzz_small_parsers(s in "\\PC{0,40}", i in input(4)) {
        let _ = crate::config::parse_size(&s);
        let _ = crate::config::parse_duration(&s);
        let _ = s.parse::<RunId>();
        let _ = s.parse::<ObjectKey>();
        let _ = crate::format::decode_field(&s);
        let _ = crate::store::layout::decode_segment(&s);
        let seeds = [
            b"1.5MiB".to_vec(),
            b"14d".to_vec(),
            b"20261125T012932Z-3f9a1c2e".to_vec(),
            crate::store::layout::encode_segment("my h\u{f6}st.example").into_bytes(),
        ];
        if let Ok(t) = String::from_utf8(pick(&seeds, &i)) {
            let _ = crate::config::parse_size(&t);
            let _ = crate::config::parse_duration(&t);
            let _ = t.parse::<RunId>();
            if let Some(decoded) = crate::store::layout::decode_segment(&t) {
                // Whatever decodes encodes to a name that decodes back to it.
                let again = crate::store::layout::encode_segment(&decoded);
                prop_assert_eq!(crate::store::layout::decode_segment(&again), Some(decoded));
            }
        }
    }
}
