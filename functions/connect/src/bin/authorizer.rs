//! Entry point of the `$connect` authorizer: under Lambda (a WebSocket API's REQUEST
//! authorizer) or, when `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP server on `$PORT` that
//! the Kubernetes WebSocket gateway calls with the same event JSON.

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let jwt =
            messaging::runtime::init(async { messaging::auth::JwtVerifier::from_env() }).await;
        messaging::runtime::run_authorizer_function(move |request| {
            fn_connect::authorizer::handle(&jwt, &request)
        })
        .await
    })
}
