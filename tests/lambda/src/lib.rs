//! The functions as Lambda and Knative run them, for the suite in `tests/` and the `cold-start`
//! measurement: a Lambda Runtime API ([`runtime_api`]), the environment the deployment templates
//! give each function ([`template`]), function binaries as child processes ([`process`]), and
//! what a deployment provides around them ([`deployment`]).
//!
//! The suite runs every function **binary** (not its library) with exactly the environment its
//! deployment gives it, test values filled in only where a deployment has its own (secrets,
//! resource ids, endpoints), and feeds it AWS-shaped events of each of its triggers. A function
//! that needs a variable its deployment does not give fails here, not in production.

#![warn(missing_docs)]

pub mod deployment;
pub mod process;
pub mod runtime_api;
pub mod template;
