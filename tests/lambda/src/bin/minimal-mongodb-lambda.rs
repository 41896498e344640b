//! The smallest Lambda function that needs MongoDB: `lambda_runtime` and the MongoDB driver,
//! connected at start to `MONGODB_URI` (database `MONGODB_DATABASE`), answering every event with
//! one read. `cold-start` measures the functions whose first event needs MongoDB against it as
//! well as against `minimal-lambda`: what the driver's handshakes and a first round trip cost
//! against this server, with nothing of ours in it.
//!
//! On tokio's current-thread runtime, as the functions run under Lambda
//! (`messaging::runtime::start`): the cheapest way to serve one event at a time, so the warm
//! CPU floor is the Runtime API loop's own.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let uri = std::env::var("MONGODB_URI")?;
    let database = std::env::var("MONGODB_DATABASE").unwrap_or_else(|_| "messaging".into());
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let collection = client
        .database(&database)
        .collection::<Document>("conversations");
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| {
        let collection = collection.clone();
        async move {
            let found = collection.find_one(doc! {"_id": "none"}).await?;
            Ok::<Value, Error>(json!({"found": found.is_some()}))
        }
    }))
    .await
}
