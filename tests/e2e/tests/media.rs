//! Media through the presign function and the local stack's S3 (real SigV4 checks): presigned
//! PUTs and GETs sent over real HTTP as any client would, completion with its checks and
//! thumbnails, members-only access, limits, checksums, encrypted media and expiry. Redis and
//! MongoDB are real (the harness's).

use std::sync::Arc;
use std::time::Duration;

use e2e::{conversation, stack, token, user};
use fn_presign::lambda_http::{Body, http};
use fn_presign::{Presign, PresignOptions, THUMBNAIL_SUFFIX};
use local_stack::stack::RunningStack;
use messaging::model::{ConversationKind, MediaState};
use messaging::objects::{ObjectStore, S3Objects};
use serde_json::{Value, json};

/// A stack, a presign function wired to its S3 the way Lambda wires it to AWS, and users.
struct Media {
    stack: RunningStack,
    objects: Arc<S3Objects>,
    presign: Presign,
    http: reqwest::Client,
    alice: String,
    bob: String,
    carol: String,
    /// Alice and Bob's 1:1 conversation (Carol is not in it).
    conversation: String,
}

/// An answer of the presign function.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

async fn setup() -> Media {
    let stack = stack().await;
    let cfg = local_stack::stack::local_aws_config().await;
    let objects = Arc::new(S3Objects::new(&cfg, Some(&stack.s3_url), true));
    let presign = Presign::new(
        stack.ctx.clone(),
        objects.clone(),
        PresignOptions::default(),
    );
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let carol = user(&stack, "carol").await;
    let conversation = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    Media {
        stack,
        objects,
        presign,
        http: reqwest::Client::new(),
        alice,
        bob,
        carol,
        conversation,
    }
}

impl Media {
    /// The same function with other options (same stack, S3 and database).
    fn with_options(&self, adjust: impl FnOnce(&mut PresignOptions)) -> Presign {
        let mut options = PresignOptions::default();
        adjust(&mut options);
        Presign::new(self.stack.ctx.clone(), self.objects.clone(), options)
    }

    async fn call_with(
        &self,
        presign: &Presign,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut builder = http::Request::builder().method(method).uri(path);
        if let Some(user) = user {
            builder = builder.header(
                "authorization",
                format!("Bearer {}", token(&self.stack, user)),
            );
        }
        let body = match body {
            Some(b) => {
                builder = builder.header("content-type", "application/json");
                Body::Text(b.to_string())
            }
            None => Body::Empty,
        };
        let response = fn_presign::handle(
            &fn_presign::router(presign.clone()),
            builder.body(body).unwrap(),
        )
        .await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::String(t.clone())),
            _ => Value::Null,
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_with(&self.presign, method, path, user, body)
            .await
    }

    /// Asks for an upload as `user`.
    async fn request(&self, user: &str, body: Value) -> Answer {
        self.call("POST", "/v1/media", Some(user), Some(body)).await
    }

    /// Sends a presigned request (`{method, url, headers}` as the API shows it) with `body`.
    async fn send(&self, presigned: &Value, body: Option<Vec<u8>>) -> reqwest::Response {
        let method =
            reqwest::Method::from_bytes(presigned["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut builder = self
            .http
            .request(method, presigned["url"].as_str().unwrap());
        for (name, value) in presigned["headers"].as_object().unwrap() {
            builder = builder.header(name.as_str(), value.as_str().unwrap());
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        builder.send().await.expect("presigned request sent")
    }

    /// Uploads `bytes` for a granted upload; asserts storage took them.
    async fn upload(&self, granted: &Answer, bytes: Vec<u8>) {
        let res = self.send(&granted.body["upload"], Some(bytes)).await;
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().await.unwrap_or_default());
    }

    async fn complete(&self, user: &str, media_id: &str, body: Option<Value>) -> Answer {
        self.call(
            "POST",
            &format!("/v1/media/{media_id}/complete"),
            Some(user),
            body,
        )
        .await
    }

    async fn download(&self, user: &str, media_id: &str) -> Answer {
        self.call("GET", &format!("/v1/media/{media_id}"), Some(user), None)
            .await
    }

    async fn state(&self, media_id: &str) -> MediaState {
        self.stack
            .ctx
            .store
            .media(media_id)
            .await
            .unwrap()
            .expect("media record")
            .state
    }
}

// ---- a tiny PNG encoder (stored deflate blocks), so the test needs no image library ----

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A `width` x `height` RGB gradient as a valid, uncompressed PNG.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8]);
        }
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + byte as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// 4096 bytes whose SHA-256 is [`PATTERN_SHA256`].
fn pattern() -> Vec<u8> {
    (0..4096u32).map(|i| ((i * 7) % 256) as u8).collect()
}

