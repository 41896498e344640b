//! The shared core of the messaging backend.
//!
//! Every function (connect, message, disconnect, store, agent-response, presign, push, api) is a
//! thin binary over this crate. It holds the wire protocol ([`protocol`]), the domain model
//! ([`model`]), one port per outside system with its real adapter ([`realtime`] for Redis,
//! [`store`] for MongoDB, [`gateway`] for the WebSocket management API, [`events`] for the broker,
//! [`objects`] for S3), JWT handling ([`auth`]), configuration ([`config`]) and the single mapping
//! from failures to what clients see ([`error`]).

#![warn(missing_docs)]

pub mod agent_routing;
pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod config;
pub mod connections;
pub mod context;
pub mod contract;
pub mod conversations;
pub mod error;
pub mod eventbridge;
pub mod events;
pub mod fanout;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod outbox;
pub mod pending;
pub mod protocol;
pub mod realtime;
pub mod runtime;
pub mod store;
pub mod system_messages;
pub mod telemetry;
pub mod websocket;

pub use error::{Error, ErrorCode, Result};
