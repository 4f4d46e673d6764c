//! What `coffer init --policies` writes for an S3 target: the IAM policies of the three
//! roles (the host's put-only one scoped to its prefix, the admin's, the monitor's
//! read-only one), the bucket policy that refuses a PutObject without `If-None-Match`,
//! the lifecycle rule for a versioned bucket, the AWS CLI commands that apply them, and
//! config skeletons for host, admin and monitor. Pure functions of the target's URL (and
//! its Object Lock); `init --apply` sends them ([`crate::setup`]).

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
    /// The target's Object Lock, if it has one: the host may then set a retention, and
    /// the admin read and extend it.
    pub lock: Option<crate::config::ObjectLock>,
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
            lock: None,
        })
    }

    /// The same place, for a target with this Object Lock.
    pub fn with_lock(mut self, lock: Option<crate::config::ObjectLock>) -> S3Place {
        self.lock = lock;
        self
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

    /// The IAM user of `role` for this place: `coffer-ROLE-BUCKET[-PREFIX]`, in the
    /// characters IAM allows (others become `-`), at most 64 of them.
    pub fn user_name(&self, role: &str) -> String {
        let mut name = format!("coffer-{role}-{}", self.bucket);
        if !self.prefix.is_empty() {
            name = format!("{name}-{}", self.prefix);
        }
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect()
    }
}

/// The three roles, each with its policy and its user.
pub const ROLES: [&str; 3] = ["host", "admin", "monitor"];

/// [`lifecycle`] as the S3 API takes it (XML): what `init --apply` sends.
pub fn lifecycle_xml(p: &S3Place) -> String {
    let filter = if p.prefix.is_empty() {
        "<Filter></Filter>".to_string()
    } else {
        format!(
            "<Filter><Prefix>{}</Prefix></Filter>",
            quick_xml::escape::escape(format!("{}/", p.prefix))
        )
    };
    format!(
        "<LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Rule><ID>coffer-expire-deleted</ID>{filter}<Status>Enabled</Status>\
         <Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>\
         <NoncurrentVersionExpiration><NoncurrentDays>30</NoncurrentDays>\
         </NoncurrentVersionExpiration><AbortIncompleteMultipartUpload>\
         <DaysAfterInitiation>7</DaysAfterInitiation></AbortIncompleteMultipartUpload>\
         </Rule></LifecycleConfiguration>"
    )
}

/// What a kind of target guarantees and what it leaves to the user, in lines for people
/// (`coffer init` prints them; the README's table of targets says the same).
pub fn guarantees(url: &str) -> Vec<&'static str> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let mut lines = kind_guarantees(scheme);
    if !lines.is_empty() {
        lines.push(
            "listing order: not relied on (coffer sorts what it lists; a folder lists in no \
             order, the object stores in key order)",
        );
    }
    lines
}

fn kind_guarantees(scheme: &str) -> Vec<&'static str> {
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
            // S3 wants s3:PutObjectRetention for an upload that carries a lock. It
            // cannot shorten one (GOVERNANCE needs s3:BypassGovernanceRetention too).
            "Action": if p.lock.is_some() {
                json!(["s3:PutObject", "s3:PutObjectRetention"])
            } else {
                json!("s3:PutObject")
            },
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
                "Action": admin_actions(p),
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

