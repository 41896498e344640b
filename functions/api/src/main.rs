//! Entry point of the HTTP API: under Lambda (API Gateway HTTP API) or, when
//! `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP server on `$PORT` (Knative Service).

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let api = messaging::runtime::init(fn_api::Api::from_env()).await;
        let router = fn_api::router(api);
        messaging::runtime::run_http_function(move |request| {
            let router = router.clone();
            async move { fn_api::handle(&router, request).await }
        })
        .await
    })
}
