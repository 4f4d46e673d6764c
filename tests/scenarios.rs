//! Scenarios written once and run against every kind of target (tests/util/target.rs):
//! backup and restore, prune then gc deleting exactly the unreferenced objects, the
//! stale-index hazard with two hosts, a backup killed half way, and one interrupted. Each runs as
//! `<scenario>::folder`, `::s3`, `::azure` and `::gcs`; the backups use the put-only credential,
//! prune, gc and restore the admin's.
//!
//! The safety bounds are seconds (`dedup_max_age = "0s"`, `max_run_time = "4s"`: a grace
//! period of 4 s) so that gc deletes for real; the tests sleep past them.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use util::target::{Cred, Kind, On, PAST_GRACE, SHORT_BOUNDS};
use util::*;

per_kind!(
    backup_restore_and_runs,
    gc_after_prune_deletes_exactly_the_unreferenced_objects,
    another_hosts_stale_index_never_references_collected_objects,
    an_interrupted_backup_then_gc_then_a_rerun_restores_completely,
    ctrl_c_stops_a_backup_cleanly_and_the_next_one_completes,
    verify_finds_what_is_missing_wrong_or_damaged_with_and_without_a_key,
    status_says_fresh_stale_broken_or_unknown_as_monitoring_expects,
    an_overwritten_pack_is_named_and_on_a_versioned_bucket_its_earlier_version_restores,
);

fn backup_restore_and_runs(kind: Kind) {
    let t = On::new(kind, "basic");
    nested_tree(&t.fx.src);
    let out = t.backup(Cred::PutOnly).ok();
    let stats = &out.json()["runs"][0];
    assert_eq!(stats["target"], t.target(), "{out}");
    let run = stats["run"].as_str().unwrap().to_string();
    // The layout docs/FORMAT.md gives: packs named by their BLAKE3 under data/xx/, the
    // run's metafile and object list under runs/<host>/<source>/, one marker.
    let keys = t.keys();
    let meta = format!("runs/{HOST}/{SOURCE}/{run}.meta");
    assert!(keys.contains(&meta), "{keys:#?}");
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("markers/")).count(),
        1,
        "{keys:#?}"
    );
    let packs = t.data_names();
    assert!(packs.len() >= 2, "1.5 MiB in 1 MiB packs: {keys:#?}");
    for name in &packs {
        let bytes = t.download(&format!("data/{}/{name}", &name[..2]));
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), name);
    }
    assert_eq!(
        t.refs_of(HOST, &run),
        packs,
        "the object list names the packs"
    );

    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
    // init says what this kind of target guarantees and what is left to set up.
    let out = t.coffer(Cred::Admin, &["init", t.target()]).ok();
    let said = |needle: &str| out.stdout.contains(needle);
    assert!(
        said("create-only: yes")
            && said("put-only credential:")
            && said("listing order: not relied on"),
        "{out}"
    );
    assert!(
        match kind {
            Kind::Folder => said("credential: none"),
            Kind::S3 | Kind::S3Ministack => said("s3:PutObject"),
            Kind::Azure => said("sp=cw"),
            Kind::Gcs => said("storage.objects.create"),
        },
        "{out}"
    );
    let runs = t.runs(Cred::Admin).ok().json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs:#}");
    assert_eq!(runs[0]["run"], run.as_str(), "{runs:#}");
    assert_eq!(runs[0]["status"]["state"], "ok", "{runs:#}");

    // Nothing changed: the second run stores its own objects only.
    let again = t.backup(Cred::PutOnly).ok();
    assert_eq!(again.json()["runs"][0]["chunks_new"], 0, "{again}");
    assert_eq!(t.data_names(), packs);
}

