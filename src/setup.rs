//! `coffer init TARGET --policies DIR --apply`: what apply.sh does, done with the
//! credential the target's config gives (an administrator's): versioning on, Object Lock
//! on where the config sets a retention, the bucket policy that refuses overwrites, the
//! lifecycle rule, and an IAM user per role with its policy and, once, an access key
//! written to `DIR/ROLE.credentials` (mode 0600; never printed).
//!
//! Each call is one request signed with object_store's own SigV4 signer and sent
//! through its HTTP client, as coffer's other S3 calls that object_store does not make;
//! IAM's go to `iam_endpoint`: AWS's global one, or the
//! target's own endpoint for an S3-compatible server that serves IAM there.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::policies::{self, S3Place, ROLES};
use crate::store::{runtime, ApiError, Store};

/// AWS's IAM endpoint.
pub const AWS_IAM: &str = "https://iam.amazonaws.com/";

/// Applies the setup of `place` (see the module's documentation); `say` gets a line for
/// people per step.
///
/// # Errors
///
/// Not an S3 target, a request refused or failed (named, with what the credential
/// needs), a credentials file that cannot be written.
pub fn apply(
    store: &Store,
    place: &S3Place,
    dir: &Path,
    iam_endpoint: Option<&str>,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let target = store.name().to_string();
    let fail = |message: String| Error::Store {
        target: target.clone(),
        message,
        source: None,
    };
    let api = store
        .s3api()
        .ok_or_else(|| Error::Usage("--apply sets up s3:// targets only".into()))?;
    let iam_endpoint = iam_endpoint
        .map(str::to_string)
        .or_else(|| api.endpoint.clone())
        .unwrap_or_else(|| AWS_IAM.to_string());
    let iam_endpoint = url::Url::parse(&iam_endpoint)
        .map_err(|e| Error::Usage(format!("IAM endpoint {iam_endpoint}: {e}")))?;
    let explain = |e: ApiError| match e {
        ApiError::Refused(m) => fail(format!(
            "{m}: --apply needs an administrator's credential (s3:PutBucketVersioning, \
             s3:PutBucketObjectLockConfiguration, s3:PutBucketPolicy, \
             s3:PutLifecycleConfiguration, iam:CreateUser, iam:PutUserPolicy, \
             iam:CreateAccessKey); or run apply.sh as one"
        )),
        e => fail(e.to_string()),
    };
    let iam_error = |e: ApiError| match e {
        ApiError::NotFound(m) => fail(format!(
            "{m}: {iam_endpoint} serves no IAM API; give --iam-endpoint, or create the \
             users by hand (apply.sh, step 4)"
        )),
        e => explain(e),
    };
    let bucket = |sub: &'static str, body: String, what: &'static str| {
        runtime()
            .block_on(api.put_bucket(sub, Bytes::from(body), what))
            .map_err(explain)
    };
    const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
    bucket(
        "versioning",
        format!(
            "<VersioningConfiguration xmlns=\"{S3_NS}\"><Status>Enabled</Status>\
             </VersioningConfiguration>"
        ),
        "PutBucketVersioning",
    )?;
    say(&format!("bucket {}: versioning on", place.bucket));
    if place.lock.is_some() {
        bucket(
            "object-lock",
            format!(
                "<ObjectLockConfiguration xmlns=\"{S3_NS}\"><ObjectLockEnabled>Enabled\
                 </ObjectLockEnabled></ObjectLockConfiguration>"
            ),
            "PutObjectLockConfiguration",
        )?;
        say(&format!(
            "bucket {}: Object Lock on (no default retention: coffer sets one per object)",
            place.bucket
        ));
    }
    let json = |v: serde_json::Value| serde_json::to_string(&v).unwrap_or_default();
    bucket(
        "policy",
        json(policies::bucket_policy(place)),
        "PutBucketPolicy",
    )?;
    say(&format!(
        "bucket {}: policy set, a PutObject without If-None-Match is refused (it replaced \
         any policy the bucket had)",
        place.bucket
    ));
    bucket(
        "lifecycle",
        policies::lifecycle_xml(place),
        "PutBucketLifecycleConfiguration",
    )?;
    say(&format!(
        "bucket {}: lifecycle set, deleted versions go after 30 days",
        place.bucket
    ));
    for role in ROLES {
        let user = place.user_name(role);
        let policy = match role {
            "host" => policies::host_policy(place),
            "admin" => policies::admin_policy(place),
            _ => policies::monitor_policy(place),
        };
        let iam = |params: &[(&str, &str)]| runtime().block_on(api.iam(&iam_endpoint, params));
        let created = match iam(&[("Action", "CreateUser"), ("UserName", &user)]) {
            Ok(_) => "created",
            Err(ApiError::Conflict(_)) => "exists",
            Err(e) => return Err(iam_error(e)),
        };
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", &user),
            ("PolicyName", "coffer"),
            ("PolicyDocument", &json(policy)),
        ])
        .map_err(iam_error)?;
        let file = dir.join(format!("{role}.credentials"));
        let key = if std::fs::symlink_metadata(&file).is_ok() {
            check_credentials(&file)?;
            format!("{} kept, no new key made", file.display())
        } else {
            let reply =
                iam(&[("Action", "CreateAccessKey"), ("UserName", &user)]).map_err(iam_error)?;
            let (id, secret) =
                access_key(&reply).map_err(|m| fail(format!("CreateAccessKey: {m}")))?;
            write_credentials(&file, &id, &secret)?;
            format!("its key in {} (only you can read it)", file.display())
        };
        say(&format!(
            "user {user} ({role}): {created}, policy {role}-policy.json, {key}"
        ));
    }
    Ok(())
}

