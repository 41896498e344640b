//! Entry point of the push function (`messaging.notification`): under Lambda (EventBridge rule)
//! or, when `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP CloudEvents subscriber on `$PORT`
//! (Knative Service behind a Trigger).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    messaging::runtime::run_cloudevent_function(|event| async move {
        fn_push::handle(event).await.map(|()| None)
    })
    .await
}
