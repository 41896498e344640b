//! Gateway replicas: several WebSocket gateways behind one address, each holding the sockets it
//! accepted, with one `@connections` management API that works whichever replica it reaches.
//!
//! A connection id names its owner: its first four bytes are the tag of the replica that
//! accepted it (the rest is random, and the whole is base64 like API Gateway's ids, so clients
//! still see an opaque id). Replicas announce themselves in one Redis hash
//! ([`messaging::keys::Keys::gateway_replicas`]): tag → management address, WebSocket address,
//! last heartbeat, draining. A management call for a connection another replica owns is
//! forwarded to that replica over HTTP and its answer relayed as is.
//!
//! Why forwarding rather than Redis pub/sub: API Gateway's answers depend on the socket (410 when
//! it is gone, 413, 429 when the client does not read), and only the owner knows them. Forwarding
//! returns the owner's exact answer at the cost of one in-cluster HTTP hop, and costs nothing
//! for the replicas not involved; pub/sub would need a request/reply protocol on top to answer
//! 410 honestly, and wakes every subscriber for every frame.
//!
//! A replica that died stops its heartbeat: once this replica has seen no new heartbeat from it
//! for [`DEAD_AFTER`] (by its own clock, so clock skew between nodes does not matter), calls for
//! its connections answer 410 at once; before that, a forward that finds nothing listening
//! (connection refused) answers 410 too. What cannot be decided is never a 410: when this
//! replica cannot reach Redis itself, or the owner is slow to accept, the answer is a 500 the
//! caller retries, so a live connection is never pruned. A replica that is shutting down marks
//! itself draining, so it is never offered as a place to migrate to, and removes itself when it
//! is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// How often a replica renews its registration and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica silent for this long is dead: its connections answer 410.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);
/// Registrations silent for this long are removed from Redis.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Set on a forwarded management call: the receiver answers from its own sockets only (never
/// forwards again, so registries that disagree cannot loop).
pub const FORWARDED_HEADER: &str = "x-gateway-forwarded";
/// Deadline of a forwarded call (a post is a queue push on the owner).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of each Redis call of the registry.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The tag of a replica: the first four bytes of the ids of the connections it accepted.
pub type Tag = [u8; 4];

/// A connection id owned by the replica `tag`: base64 of the tag and eight random bytes
/// (16 characters, like API Gateway's).
pub fn connection_id(tag: Tag) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&tag);
    bytes[4..].copy_from_slice(&rand::random::<[u8; 8]>());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The replica that owns connection `id`, or `None` for an id no replica made.
