//! A fixture on a target of one kind, so that a scenario is written once and runs against
//! every kind of target the test servers provide (object_store runs one conformance suite
//! against every backend the same way).
//!
//! [`Kind::Folder`] is the fixture's own `file://` folder; [`Kind::S3`] is a fresh prefix
//! of the bucket on the S3 test server (moto, started by `scripts/s3-server.sh`, which
//! `scripts/test.sh` runs and names in `COFFER_TEST_S3_ENV`). That server enforces IAM: a
//! put-only user may only create objects, an admin may do anything. [`Kind::S3Ministack`]
//! is the same on a second S3 server implemented independently of moto (ministack,
//! `scripts/ministack-server.sh`, `COFFER_TEST_MINISTACK_ENV`), so that S3 compatibility
//! is not one emulator's opinion. [`Kind::Azure`] is a
//! fresh prefix of a container on Azurite (`scripts/azure-server.sh`,
//! `COFFER_TEST_AZURE_ENV`): the account key is the admin, a SAS that may only create
//! blobs the put-only credential. [`Kind::Gcs`] is a fresh prefix of a bucket on
//! fake-gcs-server (`scripts/gcs-server.sh`, `COFFER_TEST_GCS_ENV`), which has no IAM:
//! both credentials are the same, as on a folder. Azure and GCS objects are looked at
//! through object_store's own clients with the admin credential.
//!
//! Keys are relative to the target's root (`data/ab/ab…`, `runs/<host>/<source>/…`), so a
//! scenario never sees which kind it runs on unless it asks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::*;

/// The kinds of target a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Folder,
    S3,
    /// S3 on the second server (ministack), implemented independently of moto.
    S3Ministack,
    Azure,
    Gcs,
}

impl Kind {
    /// Whether the put-only credential is a different one that the server holds to
    /// creating objects (S3's IAM user, Azure's create-only SAS).
    pub fn put_only_is_enforced(self) -> bool {
        matches!(self, Kind::S3 | Kind::S3Ministack | Kind::Azure)
    }

    /// Whether the target is S3, on either server.
    pub fn is_s3(self) -> bool {
        matches!(self, Kind::S3 | Kind::S3Ministack)
    }

    /// Whether the target is remote (timestamps of a second's resolution, listings
    /// over HTTP), not a folder.
    pub fn is_remote(self) -> bool {
        self != Kind::Folder
    }
}

/// Writes each named scenario (a `fn(Kind)`) as one test per target kind, in a module of
/// the scenario's name: `gc_after_prune::folder`, `gc_after_prune::s3`,
/// `...::s3_ministack`, `...::azure`, `...::gcs`.
#[macro_export]
macro_rules! per_kind {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn folder() {
                super::$scenario($crate::util::target::Kind::Folder)
            }
            #[test]
            fn s3() {
                super::$scenario($crate::util::target::Kind::S3)
            }
            #[test]
            fn s3_ministack() {
                super::$scenario($crate::util::target::Kind::S3Ministack)
            }
            #[test]
            fn azure() {
                super::$scenario($crate::util::target::Kind::Azure)
            }
            #[test]
            fn gcs() {
                super::$scenario($crate::util::target::Kind::Gcs)
            }
        }
    )*};
}

/// Writes each named S3 scenario (a `fn(Kind)`) as one test per S3 server, in a module of
/// the scenario's name: `...::moto` and `...::ministack`.
#[macro_export]
macro_rules! per_s3_server {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn moto() {
                super::$scenario($crate::util::target::Kind::S3)
            }
            #[test]
            fn ministack() {
                super::$scenario($crate::util::target::Kind::S3Ministack)
            }
        }
    )*};
}

/// Longer than the grace period [`SHORT_BOUNDS`] give (4 s), with a margin for the
/// one-second resolution of the index's timestamps and of S3's LastModified.
pub const PAST_GRACE: Duration = Duration::from_millis(5200);

/// Safety bounds of seconds, so that gc deletes for real: a grace period of 4 s.
pub const SHORT_BOUNDS: &str = "dedup_max_age = \"0s\"\nmax_run_time = \"4s\"\n";

/// Held by every step that deletes from the S3 bucket (prune, gc with the admin
/// credential) and by the step that checks the server's log for deletes: a batch delete
/// (`POST /bucket?delete`) does not name its keys in the log, so that check must not
/// overlap another test's deletes. The tests of one binary share one process, so a static
/// lock suffices; on a folder it is not taken.
static DELETES: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds [`DELETES`].
    static HOLDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`DELETES`] held by this thread, or nothing when it was held already.
