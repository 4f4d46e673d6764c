//! `coffer bench`: every section is there and the figures agree with the input. No timing
//! is asserted (the machine may be busy), only that each rate was measured.

mod util;

use serde_json::Value;
use util::*;

const SIZE: u64 = 8 << 20;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

#[track_caller]
fn positive_rate(v: &Value, what: &str) {
    let rate = num(v, "mb_per_sec");
    assert!(
        rate > 0.0 && rate.is_finite(),
        "{what}: rate {rate} in {v:#}"
    );
    assert!(num(v, "median_secs") > 0.0, "{what}: {v:#}");
}

#[test]
fn generated_input_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = coffer(dir.path());
    cmd.args(["bench", "--size", "8MiB", "--json"]);
    let out = run(cmd).ok();
    let r = out.json();

    assert_eq!(r["input"]["bytes"].as_u64(), Some(SIZE), "{out}");
    assert_eq!(r["input"]["generated"], true);
    let files = r["input"]["files"].as_u64().unwrap();
    assert!(files >= 2, "half random, half text: {}", r["input"]);
    assert!(r["cores"].as_u64().unwrap() >= 1);
    assert!(r["repetitions"].as_u64().unwrap() >= 1);

    // Chunking: both variants, at least three settings, counts that fit the bounds.
    let chunking = r["chunking"].as_array().expect("chunking is a list");
    let mut variants = std::collections::BTreeSet::new();
    let mut settings = std::collections::BTreeSet::new();
    let mut default_chunks = None;
    for c in chunking {
        let (min, avg, max) = (num(c, "min"), num(c, "avg"), num(c, "max"));
        variants.insert(c["variant"].as_str().unwrap().to_string());
        settings.insert((min as u64, avg as u64, max as u64));
        positive_rate(&c["throughput"], "chunking");
        let count = num(c, "chunks");
        let size = SIZE as f64;
        assert!(
            count >= (size / max).ceil(),
            "fewer chunks than size/max: {c:#}"
        );
        // Every chunk but a file's last is at least min.
        assert!(count <= (size / min).floor() + files as f64, "{c:#}");
        let s = &c["sizes"];
        assert!(
            num(s, "largest") <= max && num(s, "smallest") > 0.0,
            "{c:#}"
        );
        assert!(num(s, "smallest") <= num(s, "median") && num(s, "median") <= num(s, "p90"));
        assert!(num(s, "p90") <= num(s, "largest"), "{c:#}");
        assert!((num(s, "average") * count - size).abs() < 1.0, "{c:#}");
        if c["backup_default"] == true {
            assert_eq!(c["variant"], "v2020");
            assert_eq!((min, avg, max), (262144.0, 1048576.0, 4194304.0));
            assert!(
                default_chunks.replace(count as u64).is_none(),
                "one default"
            );
        }
    }
    assert!(
        variants.contains("v2016") && variants.contains("v2020"),
        "{variants:?}"
    );
    assert!(settings.len() >= 3, "{settings:?}");
    let default_chunks = default_chunks.expect("the setting backup uses is marked");

    positive_rate(&r["hashing"], "hashing");

    let c = &r["compression"];
    positive_rate(&c["throughput"], "compression");
    assert_eq!(c["chunks"].as_u64(), Some(default_chunks));
    let compressed = c["chunks_compressed"].as_u64().unwrap();
    assert!(
        compressed > 0 && compressed < default_chunks,
        "text compresses, random data does not: {c:#}"
    );
    assert!(
        num(c, "ratio") > 1.2 && num(c, "bytes_out") < SIZE as f64,
        "{c:#}"
    );

    let e = &r["encryption"];
    for k in ["one_core", "all_cores", "seal_all_cores"] {
        positive_rate(&e[k], k);
    }

    let p = &r["pipeline"];
    positive_rate(&p["throughput"], "pipeline");
    assert!(num(p, "of_encryption_all_cores") > 0.0, "{p:#}");
    assert!(num(p, "bytes_stored") > 0.0, "{p:#}");
    assert_eq!(p["bytes_read"].as_u64(), Some(SIZE), "{p:#}");
    assert_eq!(p["files"].as_u64(), Some(files), "{p:#}");
    assert_eq!(
        p["chunks"].as_u64(),
        Some(default_chunks),
        "backup cuts the chunks bench measured: {p:#}"
    );
    assert_eq!(p["chunks_new"].as_u64(), Some(default_chunks), "{p:#}");

    // As much pseudo-random data to a folder target: nothing compresses or repeats.
    let f = &r["incompressible_to_folder"];
    positive_rate(&f["throughput"], "incompressible to a folder");
    assert!(num(f, "of_encryption_all_cores") > 0.0, "{f:#}");
    assert_eq!(f["bytes_read"].as_u64(), Some(SIZE), "{f:#}");
    assert_eq!(f["chunks_new"], f["chunks"], "{f:#}");
    assert!(num(f, "bytes_stored") > SIZE as f64, "stored whole: {f:#}");
    assert!(num(f, "objects_stored") >= 2.0, "a pack and the run: {f:#}");

    // The ceiling is what the reported stage figures make of it, and the ratio is the
    // whole backup's speed over it.
    for (p, input_rates) in [(p, true), (f, false)] {
        let c = &p["ceiling"];
        let sum: f64 = [
            "chunking",
            "hashing",
            "compression",
            "encryption",
            "pack_hashing",
        ]
        .iter()
        .map(|k| num(c, k))
        .sum();
        let cores = num(c, "cores");
        assert_eq!(cores, num(&r, "cores"), "{c:#}");
        let ceiling = num(c, "mb_per_sec");
        assert!((ceiling - cores / sum).abs() <= 1e-9 * ceiling, "{c:#}");
        let of = num(&p["throughput"], "mb_per_sec") / ceiling;
        assert!((num(p, "of_ceiling") - of).abs() < 1e-9, "{p:#}");
        assert!(of > 0.0 && of.is_finite(), "{p:#}");
        let stored = num(p, "bytes_stored") / SIZE as f64;
        assert!((num(c, "stored_per_byte") - stored).abs() < 1e-9, "{c:#}");
        let h = num(c, "hashes_per_byte");
        assert!((1.0..=2.0).contains(&h), "{c:#}");
        if input_rates {
            // The stage figures of the input, each per MB of input.
            let per_mb = |v: &Value| 1.0 / num(v, "mb_per_sec");
            let hash = per_mb(&r["hashing"]);
            assert!((num(c, "hashing") - hash * h).abs() < 1e-9, "{c:#}");
            assert!(
                (num(c, "pack_hashing") - hash * stored).abs() < 1e-9,
                "{c:#}"
            );
            let compress = per_mb(&r["compression"]["throughput"]);
            assert!((num(c, "compression") - compress).abs() < 1e-9, "{c:#}");
        } else {
            // Random data: nothing compresses, files of 16 MiB are hashed twice.
            assert!(stored > 1.0, "{c:#}");
            assert!(h > 1.5, "{c:#}");
        }
    }
}