fn gc_after_prune_deletes_exactly_the_unreferenced_objects(kind: Kind) {
    let t = On::with_bounds(kind, "gcprune", "");
    let config = t.fx.config.clone();
    let src = &t.fx.src;
    let a = pseudo_random(1, 3 << 20);
    let b = pseudo_random(2, 200_000);
    let c = pseudo_random(3, 2 << 20);
    let d = pseudo_random(4, 500_000);
    write(&src.join("a"), &a);
    write(&src.join("b"), &b);
    let run1 = t.backup_run(&config);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::remove_file(src.join("a")).unwrap();
    write(&src.join("c"), &c);
    let run2 = t.backup_run(&config);
    std::thread::sleep(Duration::from_millis(1100));
    write(&src.join("d"), &d);
    let run3 = t.backup_run(&config);
    let refs: Vec<BTreeSet<String>> = [&run1, &run2, &run3]
        .iter()
        .map(|r| t.refs_of(HOST, r))
        .collect();
    let before = t.data_names();
    let union: BTreeSet<String> = refs.iter().flatten().cloned().collect();
    assert_eq!(before, union, "every object belongs to a run");

    let retained: BTreeSet<String> = refs[1].union(&refs[2]).cloned().collect();
    let garbage: BTreeSet<String> = before.difference(&retained).cloned().collect();
    assert!(
        !garbage.is_empty(),
        "file a alone filled packs only run 1 used"
    );
    let pruned = t.prune(&["--keep-last", "2"]);
    assert_eq!(pruned[0]["deleted"], 1, "{pruned:#}");
    let run_files: BTreeSet<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("runs/"))
        .collect();
    let expected_runs: BTreeSet<String> = [&run2, &run3]
        .iter()
        .flat_map(|r| ["meta", "refs"].map(|e| format!("runs/{HOST}/{SOURCE}/{r}.{e}")))
        .collect();
    assert_eq!(run_files, expected_runs, "prune deleted run 1's two files");
    assert_eq!(t.data_names(), before, "prune deletes no data");

    std::thread::sleep(PAST_GRACE);
    t.gc(Cred::Admin, &["--grace", "3s"])
        .expect(EXIT_ERROR)
        .stderr_has("shorter than dedup_max_age + max_run_time");
    let dry = t.gc_json(&["--dry-run"]);
    assert_eq!(dry[0]["objects_deleted"], garbage.len(), "{dry:#}");
    assert_eq!(t.data_names(), before, "a dry run deletes nothing");
    let done = t.gc_json(&[]);
    assert_eq!(done[0]["target"], t.target(), "{done:#}");
    assert_eq!(done[0]["objects_deleted"], garbage.len(), "{done:#}");
    assert_eq!(done[0]["objects_referenced"], retained.len(), "{done:#}");
    assert_eq!(done[0]["objects_young"], 0, "{done:#}");
    assert_eq!(done[0]["runs"], 2, "{done:#}");
    assert_eq!(
        t.data_names(),
        retained,
        "exactly the unreferenced objects went"
    );
    let again = t.gc_json(&[]);
    assert_eq!(again[0]["objects_deleted"], 0, "{again:#}");
    if kind.is_s3() {
        deletes_are_markers_over_kept_versions(&t, &before, &garbage, &run1);
    }

    t.restore_run_matches(&config, HOST, &run2, &[("b", &b), ("c", &c)], "r2");
    let r3: &[(&str, &[u8])] = &[("b", &b), ("c", &c), ("d", &d)];
    t.restore_run_matches(&config, HOST, &run3, r3, "r3");

    // A metafile without its object list (a put-only host can plant one): gc cannot
    // know what that run needs, says so, and goes on with the others: what only that run
    // referenced goes, what the others need stays.
    t.remove(&format!("runs/{HOST}/{SOURCE}/{run2}.refs"));
    t.gc(Cred::Admin, &[])
        .expect(EXIT_PARTIAL)
        .stderr_has("no object list")
        .stderr_has(&run2);
    assert_eq!(t.data_names(), refs[2]);
    t.restore_run_matches(&config, HOST, &run3, r3, "r3-again");
}

