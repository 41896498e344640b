//! What a newcomer does first, through the local stack: chat with someone who has never
//! connected, read the documents freely, see an agent stop typing when it answers.

use e2e::{WAIT, client, conversation, stack, user};
use messaging::client::{Client, ClientEvent};
use messaging::model::ConversationKind;
use messaging::protocol::TypingState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_with_someone_who_never_connected_works_in_either_order() {
    let stack = stack().await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (alice, bob) = (format!("alice-{suffix}"), format!("bob-{suffix}"));
    // Neither has an account: alice's local token opens a 1:1 with bob first.
    let opened: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/conversations", stack.api_url))
        .bearer_auth(e2e::token(&stack, &alice))
        .json(&serde_json::json!({"user_id": bob}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("a 1:1 with a brand-new user opens")
        .json()
        .await
        .unwrap();
    let conv = opened["conversation_id"].as_str().unwrap().to_string();
    let alice_phone = client(&stack, &alice, "terminal").await;
    // Bob has no device yet, so no keys: the transport is what is tested here (an envelope no
    // key opens); tests/encryption.rs sends real ciphertext.
    alice_phone
        .send_text(&conv, &e2e::sealed("hi bob"))
        .await
        .unwrap();
    // Bob connects later and finds the message waiting (it may come live, before his
    // `auth_success`: take every event).
    let mut bob_phone = Client::connect(e2e::client_config(&stack, &bob, "terminal"))
        .await
        .unwrap();
    let got = bob_phone
        .wait_for(WAIT, |e| match e {
            ClientEvent::Message(m) if m.conversation_id.as_deref() == Some(conv.as_str()) => {
                Some(e2e::said(&m.body.content))
            }
            _ => None,
        })
        .await;
    assert_eq!(got.as_deref(), Some("hi bob"));
    // Bob opening the same 1:1 from his side finds the same conversation.
    let again: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/conversations", stack.api_url))
        .bearer_auth(e2e::token(&stack, &bob))
        .json(&serde_json::json!({"user_id": alice}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["conversation_id"].as_str(), Some(conv.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_never_rate_limited() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    // Well past the budget of requests without a token (30 a minute).
    for i in 0..45 {
        let status = http
            .get(format!("{}/openapi.json", stack.api_url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_answers_stops_typing() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let demo = local_stack::agent::PLAIN_DEMO_AGENT_ID;
    let conv = conversation(&stack, ConversationKind::Agent, &[&alice, demo], Some(demo)).await;
    let mut phone = client(&stack, &alice, "phone").await;
    phone.send_text(&conv, "hello").await.unwrap();
    let mut typing = Vec::new();
    let mut answered = false;
    // After the answer, the agent's last typing state must be `stop`.
    while !(answered && typing.last() == Some(&TypingState::Stop)) {
        match phone.next_event_within(WAIT).await {
            Some(ClientEvent::Typing(t)) if t.user_id == demo => typing.push(t.state),
            Some(ClientEvent::Message(m)) if m.sender_id.as_deref() == Some(demo) => {
                answered = true
            }
            Some(_) => {}
            None => panic!("typing states {typing:?}, answered: {answered}"),
        }
    }
    assert_eq!(typing.first(), Some(&TypingState::Start));
}
