//! What coffer asks of S3 that object_store cannot: list an object's versions (the
//! earlier versions a versioned bucket keeps of an object that was overwritten,
//! docs/FORMAT.md sections 7 and 9.1), read and extend an object's Object Lock
//! retention (`prune` on a locked target), and set a bucket's configuration (`init
//! --apply`). Each is one request signed with object_store's own SigV4 signer and sent
//! through its HTTP client: the same credential, endpoint and TLS settings as every
//! other request to the target.
//!
//! What a hostile store sends back is bounded: a response body is read up to
//! [`MAX_RESPONSE`] bytes, at most [`MAX_VERSIONS`] versions are kept, and nothing in it
//! is trusted beyond naming a version to ask for (a version is used only when its bytes
//! hash to the object's name) or a date to compare.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;

/// A response larger than this is refused.
const MAX_RESPONSE: usize = 1 << 20;
/// Versions asked for (and kept) per object.
pub(crate) const MAX_VERSIONS: usize = 100;

/// One stored version of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectVersion {
    /// S3's version id (opaque).
    pub id: String,
    /// Whether it is the one a plain GET returns.
    pub latest: bool,
    /// Bytes.
    pub size: u64,
    /// When S3 stored it (RFC 3339), as S3 gave it.
    pub stored: String,
}

/// An object's Object Lock retention, as a HEAD reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// COMPLIANCE (else GOVERNANCE).
    pub compliance: bool,
    /// Until when.
    pub until: DateTime<Utc>,
}

/// What makes requests of an S3 target that object_store has no call for.
#[derive(Debug)]
pub(crate) struct S3Api {
    s3: Arc<AmazonS3>,
    client: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual hosted).
    bucket_url: url::Url,
    pub(crate) bucket: String,
    region: String,
    /// The target's key prefix in the bucket (the URL's path), without slashes around.
    prefix: String,
    /// The endpoint the config or the environment gives, if not AWS's own.
    pub(crate) endpoint: Option<String>,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The credential may not (HTTP 401/403).
    Refused(String),
    /// No such object (HTTP 404).
    NotFound(String),
    /// It exists already (HTTP 409: IAM's EntityAlreadyExists).
    Conflict(String),
    /// Anything else: the message says what.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Refused(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Other(m) => f.write_str(m),
        }
    }
}

/// A response: status, headers, body (bounded).
struct Reply {
    headers: http::HeaderMap,
    body: Bytes,
}

