//! prune and gc on a folder target, where a test can set what the store records: retention
//! against runs with chosen timestamps, and gc while a backup uploads. The scenarios that
//! any target kind runs (gc after prune, the stale-index hazard with two hosts, an
//! interrupted backup) are in tests/scenarios.rs.

mod util;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::time::Duration;

use serde_json::Value;
use util::*;

fn coffer_json(fx: &Fixture, args: &[&str]) -> Value {
    let mut cmd = fx.cmd();
    cmd.args(args).arg("--json");
    run(cmd).ok().json()
}

fn run_ids(fx: &Fixture) -> Vec<String> {
    fx.runs()
        .iter()
        .map(|r| r["run"].as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn restore_run_matches(fx: &Fixture, run: &str, expected: &[(&str, &[u8])], dest: &str) {
    let to = fx.path(dest);
    let out = fx.restore(&to, &[OsStr::new("--run"), OsStr::new(run)]);
    assert_restored(&out.ok(), &to, expected, &format!("run {run}"));
}

#[test]
fn prune_keeps_exactly_what_the_rules_say() {
    let fx = Fixture::new();
    write(&fx.src.join("f"), b"some data\n");
    fx.backup_ok();
    let real = run_ids(&fx).remove(0);
    // Runs with chosen start times: copies of the real run's files under other ids,
    // their object lists naming them, stored (as the folder target's modification times
    // say) a minute after they claim to have started.
    let dir = |host: &str| fx.target.join("runs").join(host).join(SOURCE);
    let plant = |host: &str, id: &str| {
        std::fs::create_dir_all(dir(host)).unwrap();
        let meta = dir(host).join(format!("{id}.meta"));
        std::fs::copy(dir(HOST).join(format!("{real}.meta")), &meta).unwrap();
        let refs = std::fs::read_to_string(dir(HOST).join(format!("{real}.refs"))).unwrap();
        // Copies are forks of one chain: plant them as runs of an older coffer, whose
        // object lists (version 2) had no chain line.
        let refs: String = refs
            .replace(&format!("\nrun {real}\n"), &format!("\nrun {id}\n"))
            .replace(&format!("\nhost {HOST}\n"), &format!("\nhost {host}\n"))
            .replace("coffer-refs 3\n", "coffer-refs 2\n")
            .lines()
            .filter(|l| !l.starts_with("chain "))
            .map(|l| format!("{l}\n"))
            .collect();
        write(&dir(host).join(format!("{id}.refs")), refs.as_bytes());
        let started = chrono::NaiveDateTime::parse_from_str(&id[..16], "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc()
            .timestamp();
        set_mtime(&meta, started + 60, 0);
    };
    let ours = [
        "20250101T120000Z-00000001",
        "20251230T080000Z-00000002",
        "20251231T080000Z-00000003",
        "20251231T200000Z-00000004",
        "20260101T010000Z-00000005",
        "20260101T020000Z-00000006",
    ];
    // Another host with a source of the same name: counted apart.
    let theirs = ["20240101T000000Z-0000000a", "20240102T000000Z-0000000b"];
    for (host, id) in ours
        .map(|id| (HOST, id))
        .iter()
        .chain(&theirs.map(|id| ("otherhost", id)))
    {
        plant(host, id);
    }
    std::fs::remove_file(dir(HOST).join(format!("{real}.meta"))).unwrap();
    std::fs::remove_file(dir(HOST).join(format!("{real}.refs"))).unwrap();

    let dry = coffer_json(
        &fx,
        &[
            "prune",
            "--keep-daily",
            "2",
            "--keep-yearly",
            "2",
            "--dry-run",
        ],
    );
    let mut kept = BTreeSet::new();
    let mut why = Vec::new();
    for g in dry[0]["groups"].as_array().unwrap() {
        for r in g["runs"].as_array().unwrap() {
            if r["keep"].as_bool().unwrap() {
                kept.insert(r["run"].as_str().unwrap().to_string());
                why.push(format!("{} {}", r["run"], r["reasons"]));
            }
        }
    }
    let expected: BTreeSet<String> = [
        // yearly 2 (2025's newest run)
        "20251231T200000Z-00000004",
        // newest, daily 1 and yearly 1
        "20260101T020000Z-00000006",
        // otherhost: its own newest, daily 1, yearly 1; daily 2
        "20240101T000000Z-0000000a",
        "20240102T000000Z-0000000b",
    ]
    .map(String::from)
    .into();
    assert_eq!(kept, expected, "{why:#?}");
    let all_metas = || -> usize {
        [HOST, "otherhost"]
            .iter()
            .map(|h| {
                std::fs::read_dir(dir(h))
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().path().extension() == Some(OsStr::new("meta")))
                    .count()
            })
            .sum()
    };
    assert_eq!(all_metas(), 8, "a dry run deletes nothing");
    let text = {
        let mut cmd = fx.cmd();
        cmd.args([
            "prune",
            "--keep-daily",
            "2",
            "--keep-yearly",
            "2",
            "--dry-run",
        ]);
        run(cmd).ok().stdout
    };
    assert!(
        text.contains("delete  20250101T120000Z-00000001")
            && text.contains("keep    20260101T020000Z-00000006  newest, daily 1, yearly 1"),
        "{text}"
    );

    // Rules from the config apply when the command line gives none.
    let config = std::fs::read_to_string(&fx.config).unwrap();
    let with_rules = config.replace(
        "targets = [\"local\"]\n",
        "targets = [\"local\"]\nkeep_daily = 2\nkeep_yearly = 2\n",
    );
    assert_ne!(config, with_rules);
    std::fs::write(&fx.config, with_rules).unwrap();
    let done = coffer_json(&fx, &["prune"]);
    assert_eq!(done[0]["deleted"], 4, "{done:#}");
    let left: BTreeSet<String> = run_ids(&fx).into_iter().collect();
    assert_eq!(left, expected);
    for id in ["20250101T120000Z-00000001", "20260101T010000Z-00000005"] {
        assert!(
            !dir(HOST).join(format!("{id}.refs")).exists(),
            "{id}.refs deleted too"
        );
    }
}

#[test]
fn prune_without_rules_or_with_zero_counts_is_refused() {
    let fx = Fixture::new();
    write(&fx.src.join("f"), b"x");
    fx.backup_ok();
    let mut cmd = fx.cmd();
    cmd.arg("prune");
    run(cmd).expect(EXIT_ERROR).stderr_has("no retention rules");
    let mut cmd = fx.cmd();
    cmd.args(["prune", "--keep-last", "0"]);
    run(cmd).expect(2);
    assert_eq!(fx.runs().len(), 1);
}

/// `coffer backup` in the background.
fn spawn_backup(fx: &Fixture) -> std::process::Child {
    std::process::Command::new(coffer_bin())
        .env_clear()
        .env("HOME", &fx.home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("-c")
        .arg(&fx.config)
        .args(["backup", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the target holds `n` packs while `child` is still running.
fn wait_for_packs(fx: &Fixture, child: &mut std::process::Child, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fx.objects().len() < n {
        assert!(std::time::Instant::now() < deadline, "no pack was uploaded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended too early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// gc while a backup uploads: the packs the run has uploaded are referenced by nothing
/// yet, and must survive (they are younger than the grace period).
#[test]
fn gc_during_a_backup_keeps_what_the_backup_uploaded() {
    let fx = Fixture::new();
    let mut text = std::fs::read_to_string(&fx.config).unwrap();
    text += "dedup_max_age = \"0s\"\nmax_run_time = \"60s\"\npack_size = \"1MiB\"\n\
             upload_rate_limit = \"1MiB\"\nupload_concurrency = 1\n";
    std::fs::write(&fx.config, text).unwrap();
    let data: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("f{i}"), pseudo_random(40 + i, 1 << 20)))
        .collect();
    for (name, bytes) in &data {
        write(&fx.src.join(name), bytes);
    }
    let mut child = spawn_backup(&fx);
    wait_for_packs(&fx, &mut child, 2);
    let during = coffer_json(&fx, &["gc"]);
    assert_eq!(
        during[0]["runs"], 0,
        "the run is not committed yet: {during:#}"
    );
    assert!(
        during[0]["objects_young"].as_u64().unwrap() >= 2,
        "{during:#}"
    );
    assert_eq!(during[0]["objects_deleted"], 0);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_ids(&fx).remove(0);
    let expected: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    restore_run_matches(&fx, &run, &expected, "restored");
}