/// The bucket is versioned: a delete there adds a delete marker and keeps the old version
/// (until a lifecycle rule expires it). `before`: the data objects before gc; `garbage`:
/// those gc deleted; `pruned`: the run prune deleted.
fn deletes_are_markers_over_kept_versions(
    t: &On,
    before: &BTreeSet<String>,
    garbage: &BTreeSet<String>,
    pruned: &str,
) {
    let v = t.versions();
    let name_of = |o: &serde_json::Value| -> String {
        o["Key"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };
    let markers: Vec<&serde_json::Value> = v["DeleteMarkers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let marked: BTreeSet<String> = markers.iter().map(|m| name_of(m)).collect();
    let mut expected_marked = garbage.clone();
    expected_marked.insert(format!("{pruned}.meta"));
    expected_marked.insert(format!("{pruned}.refs"));
    assert_eq!(marked, expected_marked, "{v:#}");
    assert_eq!(
        markers.len(),
        expected_marked.len(),
        "one marker each: {v:#}"
    );
    for m in &markers {
        assert_eq!(m["IsLatest"], true, "{m}");
    }
    let versions = v["Versions"].as_array().expect("versions");
    let mut per_name: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for version in versions {
        per_name
            .entry(name_of(version))
            .or_default()
            .push(version["IsLatest"].as_bool().unwrap());
    }
    for name in before {
        let latest = per_name
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no version left"));
        // Deleted objects keep their one version, no longer the latest.
        assert_eq!(latest, &[!garbage.contains(name)], "{name}");
    }
}

/// Brackup's hazard: host B (backing up with the put-only credential, so it cannot look
/// at what is on the target) has an index listing chunks that an admin's gc deleted. B's
/// next run must upload them again, not reference the deleted objects.
fn another_hosts_stale_index_never_references_collected_objects(kind: Kind) {
    let t = On::with_bounds(kind, "twohosts", "");
    let fx = &t.fx;
    // Host B: its own state directory and source tree, the same target.
    let b_src = fx.path("b-src");
    let b_config = fx.path("b.toml");
    let a_text = std::fs::read_to_string(&fx.config).unwrap();
    let b_text = a_text
        .replace(&format!("host = \"{HOST}\""), "host = \"hostb\"")
        .replace(&toml_str(&fx.state), &toml_str(&fx.path("b-state")))
        .replace(&toml_str(&fx.src), &toml_str(&b_src));
    assert!(b_text.contains("host = \"hostb\"") && b_text.contains("b-state"));
    std::fs::write(&b_config, b_text).unwrap();
    let dropped = pseudo_random(7, 1_500_000);
    let kept = pseudo_random(8, 700_000);
    write(&b_src.join("dropped"), &dropped);
    let b1 = t.backup_run(&b_config);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::remove_file(b_src.join("dropped")).unwrap();
    write(&b_src.join("kept"), &kept);
    let b2 = t.backup_run(&b_config);
    write(&fx.src.join("a"), b"host a's own data\n");
    t.backup_run(&fx.config);
    let objects = t.data_names();
    let dropped_only: BTreeSet<String> = t
        .refs_of("hostb", &b1)
        .difference(&t.refs_of("hostb", &b2))
        .cloned()
        .collect();
    assert!(!dropped_only.is_empty(), "run b1 had packs of its own");

    // The admin prunes every host's runs to the newest and collects.
    std::thread::sleep(PAST_GRACE);
    let pruned = t.prune(&["--keep-last", "1"]);
    assert_eq!(pruned[0]["deleted"], 1, "b1 goes: {pruned:#}");
    let still_needed: BTreeSet<String> = t.all_refs().into_values().flatten().collect();
    let garbage: BTreeSet<String> = objects.difference(&still_needed).cloned().collect();
    assert_eq!(garbage, dropped_only);
    let gc = t.gc_json(&[]);
    assert_eq!(gc[0]["objects_deleted"], garbage.len(), "{gc:#}");
    assert_eq!(t.data_names(), still_needed);

    // Host B backs up the dropped data again; its index still lists those chunks.
    write(&b_src.join("dropped"), &dropped);
    let b3 = t.backup_run(&b_config);
    let on_target = t.data_names();
    let needed = t.refs_of("hostb", &b3);
    assert!(
        needed.is_subset(&on_target),
        "the new run references deleted objects: {:?}",
        needed.difference(&on_target).collect::<Vec<_>>()
    );
    assert!(
        !needed.is_disjoint(&on_target.difference(&still_needed).cloned().collect()),
        "the dropped data went up again, in new packs"
    );
    t.restore_run_matches(
        &b_config,
        "hostb",
        &b3,
        &[("dropped", &dropped), ("kept", &kept)],
        "restored-b",
    );
}

/// A backup killed after uploading packs but before its metafile; gc removes what it
/// left; the re-run must not reference any of it.
fn an_interrupted_backup_then_gc_then_a_rerun_restores_completely(kind: Kind) {
    // Slow uploads so that the backup can be killed half way.
    let t = On::with_bounds(
        kind,
        "interrupted",
        "upload_rate_limit = \"1MiB\"\nupload_concurrency = 1\n",
    );
    let data: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), pseudo_random(20 + i, 1 << 20)))
        .collect();
    for (name, bytes) in &data {
        write(&t.fx.src.join(name), bytes);
    }
    let mut child = t.spawn_backup();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while t.data_names().len() < 2 {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no pack was uploaded");
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended too early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = t.data_names();
    assert!(left.len() < data.len(), "killed half way: {left:?}");
    let runs = t.runs(Cred::Admin).ok().json();
    assert_eq!(
        runs,
        serde_json::json!([]),
        "the killed run never committed"
    );
    assert!(
        !t.keys().iter().any(|k| k.starts_with("runs/")),
        "nor stored its object list"
    );
    // Too young: the grace period protects them (the run might still be committing).
    if kind == Kind::Folder {
        let young = t.gc_json(&[]);
        assert_eq!(young[0]["objects_deleted"], 0, "{young:#}");
        assert_eq!(young[0]["objects_young"], left.len(), "{young:#}");
    }
    // An explicit grace well above the 4 s the bounds give: S3's LastModified has
    // one-second resolution and listing the bucket from here takes a while, so the
    // default would leave these objects young by a margin too thin to test.
    let young = t.gc_json(&["--grace", "60s"]);
    assert_eq!(young[0]["objects_deleted"], 0, "{young:#}");
    assert_eq!(young[0]["objects_young"], left.len(), "{young:#}");
    assert_eq!(young[0]["grace_secs"], 60, "{young:#}");
    assert_eq!(t.data_names(), left);

    std::thread::sleep(PAST_GRACE);
    let gc = t.gc_json(&[]);
    assert_eq!(gc[0]["objects_deleted"], left.len(), "{gc:#}");
    assert!(t.data_names().is_empty());

    t.write_config_with(SHORT_BOUNDS, &[]);
    let config = t.fx.config.clone();
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains("upload_rate_limit"));
    let run = t.backup_run(&config);
    let needed = t.refs_of(HOST, &run);
    let on_target = t.data_names();
    assert!(
        needed.is_subset(&on_target),
        "the re-run references deleted objects: {:?}",
        needed.difference(&on_target).collect::<Vec<_>>()
    );
    let expected: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    t.restore_run_matches(&config, HOST, &run, &expected, "restored");
}