/// The admin's rights on the objects: with Object Lock, also read and extend a
/// retention (prune does, for the runs it keeps).
fn admin_actions(p: &S3Place) -> serde_json::Value {
    let mut actions = vec![
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:PutObject",
        "s3:DeleteObject",
    ];
    if p.lock.is_some() {
        actions.extend(["s3:GetObjectRetention", "s3:PutObjectRetention"]);
    }
    json!(actions)
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
    let lock_note = if p.lock.is_some() {
        format!(
            "# 1b. Object Lock (the config sets a retention): on for the bucket, no default\n\
             #     retention (coffer sets one per object, and prune extends it per tier).\n\
             aws s3api put-object-lock-configuration --bucket {} --object-lock-configuration \
             '{{\"ObjectLockEnabled\": \"Enabled\"}}'\n",
            p.bucket
        )
    } else {
        String::new()
    };
    let mut users = String::new();
    for role in ROLES {
        let user = p.user_name(role);
        users += &format!(
            "aws iam create-user --user-name {user}\n\
             aws iam put-user-policy --user-name {user} --policy-name coffer \\\n\
             \x20   --policy-document file://{role}-policy.json\n\
             aws iam create-access-key --user-name {user} \\\n\
             \x20   --query 'AccessKey.[AccessKeyId,SecretAccessKey]' --output text |\n\
             \x20   (umask 077; read -r id secret;\n\
             \x20    printf '[default]\\naws_access_key_id = %s\\naws_secret_access_key = %s\\n' \\\n\
             \x20       \"$id\" \"$secret\" > {role}.credentials)\n"
        );
    }
    let commands = format!(
        "#!/bin/sh\n\
         # Run with an AWS administrator's credentials, in this directory (or run\n\
         # `coffer init TARGET --policies DIR --apply`, which does the same). Each step is\n\
         # explained in coffer's README, 'Put-only backups on S3'.\n\
         set -eu\n\
         # 1. Versioning: an overwrite or delete leaves the old version.\n\
         aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled\n\
         {lock_note}\
         # 2. No object can be overwritten: a PutObject without If-None-Match is refused.\n\
         #    (This replaces the bucket's policy: merge by hand if it has one.)\n\
         aws s3api put-bucket-policy --bucket {b} --policy file://bucket-policy.json\n\
         # 3. Deleted versions go after 30 days.\n\
         aws s3api put-bucket-lifecycle-configuration --bucket {b} --lifecycle-configuration file://lifecycle.json\n\
         # 4. The three users, each with its policy and a key in ROLE.credentials (only\n\
         #    you can read it): copy each to its machine, readable by root alone.\n\
         {users}"
    );
    let target = |role: &str| {
        let mut t = format!(
            "[target.s3]\nurl = \"{url}\"\ncredentials_file = \"/etc/coffer/{role}.credentials\"\n"
        );
        if let Some(lock) = p.lock {
            t += &format!(
                "object_lock_retention = \"{}\"\nobject_lock_mode = \"{}\"\n",
                crate::retention::humantime(lock.retention),
                lock.mode()
            );
        }
        t
    };
    let host = format!(
        "# The host: only create rights (host-policy.json), its key in host.credentials\n\
         # (root alone reads it).\n\
         host = \"web1\"\n\
         state_dir = \"/var/lib/coffer/config\"\n\n\
         [source.etc]\n\
         path = \"/etc\"\n\
         recipients = [\"/etc/coffer/admin.pub.asc\"]\n\
         targets = [\"s3\"]\n\n{}",
        target("host")
    );
    let admin = format!(
        "# The admin, off the hosts: runs, restore, prune, gc, verify (admin-policy.json).\n\
         host = \"admin\"\n\
         state_dir = \"/var/lib/coffer/admin\"\n\n{}",
        target("admin")
    );
    let monitor = format!(
        "# The monitor: coffer status and runs, no key, reads only runs/ (monitor-policy.json).\n\
         host = \"monitor\"\n\
         state_dir = \"/var/lib/coffer/monitor\"\n\n{}",
        target("monitor")
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
        assert!(!admin_policy(&p).to_string().contains("Retention"));
        let locked = p.clone().with_lock(Some(crate::config::ObjectLock {
            compliance: true,
            retention: std::time::Duration::from_secs(30 * 86_400),
        }));
        let host = host_policy(&locked).to_string();
        assert!(
            host.contains("s3:PutObjectRetention") && !host.contains("Bypass"),
            "{host}"
        );
        let admin = admin_policy(&locked).to_string();
        assert!(admin.contains("s3:GetObjectRetention") && admin.contains("s3:PutObjectRetention"));
        let written = files(&locked, "s3://acme-backups/fleet/web1");
        let text = |n: &str| &written.iter().find(|(name, _)| *name == n).unwrap().1;
        assert!(text("apply.sh").contains("put-object-lock-configuration"));
        assert!(text("admin.toml")
            .contains("object_lock_retention = \"30d\"\nobject_lock_mode = \"COMPLIANCE\""));
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