#[test]
fn directory_input_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let big: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&src.join("a/big"), &big);
    write(&src.join("a/small"), b"small file\n");
    write(&src.join("b"), b"another\n");
    std::os::unix::fs::symlink("b", src.join("link")).unwrap();
    let mut cmd = coffer(dir.path());
    cmd.arg("bench").arg(&src).arg("--json");
    let out = run(cmd).ok();
    let r = out.json();
    let bytes = big.len() as u64 + 11 + 8;
    assert_eq!(r["input"]["bytes"].as_u64(), Some(bytes), "{out}");
    assert_eq!(r["input"]["files"].as_u64(), Some(3), "{out}");
    assert_eq!(r["input"]["generated"], false);
    assert_eq!(r["pipeline"]["files"].as_u64(), Some(3), "{out}");
    assert_eq!(r["pipeline"]["bytes_read"].as_u64(), Some(bytes), "{out}");

    let mut cmd = coffer(dir.path());
    cmd.args(["bench", "--size", "1KiB"]);
    run(cmd).expect(EXIT_ERROR).stderr_has("between");
    let mut cmd = coffer(dir.path());
    cmd.arg("bench").arg(&src).args(["--size", "8MiB"]);
    run(cmd).expect(2);
    let mut cmd = coffer(dir.path());
    cmd.arg("bench").arg(dir.path().join("missing"));
    run(cmd).expect(EXIT_ERROR).stderr_has("missing");
}