/// Ctrl-C (SIGINT) while packs go up: the backup stops through its one cancellation
/// path, says so, exits 130, and leaves no run, no staging file on the target and no
/// temporary file in the state directory; its lock is released and the next backup
/// completes and restores.
fn ctrl_c_stops_a_backup_cleanly_and_the_next_one_completes(kind: Kind) {
    let t = On::new(kind, "ctrlc");
    t.write_config_with(
        "upload_rate_limit = \"1MiB\"\nupload_concurrency = 1\n",
        &[],
    );
    let data: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), pseudo_random(60 + i, 1 << 20)))
        .collect();
    for (name, bytes) in &data {
        write(&t.fx.src.join(name), bytes);
    }
    let mut child = std::process::Command::new(coffer_bin())
        .env_clear()
        .env("HOME", &t.fx.home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(t.cred_env(Cred::PutOnly))
        .arg("-c")
        .arg(&t.fx.config)
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while t.data_names().is_empty() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no pack was uploaded");
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended before it could be interrupted: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(
        err.matches("interrupted").count(),
        1,
        "the error that stopped the run is reported once: {err}"
    );

    let keys = t.keys();
    assert!(
        !keys.iter().any(|k| k.starts_with("runs/")),
        "no run, no object list: {keys:#?}"
    );
    if kind == Kind::Folder {
        let staging: Vec<String> = Vec::from_iter(
            relative_paths(&t.fx.target)
                .iter()
                .map(|p| show(p))
                .filter(|p| p.contains('#')),
        );
        assert!(staging.is_empty(), "staging files left: {staging:?}");
    }
    let tmp = t.fx.state.join("tmp");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left in {tmp:?}: {left:?}");
    let journals: Vec<String> = relative_paths(&t.fx.state)
        .iter()
        .map(|p| show(p))
        .filter(|p| p.ends_with("-journal"))
        .collect();
    assert!(
        journals.is_empty(),
        "a transaction was left open: {journals:?}"
    );

    // The next backup (at full speed) takes the lock, completes and restores everything.
    t.write_config(&[]);
    let run = t.backup_run(&t.fx.config);
    let needed = t.refs_of(HOST, &run);
    assert!(needed.is_subset(&t.data_names()));
    let expected: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    t.restore_run_matches(&t.fx.config, HOST, &run, &expected, "restored");
}

