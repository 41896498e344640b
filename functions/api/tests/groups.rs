//! Groups over the API against real Redis and MongoDB: the 100 cap, unknown users, admin rules,
//! leaving, promotion, and the system messages members see.

mod support;

use messaging::store::ConversationStore;
use serde_json::json;
use support::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_holds_at_most_100_existing_users() {
    let env = env().await;
    let (_, token) = env.quick_user("Owner").await;
    let mut others = Vec::new();
    for i in 0..100 {
        others.push(env.quick_user(&format!("U{i}")).await.0);
    }
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": "Too big", "participants": others})),
        )
        .await;
    // More than the schema's 99 others: refused before anything is looked up.
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.body["error"]["code"], "invalid_request");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 99 items"),
        "{r:?}"
    );
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": "Full", "participants": &others[..99]})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["participants"].as_array().unwrap().len(), 100);
    let id = r.body["conversation_id"].as_str().unwrap().to_string();
    let r = env
        .call(
            "POST",
            &format!("/v1/groups/{id}/participants"),
            Some(&token),
            Some(json!({"user_ids": [&others[99]]})),
        )
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100")
    );

    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": "Ghosts", "participants": [&others[0], "ghost-1"]})),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ghost-1")
    );
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": "Alone", "participants": []})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": " ", "participants": [&others[0]]})),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rules_leaving_promotion_and_system_messages() {
    let env = env().await;
    let (owner, owner_t) = env.quick_user("Owner").await;
    let (ann, ann_t) = env.quick_user("Ann").await;
    let (ben, ben_t) = env.quick_user("Ben").await;
    let (cat, _) = env.quick_user("Cat").await;
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&owner_t),
            Some(
                json!({"name": "Team", "description": "work", "participants": [&ann, &ben, &ann]}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["your_role"], "admin");
    let id = r.body["conversation_id"].as_str().unwrap().to_string();
    let roles: Vec<(String, String)> = r.body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("Owner".into(), "admin".into()),
            ("Ann".into(), "member".into()),
            ("Ben".into(), "member".into())
        ]
    );
    let path = |s: &str| format!("/v1/groups/{id}{s}");

    // Members may not add, remove, promote or rename.
    let r = env
        .call(
            "POST",
            &path("/participants"),
            Some(&ann_t),
            Some(json!({"user_ids": [&cat]})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .call(
            "DELETE",
            &path(&format!("/participants/{ben}")),
            Some(&ann_t),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .call(
            "POST",
            &path("/admins"),
            Some(&ann_t),
            Some(json!({"user_id": &ann})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .call(
            "PATCH",
            &path(""),
            Some(&ann_t),
            Some(json!({"name": "Mine"})),
        )
        .await;
    assert_eq!(r.status, 403);
    // Outsiders see nothing.
    let (_, outsider) = env.quick_user("Out").await;
    assert_eq!(
        env.call("GET", &path("/participants"), Some(&outsider), None)
            .await
            .status,
        403
    );

    // The admin adds, removes, renames.
    let r = env
        .call(
            "POST",
            &path("/participants"),
            Some(&owner_t),
            Some(json!({"user_ids": [&cat, &ann]})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["participants"].as_array().unwrap().len(), 4);
    let r = env
        .call(
            "DELETE",
            &path(&format!("/participants/{cat}")),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = env
        .call(
            "DELETE",
            &path(&format!("/participants/{cat}")),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = env
        .call(
            "PATCH",
            &path(""),
            Some(&owner_t),
            Some(json!({"name": "Team 2", "description": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "Team 2");
    assert!(r.body.get("description").is_none());

    // The last admin cannot be demoted; promote, then demote.
    let r = env
        .call(
            "DELETE",
            &path(&format!("/admins/{owner}")),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    let r = env
        .call(
            "POST",
            &path("/admins"),
            Some(&owner_t),
            Some(json!({"user_id": &ben})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = env
        .call(
            "DELETE",
            &path(&format!("/admins/{ben}")),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(r.status, 200);

    // A member leaves; the last admin leaves and the longest-standing member is promoted.
    let r = env.call("POST", &path("/leave"), Some(&ben_t), None).await;
    assert_eq!(r.status, 204);
    let r = env
        .call(
            "DELETE",
            &path(&format!("/participants/{owner}")),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "removing yourself is leaving");
    let r = env.call("GET", &path(""), Some(&ann_t), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["your_role"], "admin");
    assert_eq!(r.body["participants"].as_array().unwrap().len(), 1);
    assert_eq!(
        env.call("GET", &path(""), Some(&owner_t), None)
            .await
            .status,
        403
    );

    // Every change was announced to the members, naming users by id only.
    let events: Vec<(String, serde_json::Value)> = env
        .system_events(&id)
        .into_iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "group_created",
            "participants_added",
            "participant_removed",
            "group_updated",
            "admin_promoted",
            "admin_demoted",
            "participant_left",
            "participant_left",
            "admin_promoted",
        ]
    );
    assert_eq!(
        events[1].1["users"],
        json!([cat]),
        "Ann was already a member"
    );
    assert_eq!(events[8].1["user"], ann.as_str());
    assert_eq!(events[8].1["actor"], "system");
    // ...and they are stored in order in the group's history, readable by members.
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{id}/messages"),
            Some(&ann_t),
            None,
        )
        .await;
    let stored: Vec<serde_json::Value> = r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "system");
            serde_json::from_str(m["content"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(stored.len(), 9);
    assert_eq!(stored[0]["event"], "group_created");

    // The last member leaving deletes the group.
    let r = env.call("POST", &path("/leave"), Some(&ann_t), None).await;
    assert_eq!(r.status, 204);
    assert!(env.store.conversation(&id).await.unwrap().is_none());
}
