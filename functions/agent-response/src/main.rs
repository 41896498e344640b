//! Lambda entry point of the agent-response function (`agent.response`, `agent.progress`, sweeps).

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    let ctx = messaging::context::Context::from_env().await?;
    lambda_runtime::run(service_fn(|e: LambdaEvent<cloudevents::Event>| {
        let ctx = &ctx;
        async move {
            fn_agent_response::handle(ctx, e.payload)
                .await
                .map(|_| ())
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
