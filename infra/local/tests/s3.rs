//! The local S3 over real sockets: presigned URLs made by `messaging::objects::S3Objects`
//! (aws-sdk-s3's presigner) work with a plain HTTP client, and the endpoint checks SigV4 like AWS:
//! a tampered, expired or missing signature, or a header that differs from the signed one, is
//! refused with 403. HEAD, GET and DELETE through the SDK see what the presigned PUT stored.

use std::path::PathBuf;
use std::time::Duration;

use messaging::objects::{ObjectStore, PresignedRequest, S3Objects};

const BUCKET: &str = "media";

/// A data directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(testkit::unique_name("local-s3-test"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The S3 router served on 127.0.0.1:0, with an `S3Objects` pointed at it.
struct S3 {
    _dir: TempDir,
    endpoint: String,
    objects: S3Objects,
    http: reqwest::Client,
}

impl S3 {
    async fn start() -> Self {
        let dir = TempDir::new();
        let router = local_stack::s3::router(&dir.0, &[BUCKET]).expect("s3 router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        let cfg = local_stack::stack::local_aws_config().await;
        let objects = S3Objects::new(&cfg, Some(&endpoint), true);
        Self {
            _dir: dir,
            endpoint,
            objects,
            http: reqwest::Client::new(),
        }
    }

    /// Sends a presigned request as a browser would: its method, URL and headers, and `body`.
    async fn send(&self, req: &PresignedRequest, body: Option<Vec<u8>>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).expect("method");
        let mut builder = self.http.request(method, &req.url);
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        builder.send().await.expect("send presigned request")
    }
}

/// Asserts a 403 whose S3 error XML carries `code`.
async fn assert_denied(res: reqwest::Response, code: &str, what: &str) {
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    assert_eq!(status, 403, "{what}: {body}");
    assert!(
        body.contains(&format!("<Code>{code}</Code>")),
        "{what}: expected {code} in {body}"
    );
}

/// A PNG-looking payload of `n` bytes.
fn payload(n: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..n - bytes.len()).map(|i| (i % 251) as u8));
    bytes
}