/// `coffer verify --storage` with no key: clean on a genuine target; then a pack deleted,
/// one truncated, one overwritten with a flipped byte and a metafile's last byte flipped,
/// each found (the last two only when the data is read) and named with the runs they
/// break. The put-only credential cannot verify. `verify --data` with the key: clean,
/// then the damaged file named.
fn verify_finds_what_is_missing_wrong_or_damaged_with_and_without_a_key(kind: Kind) {
    let t = On::new(kind, "verify");
    write(&t.fx.src.join("big"), &pseudo_random(70, 4 << 20));
    write(&t.fx.src.join("small"), b"small\n");
    let run1 = t.backup_run(&t.fx.config);
    std::thread::sleep(Duration::from_millis(1100));
    write(&t.fx.src.join("more"), &pseudo_random(71, 300_000));
    let run2 = t.backup_run(&t.fx.config);
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--storage", "--json", "--target", t.target()];
        args.extend_from_slice(extra);
        t.coffer(Cred::Admin, &args)
    };
    let report = |out: &Out| out.json()[0].clone();

    let out = verify(&[]).ok();
    let r = report(&out);
    let packs = t.data_names();
    assert_eq!(r["runs"], 2, "{out}");
    assert_eq!(r["runs_ok"], 2, "{out}");
    assert_eq!(r["objects"], packs.len(), "{out}");
    assert_eq!(r["findings"], serde_json::json!([]), "{out}");
    assert_eq!(r["bytes_read"], 0, "the listing only: {out}");
    let clean = verify(&["--read-data"]).ok();
    let r = report(&clean);
    assert!(r["bytes_read"].as_u64().unwrap() > 4 << 20, "{clean}");
    assert_eq!(r["findings"], serde_json::json!([]), "{clean}");
    t.coffer(
        Cred::PutOnly,
        &["verify", "--storage", "--target", t.target()],
    )
    .expect(if kind.put_only_is_enforced() {
        EXIT_ERROR
    } else {
        EXIT_OK
    });
    let key = t.fx.secret_key.to_str().unwrap().to_string();
    let data = |extra: &[&str]| {
        let mut args = vec!["verify", "--data", "--key", &key, "--target", t.target()];
        args.extend_from_slice(extra);
        t.coffer(Cred::Admin, &args)
    };
    let out = data(&["--json"]).ok();
    let d = &out.json()["data"][0];
    assert_eq!(d["run"], run2.as_str(), "the newest run: {out}");
    assert_eq!(d["files"], 3, "{out}");
    assert_eq!(d["failed"], 0, "{out}");
    assert!(d["chunks"].as_u64().unwrap() >= 3, "{out}");
    t.coffer(Cred::Admin, &["verify", "--data", "--target", t.target()])
        .expect(2);

    // Packs both runs reference (run 2 reuses all of run 1's).
    let shared: Vec<String> = t
        .refs_of(HOST, &run1)
        .intersection(&t.refs_of(HOST, &run2))
        .cloned()
        .collect();
    assert!(shared.len() >= 3, "4 MiB in 1 MiB packs: {shared:?}");
    let key = |name: &str| format!("data/{}/{name}", &name[..2]);
    let both = [
        format!("{HOST}/{SOURCE}/{run1}"),
        format!("{HOST}/{SOURCE}/{run2}"),
    ];
    t.remove(&key(&shared[0]));
    t.overwrite(&key(&shared[1]), b"short");
    let mut flipped = t.download(&key(&shared[2]));
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    t.overwrite(&key(&shared[2]), &flipped);
    let meta = format!("runs/{HOST}/{SOURCE}/{run2}.meta");
    let mut m = t.download(&meta);
    let last = m.len() - 1;
    m[last] ^= 1;
    t.overwrite(&meta, &m);

    let out = verify(&[]).expect(4);
    let r = report(&out);
    let kinds = |r: &serde_json::Value| -> Vec<(String, String)> {
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_string(),
                    f["object"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        kinds(&r),
        [
            ("missing".to_string(), key(&shared[0])),
            ("size".to_string(), key(&shared[1]))
        ],
        "{out}"
    );
    for f in r["findings"].as_array().unwrap() {
        assert_eq!(f["runs"], serde_json::json!(both), "{out}");
    }
    assert_eq!(r["runs_ok"], 0, "{out}");

    let out = verify(&["--read-data"]).expect(4);
    let r = report(&out);
    let found = kinds(&r);
    assert!(
        found.contains(&("hash".to_string(), key(&shared[2]))),
        "{out}"
    );
    assert!(
        found.contains(&("metafile".to_string(), meta.clone())),
        "{out}"
    );
    assert_eq!(found.len(), 4, "{out}");

    // With the key: the files that would not restore whole are named. The newest run's
    // metafile fails its check, so (as restore does) the run before it is checked.
    let out = data(&["--json"]).expect(4);
    let d = &out.json()["data"][0];
    assert_eq!(d["run"], run1.as_str(), "{out}");
    let named: Vec<&str> = d["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(named.contains(&"big"), "{out}");
    assert_eq!(d["failed"], named.len(), "{out}");
    data(&[]).expect(4).stderr_has("big");

    // For people: each finding on standard error, with its runs.
    let out = t
        .coffer(
            Cred::Admin,
            &["verify", "--storage", "--target", t.target()],
        )
        .expect(4)
        .stderr_has("missing")
        .stderr_has(&run1);
    assert!(out.stdout.contains("PROBLEMS FOUND"), "{out}");
}

/// A put-only credential can overwrite an object (PutObject without a condition; the
/// README's bucket policy is what refuses it). The host plays the attacker here: it
/// replaces a pack with bytes of the same size. `verify --storage --read-data` names the
/// object and, on a versioned bucket, the earlier version that matches its name and the
/// command that makes it current again; restore and `verify --data` read that version and
/// say so. A folder keeps no versions: the file in the pack fails, named.
fn an_overwritten_pack_is_named_and_on_a_versioned_bucket_its_earlier_version_restores(kind: Kind) {
    let t = On::new(kind, "overwrite");
    write(&t.fx.src.join("big"), &pseudo_random(80, 3 << 20));
    write(&t.fx.src.join("small"), b"small\n");
    t.backup_run(&t.fx.config);
    let name = t.data_names().into_iter().next().unwrap();
    let object = format!("data/{}/{name}", &name[..2]);
    let size = t.download(&object).len();
    t.overwrite_as(Cred::PutOnly, &object, &pseudo_random(81, size));
    let earlier = kind.is_s3().then(|| {
        let full = format!("{}/{object}", t.prefix);
        let versions = t.versions();
        let old: Vec<String> = versions["Versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["Key"] == full.as_str() && v["IsLatest"] == false)
            .map(|v| v["VersionId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            old.len(),
            1,
            "the bucket kept the pack's first version: {versions:#}"
        );
        old[0].clone()
    });

    // Without the key: the object is named, with what to do about it.
    let storage = || {
        t.coffer(
            Cred::Admin,
            &[
                "verify",
                "--storage",
                "--read-data",
                "--json",
                "--target",
                t.target(),
            ],
        )
    };
    let out = storage().expect(4);
    let findings = out.json()[0]["findings"].clone();
    assert_eq!(findings.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(findings[0]["kind"], "hash", "{out}");
    assert_eq!(findings[0]["object"], object.as_str(), "{out}");
    let message = findings[0]["message"].as_str().unwrap().to_string();
    match &earlier {
        Some(version) => {
            assert!(message.contains(version.as_str()), "{out}");
            assert!(message.contains("aws s3api copy-object"), "{out}");
        }
        None => assert!(message.contains("keeps no earlier versions"), "{out}"),
    }

    // With the key: restore reads the earlier version where there is one.
    let key = t.fx.secret_key.to_str().unwrap().to_string();
    let dest = t.fx.path("restored");
    let restore = t.coffer(
        Cred::Admin,
        &[
            "restore",
            "--json",
            "--key",
            &key,
            "--source",
            SOURCE,
            "--target",
            t.target(),
            "--to",
            dest.to_str().unwrap(),
        ],
    );
    let data = t.verify_data().expect(4);
    let d = data.json()["data"][0].clone();
    match &earlier {
        Some(version) => {
            let restore = restore.ok().stderr_has(&object).stderr_has(version);
            assert_same_tree(&t.fx.src, &dest);
            let json = restore.json();
            assert_eq!(json["recovered"][0]["object"], object.as_str(), "{restore}");
            assert_eq!(
                json["recovered"][0]["version"],
                version.as_str(),
                "{restore}"
            );
            assert_eq!(d["failed"], 0, "every file checks out: {data}");
            assert_eq!(d["recovered"][0]["version"], version.as_str(), "{data}");
        }
        None => {
            restore
                .expect(EXIT_PARTIAL)
                .stderr_has(&object)
                .stderr_has("overwritten or damaged");
            assert!(d["failed"].as_u64().unwrap() >= 1, "{data}");
            assert_eq!(d["recovered"], serde_json::json!([]), "{data}");
            return;
        }
    }

    // The advised command, run as printed, makes the target whole again.
    let advised = message
        .split('`')
        .find(|part| part.starts_with("aws s3api copy-object"))
        .unwrap();
    let args: Vec<String> = advised
        .split_whitespace()
        .skip(1)
        .map(|a| a.trim_matches('\'').to_string())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.aws_json(&args);
    assert_eq!(blake3::hash(&t.download(&object)).to_hex().as_str(), name);
    let out = storage().ok();
    assert_eq!(out.json()[0]["findings"], serde_json::json!([]), "{out}");
}

/// `coffer status`, keyless, with the admin's credential standing in for a monitoring
/// machine's read-only one: OK when fresh, WARNING past --warn-age or when the newest run
/// does not check out, CRITICAL past max-age (flag or config), UNKNOWN when the target
/// cannot be read; the Prometheus file is parsed by prometheus_client's own parser.
fn status_says_fresh_stale_broken_or_unknown_as_monitoring_expects(kind: Kind) {
    let t = On::new(kind, "status");
    nested_tree(&t.fx.src);
    let run = t.backup_run(&t.fx.config);
    let status = |cred: Cred, extra: &[&str]| {
        let mut args = vec!["status", "--target", t.target()];
        args.extend_from_slice(extra);
        t.coffer(cred, &args)
    };

    let out = status(Cred::Admin, &["--max-age", "1h", "--json"]).expect(0);
    let j = out.json();
    assert_eq!(j["health"], "OK", "{out}");
    let s = &j["sources"][0];
    assert_eq!(
        (&s["host"], &s["source"], &s["runs"], &s["runs_ok"]),
        (&HOST.into(), &SOURCE.into(), &1.into(), &1.into()),
        "{out}"
    );
    assert_eq!(s["last_complete_run"], run.as_str(), "{out}");
    assert!(s["age_secs"].as_u64().unwrap() < 600, "{out}");
    let prom = t.fx.path("coffer.prom");
    let out = t.coffer(
        Cred::Admin,
        &[
            "status",
            "--target",
            t.target(),
            "--max-age",
            "1h",
            "--prometheus",
            prom.to_str().unwrap(),
        ],
    );
    let out = out.expect(0);
    assert!(
        out.stdout.starts_with("COFFER OK - 1 source backed up"),
        "{out}"
    );
    let samples = parse_prometheus(&t, &prom);
    let labels = format!("host={HOST},source={SOURCE},target={}", t.target());
    assert_eq!(samples[&format!("coffer_source_health{{{labels}}}")], 0.0);
    assert_eq!(
        samples[&format!("coffer_target_up{{target={}}}", t.target())],
        1.0
    );
    let ok_runs = format!(
        "coffer_runs{{host={HOST},source={SOURCE},state=ok,target={}}}",
        t.target()
    );
    assert_eq!(samples[&ok_runs], 1.0, "{samples:?}");
    let stored = samples[&format!("coffer_last_complete_run_timestamp_seconds{{{labels}}}")];
    assert!((stored - chrono::Utc::now().timestamp() as f64).abs() < 600.0);

    // Stale: past --warn-age a warning, past --max-age critical; max_age in the config.
    std::thread::sleep(Duration::from_millis(2100));
    let out = status(Cred::Admin, &["--max-age", "1h", "--warn-age", "1s"]).expect(1);
    assert!(out.stdout.contains("more than warn-age 1s"), "{out}");
    let out = status(Cred::Admin, &["--max-age", "1s"]).expect(2);
    assert!(
        out.stdout.starts_with("COFFER CRITICAL - ") && out.stdout.contains("max-age 1s"),
        "{out}"
    );
    let text = std::fs::read_to_string(&t.fx.config).unwrap();
    let with_age = text.replace(
        &format!("[source.{SOURCE}]\n"),
        &format!("[source.{SOURCE}]\nmax_age = \"1s\"\n"),
    );
    assert_ne!(with_age, text);
    std::fs::write(&t.fx.config, &with_age).unwrap();
    status(Cred::Admin, &[]).expect(2);
    status(Cred::Admin, &["--max-age", "1h"]).expect(2); // the source's own limit wins
    std::fs::write(&t.fx.config, &text).unwrap();

    // Broken: a junk run planted as the newest is named, and makes it a warning.
    let junk = util::forge::run_id(chrono::Utc::now().timestamp(), "0000beef");
    t.overwrite(&format!("runs/{HOST}/{SOURCE}/{junk}.refs"), b"junk\n");
    t.overwrite(&format!("runs/{HOST}/{SOURCE}/{junk}.meta"), b"junk\n");
    let out = status(Cred::Admin, &["--max-age", "1h"]).expect(1);
    assert!(
        out.stdout.starts_with("COFFER WARNING - ") && out.stdout.contains(&junk),
        "{out}"
    );

    // Unknown: the target cannot be read.
    let out = match kind {
        Kind::S3 | Kind::S3Ministack | Kind::Azure => status(Cred::PutOnly, &["--max-age", "1h"]),
        Kind::Folder | Kind::Gcs => t.coffer(
            Cred::Admin,
            &["status", "--target", "file:///nonexistent/coffer"],
        ),
    };
    let out = out.expect(3);
    assert!(out.stdout.starts_with("COFFER UNKNOWN - "), "{out}");
}

/// Every sample of a Prometheus text file, parsed by prometheus_client, as
/// `name{label=value,...}` (labels sorted) to value.
/// The Python with prometheus_client is the S3 server's (this fixture's, else moto's).
fn parse_prometheus(t: &On, file: &std::path::Path) -> BTreeMap<String, f64> {
    let python = match &t.s3 {
        Some(s3) => s3.python.clone(),
        None => util::target::S3::from_env().python,
    };
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families as p\n\
             for f in p(open(sys.argv[1]).read()):\n\
             \x20   for s in f.samples:\n\
             \x20       l = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
             \x20       print(f'{s.name}{{{l}}}', s.value)\n",
        )
        .arg(file)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the parser refused the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}
