//! S3-compatible object storage: custom endpoint, path-style addressing, credentials from the
//! environment (or a mounted Secret), retries with backoff, timeouts, and resumable downloads.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

/// Connection settings.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL (`http://minio:9000`); AWS when unset.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Path-style addressing (MinIO and most self-hosted stores).
    pub force_path_style: bool,
}

impl std::fmt::Debug for S3Config {
    // The secret never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

impl S3Config {
    /// From `OCELLUS_S3_ENDPOINT`, `OCELLUS_S3_REGION`, `OCELLUS_S3_FORCE_PATH_STYLE`,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (as the chart sets them from its Secret).
    pub fn from_env() -> Result<S3Config, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(S3Config {
            endpoint: var("OCELLUS_S3_ENDPOINT"),
            region: var("OCELLUS_S3_REGION").or_else(|| var("AWS_REGION")).unwrap_or_else(|| "us-east-1".into()),
            access_key_id: var("AWS_ACCESS_KEY_ID").ok_or("AWS_ACCESS_KEY_ID is not set")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY").ok_or("AWS_SECRET_ACCESS_KEY is not set")?,
            force_path_style: var("OCELLUS_S3_FORCE_PATH_STYLE").is_none_or(|v| v != "false"),
        })
    }
}

/// An `s3://bucket/key` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// Bucket.
    pub bucket: String,
    /// Key (may be empty or end in `/` for a prefix).
    pub key: String,
}

impl S3Uri {
    /// Parses `s3://bucket/key`.
    pub fn parse(uri: &str) -> Result<S3Uri, String> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| format!("{uri:?} is not an s3:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{uri:?} has no bucket"));
        }
        Ok(S3Uri { bucket: bucket.into(), key: key.into() })
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Storage errors, flattened to a message (the SDK's errors carry no secrets).
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {message}")]
pub struct StoreError {
    /// The operation.
    pub op: &'static str,
    /// Bucket/key.
    pub target: String,
    /// What went wrong.
    pub message: String,
    /// What kind of failure it was.
    pub cause: StoreCause,
}

/// The failures callers treat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCause {
    /// The object (or bucket) does not exist.
    NotFound,
    /// The object is larger than the caller's limit.
    TooLarge,
    /// Anything else: network, throttling, server errors that outlasted the SDK's retries.
    Other,
}

impl StoreError {
    /// Whether the object does not exist.
    pub fn not_found(&self) -> bool {
        self.cause == StoreCause::NotFound
    }
}

impl ocellus_core::error::Classify for StoreError {
    /// A missing or oversized object is permanent; anything else may pass.
    fn kind(&self) -> ocellus_core::ErrorKind {
        match self.cause {
            StoreCause::NotFound | StoreCause::TooLarge => ocellus_core::ErrorKind::Permanent,
            StoreCause::Other => ocellus_core::ErrorKind::Transient,
        }
    }
}

fn err<E: std::error::Error + 'static>(
    op: &'static str,
    target: String,
    e: aws_sdk_s3::error::SdkError<E>,
) -> StoreError {
    let not_found = e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
    let message = match &e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => format!("{} (HTTP {})", s.err(), s.raw().status().as_u16()),
        other => format!("{}", aws_sdk_s3::error::DisplayErrorContext(other)),
    };
    StoreError { op, target, message, cause: if not_found { StoreCause::NotFound } else { StoreCause::Other } }
}

fn presigning(key: &str, expires_in: Duration) -> Result<aws_sdk_s3::presigning::PresigningConfig, StoreError> {
    aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in).map_err(|e| StoreError {
        op: "presign",
        target: key.to_string(),
        message: e.to_string(),
        cause: StoreCause::Other,
    })
}

/// The outcome of [`Store::get_if_changed`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// No such object.
    Missing,
    /// The object still has the ETag given.
    NotModified,
    /// The object's bytes and its ETag.
    Body {
        /// Content.
        bytes: Bytes,
        /// ETag, for the next conditional read.
        etag: Option<String>,
    },
}

