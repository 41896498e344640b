//! Lambda entry point of the store function (`messaging.message.received`).

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    let ctx = messaging::context::Context::from_env().await?;
    lambda_runtime::run(service_fn(|e: LambdaEvent<cloudevents::Event>| {
        let ctx = &ctx;
        async move {
            fn_store::handle(ctx, e.payload)
                .await
                .map(|_| ())
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
