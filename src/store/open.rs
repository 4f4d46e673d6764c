//! Building an `ObjectStore` for a target URL and its settings.
//!
//! Credentials follow each ecosystem's conventions: for S3 the `AWS_*` environment
//! variables, then an AWS shared credentials file (`credentials_file`, else
//! `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`; profile `profile`, else
//! `AWS_PROFILE`, else `default`), then what object_store finds itself (instance
//! metadata, web identity). GCS and Azure read their usual `GOOGLE_*` / `AZURE_*`
//! variables. No credential is ever put in an error message or a log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::s3api::S3Api;
use crate::config::TargetConfig;
use crate::error::{Error, Result};

/// The store for `target`, and on S3 what makes the requests object_store has no call for.
pub(super) type Opened = (Arc<dyn ObjectStore>, Option<Arc<S3Api>>);

pub(super) fn open(target: &TargetConfig, create: bool) -> Result<Opened> {
    let fail = |message: String| Error::Store {
        target: target.name.clone(),
        message,
        source: None,
    };
    let url = url::Url::parse(&target.url).map_err(|e| fail(format!("bad URL: {e}")))?;
    let mut versions = None;
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => return Ok((open_local(target, &url, create)?, None)),
        // `TargetConfig::in_memory` (coffer bench); config validation refuses the scheme.
        // Every open is a new, empty store, dropped with the last handle.
        "memory" if target.url == crate::config::MEMORY_URL => {
            return Ok((Arc::new(object_store::memory::InMemory::new()), None))
        }
        "s3" | "s3a" => {
            let builder = s3(target).map_err(|e| fail(e.to_string()))?;
            let s3 = Arc::new(builder.clone().build().map_err(|e| fail(e.to_string()))?);
            versions = Some(Arc::new(
                S3Api::new(s3.clone(), &builder, &url).map_err(|e| fail(e.to_string()))?,
            ));
            s3
        }
        "gs" => Arc::new(gcs(target).map_err(|e| fail(e.to_string()))?),
        "az" | "azure" | "abfs" | "abfss" => {
            Arc::new(azure(target).map_err(|e| fail(e.to_string()))?)
        }
        other => return Err(fail(format!("unsupported scheme {other:?}"))),
    };
    Ok((under_prefix(store, &url), versions))
}

/// `store` seen from the URL's path (its key prefix), if it has one.
fn under_prefix(store: Arc<dyn ObjectStore>, url: &url::Url) -> Arc<dyn ObjectStore> {
    match url.path().trim_matches('/') {
        "" => store,
        prefix => Arc::new(PrefixStore::new(store, prefix)),
    }
}

/// For an S3 target with `object_lock`: a store whose every request carries the lock
/// headers (`x-amz-object-lock-mode`, and a retain-until date `retention` after now) and
/// a SHA-256 checksum (S3 requires one with them). Only a backup's create-only handle
/// uses it (object_store sends no lock headers per object; its default headers are the
/// extension point for that).
pub(super) fn open_locked(
    target: &TargetConfig,
    lock: &crate::config::ObjectLock,
) -> Result<Arc<dyn ObjectStore>> {
    let fail = |message: String| Error::Store {
        target: target.name.clone(),
        message,
        source: None,
    };
    let url = url::Url::parse(&target.url).map_err(|e| fail(format!("bad URL: {e}")))?;
    let until = chrono::Utc::now()
        + chrono::TimeDelta::from_std(lock.retention)
            .map_err(|_| fail("object_lock_retention is too long".into()))?;
    let mut headers = http::HeaderMap::new();
    let value = |v: String| {
        http::HeaderValue::from_str(&v).map_err(|e| fail(format!("object lock header: {e}")))
    };
    headers.insert("x-amz-object-lock-mode", value(lock.mode().into())?);
    headers.insert(
        "x-amz-object-lock-retain-until-date",
        value(until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))?,
    );
    // S3 wants an upload with a retention to carry a checksum and say which.
    headers.insert("x-amz-sdk-checksum-algorithm", value("SHA256".into())?);
    // with_client_options replaces the client options from_env and s3() set: rebuild
    // them (timeouts, plain HTTP) with the headers.
    let allow_http = target.allow_http.unwrap_or_else(|| {
        std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    });
    let options = object_store::ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(std::time::Duration::from_secs(10))
        .with_timeout(std::time::Duration::from_secs(300))
        .with_default_headers(headers);
    let builder = s3(target)
        .map_err(|e| fail(e.to_string()))?
        .with_client_options(options)
        .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| fail(e.to_string()))?);
    Ok(under_prefix(store, &url))
}

fn open_local(target: &TargetConfig, url: &url::Url, create: bool) -> Result<Arc<dyn ObjectStore>> {
    let fail = |message: String| Error::Store {
        target: target.name.clone(),
        message,
        source: None,
    };
    let dir = url
        .to_file_path()
        .map_err(|_| fail(format!("{} is not a local path", target.url)))?;
    if create {
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    } else if !dir.is_dir() {
        return Err(fail(format!(
            "{} does not exist (is the disk mounted?); to set up a new target there, run \
             `coffer init {}` (or set create = true in its [target] section)",
            dir.display(),
            target.url
        )));
    }
    let fs = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| fail(e.to_string()))?
        .with_fsync(true);
    Ok(Arc::new(fs))
}

fn retry(target: &TargetConfig) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: target.retries,
        retry_timeout: target.retry_timeout,
    }
}

/// Timeouts, as client config keys: `with_client_options` would replace the options the
/// builder already holds (allow_http from the environment or the config among them).
const CLIENT_TIMEOUTS: [(ClientConfigKey, &str); 2] = [
    (ClientConfigKey::ConnectTimeout, "10s"),
    (ClientConfigKey::Timeout, "300s"),
];

