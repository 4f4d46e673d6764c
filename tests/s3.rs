//! Tests against a real S3-compatible server (moto, started by `scripts/s3-server.sh`;
//! `scripts/test.sh` starts it and sets `COFFER_TEST_S3_ENV`). The server enforces IAM: a
//! put-only user may only create objects, an admin may do anything.
//!
//! Every test works under its own prefix of the shared bucket, so they run in parallel.
//! These are the promises only S3 makes (the put-only credential, versions, the server's
//! request log); the scenarios every target kind runs are in tests/scenarios.rs.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::target::{Cred, Kind, On, PAST_GRACE, SHORT_BOUNDS};
use util::*;

// Scenarios that run on both S3 test servers (moto, and ministack, implemented
// independently of it); the others count requests in moto's log.
per_s3_server!(
    the_put_only_credential_cannot_read_list_or_delete,
    backups_never_remove_or_replace_a_version,
    the_policies_init_writes_are_exactly_enough,
    a_missing_bucket_is_named_as_such,
    object_lock_retention_locks_every_object_a_backup_stores,
    prune_extends_object_lock_per_retention_tier,
    from_nothing_to_a_monitored_put_only_backup_with_init_apply,
    an_unreachable_target_does_not_stop_the_others,
    an_independent_client_verifies_every_object_against_its_name,
    packs_in_a_cold_storage_class_are_thawed_before_restore_and_kept_by_gc,
);

fn method(line: &str) -> &str {
    line.split('"')
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
}

/// A whole restore and a whole `verify --data` from S3 fetch packs ahead of need, and
/// still read each pack exactly once (the server's log counts the GETs); what they
/// restore and check is whole.
#[test]
fn packs_fetched_ahead_are_read_once_each() {
    let t = On::new(Kind::S3, "ahead");
    // Several packs (1 MiB each), with files spread across them.
    for i in 0..12 {
        write(
            &t.fx.src.join(format!("f{i:02}")),
            &pseudo_random(90 + i, 400 << 10),
        );
    }
    t.backup(Cred::PutOnly).ok();
    let packs = t.data_names();
    assert!(packs.len() >= 4, "{packs:?}");
    let gets = |requests: &[String]| -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for r in requests
            .iter()
            .filter(|r| method(r) == "GET" && r.contains("/data/"))
        {
            let name = packs.iter().find(|p| r.contains(p.as_str()));
            *n.entry(name.expect("a pack").clone()).or_default() += 1;
        }
        n
    };
    let dest = t.fx.path("restored");
    let (out, requests) = t.requests_during(|| t.restore(Cred::Admin, &dest));
    out.ok();
    assert_same_tree(&t.fx.src, &dest);
    let read = gets(&requests);
    assert_eq!(
        read.keys().cloned().collect::<BTreeSet<_>>(),
        packs,
        "{requests:#?}"
    );
    assert!(read.values().all(|&n| n == 1), "{read:?}");
    let (out, requests) = t.requests_during(|| t.verify_data());
    let report = out.ok().json();
    assert_eq!(report["data"][0]["failed"], 0, "{report:#}");
    let read = gets(&requests);
    assert_eq!(read.len(), packs.len(), "{requests:#?}");
    assert!(read.values().all(|&n| n == 1), "{read:?}");

    // A filtered restore reads ranges ahead: small files (below the smallest chunk:
    // one chunk each, so one range each), every range asked for once, none in vain.
    for i in 0..20 {
        write(
            &t.fx.src.join(format!("small/s{i:02}")),
            &pseudo_random(200 + i, 3000),
        );
    }
    t.backup(Cred::PutOnly).ok();
    let wanted: Vec<String> = (0..20)
        .step_by(2)
        .map(|i| format!("small/s{i:02}"))
        .collect();
    let part = t.fx.path("part");
    let (out, requests) = t.requests_during(|| {
        let mut cmd = t.with_cred(t.fx.cmd(), Cred::Admin);
        cmd.arg("restore")
            .arg("--key")
            .arg(&t.fx.secret_key)
            .args(["--source", SOURCE, "--target", t.target(), "--to"])
            .arg(&part)
            .args(&wanted);
        run(cmd)
    });
    out.ok();
    for w in &wanted {
        assert_eq!(
            std::fs::read(part.join(w)).unwrap(),
            std::fs::read(t.fx.src.join(w)).unwrap(),
            "{w}"
        );
    }
    assert!(!part.join("small/s01").exists());
    let ranges = requests
        .iter()
        .filter(|r| method(r) == "GET" && r.contains("/data/"))
        .count();
    assert_eq!(ranges, wanted.len(), "one range per file: {requests:#?}");
}

#[test]
fn put_only_backup_then_restore_with_the_read_credential() {
    let t = On::new(Kind::S3, "putonly");
    nested_tree(&t.fx.src);
    let (out, requests) = t.requests_during(|| t.backup(Cred::PutOnly));
    let out = out.ok();
    assert_eq!(out.json()["runs"][0]["target"], "s3", "{out}");
    // Only object creation: PUT (and POST for multipart uploads), never GET, HEAD,
    // LIST (a GET on the bucket) or DELETE.
    assert!(
        requests.len() >= 3,
        "packs, object list and metafile: {requests:#?}"
    );
    for r in &requests {
        assert!(
            matches!(method(r), "PUT" | "POST"),
            "backup made a read or delete: {r}"
        );
    }
    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
    let runs = t.runs(Cred::Admin).ok().json();
    assert_eq!(runs.as_array().unwrap().len(), 1);
}

