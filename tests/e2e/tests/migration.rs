//! The connections sweep: a connection nearing the WebSocket API's lifetime limit is told to
//! migrate once, with the deadline of its cut; younger ones are left alone.

use std::time::Duration;

use e2e::RawWs;

#[tokio::test]
async fn the_lifetime_sweep_tells_old_connections_to_migrate_once() {
    let stack = e2e::stack().await;
    let alice = e2e::user(&stack, "alice").await;
    let token = e2e::token(&stack, &alice);
    let mut old = RawWs::connect(&stack, Some(&token), "old").await;
    let mut young = RawWs::connect(&stack, Some(&token), "young").await;
    // Both registered (the sweep only knows registered connections).
    let ids = e2e::connections(&stack, &alice, 2, "not registered").await;
    let max_age = stack.ctx.settings.connection_max_age.as_millis() as i64;
    let notice = stack.ctx.settings.migration_notice.as_millis() as i64;
    // Both are indexed by age; take them out to set their ages: one due, one a minute younger.
    let first: Vec<(String, i64)> = stack
        .ctx
        .realtime
        .take_connections_older_than(i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "both are indexed by age: {first:?}");
    let (old_id, old_at) = first.iter().min_by_key(|(_, at)| *at).cloned().unwrap();
    let (young_id, _) = first.iter().max_by_key(|(_, at)| *at).cloned().unwrap();
    assert!(ids.contains(&old_id) && ids.contains(&young_id));
    // Put them back as registration does, then sweep as if the clock were just past the
    // notice of the older one.
    for (id, at) in [(&old_id, old_at), (&young_id, old_at + 60_000)] {
        stack
            .ctx
            .realtime
            .register_connection(&messaging::realtime::ConnectionInfo {
                connection_id: id.clone(),
                user_id: alice.clone(),
                device_id: "d".into(),
                connected_at: at,
            })
            .await
            .unwrap();
    }
    let now = old_at + max_age - notice + 1_000;
    let told = messaging::migration::sweep(&stack.ctx, now).await.unwrap();
    assert_eq!(told, 1);
    let (mut told_ws, mut other_ws) = {
        // Which socket is which: the old one answers the frame.
        let first = old.next(Duration::from_secs(2)).await;
        match first {
            Some(frame) if frame["type"] == "migration" => {
                assert_eq!(frame["payload"]["reason"], "lifetime");
                assert_eq!(frame["payload"]["deadline"], old_at + max_age);
                (old, young)
            }
            _ => {
                let frame = young.expect("migration").await;
                assert_eq!(frame["payload"]["deadline"], old_at + max_age);
                (young, old)
            }
        }
    };
    // Once only, and not the younger one.
    assert_eq!(
        messaging::migration::sweep(&stack.ctx, now).await.unwrap(),
        0
    );
    assert!(other_ws.next(Duration::from_millis(300)).await.is_none());
    assert!(told_ws.next(Duration::from_millis(300)).await.is_none());
}
