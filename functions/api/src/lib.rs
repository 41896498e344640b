//! The HTTP API: accounts and tokens, profiles, conversations, groups, the agent registry, push
//! devices, and personal data export and erasure (API Gateway HTTP API events via `lambda_http`).
//!
//! The function is an `axum` [`router`] run under `lambda_http` ([`handle`]): each route is
//! registered together with its OpenAPI entry (`utoipa-axum`), so neither exists without the
//! other, and [`openapi`] (served at `GET /openapi.json`, with the presign function's routes)
//! is generated from those registrations. Handlers take typed extractors
//! (`messaging::http::{Json, Path, Query, Caller}`); request bodies are checked against their
//! published schema before a handler runs; every refusal is a 4xx with the one
//! `messaging::http::ErrorBody`, and a 429 carries `Retry-After`. One gate in front of every
//! route verifies the caller and rate limits in Redis: per user with an access token
//! (`API_RATE_PER_MINUTE`), per client address without one (`AUTH_RATE_PER_MINUTE`), and the
//! sign-in routes also per phone number or email. `GET /asyncapi.json` serves the WebSocket
//! API's and the CloudEvents' AsyncAPI document.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/auth/register` | anyone | phone (E.164) or email, name, optional password: sends a code |
//! | POST | `/v1/auth/verify` | anyone | enters a code: creates the account, signs in, or recovers it; returns tokens |
//! | POST | `/v1/auth/resend` | anyone | sends a new code for the pending purpose (throttled) |
//! | POST | `/v1/auth/login` | anyone | with password: tokens; without: sends a sign-in code |
//! | POST | `/v1/auth/recover` | anyone | sends a recovery code to the account's verified phone or email |
//! | POST | `/v1/auth/refresh` | anyone | rotates a refresh token; a reused one revokes its whole family |
//! | POST | `/v1/auth/logout` | anyone | revokes a session (or every session) by its refresh token |
//! | GET, PATCH, DELETE | `/v1/me` | user | own profile; name and avatar; delete the account and personal data |
//! | GET | `/v1/me/export` | user | everything stored about the caller as one JSON document |
//! | GET | `/v1/users/{user_id}` | user | public profile of someone the caller shares a conversation with |
//! | POST, GET | `/v1/conversations` | user | start 1:1 or agent conversation (one per pair); list and search |
//! | GET, PATCH, DELETE | `/v1/conversations/{id}` | member | view; pin/archive; delete for me |
//! | GET | `/v1/conversations/{id}/messages` | member | history page by sequence range |
//! | POST | `/v1/groups` | user | create a group (up to 100 participants, all existing users) |
//! | GET, PATCH | `/v1/groups/{id}` | member, admin | group with members; rename / describe |
//! | GET, POST | `/v1/groups/{id}/participants` | member, admin | list members; add members |
//! | DELETE | `/v1/groups/{id}/participants/{user_id}` | admin, self | remove a member (or leave) |
//! | POST | `/v1/groups/{id}/leave` | member | leave (the last admin's leaving promotes the longest-standing member) |
//! | POST | `/v1/groups/{id}/admins` | admin | promote a member |
//! | DELETE | `/v1/groups/{id}/admins/{user_id}` | admin | demote an admin (never the last one) |
//! | GET, POST | `/v1/agents` | user, operator | browse and search the registry; register an agent |
//! | GET, PATCH, DELETE | `/v1/agents/{agent_id}` | user, operator | view; update; remove |
//! | POST | `/v1/agents/{agent_id}/heartbeat` | operator, the agent | marks the agent online |
//! | GET | `/v1/devices` | user | registered push devices |
//! | PUT, DELETE | `/v1/devices/{device_id}` | user | register / unregister an FCM or APNs token |
//! | PUT, DELETE | `/v1/keys/{device_id}` | user | publish a device's signed identity, one-time and fallback keys / remove them |
//! | GET | `/v1/users/{user_id}/keys` | user, contact | a user's devices and identity keys |
//! | POST | `/v1/keys/claim` | user | one key per device (each one-time key handed out once) |
//! | GET | `/openapi.json` | anyone | the HTTP API's OpenAPI document |
//! | GET | `/asyncapi.json` | anyone | the WebSocket API's and CloudEvents' AsyncAPI document |
//!
//! # Accounts and tokens
//!
//! Registration, code sign-in and recovery all go through one verification code per destination
//! (collection `verification_codes`): six random digits, stored only as an argon2id hash, valid
//! 10 minutes and for 5 wrong attempts (counted atomically), resent at most every 30 seconds and
//! 5 times an hour; codes go out through a [`CodeSender`] (an HTTP provider in production, printed
//! and recorded locally). Passwords are optional and hashed with argon2id (collection
//! `credentials`). A sign-in returns a short access JWT (15 minutes, signed by the same keys the
//! WebSocket connect function verifies) and an opaque refresh token, stored as its SHA-256 in a
//! family; each refresh rotates it, and presenting a used token again revokes the whole family.
//! Recovery revokes every session of the account.
//!
//! # Conversations
//!
//! Each participant's own view of a conversation (pinned, archived, deleted for them with the
//! sequence number up to which history is cleared) lives in the conversation document under
//! `member_state.{user_id}`, beside the existing `read_up_to` markers, so one query gives a user's
//! list with unread counts. 1:1 and agent conversations carry a unique `pair_key`, so creating one
//! twice (even concurrently) returns the first. Search matches titles, group names and
//! descriptions, and participants' and agents' names; message content is end-to-end encrypted and
//! never searched. Group changes are compare-and-set on the member lists, and every change posts a
//! `system` message whose content is JSON naming users by id only (`{"event": ...}`).
//!
//! # Personal data
//!
//! `GET /v1/me/export` returns profile, sessions (without tokens), devices, conversations with the
//! caller's state, every message they sent (content as stored, i.e. encrypted) and their media
//! records. `DELETE /v1/me` erases the account: profile, password, tokens, devices, pending codes,
//! Redis state (connections are closed) and agent conversations are deleted; the user leaves every
//! group (a system message says an account was deleted); messages they sent in groups and 1:1
//! conversations stay for the other participants so their histories keep every sequence number,
//! but are attributed to a random `deleted-user-…` id that nothing links to the person, as are
//! their 1:1 conversations and any system message that named them.

