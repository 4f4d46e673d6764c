//! What `coffer init --policies` writes for an S3 target: the IAM policies of the three
//! roles (the host's put-only one scoped to its prefix, the admin's, the monitor's
//! read-only one), the bucket policy that refuses a PutObject without `If-None-Match`,
//! the lifecycle rule for a versioned bucket, the AWS CLI commands that apply them, and
//! config skeletons for host, admin and monitor. Pure functions of the target's URL.

use serde_json::json;

use crate::error::{Error, Result};

/// An S3 target's bucket and key prefix (no leading or trailing `/`; empty for the whole
/// bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Place {
    /// The bucket.
    pub bucket: String,
    /// The prefix under which the target lives.
    pub prefix: String,
}

impl S3Place {
    /// From an `s3://BUCKET/PREFIX` URL.
    ///
    /// # Errors
    ///
    /// Not an `s3://` URL, or one without a bucket ([`Error::Usage`]).
    pub fn from_url(url: &str) -> Result<S3Place> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::Usage(format!(
                "{url} is not an S3 target: policies are written for s3:// targets (other \
                 stores have their own access control; the README's table of targets says \
                 what each guarantees)"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("{url} names no bucket")));
        }
        Ok(S3Place {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// `arn:aws:s3:::BUCKET/PREFIX/KEYS` (KEYS may end in `*`).
    fn arn(&self, keys: &str) -> String {
        if self.prefix.is_empty() {
            format!("arn:aws:s3:::{}/{keys}", self.bucket)
        } else {
            format!("arn:aws:s3:::{}/{}/{keys}", self.bucket, self.prefix)
        }
    }

    /// The `s3:prefix` a listing of `keys` under the target sends.
    fn list_prefix(&self, keys: &str) -> String {
        if self.prefix.is_empty() {
            keys.to_string()
        } else {
            format!("{}/{keys}", self.prefix)
        }
    }

    fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::{}", self.bucket)
    }
}

/// What a kind of target guarantees and what it leaves to the user, in lines for people
/// (`coffer init` prints them; the README's table of targets says the same).
pub fn guarantees(url: &str) -> Vec<&'static str> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "file" => vec![
            "create-only: yes (a link that fails if the name exists)",
            "put-only credential: none; a host can read and delete what it can write: keep \
             the folder's permissions tight, or use an object store",
            "earlier versions of overwritten objects: none",
        ],
        "s3" | "s3a" => vec![
            "create-only: yes (If-None-Match: *); a bucket policy can refuse any PutObject \
             without it (coffer init --policies DIR writes it)",
            "put-only credential: an IAM user or role with only s3:PutObject on the prefix \
             (--policies writes it)",
            "earlier versions of overwritten objects: on a versioned bucket, found and used \
             by restore and verify",
        ],
        "az" | "azure" | "abfs" | "abfss" => vec![
            "create-only: yes (If-None-Match: *)",
            "put-only credential: a container SAS with only create and write (sp=cw): no \
             read, list or delete. A create-only SAS (sp=c) cannot be used yet: an existing \
             name is refused as a permission, so a second run fails",
            "earlier versions of overwritten objects: not used; turn on blob versioning or an \
             immutability policy against overwrites",
        ],
        "gs" => vec![
            "create-only: yes (x-goog-if-generation-match: 0)",
            "put-only credential: a service account whose role has only \
             storage.objects.create on the bucket (not tested here: the GCS test server has \
             no IAM)",
            "earlier versions of overwritten objects: not used; turn on object versioning or \
             a retention policy against overwrites",
        ],
        _ => vec![],
    }
}

/// The host's policy: create objects under the target's prefix, nothing else (no GET,
/// LIST, DELETE: a backup makes none).
pub fn host_policy(p: &S3Place) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CofferBackupCreateOnly",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": p.arn("*"),
        }]
    })
}

/// The admin's policy (runs, restore, prune, gc, verify): list and read the prefix and
/// its versions, create prune's records, delete.
pub fn admin_policy(p: &S3Place) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CofferAdminList",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
                "Resource": p.bucket_arn(),
                "Condition": {"StringLike": {"s3:prefix": p.list_prefix("*")}},
            },
            {
                "Sid": "CofferAdminObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:PutObject",
                    "s3:DeleteObject",
                ],
                "Resource": p.arn("*"),
            },
            {
                // gc and prune delete in batches (POST ?delete). AWS checks
                // s3:DeleteObject on each key, some S3-compatible servers (the test
                // server among them) on the bucket: allowed there too, it grants
                // nothing more on AWS.
                "Sid": "CofferAdminBatchDelete",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": p.bucket_arn(),
            }
        ]
    })
}

