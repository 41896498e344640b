//! The MongoDB adapter against a real MongoDB-wire server (SecantusDB) started by the harness.

use messaging::store::{AccountStore, ConversationStore, MessageStore};
use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use messaging::ErrorCode;
use messaging::model::{Conversation, ConversationKind, NewMessage, User};
use messaging::protocol::{MessageBody, MessageStatus, PresenceStatus};
use messaging::store::{MongoStore, StoreOptions, collections};
use mongodb::bson::{DateTime, Document, doc};

async fn store_with(options: StoreOptions) -> MongoStore {
    let servers = testkit::servers();
    let store = MongoStore::connect(&servers.mongodb_uri, &testkit::unique_name("db"), options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

async fn store() -> MongoStore {
    store_with(StoreOptions::default()).await
}

fn new_message(key: &str, conversation: &str, sender: &str, content: &str) -> NewMessage {
    NewMessage {
        idempotency_key: key.into(),
        conversation_id: conversation.into(),
        sender_id: sender.into(),
        receiver_id: Some("bob".into()),
        body: MessageBody::text(content),
        client_timestamp: 1,
        last_sequence_hint: None,
    }
}

/// A store on `store`'s database as another process has it (numbers it remembers of its own).
async fn another_process(store: &MongoStore) -> MongoStore {
    MongoStore::connect(
        &testkit::servers().mongodb_uri,
        store.database().name(),
        StoreOptions::default(),
    )
    .await
    .unwrap()
}

async fn count(store: &MongoStore, collection: &str, filter: Document) -> u64 {
    store
        .database()
        .collection::<Document>(collection)
        .count_documents(filter)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_sends_with_one_key_store_one_message() {
    let store = store().await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_message(new_message("key-1", "conv-a", "alice", "hello"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let firsts = answers.iter().filter(|a| !a.duplicate).count();
    assert_eq!(firsts, 1, "exactly one send stored the message");
    let ids: HashSet<_> = answers
        .iter()
        .map(|a| (a.message.message_id.clone(), a.message.sequence_number))
        .collect();
    assert_eq!(ids.len(), 1, "all 64 answers are identical: {ids:?}");
    assert_eq!(answers[0].message.sequence_number, 1);
    assert_eq!(
        count(
            &store,
            collections::MESSAGES,
            doc! {"conversation_id": "conv-a"}
        )
        .await,
        1
    );
    // One number was used: the next message gets 2.
    let next = store
        .insert_message(new_message("key-2", "conv-a", "alice", "again"))
        .await
        .unwrap();
    assert_eq!(next.message.sequence_number, 2);
}

#[tokio::test]
async fn a_retry_after_completion_returns_the_original_and_a_conflicting_reuse_is_refused() {
    let store = store().await;
    let first = store
        .insert_message(new_message("k", "conv-b", "alice", "one"))
        .await
        .unwrap();
    let retry = store
        .insert_message(new_message("k", "conv-b", "alice", "one"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message, first.message);

    let conflict = store
        .insert_message(new_message("k", "conv-b", "alice", "something else"))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), ErrorCode::IdempotencyConflict);

    // Keys are scoped by sender: bob using alice's key is a different message.
    let bob = store
        .insert_message(new_message("k", "conv-b", "bob", "one"))
        .await
        .unwrap();
    assert!(!bob.duplicate);
    assert_ne!(bob.message.message_id, first.message.message_id);
    assert_eq!(bob.message.sequence_number, 2);
}

#[tokio::test]
async fn numbers_never_start_over_when_retention_removed_every_message() {
    let store = store().await;
    let conversation = Conversation::new(
        "conv-expired",
        ConversationKind::Direct,
        vec!["alice".into(), "bob".into()],
    );
    store.insert_conversation(&conversation).await.unwrap();
    for i in 0..3 {
        let m = store
            .insert_message(new_message(
                &format!("old-{i}"),
                "conv-expired",
                "alice",
                "x",
            ))
            .await
            .unwrap()
            .message;
        store
            .record_message(
                &messaging::model::LastMessage {
                    message_id: m.message_id,
                    sequence_number: m.sequence_number,
                    sender_id: m.sender_id,
                    message_type: m.body.message_type,
                    at: m.timestamp,
                },
                "conv-expired",
            )
            .await
            .unwrap();
    }
    // The TTL index removes them all (90 quiet days).
    store
        .database()
        .collection::<Document>(collections::MESSAGES)
        .delete_many(doc! {"conversation_id": "conv-expired"})
        .await
        .unwrap();
    let next = store
        .insert_message(new_message("new", "conv-expired", "alice", "y"))
        .await
        .unwrap();
    assert_eq!(next.message.sequence_number, 4);
}

#[tokio::test]
async fn a_process_whose_last_number_is_stale_still_gets_the_next_one() {
    let store = store().await;
    let other_process = another_process(&store).await;
    let first = store
        .insert_message(new_message("a1", "conv-hint", "alice", "1"))
        .await
        .unwrap();
    assert_eq!(first.message.sequence_number, 1);
    let second = store
        .insert_message(new_message("a2", "conv-hint", "alice", "2"))
        .await
        .unwrap();
    assert_eq!(second.message.sequence_number, 2);
    // Another process takes 3 and 4 meanwhile: this one's floor (2) is stale, its insert
    // collides, and it reads the real floor: 5, not a number twice, not a gap.
    for (key, expected) in [("b1", 3), ("b2", 4)] {
        let got = other_process
            .insert_message(new_message(key, "conv-hint", "bob", key))
            .await
            .unwrap();
        assert_eq!(got.message.sequence_number, expected);
    }
    // A retry of a stored send is still that message, not a second one, whatever the floor.
    let retry_is_the_stored_send = || async {
        let again = store
            .insert_message(new_message("a2", "conv-hint", "alice", "2"))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message.sequence_number, 2);
    };
    // With the stale floor, its insert takes 3: it collides on the number and on the key,
    // whichever the server names.
    retry_is_the_stored_send().await;
    let third = store
        .insert_message(new_message("a3", "conv-hint", "alice", "3"))
        .await
        .unwrap();
    assert_eq!(third.message.sequence_number, 5);
    assert_eq!(
        count(
            &store,
            collections::MESSAGES,
            doc! {"conversation_id": "conv-hint"}
        )
        .await,
        5
    );
    // With a fresh floor (5), its insert takes 6 and collides on the key alone.
    retry_is_the_stored_send().await;
}

#[tokio::test]
async fn a_last_number_hint_saves_the_read_whichever_process_stored_last() {
    let store = store().await;
    let other_process = another_process(&store).await;
    let hinted = |key: &str, hint: Option<u64>| NewMessage {
        last_sequence_hint: hint,
        ..new_message(key, "conv-hinted", "alice", key)
    };
    for (key, expected) in [("h1", 1), ("h2", 2)] {
        let got = store.insert_message(hinted(key, None)).await.unwrap();
        assert_eq!(got.message.sequence_number, expected);
    }
    // A process that never stored here, told the last number (2): one round trip, the insert.
    let before = other_process.round_trips();
    let got = other_process
        .insert_message(hinted("h3", Some(2)))
        .await
        .unwrap();
    assert_eq!(got.message.sequence_number, 3);
    assert_eq!(other_process.round_trips() - before, 1, "no read");
    // The first process remembers 2, is told 3: the higher is used, no collision.
    let before = store.round_trips();
    let got = store.insert_message(hinted("h4", Some(3))).await.unwrap();
    assert_eq!(got.message.sequence_number, 4);
    assert_eq!(store.round_trips() - before, 1, "no read, no collision");
    // A stale hint (it lags behind a send that just happened) in a process that remembers
    // nothing here: the insert collides and the real number is read; never a number twice,
    // never a gap.
    let third_process = another_process(&store).await;
    let got = third_process
        .insert_message(hinted("h5", Some(2)))
        .await
        .unwrap();
    assert_eq!(got.message.sequence_number, 5);
    // A retry told a stale hint, in a process that remembers nothing of it, is still its
    // stored message.
    let fourth_process = another_process(&store).await;
    let again = fourth_process
        .insert_message(hinted("h4", Some(1)))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.sequence_number, 4);
    let numbers: Vec<u64> = store
        .messages_in_range("conv-hinted", 1, 100, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.sequence_number)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_exactly_one_to_n_and_no_number_twice() {
    // 200 sends queue for one conversation: on a loaded machine the last ones wait longer than
    // the default deadline, which is not what this test is about (the deadline has its own).
    let patient = StoreOptions {
        operation_timeout: Duration::from_secs(60),
        ..StoreOptions::default()
    };
    let store = store_with(patient.clone()).await;
    // A second process (another Lambda container) sending to the same conversation: within a
    // process sends take turns, between processes they race for numbers.
    let other_process = MongoStore::connect(
        &testkit::servers().mongodb_uri,
        store.database().name(),
        patient,
    )
    .await
    .unwrap();
    let n = 200;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                other_process.clone()
            };
            tokio::spawn(async move {
                store
                    .insert_message(new_message(
                        &format!("k{i}"),
                        "conv-seq",
                        &format!("sender-{}", i % 20),
                        "hi",
                    ))
                    .await
                    .unwrap()
                    .message
                    .sequence_number
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (1..=n).collect::<Vec<u64>>());
    eprintln!(
        "{n} concurrent sends to one conversation: {:?}",
        started.elapsed()
    );
    // Other conversations number on their own.
    let other = store
        .insert_message(new_message("k", "conv-other", "alice", "hi"))
        .await
        .unwrap();
    assert_eq!(other.message.sequence_number, 1);
}

#[tokio::test]
async fn a_stored_message_waits_in_the_outbox_until_its_fanout_is_done() {
    let store = store().await;
    let m = store
        .insert_message(new_message("o1", "conv-outbox", "alice", "hi"))
        .await
        .unwrap()
        .message;
    assert!(m.fanout_due_at.is_some(), "stored with its fan-out due");
    let now = DateTime::now();
    // Not overdue yet.
    assert!(store.overdue_fanouts(now, 10).await.unwrap().is_empty());
    // Overdue: one sweeper takes it, a concurrent one does not.
    let future = DateTime::from_millis(now.timestamp_millis() + 30_000);
    let (a, b) = futures::join!(
        store.overdue_fanouts(future, 10),
        store.overdue_fanouts(future, 10)
    );
    let taken: Vec<_> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].message_id, m.message_id);
    store.fanout_done(&m.message_id).await.unwrap();
    let far = DateTime::from_millis(now.timestamp_millis() + 3_600_000);
    assert!(store.overdue_fanouts(far, 10).await.unwrap().is_empty());
    let stored = store.message(&m.message_id).await.unwrap().unwrap();
    assert_eq!(stored.fanout_due_at, None);
}

#[tokio::test]
async fn done_fanouts_leave_the_outbox_in_one_write() {
    let store = store().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let m = store
            .insert_message(new_message(&format!("b{i}"), "conv-batch", "alice", "hi"))
            .await
            .unwrap()
            .message;
        ids.push(m.message_id);
        // Due times one apart at least: "oldest first" is then one order.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let now = DateTime::now();
    assert!(store.overdue_fanout_ids(now, 10).await.unwrap().is_empty());
    let future = DateTime::from_millis(now.timestamp_millis() + 30_000);
    // Oldest first, at most the limit, nothing taken (asking again gives the same).
    assert_eq!(store.overdue_fanout_ids(future, 2).await.unwrap(), ids[..2]);
    assert_eq!(store.overdue_fanout_ids(future, 10).await.unwrap(), ids);
    // Two of them (and an unknown id) leave in one write; only what was marked counts.
    let done = vec![
        ids[0].clone(),
        ids[2].clone(),
        "no-such-message".to_string(),
    ];
    assert_eq!(store.fanouts_done(&done).await.unwrap(), 2);
    assert_eq!(store.fanouts_done(&done).await.unwrap(), 0, "idempotent");
    assert_eq!(store.fanouts_done(&[]).await.unwrap(), 0);
    assert_eq!(
        store.overdue_fanout_ids(future, 10).await.unwrap(),
        ids[1..2]
    );
}

#[tokio::test]
async fn indexes_exist_with_the_right_options() {
    let store = store().await;
    let indexes = |name: &'static str| {
        let db = store.database().clone();
        async move {
            db.collection::<Document>(name)
                .list_indexes()
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }
    };
    let find = |list: &[mongodb::IndexModel], name: &str| {
        list.iter()
            .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
            .unwrap_or_else(|| panic!("index {name} missing"))
            .clone()
    };

    let messages = indexes(collections::MESSAGES).await;
    let ttl = find(&messages, "created_at_ttl");
    assert_eq!(
        ttl.options.unwrap().expire_after,
        Some(Duration::from_secs(90 * 86_400))
    );
    for unique in [
        "message_id_unique",
        "idempotency_key_unique",
        "conversation_sequence_unique",
    ] {
        assert_eq!(find(&messages, unique).options.unwrap().unique, Some(true));
    }
    assert_eq!(
        find(&messages, "conversation_timestamp").keys,
        doc! {"conversation_id": 1, "timestamp": -1}
    );

    let outbox = find(&messages, "fanout_due");
    assert_eq!(outbox.keys, doc! {"fanout_due_at": 1});
    let cursors = indexes(collections::DEVICE_CURSORS).await;
    assert_eq!(
        find(&cursors, "user_device_conversation_unique")
            .options
            .unwrap()
            .unique,
        Some(true)
    );

    let users = indexes(collections::USERS).await;
    for unique in ["user_id_unique", "phone_unique", "email_unique"] {
        assert_eq!(find(&users, unique).options.unwrap().unique, Some(true));
    }

    // Running it again is harmless.
    store.migrate().await.unwrap();
}