#![warn(missing_docs)]

mod accounts;
mod agents;
pub mod codes;
mod conversations;
mod devices;
mod docs;
mod gdpr;
mod groups;
mod keys;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request, Response};
use messaging::Result;
use messaging::auth::JwtIssuer;
use messaging::config::{ConfigError, Env, MongoConfig, Source, parsed, seconds};
use messaging::context::Context;
use messaging::http::gate::{self, Budget, Gate};
use messaging::realtime::RateLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use codes::{CodeMessage, CodeSender, HttpCodeSender, LocalCodeSender};

/// Cost of the argon2id hashes of passwords and verification codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Passes (OWASP: 2).
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Settings of the API beyond the shared [`Context`].
#[derive(Clone)]
pub struct ApiOptions {
    /// Signs access tokens (the messaging functions verify them).
    pub issuer: JwtIssuer,
    /// Delivers verification codes.
    pub code_sender: Arc<dyn CodeSender>,
    /// Secret of the `X-Operator-Key` header for the agent registry (else only the role claim).
    pub operator_key: Option<String>,
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// Lifetime of verification codes.
    pub code_ttl: Duration,
    /// Wrong entries allowed per code.
    pub code_max_attempts: u32,
    /// Least time between two codes to one destination.
    pub code_resend_interval: Duration,
    /// Most codes to one destination per [`ApiOptions::code_send_window`].
    pub code_max_sends: u32,
    /// Window of [`ApiOptions::code_max_sends`].
    pub code_send_window: Duration,
    /// Per-user budget of requests with an access token.
    pub rate_limit: RateLimit,
    /// Per-address (and per phone or email) budget of requests without one.
    pub auth_rate_limit: RateLimit,
    /// Cost of argon2id hashing.
    pub hash_cost: HashCost,
}

