//! The Redis adapter against a real redis-server started by the test harness.

use std::time::Duration;

use messaging::group_receipts::{ReceiptKind, ReceiptNote, ReceiptStore, ReceiptTurn};
use messaging::protocol::{MemberMark, PresenceStatus};
use messaging::realtime::{
    ConnectionInfo, FrameBudget, RateDecision, RateLimit, RealtimeState, RedisState, SendingTo,
    SequenceHint,
};
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
async fn no_burst_across_a_window_edge_passes_more_than_the_budget() {
    let s = state().await;
    // 60 a minute. A fixed window would let 60 through just before a window edge and 60 more
    // just after it; a token bucket lets the budget through once, then one per second.
    let limit = RateLimit {
        max: 60,
        window: Duration::from_secs(60),
    };
    let edge = 1_700_000_040_000; // a minute boundary
    let mut allowed = 0;
    for t in [edge - 100, edge + 100] {
        for _ in 0..60 {
            if s.rate_limit("send", "burst", limit, t)
                .await
                .unwrap()
                .check()
                .is_ok()
            {
                allowed += 1;
            }
        }
    }
    assert!(
        allowed <= 61,
        "{allowed} passed in 200 ms with a budget of 60 a minute"
    );
    assert!(allowed >= 60, "the budget itself passes: {allowed}");
    // The bucket refills continuously: a second later there is room for one more.
    assert!(
        s.rate_limit("send", "burst", limit, edge + 1_200)
            .await
            .unwrap()
            .check()
            .is_ok()
    );
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
    // 3 per 10 s refills one token every 3.33 s.
    assert_eq!(
        s.rate_limit("send", "frank", limit, t).await.unwrap(),
        RateDecision::Limited {
            retry_after_secs: 4
        }
    );
    // Other users and other scopes have their own budgets; a full window later the bucket is
    // full again.
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
    s.touch(&conn("r1", "hank", "phone"), 1).await.unwrap();
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
    // Refused by the send budget, the frame counts against neither.
    assert_eq!(second[0], RateDecision::Allowed { remaining: 9 });
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
async fn a_frame_learns_its_budget_and_whether_its_connection_is_known_in_one_round_trip() {
    let s = state().await;
    let frames = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let t = 1_700_000_000_000;
    let jane = conn("j1", "jane", "phone");
    let before = s.round_trips();
    let budget = s
        .frame_budget(&jane, &[("frames", frames)], false, None, None, t)
        .await
        .unwrap();
    assert_eq!(s.round_trips() - before, 1);
    assert_eq!(budget.decisions, [RateDecision::Allowed { remaining: 9 }]);
    assert!(!budget.registered, "never registered");
    assert_eq!(budget.receipt, None);
    s.register_connection(&jane).await.unwrap();
    let budget = s
        .frame_budget(&jane, &[("frames", frames)], false, None, None, t)
        .await
        .unwrap();
    assert!(budget.registered);
    assert_eq!(budget.sending_to, None, "nothing asked, nothing read");
}

/// A `message` frame's one round trip: `caller` sends to `conversation`, counted against ten
/// frames a minute.
async fn message_frame(s: &RedisState, caller: &ConnectionInfo, conversation: &str) -> FrameBudget {
    let frames = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    s.frame_budget(
        caller,
        &[("frames", frames)],
        false,
        None,
        Some(conversation),
        1_700_000_000_000,
    )
    .await
    .expect("the frame keeps its budgets")
}

#[tokio::test]
async fn a_message_frame_reads_its_conversation_and_last_number_in_its_one_round_trip() {
    let s = state().await;
    let jane = conn("j5", "jane5", "phone");
    s.register_connection(&jane).await.unwrap();
    let conversation = "c-42";
    let name = messaging::conversations::cache_name(conversation);
    let before = s.round_trips();
    let budget = message_frame(&s, &jane, conversation).await;
    assert_eq!(s.round_trips() - before, 1);
    assert_eq!(
        budget.sending_to,
        Some(SendingTo::default()),
        "asked, nothing cached, no number noted"
    );
    s.cache_put(&name, "{\"routing\":1}", Duration::from_secs(60))
        .await
        .unwrap();
    s.note_last_sequence(SequenceHint {
        conversation_id: conversation,
        sequence_number: 41,
    })
    .await
    .unwrap();
    let budget = message_frame(&s, &jane, conversation).await;
    assert_eq!(
        budget.sending_to,
        Some(SendingTo {
            cached: Some("{\"routing\":1}".to_string()),
            last_sequence: Some(41),
        })
    );
    assert!(budget.registered);
    assert_eq!(budget.decisions, [RateDecision::Allowed { remaining: 8 }]);
}

#[tokio::test]
async fn unreadable_cache_or_hint_keys_are_only_not_there_for_a_frame() {
    let s = state().await;
    let jane = conn("j7", "jane7", "phone");
    s.register_connection(&jane).await.unwrap();
    let conversation = "c-odd";
    // Keys of another type where the conversation's routing and last number belong (written
    // by hand, an old version, or another tool sharing the prefix).
    let mut raw = s.connection_manager();
    let cache = s
        .keys()
        .cache(&messaging::conversations::cache_name(conversation));
    let _: () = raw.hset(&cache, "routing", "1").await.unwrap();
    let _: () = raw
        .set(s.keys().sequence_hint(conversation), "12")
        .await
        .unwrap();
    let budget = message_frame(&s, &jane, conversation).await;
    assert_eq!(budget.decisions, [RateDecision::Allowed { remaining: 9 }]);
    assert!(budget.registered);
    assert_eq!(budget.sending_to, Some(SendingTo::default()));
}

#[tokio::test]
async fn a_conversations_last_number_hint_only_goes_up_and_expires() {
    let s = state().await;
    let jane = conn("j6", "jane6", "phone");
    let conversation = "c-hint";
    let noted = |n| SequenceHint {
        conversation_id: conversation,
        sequence_number: n,
    };
    let read = || async {
        message_frame(&s, &jane, conversation)
            .await
            .sending_to
            .unwrap()
            .last_sequence
    };
    assert_eq!(read().await, None);
    assert_eq!(s.last_sequence(conversation).await.unwrap(), None);
    s.note_last_sequence(noted(7)).await.unwrap();
    assert_eq!(read().await, Some(7));
    assert_eq!(s.last_sequence(conversation).await.unwrap(), Some(7));
    // A slower inserter of an earlier number does not lower it.
    s.note_last_sequence(noted(5)).await.unwrap();
    assert_eq!(read().await, Some(7));
    s.note_last_sequence(noted(8)).await.unwrap();
    assert_eq!(read().await, Some(8));
    assert_eq!(s.last_sequence(conversation).await.unwrap(), Some(8));
    // Trusted only while no message above it can have expired: it has a TTL, refreshed by
    // every note.
    let mut raw = s.connection_manager();
    let ttl: i64 = raw
        .pttl(s.keys().sequence_hint(conversation))
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= messaging::keys::SEQUENCE_HINT_TTL.as_millis() as i64,
        "{ttl}"
    );
}

