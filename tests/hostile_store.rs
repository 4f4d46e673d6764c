//! The threat model, played by an attacker who can write to the target (docs/FORMAT.md
//! section 9): a hostile store, or a broken-into host holding the public key. Each test
//! builds its attack itself, with the public key only: plaintext and compressed objects,
//! forged runs handing out setuid files and device nodes, decompression bombs, chunk
//! offsets that overflow, planted and truncated runs, hostile object lists.

mod util;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use util::forge::*;
use util::*;

/// A genuine run of a small tree; returns its id.
fn genuine_run(fx: &Fixture) -> String {
    write(&fx.src.join("a.txt"), b"genuine\n");
    write(&fx.src.join("docs/guide.txt"), b"read me\n");
    let stats = fx.backup_ok();
    stats["run"].as_str().unwrap().to_string()
}

/// A run forged with the public key: one file holding `data`, stored as a chunk message
/// made by `chunk`, in a metafile made by `metafile`. Returns the run id.
fn forge_one_file(
    forger: &Forger<'_>,
    id: &str,
    data: &[u8],
    chunk: Vec<u8>,
    metafile: impl Fn(&[u8]) -> Vec<u8>,
) {
    let (pack, at) = forger.plant_pack(&[chunk]);
    let mut listing = Listing::new(id);
    listing.file(
        b"a.txt",
        &meta(0o644, 0),
        data,
        (&pack, at[0].0, at[0].1),
        "raw",
    );
    forger.plant_run(id, &metafile(&listing.finish()), &refs(&[&pack]));
}