impl ApiOptions {
    /// Defaults: 15-minute access tokens, 30-day refresh tokens, 10-minute codes with 5
    /// attempts, resent every 30 s at most and 5 times an hour, 300 requests a minute per user,
    /// 30 a minute per address without a token, OWASP argon2id cost, no operator key, and codes
    /// printed by a [`LocalCodeSender`] (configure a real sender outside development).
    pub fn new(issuer: JwtIssuer) -> Self {
        Self {
            issuer,
            code_sender: Arc::new(LocalCodeSender::new(None)),
            operator_key: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            code_ttl: Duration::from_secs(10 * 60),
            code_max_attempts: 5,
            code_resend_interval: Duration::from_secs(30),
            code_max_sends: 5,
            code_send_window: Duration::from_secs(3600),
            rate_limit: RateLimit {
                max: 300,
                window: Duration::from_secs(60),
            },
            auth_rate_limit: RateLimit {
                max: 30,
                window: Duration::from_secs(60),
            },
            hash_cost: HashCost::default(),
        }
    }

    /// Reads the operator key, token lifetimes and rate limits from configuration (the part of
    /// [`ApiOptions::from_source`] that does not choose the signing key or the code sender), so
    /// the local stack honours the same variables: `OPERATOR_KEY`, `ACCESS_TOKEN_TTL_SECS`,
    /// `REFRESH_TOKEN_TTL_SECS`, `API_RATE_PER_MINUTE`, `AUTH_RATE_PER_MINUTE`.
    pub fn with_limits_from(mut self, src: &impl Source) -> std::result::Result<Self, ConfigError> {
        let options = &mut self;
        if let Some(key) = src.get("OPERATOR_KEY") {
            if key.len() < 16 {
                return Err(ConfigError::Invalid {
                    var: "OPERATOR_KEY",
                    reason: "must be at least 16 characters".into(),
                });
            }
            options.operator_key = Some(key);
        }
        options.access_token_ttl = seconds(src, "ACCESS_TOKEN_TTL_SECS", options.access_token_ttl)?;
        options.refresh_token_ttl =
            seconds(src, "REFRESH_TOKEN_TTL_SECS", options.refresh_token_ttl)?;
        options.rate_limit.max = parsed(src, "API_RATE_PER_MINUTE", options.rate_limit.max)?;
        options.auth_rate_limit.max =
            parsed(src, "AUTH_RATE_PER_MINUTE", options.auth_rate_limit.max)?;
        Ok(self)
    }

    /// Reads the options from configuration:
    /// `JWT_RS256_PRIVATE_KEY` (PEM) or `JWT_HS256_SECRET`, `JWT_ISSUER`, `JWT_AUDIENCE`;
    /// `OPERATOR_KEY` (at least 16 characters); `ACCESS_TOKEN_TTL_SECS` (900),
    /// `REFRESH_TOKEN_TTL_SECS` (2592000); `API_RATE_PER_MINUTE` (300), `AUTH_RATE_PER_MINUTE`
    /// (30); `CODE_SENDER_URL` and `CODE_SENDER_TOKEN` for the HTTP code sender, or
    /// `CODE_SENDER=local` for the local one (recording in no database: see [`Api::from_env`]).
    pub fn from_source(src: &impl Source) -> std::result::Result<Self, ConfigError> {
        let issuer_name = src.get("JWT_ISSUER").unwrap_or_else(|| "messaging".into());
        let audience = src
            .get("JWT_AUDIENCE")
            .unwrap_or_else(|| "messaging-clients".into());
        let issuer = match (
            src.get("JWT_RS256_PRIVATE_KEY"),
            src.get("JWT_HS256_SECRET"),
        ) {
            (Some(pem), _) => JwtIssuer::rs256(&pem, &issuer_name, &audience).map_err(|e| {
                ConfigError::Invalid {
                    var: "JWT_RS256_PRIVATE_KEY",
                    reason: e.to_string(),
                }
            })?,
            (None, Some(secret)) if secret.len() >= 32 => {
                JwtIssuer::hs256(secret.as_bytes(), &issuer_name, &audience)
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    var: "JWT_HS256_SECRET",
                    reason: "must be at least 32 bytes".into(),
                });
            }
            (None, None) => {
                return Err(ConfigError::Missing(
                    "JWT_RS256_PRIVATE_KEY or JWT_HS256_SECRET",
                ));
            }
        };
        let mut options = Self::new(issuer).with_limits_from(src)?;
        options.code_sender = match (
            src.get("CODE_SENDER").as_deref(),
            src.get("CODE_SENDER_URL"),
        ) {
            (Some("local"), _) => Arc::new(LocalCodeSender::new(None)),
            (Some("http") | None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        var: "CODE_SENDER_URL",
                        reason: "expected an http(s) URL".into(),
                    });
                }
                Arc::new(HttpCodeSender::new(url, src.get("CODE_SENDER_TOKEN")))
            }
            (Some("http") | None, None) => return Err(ConfigError::Missing("CODE_SENDER_URL")),
            (Some(other), _) => {
                return Err(ConfigError::Invalid {
                    var: "CODE_SENDER",
                    reason: format!("`{other}`: expected `http` or `local`"),
                });
            }
        };
        Ok(options)
    }
}