#[tokio::test]
async fn a_heartbeat_refreshes_presence_in_its_one_round_trip() {
    let s = state().await;
    let frames = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let jane = conn("j2", "jane2", "phone");
    s.register_connection(&jane).await.unwrap();
    let later = messaging::clock::now_ms() + 5_000;
    let before = s.round_trips();
    let budget = s
        .frame_budget(&jane, &[("frames", frames)], true, None, None, later)
        .await
        .unwrap();
    assert_eq!(
        s.round_trips() - before,
        1,
        "budget, registration and refresh at once"
    );
    assert!(budget.registered);
    assert!(matches!(budget.decisions[0], RateDecision::Allowed { .. }));
    let presence = s.presence("jane2").await.unwrap();
    assert_eq!(presence.last_seen, Some(later), "{presence:?}");
    // A lost record is reported, not half-recreated by the refresh.
    let lost = conn("j3", "jane3", "phone");
    let budget = s
        .frame_budget(&lost, &[("frames", frames)], true, None, None, later)
        .await
        .unwrap();
    assert!(!budget.registered);
    assert!(s.connection("j3").await.unwrap().is_none());
}

fn note(conversation: &str, user: &str, kind: ReceiptKind, low: u64, up_to: u64) -> ReceiptNote {
    ReceiptNote {
        conversation_id: conversation.into(),
        kind,
        user_id: user.into(),
        low,
        up_to,
    }
}

