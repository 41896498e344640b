//! The shared core of the messaging backend.
//!
//! Every function (connect, message, disconnect, store, agent-response, presign, push, api,
//! migrate) is a thin binary over this crate; the local stack, the tests, Lambda and Knative
//! run the same code.
//!
//! **What travels** — [`protocol`]: every WebSocket frame, both ways; [`model`]: what is stored
//! and what travels in CloudEvents; [`contract`]: the AsyncAPI document generated from both;
//! [`ids`]: what a user or device id may be; [`e2ee`]: the key directory's types, the encrypted
//! envelopes, and a device's Olm and Megolm sessions; [`error`]: the one error type and its mapping to
//! frames and HTTP statuses.
//!
//! **Ports and their adapters** (one per outside system) — [`store`]: MongoDB, the truth
//! (one trait per collection group); [`realtime`]: Redis (connections, presence, typing, rate
//! limits, caches, leases) with every key named in [`keys`]; [`runs`]: agent runs in Redis and
//! the service that streams them; [`gateway`]: the `@connections` management API; [`events`]:
//! the CloudEvents broker, and [`eventbridge`] for AWS; [`objects`]: S3.
//!
//! **Shared services** — [`connections`]: registering and forgetting a connection, presence;
//! [`migration`]: moving clients off a connection before it ends; [`identity`]: the `$connect`
//! authorizer and the identity every frame carries; [`auth`]: JWTs;
//! [`conversations`]: cached lookups and the one membership check; [`fanout`]: frames to
//! connections; [`group_receipts`]: members' receipts coalesced into one frame per interval; [`pending`]: what a device is owed, from MongoDB; [`to_device`]: key material between
//! devices, stored then delivered; [`outbox`]: every
//! acknowledged message fanned out and notified; [`agent_routing`]: which agent answers;
//! [`system_messages`]: messages the server writes itself; [`web_push`]: a browser's Web Push
//! subscription (its push token).
//!
//! **Running a function** — [`context`]: the ports and settings a function is given;
//! [`config`]: configuration from the environment; [`aws_sdk`]: the AWS SDK's configuration,
//! from the environment alone inside Lambda (a fast cold start); [`runtime`]: Lambda or an HTTP server;
//! [`websocket`]: the WebSocket route events; [`http`]: the HTTP functions' routers, extractors,
//! gates and replies; [`telemetry`]: logging; [`metrics`]: per-stage counters; [`clock`]: time;
//! and the allocator of every binary (mimalloc, feature `mimalloc`, on by default).
//!
//! **For the other side** — `client` (feature `client`): the WebSocket client library for apps,
//! agents and tests; [`agent`]: the agent SDK.
//!
//! The path of a message, and the module that does each step:
//!
//! ```text
//! client ──`message` frame──▶ message function: identity ─ conversations::membership
//!                                 │ store::MessageStore::insert_message (number + outbox, MongoDB)
//!                                 │ outbox::announce_stored ──▶ events (broker / EventBridge)
//!                                 │   and the conversation's last-number hint (Redis)
//!        ◀──`message_ack`─────────┘ (the route response)           │
//!                                                                  │
//!            store function ◀─ messaging.message.received ─────────┤──▶ agents (agent_routing)
//!              fanout ──`message`──▶ every device of every member   │      agent.delta ─▶ runs
//!              messaging.notification for the offline               │      agent.response
//!              RealtimeState::finish_work (fan-out done)            └──▶ push (notification)
//!
//! A device that was away gets what it is owed from MongoDB ([`pending`]) on `sync`; the
//! [`outbox`] sweep clears the marks of finished fan-outs in batches and redoes the store
//! function's work for any message it never finished.
//! ```
//!
//! Every form of a message (the frame a client sends, the stored document, the event, the frame
//! and the HTTP history a client receives) flattens one [`protocol::MessageBody`].

#![warn(missing_docs)]

/// The allocator of every binary that links this crate (feature `mimalloc`, on by default).
/// glibc's malloc took a quarter of the stack's CPU in the 1:1 benchmark: its arenas contend
/// between tokio's worker threads (futex wake-ups in `malloc`) and it consolidates fragmented
/// free lists of the short-lived buffers every event allocates (BSON, JSON, HTTP bodies).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod agent;
pub mod agent_routing;
pub mod auth;
pub mod aws_sdk;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod config;
pub mod connections;
pub mod context;
pub mod contract;
pub mod conversations;
pub mod e2ee;
pub mod error;
pub mod eventbridge;
pub mod events;
pub mod fanout;
pub mod gateway;
pub mod group_receipts;
pub mod http;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod migration;
pub mod model;
pub mod objects;
pub mod outbox;
pub mod pending;
pub mod protocol;
pub mod realtime;
pub mod runs;
pub mod runtime;
pub mod store;
pub mod system_messages;
pub mod telemetry;
pub mod to_device;
pub mod web_push;
pub mod websocket;

pub use error::{Error, ErrorCode, Result};