/// The api function: the shared context plus its own options.
#[derive(Clone)]
pub struct Api {
    ctx: Context,
    options: ApiOptions,
}

impl Api {
    /// An API over `ctx` (the local stack and tests build both themselves).
    pub fn new(ctx: Context, options: ApiOptions) -> Self {
        Self { ctx, options }
    }

    /// Builds everything from the environment (Lambda): the shared [`Context`] (Redis, MongoDB,
    /// gateway, broker, JWT verification) and [`ApiOptions::from_source`]. With
    /// `CODE_SENDER=local`, codes are also recorded in MongoDB's `code_outbox`.
    pub async fn from_env() -> anyhow::Result<Self> {
        let ctx = Context::from_env().await?;
        let mut options = ApiOptions::from_source(&Env)?;
        if Env.get("CODE_SENDER").as_deref() == Some("local") {
            let mongo = MongoConfig::from_source(&Env)?;
            let client = mongodb::Client::with_uri_str(&mongo.uri).await?;
            options.code_sender =
                Arc::new(LocalCodeSender::new(Some(client.database(&mongo.database))));
        }
        Ok(Self::new(ctx, options))
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The options.
    pub fn options(&self) -> &ApiOptions {
        &self.options
    }

    /// Counts one request of `subject` in `scope`; `rate_limited` when over `limit`.
    async fn limit(&self, scope: &str, subject: &str, limit: RateLimit) -> Result<u64> {
        self.ctx
            .realtime
            .rate_limit(scope, subject, limit, messaging::clock::now_ms())
            .await?
            .check()
    }
}

/// The routes of this function, each registered with its OpenAPI entry by `routes!` (a route
/// cannot exist without its documentation), before the gate is put in front of them.
fn documented_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::verify))
        .routes(routes!(accounts::resend))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::recover))
        .routes(routes!(accounts::refresh))
        .routes(routes!(accounts::logout))
        .routes(routes!(
            accounts::get_me,
            accounts::update_me,
            gdpr::delete_me
        ))
        .routes(routes!(gdpr::export_me))
        .routes(routes!(accounts::get_user))
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(
            conversations::get,
            conversations::update,
            conversations::delete
        ))
        .routes(routes!(conversations::messages))
        .routes(routes!(groups::create))
        .routes(routes!(groups::get, groups::update))
        .routes(routes!(groups::participants, groups::add_participants))
        .routes(routes!(groups::remove_participant))
        .routes(routes!(groups::leave))
        .routes(routes!(groups::promote))
        .routes(routes!(groups::demote))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::update, agents::delete))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(devices::list))
        .routes(routes!(devices::put, devices::delete))
        .routes(routes!(keys::publish, keys::delete))
        .routes(routes!(keys::user_keys))
        .routes(routes!(keys::claim))
        .routes(routes!(keys::send_to_device, keys::pending_to_device))
        .routes(routes!(keys::ack_to_device))
}

/// The published documents, outside the gate: free to fetch, and not rate limited.
fn document_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::asyncapi_json))
}

