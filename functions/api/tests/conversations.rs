//! Conversations over the API against real Redis and MongoDB: one per pair, list ordering,
//! pagination, unread counts, pin/archive/delete for me, search, history for members only.

mod support;

use messaging::store::ConversationStore;
use std::collections::HashSet;

use serde_json::json;
use support::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_per_pair_even_concurrently() {
    let env = env().await;
    let (alice, alice_token) = env.quick_user("Alice").await;
    let (bob, bob_token) = env.quick_user("Bob").await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (token, other) = if i % 2 == 0 {
                (alice_token.clone(), bob.clone())
            } else {
                (bob_token.clone(), alice.clone())
            };
            let env = &env;
            async move {
                env.call(
                    "POST",
                    "/v1/conversations",
                    Some(&token),
                    Some(json!({"user_id": other})),
                )
                .await
            }
        })
        .collect();
    let answers = futures::future::join_all(tasks).await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|a| a.body["conversation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| a.status == 201).count(), 1);
    assert!(answers.iter().all(|a| a.status == 201 || a.status == 200));
    let first = &answers[0].body;
    assert_eq!(first["kind"], "direct");
    assert_eq!(
        first["end_to_end_encrypted"], true,
        "between people, always"
    );
    let title = first["title"].as_str().unwrap();
    assert!(title == "Alice" || title == "Bob");

    // The messaging functions see a plain conversation document.
    let id = ids.into_iter().next().unwrap();
    let stored = env.store.conversation(&id).await.unwrap().unwrap();
    assert!(stored.has_participant(&alice) && stored.has_participant(&bob));

    // By email or phone too, and never with yourself.
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&alice_token),
            Some(json!({"user_id": alice})),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&alice_token),
            Some(json!({"user_id": "nobody"})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&alice_token),
            Some(json!({"user_id": bob, "agent_id": "demo"})),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_conversations_are_one_per_user_and_agent() {
    let env = env().await;
    let (_, token) = env.quick_user("Alice").await;
    let r = env
        .call_with(
            "POST",
            "/v1/agents",
            None,
            Some(json!({"agent_id": "demo", "name": "Demo Agent", "capabilities": ["echo"]})),
            &[("x-operator-key", support::OPERATOR_KEY)],
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"agent_id": "demo"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["kind"], "agent");
    assert_eq!(r.body["agent_id"], "demo");
    assert_eq!(r.body["title"], "Demo Agent");
    // An agent without device keys: clients must be able to say the chat is not encrypted.
    assert_eq!(r.body["end_to_end_encrypted"], false, "{r:?}");
    let conversation_id = r.body["conversation_id"].as_str().unwrap().to_string();
    let device = messaging::e2ee::CryptoDevice::new("demo", "worker-1");
    messaging::store::KeyDirectoryStore::publish_device(&env.store, &device.device_keys())
        .await
        .unwrap();
    let listed = env
        .call("GET", "/v1/conversations", Some(&token), None)
        .await;
    let listed = listed.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == conversation_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        listed["end_to_end_encrypted"], true,
        "an agent with keys: {listed}"
    );
    let again = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"agent_id": "demo"})),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["conversation_id"], r.body["conversation_id"]);
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"agent_id": "nope"})),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_order_pagination_unread_pin_archive_delete() {
    let env = env().await;
    let (me, token) = env.quick_user("Me").await;
    let mut convs = Vec::new();
    for i in 0..7 {
        let (other, _) = env.quick_user(&format!("Friend {i}")).await;
        convs.push(env.direct(&token, &other).await);
    }
    // Activity: conversation i gets i+1 messages from the friend, in order, so the last one
    // written to is the newest; conversation 3 also gets one from me.
    for (i, c) in convs.iter().enumerate() {
        let conv = env.store.conversation(c).await.unwrap().unwrap();
        let friend = conv
            .participants
            .iter()
            .find(|p| **p != me)
            .unwrap()
            .clone();
        for _ in 0..=i {
            env.message(c, &friend).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    env.message(&convs[3], &me).await;

    let list = |query: &'static str| {
        let env = &env;
        let token = token.clone();
        async move {
            env.call(
                "GET",
                &format!("/v1/conversations{query}"),
                Some(&token),
                None,
            )
            .await
        }
    };
    let r = list("").await;
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = [3, 6, 5, 4, 2, 1, 0]
        .iter()
        .map(|i| convs[*i].as_str())
        .collect();
    assert_eq!(ids, expected, "newest activity first");
    let unread: Vec<u64> = r.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["unread_count"].as_u64().unwrap())
        .collect();
    // Sending in conversation 3 marked it read for me up to my message.
    assert_eq!(unread, vec![0, 7, 6, 5, 3, 2, 1]);
    assert_eq!(r.body["total_unread"], 24);
    let first = &r.body["conversations"][0];
    assert_eq!(first["last_message"]["sender_id"], me.as_str());
    assert_eq!(first["last_message"]["message_type"], "text");
    assert!(
        first["last_message"].get("content").is_none(),
        "previews carry no content"
    );
    assert_eq!(first["title"], "Friend 3");

    // Read markers move unread counts.
    env.store
        .advance_read_marker(&convs[6], &me, 5)
        .await
        .unwrap();
    let r = list("").await;
    assert_eq!(r.body["conversations"][1]["unread_count"], 2);

    // Pin one old conversation: it comes first.
    let r = env
        .call(
            "PATCH",
            &format!("/v1/conversations/{}", convs[0]),
            Some(&token),
            Some(json!({"pinned": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["pinned"], true);
    // Archive another: hidden unless asked.
    env.call(
        "PATCH",
        &format!("/v1/conversations/{}", convs[5]),
        Some(&token),
        Some(json!({"archived": true})),
    )
    .await;
    let r = list("").await;
    let ids: Vec<&str> = r.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = [0, 3, 6, 4, 2, 1]
        .iter()
        .map(|i| convs[*i].as_str())
        .collect();
    assert_eq!(ids, expected);
    let r = list("?archived=true").await;
    assert_eq!(r.body["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(
        r.body["conversations"][0]["conversation_id"],
        convs[5].as_str()
    );
    assert_eq!(r.body["conversations"][0]["archived"], true);
    let r = list("?archived=any").await;
    assert_eq!(r.body["conversations"].as_array().unwrap().len(), 7);

    // Cursor pagination walks the same order without gaps or repeats.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/conversations?limit=2&cursor={c}"),
            None => "/v1/conversations?limit=2".into(),
        };
        let r = env.call("GET", &q, Some(&token), None).await;
        assert_eq!(r.status, 200, "{r:?}");
        let page = r.body["conversations"].as_array().unwrap();
        assert!(page.len() <= 2);
        walked.extend(
            page.iter()
                .map(|c| c["conversation_id"].as_str().unwrap().to_string()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, expected);
    assert_eq!(list("?cursor=bogus").await.status, 400);
    assert_eq!(list("?limit=0").await.status, 400);

    // Delete for me: gone from my list, history cleared for me; a new message brings it back.
    let victim = convs[4].clone();
    let r = env
        .call(
            "DELETE",
            &format!("/v1/conversations/{victim}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = list("?archived=any").await;
    assert!(!r.body.to_string().contains(&victim));
    let conv = env.store.conversation(&victim).await.unwrap().unwrap();
    let friend = conv
        .participants
        .iter()
        .find(|p| **p != me)
        .unwrap()
        .clone();
    let seq = env.message(&victim, &friend).await;
    assert_eq!(seq, 6);
    let r = list("").await;
    let back = r.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == victim.as_str())
        .expect("a new message shows it again")
        .clone();
    assert_eq!(back["unread_count"], 1);
    assert_eq!(back["cleared_up_to"], 5);
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{victim}/messages"),
            Some(&token),
            None,
        )
        .await;
    let seqs: Vec<u64> = r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        vec![6],
        "history before the delete stays cleared for me"
    );
    // The friend still has everything.
    let friend_token = env
        .issuer
        .issue(&friend, std::time::Duration::from_secs(60))
        .unwrap();
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{victim}/messages"),
            Some(&friend_token),
            None,
        )
        .await;
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_sequence_for_members_only() {
    let env = env().await;
    let (a, a_token) = env.quick_user("A").await;
    let (b, _) = env.quick_user("B").await;
    let (_, outsider) = env.quick_user("C").await;
    let c = env.direct(&a_token, &b).await;
    for i in 0..25 {
        env.message(&c, if i % 2 == 0 { &a } else { &b }).await;
    }
    let page = |q: &str| {
        let env = &env;
        let path = format!("/v1/conversations/{c}/messages{q}");
        let token = a_token.clone();
        async move { env.call("GET", &path, Some(&token), None).await }
    };
    let seqs = |r: &support::Answer| -> Vec<u64> {
        r.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["sequence_number"].as_u64().unwrap())
            .collect()
    };
    let r = page("?limit=10").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        seqs(&r),
        (16..=25).collect::<Vec<_>>(),
        "newest page, ascending"
    );
    assert_eq!(r.body["older_to"], 15);
    assert!(r.body.get("newer_from").is_none());
    assert_eq!(r.body["messages"][0]["content"], "ciphertext");
    let r = page("?limit=10&to=15").await;
    assert_eq!(seqs(&r), (6..=15).collect::<Vec<_>>());
    let r = page("?from=3&to=7").await;
    assert_eq!(seqs(&r), (3..=7).collect::<Vec<_>>());
    assert_eq!(r.body["newer_from"], 8);
    let r = page("?from=20").await;
    assert_eq!(seqs(&r), (20..=25).collect::<Vec<_>>());
    let empty = page("?from=9&to=3").await;
    assert_eq!(empty.status, 200);
    assert!(seqs(&empty).is_empty(), "an empty range");
    assert_eq!(page("?limit=500").await.status, 400);
    assert_eq!(page("?from=x").await.status, 400);

    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{c}/messages"),
            Some(&outsider),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{c}"),
            Some(&outsider),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .call(
            "GET",
            "/v1/conversations/missing/messages",
            Some(&outsider),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{c}/messages"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_participant_agent_and_group_names() {
    let env = env().await;
    let (_, token) = env.quick_user("Searcher").await;
    let (zed, _) = env.quick_user("Zed Quartermain").await;
    let (yan, _) = env.quick_user("Yan").await;
    let direct = env.direct(&token, &zed).await;
    env.call_with(
        "POST",
        "/v1/agents",
        None,
        Some(json!({"agent_id": "travel", "name": "Travel Planner"})),
        &[("x-operator-key", support::OPERATOR_KEY)],
    )
    .await;
    let agent = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"agent_id": "travel"})),
        )
        .await
        .body["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let group = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(
                json!({"name": "Book Club", "description": "monthly reads", "participants": [yan]}),
            ),
        )
        .await
        .body["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let found = |q: &'static str| {
        let env = &env;
        let token = token.clone();
        async move {
            let r = env
                .call(
                    "GET",
                    &format!("/v1/conversations?q={q}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["conversation_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("quarter").await, vec![direct.clone()]);
    assert_eq!(found("TRAVEL").await, vec![agent.clone()]);
    assert_eq!(found("book%20club").await, vec![group.clone()]);
    assert_eq!(found("monthly").await, vec![group.clone()]);
    assert_eq!(
        found("yan").await,
        vec![group.clone()],
        "group members' names match"
    );
    assert!(found("ciphertext").await.is_empty());
    // Archived conversations are found too.
    env.call(
        "PATCH",
        &format!("/v1/conversations/{direct}"),
        Some(&token),
        Some(json!({"archived": true})),
    )
    .await;
    assert_eq!(found("zed").await, vec![direct]);
}
