//! Entry point of the push function (`messaging.notification`): under Lambda (EventBridge rule)
//! or, when `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP CloudEvents subscriber on `$PORT`
//! (Knative Service behind a Trigger).

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let push = messaging::runtime::init(fn_push::Push::from_env()).await;
        let dead_letters = push.ctx().store.clone();
        messaging::runtime::run_cloudevent_function("push", dead_letters, move |event| {
            let push = push.clone();
            async move { fn_push::handle(&push, event).await.map(|()| None) }
        })
        .await
    })
}
