//! `messaging.notification`: push notifications to a user's devices for messages no live
//! connection took (FCM HTTP v1, APNs over HTTP/2, Web Push to browsers, and a generic signed
//! webhook).
//!
//! For one event, in order:
//!
//! 1. **Dedupe.** Events arrive at least once; the first delivery of an event (its `source` and
//!    `id`) claims it in Redis (`claim_work("push", ...)`, with a lease), later ones send nothing
//!    once it is done, and are retried while it is in progress. When the work fails before
//!    anything could be decided (MongoDB or Redis down), the claim is released and the error
//!    (5xx) makes the broker retry; a sender that dies midway loses its claim with its lease,
//!    so the notification is sent by a redelivery rather than lost.
//! 2. **Payload.** Never the message: content is end-to-end encrypted. The sender's display name
//!    (looked up among users, then agents, when the event has none), the conversation and
//!    message ids, the message kind, and the badge (the user's total unread); with
//!    [`PushOptions::silent`], background notifications that only wake the app to sync.
//! 3. **Send.** To every registered device of the user ([`messaging::store::DeviceStore::devices_of`])
//!    through its platform's provider ([`fcm`], [`apns`], [`webpush`]), and once to the [`webhook`] when one
//!    is configured, concurrently. Each delivery is retried with exponential backoff on 408, 429
//!    and 5xx and on network errors, honouring `Retry-After` ([`retry`]). A device whose
//!    provider is not configured is skipped with a warning.
//! 4. **Invalid tokens** (FCM `UNREGISTERED`, APNs 410 and `BadDeviceToken`) are removed from
//!    the store; that device is done, not failed.
//! 5. **Dead letters.** A delivery that still fails (a permanent refusal, or retries used up)
//!    makes the notification a dead letter: recorded in MongoDB (`dead_letters`, with the
//!    failed devices by id and platform and the errors, never tokens), and `handle` returns an
//!    `invalid_request` error (HTTP 400) on purpose: a 4xx other than 404/408/409/429 is not
//!    retried by a Knative broker (or the local one), which would otherwise send again to the
//!    devices that did get it. The claim is kept, so any redelivery (EventBridge/Lambda retry
//!    every error) sends nothing and succeeds. If the dead letter cannot be stored, the claim
//!    is released and the storage error (5xx) asks for a retry instead.

#![warn(missing_docs)]

pub mod apns;
pub mod fcm;
pub mod payload;
pub mod retry;
pub mod webhook;
pub mod webpush;

use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use messaging::config::{ConfigError, Env, Source};
use messaging::context::Context;
use messaging::events::event_data;
use messaging::model::{DeadLetter, DeviceToken, Notification, PushPlatform, event_types};
use messaging::realtime::WorkClaim;
use messaging::telemetry::hashed_id;
use messaging::{Error, Result};
use serde::Deserialize;
use serde_json::json;

pub use apns::ApnsOptions;
pub use fcm::FcmOptions;
pub use payload::Payload;
pub use retry::RetryPolicy;
pub use webhook::WebhookOptions;
pub use webpush::WebPushOptions;

use retry::{Final, with_retries};

/// Scope of the dedupe claims in Redis.
pub const CLAIM_SCOPE: &str = "push";
/// `source` of the dead letters this function records.
pub const DEAD_LETTER_SOURCE: &str = "push";

/// Settings of the push function beyond the shared [`Context`]. A provider left `None` is not
/// used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// Firebase Cloud Messaging.
    pub fcm: Option<FcmOptions>,
    /// Apple Push Notification service.
    pub apns: Option<ApnsOptions>,
    /// The generic signed webhook.
    pub webhook: Option<WebhookOptions>,
    /// Web Push (browsers).
    pub web_push: Option<WebPushOptions>,
    /// Retries of each delivery.
    pub retry: RetryPolicy,
    /// Send background (silent) notifications that only make the app sync, instead of alerts.
    pub silent: bool,
    /// Timeout of one HTTP request to a provider.
    pub request_timeout: Duration,
}

