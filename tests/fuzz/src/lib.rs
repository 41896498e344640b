//! Fuzz targets for every decoder that takes outside bytes, and a structure-aware mutator.
//!
//! Each [`Target`] takes arbitrary bytes and runs them through what the system does with such
//! bytes from outside: parse a client frame, an API Gateway event, an authorizer event, a
//! CloudEvent (binary and structured mode), an EventBridge envelope, the body of every HTTP route,
//! the media checks of the presign function, a JWT. A target must never panic; whatever it
//! returns is fine. The inputs come from [`Mutator`]: valid seeds (the protocol's own frames and
//! events) mutated structurally (wrong types, huge and negative numbers, deep nesting, unicode,
//! operator objects such as `{"$gt": ""}`, reserved route names, removed and added fields) and at
//! the byte level (flips, truncation, insertion).
//!
//! Runs without `cargo fuzz` (which needs a nightly toolchain for its instrumentation): the
//! `fuzz` binary drives every target for as many inputs as asked, deterministically from a seed,
//! and keeps any input that panics under `target/fuzz-crashes/`. `cargo test -p fuzz` runs a
//! bounded slice of each on every change.

#![warn(missing_docs)]

pub mod mutator;
pub mod targets;

pub use mutator::Mutator;
pub use targets::{TARGETS, Target};