#[tokio::test]
async fn a_function_refuses_a_database_the_migration_has_not_reached() {
    let servers = testkit::servers();
    let db = testkit::unique_name("db");
    let store = MongoStore::connect(&servers.mongodb_uri, &db, StoreOptions::default())
        .await
        .unwrap();
    // Never migrated: the error names the database and what to run.
    let error = store.check_schema().await.unwrap_err().to_string();
    assert!(
        error.contains(&db) && error.contains("never migrated") && error.contains("migrate"),
        "{error}"
    );
    let state = store.migrate().await.unwrap();
    assert_eq!(state.version, messaging::store::SCHEMA_VERSION);
    store.check_schema().await.unwrap();

    // Migrated by an older build: refused until the migration runs again.
    let meta = store.database().collection::<Document>(collections::META);
    meta.update_one(
        doc! {"_id": "schema"},
        doc! {"$set": {"version": messaging::store::SCHEMA_VERSION - 1}},
    )
    .await
    .unwrap();
    assert!(store.check_schema().await.is_err());
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();

    // A newer build's migration is never undone by an older one, and this build still runs.
    meta.update_one(
        doc! {"_id": "schema"},
        doc! {"$set": {"version": messaging::store::SCHEMA_VERSION + 1}},
    )
    .await
    .unwrap();
    assert_eq!(
        store.migrate().await.unwrap().version,
        messaging::store::SCHEMA_VERSION + 1
    );
    store.check_schema().await.unwrap();
}