/// Base64 SHA-256 of [`pattern`] (computed once with `sha256sum | base64`).
const PATTERN_SHA256: &str = "0BD2120OtNzl1bWzQBSooVfsQ4CmbCTX1FWpv2UtsUo=";

fn image_request(conversation: &str, size: usize) -> Value {
    json!({
        "conversation_id": conversation,
        "message_type": "image",
        "content_type": "image/png",
        "size_bytes": size,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_goes_up_gets_a_thumbnail_and_comes_down_for_members() {
    let m = setup().await;
    let bytes = png(800, 600);
    let granted = m
        .request(&m.alice, image_request(&m.conversation, bytes.len()))
        .await;
    assert_eq!(granted.status, 201, "{granted:?}");
    assert_eq!(granted.headers["cache-control"], "no-store");
    let media_id = granted.body["media_id"].as_str().unwrap().to_string();
    assert_eq!(granted.body["state"], "pending");
    assert_eq!(
        granted.body["object_key"],
        format!("{}/{media_id}", m.conversation),
        "keys are namespaced by conversation"
    );
    let upload = &granted.body["upload"];
    assert_eq!(upload["method"], "PUT");
    assert_eq!(upload["headers"]["content-type"], "image/png");
    assert_eq!(upload["headers"]["content-length"], bytes.len().to_string());
    assert!(
        upload["url"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Expires=3600")
    );
    let left = upload["expires_at"].as_i64().unwrap() - messaging::clock::now_ms();
    assert!((3_590_000..=3_600_000).contains(&left), "one hour: {left}");
    assert_eq!(m.state(&media_id).await, MediaState::Pending);

    // Not completable before the bytes are there; not downloadable before completion.
    assert_eq!(m.complete(&m.alice, &media_id, None).await.status, 409);
    assert_eq!(m.download(&m.bob, &media_id).await.status, 409);

    m.upload(&granted, bytes.clone()).await;
    let done = m.complete(&m.alice, &media_id, None).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["state"], "ready");
    assert_eq!(done.body["has_preview"], true);
    assert_eq!(m.state(&media_id).await, MediaState::Ready);
    // Completing again answers the same.
    let again = m.complete(&m.alice, &media_id, None).await;
    assert_eq!((again.status, &again.body), (200, &done.body));

    // The thumbnail is next to the original: a valid JPEG, smaller in pixels and bytes.
    let key = format!("{}/{media_id}{THUMBNAIL_SUFFIX}", m.conversation);
    let info = m
        .objects
        .head("messaging-media", &key)
        .await
        .unwrap()
        .expect("thumbnail stored");
    assert_eq!(info.content_type.as_deref(), Some("image/jpeg"));

    // Bob (a participant) downloads both with short-lived URLs.
    let got = m.download(&m.bob, &media_id).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["media"]["media_id"], media_id.as_str());
    assert_eq!(got.body["media"]["size_bytes"], bytes.len());
    let expires = got.body["download"]["expires_at"].as_i64().unwrap() - messaging::clock::now_ms();
    assert!(expires <= 300_000, "downloads are short-lived: {expires}");
    let res = m.send(&got.body["download"], None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), bytes);
    let res = m.send(&got.body["preview"], None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    let thumb = res.bytes().await.unwrap().to_vec();
    assert_eq!(&thumb[..3], b"\xff\xd8\xff", "JPEG");
    assert_eq!(
        fn_presign::thumbnail::decoded_dimensions(&thumb),
        Some((320, 240)),
        "decodes, fits 320 px, keeps 4:3"
    );
    assert!(thumb.len() < bytes.len() / 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_size_or_type_is_rejected_and_deleted() {
    let m = setup().await;
    // Storage itself refuses bytes sent with another type than the signed one.
    let granted = m
        .request(&m.alice, image_request(&m.conversation, 2000))
        .await;
    let mut wrong_type = granted.body["upload"].clone();
    wrong_type["headers"]["content-type"] = json!("text/html");
    let res = m.send(&wrong_type, Some(vec![1u8; 2000])).await;
    assert_eq!(res.status(), 403, "the content type is signed");

    // An object of another size than declared (however it got there) is rejected at completion.
    let media_id = granted.body["media_id"].as_str().unwrap();
    let key = granted.body["object_key"].as_str().unwrap();
    m.objects
        .put("messaging-media", key, "image/png", png(10, 10))
        .await
        .unwrap();
    let done = m.complete(&m.alice, media_id, None).await;
    assert_eq!(done.status, 409, "{done:?}");
    let message = done.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rejected") && message.contains("2000 declared"),
        "{message}"
    );
    assert_eq!(m.state(media_id).await, MediaState::Rejected);
    assert_eq!(
        m.objects.head("messaging-media", key).await.unwrap(),
        None,
        "deleted"
    );
    assert_eq!(m.complete(&m.alice, media_id, None).await.status, 409);
    assert_eq!(m.download(&m.bob, media_id).await.status, 404);

    // Same size, another content type: rejected too.
    let bytes = png(20, 20);
    let granted = m
        .request(&m.alice, image_request(&m.conversation, bytes.len()))
        .await;
    let media_id = granted.body["media_id"].as_str().unwrap();
    let key = granted.body["object_key"].as_str().unwrap();
    m.objects
        .put("messaging-media", key, "image/gif", bytes)
        .await
        .unwrap();
    let done = m.complete(&m.alice, media_id, None).await;
    assert_eq!(done.status, 409);
    assert!(
        done.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/gif")
    );
    assert_eq!(m.state(media_id).await, MediaState::Rejected);

    // Declared a PNG, uploaded bytes that are not one: rejected when the thumbnail fails.
    let granted = m
        .request(&m.alice, image_request(&m.conversation, 4096))
        .await;
    m.upload(&granted, pattern()).await;
    let media_id = granted.body["media_id"].as_str().unwrap();
    let done = m.complete(&m.alice, media_id, None).await;
    assert_eq!(done.status, 409, "{done:?}");
    assert!(
        done.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid image/png")
    );
    assert_eq!(m.state(media_id).await, MediaState::Rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_upload_complete_and_download() {
    let m = setup().await;
    let bytes = png(40, 30);
    let r = m
        .request(&m.carol, image_request(&m.conversation, bytes.len()))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body["error"]["code"], "forbidden");
    let r = m
        .request(&m.alice, image_request("no-such-conversation", 10))
        .await;
    assert_eq!(r.status, 404);
    let r = m
        .call(
            "POST",
            "/v1/media",
            None,
            Some(image_request(&m.conversation, 10)),
        )
        .await;
    assert_eq!(r.status, 401);

    let granted = m
        .request(&m.alice, image_request(&m.conversation, bytes.len()))
        .await;
    let media_id = granted.body["media_id"].as_str().unwrap();
    m.upload(&granted, bytes).await;
    assert_eq!(m.complete(&m.carol, media_id, None).await.status, 403);
    assert_eq!(
        m.complete(&m.bob, media_id, None).await.status,
        403,
        "only the uploader completes"
    );
    assert_eq!(m.complete(&m.alice, media_id, None).await.status, 200);
    let r = m.download(&m.carol, media_id).await;
    assert_eq!(r.status, 403);
    assert!(r.body.get("download").is_none());
    assert_eq!(m.download(&m.bob, media_id).await.status, 200);
    assert_eq!(m.download(&m.alice, media_id).await.status, 200);
    assert_eq!(m.download(&m.bob, "no-such-media").await.status, 404);
    assert_eq!(
        m.call("GET", &format!("/v1/media/{media_id}"), None, None)
            .await
            .status,
        401
    );
    // The bytes themselves are not public: no signature, no access.
    let key = granted.body["object_key"].as_str().unwrap();
    let res = m
        .http
        .get(format!("{}/messaging-media/{key}", m.stack.s3_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_and_sizes_are_limited_by_kind() {
    let m = setup().await;
    let ask = |message_type: &str, content_type: &str, size: u64, encrypted: bool| {
        json!({
            "conversation_id": m.conversation,
            "message_type": message_type,
            "content_type": content_type,
            "size_bytes": size,
            "encrypted": encrypted,
        })
    };
    let r = m
        .request(&m.alice, ask("image", "application/pdf", 10, false))
        .await;
    assert_eq!(r.status, 415);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/png"),
        "{r:?}"
    );
    let r = m
        .request(&m.alice, ask("video", "video/mp4", 65 * 1024 * 1024, false))
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body["error"]["code"], "payload_too_large");
    assert_eq!(
        m.request(&m.alice, ask("image", "image/png", 0, false))
            .await
            .status,
        400
    );
    assert_eq!(
        m.request(&m.alice, ask("text", "text/plain", 10, false))
            .await
            .status,
        400
    );
    assert_eq!(
        m.request(&m.alice, ask("image", "png", 10, false))
            .await
            .status,
        400
    );
    assert_eq!(
        m.request(
            &m.alice,
            ask("audio", "application/octet-stream", 10, false)
        )
        .await
        .status,
        415,
        "octet-stream only when encrypted"
    );
    assert_eq!(
        m.request(&m.alice, ask("voice", "application/octet-stream", 10, true))
            .await
            .status,
        201
    );
    assert_eq!(
        m.request(&m.alice, ask("voice", "audio/ogg", 1024, false))
            .await
            .status,
        201
    );
    let r = m
        .request(&m.alice, json!({
            "conversation_id": m.conversation, "message_type": "image", "content_type": "image/png",
            "size_bytes": 10, "checksum_sha256": "not-base64!",
        }))
        .await;
    assert_eq!(r.status, 400);
    let r = m
        .call(
            "POST",
            "/v1/media",
            Some(&m.alice),
            Some(json!({"conversation_id": m.conversation})),
        )
        .await;
    assert_eq!(r.status, 400);
    // Documents go to the documents bucket.
    let r = m
        .request(&m.alice, ask("document", "application/pdf", 4096, false))
        .await;
    assert_eq!(r.status, 201);
    let media_id = r.body["media_id"].as_str().unwrap();
    let record = m.stack.ctx.store.media(media_id).await.unwrap().unwrap();
    assert_eq!(record.bucket, "messaging-documents");
    assert!(
        r.body["upload"]["url"]
            .as_str()
            .unwrap()
            .contains("/messaging-documents/")
    );
    m.upload(&r, pattern()).await;
    let done = m.complete(&m.alice, media_id, None).await;
    assert_eq!(done.status, 200);
    assert_eq!(
        done.body["has_preview"], false,
        "no thumbnails of documents"
    );
    // Configured limits apply.
    let strict = m.with_options(|o| o.image.max_bytes = 100);
    let r = m
        .call_with(
            &strict,
            "POST",
            "/v1/media",
            Some(&m.alice),
            Some(ask("image", "image/png", 101, false)),
        )
        .await;
    assert_eq!(r.status, 413);
    // Per-user rate limit.
    let limited = m.with_options(|o| o.rate_limit.max = 1);
    let first = m
        .call_with(&limited, "GET", "/v1/media/whatever", Some(&m.carol), None)
        .await;
    assert_eq!(first.status, 404);
    let second = m
        .call_with(&limited, "GET", "/v1/media/whatever", Some(&m.carol), None)
        .await;
    assert_eq!(second.status, 429);
    assert!(second.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_binds_the_bytes() {
    let m = setup().await;
    let r = m
        .request(
            &m.alice,
            json!({
                "conversation_id": m.conversation, "message_type": "document",
                "content_type": "application/pdf", "size_bytes": 4096,
                "checksum_sha256": PATTERN_SHA256,
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.body["upload"]["headers"]["x-amz-checksum-sha256"],
        PATTERN_SHA256
    );
    let mut other = pattern();
    other[100] ^= 1;
    let res = m.send(&r.body["upload"], Some(other)).await;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("BadDigest"), "{text}");
    m.upload(&r, pattern()).await;
    let done = m
        .complete(&m.alice, r.body["media_id"].as_str().unwrap(), None)
        .await;
    assert_eq!(done.status, 200, "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_media_get_the_clients_preview_instead_of_a_thumbnail() {
    let m = setup().await;
    let ciphertext = pattern();
    let r = m
        .request(
            &m.alice,
            json!({
                "conversation_id": m.conversation, "message_type": "image",
                "content_type": "image/png", "size_bytes": ciphertext.len(), "encrypted": true,
            }),
        )
        .await;
    assert_eq!(r.status, 201);
    let media_id = r.body["media_id"].as_str().unwrap();
    let key = r.body["object_key"].as_str().unwrap();
    m.upload(&r, ciphertext).await;
    let preview = b"encrypted preview bytes".to_vec();
    let encoded = "ZW5jcnlwdGVkIHByZXZpZXcgYnl0ZXM="; // base64 of `preview`
    let too_big = "A".repeat(33 * 1024 / 3 * 4); // base64 of 33 KiB of zeros
    let r = m
        .complete(
            &m.alice,
            media_id,
            Some(json!({"encrypted_preview": too_big})),
        )
        .await;
    assert_eq!(r.status, 413);
    let done = m
        .complete(
            &m.alice,
            media_id,
            Some(json!({"encrypted_preview": encoded})),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["encrypted"], true);
    assert_eq!(done.body["has_preview"], true);
    assert_eq!(
        m.objects
            .head("messaging-media", &format!("{key}{THUMBNAIL_SUFFIX}"))
            .await
            .unwrap(),
        None,
        "the server never decodes encrypted media"
    );
    let got = m.download(&m.bob, media_id).await;
    let res = m.send(&got.body["preview"], None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), preview);

    // Plaintext media take no client preview.
    let bytes = png(16, 16);
    let r = m
        .request(&m.alice, image_request(&m.conversation, bytes.len()))
        .await;
    m.upload(&r, bytes).await;
    let r = m
        .complete(
            &m.alice,
            r.body["media_id"].as_str().unwrap(),
            Some(json!({"encrypted_preview": "AAAA"})),
        )
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_urls_fail() {
    let m = setup().await;
    let short_uploads = m.with_options(|o| o.upload_url_ttl = Duration::from_secs(1));
    let short_downloads = m.with_options(|o| o.download_url_ttl = Duration::from_secs(1));
    let bytes = png(30, 30);
    let late = m
        .call_with(
            &short_uploads,
            "POST",
            "/v1/media",
            Some(&m.alice),
            Some(image_request(&m.conversation, bytes.len())),
        )
        .await;
    assert_eq!(late.status, 201);
    let on_time = m
        .request(&m.alice, image_request(&m.conversation, bytes.len()))
        .await;
    m.upload(&on_time, bytes.clone()).await;
    let media_id = on_time.body["media_id"].as_str().unwrap();
    assert_eq!(m.complete(&m.alice, media_id, None).await.status, 200);
    let got = m
        .call_with(
            &short_downloads,
            "GET",
            &format!("/v1/media/{media_id}"),
            Some(&m.bob),
            None,
        )
        .await;
    assert_eq!(got.status, 200);
    // X-Amz-Date has a one-second resolution: wait past the expiry plus that second.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let res = m.send(&late.body["upload"], Some(bytes)).await;
    assert_eq!(res.status(), 403, "expired upload URL");
    let late_id = late.body["media_id"].as_str().unwrap();
    assert_eq!(
        m.complete(&m.alice, late_id, None).await.status,
        409,
        "nothing arrived"
    );
    let res = m.send(&got.body["download"], None).await;
    assert_eq!(res.status(), 403, "expired download URL");
    // A fresh download URL works again.
    let again = m.download(&m.bob, media_id).await;
    assert_eq!(m.send(&again.body["download"], None).await.status(), 200);
}