impl PushOptions {
    /// How long sending one notification may take at most (every attempt timing out, every
    /// backoff at its longest): a redelivery takes the work over after this, never before, so a
    /// sender that died does not lose the notification and a slow one is not doubled.
    pub fn claim_lease(&self) -> Duration {
        let attempts = self.retry.max_attempts.max(1);
        (self.request_timeout + self.retry.max_backoff.max(self.retry.max_retry_after)) * attempts
    }
}

impl Default for PushOptions {
    /// No provider, [`RetryPolicy::default`], alerts, 10-second requests.
    fn default() -> Self {
        Self {
            fcm: None,
            apns: None,
            webhook: None,
            web_push: None,
            retry: RetryPolicy::default(),
            silent: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The JSON key file of a Google service account (the fields FCM needs).
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: Option<String>,
    client_email: String,
    private_key: String,
    token_uri: Option<String>,
}

fn http_url(
    src: &impl Source,
    var: &'static str,
) -> std::result::Result<Option<String>, ConfigError> {
    match src.get(var) {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(Some(url)),
        Some(_) => Err(ConfigError::Invalid {
            var,
            reason: "expected an http(s) URL".into(),
        }),
        None => Ok(None),
    }
}

fn pem(value: String) -> String {
    // Keys in environment variables often carry `\n` escapes instead of line breaks.
    if value.contains("\\n") && !value.contains('\n') {
        value.replace("\\n", "\n")
    } else {
        value
    }
}

impl PushOptions {
    /// Reads the options from configuration.
    ///
    /// - FCM (enabled by either `FCM_SERVICE_ACCOUNT_JSON` or `FCM_PROJECT_ID`):
    ///   `FCM_SERVICE_ACCOUNT_JSON` (the service account's JSON key), or `FCM_CLIENT_EMAIL` and
    ///   `FCM_PRIVATE_KEY` (PEM); `FCM_PROJECT_ID` (else the key's `project_id`);
    ///   `FCM_TOKEN_URI` (else the key's, else Google's); `FCM_ENDPOINT`
    ///   (`https://fcm.googleapis.com`).
    /// - APNs (enabled by `APNS_TEAM_ID`): `APNS_KEY_ID`, `APNS_PRIVATE_KEY` (PEM of the `.p8`
    ///   key), `APNS_TOPIC` (bundle id), `APNS_ENDPOINT` (`https://api.push.apple.com`),
    ///   `APNS_HTTP2_PRIOR_KNOWLEDGE` (false; h2c for local servers).
    /// - Webhook (enabled by `PUSH_WEBHOOK_URL`): `PUSH_WEBHOOK_SECRET` (at least 16 bytes).
    /// - Web Push (enabled by `WEB_PUSH_VAPID_PRIVATE_KEY`, a P-256 private key in PEM):
    ///   `WEB_PUSH_SUBJECT` (`mailto:` or `https:` contact for push services).
    /// - `PUSH_SILENT` (false), `PUSH_MAX_ATTEMPTS` (4), `PUSH_INITIAL_BACKOFF_MS` (500),
    ///   `PUSH_MAX_BACKOFF_MS` (8000), `PUSH_MAX_RETRY_AFTER_SECS` (30),
    ///   `PUSH_REQUEST_TIMEOUT_SECS` (10).
    ///
    /// Keys are checked here (they must sign), so a bad key stops the function at start.
    pub fn from_source(src: &impl Source) -> std::result::Result<Self, ConfigError> {
        let d = Self::default();
        let num = |var: &'static str, default: u64| messaging::config::parsed(src, var, default);
        let flag = |var: &'static str| -> std::result::Result<bool, ConfigError> {
            match src.get(var).as_deref().map(str::trim) {
                None => Ok(false),
                Some("1") | Some("true") | Some("yes") => Ok(true),
                Some("0") | Some("false") | Some("no") => Ok(false),
                Some(v) => Err(ConfigError::Invalid {
                    var,
                    reason: format!("`{v}`: expected true or false"),
                }),
            }
        };
        let required = |var: &'static str| src.get(var).ok_or(ConfigError::Missing(var));

        let fcm = match (
            src.get("FCM_SERVICE_ACCOUNT_JSON"),
            src.get("FCM_PROJECT_ID"),
        ) {
            (None, None) => None,
            (json, project) => {
                let account = match json {
                    Some(json) => {
                        Some(serde_json::from_str::<ServiceAccount>(&json).map_err(|e| {
                            ConfigError::Invalid {
                                var: "FCM_SERVICE_ACCOUNT_JSON",
                                reason: format!("not a service account key: {e}"),
                            }
                        })?)
                    }
                    None => None,
                };
                let (email, key, key_var) = match &account {
                    Some(a) => (
                        a.client_email.clone(),
                        a.private_key.clone(),
                        "FCM_SERVICE_ACCOUNT_JSON",
                    ),
                    None => (
                        required("FCM_CLIENT_EMAIL")?,
                        pem(required("FCM_PRIVATE_KEY")?),
                        "FCM_PRIVATE_KEY",
                    ),
                };
                fcm::check_key(&key).map_err(|reason| ConfigError::Invalid {
                    var: key_var,
                    reason: format!("not a usable RSA private key: {reason}"),
                })?;
                let project_id = project
                    .or_else(|| account.as_ref().and_then(|a| a.project_id.clone()))
                    .ok_or(ConfigError::Missing("FCM_PROJECT_ID"))?;
                Some(FcmOptions {
                    project_id,
                    client_email: email,
                    private_key_pem: key,
                    token_uri: http_url(src, "FCM_TOKEN_URI")?
                        .or_else(|| account.as_ref().and_then(|a| a.token_uri.clone()))
                        .unwrap_or_else(|| fcm::DEFAULT_TOKEN_URI.into()),
                    endpoint: http_url(src, "FCM_ENDPOINT")?
                        .unwrap_or_else(|| fcm::DEFAULT_ENDPOINT.into()),
                })
            }
        };

        let apns = match src.get("APNS_TEAM_ID") {
            None => None,
            Some(team_id) => {
                let key = pem(required("APNS_PRIVATE_KEY")?);
                apns::check_key(&key).map_err(|reason| ConfigError::Invalid {
                    var: "APNS_PRIVATE_KEY",
                    reason: format!("not a usable P-256 private key: {reason}"),
                })?;
                Some(ApnsOptions {
                    team_id,
                    key_id: required("APNS_KEY_ID")?,
                    private_key_pem: key,
                    topic: required("APNS_TOPIC")?,
                    endpoint: http_url(src, "APNS_ENDPOINT")?
                        .unwrap_or_else(|| apns::DEFAULT_ENDPOINT.into()),
                    http2_prior_knowledge: flag("APNS_HTTP2_PRIOR_KNOWLEDGE")?,
                })
            }
        };

        let webhook = match http_url(src, "PUSH_WEBHOOK_URL")? {
            None => None,
            Some(url) => {
                let secret = required("PUSH_WEBHOOK_SECRET")?;
                if secret.len() < 16 {
                    return Err(ConfigError::Invalid {
                        var: "PUSH_WEBHOOK_SECRET",
                        reason: "must be at least 16 bytes".into(),
                    });
                }
                Some(WebhookOptions { url, secret })
            }
        };

        let web_push = match src.get("WEB_PUSH_VAPID_PRIVATE_KEY") {
            None => None,
            Some(key) => {
                let key = pem(key);
                webpush::public_key(&key).map_err(|reason| ConfigError::Invalid {
                    var: "WEB_PUSH_VAPID_PRIVATE_KEY",
                    reason,
                })?;
                let subject = required("WEB_PUSH_SUBJECT")?;
                if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        var: "WEB_PUSH_SUBJECT",
                        reason: "a mailto: or https: contact".into(),
                    });
                }
                Some(WebPushOptions {
                    vapid_private_key_pem: key,
                    subject,
                })
            }
        };

        let max_attempts = num("PUSH_MAX_ATTEMPTS", d.retry.max_attempts.into())?;
        if !(1..=20).contains(&max_attempts) {
            return Err(ConfigError::Invalid {
                var: "PUSH_MAX_ATTEMPTS",
                reason: "must be between 1 and 20".into(),
            });
        }
        let millis = |d: Duration| d.as_millis() as u64;
        Ok(Self {
            fcm,
            apns,
            webhook,
            web_push,
            retry: RetryPolicy {
                max_attempts: max_attempts as u32,
                initial_backoff: Duration::from_millis(num(
                    "PUSH_INITIAL_BACKOFF_MS",
                    millis(d.retry.initial_backoff),
                )?),
                max_backoff: Duration::from_millis(num(
                    "PUSH_MAX_BACKOFF_MS",
                    millis(d.retry.max_backoff),
                )?),
                max_retry_after: Duration::from_secs(num(
                    "PUSH_MAX_RETRY_AFTER_SECS",
                    d.retry.max_retry_after.as_secs(),
                )?),
            },
            silent: flag("PUSH_SILENT")?,
            request_timeout: Duration::from_secs(
                num("PUSH_REQUEST_TIMEOUT_SECS", d.request_timeout.as_secs())?.max(1),
            ),
        })
    }
}