fn header<'a>(req: &'a PresignedRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The URL with one character of `X-Amz-Signature` changed.
fn tamper_signature(url: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "X-Amz-Signature" {
                let mut chars: Vec<char> = v.chars().collect();
                chars[0] = if chars[0] == '0' { '1' } else { '0' };
                chars.into_iter().collect()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    assert!(pairs.iter().any(|(k, _)| k == "X-Amz-Signature"));
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    let tampered = parsed.to_string();
    assert_ne!(tampered, url);
    tampered
}

#[tokio::test]
async fn presigned_put_then_head_get_and_delete() {
    let s3 = S3::start().await;
    let key = "uploads/conv-1/photo.png";
    let bytes = payload(70_000);
    let n = bytes.len() as u64;

    let put = s3
        .objects
        .presign_put(BUCKET, key, "image/png", n, Duration::from_secs(300))
        .await
        .expect("presign PUT");
    assert_eq!(put.method, "PUT");
    assert!(
        put.url.starts_with(&format!("{}/{BUCKET}/", s3.endpoint)),
        "path-style URL: {}",
        put.url
    );
    assert!(put.url.contains("X-Amz-Signature="));
    assert_eq!(header(&put, "content-type"), Some("image/png"));
    let length = n.to_string();
    assert_eq!(header(&put, "content-length"), Some(length.as_str()));

    let res = s3.send(&put, Some(bytes.clone())).await;
    let status = res.status();
    assert_eq!(
        status,
        200,
        "presigned PUT: {}",
        res.text().await.unwrap_or_default()
    );

    let info = s3
        .objects
        .head(BUCKET, key)
        .await
        .expect("head")
        .expect("object exists");
    assert_eq!(info.size_bytes, n);
    assert_eq!(info.content_type.as_deref(), Some("image/png"));

    let get = s3
        .objects
        .presign_get(BUCKET, key, Duration::from_secs(300))
        .await
        .expect("presign GET");
    assert_eq!(get.method, "GET");
    let res = s3.send(&get, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(res.bytes().await.expect("body").to_vec(), bytes);
    assert_eq!(s3.objects.get(BUCKET, key).await.expect("get"), bytes);

    s3.objects.delete(BUCKET, key).await.expect("delete");
    assert_eq!(s3.objects.head(BUCKET, key).await.expect("head"), None);
    let res = s3.send(&get, None).await;
    assert_eq!(res.status(), 404, "presigned GET after delete");
    // Deleting again is not an error.
    s3.objects.delete(BUCKET, key).await.expect("delete again");
}

#[tokio::test]
async fn signatures_are_checked() {
    let s3 = S3::start().await;
    let key = "uploads/signed.png";
    let bytes = payload(1_000);
    s3.objects
        .put(BUCKET, key, "image/png", bytes.clone())
        .await
        .expect("SDK put");

    let get = s3
        .objects
        .presign_get(BUCKET, key, Duration::from_secs(300))
        .await
        .expect("presign GET");
    assert_eq!(s3.send(&get, None).await.status(), 200);

    // One character of the signature changed.
    let tampered = PresignedRequest {
        url: tamper_signature(&get.url),
        ..get.clone()
    };
    assert_denied(
        s3.send(&tampered, None).await,
        "SignatureDoesNotMatch",
        "tampered signature",
    )
    .await;

    // No signature at all.
    let res = s3
        .http
        .get(format!("{}/{BUCKET}/{key}", s3.endpoint))
        .send()
        .await
        .expect("unsigned GET");
    assert_denied(res, "AccessDenied", "unsigned GET").await;

    // A presigned PUT bound to image/png refuses another content type.
    let put = s3
        .objects
        .presign_put(
            BUCKET,
            "uploads/other.png",
            "image/png",
            4,
            Duration::from_secs(300),
        )
        .await
        .expect("presign PUT");
    let mut wrong = put.clone();
    for (name, value) in &mut wrong.headers {
        if name.eq_ignore_ascii_case("content-type") {
            *value = "text/html".into();
        }
    }
    assert_denied(
        s3.send(&wrong, Some(b"<b/>".to_vec())).await,
        "SignatureDoesNotMatch",
        "content type differs from the signed one",
    )
    .await;
    // ... and another length.
    let mut longer = put.clone();
    for (name, value) in &mut longer.headers {
        if name.eq_ignore_ascii_case("content-length") {
            *value = "5".into();
        }
    }
    assert_denied(
        s3.send(&longer, Some(b"12345".to_vec())).await,
        "SignatureDoesNotMatch",
        "length differs from the signed one",
    )
    .await;
    assert_eq!(
        s3.objects
            .head(BUCKET, "uploads/other.png")
            .await
            .expect("head"),
        None,
        "refused uploads store nothing"
    );
    // The signed request itself goes through.
    assert_eq!(s3.send(&put, Some(b"1234".to_vec())).await.status(), 200);
    let info = s3
        .objects
        .head(BUCKET, "uploads/other.png")
        .await
        .expect("head")
        .expect("stored");
    assert_eq!(info.size_bytes, 4);
}

#[tokio::test]
async fn expired_presigned_urls_are_refused() {
    let s3 = S3::start().await;
    let key = "uploads/expiring.png";
    s3.objects
        .put(BUCKET, key, "image/png", payload(100))
        .await
        .expect("SDK put");
    let get = s3
        .objects
        .presign_get(BUCKET, key, Duration::from_secs(1))
        .await
        .expect("presign GET");
    let put = s3
        .objects
        .presign_put(
            BUCKET,
            "uploads/late.png",
            "image/png",
            100,
            Duration::from_secs(1),
        )
        .await
        .expect("presign PUT");
    // X-Amz-Date has a one-second resolution: wait past the expiry plus that second.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let res = s3.send(&get, None).await;
    assert_denied(res, "AccessDenied", "expired GET").await;
    let res = s3.send(&put, Some(payload(100))).await;
    assert_denied(res, "AccessDenied", "expired PUT").await;
    assert_eq!(
        s3.objects
            .head(BUCKET, "uploads/late.png")
            .await
            .expect("head"),
        None
    );
}
