//! Tests against a real S3-compatible server (moto, started by `scripts/s3-server.sh`;
//! `scripts/test.sh` starts it and sets `COFFER_TEST_S3_ENV`). The server enforces IAM: a
//! put-only user may only create objects, an admin may do anything.
//!
//! Every test works under its own prefix of the shared bucket, so they run in parallel.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use util::*;

/// The test server's settings, from the file `COFFER_TEST_S3_ENV` names.
struct S3 {
    endpoint: String,
    bucket: String,
    admin: (String, String),
    put: (String, String),
    log: PathBuf,
    aws_cli: PathBuf,
}

fn server() -> S3 {
    let path = std::env::var("COFFER_TEST_S3_ENV").unwrap_or_else(|_| {
        panic!(
            "COFFER_TEST_S3_ENV is not set: run the tests with scripts/test.sh, which \
             starts the S3 test server (scripts/s3-server.sh)"
        )
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        v.get(k)
            .unwrap_or_else(|| panic!("{k} missing in {path}"))
            .to_string()
    };
    S3 {
        endpoint: get("COFFER_TEST_S3_ENDPOINT"),
        bucket: get("COFFER_TEST_S3_BUCKET"),
        admin: (
            get("COFFER_TEST_S3_ADMIN_KEY"),
            get("COFFER_TEST_S3_ADMIN_SECRET"),
        ),
        put: (
            get("COFFER_TEST_S3_PUT_KEY"),
            get("COFFER_TEST_S3_PUT_SECRET"),
        ),
        log: get("COFFER_TEST_S3_LOG").into(),
        aws_cli: get("COFFER_TEST_AWS_CLI").into(),
    }
}

/// Which credential a command uses.
#[derive(Clone, Copy)]
enum Cred {
    PutOnly,
    Admin,
}

/// A fixture whose target is a fresh prefix of the test bucket.
struct S3Fixture {
    fx: Fixture,
    s3: S3,
    prefix: String,
}

impl S3Fixture {
    fn new(name: &str) -> S3Fixture {
        let fx = Fixture::new();
        let s3 = server();
        let unique = fx
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase();
        let prefix = format!(
            "{name}-{}",
            unique.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let me = S3Fixture { fx, s3, prefix };
        me.write_config(&[]);
        me
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket, self.prefix)
    }

    /// Writes the config with the S3 target `s3` plus `extra` target sections.
    fn write_config(&self, extra: &[(&str, String)]) {
        self.write_config_with("", extra);
    }

    /// Like [`S3Fixture::write_config`], with `s3_lines` added to the `[target.s3]`
    /// section.
    fn write_config_with(&self, s3_lines: &str, extra: &[(&str, String)]) {
        let mut text = self.fx.config_text(&Settings {
            pack_size: Some("1MiB".into()),
            ..Settings::default()
        });
        let targets: Vec<String> = std::iter::once("\"s3\"".to_string())
            .chain(extra.iter().map(|(n, _)| format!("\"{n}\"")))
            .collect();
        text = text.replace(
            "targets = [\"local\"]",
            &format!("targets = [{}]", targets.join(", ")),
        );
        text += &format!(
            "\n[target.s3]\nurl = \"{}\"\nendpoint = \"{}\"\nallow_http = true\n\
             region = \"us-east-1\"\npack_size = \"1MiB\"\nretries = 2\nretry_timeout = \"20s\"\n{}",
            self.url(),
            self.s3.endpoint,
            s3_lines
        );
        for (name, body) in extra {
            text += &format!("\n[target.{name}]\n{body}\n");
        }
        std::fs::write(&self.fx.config, text).unwrap();
    }

    fn with_cred(&self, mut cmd: assert_cmd::Command, cred: Cred) -> assert_cmd::Command {
        let (k, s) = match cred {
            Cred::PutOnly => &self.s3.put,
            Cred::Admin => &self.s3.admin,
        };
        cmd.env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s)
            .env("AWS_REGION", "us-east-1");
        cmd
    }

    fn backup(&self, cred: Cred) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(["backup", "--json"]);
        run(cmd)
    }

    fn restore(&self, cred: Cred, to: &Path) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.arg("restore")
            .arg("--key")
            .arg(&self.fx.secret_key)
            .args(["--source", SOURCE, "--target", "s3", "--to"])
            .arg(to);
        run(cmd)
    }

    fn runs(&self, cred: Cred) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(["runs", "--json", "--target", "s3"]);
        run(cmd)
    }

    /// The AWS CLI as an independent client.
    fn aws(&self, cred: Cred, args: &[&str]) -> std::process::Output {
        let (k, s) = match cred {
            Cred::PutOnly => &self.s3.put,
            Cred::Admin => &self.s3.admin,
        };
        Command::new(&self.s3.aws_cli)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.fx.home)
            .env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .args(["--endpoint-url", &self.s3.endpoint])
            .args(args)
            .output()
            .expect("aws cli runs")
    }

    fn aws_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.aws(Cred::Admin, args);
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    /// Every object key under the prefix, listed by the AWS CLI.
    fn keys(&self) -> Vec<String> {
        let v = self.aws_json(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &self.s3.bucket,
            "--prefix",
            &format!("{}/", self.prefix),
        ]);
        v["Contents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| o["Key"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Request lines of the server log mentioning this test's prefix, logged while `f` ran.
    fn requests_during<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let (out, mut lines) = self.log_during(f);
        lines.retain(|l| l.contains(&self.prefix));
        (out, lines)
    }
}