struct Inner {
    ctx: Context,
    options: PushOptions,
    http: reqwest::Client,
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    web_push: Option<webpush::WebPush>,
}

/// The push function: its context, providers and their cached credentials (the FCM access
/// token, the APNs provider JWT), built once per cold start. Cheap to clone (shared).
#[derive(Clone)]
pub struct Push {
    inner: Arc<Inner>,
}

impl Push {
    /// Builds the function from the environment: the shared [`Context`] and
    /// [`PushOptions::from_source`]. A missing or invalid value names its variable.
    pub async fn from_env() -> anyhow::Result<Self> {
        let ctx = Context::from_env().await?;
        let options = PushOptions::from_source(&Env)?;
        Ok(Self::new(ctx, options))
    }

    /// The function over this context with these options.
    pub fn new(ctx: Context, options: PushOptions) -> Self {
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "push: HTTP client with defaults");
                reqwest::Client::new()
            });
        let fcm = options.fcm.clone().map(|o| fcm::Fcm::new(o, http.clone()));
        let apns = options
            .apns
            .clone()
            .map(|o| apns::Apns::new(o, options.request_timeout));
        let web_push = options.web_push.clone().and_then(|o| {
            webpush::WebPush::new(o, http.clone())
                .inspect_err(|e| tracing::error!(error = %e, "web push: VAPID key unusable"))
                .ok()
        });
        Self {
            inner: Arc::new(Inner {
                ctx,
                options,
                http,
                fcm,
                apns,
                web_push,
            }),
        }
    }

    /// The shared context.
    pub fn ctx(&self) -> &Context {
        &self.inner.ctx
    }

    /// The options.
    pub fn options(&self) -> &PushOptions {
        &self.inner.options
    }
}