pub struct DeletesGuard(Option<MutexGuard<'static, ()>>);

impl Drop for DeletesGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDING.set(false);
        }
    }
}

/// The S3 test server's settings, from the file `COFFER_TEST_S3_ENV` names.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub admin: (String, String),
    pub put: (String, String),
    pub log: PathBuf,
    pub aws_cli: PathBuf,
    /// A Python with prometheus_client, for parsing what `coffer status` writes.
    pub python: PathBuf,
}

impl S3 {
    /// The access key and secret of `cred`.
    pub fn keys(&self, cred: Cred) -> &(String, String) {
        match cred {
            Cred::PutOnly => &self.put,
            Cred::Admin => &self.admin,
        }
    }

    /// The lines of a target section that point it at this server.
    pub fn server_lines(&self) -> String {
        format!(
            "endpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n",
            self.endpoint
        )
    }

    /// The moto server's (`COFFER_TEST_S3_ENV`).
    pub fn from_env() -> S3 {
        S3::from_file(
            "COFFER_TEST_S3_ENV",
            "the S3 test server (scripts/s3-server.sh)",
        )
    }

    /// The second S3 server's, ministack (`COFFER_TEST_MINISTACK_ENV`).
    pub fn ministack_from_env() -> S3 {
        S3::from_file(
            "COFFER_TEST_MINISTACK_ENV",
            "the second S3 server (scripts/ministack-server.sh)",
        )
    }

    fn from_file(var: &str, script: &str) -> S3 {
        let v = env_file(var, script);
        let get = |k: &str| get(&v, k);
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
            python: get("COFFER_TEST_PYTHON").into(),
        }
    }
}

