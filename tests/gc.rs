//! prune and gc, end to end on a folder target: retention against runs with chosen
//! timestamps, gc deleting exactly the unreferenced objects, the stale-index hazard with
//! two hosts, and an interrupted backup. The safety bounds are set to seconds
//! (`dedup_max_age = "0s"`, `max_run_time = "4s"`: a grace period of 4 s) so that gc
//! deletes for real; the tests sleep past them.

mod util;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use util::*;

/// Longer than the grace period the bounds below give (4 s), with a margin for the
/// one-second resolution of the index's timestamps.
const PAST_GRACE: Duration = Duration::from_millis(5200);

/// Appends the short safety bounds (and `extra`) to the target section, the config's last.
fn short_bounds(fx: &Fixture, extra: &str) {
    let mut text = std::fs::read_to_string(&fx.config).unwrap();
    text += "dedup_max_age = \"0s\"\nmax_run_time = \"4s\"\npack_size = \"1MiB\"\n";
    text += extra;
    std::fs::write(&fx.config, text).unwrap();
}

fn coffer_json(fx: &Fixture, args: &[&str]) -> Value {
    let mut cmd = fx.cmd();
    cmd.args(args).arg("--json");
    run(cmd).ok().json()
}

/// The object keys a run's object list names.
fn refs_of(target: &Path, host: &str, run: &str) -> BTreeSet<String> {
    let path = target
        .join("runs")
        .join(host)
        .join(SOURCE)
        .join(format!("{run}.refs"));
    refs_keys(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
}

fn object_names(fx: &Fixture) -> BTreeSet<String> {
    fx.objects()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
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
        let refs = refs
            .replace(&format!("\nrun {real}\n"), &format!("\nrun {id}\n"))
            .replace(&format!("\nhost {HOST}\n"), &format!("\nhost {host}\n"));
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

#[test]
fn gc_after_prune_deletes_exactly_the_unreferenced_objects() {
    let fx = Fixture::new();
    short_bounds(&fx, "");
    let a = pseudo_random(1, 3 << 20);
    let b = pseudo_random(2, 200_000);
    let c = pseudo_random(3, 2 << 20);
    let d = pseudo_random(4, 500_000);
    write(&fx.src.join("a"), &a);
    write(&fx.src.join("b"), &b);
    fx.backup_ok();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::remove_file(fx.src.join("a")).unwrap();
    write(&fx.src.join("c"), &c);
    fx.backup_ok();
    std::thread::sleep(Duration::from_millis(1100));
    write(&fx.src.join("d"), &d);
    fx.backup_ok();
    let runs = run_ids(&fx);
    assert_eq!(runs.len(), 3);
    let refs: Vec<_> = runs.iter().map(|r| refs_of(&fx.target, HOST, r)).collect();
    let before = object_names(&fx);
    let union: BTreeSet<String> = refs.iter().flatten().cloned().collect();
    assert_eq!(before, union, "every object belongs to a run");

    let pruned = coffer_json(&fx, &["prune", "--keep-last", "2"]);
    assert_eq!(pruned[0]["deleted"], 1);
    let retained: BTreeSet<String> = refs[1].union(&refs[2]).cloned().collect();
    let garbage: BTreeSet<String> = before.difference(&retained).cloned().collect();
    assert!(
        !garbage.is_empty(),
        "file a alone filled packs only run 1 used"
    );

    std::thread::sleep(PAST_GRACE);
    let mut cmd = fx.cmd();
    cmd.args(["gc", "--grace", "3s"]);
    run(cmd)
        .expect(EXIT_ERROR)
        .stderr_has("shorter than dedup_max_age + max_run_time");
    let dry = coffer_json(&fx, &["gc", "--dry-run"]);
    assert_eq!(dry[0]["objects_deleted"], garbage.len(), "{dry:#}");
    assert_eq!(object_names(&fx), before, "a dry run deletes nothing");
    let done = coffer_json(&fx, &["gc"]);
    assert_eq!(done[0]["objects_deleted"], garbage.len(), "{done:#}");
    assert_eq!(done[0]["objects_referenced"], retained.len());
    assert_eq!(done[0]["runs"], 2);
    assert_eq!(
        object_names(&fx),
        retained,
        "exactly the unreferenced objects went"
    );

    restore_run_matches(&fx, &runs[1], &[("b", &b), ("c", &c)], "r2");
    restore_run_matches(&fx, &runs[2], &[("b", &b), ("c", &c), ("d", &d)], "r3");

    // A metafile without its object list (a put-only host can plant one): gc cannot
    // know what that run needs, says so, and goes on with the others: what only that run
    // referenced goes, what the others need stays.
    std::fs::remove_file(
        fx.target
            .join("runs")
            .join(HOST)
            .join(SOURCE)
            .join(format!("{}.refs", runs[1])),
    )
    .unwrap();
    let mut cmd = fx.cmd();
    cmd.arg("gc");
    run(cmd)
        .expect(EXIT_PARTIAL)
        .stderr_has("no object list")
        .stderr_has(&runs[1]);
    assert_eq!(object_names(&fx), refs[2]);
    restore_run_matches(
        &fx,
        &runs[2],
        &[("b", &b), ("c", &c), ("d", &d)],
        "r3-again",
    );
}

/// Brackup's hazard: host B's index lists chunks that host A's gc deleted. B's next run
/// must upload them again, not reference the deleted objects.
#[test]
fn another_hosts_stale_index_never_references_collected_objects() {
    let fx = Fixture::new();
    short_bounds(&fx, "");
    // Host B: its own state directory and source tree, the same target.
    let b_src = fx.path("b-src");
    let b_config = fx.path("b.toml");
    let text = std::fs::read_to_string(&fx.config)
        .unwrap()
        .replace(&format!("host = \"{HOST}\""), "host = \"hostb\"")
        .replace(&toml_str(&fx.state), &toml_str(&fx.path("b-state")))
        .replace(&toml_str(&fx.src), &toml_str(&b_src));
    std::fs::write(&b_config, text).unwrap();
    let backup_b = || {
        let out = fx.backup_using(&b_config).ok();
        out.json()["runs"][0]["run"].as_str().unwrap().to_string()
    };
    let dropped = pseudo_random(7, 1_500_000);
    let kept = pseudo_random(8, 700_000);
    write(&b_src.join("dropped"), &dropped);
    backup_b();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::remove_file(b_src.join("dropped")).unwrap();
    write(&b_src.join("kept"), &kept);
    backup_b();
    write(&fx.src.join("a"), b"host a's own data\n");
    fx.backup_ok();
    let objects = object_names(&fx);

    // Host A prunes every host's runs to the newest and collects.
    std::thread::sleep(PAST_GRACE);
    coffer_json(&fx, &["prune", "--keep-last", "1"]);
    let gc = coffer_json(&fx, &["gc"]);
    assert!(gc[0]["objects_deleted"].as_u64().unwrap() >= 1, "{gc:#}");
    assert!(object_names(&fx).len() < objects.len());

    // Host B backs up the dropped data again; its index still lists those chunks.
    write(&b_src.join("dropped"), &dropped);
    let run = backup_b();
    let on_target = object_names(&fx);
    let needed = refs_of(&fx.target, "hostb", &run);
    assert!(
        needed.is_subset(&on_target),
        "the new run references deleted objects: {:?}",
        needed.difference(&on_target).collect::<Vec<_>>()
    );
    let to = fx.path("restored-b");
    let mut cmd = util::coffer(&fx.home);
    cmd.arg("-c")
        .arg(&b_config)
        .args(["restore", "--key"])
        .arg(&fx.secret_key)
        .args(["--source", SOURCE, "--host", "hostb", "--to"])
        .arg(&to);
    let out = util::run(cmd).ok();
    assert_restored(
        &out,
        &to,
        &[("dropped", &dropped), ("kept", &kept)],
        "hostb's run",
    );
}

/// A backup killed after uploading packs but before its metafile; gc removes what it
/// left; the re-run must not reference any of it.
#[test]
fn an_interrupted_backup_then_gc_then_a_rerun_restores_completely() {
    let fx = Fixture::new();
    // Slow uploads so that the backup can be killed half way.
    short_bounds(
        &fx,
        "upload_rate_limit = \"1MiB\"\nupload_concurrency = 1\n",
    );
    let data: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), pseudo_random(20 + i, 1 << 20)))
        .collect();
    for (name, bytes) in &data {
        write(&fx.src.join(name), bytes);
    }
    let mut child = spawn_backup(&fx);
    wait_for_packs(&fx, &mut child, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = object_names(&fx);
    assert!(fx.runs().is_empty(), "the killed run never committed");
    // Too young: the grace period protects them (the run might still be committing).
    let young = coffer_json(&fx, &["gc"]);
    assert_eq!(young[0]["objects_deleted"], 0, "{young:#}");
    assert_eq!(young[0]["objects_young"], left.len());
    assert_eq!(object_names(&fx), left);

    std::thread::sleep(PAST_GRACE);
    let gc = coffer_json(&fx, &["gc"]);
    assert_eq!(gc[0]["objects_deleted"], left.len(), "{gc:#}");
    assert!(object_names(&fx).is_empty());

    let config = std::fs::read_to_string(&fx.config)
        .unwrap()
        .replace("upload_rate_limit = \"1MiB\"\n", "");
    std::fs::write(&fx.config, config).unwrap();
    let stats = fx.backup_ok();
    let run = stats["run"].as_str().unwrap();
    let needed = refs_of(&fx.target, HOST, run);
    assert!(needed.is_subset(&object_names(&fx)));
    let expected: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    restore_run_matches(&fx, run, &expected, "restored");
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
