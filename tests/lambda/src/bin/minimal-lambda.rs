//! The smallest Lambda function `lambda_runtime` makes: it answers every event with the event.
//! `cold-start` measures the functions against it: the cost of starting a Rust process under
//! the Runtime API and answering once, with nothing of ours in it.
//!
//! On tokio's current-thread runtime, as the functions run under Lambda
//! (`messaging::runtime::start`): the cheapest way to serve one event at a time, so the warm
//! CPU floor is the Runtime API loop's own.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