impl S3Api {
    /// From the target's `s3://` URL and the builder's settings.
    pub(crate) fn new(
        s3: Arc<AmazonS3>,
        builder: &object_store::aws::AmazonS3Builder,
        url: &url::Url,
    ) -> object_store::Result<S3Api> {
        use object_store::aws::AmazonS3ConfigKey as K;
        let generic = |m: String| object_store::Error::Generic {
            store: "coffer",
            source: m.into(),
        };
        // `s3://bucket/prefix`: the URL names the bucket (and overrides the builder's).
        let bucket = url
            .host_str()
            .map(str::to_string)
            .ok_or_else(|| generic("the S3 URL names no bucket".into()))?;
        let prefix = url.path();
        let region = builder
            .get_config_value(&K::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = builder
            .get_config_value(&K::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        // As object_store computes it (AmazonS3Builder::build).
        let endpoint = builder.get_config_value(&K::Endpoint);
        let bucket_url = match (endpoint.clone(), virtual_hosted) {
            (Some(e), true) => e,
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let bucket_url = url::Url::parse(&bucket_url)
            .map_err(|e| generic(format!("bucket URL {bucket_url}: {e}")))?;
        let allow_http = bucket_url.scheme() == "http";
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(std::time::Duration::from_secs(10))
            .with_timeout(std::time::Duration::from_secs(60));
        let client = ReqwestConnector::default().connect(&options)?;
        Ok(S3Api {
            s3,
            client,
            bucket_url,
            bucket,
            region,
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
        })
    }

    /// The object's key in the bucket, for `key` relative to the target.
    pub(crate) fn bucket_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// Sends one signed request: to the object `key` (relative to the target) or, with
    /// `None`, to the bucket; `query` is already encoded as SigV4 encodes it (a bare
    /// sub-resource such as `retention` canonicalises to `retention=`). `what` names the
    /// operation in errors. A body gets a Content-MD5 (S3 requires one on the
    /// configuration calls) and is signed.
    async fn send(
        &self,
        method: http::Method,
        key: Option<&str>,
        query: &str,
        body: Bytes,
        what: &str,
    ) -> std::result::Result<Reply, ApiError> {
        use base64::Engine;
        use md5::Digest;
        let mut url = self.bucket_url.clone();
        if let Some(key) = key {
            let full = self.bucket_key(key);
            let base = url.path().trim_end_matches('/').to_string();
            let encoded: Vec<String> = full.split('/').map(uri_encode).collect();
            url.set_path(&format!("{base}/{}", encoded.join("/")));
        }
        url.set_query((!query.is_empty()).then_some(query));
        let other = |m: String| ApiError::Other(m);
        let mut builder = http::Request::builder().method(method).uri(url.as_str());
        if !body.is_empty() {
            let md5 = md5::Md5::digest(&body);
            builder = builder.header(
                "content-md5",
                base64::engine::general_purpose::STANDARD.encode(md5),
            );
        }
        let request = builder
            .body(HttpRequestBody::from(body))
            .map_err(|e| other(format!("{what}: request: {e}")))?;
        self.signed(request, "s3", &self.region, what).await
    }

    /// Signs `request` for `service` in `region` with the target's credential, sends it,
    /// and sorts the answer.
    async fn signed(
        &self,
        mut request: http::Request<HttpRequestBody>,
        service: &str,
        region: &str,
        what: &str,
    ) -> std::result::Result<Reply, ApiError> {
        let other = |m: String| ApiError::Other(m);
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| other(format!("{what}: no credential: {e}")))?;
        AwsAuthorizer::new(&credential, service, region)
            .try_authorize(&mut request, None)
            .map_err(|e| other(format!("{what}: signing the request: {e}")))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| other(format!("{what}: {e}")))?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let body = read_bounded(body, what).await.map_err(other)?;
        let failed = format!("{what}: {status}{}", error_code(&body));
        match status {
            s if s.is_success() => Ok(Reply {
                headers: parts.headers,
                body,
            }),
            http::StatusCode::FORBIDDEN | http::StatusCode::UNAUTHORIZED => {
                Err(ApiError::Refused(failed))
            }
            http::StatusCode::NOT_FOUND => Err(ApiError::NotFound(failed)),
            http::StatusCode::CONFLICT => Err(ApiError::Conflict(failed)),
            _ => Err(other(failed)),
        }
    }

    /// The versions of the object at `key` (relative to the target), newest first as S3
    /// lists them; delete markers are left out. At most [`MAX_VERSIONS`].
    pub(crate) async fn list(
        &self,
        key: &str,
    ) -> std::result::Result<Vec<ObjectVersion>, ApiError> {
        let full = self.bucket_key(key);
        let query = format!(
            "versions&max-keys={MAX_VERSIONS}&prefix={}",
            uri_encode(&full)
        );
        let what = "ListObjectVersions";
        let reply = self
            .send(http::Method::GET, None, &query, Bytes::new(), what)
            .await?;
        parse(&reply.body, &full).map_err(ApiError::Other)
    }

    /// The Object Lock retention of the current version of `key` (relative to the
    /// target), from a HEAD: `None` when it has none (or the credential may not see it:
    /// S3 leaves the headers out without s3:GetObjectRetention).
    pub(crate) async fn retention(
        &self,
        key: &str,
    ) -> std::result::Result<Option<Retention>, ApiError> {
        let reply = self
            .send(
                http::Method::HEAD,
                Some(key),
                "",
                Bytes::new(),
                "HeadObject",
            )
            .await?;
        let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok());
        let Some(until) = header("x-amz-object-lock-retain-until-date") else {
            return Ok(None);
        };
        let until = DateTime::parse_from_rfc3339(until.trim())
            .map_err(|_| {
                ApiError::Other(format!(
                    "HeadObject: unreadable retain-until date {:?}",
                    until.chars().take(40).collect::<String>()
                ))
            })?
            .with_timezone(&Utc);
        let compliance = header("x-amz-object-lock-mode")
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("COMPLIANCE"));
        Ok(Some(Retention { compliance, until }))
    }

    /// Sets the Object Lock retention of the current version of `key` (PutObjectRetention).
    pub(crate) async fn set_retention(
        &self,
        key: &str,
        retention: Retention,
    ) -> std::result::Result<(), ApiError> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            crate::config::lock_mode(retention.compliance),
            retention
                .until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        self.send(
            http::Method::PUT,
            Some(key),
            "retention",
            Bytes::from(body),
            "PutObjectRetention",
        )
        .await
        .map(|_| ())
    }

    /// One call of the IAM API (`Action` and its parameters, form-encoded in a POST to
    /// `endpoint`, signed for `iam` in us-east-1 as IAM's global endpoint wants); the
    /// response's body.
    pub(crate) async fn iam(
        &self,
        endpoint: &url::Url,
        params: &[(&str, &str)],
    ) -> std::result::Result<Bytes, ApiError> {
        let what = params
            .iter()
            .find(|(k, _)| *k == "Action")
            .map_or("IAM", |(_, v)| *v);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Version", "2010-05-08");
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(endpoint.as_str())
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(HttpRequestBody::from(Bytes::from(form.finish())))
            .map_err(|e| ApiError::Other(format!("{what}: request: {e}")))?;
        Ok(self.signed(request, "iam", "us-east-1", what).await?.body)
    }

    /// Sets one of the bucket's configurations (`sub` is its sub-resource: `versioning`,
    /// `policy`, `lifecycle`) to `body`.
    pub(crate) async fn put_bucket(
        &self,
        sub: &str,
        body: Bytes,
        what: &str,
    ) -> std::result::Result<(), ApiError> {
        self.send(http::Method::PUT, None, sub, body, what)
            .await
            .map(|_| ())
    }
}

