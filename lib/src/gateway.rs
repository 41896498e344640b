//! Pushing frames to WebSocket clients through the API Gateway management API (`@connections`).
//!
//! A function cannot write to a socket: it asks the managed WebSocket API to do it with
//! `PostToConnection`. A 410 Gone means the connection is closed (the client went away without a
//! clean `$disconnect`, or it already happened): the caller forgets that one connection and nothing
//! else ([`GatewayError::Gone`]). The same client works against AWS and against the local stack's
//! emulator; only the endpoint differs.

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::http::HttpResponse;
use aws_sdk_apigatewaymanagement::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::operation::delete_connection::DeleteConnectionError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;

/// Why a post to a connection failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// The connection no longer exists (HTTP 410): forget it.
    #[error("connection is gone")]
    Gone,
    /// The frame is over 128 KB (HTTP 413).
    #[error("payload too large for a WebSocket frame")]
    PayloadTooLarge,
    /// The client cannot keep up or the account is throttled (HTTP 429).
    #[error("throttled by the WebSocket API")]
    Throttled,
    /// Anything else (network, credentials, 5xx).
    #[error("management API failure: {0}")]
    Other(String),
}

/// The gateway port: send to, or close, a client connection.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// Sends one text frame to a connection.
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), GatewayError>;
    /// Closes a connection (its `$disconnect` runs).
    async fn close(&self, connection_id: &str) -> Result<(), GatewayError>;
}

/// The adapter over `aws-sdk-apigatewaymanagement`.
#[derive(Clone, Debug)]
pub struct ApiGatewayManagement {
    client: Client,
}

impl ApiGatewayManagement {
    /// A client for the management endpoint, e.g.
    /// `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}` or the local stack's
    /// `http://127.0.0.1:PORT`. Credentials and region come from `sdk_config`.
    pub fn new(sdk_config: &aws_config::SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk_config)
            .endpoint_url(endpoint)
            .build();
        Self {
            client: Client::from_conf(config),
        }
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
    status: Option<u16>,
) -> GatewayError {
    match status {
        Some(410) => GatewayError::Gone,
        Some(413) => GatewayError::PayloadTooLarge,
        Some(429) => GatewayError::Throttled,
        _ => GatewayError::Other(match e.code() {
            Some(code) => format!("{code}: {}", e.message().unwrap_or_default()),
            None => format!("{e:?}"),
        }),
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[async_trait]
impl Gateway for ApiGatewayManagement {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), GatewayError> {
        let _timer = crate::metrics::time(crate::metrics::Stage::GatewayPost);
        match self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(data))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(PostToConnectionError::GoneException(_)) = e.as_service_error() {
                    return Err(GatewayError::Gone);
                }
                Err(classify(&e, status_of(&e)))
            }
        }
    }

    async fn close(&self, connection_id: &str) -> Result<(), GatewayError> {
        match self
            .client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(DeleteConnectionError::GoneException(_)) = e.as_service_error() {
                    return Err(GatewayError::Gone);
                }
                Err(classify(&e, status_of(&e)))
            }
        }
    }
}
