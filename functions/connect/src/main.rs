//! Entry point of the `$connect` route: under Lambda (API Gateway WebSocket API) or, when
//! `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP server on `$PORT` that the Kubernetes
//! WebSocket gateway calls with the same event JSON.

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let ctx = messaging::runtime::init(messaging::context::Context::from_env()).await;
        messaging::runtime::run_websocket_function(move |event| {
            let ctx = ctx.clone();
            async move { fn_connect::handle(&ctx, event).await }
        })
        .await
    })
}
