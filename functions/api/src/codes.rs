//! Getting verification codes to people: the [`CodeSender`] port and its two adapters.
//!
//! [`HttpCodeSender`] POSTs each code as JSON to a configured endpoint, the way SMS providers'
//! and email services' HTTP APIs (or a small relay in front of an SMTP server) take them; a
//! non-2xx answer is a failure the client sees as `unavailable`. [`LocalCodeSender`] is for the
//! local stack and development: it sends nothing, records the code in MongoDB (collection
//! `code_outbox`, kept one day) and prints it, so a person can sign in without a phone.

use std::time::Duration;

use async_trait::async_trait;
use messaging::model::{CodeChannel, CodePurpose};
use messaging::store::collections;
use messaging::{Error, Result};
use mongodb::bson::{DateTime, doc};
use serde::Serialize;

/// One code to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeMessage {
    /// `sms` or `email`.
    pub channel: CodeChannel,
    /// The E.164 phone number or the email address.
    pub to: String,
    /// The six digits.
    pub code: String,
    /// What entering it does.
    pub purpose: CodePurpose,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
    /// A ready-to-send text for providers that take one.
    pub text: String,
}

impl CodeMessage {
    /// A message for `code` with the standard text.
    pub fn new(
        channel: CodeChannel,
        to: &str,
        code: &str,
        purpose: CodePurpose,
        expires_in: Duration,
    ) -> Self {
        let what = match purpose {
            CodePurpose::Register => "verification",
            CodePurpose::Login => "sign-in",
            CodePurpose::Recover => "account recovery",
        };
        Self {
            channel,
            to: to.to_string(),
            code: code.to_string(),
            purpose,
            expires_in_secs: expires_in.as_secs(),
            text: format!(
                "Your {what} code is {code}. It expires in {} minutes. Never share it.",
                expires_in.as_secs().div_ceil(60)
            ),
        }
    }
}

/// The port: delivers a verification code over SMS or email.
#[async_trait]
pub trait CodeSender: Send + Sync {
    /// Delivers one code; returns once the provider accepted it.
    async fn send(&self, message: &CodeMessage) -> Result<()>;
}

/// POSTs every code as JSON ([`CodeMessage`]) to an HTTP endpoint, with an optional bearer token.
#[derive(Clone, Debug)]
pub struct HttpCodeSender {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl HttpCodeSender {
    /// A sender posting to `url`, authenticated with `token` when given.
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            client,
            url: url.into(),
            token,
        }
    }
}

#[async_trait]
impl CodeSender for HttpCodeSender {
    async fn send(&self, message: &CodeMessage) -> Result<()> {
        let mut request = self.client.post(&self.url).json(message);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::dependency("code sender", e))?;
        if !response.status().is_success() {
            return Err(Error::dependency(
                "code sender",
                format!("provider answered {}", response.status()),
            ));
        }
        Ok(())
    }
}

/// Local use only: records codes in MongoDB (`code_outbox`) and prints them instead of sending.
#[derive(Clone, Debug, Default)]
pub struct LocalCodeSender {
    outbox: Option<mongodb::Database>,
}

impl LocalCodeSender {
    /// Records into `database` (when given) and prints every code on standard output.
    pub fn new(database: Option<mongodb::Database>) -> Self {
        Self { outbox: database }
    }
}

#[async_trait]
impl CodeSender for LocalCodeSender {
    async fn send(&self, message: &CodeMessage) -> Result<()> {
        if let Some(db) = &self.outbox {
            let destination = match message.channel {
                CodeChannel::Sms => format!("phone:{}", message.to),
                CodeChannel::Email => format!("email:{}", message.to),
            };
            let purpose = mongodb::bson::to_bson(&message.purpose)
                .map_err(|e| Error::dependency("bson", e))?;
            db.collection::<mongodb::bson::Document>(collections::CODE_OUTBOX)
                .insert_one(doc! {
                    "destination": destination,
                    "code": &message.code,
                    "purpose": purpose,
                    "created_at": DateTime::now(),
                })
                .await?;
        }
        // Deliberately printed, not logged: this sender exists so that a developer can read it.
        // It is the local stack's outbox only; deployments use the HTTP sender.
        println!(
            "[local code outbox - development only, never in production] {} code for {}: {}",
            crate::views::wire_name(&message.purpose),
            message.to,
            message.code
        );
        Ok(())
    }
}