#[test]
fn a_plaintext_metafile_or_chunk_planted_on_the_target_is_refused() {
    let fx = Fixture::new();
    genuine_run(&fx);
    let forger = Forger::new(&fx);
    // No key at all: `gpg --store` makes bare literal packets, for the listing and the
    // chunk alike.
    let plain_id = run_id(4_000_000_000, "0000aaaa");
    forge_one_file(
        &forger,
        &plain_id,
        b"forged\n",
        forger.plaintext(b"forged\n"),
        |t| forger.plaintext(t),
    );
    let to = fx.path("out-plain");
    fx.restore_run(&plain_id, &to, &[])
        .expect(EXIT_ERROR)
        .stderr_has("not encrypted");
    assert!(!to.join("a.txt").exists(), "nothing restored");
    // A listing encrypted to the public key, around plaintext chunks.
    let mixed_id = run_id(4_000_000_100, "0000bbbb");
    forge_one_file(
        &forger,
        &mixed_id,
        b"forged\n",
        forger.plaintext(b"forged\n"),
        |t| forger.metafile(t),
    );
    let to = fx.path("out-mixed");
    fx.restore_run(&mixed_id, &to, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("not encrypted");
    assert!(
        !to.join("a.txt").exists(),
        "the forged file is not restored"
    );
    // The same run with a chunk encrypted to the public key restores: the checks above
    // are about the structure, not about who made it (signing is for that).
    let good_id = run_id(4_000_000_200, "0000cccc");
    forge_one_file(
        &forger,
        &good_id,
        b"forged\n",
        forger.chunk(b"forged\n"),
        |t| forger.metafile(t),
    );
    let to = fx.path("out-good");
    fx.restore_run(&good_id, &to, &[]).ok();
    assert_eq!(std::fs::read(to.join("a.txt")).unwrap(), b"forged\n");
}

#[test]
fn a_chunk_holding_compression_is_refused() {
    let fx = Fixture::new();
    genuine_run(&fx);
    let forger = Forger::new(&fx);
    let id = run_id(4_000_000_000, "0000dddd");
    forge_one_file(&forger, &id, b"x\n", forger.compressed(b"x\n"), |t| {
        forger.metafile(t)
    });
    fx.restore_run(&id, &fx.path("out"), &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("compressed data packet");
}

#[test]
fn a_forged_run_cannot_hand_out_setuid_files_or_device_nodes_unless_asked() {
    let fx = Fixture::new();
    genuine_run(&fx);
    let forger = Forger::new(&fx);
    let id = run_id(4_000_000_000, "0000eeee");
    let prog = b"#!/bin/sh\nid\n";
    let (pack, at) = forger.plant_pack(&[forger.chunk(prog)]);
    let mut listing = Listing::new(&id);
    listing
        .record(&format!("chardev mem {} 1 1", meta(0o666, 0)))
        .record(&format!("blockdev disk {} 8 0", meta(0o666, 0)))
        .record(&format!("fifo pipe {}", meta(0o600, 0)))
        .file(
            b"prog",
            &meta(0o6755, 0),
            prog,
            (&pack, at[0].0, at[0].1),
            "raw",
        )
        .record(&format!("symlink etc {} /etc", meta(0o777, 0)));
    forger.plant_run(&id, &forger.metafile(&listing.finish()), &refs(&[&pack]));

    let to = fx.path("out");
    let out = fx
        .restore_run(&id, &to, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("--devices")
        .stderr_has("--setid");
    for dev in ["mem", "disk"] {
        assert!(
            std::fs::symlink_metadata(to.join(dev)).is_err(),
            "{dev} was created\n{out}"
        );
    }
    let m = std::fs::metadata(to.join("prog")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "setuid and setgid dropped\n{out}");
    assert!(std::fs::symlink_metadata(to.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    // A symlink is data: restored as a link, never followed.
    assert_eq!(
        std::fs::read_link(to.join("etc")).unwrap(),
        Path::new("/etc")
    );

    if is_root() {
        let to = fx.path("out-asked");
        fx.restore_run(&id, &to, &["--setid", "--devices"]).ok();
        let m = std::fs::metadata(to.join("prog")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o6755);
        let d = std::fs::symlink_metadata(to.join("mem")).unwrap();
        assert!(d.file_type().is_char_device());
        assert_eq!(
            (
                nix::sys::stat::major(d.rdev()),
                nix::sys::stat::minor(d.rdev())
            ),
            (1, 1)
        );
    }
}

/// `coffer restore` under `prlimit --data=LIMIT` (heap and every private writable
/// mapping): a reader that inflated without bound would fail to allocate and abort.
fn restore_in_bounded_memory(fx: &Fixture, id: &str, to: &Path) -> Out {
    let mut cmd = clean_command("prlimit", &fx.home);
    cmd.arg(format!("--data={}", MEMORY_LIMIT))
        .arg(coffer_bin())
        .arg("-c")
        .arg(&fx.config)
        .arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--run", id, "--to"])
        .arg(to)
        .timeout(Duration::from_secs(120));
    run(cmd)
}

/// What a restore of a small run may use (it needs well under half of it).
const MEMORY_LIMIT: u64 = 192 << 20;
/// What each bomb inflates to: more than the limit.
const BOMB: usize = 320 << 20;

#[test]
fn decompression_bombs_are_refused_in_bounded_memory() {
    let fx = Fixture::new();
    let genuine = genuine_run(&fx);
    // The limit leaves a genuine restore room enough.
    restore_in_bounded_memory(&fx, &genuine, &fx.path("out-genuine")).ok();
    let forger = Forger::new(&fx);

    // A metafile whose one line inflates past the limit.
    let id = run_id(4_000_000_000, "00000001");
    let mut text = Listing::new(&id).finish();
    text.truncate(text.len() - "end 1 0\n".len());
    text.extend_from_slice(b"dir ");
    text.resize(text.len() + BOMB, b'a');
    forger.plant_run(&id, &forger.metafile(&text), &refs(&[]));
    restore_in_bounded_memory(&fx, &id, &fx.path("out-1"))
        .expect(EXIT_ERROR)
        .stderr_has("line too long");

    // A chunk holding a compressed packet that inflates past the limit.
    let zeros = vec![0u8; BOMB];
    let id = run_id(4_000_000_100, "00000002");
    forge_one_file(&forger, &id, b"small", forger.compressed(&zeros), |t| {
        forger.metafile(t)
    });
    restore_in_bounded_memory(&fx, &id, &fx.path("out-2"))
        .expect(EXIT_PARTIAL)
        .stderr_has("compressed data packet");

    // A zstd frame that inflates past the limit, listed as a small chunk.
    let mut zstd = clean_command("zstd", &fx.home);
    zstd.args(["-q", "-19", "-c"]).write_stdin(zeros);
    let frame = zstd.output().unwrap().stdout;
    assert!(frame.len() < 1 << 20);
    let id = run_id(4_000_000_200, "00000003");
    let (pack, at) = forger.plant_pack(&[forger.chunk(&frame)]);
    let mut listing = Listing::new(&id);
    listing.file(
        b"a.txt",
        &meta(0o644, 0),
        b"small",
        (&pack, at[0].0, at[0].1),
        "zstd",
    );
    forger.plant_run(&id, &forger.metafile(&listing.finish()), &refs(&[&pack]));
    restore_in_bounded_memory(&fx, &id, &fx.path("out-3"))
        .expect(EXIT_PARTIAL)
        .stderr_has("cannot decompress");
}

#[test]
fn chunk_offsets_that_overflow_or_overrun_fail_without_a_panic_or_a_hang() {
    let fx = Fixture::new();
    genuine_run(&fx);
    let forger = Forger::new(&fx);
    let (pack, at) = forger.plant_pack(&[forger.chunk(b"data")]);
    // offset + length past 2^64: the listing is refused before anything is written.
    let id = run_id(4_000_000_000, "0000f001");
    let mut listing = Listing::new(&id);
    listing.file(
        b"a.txt",
        &meta(0o644, 0),
        b"data",
        (&pack, u64::MAX - 10, 100),
        "raw",
    );
    forger.plant_run(&id, &forger.metafile(&listing.finish()), &refs(&[&pack]));
    let mut cmd = fx.cmd();
    cmd.arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--run", &id, "--to"])
        .arg(fx.path("out-1"))
        .timeout(Duration::from_secs(120));
    run(cmd).expect(EXIT_ERROR).stderr_has("offset + length");
    // A chunk beyond the pack's end, and one longer than any message may be: each file
    // fails, named, and the restore ends.
    let id = run_id(4_000_000_100, "0000f002");
    let mut listing = Listing::new(&id);
    listing
        .file(
            b"a.txt",
            &meta(0o644, 0),
            b"data",
            (&pack, at[0].1, 100),
            "raw",
        )
        .file(
            b"b.txt",
            &meta(0o644, 0),
            b"data",
            (&pack, 0, at[0].1 + 1),
            "raw",
        );
    forger.plant_run(&id, &forger.metafile(&listing.finish()), &refs(&[&pack]));
    let out = fx
        .restore_run(&id, &fx.path("out-2"), &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("a.txt");
    assert!(out.stderr.contains("b.txt"), "{out}");
}

/// Three genuine runs of a changing file; returns their ids, oldest first.
fn three_genuine_runs(fx: &Fixture) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..3 {
        write(&fx.src.join("a.txt"), format!("version {i}\n").as_bytes());
        let stats = fx.backup_ok();
        ids.push(stats["run"].as_str().unwrap().to_string());
    }
    ids
}

fn runs_json(fx: &Fixture) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut cmd = coffer(&fx.home);
    cmd.args(["runs", "--json", "--target", &fx.target_url()]);
    let out = run(cmd);
    let list = out.json().as_array().cloned().unwrap_or_default();
    (out.code, list)
}

fn status_of(list: &[serde_json::Value], id: &str) -> String {
    let r = list
        .iter()
        .find(|r| r["run"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list:#?}"));
    r["status"]["state"].as_str().unwrap().to_string()
}

fn prune_keep_last(fx: &Fixture, n: &str) -> serde_json::Value {
    let mut cmd = fx.cmd();
    cmd.args(["prune", "--keep-last", n, "--json"]);
    run(cmd).ok().json()
}

#[test]
fn runs_a_put_only_host_plants_never_push_genuine_runs_out() {
    let fx = Fixture::new();
    let genuine = three_genuine_runs(&fx);
    let dir = fx.target.join("runs").join(HOST).join(SOURCE);
    let forger = Forger::new(&fx);
    // Junk under future ids (create-only puts of anything suffice), and a well-formed
    // copy of a genuine run under a back-dated id: both claim times the target's own
    // clock contradicts.
    let future: Vec<String> = (0..3)
        .map(|i| run_id(4_100_000_000 + i, "00000f00"))
        .collect();
    for id in &future {
        forger.plant_run(id, b"junk", b"junk");
    }
    let back = run_id(1_700_000_000, "00000b00");
    std::fs::copy(
        dir.join(format!("{}.meta", genuine[2])),
        dir.join(format!("{back}.meta")),
    )
    .unwrap();
    let refs = std::fs::read_to_string(dir.join(format!("{}.refs", genuine[2]))).unwrap();
    write(
        &dir.join(format!("{back}.refs")),
        refs.replace(&genuine[2], &back).as_bytes(),
    );
    // And junk under a current id, which no clock contradicts.
    let now_id = run_id(chrono::Utc::now().timestamp(), "00000c00");
    forger.plant_run(&now_id, b"junk", b"junk");

    let (code, list) = runs_json(&fx);
    assert_eq!(code, Some(EXIT_PARTIAL), "{list:#?}");
    for id in &genuine {
        assert_eq!(status_of(&list, id), "ok");
    }
    for id in future.iter().chain([&back]) {
        assert_eq!(status_of(&list, id), "suspicious", "{id}");
    }
    assert_eq!(status_of(&list, &now_id), "damaged");

    // prune --keep-last 3 keeps the three genuine runs and leaves the others alone.
    let report = prune_keep_last(&fx, "3");
    assert_eq!(report[0]["deleted"], 0, "{report:#}");
    // --keep-last 1: only the oldest genuine run goes.
    let report = prune_keep_last(&fx, "1");
    assert_eq!(report[0]["deleted"], 2, "{report:#}");
    let left: Vec<String> = fx
        .runs()
        .iter()
        .map(|r| r["run"].as_str().unwrap().to_string())
        .collect();
    assert!(
        left.contains(&genuine[2]),
        "the newest genuine run is kept: {left:?}"
    );
    for id in future.iter().chain([&back, &now_id]) {
        assert!(left.contains(id), "prune never deletes a flagged run: {id}");
    }
    // Restore by default takes the newest genuine run, and says what it skipped.
    let to = fx.path("out");
    let out = fx.restore(&to, &[]).ok();
    assert!(out.stderr.contains(&future[0]), "{out}");
    assert_eq!(std::fs::read(to.join("a.txt")).unwrap(), b"version 2\n");
}

#[test]
fn a_truncated_metafile_is_damaged_and_never_the_newest() {
    let fx = Fixture::new();
    let genuine = three_genuine_runs(&fx);
    let meta = fx
        .target
        .join("runs")
        .join(HOST)
        .join(SOURCE)
        .join(format!("{}.meta", genuine[2]));
    let len = std::fs::metadata(&meta).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let (code, list) = runs_json(&fx);
    assert_eq!(code, Some(EXIT_PARTIAL));
    assert_eq!(status_of(&list, &genuine[2]), "damaged");
    let reason = list
        .iter()
        .find(|r| r["run"] == genuine[2].as_str())
        .unwrap()["status"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("truncated"), "{reason}");
    // prune --keep-last 1 keeps the newest good run, not the damaged one alone.
    let report = prune_keep_last(&fx, "1");
    assert_eq!(report[0]["deleted"], 1, "{report:#}");
    let left: Vec<String> = fx
        .runs()
        .iter()
        .map(|r| r["run"].as_str().unwrap().to_string())
        .collect();
    assert!(
        left.contains(&genuine[1]) && left.contains(&genuine[2]),
        "{left:?}"
    );
    let to = fx.path("out");
    fx.restore(&to, &[]).ok();
    assert_eq!(std::fs::read(to.join("a.txt")).unwrap(), b"version 1\n");
}

#[test]
fn object_lists_cannot_stop_gc_or_stretch_its_grace_period() {
    let fx = Fixture::new();
    genuine_run(&fx);
    let forger = Forger::new(&fx);
    // A metafile without an object list, and an object list claiming settings no config
    // allows (they would make the grace period 31 years).
    let lone = run_id(chrono::Utc::now().timestamp(), "0000aa01");
    let dir = fx.target.join("runs").join(HOST).join(SOURCE);
    write(&dir.join(format!("{lone}.meta")), b"junk");
    let greedy = run_id(chrono::Utc::now().timestamp(), "0000aa02");
    let mut refs = String::from_utf8(refs(&[])).unwrap();
    refs = refs.replace("dedup-max-age 604800", "dedup-max-age 999999999");
    forger.plant_run(&greedy, b"junk", refs.as_bytes());
    let mut cmd = fx.cmd();
    cmd.args(["gc", "--dry-run", "--json"]);
    let out = run(cmd)
        .expect(EXIT_PARTIAL)
        .stderr_has(&lone)
        .stderr_has("more than any valid config allows");
    let stats = &out.json()[0];
    assert_eq!(stats["grace_secs"], 14 * 86_400, "{stats:#}");
}