/// Where one delivery goes.
#[derive(Debug, Clone)]
enum Target {
    Device(DeviceToken),
    Webhook,
}

impl Target {
    fn describe(&self) -> serde_json::Value {
        match self {
            Self::Device(d) => json!({"device_id": d.device_id, "platform": d.platform}),
            Self::Webhook => json!({"provider": "webhook"}),
        }
    }
}

/// How one delivery ended.
struct Delivery {
    target: Target,
    end: Final,
    attempts: u32,
}

async fn deliver(push: &Push, target: Target, payload: &Payload) -> Option<Delivery> {
    let inner = &push.inner;
    let policy = &inner.options.retry;
    let (end, attempts) = match &target {
        Target::Device(device) => match device.platform {
            PushPlatform::Fcm => {
                let Some(fcm) = &inner.fcm else {
                    tracing::warn!(device = %device.device_id, "FCM is not configured: device skipped");
                    return None;
                };
                with_retries(policy, |_| fcm.send(&device.token, payload)).await
            }
            PushPlatform::Apns => {
                let Some(apns) = &inner.apns else {
                    tracing::warn!(device = %device.device_id, "APNs is not configured: device skipped");
                    return None;
                };
                with_retries(policy, |_| apns.send(&device.token, payload)).await
            }
            PushPlatform::Web => {
                let Some(web) = &inner.web_push else {
                    tracing::warn!(device = %device.device_id, "Web Push is not configured: device skipped");
                    return None;
                };
                with_retries(policy, |_| web.send(&device.token, payload)).await
            }
        },
        Target::Webhook => {
            let options = inner.options.webhook.as_ref()?;
            with_retries(policy, |_| webhook::send(&inner.http, options, payload)).await
        }
    };
    Some(Delivery {
        target,
        end,
        attempts,
    })
}