pub fn owner_of(id: &str) -> Option<Tag> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(id).ok()?;
    (bytes.len() == 12).then(|| [bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn tag_name(tag: Tag) -> String {
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

fn tag_from_name(name: &str) -> Option<Tag> {
    if name.len() != 8 {
        return None;
    }
    let mut tag = [0u8; 4];
    for (i, byte) in tag.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(tag)
}

/// One replica's registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replica {
    /// Where its `@connections` API is reachable by the other replicas.
    pub management_url: String,
    /// Where clients reach it directly (offered in `migration` frames when there is no public
    /// address).
    pub websocket_url: String,
    /// Last heartbeat, milliseconds since the epoch.
    pub heartbeat: i64,
    /// Shutting down: takes no new connections.
    pub draining: bool,
}

impl Replica {
    /// Judged by the replica's own clock: only for a replica seen for the first time.
    fn alive(&self, now_ms: i64) -> bool {
        now_ms - self.heartbeat < DEAD_AFTER.as_millis() as i64
    }
}

/// Another replica as this one knows it.
struct Peer {
    replica: Replica,
    /// When this replica last saw its heartbeat change (this replica's clock).
    changed: std::time::Instant,
}

impl Peer {
    fn alive(&self) -> bool {
        self.changed.elapsed() < DEAD_AFTER
    }
}

/// Whether a replica can be forwarded to.
pub enum Owner {
    /// Alive: forward to it.
    Alive(Replica),
    /// Dead or unknown: its connections are gone (410).
    Gone,
    /// Cannot tell now (this replica cannot reach Redis): the caller should retry (500).
    Unknown,
}

/// This replica's membership in the registry.
pub struct Registry {
    tag: Tag,
    me: Mutex<Replica>,
    redis: redis::aio::ConnectionManager,
    key: String,
    /// The others, as last read (kept when Redis comes back empty, until they are silent for
    /// [`DEAD_AFTER`]).
    peers: Mutex<HashMap<Tag, Peer>>,
    /// When this replica's own heartbeat last reached Redis: while it does not, the others'
    /// silence proves nothing.
    last_beat: Mutex<std::time::Instant>,
    /// Left the registry: the heartbeat stops writing.
    left: std::sync::atomic::AtomicBool,
    public_url: Option<String>,
    http: reqwest::Client,
}

impl Registry {
    /// Joins the registry at `redis_url` (keys under `prefix`) with a tag no live replica has,
    /// and starts the heartbeat (it stops when the registry is dropped).
    pub async fn join(
        redis_url: &str,
        prefix: &str,
        management_url: &str,
        websocket_url: &str,
        public_url: Option<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut redis = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        let key = messaging::keys::Keys::new(prefix).gateway_replicas();
        let me = Replica {
            management_url: management_url.to_string(),
            websocket_url: websocket_url.to_string(),
            heartbeat: messaging::clock::now_ms(),
            draining: false,
        };
        let tag = loop {
            let tag: Tag = rand::random();
            let fresh: bool = redis::cmd("HSETNX")
                .arg(&key)
                .arg(tag_name(tag))
                .arg(serde_json::to_string(&me)?)
                .query_async(&mut redis)
                .await?;
            if fresh {
                break tag;
            }
        };
        let http = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        let registry = Arc::new(Self {
            tag,
            me: Mutex::new(me),
            redis,
            key,
            peers: Mutex::new(HashMap::new()),
            last_beat: Mutex::new(std::time::Instant::now()),
            left: std::sync::atomic::AtomicBool::new(false),
            public_url: public_url.filter(|u| !u.is_empty()),
            http,
        });
        registry.beat().await;
        let weak = Arc::downgrade(&registry);
        tokio::spawn(heartbeat(weak));
        Ok(registry)
    }

    /// This replica's tag.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Renews this replica's registration and reads the others'. Failures are logged: the
    /// next beat tries again, and peers keep this replica alive for [`DEAD_AFTER`].
    pub async fn beat(&self) {
        if self.left.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let now = messaging::clock::now_ms();
        let me = {
            let mut me = self.me.lock().expect("registry lock");
            me.heartbeat = now;
            serde_json::to_string(&*me).unwrap_or_default()
        };
        let mut redis = self.redis.clone();
        let result: redis::RedisResult<HashMap<String, String>> = redis::pipe()
            .hset(&self.key, tag_name(self.tag), me)
            .ignore()
            .hgetall(&self.key)
            .query_async::<(HashMap<String, String>,)>(&mut redis)
            .await
            .map(|(all,)| all);
        let all = match result {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "gateway registry heartbeat failed");
                return;
            }
        };
        *self.last_beat.lock().expect("registry lock") = std::time::Instant::now();
        let mut forgotten = Vec::new();
        {
            let mut peers = self.peers.lock().expect("registry lock");
            for (name, value) in all {
                let (Some(tag), Ok(replica)) = (
                    tag_from_name(&name),
                    serde_json::from_str::<Replica>(&value),
                ) else {
                    continue;
                };
                if tag == self.tag {
                    continue;
                }
                if now - replica.heartbeat > FORGET_AFTER.as_millis() as i64 {
                    forgotten.push(name);
                    peers.remove(&tag);
                    continue;
                }
                match peers.get_mut(&tag) {
                    Some(peer) if peer.replica.heartbeat == replica.heartbeat => {
                        peer.replica = replica;
                    }
                    Some(peer) => {
                        peer.replica = replica;
                        peer.changed = std::time::Instant::now();
                    }
                    // First seen: only its own clock says whether it is alive.
                    None if replica.alive(now) => {
                        peers.insert(
                            tag,
                            Peer {
                                replica,
                                changed: std::time::Instant::now(),
                            },
                        );
                    }
                    None => {}
                }
            }
            peers.retain(|_, peer| peer.alive());
        }
        if !forgotten.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(&self.key)
                .arg(&forgotten)
                .query_async(&mut redis)
                .await;
        }
    }

    /// Marks this replica draining (at once, not at the next beat).
    pub async fn set_draining(&self) {
        self.me.lock().expect("registry lock").draining = true;
        self.beat().await;
    }

    /// Removes this replica from the registry (at the end of a drain): its connection ids answer
    /// 410 everywhere from now on.
    pub async fn leave(&self) {
        self.left.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut redis = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("HDEL")
            .arg(&self.key)
            .arg(tag_name(self.tag))
            .query_async(&mut redis)
            .await;
    }

    /// Whether replica `tag` is alive. A tag not seen yet (a replica that just started) is read
    /// from Redis before it is declared gone; while this replica's own heartbeat cannot reach
    /// Redis, the others' silence proves nothing and the answer is [`Owner::Unknown`].
    pub async fn owner(&self, tag: Tag) -> Owner {
        let blind = self.last_beat.lock().expect("registry lock").elapsed() >= DEAD_AFTER;
        if let Some(peer) = self.peers.lock().expect("registry lock").get(&tag) {
            return match (peer.alive(), blind) {
                (true, _) => Owner::Alive(peer.replica.clone()),
                (false, true) => Owner::Unknown,
                (false, false) => Owner::Gone,
            };
        }
        let mut redis = self.redis.clone();
        let value: Option<String> = match redis::cmd("HGET")
            .arg(&self.key)
            .arg(tag_name(tag))
            .query_async(&mut redis)
            .await
        {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(error = %e, "gateway registry unreachable: owner unknown");
                return Owner::Unknown;
            }
        };
        let Some(replica) = value.and_then(|v| serde_json::from_str::<Replica>(&v).ok()) else {
            return Owner::Gone;
        };
        if !replica.alive(messaging::clock::now_ms()) {
            return Owner::Gone;
        }
        self.peers.lock().expect("registry lock").insert(
            tag,
            Peer {
                replica: replica.clone(),
                changed: std::time::Instant::now(),
            },
        );
        Owner::Alive(replica)
    }

    /// Where a client of this replica should reconnect: the public address when there is one
    /// (a load balancer in front), else a live replica that is not draining, else nothing
    /// (the client reconnects to the address it used).
    pub fn new_endpoint(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let peers = self.peers.lock().expect("registry lock");
        let live: Vec<&Replica> = peers
            .values()
            .filter(|p| p.alive() && !p.replica.draining)
            .map(|p| &p.replica)
            .collect();
        if live.is_empty() {
            return String::new();
        }
        live[rand::random_range(0..live.len())]
            .websocket_url
            .clone()
    }

    /// Forwards a management call for connection `id` to its owner and relays the answer. An
    /// owner that is not there any more (nothing listens) means the connection is gone: 410.
    pub async fn forward(
        &self,
        owner: &Replica,
        method: Method,
        id: &str,
        body: Bytes,
    ) -> Response {
        let url = format!(
            "{}/@connections/{}",
            owner.management_url.trim_end_matches('/'),
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let sent = self
            .http
            .request(method, &url)
            .header(FORWARDED_HEADER, "1")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Refused (nothing listens there any more): the replica is gone, and its sockets
            // with it. A connect that timed out proves nothing (a lost SYN, a busy owner).
            Err(e) if e.is_connect() && !e.is_timeout() => {
                tracing::info!(connection_id = id, owner = %owner.management_url, "owner replica unreachable: 410");
                return gone();
            }
            Err(e) => {
                tracing::warn!(connection_id = id, owner = %owner.management_url, error = %crate::error_chain(&e), "forwarded management call failed");
                return crate::gateway::aws_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerErrorException",
                    "the replica holding this connection did not answer",
                );
            }
        };
        let mut relayed = Response::builder().status(response.status().as_u16());
        for name in ["content-type", "x-amzn-errortype"] {
            if let Some(value) = response.headers().get(name) {
                relayed = relayed.header(name, value.as_bytes());
            }
        }
        let body = response.bytes().await.unwrap_or_default();
        relayed
            .body(axum::body::Body::from(body))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    }
}

/// API Gateway's answer for a connection that does not exist.
pub fn gone() -> Response {
    crate::gateway::aws_error(StatusCode::GONE, "GoneException", "")
}

async fn heartbeat(registry: Weak<Registry>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.beat().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_owner_and_looks_like_api_gateways() {
        let tag = [1, 2, 250, 255];
        let id = connection_id(tag);
        assert_eq!(id.len(), 16);
        assert_eq!(owner_of(&id), Some(tag));
        assert_ne!(connection_id(tag), id);
        assert_eq!(owner_of("not an id"), None);
        assert_eq!(owner_of("AAAA"), None);
        assert_eq!(tag_from_name(&tag_name(tag)), Some(tag));
        assert_eq!(tag_from_name("zz"), None);
    }
}
