//! Entry point of the HTTP API: under Lambda (API Gateway HTTP API) or, when
//! `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP server on `$PORT` (Knative Service).

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    messaging::telemetry::init();
    let api = Arc::new(messaging::runtime::init(fn_api::Api::from_env()).await);
    messaging::runtime::run_http_function(move |request| {
        let api = api.clone();
        async move { fn_api::handle(&api, request).await }
    })
    .await
}
