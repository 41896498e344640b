//! The Redis adapter against a real redis-server started by the test harness.

use std::time::Duration;

use messaging::keys::INBOX_TTL;
use messaging::protocol::PresenceStatus;
use messaging::realtime::{ConnectionInfo, RateDecision, RateLimit, RealtimeState, RedisState};
use redis::AsyncCommands;

async fn state() -> RedisState {
    let servers = testkit::servers();
    let prefix = format!("{}:", testkit::unique_name("t"));
    RedisState::connect(&servers.redis_url, &prefix)
        .await
        .unwrap()
}

fn conn(id: &str, user: &str, device: &str) -> ConnectionInfo {
    ConnectionInfo {
        connection_id: id.into(),
        user_id: user.into(),
        device_id: device.into(),
        connected_at: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn registry_across_three_devices() {
    let s = state().await;
    for (n, (id, device)) in [("c1", "phone"), ("c2", "laptop"), ("c3", "tablet")]
        .into_iter()
        .enumerate()
    {
        let count = s
            .register_connection(&conn(id, "alice", device))
            .await
            .unwrap();
        assert_eq!(count, n as u64 + 1, "connections after registering {id}");
    }
    s.register_connection(&conn("b1", "bob", "phone"))
        .await
        .unwrap();
    assert_eq!(
        s.user_connections("alice").await.unwrap(),
        ["c1", "c2", "c3"]
    );
    assert_eq!(
        s.connection("c2").await.unwrap(),
        Some(conn("c2", "alice", "laptop"))
    );
    assert_eq!(
        s.presence("alice").await.unwrap().status,
        PresenceStatus::Online
    );

    // Removing one device leaves the others (and other users) alone.
    let removed = s.remove_connection("c2").await.unwrap().unwrap();
    assert_eq!((removed.user_id.as_str(), removed.remaining), ("alice", 2));
    assert_eq!(s.user_connections("alice").await.unwrap(), ["c1", "c3"]);
    assert_eq!(s.connection("c2").await.unwrap(), None);
    assert_eq!(s.user_connections("bob").await.unwrap(), ["b1"]);

    // Unknown or repeated removal is a no-op.
    assert_eq!(s.remove_connection("c2").await.unwrap(), None);
    assert_eq!(s.remove_connection("nope").await.unwrap(), None);

    assert_eq!(
        s.remove_connection("c1").await.unwrap().unwrap().remaining,
        1
    );
    assert_eq!(
        s.remove_connection("c3").await.unwrap().unwrap().remaining,
        0
    );
    assert!(s.user_connections("alice").await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_disconnects_count_down_exactly() {
    let s = state().await;
    let n = 20;
    for i in 0..n {
        s.register_connection(&conn(&format!("c{i}"), "carol", &format!("d{i}")))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.remove_connection(&format!("c{i}")).await.unwrap() })
        })
        .collect();
    let mut remaining: Vec<u64> = Vec::new();
    for t in tasks {
        remaining.push(t.await.unwrap().unwrap().remaining);
    }
    remaining.sort();
    // Each removal saw a different count: exactly one saw zero (the one that goes offline).
    assert_eq!(remaining, (0..n as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn inbox_ttl_is_thirty_days_after_every_push() {
    let s = state().await;
    let key = s.keys().inbox("dave");
    let mut raw = s.connection_manager();
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        s.inbox_push("dave", id, 1000 + i as i64).await.unwrap();
        let ttl: i64 = raw.ttl(&key).await.unwrap();
        assert!(
            ttl > INBOX_TTL.as_secs() as i64 - 5 && ttl <= INBOX_TTL.as_secs() as i64,
            "ttl after push {i}: {ttl}"
        );
        // Shorten it to prove the next push refreshes it.
        let _: () = raw.expire(&key, 60).await.unwrap();
    }
    // A redelivered push is idempotent and keeps the original order.
    s.inbox_push("dave", "m1", 9999).await.unwrap();
    assert_eq!(s.inbox_len("dave").await.unwrap(), 3);
    assert_eq!(s.inbox_peek("dave", 10).await.unwrap(), ["m1", "m2", "m3"]);
    assert_eq!(s.inbox_peek("dave", 2).await.unwrap(), ["m1", "m2"]);
    let ttl: i64 = raw.ttl(&key).await.unwrap();
    assert!(ttl > INBOX_TTL.as_secs() as i64 - 5);

    assert_eq!(
        s.inbox_remove("dave", &["m1".into(), "m3".into(), "zz".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.inbox_peek("dave", 10).await.unwrap(), ["m2"]);
}

#[tokio::test]
async fn presence_heartbeat_and_offline() {
    let s = state().await;
    let c = conn("e1", "erin", "phone");
    s.register_connection(&c).await.unwrap();
    let mut raw = s.connection_manager();
    let _: () = raw.expire(s.keys().presence("erin"), 10).await.unwrap();
    s.touch(&c, 1_700_000_123_000).await.unwrap();
    let ttl: i64 = raw.ttl(s.keys().presence("erin")).await.unwrap();
    assert!(ttl > 200, "heartbeat refreshes presence TTL, got {ttl}");
    let p = s.presence("erin").await.unwrap();
    assert_eq!(p.status, PresenceStatus::Online);
    assert_eq!(p.last_seen, Some(1_700_000_123_000));

    s.set_offline("erin", 1_700_000_200_000).await.unwrap();
    let p = s.presence("erin").await.unwrap();
    assert_eq!(p.status, PresenceStatus::Offline);
    assert_eq!(p.last_seen, Some(1_700_000_200_000));
    assert_eq!(
        s.presence("nobody").await.unwrap().status,
        PresenceStatus::Offline
    );
}

#[tokio::test]
async fn typing_expires_on_its_own() {
    let s = state().await;
    let now = messaging::clock::now_ms();
    s.set_typing("conv", "u1", now + 5_000).await.unwrap();
    s.set_typing("conv", "u2", now + 5_000).await.unwrap();
    s.set_typing("conv", "u3", now - 1).await.unwrap();
    assert_eq!(s.typing_users("conv", now).await.unwrap(), ["u1", "u2"]);
    s.clear_typing("conv", "u1").await.unwrap();
    assert_eq!(s.typing_users("conv", now).await.unwrap(), ["u2"]);
    // Seen from later than the expiry, nobody is typing.
    assert!(
        s.typing_users("conv", now + 6_000)
            .await
            .unwrap()
            .is_empty()
    );
    let mut raw = s.connection_manager();
    let pttl: i64 = raw.pttl(s.keys().typing("conv")).await.unwrap();
    assert!(pttl > 0 && pttl <= 6_000, "typing key expires: {pttl}");
}

#[tokio::test]
async fn rate_limit_refuses_past_the_limit_and_names_the_wait() {
    let s = state().await;
    let limit = RateLimit {
        max: 3,
        window: Duration::from_secs(10),
    };
    let t = 1_700_000_001_000; // 1 s into a 10 s window
    for expected in [2, 1, 0] {
        assert_eq!(
            s.rate_limit("send", "frank", limit, t).await.unwrap(),
            RateDecision::Allowed {
                remaining: expected
            }
        );
    }
    assert_eq!(
        s.rate_limit("send", "frank", limit, t).await.unwrap(),
        RateDecision::Limited {
            retry_after_secs: 9
        }
    );
    // Other users and other scopes have their own budgets; the next window starts afresh.
    assert!(matches!(
        s.rate_limit("send", "grace", limit, t).await.unwrap(),
        RateDecision::Allowed { .. }
    ));
    assert!(matches!(
        s.rate_limit("typing", "frank", limit, t).await.unwrap(),
        RateDecision::Allowed { .. }
    ));
    assert!(matches!(
        s.rate_limit("send", "frank", limit, t + 10_000)
            .await
            .unwrap(),
        RateDecision::Allowed { remaining: 2 }
    ));
}

#[tokio::test]
async fn round_trips_are_counted() {
    let s = state().await;
    let before = s.round_trips();
    s.register_connection(&conn("r1", "hank", "phone"))
        .await
        .unwrap();
    s.inbox_push("hank", "m", 1).await.unwrap();
    assert_eq!(s.round_trips() - before, 2, "one round trip per operation");
}

#[tokio::test]
async fn several_budgets_are_counted_in_one_round_trip() {
    let s = state().await;
    let frames = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let sends = RateLimit {
        max: 1,
        window: Duration::from_secs(60),
    };
    let t = 1_700_000_000_000;
    let before = s.round_trips();
    let first = s
        .rate_limits("ivy", &[("frames", frames), ("send", sends)], t)
        .await
        .unwrap();
    assert_eq!(s.round_trips() - before, 1);
    assert_eq!(
        first,
        [
            RateDecision::Allowed { remaining: 9 },
            RateDecision::Allowed { remaining: 0 }
        ]
    );
    let second = s
        .rate_limits("ivy", &[("frames", frames), ("send", sends)], t)
        .await
        .unwrap();
    assert_eq!(second[0], RateDecision::Allowed { remaining: 8 });
    assert!(matches!(second[1], RateDecision::Limited { .. }));
}

#[tokio::test]
async fn cached_values_expire_and_can_be_dropped() {
    let s = state().await;
    assert_eq!(s.cache_get("conversation:c1").await.unwrap(), None);
    s.cache_put("conversation:c1", "{}", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        s.cache_get("conversation:c1").await.unwrap().as_deref(),
        Some("{}")
    );
    s.cache_delete("conversation:c1").await.unwrap();
    assert_eq!(s.cache_get("conversation:c1").await.unwrap(), None);
    s.cache_put("conversation:c2", "x", Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(s.cache_get("conversation:c2").await.unwrap(), None);
}

#[tokio::test]
async fn a_group_message_reaches_every_inbox_in_one_round_trip() {
    let s = state().await;
    let members: Vec<String> = (0..99).map(|i| format!("member-{i}")).collect();
    let before = s.round_trips();
    s.inbox_push_many(&members, "group-message", 5)
        .await
        .unwrap();
    assert_eq!(s.round_trips() - before, 1);
    let mut raw = s.connection_manager();
    for m in &members {
        assert_eq!(s.inbox_peek(m, 10).await.unwrap(), ["group-message"]);
        let ttl: i64 = raw.ttl(s.keys().inbox(m)).await.unwrap();
        assert!(ttl > INBOX_TTL.as_secs() as i64 - 5, "{m}: ttl {ttl}");
    }
}
