//! Lambda entry point of the api function (API Gateway HTTP API).

use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    messaging::telemetry::init();
    let api = fn_api::Api::from_env().await?;
    lambda_http::run(service_fn(|request: Request| {
        let api = &api;
        async move { Ok::<_, Error>(fn_api::handle(api, request).await) }
    }))
    .await
}
