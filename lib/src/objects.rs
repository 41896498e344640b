//! Media objects in S3: presigned upload and download URLs, and the checks after an upload.
//!
//! Clients never send media through a function: they get a presigned PUT (bound to the content
//! type and length) and a short-lived presigned GET. Path-style addressing and a custom endpoint
//! make the same code work against AWS S3 and the local stack's S3.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use crate::error::{Error, Result};

/// A presigned request: the client sends exactly this.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresignedRequest {
    /// HTTP method (`PUT` or `GET`).
    pub method: String,
    /// The URL with the signature in its query string.
    pub url: String,
    /// Headers the client must send with these values (they are signed).
    pub headers: Vec<(String, String)>,
}

/// Size and type of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Bytes.
    pub size_bytes: u64,
    /// `Content-Type` it was stored with.
    pub content_type: Option<String>,
}

/// The objects port.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// A presigned PUT for `key`, valid for `expires_in`, bound to `content_type` and `length`.
    async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        length: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest>;
    /// A presigned GET for `key`, valid for `expires_in`.
    async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest>;
    /// Size and type of an object, `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>>;
    /// The whole object.
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>>;
    /// Stores an object.
    async fn put(&self, bucket: &str, key: &str, content_type: &str, body: Vec<u8>) -> Result<()>;
    /// Deletes an object (no error when absent).
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;
    /// Like [`ObjectStore::presign_put`], and also bound to the SHA-256 of the body when
    /// `checksum_sha256` (base64 of the 32-byte digest) is given: the `x-amz-checksum-sha256`
    /// header is signed, and S3 refuses a body with another digest (`BadDigest`). The default
    /// implementation binds no checksum and refuses to pretend it does.
    async fn presign_put_with_checksum(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        length: u64,
        checksum_sha256: Option<&str>,
        expires_in: Duration,
    ) -> Result<PresignedRequest> {
        match checksum_sha256 {
            None => {
                self.presign_put(bucket, key, content_type, length, expires_in)
                    .await
            }
            Some(_) => Err(Error::dependency(
                "objects",
                "this object store cannot bind a checksum to a presigned upload",
            )),
        }
    }
}

/// The adapter over `aws-sdk-s3`.
#[derive(Clone, Debug)]
pub struct S3Objects {
    client: Client,
}

impl S3Objects {
    /// A client with credentials and region from `sdk_config`, at `endpoint` when given (local
    /// stack, MinIO), path-style when `path_style`.
    pub fn new(
        sdk_config: &aws_config::SdkConfig,
        endpoint: Option<&str>,
        path_style: bool,
    ) -> Self {
        let mut builder =
            aws_sdk_s3::config::Builder::from(sdk_config).force_path_style(path_style);
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(builder.build()),
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn presigning(expires_in: Duration) -> Result<PresigningConfig> {
    PresigningConfig::expires_in(expires_in).map_err(|e| Error::invalid(e.to_string()))
}

fn to_presigned(req: aws_sdk_s3::presigning::PresignedRequest) -> PresignedRequest {
    PresignedRequest {
        method: req.method().to_string(),
        url: req.uri().to_string(),
        // The headers the client must send. The SDK's tracing header (under Lambda, the
        // invocation's X-Ray id) is not one of them.
        headers: req
            .headers()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("x-amzn-trace-id"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn s3_error(e: impl std::fmt::Debug) -> Error {
    Error::dependency("s3", format!("{e:?}"))
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn presign_put(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        length: u64,
        expires_in: Duration,
    ) -> Result<PresignedRequest> {
        let req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length as i64)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(s3_error)?;
        Ok(to_presigned(req))
    }

    async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest> {
        let req = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(s3_error)?;
        Ok(to_presigned(req))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                size_bytes: out.content_length().unwrap_or_default().max(0) as u64,
                content_type: out.content_type().map(str::to_string),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(s3_error)?;
        let bytes = out.body.collect().await.map_err(s3_error)?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn put(&self, bucket: &str, key: &str, content_type: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    async fn presign_put_with_checksum(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        length: u64,
        checksum_sha256: Option<&str>,
        expires_in: Duration,
    ) -> Result<PresignedRequest> {
        let req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length as i64)
            .set_checksum_sha256(checksum_sha256.map(str::to_string))
            .presigned(presigning(expires_in)?)
            .await
            .map_err(s3_error)?;
        Ok(to_presigned(req))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }
}