/// The sender's display name: from the event, else the user's or agent's name in the store.
async fn sender_name(push: &Push, note: &Notification) -> Result<Option<String>> {
    if let Some(name) = note.sender_name.as_ref().filter(|n| !n.trim().is_empty()) {
        return Ok(Some(name.clone()));
    }
    let store = &push.inner.ctx.store;
    if let Some(user) = store.user(&note.sender_id).await? {
        return Ok(Some(user.name));
    }
    Ok(store.agent(&note.sender_id).await?.map(|a| a.name))
}

/// What sending one notification came to.
struct Report {
    deliveries: Vec<Delivery>,
}

async fn send_all(push: &Push, event_id: &str, note: &Notification) -> Result<Report> {
    let inner = &push.inner;
    let mut note = note.clone();
    note.sender_name = sender_name(push, &note).await?;
    let payload = Payload::new(event_id, &note, inner.options.silent);
    let mut targets: Vec<Target> = inner
        .ctx
        .store
        .devices_of(&note.user_id)
        .await?
        .into_iter()
        .map(Target::Device)
        .collect();
    if inner.options.webhook.is_some() {
        targets.push(Target::Webhook);
    }
    let deliveries: Vec<Delivery> = futures::future::join_all(
        targets
            .into_iter()
            .map(|target| deliver(push, target, &payload)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    for d in &deliveries {
        if let (Target::Device(device), Final::InvalidToken(why)) = (&d.target, &d.end) {
            match inner
                .ctx
                .store
                .delete_device_token(&device.user_id, &device.device_id, &device.token)
                .await
            {
                Ok(_) => tracing::info!(
                    user = %hashed_id(&device.user_id),
                    device = %device.device_id,
                    reason = %why,
                    "invalid push token removed"
                ),
                // The provider will say so again next time; not worth failing the event.
                Err(e) => tracing::error!(error = %e, "could not remove an invalid push token"),
            }
        }
    }
    Ok(Report { deliveries })
}

/// Handles one `messaging.notification` event; see the module docs for what an error means to
/// the broker.
pub async fn handle(push: &Push, event: Event) -> Result<()> {
    if event.ty() != event_types::NOTIFICATION {
        return Err(Error::invalid(format!(
            "push consumes {}, not {}",
            event_types::NOTIFICATION,
            event.ty()
        )));
    }
    let note: Notification = event_data(&event)?;
    let ctx = &push.inner.ctx;
    let claim = format!("{} {}", event.source(), event.id());
    match ctx
        .realtime
        .claim_work(CLAIM_SCOPE, &claim, push.inner.options.claim_lease())
        .await?
    {
        WorkClaim::Claimed => {}
        WorkClaim::Done => {
            tracing::info!(event_id = %event.id(), "notification already handled; redelivery ignored");
            return Ok(());
        }
        WorkClaim::InProgress { retry_after } => {
            // Being sent, or its sender died: a retry after the lease sends it.
            return Err(Error::retry_later(
                "push",
                "this notification is being sent",
                retry_after,
            ));
        }
    }
    let release = || async {
        if let Err(e) = ctx.realtime.release_work(CLAIM_SCOPE, &claim).await {
            tracing::error!(error = %e, "could not release a push claim");
        }
    };
    let report = match send_all(push, event.id(), &note).await {
        Ok(report) => report,
        Err(e) => {
            release().await;
            return Err(e);
        }
    };
    // Decided (sent, or failed for good below): redeliveries send nothing.
    if let Err(e) = ctx.realtime.finish_work(CLAIM_SCOPE, &claim).await {
        tracing::warn!(error = %e, "push claim not marked done; a redelivery after its lease may send again");
    }
    let count = |f: fn(&Final) -> bool| report.deliveries.iter().filter(|d| f(&d.end)).count();
    let delivered = count(|e| matches!(e, Final::Delivered));
    let removed = count(|e| matches!(e, Final::InvalidToken(_)));
    let failed: Vec<&Delivery> = report
        .deliveries
        .iter()
        .filter(|d| matches!(d.end, Final::Failed(_)))
        .collect();
    tracing::info!(
        event_id = %event.id(),
        user = %hashed_id(&note.user_id),
        delivered,
        removed,
        failed = failed.len(),
        "notification sent"
    );
    if failed.is_empty() {
        return Ok(());
    }
    let errors: Vec<String> = failed
        .iter()
        .map(|d| match &d.end {
            Final::Failed(why) => why.clone(),
            _ => String::new(),
        })
        .collect();
    let payload = json!({
        "event_id": event.id(),
        "event_source": event.source().to_string(),
        "notification": note,
        "failed": failed
            .iter()
            .zip(&errors)
            .map(|(d, why)| json!({"target": d.target.describe(), "error": why, "attempts": d.attempts}))
            .collect::<Vec<_>>(),
        "delivered": delivered,
        "removed_tokens": removed,
    });
    let attempts = failed.iter().map(|d| d.attempts).max().unwrap_or(1);
    let summary = errors.join("; ");
    let dead = DeadLetter::new(
        DEAD_LETTER_SOURCE,
        event_types::NOTIFICATION,
        payload,
        summary.clone(),
        attempts,
    );
    if let Err(e) = ctx.store.insert_dead_letter(&dead).await {
        release().await;
        return Err(e);
    }
    tracing::error!(
        event_id = %event.id(),
        dead_letter = %dead.dead_letter_id,
        error = %summary,
        "notification failed for good"
    );
    Err(Error::invalid(format!(
        "notification {} could not be delivered ({summary}); dead letter {}",
        event.id(),
        dead.dead_letter_id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(vars: Vec<(&'static str, String)>) -> impl Source {
        move |var: &str| vars.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn no_provider_is_configured_by_default() {
        let options = PushOptions::from_source(&source(vec![])).unwrap();
        assert_eq!(options, PushOptions::default());
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let err = |vars| {
            PushOptions::from_source(&source(vars))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(vec![("FCM_PROJECT_ID", "p".into())]).contains("FCM_CLIENT_EMAIL"));
        assert!(
            err(vec![
                ("FCM_PROJECT_ID", "p".into()),
                ("FCM_CLIENT_EMAIL", "a@b".into()),
                ("FCM_PRIVATE_KEY", "not a key".into()),
            ])
            .contains("FCM_PRIVATE_KEY")
        );
        assert!(
            err(vec![("FCM_SERVICE_ACCOUNT_JSON", "{}".into())])
                .contains("FCM_SERVICE_ACCOUNT_JSON")
        );
        assert!(err(vec![("APNS_TEAM_ID", "T".into())]).contains("APNS_PRIVATE_KEY"));
        assert!(
            err(vec![
                ("APNS_TEAM_ID", "T".into()),
                ("APNS_PRIVATE_KEY", "nope".into()),
            ])
            .contains("APNS_PRIVATE_KEY")
        );
        assert!(
            err(vec![("PUSH_WEBHOOK_URL", "https://hooks.example".into())])
                .contains("PUSH_WEBHOOK_SECRET")
        );
        assert!(err(vec![("PUSH_WEBHOOK_URL", "ftp://x".into())]).contains("PUSH_WEBHOOK_URL"));
        assert!(err(vec![("PUSH_MAX_ATTEMPTS", "0".into())]).contains("PUSH_MAX_ATTEMPTS"));
        assert!(err(vec![("PUSH_SILENT", "maybe".into())]).contains("PUSH_SILENT"));
        let options = PushOptions::from_source(&source(vec![
            ("PUSH_WEBHOOK_URL", "https://hooks.example/push".into()),
            ("PUSH_WEBHOOK_SECRET", "0123456789abcdef".into()),
            ("PUSH_SILENT", "true".into()),
            ("PUSH_MAX_ATTEMPTS", "2".into()),
        ]))
        .unwrap();
        assert!(options.silent);
        assert_eq!(options.retry.max_attempts, 2);
        assert_eq!(
            options.webhook.unwrap().url,
            "https://hooks.example/push".to_string()
        );
    }
}