#[tokio::test]
async fn changed_retention_updates_the_ttl_index_in_place() {
    let servers = testkit::servers();
    let db = testkit::unique_name("db");
    let first = MongoStore::connect(&servers.mongodb_uri, &db, StoreOptions::default())
        .await
        .unwrap();
    first.migrate().await.unwrap();
    let second = MongoStore::connect(
        &servers.mongodb_uri,
        &db,
        StoreOptions {
            message_retention: Duration::from_secs(30 * 86_400),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    second.migrate().await.unwrap();
    let list: Vec<_> = second
        .database()
        .collection::<Document>(collections::MESSAGES)
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ttl = list
        .iter()
        .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some("created_at_ttl"))
        .unwrap();
    assert_eq!(
        ttl.options.as_ref().unwrap().expire_after,
        Some(Duration::from_secs(30 * 86_400))
    );
}

#[tokio::test]
async fn range_reads_are_ordered_and_bounded() {
    let store = store().await;
    for i in 0..12 {
        store
            .insert_message(new_message(
                &format!("k{i}"),
                "conv-r",
                "alice",
                &format!("m{i}"),
            ))
            .await
            .unwrap();
    }
    let page = store.messages_in_range("conv-r", 3, 9, 100).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (3..=9).collect::<Vec<_>>());
    assert_eq!(page[0].body.content, "m2");
    let capped = store.messages_in_range("conv-r", 1, 12, 4).await.unwrap();
    assert_eq!(capped.len(), 4);
    assert_eq!(capped[3].sequence_number, 4);
    assert!(
        store
            .messages_in_range("conv-none", 1, 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn status_only_moves_forward() {
    let store = store().await;
    let m = store
        .insert_message(new_message("s", "conv-s", "alice", "x"))
        .await
        .unwrap()
        .message;
    let ids = vec![m.message_id.clone()];
    assert_eq!(
        store
            .advance_status(&ids, MessageStatus::Read)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .advance_status(&ids, MessageStatus::Delivered)
            .await
            .unwrap(),
        0
    );
    let stored = store.message(&m.message_id).await.unwrap().unwrap();
    assert_eq!(stored.status, MessageStatus::Read);
    assert_eq!(store.messages_by_ids(&ids).await.unwrap().len(), 1);
}

#[tokio::test]
async fn users_are_unique_by_phone_and_email_when_present() {
    let store = store().await;
    let user = |id: &str, phone: Option<&str>, email: Option<&str>| User {
        user_id: id.into(),
        phone: phone.map(Into::into),
        email: email.map(Into::into),
        name: id.into(),
        avatar_url: None,
        created_at: DateTime::now(),
        last_seen: None,
        status: PresenceStatus::Offline,
    };
    store
        .insert_user(&user("u1", Some("+4915112345678"), None))
        .await
        .unwrap();
    store
        .insert_user(&user("u2", None, Some("a@example.com")))
        .await
        .unwrap();
    // Two users without a phone (or without an email) are fine.
    store
        .insert_user(&user("u3", None, Some("b@example.com")))
        .await
        .unwrap();
    let dup = store
        .insert_user(&user("u4", Some("+4915112345678"), None))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), ErrorCode::Conflict);
    let dup = store
        .insert_user(&user("u5", None, Some("a@example.com")))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), ErrorCode::Conflict);

    store
        .set_last_seen("u1", DateTime::from_millis(42))
        .await
        .unwrap();
    let u1 = store.user("u1").await.unwrap().unwrap();
    assert_eq!(u1.last_seen, Some(DateTime::from_millis(42)));
}

