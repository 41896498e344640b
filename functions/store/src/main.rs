//! Entry point of the store function (`messaging.message.received`): under Lambda (EventBridge
//! rule) or, when `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP CloudEvents subscriber on
//! `$PORT` (Knative Service behind a Trigger).

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let ctx = messaging::runtime::init(messaging::context::Context::from_env()).await;
        let dead_letters = ctx.store.clone();
        messaging::runtime::run_cloudevent_function("store", dead_letters, move |event| {
            let ctx = ctx.clone();
            async move { fn_store::handle(&ctx, event).await.map(|_| None) }
        })
        .await
    })
}