#[tokio::test]
async fn group_receipts_take_turns_one_now_one_at_the_intervals_end_and_keep_each_members_highest()
{
    let s = state().await;
    let c = "group-1";
    // The first receipt after a quiet interval sends at once.
    let first = s
        .note_receipt(&note(c, "ann", ReceiptKind::Delivered, 7, 7))
        .await
        .unwrap();
    assert_eq!(first, ReceiptTurn::SendNow);
    // Within the interval: the first promises to send at its end, the others only add.
    let second = s
        .note_receipt(&note(c, "bob", ReceiptKind::Delivered, 7, 7))
        .await
        .unwrap();
    let ReceiptTurn::SendAfter(wait) = second else {
        panic!("{second:?}");
    };
    assert!(wait <= messaging::group_receipts::INTERVAL, "{wait:?}");
    for (user, low, up_to) in [("cid", 5, 6), ("bob", 6, 6), ("ann", 8, 8)] {
        let turn = s
            .note_receipt(&note(c, user, ReceiptKind::Delivered, low, up_to))
            .await
            .unwrap();
        assert_eq!(turn, ReceiptTurn::Nothing, "{user}");
    }
    s.note_receipt(&note(c, "cid", ReceiptKind::Read, 4, 6))
        .await
        .unwrap();
    // Taking gives each member's highest number (bob's lower, later receipt changes nothing)
    // and the lowest number concerned; the store is empty afterwards.
    let taken = s.take_receipts(c).await.unwrap();
    let marks = |list: &[MemberMark]| -> Vec<(String, u64)> {
        let mut v: Vec<_> = list.iter().map(|m| (m.user_id.clone(), m.up_to)).collect();
        v.sort();
        v
    };
    assert_eq!(
        marks(&taken.delivered),
        [("ann".into(), 8), ("bob".into(), 7), ("cid".into(), 6)]
    );
    assert_eq!(marks(&taken.read), [("cid".into(), 6)]);
    assert_eq!(taken.low, Some(4));
    assert!(s.take_receipts(c).await.unwrap().is_empty());
    // Taking started a new interval: the next receipt waits for its end.
    let next = s
        .note_receipt(&note(c, "dan", ReceiptKind::Delivered, 9, 9))
        .await
        .unwrap();
    assert!(matches!(next, ReceiptTurn::SendAfter(_)), "{next:?}");
    // Another conversation is independent.
    let other = s
        .note_receipt(&note("group-2", "ann", ReceiptKind::Delivered, 1, 1))
        .await
        .unwrap();
    assert_eq!(other, ReceiptTurn::SendNow);
}

