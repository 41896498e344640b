//! The agent registry over the API against real MongoDB: operator-only writes (key or role
//! claim), browse and search, status from heartbeats.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{OPERATOR_KEY, env_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_need_an_operator() {
    let env = env_with(|_, s| s.agent_offline_after = Duration::from_secs(1)).await;
    let (_, user) = env.quick_user("User").await;
    let body = json!({
        "agent_id": "weather",
        "name": "Weather Bot",
        "description": "Forecasts",
        "capabilities": ["forecast", "alerts"],
        "categories": ["travel"],
        "examples": ["Will it rain tomorrow?"],
        "endpoint": "https://agents.example.com/weather",
    });
    let key = [("x-operator-key", OPERATOR_KEY)];
    let wrong = [("x-operator-key", "wrong-key-wrong-key")];
    assert_eq!(
        env.call("POST", "/v1/agents", None, Some(body.clone()))
            .await
            .status,
        401
    );
    assert_eq!(
        env.call("POST", "/v1/agents", Some(&user), Some(body.clone()))
            .await
            .status,
        403
    );
    assert_eq!(
        env.call_with("POST", "/v1/agents", None, Some(body.clone()), &wrong)
            .await
            .status,
        401
    );
    let r = env
        .call_with("POST", "/v1/agents", None, Some(body.clone()), &key)
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["endpoint"], "https://agents.example.com/weather");
    assert_eq!(r.body["status"], "offline");
    assert_eq!(
        env.call_with("POST", "/v1/agents", None, Some(body), &key)
            .await
            .status,
        409
    );
    let r = env
        .call_with(
            "POST",
            "/v1/agents",
            None,
            Some(json!({"agent_id": "Bad Id", "name": "x"})),
            &key,
        )
        .await;
    assert_eq!(r.status, 400);

    // A token with the operator role works as well.
    let ops = env.operator_token();
    let r = env
        .call(
            "POST",
            "/v1/agents",
            Some(&ops),
            Some(json!({"agent_id": "chef", "name": "Chef", "capabilities": ["recipes"], "categories": ["food"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // Updates and deletes: operators only.
    let patch = json!({"description": "Forecasts and alerts", "avatar_url": "https://cdn.example.com/w.png"});
    assert_eq!(
        env.call(
            "PATCH",
            "/v1/agents/weather",
            Some(&user),
            Some(patch.clone())
        )
        .await
        .status,
        403
    );
    let r = env
        .call("PATCH", "/v1/agents/weather", Some(&ops), Some(patch))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["description"], "Forecasts and alerts");
    assert_eq!(r.body["capabilities"], json!(["forecast", "alerts"]));
    assert_eq!(
        env.call("DELETE", "/v1/agents/chef", Some(&user), None)
            .await
            .status,
        403
    );
    assert_eq!(
        env.call_with("DELETE", "/v1/agents/chef", None, None, &key)
            .await
            .status,
        204
    );
    assert_eq!(
        env.call_with("DELETE", "/v1/agents/chef", None, None, &key)
            .await
            .status,
        404
    );

    // Users see the agent without its endpoint.
    let r = env
        .call("GET", "/v1/agents/weather", Some(&user), None)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("endpoint").is_none());
    assert_eq!(r.body["examples"], json!(["Will it rain tomorrow?"]));
    assert_eq!(
        env.call("GET", "/v1/agents/weather", None, None)
            .await
            .status,
        401
    );

    // Heartbeats: operators or the agent itself; status follows them.
    assert_eq!(
        env.call("POST", "/v1/agents/weather/heartbeat", Some(&user), None)
            .await
            .status,
        403
    );
    let agent_token = env
        .issuer
        .issue("weather", Duration::from_secs(60))
        .unwrap();
    let r = env
        .call(
            "POST",
            "/v1/agents/weather/heartbeat",
            Some(&agent_token),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = env
        .call("GET", "/v1/agents/weather", Some(&user), None)
        .await;
    assert_eq!(r.body["status"], "online");
    let r = env
        .call("GET", "/v1/agents?status=online", Some(&user), None)
        .await;
    assert_eq!(r.body["agents"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = env
        .call("GET", "/v1/agents/weather", Some(&user), None)
        .await;
    assert_eq!(
        r.body["status"], "offline",
        "silent longer than agent_offline_after"
    );
    let r = env
        .call("GET", "/v1/agents?status=online", Some(&user), None)
        .await;
    assert!(r.body["agents"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_and_search_by_name_capability_category() {
    let env = env_with(|_, _| {}).await;
    let (_, user) = env.quick_user("User").await;
    let key = [("x-operator-key", OPERATOR_KEY)];
    for (id, name, caps, cats) in [
        (
            "a-coder",
            "Code Helper",
            vec!["code", "review"],
            vec!["dev"],
        ),
        (
            "b-chef",
            "Chef (Beta)",
            vec!["recipes"],
            vec!["food", "home"],
        ),
        (
            "c-trip",
            "Trip Planner",
            vec!["flights", "hotels"],
            vec!["travel"],
        ),
        ("d-sous", "Sous Chef", vec!["recipes", "wine"], vec!["food"]),
    ] {
        let r = env
            .call_with(
                "POST",
                "/v1/agents",
                None,
                Some(
                    json!({"agent_id": id, "name": name, "capabilities": caps, "categories": cats}),
                ),
                &key,
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let ids = |q: &'static str| {
        let env = &env;
        let user = user.clone();
        async move {
            let r = env
                .call("GET", &format!("/v1/agents{q}"), Some(&user), None)
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["agents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["agent_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("").await, vec!["a-coder", "b-chef", "c-trip", "d-sous"]);
    assert_eq!(ids("?q=chef").await, vec!["b-chef", "d-sous"]);
    assert_eq!(
        ids("?q=(beta)").await,
        vec!["b-chef"],
        "regex characters are literal"
    );
    assert_eq!(
        ids("?q=HOTEL").await,
        vec!["c-trip"],
        "capabilities match text search"
    );
    assert_eq!(ids("?capability=recipes").await, vec!["b-chef", "d-sous"]);
    assert_eq!(ids("?category=food&capability=wine").await, vec!["d-sous"]);
    assert_eq!(ids("?category=travel").await, vec!["c-trip"]);
    let r = env
        .call("GET", "/v1/agents?limit=3", Some(&user), None)
        .await;
    assert_eq!(r.body["next_cursor"], "c-trip");
    assert_eq!(ids("?limit=3&cursor=c-trip").await, vec!["d-sous"]);
    assert_eq!(
        env.call("GET", "/v1/agents?limit=0", Some(&user), None)
            .await
            .status,
        400
    );
    assert_eq!(
        env.call("GET", "/v1/agents?status=maybe", Some(&user), None)
            .await
            .status,
        400
    );
}