/// A client bound to one bucket.
#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl Store {
    /// A store for `bucket`.
    pub fn new(cfg: &S3Config, bucket: &str) -> Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(&cfg.access_key_id, &cfg.secret_access_key, None, None, "ocellus"))
            .force_path_style(cfg.force_path_style)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(5).with_initial_backoff(Duration::from_millis(200)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .operation_attempt_timeout(Duration::from_secs(600))
                    .build(),
            )
            // Many S3-compatible stores reject the newer default checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        Store { client: aws_sdk_s3::Client::from_conf(b.build()), bucket: bucket.to_string() }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/key`.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }

    fn target(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, key)
    }

    /// Creates the bucket if it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = err("create bucket", self.bucket.clone(), e);
                if e.message.contains("BucketAlreadyOwnedByYou") || e.message.contains("BucketAlreadyExists") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Writes an object.
    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("put", self.target(key), e))
    }

    /// Uploads a local file.
    pub async fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path).await.map_err(|e| StoreError {
            op: "read",
            target: path.display().to_string(),
            message: e.to_string(),
            cause: StoreCause::Other,
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("put", self.target(key), e))
    }

    /// A URL that lets its holder `PUT` the object `key` without credentials until `expires_in`
    /// has passed (SigV4 query signing; at most 7 days). Only the host is signed, so the
    /// uploader may send any `Content-Type`. The URL names this store's endpoint: sign with a
    /// store configured with the endpoint clients reach.
    pub async fn presign_put(&self, key: &str, expires_in: Duration) -> Result<String, StoreError> {
        let cfg = presigning(key, expires_in)?;
        let req = self.client.put_object().bucket(&self.bucket).key(key).presigned(cfg).await;
        req.map(|r| r.uri().to_string()).map_err(|e| err("presign put", self.target(key), e))
    }

    /// A URL that lets its holder `GET` the object `key` until `expires_in` has passed.
    pub async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, StoreError> {
        let cfg = presigning(key, expires_in)?;
        let req = self.client.get_object().bucket(&self.bucket).key(key).presigned(cfg).await;
        req.map(|r| r.uri().to_string()).map_err(|e| err("presign get", self.target(key), e))
    }

    /// Size of an object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => {
                let e = err("head", self.target(key), e);
                if e.not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err("get", self.target(key), e))?;
        self.body(key, o.body).await
    }

    /// The whole body of a GET of `key`.
    async fn body(&self, key: &str, body: aws_sdk_s3::primitives::ByteStream) -> Result<Bytes, StoreError> {
        let data = body.collect().await.map_err(|e| StoreError {
            op: "get",
            target: self.target(key),
            message: e.to_string(),
            cause: StoreCause::Other,
        })?;
        Ok(data.into_bytes())
    }

    /// Reads an object, `None` if it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads an object unless its ETag is still `etag` (a conditional GET: `If-None-Match`), so
    /// that polling an unchanged object transfers nothing.
    pub async fn get_if_changed(&self, key: &str, etag: Option<&str>) -> Result<Fetched, StoreError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(e) = etag {
            req = req.if_none_match(e);
        }
        match req.send().await {
            Ok(o) => {
                let etag = o.e_tag().map(str::to_string);
                Ok(Fetched::Body { bytes: self.body(key, o.body).await?, etag })
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => Ok(Fetched::NotModified),
            Err(e) => {
                let e = err("get", self.target(key), e);
                if e.not_found() { Ok(Fetched::Missing) } else { Err(e) }
            }
        }
    }

    /// Downloads an object to `dest`, resuming a partial file with a Range request, with up to
    /// five attempts. Refuses objects larger than `max_bytes`.
    pub async fn download(&self, key: &str, dest: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        let size = self.head(key).await?.ok_or_else(|| StoreError {
            op: "get",
            target: self.target(key),
            message: "no such object".into(),
            cause: StoreCause::NotFound,
        })?;
        if size > max_bytes {
            return Err(StoreError {
                op: "get",
                target: self.target(key),
                message: format!("{size} bytes is over the {max_bytes} byte limit"),
                cause: StoreCause::TooLarge,
            });
        }
        let io = |e: std::io::Error| StoreError {
            op: "write",
            target: dest.display().to_string(),
            message: e.to_string(),
            cause: StoreCause::Other,
        };
        // Resuming applies to retries of this download only, never to a file left by another.
        match tokio::fs::remove_file(dest).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let mut attempt = 0u32;
        loop {
            let have = tokio::fs::metadata(dest).await.map(|m| m.len()).unwrap_or(0);
            if have == size {
                return Ok(size);
            }
            if have > size {
                tokio::fs::remove_file(dest).await.map_err(io)?;
                continue;
            }
            let mut req = self.client.get_object().bucket(&self.bucket).key(key);
            if have > 0 {
                req = req.range(format!("bytes={have}-"));
            }
            let result = async {
                let mut o = req.send().await.map_err(|e| err("get", self.target(key), e))?;
                let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(dest).await.map_err(io)?;
                while let Some(chunk) = o.body.try_next().await.map_err(|e| StoreError {
                    op: "get",
                    target: self.target(key),
                    message: e.to_string(),
                    cause: StoreCause::Other,
                })? {
                    f.write_all(&chunk).await.map_err(io)?;
                }
                f.flush().await.map_err(io)?;
                Ok::<_, StoreError>(())
            }
            .await;
            match result {
                Ok(()) => {}
                Err(e) if attempt >= 4 || e.not_found() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// Keys and sizes under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("list", self.target(prefix), e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }

    /// Server-side copy within the bucket.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(format!("{}/{}", self.bucket, from))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("copy", self.target(to), e))
    }

    /// Deletes every object under `prefix` (finalizers use this).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let keys = self.list(prefix).await?;
        for (k, _) in &keys {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(k)
                .send()
                .await
                .map_err(|e| err("delete", self.target(k), e))?;
        }
        Ok(keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        assert_eq!(S3Uri::parse("s3://b/a/b.zip").expect("ok"), S3Uri { bucket: "b".into(), key: "a/b.zip".into() });
        assert_eq!(S3Uri::parse("s3://b").expect("ok").key, "");
        assert!(S3Uri::parse("https://x").is_err());
        assert!(S3Uri::parse("s3:///k").is_err());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = S3Config {
            endpoint: None,
            region: "r".into(),
            access_key_id: "id".into(),
            secret_access_key: "hunter2".into(),
            force_path_style: true,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
