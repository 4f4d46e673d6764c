//! Object versions on S3: the earlier versions a versioned bucket keeps of an object
//! that was overwritten (docs/FORMAT.md sections 7 and 9.1). object_store reads a given version
//! (`GetOptions::version`) but cannot list them, so the listing is one
//! ListObjectVersions request, signed with object_store's own SigV4 signer and sent
//! through its HTTP client: the same credential, endpoint and TLS settings as every
//! other request to the target.
//!
//! What a hostile store sends back is bounded: the response body is read up to
//! [`MAX_RESPONSE`] bytes, at most [`MAX_VERSIONS`] versions are kept, and nothing in it
//! is trusted beyond naming a version to ask for: a version is used only when its bytes
//! hash to the object's name.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;

/// A ListObjectVersions response larger than this is refused.
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

/// What lists versions on an S3 target.
#[derive(Debug)]
pub(crate) struct S3Versions {
    s3: Arc<AmazonS3>,
    client: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual hosted).
    bucket_url: url::Url,
    pub(crate) bucket: String,
    region: String,
    /// The target's key prefix in the bucket (the URL's path), without slashes around.
    prefix: String,
}

/// Why versions could not be listed.
#[derive(Debug)]
pub(crate) enum VersionsError {
    /// The credential may not (HTTP 401/403).
    Refused(String),
    /// Anything else: the message says what.
    Other(String),
}

impl S3Versions {
    /// From the target's `s3://` URL and the builder's settings.
    pub(crate) fn new(
        s3: Arc<AmazonS3>,
        builder: &object_store::aws::AmazonS3Builder,
        url: &url::Url,
    ) -> object_store::Result<S3Versions> {
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
        let bucket_url = match (builder.get_config_value(&K::Endpoint), virtual_hosted) {
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
        Ok(S3Versions {
            s3,
            client,
            bucket_url,
            bucket,
            region,
            prefix: prefix.trim_matches('/').to_string(),
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

    /// The versions of the object at `key` (relative to the target), newest first as S3
    /// lists them; delete markers are left out. At most [`MAX_VERSIONS`].
    pub(crate) async fn list(
        &self,
        key: &str,
    ) -> std::result::Result<Vec<ObjectVersion>, VersionsError> {
        let full = self.bucket_key(key);
        let mut url = self.bucket_url.clone();
        // Encoded as SigV4 encodes it (RFC 3986 unreserved characters kept), so what is
        // sent is what is signed; the bare `versions` canonicalises to `versions=`.
        url.set_query(Some(&format!(
            "versions&max-keys={MAX_VERSIONS}&prefix={}",
            uri_encode(&full)
        )));
        let other = |m: String| VersionsError::Other(m);
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| other(format!("no credential: {e}")))?;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| other(format!("request: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| other(format!("signing the request: {e}")))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| other(format!("ListObjectVersions: {e}")))?;
        let status = response.status();
        let body = read_bounded(response.into_body()).await.map_err(other)?;
        if status == http::StatusCode::FORBIDDEN || status == http::StatusCode::UNAUTHORIZED {
            return Err(VersionsError::Refused(format!(
                "ListObjectVersions: {status}{}",
                error_code(&body)
            )));
        }
        if !status.is_success() {
            return Err(other(format!(
                "ListObjectVersions: {status}{}",
                error_code(&body)
            )));
        }
        parse(&body, &full).map_err(other)
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
) -> std::result::Result<Bytes, String> {
    use futures::StreamExt;
    let mut stream = body.bytes_stream();
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| format!("ListObjectVersions: {e}"))?;
        if out.len() + piece.len() > MAX_RESPONSE {
            return Err(format!(
                "ListObjectVersions: the response is larger than {MAX_RESPONSE} bytes"
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
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| quick_xml::de::from_str::<S3Error>(t).ok())
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
        assert_eq!(uri_encode("h 1/data/a~b"), "h%201%2Fdata%2Fa~b");
    }
}