/// The monitor's policy (`coffer status`, `coffer runs`): list and read the runs, nothing
/// of the packs.
pub fn monitor_policy(p: &S3Place) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CofferMonitorList",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": p.bucket_arn(),
                "Condition": {"StringLike": {"s3:prefix": p.list_prefix("runs/*")}},
            },
            {
                "Sid": "CofferMonitorRead",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": p.arn("runs/*"),
            }
        ]
    })
}

/// The bucket policy: a PutObject without `If-None-Match` is refused, so no credential
/// can overwrite an object (coffer sends it on every upload and makes no multipart
/// upload).
pub fn bucket_policy(p: &S3Place) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CofferCreateOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": p.arn("*"),
            "Condition": {"Null": {"s3:if-none-match": "true"}},
        }]
    })
}

/// The lifecycle rule of a versioned bucket: deleted versions kept 30 days, then gone.
pub fn lifecycle(p: &S3Place) -> serde_json::Value {
    let filter = if p.prefix.is_empty() {
        json!({})
    } else {
        json!({"Prefix": format!("{}/", p.prefix)})
    };
    json!({
        "Rules": [{
            "ID": "coffer-expire-deleted",
            "Status": "Enabled",
            "Filter": filter,
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
            "Expiration": {"ExpiredObjectDeleteMarker": true},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        }]
    })
}

/// The AWS CLI loop that thaws `keys` (keys under the target, `data/xx/…`) for 7 days at
/// the Standard tier: what restore prints for packs in GLACIER or DEEP_ARCHIVE.
pub fn thaw_script(p: &S3Place, keys: &[String]) -> String {
    let full = |k: &String| {
        if p.prefix.is_empty() {
            k.clone()
        } else {
            format!("{}/{k}", p.prefix)
        }
    };
    let mut s = String::from("while read -r key; do\n");
    s += &format!(
        "  aws s3api restore-object --bucket {} --key \"$key\" \\\n    --restore-request \
         '{{\"Days\": 7, \"GlacierJobParameters\": {{\"Tier\": \"Standard\"}}}}'\n",
        p.bucket
    );
    s += "done <<'KEYS'\n";
    for k in keys {
        s += &full(k);
        s.push('\n');
    }
    s += "KEYS";
    s
}

/// Every file `coffer init --policies` writes: (name, contents).
pub fn files(p: &S3Place, url: &str) -> Vec<(&'static str, String)> {
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    let b = &p.bucket;
    let commands = format!(
        "#!/bin/sh\n\
         # Run with an AWS administrator's credentials, in this directory. Each step is\n\
         # explained in coffer's README, 'Put-only backups on S3'.\n\
         set -eu\n\
         # 1. Versioning: an overwrite or delete leaves the old version.\n\
         aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled\n\
         # 2. No object can be overwritten: a PutObject without If-None-Match is refused.\n\
         #    (This replaces the bucket's policy: merge by hand if it has one.)\n\
         aws s3api put-bucket-policy --bucket {b} --policy file://bucket-policy.json\n\
         # 3. Deleted versions go after 30 days.\n\
         aws s3api put-bucket-lifecycle-configuration --bucket {b} --lifecycle-configuration file://lifecycle.json\n\
         # 4. The three users; their keys go to the host, the admin and the monitor.\n\
         for role in host admin monitor; do\n\
         \x20   aws iam create-user --user-name \"coffer-$role\"\n\
         \x20   aws iam put-user-policy --user-name \"coffer-$role\" --policy-name coffer \\\n\
         \x20       --policy-document \"file://$role-policy.json\"\n\
         \x20   aws iam create-access-key --user-name \"coffer-$role\"\n\
         done\n"
    );
    let target = format!("[target.s3]\nurl = \"{url}\"\n");
    let host = format!(
        "# The host: only create rights (host-policy.json). Keys in the environment\n\
         # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or in a credentials_file only root reads.\n\
         host = \"web1\"\n\
         state_dir = \"/var/lib/coffer/config\"\n\n\
         [source.etc]\n\
         path = \"/etc\"\n\
         recipients = [\"/etc/coffer/admin.pub.asc\"]\n\
         targets = [\"s3\"]\n\n{target}"
    );
    let admin = format!(
        "# The admin, off the hosts: runs, restore, prune, gc, verify (admin-policy.json).\n\
         host = \"admin\"\n\
         state_dir = \"/var/lib/coffer/admin\"\n\n{target}"
    );
    let monitor = format!(
        "# The monitor: coffer status and runs, no key, reads only runs/ (monitor-policy.json).\n\
         host = \"monitor\"\n\
         state_dir = \"/var/lib/coffer/monitor\"\n\n{target}"
    );
    vec![
        ("host-policy.json", pretty(host_policy(p))),
        ("admin-policy.json", pretty(admin_policy(p))),
        ("monitor-policy.json", pretty(monitor_policy(p))),
        ("bucket-policy.json", pretty(bucket_policy(p))),
        ("lifecycle.json", pretty(lifecycle(p))),
        ("apply.sh", commands),
        ("host.toml", host),
        ("admin.toml", admin),
        ("monitor.toml", monitor),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_scoped_to_the_prefix() {
        let p = S3Place::from_url("s3://acme-backups/fleet/web1/").unwrap();
        assert_eq!(
            (p.bucket.as_str(), p.prefix.as_str()),
            ("acme-backups", "fleet/web1")
        );
        let host = host_policy(&p).to_string();
        assert!(
            host.contains("arn:aws:s3:::acme-backups/fleet/web1/*"),
            "{host}"
        );
        assert!(
            !host.contains("GetObject") && !host.contains("List"),
            "{host}"
        );
        let monitor = monitor_policy(&p).to_string();
        assert!(monitor.contains("fleet/web1/runs/*"), "{monitor}");
        assert!(!monitor.contains("Delete") && !monitor.contains("PutObject"));
        let whole = S3Place::from_url("s3://acme").unwrap();
        assert!(host_policy(&whole)
            .to_string()
            .contains("arn:aws:s3:::acme/*"));
        assert_eq!(lifecycle(&whole)["Rules"][0]["Filter"], json!({}));
        for bad in ["gs://b/p", "file:///x", "s3:///p"] {
            assert!(S3Place::from_url(bad).is_err(), "{bad}");
        }
        for (name, text) in files(&p, "s3://acme-backups/fleet/web1") {
            if name.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
            if name.ends_with(".toml") {
                assert!(
                    text.contains("url = \"s3://acme-backups/fleet/web1\""),
                    "{name}"
                );
            }
        }
    }
}