#[test]
fn a_wiped_prefix_is_recognised_by_a_put_only_backup_with_one_request() {
    let t = On::new(Kind::S3, "wiped");
    nested_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    // Everything under the prefix deleted (delete markers on a versioned bucket).
    let out = t.aws(
        Cred::Admin,
        &[
            "s3",
            "rm",
            "--recursive",
            &format!("s3://{}/{}/", t.s3().bucket, t.prefix),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write(&t.fx.src.join("new file"), b"after the wipe\n");
    let (out, requests) = t.requests_during(|| t.backup(Cred::PutOnly));
    let out = out.ok().stderr_has("holds none of the markers");
    assert!(
        requests.iter().all(|r| matches!(method(r), "PUT")),
        "only creates: {requests:#?}"
    );
    let markers = requests.iter().filter(|r| r.contains("/markers/")).count();
    assert_eq!(
        markers, 1,
        "one request says whether the target is new: {requests:#?}"
    );
    assert!(out.json()["runs"][0]["chunks_new"].as_u64().unwrap() > 1);
    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
}

#[test]
fn a_pack_lost_behind_a_put_only_hosts_back_is_named_by_gc_and_stored_again_on_request() {
    let t = On::new(Kind::S3, "lostpack");
    write(&t.fx.src.join("big"), &pseudo_random(7, 3 << 20));
    write(&t.fx.src.join("small"), b"small\n");
    t.backup(Cred::PutOnly).ok();
    let pack = t
        .keys()
        .into_iter()
        .find(|k| k.starts_with("data/"))
        .expect("a pack");
    let out = t.aws(Cred::Admin, &["s3", "rm", &t.s3_url(&pack)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The host cannot see it; gc, with the admin credential, does.
    let mut cmd = t.with_cred(t.fx.cmd(), Cred::Admin);
    cmd.args(["gc", "--target", "s3", "--dry-run", "--json"]);
    let out = run(cmd).expect(EXIT_PARTIAL).stderr_has("--forget-cache");
    let missing = &out.json()[0]["missing"];
    assert!(
        pack.ends_with(missing[0]["object"].as_str().unwrap()),
        "{out}"
    );
    // The remedy it names: the next backup stores everything again.
    let mut cmd = t.with_cred(t.fx.cmd(), Cred::PutOnly);
    cmd.args(["backup", "--forget-cache", "--json"]);
    run(cmd).ok();
    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
}

#[test]
fn a_backup_that_may_read_the_bucket_stores_again_a_pack_that_is_gone() {
    let t = On::new(Kind::S3, "canread");
    t.write_config_with("can_read = true\n", &[]);
    write(&t.fx.src.join("big"), &pseudo_random(8, 3 << 20));
    t.backup(Cred::Admin).ok();
    let pack = t
        .keys()
        .into_iter()
        .find(|k| k.starts_with("data/"))
        .expect("a pack");
    let out = t.aws(Cred::Admin, &["s3", "rm", &t.s3_url(&pack)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, requests) = t.requests_during(|| t.backup(Cred::Admin));
    let out = out.expect(EXIT_PARTIAL).stderr_has("missing from target");
    assert_eq!(out.json()["runs"][0]["packs_missing"], 1, "{out}");
    let heads = requests.iter().filter(|r| method(r) == "HEAD").count();
    assert!(heads >= 1, "one HEAD per reused pack: {requests:#?}");
    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
}

fn the_put_only_credential_cannot_read_list_or_delete(kind: Kind) {
    let t = On::new(kind, "refused");
    nested_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    let key = t
        .keys()
        .into_iter()
        .find(|k| k.starts_with("data/"))
        .expect("a pack");
    let full_key = format!("{}/{key}", t.prefix);
    let bucket = t.s3().bucket.clone();
    // The server really enforces the policy, so the tests below mean something.
    let sink = t.fx.path("sink");
    let sink = sink.to_str().unwrap();
    for args in [
        vec![
            "s3api",
            "get-object",
            "--bucket",
            &bucket,
            "--key",
            &full_key,
            sink,
        ],
        vec!["s3api", "list-objects-v2", "--bucket", &bucket],
        vec![
            "s3api",
            "delete-object",
            "--bucket",
            &bucket,
            "--key",
            &full_key,
        ],
    ] {
        let out = t.aws(Cred::PutOnly, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("AccessDenied"),
            "{args:?}: {err}"
        );
    }
    assert!(t.keys().contains(&key), "the delete was refused");
    // coffer's read commands say what is wrong.
    t.runs(Cred::PutOnly)
        .expect(EXIT_ERROR)
        .stderr_has("lacks the right");
    let dest = t.fx.path("nope");
    t.restore(Cred::PutOnly, &dest)
        .expect(EXIT_ERROR)
        .stderr_has("lacks the right");
}

fn backups_never_remove_or_replace_a_version(kind: Kind) {
    let t = On::new(kind, "versions");
    nested_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    t.backup(Cred::PutOnly).ok(); // nothing new
                                  // A lost local index: everything is uploaded again, into new packs.
    std::fs::remove_dir_all(&t.fx.state).unwrap();
    t.backup(Cred::PutOnly).ok();
    write(&t.fx.src.join("new.txt"), b"one more file\n");
    t.backup(Cred::PutOnly).ok();
    let v = t.versions();
    assert!(
        v["DeleteMarkers"].as_array().is_none_or(|a| a.is_empty()),
        "{v}"
    );
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for version in v["Versions"].as_array().expect("versions") {
        *per_key
            .entry(version["Key"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (key, n) in &per_key {
        assert_eq!(*n, 1, "{key} has {n} versions: something was replaced");
    }
    assert_eq!(per_key.keys().filter(|k| k.ends_with(".meta")).count(), 4);
}

fn an_unreachable_target_does_not_stop_the_others(kind: Kind) {
    let t = On::new(kind, "twotargets");
    // Nothing listens on port 1 of loopback.
    t.write_config(&[(
        "dead",
        format!(
            "url = \"s3://{}/dead\"\nendpoint = \"http://127.0.0.1:1\"\nallow_http = true\n\
             retries = 0\nretry_timeout = \"5s\"",
            t.s3().bucket
        ),
    )]);
    nested_tree(&t.fx.src);
    let out = t
        .backup(Cred::PutOnly)
        .expect(EXIT_ERROR)
        .stderr_has("dead");
    let json = out.json();
    assert_eq!(json["runs"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(json["runs"][0]["target"], "s3");
    assert_eq!(json["failed"][0]["target"], "dead", "{out}");
    assert!(out.stderr.contains("FAILED"), "{out}");
    let dest = t.fx.path("restored");
    t.restore(Cred::Admin, &dest).ok();
    assert_same_tree(&t.fx.src, &dest);
}

fn an_independent_client_verifies_every_object_against_its_name(kind: Kind) {
    let t = On::new(kind, "layout");
    nested_tree(&t.fx.src);
    write(&t.fx.src.join("big.bin"), &pseudo_random(7, 3 << 20));
    t.backup(Cred::PutOnly).ok();
    let keys = t.keys();
    let data: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.starts_with("data/"))
        .cloned()
        .collect();
    assert!(data.len() >= 3, "several 1 MiB packs: {keys:#?}");
    let dir = t.fx.path("download");
    std::fs::create_dir_all(&dir).unwrap();
    for key in &data {
        let file = dir.join("object");
        let out = t.aws(
            Cred::Admin,
            &["s3", "cp", &t.s3_url(key), file.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = key.rsplit('/').next().unwrap();
        let parent = key.rsplit('/').nth(1).unwrap();
        assert_eq!(&name[..2], parent, "data/<first two hex digits>/<hash>");
        assert_eq!(blake3::hash(&read(&file)).to_hex().as_str(), name, "{key}");
    }
    // The run's object list names exactly the packs.
    let refs = keys
        .iter()
        .find(|k| k.ends_with(".refs"))
        .expect("an object list");
    let file = dir.join("refs");
    assert!(t
        .aws(
            Cred::Admin,
            &["s3", "cp", &t.s3_url(refs), file.to_str().unwrap()]
        )
        .status
        .success());
    let listed: BTreeSet<String> = String::from_utf8(read(&file))
        .unwrap()
        .lines()
        .filter(|l| l.len() == 64)
        .map(|h| format!("data/{}/{h}", &h[..2]))
        .collect();
    assert_eq!(listed, data);
}

#[test]
fn a_large_metafile_goes_up_in_create_only_pieces_with_the_put_only_credential() {
    let t = On::new(Kind::S3, "pieces");
    let mut target = coffer::TargetConfig::from_url(&t.url()).unwrap();
    target.endpoint = Some(t.s3().endpoint.clone());
    target.allow_http = Some(true);
    target.region = Some("us-east-1".into());
    target
        .options
        .insert("aws_access_key_id".into(), t.s3().put.0.clone());
    target
        .options
        .insert("aws_secret_access_key".into(), t.s3().put.1.clone());
    let store = coffer::Store::open(&target, true)
        .unwrap()
        .with_metafile_piece(5 << 20)
        .creator(&target);
    let content = pseudo_random(3, 12 << 20);
    let file_path = t.fx.path("large");
    write(&file_path, &content);
    let id: coffer::RunId = "20260101T000000Z-0000abcd".parse().unwrap();
    let put = |data: &[u8], refs: &'static [u8]| {
        write(&file_path, data);
        let mut file = std::fs::File::open(&file_path).unwrap();
        store.put_run(
            HOST,
            SOURCE,
            &id,
            coffer::ObjectList {
                text: bytes::Bytes::from_static(refs),
                signature: None,
            },
            &mut file,
            data.len() as u64,
        )
    };
    let (r, requests) = t.requests_during(|| put(&content, b"refs"));
    r.unwrap();
    // Three pieces and the object list, each one PUT; no multipart upload.
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(requests.iter().all(|r| method(r) == "PUT"), "{requests:#?}");
    let run_dir = format!("runs/{HOST}/{SOURCE}");
    let mut names: Vec<String> = t
        .keys()
        .into_iter()
        .filter_map(|k| k.strip_prefix(&format!("{run_dir}/")).map(str::to_string))
        .collect();
    names.sort();
    let base = id.to_string();
    assert_eq!(
        names,
        [
            format!("{base}.meta"),
            format!("{base}.meta.0002"),
            format!("{base}.meta.0003"),
            format!("{base}.refs")
        ]
    );
    let fetch = |name: &str| {
        let local = t.fx.path(&format!("back-{name}"));
        let out = t.aws(
            Cred::Admin,
            &[
                "s3",
                "cp",
                &t.s3_url(&format!("{run_dir}/{name}")),
                local.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read(&local)
    };
    let whole: Vec<u8> = [&names[0], &names[1], &names[2]]
        .iter()
        .flat_map(|n| fetch(n))
        .collect();
    assert!(whole == content, "the pieces concatenate to the metafile");
    // Create-only: the same run again fails and changes nothing.
    let other = pseudo_random(4, 12 << 20);
    let err = put(&other, b"other").unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert!(fetch(&names[1]) == content[5 << 20..10 << 20]);
    assert_eq!(fetch(&names[3]), b"refs");
}

// ---------------------------------------------------------------------------------------
// gc with each credential (tests/scenarios.rs runs the rest of prune and gc on S3 too)

/// Whether a server log line is a delete: a DELETE, or a batch delete (a POST to
/// `?delete`).
fn is_delete(line: &str) -> bool {
    let request = line.split('"').nth(1).unwrap_or("");
    method(line) == "DELETE"
        || (method(line) == "POST"
            && request
                .split(' ')
                .nth(1)
                .and_then(|path| path.split_once('?'))
                .is_some_and(|(_, query)| {
                    query.split('&').any(|q| q == "delete" || q == "delete=")
                }))
}

#[test]
fn gc_with_the_put_only_credential_fails_and_deletes_nothing() {
    let t = On::with_bounds(Kind::S3, "gcputonly", "");
    nested_tree(&t.fx.src);
    let config = t.fx.config.clone();
    t.backup_run(&config);
    std::thread::sleep(Duration::from_millis(1100));
    write(&t.fx.src.join("data.bin"), &pseudo_random(9, 1_500_000));
    t.backup_run(&config);
    let pruned = t.prune(&["--keep-last", "1"]);
    assert_eq!(pruned[0]["deleted"], 1, "{pruned:#}");
    // Past the grace period, so that there is garbage gc would delete if it could.
    std::thread::sleep(PAST_GRACE);
    let before = t.keys();

    let lock = t.deletes_lock();
    let (out, lines) = t.log_during(|| t.gc(Cred::PutOnly, &[]));
    drop(lock);
    out.expect(EXIT_ERROR).stderr_has("lacks the right");
    assert_eq!(t.keys(), before, "nothing was deleted");
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains(&t.prefix)).collect();
    assert!(
        !ours.is_empty(),
        "the refused requests are in the log: {lines:#?}"
    );
    let deletes: Vec<&String> = lines.iter().filter(|l| is_delete(l)).collect();
    assert!(deletes.is_empty(), "gc tried to delete: {deletes:#?}");

    // The check above sees deletes: the admin's gc deletes the old run's packs.
    let lock = t.deletes_lock();
    let (done, lines) = t.log_during(|| t.gc_json(&[]));
    drop(lock);
    let deleted = done[0]["objects_deleted"].as_u64().unwrap();
    assert!(deleted >= 1, "{done:#}");
    assert_eq!(t.keys().len(), before.len() - deleted as usize);
    assert!(lines.iter().any(|l| is_delete(l)), "{lines:#?}");
}

/// An IAM user on the S3 test server named after the test's prefix and `role`, with the
/// policy `coffer init --policies` wrote into `dir` for that role; its access key.
fn iam_user(t: &On, dir: &Path, role: &str) -> (String, String) {
    let name = format!("{}-{role}", t.prefix);
    t.aws_json(&["iam", "create-user", "--user-name", &name]);
    let policy = format!(
        "file://{}",
        dir.join(format!("{role}-policy.json")).display()
    );
    t.aws_json(&[
        "iam",
        "put-user-policy",
        "--user-name",
        &name,
        "--policy-name",
        "coffer",
        "--policy-document",
        &policy,
    ]);
    let key = t.aws_json(&["iam", "create-access-key", "--user-name", &name]);
    let field = |k: &str| key["AccessKey"][k].as_str().unwrap().to_string();
    (field("AccessKeyId"), field("SecretAccessKey"))
}

/// `coffer init --policies` writes IAM policies that are exactly enough, as the S3 test
/// server (which enforces them) shows: the host's lets it back up and nothing else, the
/// monitor's lets it check runs but not read a pack or write, the admin's lets it
/// restore, prune and collect garbage. (The bucket policy's If-None-Match condition is
/// one the test server does not evaluate; it is not applied here.)
fn the_policies_init_writes_are_exactly_enough(kind: Kind) {
    let t = On::new(kind, "policies");
    nested_tree(&t.fx.src);
    let dir = t.fx.path("policies");
    let out = t.coffer(
        Cred::Admin,
        &["init", "s3", "--policies", dir.to_str().unwrap()],
    );
    let out = out.ok();
    assert!(out.stdout.contains("apply.sh"), "{out}");
    let host_policy = std::fs::read_to_string(dir.join("host-policy.json")).unwrap();
    assert!(
        host_policy.contains(&format!("arn:aws:s3:::{}/{}/*", t.s3().bucket, t.prefix)),
        "{host_policy}"
    );
    // A user per role, with the policy init wrote.
    let user = |role: &str| iam_user(&t, &dir, role);
    let as_user = |keys: &(String, String), args: &[&str]| {
        let mut cmd = coffer(&t.fx.home);
        cmd.env("AWS_ACCESS_KEY_ID", &keys.0)
            .env("AWS_SECRET_ACCESS_KEY", &keys.1)
            .env("AWS_REGION", "us-east-1")
            .arg("-c")
            .arg(&t.fx.config)
            .args(args);
        run(cmd)
    };
    let key = t.fx.secret_key.to_str().unwrap().to_string();
    let dest = |name: &str| t.fx.path(name).to_str().unwrap().to_string();
    let restore = |keys: &(String, String), to: &str| {
        as_user(
            keys,
            &["restore", "--key", &key, "--source", SOURCE, "--to", to],
        )
    };

    let host = user("host");
    as_user(&host, &["backup", "--json"]).ok();
    write(&t.fx.src.join("etc/hosts"), b"127.0.0.1 changed\n");
    as_user(&host, &["backup", "--json"]).ok();
    for args in [
        &["runs"][..],
        &["status"],
        &["gc", "--dry-run"],
        &["verify", "--storage"],
    ] {
        let out = as_user(&host, args);
        assert_ne!(out.code, Some(0), "the host may {args:?}: {out}");
    }
    assert_ne!(restore(&host, &dest("r-host")).code, Some(0));

    let monitor = user("monitor");
    let out = as_user(&monitor, &["status", "--json"]).expect(0);
    assert_eq!(out.json()["sources"][0]["runs_ok"], 2, "{out}");
    as_user(&monitor, &["runs", "--json"]).ok();
    let out = restore(&monitor, &dest("r-monitor"));
    assert_ne!(out.code, Some(0), "the monitor read a pack: {out}");
    assert_ne!(as_user(&monitor, &["backup"]).code, Some(0));
    let out = as_user(&monitor, &["prune", "--keep-last", "1"]);
    assert_ne!(out.code, Some(0), "the monitor pruned: {out}");
    assert_eq!(t.runs(Cred::Admin).ok().json().as_array().unwrap().len(), 2);
    // (Its listing is limited to runs/ by an s3:prefix condition, which the test server
    // does not evaluate: that part is AWS's to enforce.)

    let admin = user("admin");
    restore(&admin, &dest("r-admin")).ok();
    assert_same_tree(&t.fx.src, &t.fx.path("r-admin"));
    as_user(&admin, &["prune", "--keep-last", "1"]).ok();
    assert_eq!(t.runs(Cred::Admin).ok().json().as_array().unwrap().len(), 1);
    as_user(&admin, &["gc", "--dry-run"]).ok();
    as_user(&admin, &["verify", "--storage"]).ok();
}

/// A target whose bucket does not exist is named as such, on upload and on listing, not
/// as an object gone missing (which would send a person looking for lost data).
fn a_missing_bucket_is_named_as_such(kind: Kind) {
    let t = On::new(kind, "nobucket");
    let bucket = format!("no-such-{}", t.prefix);
    t.write_config(&[(
        "gone",
        format!(
            "url = \"s3://{bucket}/x\"\n{}retries = 0",
            t.s3().server_lines()
        ),
    )]);
    nested_tree(&t.fx.src);
    let out = t.backup(Cred::Admin).expect(EXIT_ERROR);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("gone"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("bucket") && line.contains("does not exist") && !line.contains("missing"),
        "{out}"
    );
    let out = t
        .coffer(Cred::Admin, &["runs", "--target", "gone"])
        .expect(EXIT_ERROR);
    assert!(out.stderr.contains("does not exist"), "{out}");
}

/// `storage_class = "DEEP_ARCHIVE"` puts packs, and only packs, in that class (the S3
/// test server keeps the class and refuses to read an object not thawed, as S3 does).
/// Restore names the frozen packs, restores nothing of them, and prints the AWS CLI loop
/// that thaws exactly those; once thawed, the restore completes. gc keeps unreferenced
/// packs younger than the class's 180 days unless told --early-delete.
fn packs_in_a_cold_storage_class_are_thawed_before_restore_and_kept_by_gc(kind: Kind) {
    let t = On::new(kind, "cold");
    t.write_config_with(
        &format!("{SHORT_BOUNDS}storage_class = \"DEEP_ARCHIVE\"\n"),
        &[],
    );
    nested_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    let listed = t.s3_listing();
    let mut classes = BTreeMap::new();
    for o in listed["Contents"].as_array().unwrap() {
        let key = o["Key"].as_str().unwrap()[t.prefix.len() + 1..].to_string();
        let top = key.split('/').next().unwrap().to_string();
        classes
            .entry(top)
            .or_insert_with(BTreeSet::new)
            .insert(o["StorageClass"].as_str().unwrap_or("STANDARD").to_string());
    }
    assert_eq!(
        classes["data"],
        BTreeSet::from(["DEEP_ARCHIVE".to_string()])
    );
    assert_eq!(classes["runs"], BTreeSet::from(["STANDARD".to_string()]));
    assert_eq!(classes["markers"], BTreeSet::from(["STANDARD".to_string()]));

    // Frozen: named, nothing of them restored, and the loop that thaws them.
    let dest = t.fx.path("restored");
    let out = t.restore(Cred::Admin, &dest).expect(EXIT_PARTIAL);
    assert!(out.stderr.contains("cold storage class"), "{out}");
    let keys: BTreeSet<String> = out
        .stderr
        .split("<<'KEYS'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nKEYS").next())
        .unwrap_or_else(|| panic!("no thaw loop: {out}"))
        .lines()
        .map(str::to_string)
        .collect();
    let packs: BTreeSet<String> = t
        .data_names()
        .iter()
        .map(|n| format!("{}/data/{}/{n}", t.prefix, &n[..2]))
        .collect();
    assert_eq!(keys, packs, "the loop thaws exactly the run's packs");
    assert!(out.stderr.contains("aws s3api restore-object"), "{out}");
    // verify --data says the same of the packs it could not check.
    let key = t.fx.secret_key.to_str().unwrap().to_string();
    let verify = t.coffer(
        Cred::Admin,
        &["verify", "--data", "--key", &key, "--target", t.target()],
    );
    assert_ne!(verify.code, Some(0), "{verify}");
    assert!(
        verify.stderr.contains("were not checked") && verify.stderr.contains("restore-object"),
        "{verify}"
    );
    for key in &keys {
        t.aws_json(&[
            "s3api",
            "restore-object",
            "--bucket",
            &t.s3().bucket,
            "--key",
            key,
            "--restore-request",
            r#"{"Days": 7, "GlacierJobParameters": {"Tier": "Standard"}}"#,
        ]);
    }
    let thawed = t.restore(Cred::Admin, &dest);
    if kind == Kind::S3 {
        // moto thaws at once.
        thawed.ok();
        assert_same_tree(&t.fx.src, &dest);
    } else {
        // ministack, as S3, takes its time: until then the same packs are named.
        assert_eq!(thawed.code, Some(3), "{thawed}");
        assert!(
            thawed.stderr.contains("in a cold storage class"),
            "{thawed}"
        );
    }

    // gc: unreferenced cold packs stay for their minimum duration unless told.
    write(&t.fx.src.join("etc/hosts"), b"127.0.0.1 changed\n");
    std::fs::remove_file(t.fx.src.join("data.bin")).unwrap();
    t.backup(Cred::PutOnly).ok();
    t.prune(&["--keep-last", "1"]);
    std::thread::sleep(PAST_GRACE);
    let _lock = t.deletes_lock();
    let before = t.data_names();
    let kept = t.gc_json(&[]);
    assert_eq!(kept[0]["objects_deleted"], 0, "{kept:#}");
    assert!(as_u64(&kept[0], "objects_cold_kept") > 0, "{kept:#}");
    assert_eq!(t.data_names(), before);
    let text = t.gc(Cred::Admin, &["--dry-run"]).ok();
    assert!(text.stdout.contains("--early-delete"), "{text}");
    let gone = t.gc_json(&["--early-delete"]);
    assert_eq!(
        gone[0]["objects_deleted"], kept[0]["objects_cold_kept"],
        "{gone:#}"
    );
}

/// With `object_lock_retention` on a bucket that has Object Lock on, every object a
/// backup stores is locked (here COMPLIANCE for a day): the S3 test server reports the
/// retention, and refuses to delete a locked version even to the admin. A plain delete
/// (what gc sends) only adds a delete marker; the locked data stays.
fn object_lock_retention_locks_every_object_a_backup_stores(kind: Kind) {
    let t = On::new(kind, "lock");
    let bucket = locked_bucket(
        &t,
        "object_lock_retention = \"1d\"\nobject_lock_mode = \"COMPLIANCE\"",
    );
    nested_tree(&t.fx.src);
    let started = chrono::Utc::now();
    let out = t.backup(Cred::Admin).ok();
    assert_eq!(out.json()["runs"].as_array().unwrap().len(), 2, "{out}");
    let listed = t.aws_json(&["s3api", "list-object-versions", "--bucket", &bucket]);
    let versions = listed["Versions"].as_array().unwrap();
    assert!(
        versions.len() >= 4,
        "packs, metafile, list, marker: {listed:#}"
    );
    for v in versions {
        let key = v["Key"].as_str().unwrap();
        // (The test server answers GetObjectRetention with the object; HEAD says it.)
        let r = t.aws_json(&["s3api", "head-object", "--bucket", &bucket, "--key", key]);
        assert_eq!(r["ObjectLockMode"], "COMPLIANCE", "{key}: {r:#}");
        let until =
            chrono::DateTime::parse_from_rfc3339(r["ObjectLockRetainUntilDate"].as_str().unwrap())
                .unwrap();
        let ahead = until.signed_duration_since(started).num_seconds();
        assert!((86_000..=86_500).contains(&ahead), "{key}: {ahead}s");
    }
    let pack = versions
        .iter()
        .find(|v| v["Key"].as_str().unwrap().contains("/data/"))
        .unwrap();
    let refused = t.aws(
        Cred::Admin,
        &[
            "s3api",
            "delete-object",
            "--bucket",
            &bucket,
            "--key",
            pack["Key"].as_str().unwrap(),
            "--version-id",
            pack["VersionId"].as_str().unwrap(),
        ],
    );
    assert!(!refused.status.success(), "a locked version was deleted");
    // The restore from the locked target is whole.
    let dest = t.fx.path("restored");
    let mut cmd = t.with_cred(t.fx.cmd(), Cred::Admin);
    cmd.arg("restore")
        .arg("--key")
        .arg(&t.fx.secret_key)
        .args(["--source", SOURCE, "--target", "locked", "--to"])
        .arg(&dest);
    run(cmd).ok();
    assert_same_tree(&t.fx.src, &dest);
}

/// A bucket with Object Lock on, and the config's target `locked` in it (`lines` add to
/// the target's section); the bucket's name.
fn locked_bucket(t: &On, lines: &str) -> String {
    let bucket = format!("lock-{}", &t.prefix[..t.prefix.len().min(50)]);
    t.aws_json(&[
        "s3api",
        "create-bucket",
        "--bucket",
        &bucket,
        "--object-lock-enabled-for-bucket",
    ]);
    t.write_config(&[(
        "locked",
        format!(
            "url = \"s3://{bucket}/host1\"\n{}{lines}",
            t.s3().server_lines()
        ),
    )]);
    bucket
}

/// Prune extends the Object Lock of what the runs it keeps need, per retention tier: the
/// run kept as `monthly 1` of 12, its metafile, object list and every pack it lists,
/// until twelve months after its month began; the run kept only by `last 2` keeps the
/// lock its backup gave it (two days, more than the one day a prune must leave), and
/// so do the packs only it uses. A dry run changes nothing; a second prune extends
/// nothing; the mode stays the config's.
fn prune_extends_object_lock_per_retention_tier(kind: Kind) {
    use chrono::Datelike;
    let t = On::new(kind, "tiers");
    let bucket = locked_bucket(&t, "object_lock_retention = \"2d\"");
    let (host, source) = (HOST, SOURCE);
    let mut runs = Vec::new();
    write(&t.fx.src.join("same"), b"in every run\n");
    for body in ["one\n", "two\n", "three\n"] {
        write(&t.fx.src.join("changes"), body.repeat(1000).as_bytes());
        let out = t.backup(Cred::Admin).ok();
        let json = out.json();
        let run = json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["target"] == "locked")
            .unwrap_or_else(|| panic!("{out}"));
        runs.push(run["run"].as_str().unwrap().to_string());
    }
    let key = |k: &str| format!("host1/{k}");
    let lock_of = |k: &str| -> (String, chrono::DateTime<chrono::Utc>) {
        let r = t.aws_json(&["s3api", "head-object", "--bucket", &bucket, "--key", k]);
        let until = r["ObjectLockRetainUntilDate"]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: {r:#}"));
        (
            r["ObjectLockMode"].as_str().unwrap().to_string(),
            chrono::DateTime::parse_from_rfc3339(until)
                .unwrap()
                .to_utc(),
        )
    };
    let refs = |run: &str| -> BTreeSet<String> {
        let url = format!("s3://{bucket}/host1/runs/{host}/{source}/{run}.refs");
        let out = t.aws(Cred::Admin, &["s3", "cp", &url, "-"]);
        assert!(out.status.success(), "{url}");
        refs_keys(&out.stdout)
    };
    let pack = |name: &str| key(&format!("data/{}/{name}", &name[..2]));
    let (newest, second) = (&runs[2], &runs[1]);
    let newest_packs = refs(newest);
    let only_second: Vec<String> = refs(second).difference(&newest_packs).cloned().collect();
    assert!(
        !only_second.is_empty(),
        "`changes` changed between the runs"
    );
    let before = lock_of(&pack(&only_second[0])).1;

    const PRUNE: [&str; 7] = [
        "prune",
        "--target",
        "locked",
        "--keep-last",
        "2",
        "--keep-monthly",
        "12",
    ];
    let prune = |extra: &[&str]| {
        let mut args = PRUNE.to_vec();
        args.extend_from_slice(extra);
        t.coffer_json(Cred::Admin, &args)
    };
    let dry = prune(&["--dry-run"]);
    assert_eq!(dry[0]["lock"]["dry_run"], true, "{dry:#}");
    assert!(as_u64(&dry[0]["lock"], "extended") > 0, "{dry:#}");
    let newest_list = key(&format!("runs/{host}/{source}/{newest}.refs"));
    assert_eq!(
        lock_of(&newest_list)
            .1
            .signed_duration_since(chrono::Utc::now())
            .num_days(),
        1,
        "a dry run extends nothing"
    );

    let report = prune(&[]);
    let lock = &report[0]["lock"];
    assert_eq!(lock["mode"], "GOVERNANCE", "{report:#}");
    assert_eq!(lock["runs"], 2, "{report:#}");
    assert!(
        lock["problems"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    // The newest run's tier ends twelve months after its month began.
    let items = report[0]["groups"][0]["runs"].as_array().unwrap();
    let item = |run: &str| items.iter().find(|i| i["run"] == run).unwrap();
    let stored = chrono::DateTime::parse_from_rfc3339(item(newest)["stored"].as_str().unwrap())
        .unwrap()
        .to_utc();
    let month = chrono::NaiveDate::from_ymd_opt(stored.year(), stored.month(), 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let tier_end = month.checked_add_months(chrono::Months::new(12)).unwrap();
    assert_eq!(
        item(newest)["kept_until"],
        tier_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{report:#}"
    );
    assert!(
        item(second).get("kept_until").is_none(),
        "last 2 has no date: {report:#}"
    );
    // Its objects and every pack it lists are locked until then, in the config's mode.
    let mut newest_objects = vec![
        newest_list,
        key(&format!("runs/{host}/{source}/{newest}.meta")),
    ];
    newest_objects.extend(newest_packs.iter().map(|p| pack(p)));
    for k in &newest_objects {
        assert_eq!(lock_of(k), ("GOVERNANCE".to_string(), tier_end), "{k}");
    }
    // The second run's own packs keep their backup's lock.
    for p in &only_second {
        let (_, until) = lock_of(&pack(p));
        assert!(until < tier_end && until >= before, "{p}: {until}");
    }
    assert_eq!(
        as_u64(lock, "extended"),
        newest_objects.len() as u64,
        "{report:#}"
    );
    assert!(
        as_u64(lock, "enough") >= only_second.len() as u64 + 2,
        "{report:#}"
    );

    // Nothing more to do at once: each object is touched once per half retention.
    let again = prune(&[]);
    assert_eq!(again[0]["lock"]["extended"], 0, "{again:#}");
    let text = t.coffer(Cred::Admin, &PRUNE).ok();
    assert!(
        text.stdout
            .contains("Object Lock (GOVERNANCE) of the 2 kept runs")
            && text.stdout.contains(&format!(
                "(until {})",
                tier_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
        "{text}"
    );
}

/// The README's way from nothing to a monitored, put-only backup on S3, with what
/// `coffer init --policies --apply` does: a key, a new bucket set up by init with the
/// admin's credential (versioning, the bucket policy, the lifecycle rule, a user per role
/// with its policy and a credentials file only its owner reads), the host's config
/// skeleton (its paths filled in) backing up with the host's file, the monitor's checking
/// it with the monitor's. Applying again makes no second key; no secret is printed.
fn from_nothing_to_a_monitored_put_only_backup_with_init_apply(kind: Kind) {
    use std::os::unix::fs::PermissionsExt;
    let t = On::new(kind, "walk");
    nested_tree(&t.fx.src);
    let keys = t.fx.path("keys");
    let (public, _) = keygen(&t.fx.home, &keys, "admin");
    let bucket = format!("walk-{}", &t.prefix[..t.prefix.len().min(50)]);
    t.aws_json(&["s3api", "create-bucket", "--bucket", &bucket]);
    let dir = t.fx.path("setup");
    let url = format!("s3://{bucket}/fleet/web1");
    let init = || {
        let mut cmd = t.with_cred(coffer(&t.fx.home), Cred::Admin);
        cmd.env("AWS_ENDPOINT_URL", &t.s3().endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .args(["init", &url, "--policies"])
            .arg(&dir)
            .arg("--apply");
        run(cmd)
    };
    let out = init().ok();
    let user = |role: &str| format!("coffer-{role}-{bucket}-fleet-web1");
    assert!(
        out.stdout.contains("versioning on")
            && out
                .stdout
                .contains(&format!("user {} (host): created", user("host"))),
        "{out}"
    );
    // What init applied, as the server has it.
    let versioning = t.aws_json(&["s3api", "get-bucket-versioning", "--bucket", &bucket]);
    assert_eq!(versioning["Status"], "Enabled", "{versioning:#}");
    let policy = t.aws_json(&["s3api", "get-bucket-policy", "--bucket", &bucket]);
    let policy: serde_json::Value =
        serde_json::from_str(policy["Policy"].as_str().unwrap()).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bucket-policy.json")).unwrap())
            .unwrap();
    assert_eq!(policy, written);
    let rules = t.aws_json(&[
        "s3api",
        "get-bucket-lifecycle-configuration",
        "--bucket",
        &bucket,
    ]);
    let rule = &rules["Rules"][0];
    assert_eq!(rule["ID"], "coffer-expire-deleted", "{rules:#}");
    assert_eq!(rule["Filter"]["Prefix"], "fleet/web1/", "{rules:#}");
    assert_eq!(
        rule["NoncurrentVersionExpiration"]["NoncurrentDays"], 30,
        "{rules:#}"
    );
    let mut secrets = Vec::new();
    for role in ["host", "admin", "monitor"] {
        let got = t.aws_json(&[
            "iam",
            "get-user-policy",
            "--user-name",
            &user(role),
            "--policy-name",
            "coffer",
        ]);
        let written: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{role}-policy.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got["PolicyDocument"], written, "{role}");
        let file = dir.join(format!("{role}.credentials"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        let text = std::fs::read_to_string(&file).unwrap();
        let secret = text
            .lines()
            .find_map(|l| l.strip_prefix("aws_secret_access_key = "))
            .unwrap()
            .to_string();
        secrets.push(secret);
    }
    for secret in &secrets {
        assert!(!out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()));
    }
    // Again: the users exist, the policies are put again, no second key is made.
    let again = init().ok();
    assert!(
        again.stdout.contains("(host): exists") && again.stdout.contains("kept, no new key"),
        "{again}"
    );
    // A credentials file others may read is not kept as if nothing happened.
    let host_file = dir.join("host.credentials");
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    init()
        .expect(1)
        .stderr_has("host.credentials")
        .stderr_has("may have leaked");
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listed = t.aws_json(&["iam", "list-access-keys", "--user-name", &user("host")]);
    assert_eq!(
        listed["AccessKeyMetadata"].as_array().unwrap().len(),
        1,
        "{listed:#}"
    );

    // The test server does not know the s3:if-none-match condition key, so the policy
    // refuses every PutObject there, conditional or not (AWS evaluates it): it goes
    // once it was checked.
    let out_policy = t.aws(
        Cred::Admin,
        &["s3api", "delete-bucket-policy", "--bucket", &bucket],
    );
    assert!(out_policy.status.success());
    // The skeletons, with this machine's paths and the test server's endpoint (the
    // target section is their last); each role's credentials file where it says.
    let server = t.s3().server_lines();
    let skeleton = |role: &str, state: &str| -> PathBuf {
        let text = std::fs::read_to_string(dir.join(format!("{role}.toml")))
            .unwrap()
            .replace("\"/etc\"", &toml_str(&t.fx.src))
            .replace("\"/etc/coffer/admin.pub.asc\"", &toml_str(&public))
            .replace(
                &format!("\"/etc/coffer/{role}.credentials\""),
                &toml_str(&dir.join(format!("{role}.credentials"))),
            )
            .replace(
                &format!("\"/var/lib/coffer/{state}\""),
                &toml_str(&t.fx.path(&format!("state-{role}"))),
            );
        let path = t.fx.path(&format!("{role}-config.toml"));
        std::fs::write(&path, text + &server).unwrap();
        path
    };
    // No credential in the environment: each role's own file.
    let as_role = |config: &Path, args: &[&str]| {
        let mut cmd = coffer(&t.fx.home);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg("-c")
            .arg(config)
            .args(args);
        run(cmd)
    };
    let host = skeleton("host", "config");
    let out = as_role(&host, &["backup", "--json"]).ok();
    assert_eq!(out.json()["runs"][0]["target"], "s3", "{out}");
    let refused = as_role(&host, &["runs"]);
    assert_ne!(refused.code, Some(0), "the host may not list: {refused}");
    let monitor = skeleton("monitor", "monitor");
    let out = as_role(&monitor, &["status", "--max-age", "26h"]).expect(0);
    assert!(out.stdout.starts_with("COFFER OK"), "{out}");
    assert!(out.stdout.contains("web1/etc"), "{out}");
}