/// `s` percent-encoded except for RFC 3986's unreserved characters.
fn uri_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The body, refused beyond [`MAX_RESPONSE`] bytes.
async fn read_bounded(
    body: object_store::client::HttpResponseBody,
    what: &str,
) -> std::result::Result<Bytes, String> {
    use futures::StreamExt;
    let mut stream = body.bytes_stream();
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| format!("{what}: {e}"))?;
        if out.len() + piece.len() > MAX_RESPONSE {
            return Err(format!(
                "{what}: the response is larger than {MAX_RESPONSE} bytes"
            ));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out.into())
}

/// `: <Code>` of an S3 error body, if it has one (never its other fields).
fn error_code(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct S3Error {
        #[serde(rename = "Code")]
        code: String,
    }
    #[derive(serde::Deserialize)]
    struct IamError {
        #[serde(rename = "Error")]
        error: S3Error,
    }
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| {
            quick_xml::de::from_str::<S3Error>(t)
                .ok()
                .or_else(|| quick_xml::de::from_str::<IamError>(t).ok().map(|e| e.error))
        })
        .map(|e| {
            let code: String = e
                .code
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(64)
                .collect();
            format!(" ({code})")
        })
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
struct ListVersionsResult {
    #[serde(rename = "Version", default)]
    versions: Vec<Version>,
}

#[derive(serde::Deserialize)]
struct Version {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "VersionId")]
    id: String,
    #[serde(rename = "IsLatest")]
    latest: bool,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "LastModified", default)]
    stored: String,
}

/// The versions of exactly `key` in a ListObjectVersions response.
fn parse(body: &[u8], key: &str) -> std::result::Result<Vec<ObjectVersion>, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "ListObjectVersions: the response is not UTF-8".to_string())?;
    let result: ListVersionsResult = quick_xml::de::from_str(text)
        .map_err(|e| format!("ListObjectVersions: unreadable response: {e}"))?;
    Ok(result
        .versions
        .into_iter()
        // Ids and times end up in messages and in a command people copy: only
        // characters that are safe there (S3's ids are URL-safe) are accepted.
        .filter(|v| v.key == key && !v.id.is_empty() && v.id.len() <= 1024)
        .filter(|v| {
            v.id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+=".contains(&b))
        })
        .take(MAX_VERSIONS)
        .map(|v| ObjectVersion {
            id: v.id,
            latest: v.latest,
            size: v.size,
            stored: v
                .stored
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || ":.+-".contains(*c))
                .take(40)
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_exactly_the_key_delete_markers_left_out() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>h/data/ab/abc</Prefix><IsTruncated>false</IsTruncated>
  <Version><Key>h/data/ab/abc</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest>
    <LastModified>2026-12-03T07:00:00.000Z</LastModified><ETag>"x"</ETag><Size>5</Size></Version>
  <DeleteMarker><Key>h/data/ab/abc</Key><VersionId>m1</VersionId><IsLatest>false</IsLatest>
    <LastModified>2026-12-02T07:00:00.000Z</LastModified></DeleteMarker>
  <Version><Key>h/data/ab/abc</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest>
    <LastModified>2026-12-01T07:00:00.000Z</LastModified><ETag>"y"</ETag><Size>1048576</Size></Version>
  <Version><Key>h/data/ab/abc</Key><VersionId>x' ; rm -rf /</VersionId><IsLatest>false</IsLatest>
    <LastModified>2026-12-01T07:00:00.000Z</LastModified><Size>1</Size></Version>
  <Version><Key>h/data/ab/abcd</Key><VersionId>w</VersionId><IsLatest>true</IsLatest>
    <LastModified>2026-12-01T07:00:00.000Z</LastModified><Size>1</Size></Version>
</ListVersionsResult>"#;
        let v = parse(body, "h/data/ab/abc").unwrap();
        assert_eq!(
            v,
            vec![
                ObjectVersion {
                    id: "v3".into(),
                    latest: true,
                    size: 5,
                    stored: "2026-12-03T07:00:00.000Z".into()
                },
                ObjectVersion {
                    id: "v1".into(),
                    latest: false,
                    size: 1 << 20,
                    stored: "2026-12-01T07:00:00.000Z".into()
                },
            ]
        );
        assert!(parse(b"<ListVersionsResult/>", "k").unwrap().is_empty());
        assert!(parse(b"not xml <", "k").is_err());
        assert!(parse(&[0xff, 0xfe], "k").is_err());
        assert_eq!(
            error_code(b"<Error><Code>AccessDenied</Code><Message>m</Message></Error>"),
            " (AccessDenied)"
        );
        assert_eq!(error_code(b"junk"), "");
        assert_eq!(
            error_code(
                b"<ErrorResponse><Error><Type>Sender</Type><Code>EntityAlreadyExists</Code>\
                  <Message>m</Message></Error><RequestId>r</RequestId></ErrorResponse>"
            ),
            " (EntityAlreadyExists)"
        );
        assert_eq!(uri_encode("h 1/data/a~b"), "h%201%2Fdata%2Fa~b");
    }
}
