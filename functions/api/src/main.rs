//! Lambda entry point of the api function (HTTP).

use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    messaging::telemetry::init();
    lambda_http::run(service_fn(|request: Request| async move {
        Ok::<_, Error>(fn_api::handle(request).await)
    }))
    .await
}