#[tokio::test]
async fn conversations_round_trip() {
    let store = store().await;
    let c = Conversation {
        admins: vec!["a".into()],
        name: Some("Team".into()),
        ..Conversation::new(
            "g1",
            ConversationKind::Group,
            vec!["a".into(), "b".into(), "c".into()],
        )
    };
    store.insert_conversation(&c).await.unwrap();
    let back = store.conversation("g1").await.unwrap().unwrap();
    assert_eq!(back, c);
    assert_eq!(back.recipients_of("a").collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(
        store.insert_conversation(&c).await.unwrap_err().code(),
        ErrorCode::Conflict
    );
}

#[tokio::test]
async fn one_round_trip_per_new_message_two_for_a_retry() {
    let store = store().await;
    // A conversation's first message also reads the conversation's number (one more, once).
    let before = store.round_trips();
    store
        .insert_message(new_message("rt0", "conv-rt", "alice", "x"))
        .await
        .unwrap();
    assert_eq!(store.round_trips() - before, 3);
    let before = store.round_trips();
    store
        .insert_message(new_message("rt", "conv-rt", "alice", "y"))
        .await
        .unwrap();
    assert_eq!(
        store.round_trips() - before,
        1,
        "the insert: the number stored last is this process's floor"
    );
    let before = store.round_trips();
    let retry = store
        .insert_message(new_message("rt", "conv-rt", "alice", "y"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        store.round_trips() - before,
        2,
        "insert refused, read the original"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_to_device_queue_is_bounded_and_numbers_survive_a_reset_device() {
    use messaging::e2ee::CryptoDevice;
    use messaging::protocol::OutgoingToDevice;
    use messaging::store::{KeyDirectoryStore, ToDeviceStore};
    let store = store_with(StoreOptions {
        max_queued_to_device: 3,
        ..StoreOptions::default()
    })
    .await;
    let phone = CryptoDevice::new("bob", "phone");
    store.publish_device(&phone.device_keys()).await.unwrap();
    let message = |id: &str| OutgoingToDevice {
        message_id: id.into(),
        user_id: "bob".into(),
        device_id: "phone".into(),
        content: "ciphertext".into(),
    };
    for i in 0..3 {
        store
            .queue_to_device("alice", "laptop", &[message(&format!("m{i}"))], 1)
            .await
            .unwrap();
    }
    let full = store
        .queue_to_device("alice", "laptop", &[message("m3")], 1)
        .await
        .unwrap_err();
    assert_eq!(full.code(), messaging::ErrorCode::RateLimited, "{full}");
    // A retry of something already queued is still answered.
    assert_eq!(
        store
            .queue_to_device("alice", "laptop", &[message("m1")], 1)
            .await
            .unwrap()[0]
            .item
            .sequence,
        2
    );
    // Acknowledged: room again.
    store
        .ack_to_device("bob", "phone", &[1, 2, 3])
        .await
        .unwrap();
    store
        .queue_to_device("alice", "laptop", &[message("m3")], 1)
        .await
        .unwrap();

    // A message left over from before a reset (a send that raced the deletion) keeps its
    // number; the device published again numbers past it.
    store.delete_device_keys("bob", "phone").await.unwrap();
    store.publish_device(&phone.device_keys()).await.unwrap();
    store
        .database()
        .collection::<Document>("to_device")
        .insert_one(mongodb::bson::doc! {
            "user_id": "bob", "device_id": "phone", "sequence": 1_i64, "message_id": "old",
            "sender_id": "alice", "sender_device_id": "laptop", "content": "x",
            "timestamp": 1_i64, "created_at": mongodb::bson::DateTime::now(),
        })
        .await
        .unwrap();
    let queued = store
        .queue_to_device("alice", "laptop", &[message("m4")], 1)
        .await
        .unwrap();
    assert_eq!(queued[0].item.sequence, 2, "numbered past the leftover");
}

#[tokio::test]
async fn a_duplicate_key_error_names_its_index() {
    use messaging::store::{duplicate_index, schema::CONVERSATION_SEQUENCE_INDEX};
    let store = store().await;
    let messages = store
        .database()
        .collection::<Document>(collections::MESSAGES);
    let stored = doc! {"message_id": "m1", "idempotency_key": "k1", "conversation_id": "c", "sequence_number": 1_i64};
    messages.insert_one(stored).await.unwrap();
    let same_number = doc! {"message_id": "m2", "idempotency_key": "k2", "conversation_id": "c", "sequence_number": 1_i64};
    let err = messages.insert_one(same_number).await.unwrap_err();
    assert_eq!(
        duplicate_index(&err),
        Some(CONVERSATION_SEQUENCE_INDEX),
        "{err}"
    );
    let same_key = doc! {"message_id": "m3", "idempotency_key": "k1", "conversation_id": "c", "sequence_number": 2_i64};
    let err = messages.insert_one(same_key).await.unwrap_err();
    assert_eq!(
        duplicate_index(&err),
        Some("idempotency_key_unique"),
        "{err}"
    );
    // Not a duplicate: no index.
    let not_duplicate = mongodb::error::Error::custom("no");
    assert_eq!(duplicate_index(&not_duplicate), None);
}
