//! The local stack: everything the functions need from the cloud, emulated on one machine.
//!
//! - [`gateway`]: a managed WebSocket API (API Gateway semantics: routes, events, limits) and
//!   its `@connections` management API;
//! - [`sigv4`]: the management API's check of SigV4-signed calls;
//! - [`authorizer`]: the WebSocket API's Lambda REQUEST authorizer on `$connect`, run as API
//!   Gateway runs it;
//! - [`broker`]: a CloudEvents broker with Knative Broker/Trigger semantics;
//! - [`journal`]: the broker's durable queue of accepted deliveries and dead letters;
//! - [`s3`]: an S3 endpoint that checks SigV4 signatures (presigned URLs work with curl);
//! - [`remote`]: route integrations over HTTP, for the gateway on Kubernetes;
//! - [`replicas`]: several gateway replicas behind one address (connection ids that name their
//!   owner, a registry in Redis, management calls forwarded to the owner);
//! - [`agent`]: a demo agent, subscribed through the broker like a real one;
//! - [`instance`]: what a running stack leaves in its data directory (signing key, endpoints),
//!   so `token` and `chat` talk to that stack;
//! - [`http_api`]: an HTTP API (API Gateway HTTP API semantics, CORS included) in front of
//!   `lambda_http` functions;
//! - [`web`]: the web client's origin (its static files, `config.json`, the local code outbox);
//! - [`functions`]: the functions' own runtime, so their CPU time is told from the emulators';
//! - [`stack`]: wires the real functions to these endpoints and to Redis and MongoDB.

#![warn(missing_docs)]

pub mod agent;
pub mod authorizer;
pub mod broker;
pub mod functions;
pub mod gateway;
pub mod http_api;
pub mod instance;
pub mod journal;
pub mod remote;
pub mod replicas;
pub mod s3;
pub mod sigv4;
pub mod stack;
pub mod web;

/// An error and its causes, `a: b: c` (reqwest's Display alone hides the cause), for logs and
/// error bodies.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
