//! Lambda entry point of the `$default` and typed message routes.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    let ctx = messaging::context::Context::from_env().await?;
    lambda_runtime::run(service_fn(
        |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let ctx = &ctx;
            async move { Ok::<_, lambda_runtime::Error>(fn_message::handle(ctx, e.payload).await) }
        },
    ))
    .await
}