/// Reads the KEY=VALUE file the environment variable `var` names.
fn env_file(var: &str, script: &str) -> BTreeMap<String, String> {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which starts {script}")
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get(v: &BTreeMap<String, String>, k: &str) -> String {
    v.get(k).unwrap_or_else(|| panic!("{k} missing")).clone()
}

/// The Azure test server's settings (Azurite), from `COFFER_TEST_AZURE_ENV`.
pub struct Azure {
    pub endpoint: String,
    pub account: String,
    pub key: String,
    pub container: String,
    /// A SAS that may only create blobs (no read, list, overwrite or delete).
    pub sas: String,
}

impl Azure {
    pub fn from_env() -> Azure {
        let v = env_file("COFFER_TEST_AZURE_ENV", "scripts/azure-server.sh");
        Azure {
            endpoint: get(&v, "COFFER_TEST_AZURE_ENDPOINT"),
            account: get(&v, "COFFER_TEST_AZURE_ACCOUNT"),
            key: get(&v, "COFFER_TEST_AZURE_KEY"),
            container: get(&v, "COFFER_TEST_AZURE_CONTAINER"),
            sas: get(&v, "COFFER_TEST_AZURE_SAS"),
        }
    }
}

/// The GCS test server's settings (fake-gcs-server), from `COFFER_TEST_GCS_ENV`.
pub struct Gcs {
    pub base_url: String,
    pub bucket: String,
    pub service_account: PathBuf,
}

impl Gcs {
    pub fn from_env() -> Gcs {
        let v = env_file("COFFER_TEST_GCS_ENV", "scripts/gcs-server.sh");
        Gcs {
            base_url: get(&v, "COFFER_TEST_GCS_BASE_URL"),
            bucket: get(&v, "COFFER_TEST_GCS_BUCKET"),
            service_account: get(&v, "COFFER_TEST_GCS_SERVICE_ACCOUNT").into(),
        }
    }
}

/// A runtime for object_store's clients (Azure, GCS) in the tests.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Which credential a command uses. On a folder both are the same: the file system has
/// no put-only credential (its promises are the folder's permissions, tested apart).
#[derive(Clone, Copy, Debug)]
pub enum Cred {
    PutOnly,
    Admin,
}

/// A [`Fixture`] whose config's source backs up to one target of a [`Kind`]; the target
/// section is named [`On::target`] and packs are 1 MiB.
pub struct On {
    pub fx: Fixture,
    pub kind: Kind,
    pub s3: Option<S3>,
    azure: Option<Azure>,
    gcs: Option<Gcs>,
    /// The S3 prefix (empty for a folder).
    pub prefix: String,
}

impl On {
    /// A fixture on a fresh target of `kind`; `name` makes the S3 prefix readable.
    pub fn new(kind: Kind, name: &str) -> On {
        let fx = Fixture::new();
        let unique = fx
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase();
        let prefix = match kind {
            Kind::Folder => String::new(),
            _ => format!(
                "{name}-{}",
                unique.replace(|c: char| !c.is_ascii_alphanumeric(), "")
            ),
        };
        let me = On {
            fx,
            kind,
            s3: match kind {
                Kind::S3 => Some(S3::from_env()),
                Kind::S3Ministack => Some(S3::ministack_from_env()),
                _ => None,
            },
            azure: (kind == Kind::Azure).then(Azure::from_env),
            gcs: (kind == Kind::Gcs).then(Gcs::from_env),
            prefix,
        };
        me.write_config(&[]);
        me
    }

    /// A fixture with the short safety bounds (and `lines`) in its target section.
    pub fn with_bounds(kind: Kind, name: &str, lines: &str) -> On {
        let t = On::new(kind, name);
        t.write_config_with(&format!("{SHORT_BOUNDS}{lines}"), &[]);
        t
    }

    /// The S3 server; panics on another kind (for scenarios only S3 has).
    pub fn s3(&self) -> &S3 {
        self.s3.as_ref().expect("an S3 fixture")
    }

    /// The target section's name in the config.
    pub fn target(&self) -> &'static str {
        match self.kind {
            Kind::Folder => "local",
            Kind::S3 | Kind::S3Ministack => "s3",
            Kind::Azure => "az",
            Kind::Gcs => "gcs",
        }
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Folder => self.fx.target_url(),
            Kind::S3 | Kind::S3Ministack => format!("s3://{}/{}", self.s3().bucket, self.prefix),
            Kind::Azure => format!(
                "az://{}/{}",
                self.azure.as_ref().unwrap().container,
                self.prefix
            ),
            Kind::Gcs => format!("gs://{}/{}", self.gcs.as_ref().unwrap().bucket, self.prefix),
        }
    }

    /// object_store's client of the Azure or GCS test server, with the admin credential.
    fn client(&self) -> Box<dyn object_store::ObjectStore> {
        match self.kind {
            Kind::Azure => {
                let a = self.azure.as_ref().unwrap();
                Box::new(
                    object_store::azure::MicrosoftAzureBuilder::new()
                        .with_account(&a.account)
                        .with_access_key(&a.key)
                        .with_container_name(&a.container)
                        .with_endpoint(a.endpoint.clone())
                        .with_allow_http(true)
                        .build()
                        .unwrap(),
                )
            }
            Kind::Gcs => {
                let g = self.gcs.as_ref().unwrap();
                Box::new(
                    object_store::gcp::GoogleCloudStorageBuilder::new()
                        .with_service_account_path(g.service_account.to_str().unwrap())
                        .with_bucket_name(&g.bucket)
                        .build()
                        .unwrap(),
                )
            }
            _ => unreachable!("a client for Azure or GCS"),
        }
    }

    /// The key of `key` (relative to the target's root) in the container or bucket.
    fn full_key(&self, key: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}/{key}", self.prefix))
    }

    /// `s3://bucket/prefix/<key>` for the AWS CLI.
    pub fn s3_url(&self, key: &str) -> String {
        format!("s3://{}/{}/{key}", self.s3().bucket, self.prefix)
    }

    /// Writes the config with the target plus `extra` target sections.
    pub fn write_config(&self, extra: &[(&str, String)]) {
        self.write_config_with("", extra);
    }

    /// Like [`On::write_config`], with `lines` added to the target's section.
    pub fn write_config_with(&self, lines: &str, extra: &[(&str, String)]) {
        let mut text = self.fx.config_text(&Settings {
            pack_size: Some("1MiB".into()),
            ..Settings::default()
        });
        let targets: Vec<String> = std::iter::once(format!("\"{}\"", self.target()))
            .chain(extra.iter().map(|(n, _)| format!("\"{n}\"")))
            .collect();
        text = text.replace(
            "targets = [\"local\"]",
            &format!("targets = [{}]", targets.join(", ")),
        );
        match self.kind {
            // `[target.local]` is the config's last section.
            Kind::Folder => text += lines,
            Kind::Azure => {
                text += &format!(
                    "\n[target.az]\nurl = \"{}\"\nendpoint = \"{}\"\nallow_http = true\n\
                     pack_size = \"1MiB\"\nretries = 2\nretry_timeout = \"20s\"\n\
                     options = {{ azure_storage_account_name = \"{}\" }}\n{lines}",
                    self.url(),
                    self.azure.as_ref().unwrap().endpoint,
                    self.azure.as_ref().unwrap().account,
                )
            }
            Kind::Gcs => {
                let g = self.gcs.as_ref().unwrap();
                text += &format!(
                    "\n[target.gcs]\nurl = \"{}\"\nendpoint = \"{}\"\npack_size = \"1MiB\"\n\
                     retries = 2\nretry_timeout = \"20s\"\n\
                     options = {{ google_service_account = {} }}\n{lines}",
                    self.url(),
                    g.base_url,
                    toml_str(&g.service_account),
                )
            }
            Kind::S3 | Kind::S3Ministack => {
                text += &format!(
                    "\n[target.s3]\nurl = \"{}\"\n{}pack_size = \"1MiB\"\nretries = 2\n\
                     retry_timeout = \"20s\"\n{lines}",
                    self.url(),
                    self.s3().server_lines(),
                )
            }
        }
        for (name, body) in extra {
            text += &format!("\n[target.{name}]\n{body}\n");
        }
        std::fs::write(&self.fx.config, text).unwrap();
    }

    /// The environment that selects `cred` (none on a folder).
    pub fn cred_env(&self, cred: Cred) -> Vec<(&'static str, String)> {
        if let Some(a) = &self.azure {
            return match cred {
                Cred::Admin => vec![("AZURE_STORAGE_ACCOUNT_KEY", a.key.clone())],
                Cred::PutOnly => vec![("AZURE_STORAGE_SAS_KEY", a.sas.clone())],
            };
        }
        let Some(s3) = &self.s3 else {
            return Vec::new();
        };
        let (k, s) = s3.keys(cred);
        vec![
            ("AWS_ACCESS_KEY_ID", k.clone()),
            ("AWS_SECRET_ACCESS_KEY", s.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Sets the credential's environment on `cmd`.
    pub fn with_cred(&self, mut cmd: Command, cred: Cred) -> Command {
        cmd.envs(self.cred_env(cred));
        cmd
    }

    /// `coffer -c <config> <args>` with `cred`, whatever its outcome.
    pub fn coffer(&self, cred: Cred, args: &[&str]) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(args);
        run(cmd)
    }

    /// `coffer -c <config> <args> --json` with `cred`, which must succeed.
    #[track_caller]
    pub fn coffer_json(&self, cred: Cred, args: &[&str]) -> serde_json::Value {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.args(args).arg("--json");
        run(cmd).ok().json()
    }

    /// Takes the lock of the deleting steps (see [`DELETES`]) on S3, unless this thread
    /// holds it already (the steps nest: a test holds it around a gc that takes it).
    pub fn deletes_lock(&self) -> DeletesGuard {
        if !self.kind.is_s3() || HOLDING.get() {
            return DeletesGuard(None);
        }
        let guard = DELETES.lock().unwrap_or_else(|e| e.into_inner());
        HOLDING.set(true);
        DeletesGuard(Some(guard))
    }

    /// `coffer prune --target <t> <args> --json` with the admin credential, which must
    /// succeed.
    #[track_caller]
    pub fn prune(&self, args: &[&str]) -> serde_json::Value {
        let _lock = self.deletes_lock();
        let mut all = vec!["prune", "--target", self.target()];
        all.extend_from_slice(args);
        self.coffer_json(Cred::Admin, &all)
    }

    /// `coffer gc --target <t> <args>` with `cred`, whatever its outcome.
    pub fn gc(&self, cred: Cred, args: &[&str]) -> Out {
        let _lock = self.deletes_lock();
        let mut all = vec!["gc", "--target", self.target()];
        all.extend_from_slice(args);
        self.coffer(cred, &all)
    }

    /// `coffer gc --target <t> <args> --json` with the admin credential, which must
    /// succeed.
    #[track_caller]
    pub fn gc_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.gc(Cred::Admin, &all).ok().json()
    }

    /// `coffer verify --data --json --key <secret key> --target <t>` with the admin
    /// credential, whatever its outcome.
    pub fn verify_data(&self) -> Out {
        let key = self.fx.secret_key.to_str().unwrap();
        self.coffer(
            Cred::Admin,
            &[
                "verify",
                "--data",
                "--json",
                "--key",
                key,
                "--target",
                self.target(),
            ],
        )
    }

    /// `coffer backup --json` with `cred`, whatever its outcome.
    pub fn backup(&self, cred: Cred) -> Out {
        self.coffer(cred, &["backup", "--json"])
    }

    /// A backup with `config` and the put-only credential that must succeed; its run id.
    #[track_caller]
    pub fn backup_run(&self, config: &Path) -> String {
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

    /// `coffer backup --json` in the background with the put-only credential, its output
    /// discarded.
    pub fn spawn_backup(&self) -> std::process::Child {
        std::process::Command::new(coffer_bin())
            .env_clear()
            .env("HOME", &self.fx.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.cred_env(Cred::PutOnly))
            .arg("-c")
            .arg(&self.fx.config)
            .args(["backup", "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `coffer restore` of the newest run into `to` with `cred`, whatever its outcome.
    pub fn restore(&self, cred: Cred, to: &Path) -> Out {
        let mut cmd = self.with_cred(self.fx.cmd(), cred);
        cmd.arg("restore")
            .arg("--key")
            .arg(&self.fx.secret_key)
            .args(["--source", SOURCE, "--target", self.target(), "--to"])
            .arg(to);
        run(cmd)
    }

    /// `coffer runs --json --target <t>` with `cred`, whatever its outcome.
    pub fn runs(&self, cred: Cred) -> Out {
        self.coffer(cred, &["runs", "--json", "--target", self.target()])
    }

    /// Restores `run` (made by `host`) with the admin credential and `config` into a new
    /// directory `dest`, and checks that it holds exactly the named files, with their
    /// bytes.
    #[track_caller]
    pub fn restore_run_matches(
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
            .args(["--source", SOURCE, "--target", self.target()])
            .args(["--host", host, "--run", run, "--to"])
            .arg(&to);
        let out = super::run(cmd).ok();
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

    // -----------------------------------------------------------------------------------
    // Looking at the target without coffer: the file system, or the AWS CLI as an
    // independent client.

    /// Every object key on the target, relative to its root, sorted. On a folder,
    /// object_store's staging files of uploads in progress (`<key>#<n>`) do not count.
    pub fn keys(&self) -> Vec<String> {
        match self.kind {
            Kind::Folder => {
                let mut keys = Vec::new();
                files_below(&self.fx.target, "", &mut keys);
                keys.retain(|k| !k.contains('#'));
                keys.sort();
                keys
            }
            Kind::S3 | Kind::S3Ministack => {
                let v = self.s3_listing();
                let mut keys: Vec<String> = v["Contents"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|o| {
                                let key = o["Key"].as_str().unwrap();
                                key[self.prefix.len() + 1..].to_string()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                keys.sort();
                keys
            }
            Kind::Azure | Kind::Gcs => {
                use futures::TryStreamExt;
                let client = self.client();
                let prefix = object_store::path::Path::from(self.prefix.as_str());
                let metas: Vec<object_store::ObjectMeta> = runtime()
                    .block_on(client.list(Some(&prefix)).try_collect())
                    .unwrap();
                let mut keys: Vec<String> = metas
                    .iter()
                    .map(|m| m.location.as_ref()[self.prefix.len() + 1..].to_string())
                    .collect();
                keys.sort();
                keys
            }
        }
    }

    /// Names (the 64 hex digits) of the data objects, checking their `data/xx/` folder.
    pub fn data_names(&self) -> BTreeSet<String> {
        self.keys()
            .iter()
            .filter_map(|k| k.strip_prefix("data/"))
            .map(|k| {
                let (dir, name) = k.split_once('/').expect("data/xx/<name>");
                assert_eq!(&name[..2], dir, "{k}");
                name.to_string()
            })
            .collect()
    }

    /// An object's content (the admin credential on S3).
    pub fn download(&self, key: &str) -> Vec<u8> {
        match self.kind {
            Kind::Folder => {
                let path = self.fx.target.join(key);
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
            Kind::S3 | Kind::S3Ministack => {
                let url = self.s3_url(key);
                let out = self.aws(Cred::Admin, &["s3", "cp", &url, "-"]);
                assert!(
                    out.status.success(),
                    "aws s3 cp {url}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
            Kind::Azure | Kind::Gcs => {
                use object_store::ObjectStoreExt;
                let client = self.client();
                let path = self.full_key(key);
                runtime()
                    .block_on(async { client.get(&path).await?.bytes().await })
                    .unwrap_or_else(|e| panic!("{key}: {e}"))
                    .to_vec()
            }
        }
    }

    /// Replaces an object's bytes behind coffer's back (the admin credential on S3: a
    /// versioned bucket keeps the old version).
    pub fn overwrite(&self, key: &str, bytes: &[u8]) {
        self.overwrite_as(Cred::Admin, key, bytes);
    }

    /// Replaces an object's bytes with `cred` (on a folder, behind coffer's back).
    pub fn overwrite_as(&self, cred: Cred, key: &str, bytes: &[u8]) {
        match self.kind {
            Kind::Folder => std::fs::write(self.fx.target.join(key), bytes).unwrap(),
            // Azure's put-only SAS may not overwrite at all (create only): a stolen one
            // cannot do this, so the account key stands in for whoever could.
            Kind::Azure | Kind::Gcs => {
                use object_store::ObjectStoreExt;
                let _ = cred;
                let client = self.client();
                let path = self.full_key(key);
                runtime()
                    .block_on(client.put(&path, bytes.to_vec().into()))
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
            }
            Kind::S3 | Kind::S3Ministack => {
                let file = self.fx.path("overwrite.tmp");
                std::fs::write(&file, bytes).unwrap();
                let out = self.aws(
                    cred,
                    &["s3", "cp", file.to_str().unwrap(), &self.s3_url(key)],
                );
                assert!(
                    out.status.success(),
                    "aws s3 cp {key}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Deletes an object behind coffer's back (the admin credential on S3).
    pub fn remove(&self, key: &str) {
        match self.kind {
            Kind::Folder => std::fs::remove_file(self.fx.target.join(key)).unwrap(),
            Kind::Azure | Kind::Gcs => {
                use object_store::ObjectStoreExt;
                let client = self.client();
                let path = self.full_key(key);
                runtime()
                    .block_on(client.delete(&path))
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
            }
            Kind::S3 | Kind::S3Ministack => {
                let _lock = self.deletes_lock();
                let out = self.aws(Cred::Admin, &["s3", "rm", &self.s3_url(key)]);
                assert!(
                    out.status.success(),
                    "aws s3 rm {key}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// The object keys a run's object list names.
    pub fn refs_of(&self, host: &str, run: &str) -> BTreeSet<String> {
        refs_keys(&self.download(&format!("runs/{host}/{SOURCE}/{run}.refs")))
    }

    /// Every object list under `runs/`, by key.
    pub fn all_refs(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.keys()
            .into_iter()
            .filter(|k| k.ends_with(".refs"))
            .map(|k| {
                let refs = refs_keys(&self.download(&k));
                (k, refs)
            })
            .collect()
    }

    /// The S3 listing of the prefix (list-objects-v2 with the admin credential), as the
    /// AWS CLI prints it: keys, sizes, storage classes.
    pub fn s3_listing(&self) -> serde_json::Value {
        self.aws_json(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &self.s3().bucket,
            "--prefix",
            &format!("{}/", self.prefix),
        ])
    }

    /// Every version and delete marker under the prefix (a versioned bucket).
    pub fn versions(&self) -> serde_json::Value {
        self.aws_json(&[
            "s3api",
            "list-object-versions",
            "--bucket",
            &self.s3().bucket,
            "--prefix",
            &format!("{}/", self.prefix),
        ])
    }

    /// The AWS CLI with `cred`.
    pub fn aws(&self, cred: Cred, args: &[&str]) -> std::process::Output {
        let s3 = self.s3();
        let (k, s) = s3.keys(cred);
        std::process::Command::new(&s3.aws_cli)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.fx.home)
            .env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .args(["--endpoint-url", &s3.endpoint])
            .args(args)
            .output()
            .expect("aws cli runs")
    }

    /// The AWS CLI with the admin credential, which must succeed; its JSON output.
    pub fn aws_json(&self, args: &[&str]) -> serde_json::Value {
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

    /// Every S3 server log line (of any test) logged while `f` ran.
    pub fn log_during<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let log = &self.s3().log;
        let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let out = f();
        let text = std::fs::read(log).unwrap();
        let lines = String::from_utf8_lossy(&text[before as usize..])
            .lines()
            .map(str::to_string)
            .collect();
        (out, lines)
    }

    /// S3 request lines mentioning this test's prefix, logged while `f` ran.
    pub fn requests_during<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let (out, mut lines) = self.log_during(f);
        lines.retain(|l| l.contains(&self.prefix));
        (out, lines)
    }
}

/// Pushes the path (relative to `dir`, after `rel`) of every file below `dir`.
fn files_below(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().into_string().expect("keys are text");
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            files_below(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}