/// The api function as an `axum` router: every documented route behind the one [`Gate`]
/// (bearer token or operator key, rate limits), the documents, and JSON answers for unknown
/// paths (404) and methods (405 with `Allow`). Serve it with [`messaging::http::call`].
pub fn router(api: Api) -> axum::Router {
    let gate = Gate::new(
        api.ctx.jwt.clone(),
        api.ctx.realtime.clone(),
        Budget {
            scope: "api",
            limit: api.options.rate_limit,
        },
    )
    .anonymous(Budget {
        scope: "api-anon",
        limit: api.options.auth_rate_limit,
    })
    .operator_key(api.options.operator_key.clone());
    let (routes, _) = documented_routes().split_for_parts();
    let (documents, _) = document_routes().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(gate, gate::admit))
        .merge(documents)
        .fallback(messaging::http::no_route)
        .method_not_allowed_fallback(messaging::http::method_not_allowed)
        .with_state(api)
}

/// The OpenAPI 3 document of the whole HTTP API as published (`docs/contract/openapi.json`):
/// what `GET /openapi.json` serves. It covers the presign function's routes (`/v1/media`) too,
/// which this crate does not depend on: the document is generated by [`whole_document`] from
/// both functions' route registrations, and a test fails when the published file differs.
pub fn openapi() -> serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            serde_json::from_str(include_str!("../../../docs/contract/openapi.json"))
                .expect("docs/contract/openapi.json is JSON (a test writes it)")
        })
        .clone()
}

/// The document of this function's routes merged with `others` (the presign function's), with
/// the answers every operation can give: what is published as `docs/contract/openapi.json`.
pub fn whole_document(
    others: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> serde_json::Value {
    let mut document = documented_routes().merge(document_routes()).into_openapi();
    for other in others {
        document.merge(other);
    }
    docs::finish(document)
}

/// Answers one HTTP request (API Gateway's, Knative's or the local stack's) with `router`.
pub async fn handle(router: &axum::Router, request: Request) -> Response<Body> {
    messaging::http::call(router, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_configuration_name_the_bad_variable() {
        let secret = "s".repeat(32);
        let source = |vars: Vec<(&'static str, String)>| {
            move |var: &str| vars.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone())
        };
        let err = |vars| {
            ApiOptions::from_source(&source(vars))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(vec![]).contains("JWT_RS256_PRIVATE_KEY or JWT_HS256_SECRET"));
        assert!(err(vec![("JWT_HS256_SECRET", "short".into())]).contains("JWT_HS256_SECRET"));
        assert!(err(vec![("JWT_HS256_SECRET", secret.clone())]).contains("CODE_SENDER_URL"));
        assert!(
            err(vec![
                ("JWT_HS256_SECRET", secret.clone()),
                ("CODE_SENDER", "local".into()),
                ("OPERATOR_KEY", "short".into()),
            ])
            .contains("OPERATOR_KEY")
        );
        let options = ApiOptions::from_source(&source(vec![
            ("JWT_HS256_SECRET", secret),
            ("CODE_SENDER_URL", "https://sms.example.com/send".into()),
            ("API_RATE_PER_MINUTE", "10".into()),
            ("AUTH_RATE_PER_MINUTE", "7".into()),
            ("ACCESS_TOKEN_TTL_SECS", "60".into()),
        ]))
        .unwrap();
        assert_eq!(options.rate_limit.max, 10);
        assert_eq!(options.auth_rate_limit.max, 7);
        // The local stack reads the same limits onto its own options.
        let issuer = JwtIssuer::hs256(b"k", "i", "a");
        let local = ApiOptions::new(issuer)
            .with_limits_from(&source(vec![("AUTH_RATE_PER_MINUTE", "1000".into())]))
            .unwrap();
        assert_eq!(local.auth_rate_limit.max, 1000);
        assert!(
            ApiOptions::new(JwtIssuer::hs256(b"k", "i", "a"))
                .with_limits_from(&source(vec![("AUTH_RATE_PER_MINUTE", "many".into())]))
                .err()
                .unwrap()
                .to_string()
                .contains("AUTH_RATE_PER_MINUTE")
        );
        assert_eq!(options.access_token_ttl, Duration::from_secs(60));
        assert_eq!(options.code_ttl, Duration::from_secs(600));
        assert_eq!(options.code_max_attempts, 5);
    }
}