fn method(line: &str) -> &str {
    line.split('"')
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
}

#[test]
fn put_only_backup_then_restore_with_the_read_credential() {
    let t = S3Fixture::new("putonly");
    small_tree(&t.fx.src);
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
    let t = S3Fixture::new("wiped");
    small_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    // Everything under the prefix deleted (delete markers on a versioned bucket).
    let out = t.aws(
        Cred::Admin,
        &[
            "s3",
            "rm",
            "--recursive",
            &format!("s3://{}/{}/", t.s3.bucket, t.prefix),
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
    let t = S3Fixture::new("lostpack");
    write(&t.fx.src.join("big"), &pseudo_random(7, 3 << 20));
    write(&t.fx.src.join("small"), b"small\n");
    t.backup(Cred::PutOnly).ok();
    let pack = t
        .keys()
        .into_iter()
        .find(|k| k.contains("/data/"))
        .expect("a pack");
    let out = t.aws(
        Cred::Admin,
        &["s3", "rm", &format!("s3://{}/{pack}", t.s3.bucket)],
    );
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
    let t = S3Fixture::new("canread");
    t.write_config_with("can_read = true\n", &[]);
    write(&t.fx.src.join("big"), &pseudo_random(8, 3 << 20));
    t.backup(Cred::Admin).ok();
    let pack = t
        .keys()
        .into_iter()
        .find(|k| k.contains("/data/"))
        .expect("a pack");
    let out = t.aws(
        Cred::Admin,
        &["s3", "rm", &format!("s3://{}/{pack}", t.s3.bucket)],
    );
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

#[test]
fn the_put_only_credential_cannot_read_list_or_delete() {
    let t = S3Fixture::new("refused");
    small_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    let key = t
        .keys()
        .into_iter()
        .find(|k| k.contains("/data/"))
        .expect("a pack");
    let bucket = t.s3.bucket.clone();
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
            &key,
            sink,
        ],
        vec!["s3api", "list-objects-v2", "--bucket", &bucket],
        vec!["s3api", "delete-object", "--bucket", &bucket, "--key", &key],
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

#[test]
fn backups_never_remove_or_replace_a_version() {
    let t = S3Fixture::new("versions");
    small_tree(&t.fx.src);
    t.backup(Cred::PutOnly).ok();
    t.backup(Cred::PutOnly).ok(); // nothing new
                                  // A lost local index: everything is uploaded again, into new packs.
    std::fs::remove_dir_all(&t.fx.state).unwrap();
    t.backup(Cred::PutOnly).ok();
    write(&t.fx.src.join("new.txt"), b"one more file\n");
    t.backup(Cred::PutOnly).ok();
    let v = t.aws_json(&[
        "s3api",
        "list-object-versions",
        "--bucket",
        &t.s3.bucket,
        "--prefix",
        &format!("{}/", t.prefix),
    ]);
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

#[test]
fn an_unreachable_target_does_not_stop_the_others() {
    let t = S3Fixture::new("twotargets");
    // Nothing listens on port 1 of loopback.
    t.write_config(&[(
        "dead",
        format!(
            "url = \"s3://{}/dead\"\nendpoint = \"http://127.0.0.1:1\"\nallow_http = true\n\
             retries = 0\nretry_timeout = \"5s\"",
            t.s3.bucket
        ),
    )]);
    small_tree(&t.fx.src);
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

#[test]
fn an_independent_client_verifies_every_object_against_its_name() {
    let t = S3Fixture::new("layout");
    small_tree(&t.fx.src);
    write(&t.fx.src.join("big.bin"), &pseudo_random(7, 3 << 20));
    t.backup(Cred::PutOnly).ok();
    let keys = t.keys();
    let data: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.contains("/data/"))
        .cloned()
        .collect();
    assert!(data.len() >= 3, "several 1 MiB packs: {keys:#?}");
    let dir = t.fx.path("download");
    std::fs::create_dir_all(&dir).unwrap();
    for key in &data {
        let file = dir.join("object");
        let out = t.aws(
            Cred::Admin,
            &[
                "s3",
                "cp",
                &format!("s3://{}/{key}", t.s3.bucket),
                file.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = key.rsplit('/').next().unwrap();
        let parent = key.rsplit('/').nth(1).unwrap();
        assert_eq!(&name[..2], parent, "data/<first two hex digits>/<hash>");
        assert_eq!(
            blake3::hash(&read_bytes(&file)).to_hex().as_str(),
            name,
            "{key}"
        );
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
            &[
                "s3",
                "cp",
                &format!("s3://{}/{refs}", t.s3.bucket),
                file.to_str().unwrap()
            ]
        )
        .status
        .success());
    let listed: BTreeSet<String> = String::from_utf8(read_bytes(&file))
        .unwrap()
        .lines()
        .filter(|l| l.len() == 64)
        .map(|h| format!("{}/data/{}/{h}", t.prefix, &h[..2]))
        .collect();
    assert_eq!(listed, data);
}

#[test]
fn a_large_metafile_goes_up_in_create_only_pieces_with_the_put_only_credential() {
    let t = S3Fixture::new("pieces");
    let mut target = coffer::TargetConfig::from_url(&t.url()).unwrap();
    target.endpoint = Some(t.s3.endpoint.clone());
    target.allow_http = Some(true);
    target.region = Some("us-east-1".into());
    target
        .options
        .insert("aws_access_key_id".into(), t.s3.put.0.clone());
    target
        .options
        .insert("aws_secret_access_key".into(), t.s3.put.1.clone());
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
            bytes::Bytes::from_static(refs),
            &mut file,
            data.len() as u64,
        )
    };
    let (r, requests) = t.requests_during(|| put(&content, b"refs"));
    r.unwrap();
    // Three pieces and the object list, each one PUT; no multipart upload.
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(requests.iter().all(|r| method(r) == "PUT"), "{requests:#?}");
    let run_dir = format!("{}/runs/{HOST}/{SOURCE}", t.prefix);
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
                &format!("s3://{}/{run_dir}/{name}", t.s3.bucket),
                local.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_bytes(&local)
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

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A few files in nested directories, with a symlink; mtimes in the past.
fn small_tree(src: &Path) {
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost\n");
    write(&src.join("etc/app/config.toml"), b"[a]\nb = 1\n");
    write(&src.join("data.bin"), &pseudo_random(1, 1_500_000));
    write(&src.join("empty"), b"");
    std::os::unix::fs::symlink("etc/hosts", src.join("hosts-link")).unwrap();
    set_past_mtimes(src, 1_600_000_000);
}

// ---------------------------------------------------------------------------------------
// prune and gc on S3 (tests/gc.rs does the same on a folder target)

/// Longer than the grace period [`SHORT_BOUNDS`] give (4 s), with a margin for the
/// one-second resolution of the index's timestamps and of S3's LastModified.
const PAST_GRACE: Duration = Duration::from_millis(5200);

/// Safety bounds of seconds, so that gc deletes for real: a grace period of 4 s.
const SHORT_BOUNDS: &str = "dedup_max_age = \"0s\"\nmax_run_time = \"4s\"\n";

/// Held by every step of these tests that deletes from the bucket (prune, gc with the
/// admin credential) and by the step that checks the server's log for deletes: a batch
/// delete (`POST /bucket?delete`) does not name its keys in the log, so that check must
/// not overlap another test's deletes. The tests share one process, so a static lock
/// suffices.
static DELETES: Mutex<()> = Mutex::new(());

fn deletes_lock() -> MutexGuard<'static, ()> {
    DELETES.lock().unwrap_or_else(|e| e.into_inner())
}

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

impl S3Fixture {
    /// A fixture with the short safety bounds (and `s3_lines`) in its target section.
    fn with_bounds(name: &str, s3_lines: &str) -> S3Fixture {
        let t = S3Fixture::new(name);
        t.write_config_with(&format!("{SHORT_BOUNDS}{s3_lines}"), &[]);
        t
    }

    /// `coffer -c <config> <args> --json` with `cred`, which must succeed.
    #[track_caller]
    fn coffer_json(&self, cred: Cred, args: &[&str]) -> serde_json::Value {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(args).arg("--json");
        run(cmd).ok().json()
    }

    /// `coffer gc --target s3` with `cred` and `args`, whatever its outcome.
    fn gc(&self, cred: Cred, args: &[&str]) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(["gc", "--target", "s3"]).args(args);
        run(cmd)
    }

    /// A backup with `config` and the put-only credential that must succeed; its run id.
    #[track_caller]
    fn backup_run(&self, config: &Path) -> String {
        let mut cmd = self.with_cred(coffer(&self.fx.home), Cred::PutOnly);
        cmd.arg("-c").arg(config).args(["backup", "--json"]);
        let out = run(cmd).ok();
        let json = out.json();
        assert_eq!(json["runs"].as_array().map(Vec::len), Some(1), "{out}");
        json["runs"][0]["run"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id\n{out}"))
            .to_string()
    }

    /// Names (the 64 hex digits) of the data objects under the prefix, listed by the AWS
    /// CLI.
    fn data_names(&self) -> BTreeSet<String> {
        let data = format!("{}/data/", self.prefix);
        self.keys()
            .iter()
            .filter_map(|k| k.strip_prefix(&data))
            .map(|k| {
                let (dir, name) = k.split_once('/').expect("data/xx/<name>");
                assert_eq!(&name[..2], dir, "{k}");
                name.to_string()
            })
            .collect()
    }

    /// An object's content, read by the AWS CLI with the admin credential.
    fn download(&self, key: &str) -> Vec<u8> {
        let url = format!("s3://{}/{key}", self.s3.bucket);
        let out = self.aws(Cred::Admin, &["s3", "cp", &url, "-"]);
        assert!(
            out.status.success(),
            "aws s3 cp {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The object keys a run's object list names, read by the AWS CLI.
    fn refs_of(&self, host: &str, run: &str) -> BTreeSet<String> {
        let key = format!("{}/runs/{host}/{SOURCE}/{run}.refs", self.prefix);
        refs_keys(&self.download(&key))
    }

    /// Every object list under `runs/`, by key.
    fn all_refs(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.keys()
            .into_iter()
            .filter(|k| k.ends_with(".refs"))
            .map(|k| {
                let refs = refs_keys(&self.download(&k));
                (k, refs)
            })
            .collect()
    }

    /// Every server log line (of any test) logged while `f` ran.
    fn log_during<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let before = std::fs::metadata(&self.s3.log)
            .map(|m| m.len())
            .unwrap_or(0);
        let out = f();
        let log = std::fs::read(&self.s3.log).unwrap();
        let lines = String::from_utf8_lossy(&log[before as usize..])
            .lines()
            .map(str::to_string)
            .collect();
        (out, lines)
    }

    /// Restores `run` (made by `host`) with the admin credential and `config` into a new
    /// directory `dest`, and compares the named files.
    #[track_caller]
    fn restore_run_matches(
        &self,
        config: &Path,
        host: &str,
        run: &str,
        files: &[(&str, &[u8])],
        dest: &str,
    ) {
        let to = self.fx.path(dest);
        let mut cmd = self.with_cred(coffer(&self.fx.home), Cred::Admin);
        cmd.arg("-c")
            .arg(config)
            .arg("restore")
            .arg("--key")
            .arg(&self.fx.secret_key)
            .args([
                "--source", SOURCE, "--target", "s3", "--host", host, "--run",
            ])
            .arg(run)
            .arg("--to")
            .arg(&to);
        let out = util::run(cmd).ok();
        assert_restored(&out, &to, files, &format!("run {run}"));
        let mut restored: Vec<String> = std::fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        restored.sort();
        let mut expected: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        expected.sort();
        assert_eq!(restored, expected, "run {run} holds exactly these files");
    }
}

#[test]
fn gc_after_prune_on_s3_deletes_exactly_the_unreferenced_objects_and_runs_still_restore() {
    let t = S3Fixture::with_bounds("gcprune", "");
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
    let lock = deletes_lock();
    let pruned = t.coffer_json(
        Cred::Admin,
        &["prune", "--target", "s3", "--keep-last", "2"],
    );
    drop(lock);
    assert_eq!(pruned[0]["deleted"], 1, "{pruned:#}");
    let run_files: BTreeSet<String> = t
        .keys()
        .into_iter()
        .filter(|k| k.contains("/runs/"))
        .collect();
    let expected_runs: BTreeSet<String> = [&run2, &run3]
        .iter()
        .flat_map(|r| {
            ["meta", "refs"].map(|e| format!("{}/runs/{HOST}/{SOURCE}/{r}.{e}", t.prefix))
        })
        .collect();
    assert_eq!(run_files, expected_runs, "prune deleted run 1's two files");
    assert_eq!(t.data_names(), before, "prune deletes no data");

    std::thread::sleep(PAST_GRACE);
    t.gc(Cred::Admin, &["--grace", "3s"])
        .expect(EXIT_ERROR)
        .stderr_has("shorter than dedup_max_age + max_run_time");
    let dry = t.coffer_json(Cred::Admin, &["gc", "--target", "s3", "--dry-run"]);
    assert_eq!(dry[0]["objects_deleted"], garbage.len(), "{dry:#}");
    assert_eq!(t.data_names(), before, "a dry run deletes nothing");
    let lock = deletes_lock();
    let done = t.coffer_json(Cred::Admin, &["gc", "--target", "s3"]);
    drop(lock);
    assert_eq!(done[0]["target"], "s3", "{done:#}");
    assert_eq!(done[0]["objects_deleted"], garbage.len(), "{done:#}");
    assert_eq!(done[0]["objects_referenced"], retained.len(), "{done:#}");
    assert_eq!(done[0]["objects_young"], 0, "{done:#}");
    assert_eq!(done[0]["runs"], 2, "{done:#}");
    assert_eq!(
        t.data_names(),
        retained,
        "exactly the unreferenced objects went"
    );
    let again = t.coffer_json(Cred::Admin, &["gc", "--target", "s3"]);
    assert_eq!(again[0]["objects_deleted"], 0, "{again:#}");

    // The bucket is versioned: a delete there adds a delete marker and keeps the old
    // version (until a lifecycle rule expires it).
    let v = t.aws_json(&[
        "s3api",
        "list-object-versions",
        "--bucket",
        &t.s3.bucket,
        "--prefix",
        &format!("{}/", t.prefix),
    ]);
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
    expected_marked.insert(format!("{run1}.meta"));
    expected_marked.insert(format!("{run1}.refs"));
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
    for name in &before {
        let latest = per_name
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no version left"));
        // Deleted objects keep their one version, no longer the latest.
        assert_eq!(latest, &[!garbage.contains(name)], "{name}");
    }

    t.restore_run_matches(&config, HOST, &run2, &[("b", &b), ("c", &c)], "r2");
    t.restore_run_matches(
        &config,
        HOST,
        &run3,
        &[("b", &b), ("c", &c), ("d", &d)],
        "r3",
    );
}

#[test]
fn gc_with_the_put_only_credential_fails_and_deletes_nothing() {
    let t = S3Fixture::with_bounds("gcputonly", "");
    small_tree(&t.fx.src);
    let config = t.fx.config.clone();
    t.backup_run(&config);
    std::thread::sleep(Duration::from_millis(1100));
    write(&t.fx.src.join("data.bin"), &pseudo_random(9, 1_500_000));
    t.backup_run(&config);
    let lock = deletes_lock();
    let pruned = t.coffer_json(
        Cred::Admin,
        &["prune", "--target", "s3", "--keep-last", "1"],
    );
    drop(lock);
    assert_eq!(pruned[0]["deleted"], 1, "{pruned:#}");
    // Past the grace period, so that there is garbage gc would delete if it could.
    std::thread::sleep(PAST_GRACE);
    let before = t.keys();

    let lock = deletes_lock();
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
    let lock = deletes_lock();
    let (done, lines) = t.log_during(|| t.coffer_json(Cred::Admin, &["gc", "--target", "s3"]));
    drop(lock);
    let deleted = done[0]["objects_deleted"].as_u64().unwrap();
    assert!(deleted >= 1, "{done:#}");
    assert_eq!(t.keys().len(), before.len() - deleted as usize);
    assert!(lines.iter().any(|l| is_delete(l)), "{lines:#?}");
}

/// Brackup's hazard on S3: host B (backing up with the put-only credential, so it cannot
/// look at what is on the bucket) has an index listing chunks that an admin's gc deleted.
/// B's next run must upload them again, not reference the deleted objects.
#[test]
fn two_hosts_on_s3_a_stale_index_never_references_collected_objects() {
    let t = S3Fixture::with_bounds("twohosts", "");
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
    let lock = deletes_lock();
    let pruned = t.coffer_json(
        Cred::Admin,
        &["prune", "--target", "s3", "--keep-last", "1"],
    );
    drop(lock);
    assert_eq!(pruned[0]["deleted"], 1, "b1 goes: {pruned:#}");
    let still_needed: BTreeSet<String> = t.all_refs().into_values().flatten().collect();
    let garbage: BTreeSet<String> = objects.difference(&still_needed).cloned().collect();
    assert_eq!(garbage, dropped_only);
    let lock = deletes_lock();
    let gc = t.coffer_json(Cred::Admin, &["gc", "--target", "s3"]);
    drop(lock);
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
#[test]
fn an_interrupted_s3_backup_then_gc_then_a_rerun_restores_completely() {
    // Slow uploads so that the backup can be killed half way.
    let t = S3Fixture::with_bounds(
        "interrupted",
        "upload_rate_limit = \"1MiB\"\nupload_concurrency = 1\n",
    );
    let data: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), pseudo_random(20 + i, 1 << 20)))
        .collect();
    for (name, bytes) in &data {
        write(&t.fx.src.join(name), bytes);
    }
    let mut child = std::process::Command::new(coffer_bin())
        .env_clear()
        .env("HOME", &t.fx.home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", &t.s3.put.0)
        .env("AWS_SECRET_ACCESS_KEY", &t.s3.put.1)
        .env("AWS_REGION", "us-east-1")
        .arg("-c")
        .arg(&t.fx.config)
        .args(["backup", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
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
        !t.keys().iter().any(|k| k.contains("/runs/")),
        "nor stored its object list"
    );
    // Too young: the grace period protects them (the run might still be committing).
    // An explicit grace well above the 4 s the bounds give: S3's LastModified has
    // one-second resolution and listing the bucket from here takes a while, so the
    // default would leave these objects young by a margin too thin to test.
    let young = t.coffer_json(Cred::Admin, &["gc", "--target", "s3", "--grace", "60s"]);
    assert_eq!(young[0]["objects_deleted"], 0, "{young:#}");
    assert_eq!(young[0]["objects_young"], left.len(), "{young:#}");
    assert_eq!(young[0]["grace_secs"], 60, "{young:#}");
    assert_eq!(t.data_names(), left);

    std::thread::sleep(PAST_GRACE);
    let lock = deletes_lock();
    let gc = t.coffer_json(Cred::Admin, &["gc", "--target", "s3"]);
    drop(lock);
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