#[tokio::test]
async fn a_frame_notes_a_group_receipt_in_its_one_round_trip() {
    let s = state().await;
    let frames = RateLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let jane = conn("j4", "jane4", "phone");
    s.register_connection(&jane).await.unwrap();
    let before = s.round_trips();
    let receipt = note("group-3", "jane4", ReceiptKind::Delivered, 3, 3);
    let budget = s
        .frame_budget(
            &jane,
            &[("frames", frames)],
            false,
            Some(&receipt),
            None,
            messaging::clock::now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(s.round_trips() - before, 1);
    assert!(budget.registered);
    assert_eq!(budget.receipt, Some(ReceiptTurn::SendNow));
    let taken = s.take_receipts("group-3").await.unwrap();
    assert_eq!(taken.delivered.len(), 1);
    assert_eq!(taken.delivered[0].up_to, 3);
}

#[tokio::test]
async fn a_redis_that_does_not_answer_fails_within_the_deadline() {
    // A listener that accepts connections and never answers: a stalled Redis.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let s = RedisState::connect_with_timeout(&url, "stall:", Duration::from_millis(200))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = s.presence("nobody").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), messaging::ErrorCode::Unavailable, "{err}");
    drop(listener);
}

#[tokio::test]
async fn a_fan_out_is_claimed_with_its_users_connections_in_one_round_trip() {
    use messaging::realtime::WorkClaim;
    let s = state().await;
    for (id, user, device) in [
        ("f2", "kim", "laptop"),
        ("f1", "kim", "phone"),
        ("f3", "lou", "phone"),
    ] {
        s.register_connection(&conn(id, user, device))
            .await
            .unwrap();
    }
    let users = ["kim".to_string(), "nobody".to_string(), "lou".to_string()];
    let lease = Duration::from_secs(20);
    let before = s.round_trips();
    let (claim, connections) = s
        .claim_work_for_users("fanout", "m1", lease, &users)
        .await
        .unwrap();
    assert_eq!(s.round_trips() - before, 1);
    assert_eq!(claim, WorkClaim::Claimed);
    assert_eq!(
        connections,
        [
            vec!["f1".to_string(), "f2".into()],
            vec![],
            vec!["f3".into()]
        ],
        "per user, in the order given"
    );
    // A second delivery while the first works: told to wait for the lease, never claimed twice.
    let (claim, _) = s
        .claim_work_for_users("fanout", "m1", lease, &users)
        .await
        .unwrap();
    assert!(
        matches!(claim, WorkClaim::InProgress { retry_after } if retry_after <= lease && retry_after > Duration::ZERO),
        "{claim:?}"
    );
    assert!(matches!(
        s.claim_work("fanout", "m1", lease).await.unwrap(),
        WorkClaim::InProgress { .. }
    ));
    s.finish_work("fanout", "m1").await.unwrap();
    let (claim, _) = s
        .claim_work_for_users("fanout", "m1", lease, &users)
        .await
        .unwrap();
    assert_eq!(claim, WorkClaim::Done);
    // No users, no connections; work given back (a fan-out that failed) is claimed again at once.
    assert_eq!(
        s.claim_work_for_users("fanout", "m2", lease, &[])
            .await
            .unwrap(),
        (WorkClaim::Claimed, vec![])
    );
    s.release_work("fanout", "m2").await.unwrap();
    assert_eq!(
        s.claim_work("fanout", "m2", lease).await.unwrap(),
        WorkClaim::Claimed
    );
}

#[tokio::test]
async fn a_fan_out_whose_connections_cannot_be_read_gives_its_claim_back() {
    use messaging::realtime::WorkClaim;
    let s = state().await;
    // A connection set Redis cannot answer SMEMBERS for (WRONGTYPE).
    let mut raw = s.connection_manager();
    let _: () = raw
        .set(s.keys().user_connections("broken"), "not a set")
        .await
        .unwrap();
    let lease = Duration::from_secs(20);
    let users = ["kim".to_string(), "broken".to_string()];
    assert!(
        s.claim_work_for_users("fanout", "m3", lease, &users)
            .await
            .is_err()
    );
    // Not held until the lease ends: the next delivery claims it at once.
    assert_eq!(
        s.claim_work("fanout", "m3", lease).await.unwrap(),
        WorkClaim::Claimed
    );
    // Another caller's claim is never given back by a failed read.
    assert!(
        s.claim_work_for_users("fanout", "m3", lease, &users)
            .await
            .is_err()
    );
    assert!(matches!(
        s.claim_work("fanout", "m3", lease).await.unwrap(),
        WorkClaim::InProgress { .. }
    ));
}
