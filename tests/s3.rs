//! Tests against a real S3-compatible server (moto, started by `scripts/s3-server.sh`;
//! `scripts/test.sh` starts it and sets `COFFER_TEST_S3_ENV`). The server enforces IAM: a
//! put-only user may only create objects, an admin may do anything.
//!
//! Every test works under its own prefix of the shared bucket, so they run in parallel.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

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
             region = \"us-east-1\"\npack_size = \"1MiB\"\nretries = 2\nretry_timeout = \"20s\"\n",
            self.url(),
            self.s3.endpoint
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
        let before = std::fs::metadata(&self.s3.log)
            .map(|m| m.len())
            .unwrap_or(0);
        let out = f();
        let log = std::fs::read(&self.s3.log).unwrap();
        let lines = String::from_utf8_lossy(&log[before as usize..])
            .lines()
            .filter(|l| l.contains(&self.prefix))
            .map(str::to_string)
            .collect();
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
fn large_objects_go_up_in_parts_with_the_put_only_credential() {
    let t = S3Fixture::new("multipart");
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
        .with_multipart_threshold(5 << 20);
    let content = pseudo_random(3, 20 << 20);
    let file_path = t.fx.path("large");
    write(&file_path, &content);
    let mut file = std::fs::File::open(&file_path).unwrap();
    let path = object_store::path::Path::from("runs/large-object");
    let (r, requests) = t.requests_during(|| store.put_file(&path, &mut file));
    r.unwrap();
    let parts = requests
        .iter()
        .filter(|l| l.contains("partNumber="))
        .count();
    assert!(parts >= 2, "uploaded in parts: {requests:#?}");
    let local = t.fx.path("back");
    let out = t.aws(
        Cred::Admin,
        &[
            "s3",
            "cp",
            &format!("s3://{}/{}/runs/large-object", t.s3.bucket, t.prefix),
            local.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(read_bytes(&local) == content);
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
