//! The account life cycle against real Redis and MongoDB: registration, codes (expiry, attempt
//! limit, resend throttle), sign-in, refresh rotation with reuse detection, sign-out, recovery,
//! profile.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{access, email, env, env_with, refresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_account_life_cycle() {
    let env = env().await;
    let address = email("alice");

    // Register with a password: a code goes out, hashed at rest.
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"email": address.to_uppercase(), "name": "Alice", "password": "correct horse"})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["channel"], "email");
    assert_eq!(r.body["purpose"], "register");
    assert_eq!(r.body["expires_in"], 600);
    let code = env.last_code(&address);
    assert_eq!(code.len(), 6);
    let stored: mongodb::bson::Document = env
        .store
        .database()
        .collection("verification_codes")
        .find_one(mongodb::bson::doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.to_string().contains(&code),
        "the code is stored hashed"
    );
    assert!(
        stored
            .get_str("code_hash")
            .unwrap()
            .starts_with("$argon2id$")
    );

    // Registering again while pending is throttled; registering a taken address is refused.
    let r = env
        .call(
            "POST",
            "/v1/auth/resend",
            None,
            Some(json!({"email": address})),
        )
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.headers.get("retry-after").is_some());

    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"email": address, "code": code, "device_id": "phone-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let tokens = r.body.clone();
    let user_id = tokens["user"]["user_id"].as_str().unwrap().to_string();
    assert_eq!(tokens["user"]["email"], address.as_str());
    assert_eq!(tokens["token_type"], "Bearer");

    // The access token is one the WebSocket functions accept.
    let claims = env.api.context().jwt.verify(&access(&tokens)).unwrap();
    assert_eq!(claims.sub, user_id);
    assert_eq!(claims.device_id.as_deref(), Some("phone-1"));

    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"email": address, "name": "Again"})),
        )
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.body["error"]["code"], "conflict");

    // Profile.
    let r = env
        .call("GET", "/v1/me", Some(&access(&tokens)), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Alice");
    let r = env
        .call(
            "PATCH",
            "/v1/me",
            Some(&access(&tokens)),
            Some(json!({"name": "Alice A.", "avatar_url": "https://cdn.example.com/a.png"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "Alice A.");
    assert_eq!(r.body["avatar_url"], "https://cdn.example.com/a.png");
    let r = env
        .call(
            "PATCH",
            "/v1/me",
            Some(&access(&tokens)),
            Some(json!({"avatar_url": null})),
        )
        .await;
    assert!(r.body.get("avatar_url").is_none(), "{r:?}");
    let r = env
        .call(
            "PATCH",
            "/v1/me",
            Some(&access(&tokens)),
            Some(json!({"avatar_url": "ftp://x"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env.call("GET", "/v1/me", None, None).await;
    assert_eq!(r.status, 401);
    let r = env.call("GET", "/v1/me", Some("not-a-jwt"), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_token");

    // Password sign-in; wrong password and unknown account look the same.
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"email": address, "password": "correct horse"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let laptop = r.body.clone();
    for (who, password) in [
        (address.as_str(), "wrong horse!"),
        ("nobody@example.com", "whatever1"),
    ] {
        let r = env
            .call(
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"email": who, "password": password})),
            )
            .await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(
            r.body["error"]["message"],
            "wrong phone number, email or password"
        );
    }

    // Refresh rotation: each token works once; a reuse revokes the whole family.
    let r1 = refresh(&tokens);
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r2 = refresh(&r.body);
    assert_ne!(r1, r2);
    assert_eq!(
        env.api
            .context()
            .jwt
            .verify(&access(&r.body))
            .unwrap()
            .device_id
            .as_deref(),
        Some("phone-1")
    );
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r2})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r3 = refresh(&r.body);
    // r1 is presented again: somebody copied it.
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    // ...so the legitimate newest token of that family is dead too,
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r3})),
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // ...while the other sign-in (laptop) is untouched.
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh(&laptop)})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let laptop = r.body.clone();
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": "rt_unknown"})),
        )
        .await;
    assert_eq!(r.status, 401);

    // Logout ends that session.
    let r = env
        .call(
            "POST",
            "/v1/auth/logout",
            None,
            Some(json!({"refresh_token": refresh(&laptop)})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh(&laptop)})),
        )
        .await;
    assert_eq!(r.status, 401);

    // Code sign-in (no password).
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"email": address})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["purpose"], "login");
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"email": address, "code": env.last_code(&address)})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let code_session = r.body.clone();
    assert_eq!(code_session["user"]["user_id"], user_id.as_str());
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"email": email("ghost")})),
        )
        .await;
    assert_eq!(r.status, 404);

    // Recovery through the verified channel: new password, every session revoked.
    let r = env
        .call(
            "POST",
            "/v1/auth/recover",
            None,
            Some(json!({"email": address})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["purpose"], "recover");
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({
                "email": address,
                "code": env.last_code(&address),
                "new_password": "battery staple",
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh(&code_session)})),
        )
        .await;
    assert_eq!(r.status, 401, "recovery revokes every earlier session");
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"email": address, "password": "correct horse"})),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"email": address, "password": "battery staple"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .call(
            "POST",
            "/v1/auth/recover",
            None,
            Some(json!({"email": email("ghost")})),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_expire() {
    let env = env_with(|o, _| o.code_ttl = Duration::from_secs(1)).await;
    let phone = "+14155550123";
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"phone": phone, "name": "Bob"})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["channel"], "sms");
    assert_eq!(r.body["destination"], "+1415•••0123");
    let code = env.last_code(phone);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"phone": phone, "code": code})),
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_burn_the_code() {
    let env = env().await;
    let address = email("carol");
    env.call(
        "POST",
        "/v1/auth/register",
        None,
        Some(json!({"email": address, "name": "Carol"})),
    )
    .await;
    let code = env.last_code(&address);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..5).rev() {
        let r = env
            .call(
                "POST",
                "/v1/auth/verify",
                None,
                Some(json!({"email": address, "code": wrong})),
            )
            .await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.body["error"]["code"], "unauthenticated");
        if left > 0 {
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{left} attempts left"))
            );
        }
    }
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"email": address, "code": code})),
        )
        .await;
    assert_eq!(r.status, 403, "the right code no longer works: {r:?}");
    // A malformed code is refused without costing an attempt.
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"email": address, "code": "12ab"})),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_is_throttled_and_capped() {
    let env = env_with(|o, _| {
        o.code_resend_interval = Duration::from_millis(300);
        o.code_max_sends = 3;
    })
    .await;
    let address = email("dave");
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"email": address, "name": "Dave"})),
        )
        .await;
    assert_eq!(r.status, 202);
    let first = env.last_code(&address);
    let r = env
        .call(
            "POST",
            "/v1/auth/resend",
            None,
            Some(json!({"email": address})),
        )
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.headers["retry-after"], "1");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let r = env
            .call(
                "POST",
                "/v1/auth/resend",
                None,
                Some(json!({"email": address})),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = env
        .call(
            "POST",
            "/v1/auth/resend",
            None,
            Some(json!({"email": address})),
        )
        .await;
    assert_eq!(r.status, 429, "at most 3 codes per window: {r:?}");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 3000
    );
    assert_eq!(env.codes_sent_to(&address), 3);
    // Only the newest code works; the pending name survives the resends.
    let newest = env.last_code(&address);
    if newest != first {
        let r = env
            .call(
                "POST",
                "/v1/auth/verify",
                None,
                Some(json!({"email": address, "code": first})),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"email": address, "code": newest})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["user"]["name"], "Dave");
    let r = env
        .call(
            "POST",
            "/v1/auth/resend",
            None,
            Some(json!({"email": email("x")})),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_answers() {
    let env = env().await;
    for (body, status) in [
        (json!({"phone": "0044 20 7946 0000", "name": "E"}), 400),
        (json!({"email": "not-an-email", "name": "E"}), 400),
        (
            json!({"email": "e@example.com", "phone": "+14155550100", "name": "E"}),
            400,
        ),
        (json!({"email": "e@example.com", "name": ""}), 400),
        (
            json!({"email": "e@example.com", "name": "E", "password": "short"}),
            400,
        ),
        (json!({"name": "E"}), 400),
    ] {
        let r = env
            .call("POST", "/v1/auth/register", None, Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert!(r.body["error"]["message"].is_string());
    }
    let r = env.call("POST", "/v1/auth/register", None, None).await;
    assert_eq!(r.status, 400);
    let r = env
        .call_with("POST", "/v1/auth/register", None, None, &[])
        .await;
    assert_eq!(r.body["error"]["code"], "invalid_request");
    let mut request = lambda_http::http::Request::builder()
        .method("POST")
        .uri("/v1/auth/login")
        .body(lambda_http::Body::Text("{not json".into()))
        .unwrap();
    request
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let response = fn_api::handle(&env.router, request).await;
    assert_eq!(response.status(), 400);
    let r = env.call("GET", "/v1/nowhere", None, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "not_found");
    let r = env.call("PUT", "/v1/me", None, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET,HEAD,PATCH,DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_unavailable_and_does_not_throttle() {
    let env = env().await;
    let failing_url = env.code_url.replace("/codes", "/failing");
    let api = fn_api::Api::new(env.api.context().clone(), {
        let mut o = env.api.options().clone();
        o.code_sender = std::sync::Arc::new(fn_api::HttpCodeSender::new(failing_url, None));
        o
    });
    let address = email("erin");
    let request = |body: serde_json::Value| {
        lambda_http::http::Request::builder()
            .method("POST")
            .uri("/v1/auth/register")
            .body(lambda_http::Body::Text(body.to_string()))
            .unwrap()
    };
    let response = fn_api::handle(
        &fn_api::router(api.clone()),
        request(json!({"email": address, "name": "Erin"})),
    )
    .await;
    assert_eq!(response.status(), 503);
    // The provider is back: the person can try again at once.
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"email": address, "name": "Erin"})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
}
