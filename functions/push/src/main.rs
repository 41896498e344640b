//! Lambda entry point of the push function (`messaging.notification`).

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    lambda_runtime::run(service_fn(
        |e: LambdaEvent<cloudevents::Event>| async move {
            fn_push::handle(e.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
