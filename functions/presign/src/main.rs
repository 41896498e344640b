//! Entry point of the presign function (HTTP): under Lambda (API Gateway HTTP API) or, when
//! `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP server on `$PORT` (Knative Service).

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let presign = messaging::runtime::init(fn_presign::Presign::from_env()).await;
        let router = fn_presign::router(presign);
        messaging::runtime::run_http_function(move |request| {
            let router = router.clone();
            async move { fn_presign::handle(&router, request).await }
        })
        .await
    })
}