/// Whether object_store knows `key` as a configuration key for URLs of `scheme` (a
/// folder takes none); the config checks its `options` with this, with the line.
pub(crate) fn option_is_known(scheme: &str, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    match scheme {
        "s3" | "s3a" => key.parse::<AmazonS3ConfigKey>().is_ok(),
        "gs" => key.parse::<GoogleConfigKey>().is_ok(),
        "az" | "azure" | "abfs" | "abfss" => key.parse::<AzureConfigKey>().is_ok(),
        _ => false,
    }
}

fn unknown_option(key: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "coffer",
        source: format!("unknown option {key:?} in the target's options table").into(),
    }
}

/// The builder of the target's S3 store, every setting applied.
fn s3(target: &TargetConfig) -> object_store::Result<AmazonS3Builder> {
    let mut b = AmazonS3Builder::from_env().with_url(&target.url);
    for (k, v) in CLIENT_TIMEOUTS {
        b = b.with_config(AmazonS3ConfigKey::Client(k), v);
    }
    if let Some(e) = &target.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &target.region {
        b = b.with_region(r);
    }
    if let Some(h) = target.allow_http {
        b = b.with_allow_http(h);
    }
    for (k, v) in &target.options {
        let key: AmazonS3ConfigKey = k
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| unknown_option(k))?;
        b = b.with_config(key, v);
    }
    let from_env = std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty())
        || target.options.keys().any(|k| k.contains("access_key_id"));
    if !from_env {
        if let Some(creds) =
            shared_credentials(target).map_err(|e| object_store::Error::Generic {
                store: "coffer",
                source: Box::new(e),
            })?
        {
            b = b
                .with_access_key_id(creds.key_id)
                .with_secret_access_key(creds.secret);
            if let Some(t) = creds.token {
                b = b.with_token(t);
            }
        }
    }
    Ok(b.with_retry(retry(target)))
}

fn gcs(target: &TargetConfig) -> object_store::Result<object_store::gcp::GoogleCloudStorage> {
    let mut b = GoogleCloudStorageBuilder::from_env().with_url(&target.url);
    for (k, v) in CLIENT_TIMEOUTS {
        b = b.with_config(GoogleConfigKey::Client(k), v);
    }
    // `endpoint` is the GCS API's base URL (an emulator, a private endpoint): it was
    // silently ignored before. object_store's GCS client speaks plain HTTP to an
    // http:// base URL, so allow_http has nothing to add.
    if let Some(e) = &target.endpoint {
        b = b.with_config(GoogleConfigKey::BaseUrl, e);
    }
    for (k, v) in &target.options {
        let key: GoogleConfigKey = k
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| unknown_option(k))?;
        b = b.with_config(key, v);
    }
    b.with_retry(retry(target)).build()
}

fn azure(target: &TargetConfig) -> object_store::Result<object_store::azure::MicrosoftAzure> {
    let mut b = MicrosoftAzureBuilder::from_env().with_url(&target.url);
    for (k, v) in CLIENT_TIMEOUTS {
        b = b.with_config(AzureConfigKey::Client(k), v);
    }
    if let Some(e) = &target.endpoint {
        b = b.with_endpoint(e.clone());
    }
    if let Some(h) = target.allow_http {
        b = b.with_allow_http(h);
    }
    for (k, v) in &target.options {
        let key: AzureConfigKey = k
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| unknown_option(k))?;
        b = b.with_config(key, v);
    }
    b.with_retry(retry(target)).build()
}

/// A key pair from an AWS shared credentials file.
struct SharedCredentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Why the AWS shared credentials file could not give a credential.
#[derive(Debug, thiserror::Error)]
enum CredentialsError {
    #[error("credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "credentials file {} has no profile [{profile}] with aws_access_key_id and \
         aws_secret_access_key",
        path.display()
    )]
    NoProfile { path: PathBuf, profile: String },
}

/// Reads the profile from the AWS shared credentials file, if there is one. A file named
/// in the config must exist; the default one may be absent.
fn shared_credentials(
    target: &TargetConfig,
) -> std::result::Result<Option<SharedCredentials>, CredentialsError> {
    let explicit = target.credentials_file.clone().or_else(|| {
        std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let path = match (&explicit, std::env::var_os("HOME")) {
        (Some(p), _) => p.clone(),
        (None, Some(home)) => Path::new(&home).join(".aws/credentials"),
        (None, None) => return Ok(None),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(source) => return Err(CredentialsError::Read { path, source }),
    };
    let profile = target
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "default".to_string());
    let values = parse_profile(&text, &profile);
    match (values.0, values.1) {
        (Some(key_id), Some(secret)) => Ok(Some(SharedCredentials {
            key_id,
            secret,
            token: values.2,
        })),
        _ if explicit.is_some() || target.profile.is_some() => {
            Err(CredentialsError::NoProfile { path, profile })
        }
        _ => Ok(None),
    }
}

/// (aws_access_key_id, aws_secret_access_key, aws_session_token) of `[profile]`.
fn parse_profile(text: &str, profile: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut in_profile = false;
    let mut out = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => out.0 = v,
                "aws_secret_access_key" => out.1 = v,
                "aws_session_token" => out.2 = v,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    # comment\n[backup]\naws_access_key_id=C\naws_secret_access_key=D\n\
                    aws_session_token = E\n";
        assert_eq!(
            parse_profile(text, "default"),
            (Some("A".into()), Some("B".into()), None)
        );
        assert_eq!(
            parse_profile(text, "backup"),
            (Some("C".into()), Some("D".into()), Some("E".into()))
        );
        assert_eq!(parse_profile(text, "none"), (None, None, None));
    }
}