/// Creates `dir` (mode 0700) for what `init --policies` writes, or checks the one there:
/// it must belong to the effective user and be writable by nobody else, since whoever
/// could write there could replace a policy, apply.sh or a key before it is used.
///
/// # Errors
///
/// `dir` cannot be created, or another user owns it or may write it ([`Error::Usage`],
/// with the fix).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    let m = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{}: belongs to uid {} with mode {:o}; the policies, apply.sh and keys written \
             there must be yours alone (another user could replace them before they are \
             used): choose a directory of your own, or `chown {me} {0} && chmod 700 {0}`",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// An existing credentials file, before it is kept instead of a new key: a regular file
/// of the effective user that nobody else may read or write.
fn check_credentials(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.file_type().is_file() || m.uid() != me || m.mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "{}: not a file of yours that only you can read (uid {}, mode {:o}): its key \
             may have leaked or been replaced. Delete the file and that key (`aws iam \
             list-access-keys`, `aws iam delete-access-key`), then run again for a new one",
            path.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The key id and secret of a CreateAccessKey response.
fn access_key(body: &[u8]) -> std::result::Result<(String, String), String> {
    #[derive(serde::Deserialize)]
    struct Response {
        #[serde(rename = "CreateAccessKeyResult")]
        result: KeyResult,
    }
    #[derive(serde::Deserialize)]
    struct KeyResult {
        #[serde(rename = "AccessKey")]
        key: Key,
    }
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "AccessKeyId")]
        id: String,
        #[serde(rename = "SecretAccessKey")]
        secret: String,
    }
    let text = std::str::from_utf8(body).map_err(|_| "the response is not UTF-8".to_string())?;
    // Never quote the response: it holds the secret.
    let r: Response =
        quick_xml::de::from_str(text).map_err(|_| "unreadable response".to_string())?;
    let safe = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if !safe(&r.result.key.id) || !safe(&r.result.key.secret) {
        return Err("the key in the response is not a plain key".into());
    }
    Ok((r.result.key.id, r.result.key.secret))
}

/// Writes an AWS shared credentials file, readable by its owner alone, that must not
/// exist yet.
fn write_credentials(path: &Path, id: &str, secret: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    write!(
        f,
        "[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"
    )
    .and_then(|()| f.sync_all())
    .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_key_is_read_and_never_quoted() {
        let body = b"<CreateAccessKeyResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\
            <CreateAccessKeyResult><AccessKey><UserName>u</UserName>\
            <AccessKeyId>AKIAEXAMPLE</AccessKeyId><Status>Active</Status>\
            <SecretAccessKey>s3cr3t/+x</SecretAccessKey></AccessKey></CreateAccessKeyResult>\
            </CreateAccessKeyResponse>";
        assert_eq!(
            access_key(body).unwrap(),
            ("AKIAEXAMPLE".into(), "s3cr3t/+x".into())
        );
        let bad = b"<CreateAccessKeyResponse><CreateAccessKeyResult><AccessKey>\
            <AccessKeyId>A</AccessKeyId><SecretAccessKey>two words</SecretAccessKey>\
            </AccessKey></CreateAccessKeyResult></CreateAccessKeyResponse>";
        let e = access_key(bad).unwrap_err();
        assert!(!e.contains("two words"), "{e}");
        assert!(access_key(b"<x").is_err());
    }
}
