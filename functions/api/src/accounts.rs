//! Accounts and tokens: registration, verification codes, sign-in, refresh-token rotation with
//! reuse detection, sign-out, recovery, profiles.

use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use base64::Engine;
use messaging::model::{
    CodeChannel, CodePurpose, RefreshToken, RefreshUse, User, VerificationCode,
};
use messaging::protocol::PresenceStatus;
use messaging::{Error, ErrorCode, Result};
use mongodb::bson::DateTime;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

use crate::codes::CodeMessage;
use crate::views::{
    CodeSent, ContactRequest, ErrorBody, LoginRequest, LogoutRequest, Profile, PublicProfile,
    RefreshRequest, RegisterRequest, TokenPair, UpdateProfileRequest, VerifyRequest, wire_name,
};
use crate::{Api, HashCost};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Reply};

/// A phone number or email address, validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Contact {
    /// E.164.
    Phone(String),
    /// Lower-cased email address.
    Email(String),
}

impl Contact {
    /// Exactly one of `phone` and `email`, valid.
    pub(crate) fn parse(phone: Option<&str>, email: Option<&str>) -> Result<Self> {
        match (phone, email) {
            (Some(p), None) => Ok(Self::Phone(valid_phone(p)?)),
            (None, Some(e)) => Ok(Self::Email(valid_email(e)?)),
            (Some(_), Some(_)) => Err(Error::invalid("give `phone` or `email`, not both")),
            (None, None) => Err(Error::invalid("give `phone` (E.164) or `email`")),
        }
    }

    /// The key of its verification code.
    pub(crate) fn destination(&self) -> String {
        match self {
            Self::Phone(p) => format!("phone:{p}"),
            Self::Email(e) => format!("email:{e}"),
        }
    }

    fn channel(&self) -> CodeChannel {
        match self {
            Self::Phone(_) => CodeChannel::Sms,
            Self::Email(_) => CodeChannel::Email,
        }
    }

    fn address(&self) -> &str {
        match self {
            Self::Phone(p) | Self::Email(p) => p,
        }
    }

    /// Partly hidden, for answers (`+1415•••0123`, `a•••@example.com`).
    fn masked(&self) -> String {
        match self {
            Self::Phone(p) => {
                let keep = 4.min(p.len());
                format!("{}•••{}", &p[..p.len().min(5)], &p[p.len() - keep..])
            }
            Self::Email(e) => match e.split_once('@') {
                Some((local, domain)) => {
                    format!("{}•••@{domain}", local.chars().next().unwrap_or('?'))
                }
                None => "•••".into(),
            },
        }
    }

    /// The account with this phone or email.
    pub(crate) async fn account(&self, api: &Api) -> Result<Option<User>> {
        match self {
            Self::Phone(p) => api.ctx.store.user_by_phone(p).await,
            Self::Email(e) => api.ctx.store.user_by_email(e).await,
        }
    }
}

/// An E.164 number: `+`, a non-zero digit, 7 to 15 digits in all.
pub(crate) fn valid_phone(phone: &str) -> Result<String> {
    let phone = phone.trim();
    let digits = phone.strip_prefix('+').unwrap_or_default();
    if digits.len() < 7
        || digits.len() > 15
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(Error::invalid(
            "phone must be in E.164 form: + and 7 to 15 digits, e.g. +14155550123",
        ));
    }
    Ok(phone.to_string())
}

/// A plausible email address, lower-cased.
pub(crate) fn valid_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let ok = email.chars().count() <= 254
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && local.chars().count() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                    && !local.bytes().any(|b| b.is_ascii_whitespace() || b == b'"')
            }
            None => false,
        };
    if !ok {
        return Err(Error::invalid("email is not a valid address"));
    }
    Ok(email)
}

/// A display name: 1 to 100 characters after trimming, no control characters.
pub(crate) fn valid_name(name: &str, what: &str) -> Result<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} must be 1 to 100 characters without control characters"
        )));
    }
    Ok(name.to_string())
}

/// An http(s) URL of at most 2048 characters: `http://` or `https://`, a host, and no spaces
/// (the published schema's pattern). Kept as given: clients and the broker resolve it.
pub(crate) fn valid_url(url: &str, what: &str) -> Result<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let ok = url.chars().count() <= 2048
        && !url.chars().any(char::is_whitespace)
        && host.is_some_and(|h| !h.is_empty());
    if !ok {
        return Err(Error::invalid(format!(
            "{what} must be an http(s) URL of at most 2048 characters"
        )));
    }
    Ok(url.to_string())
}

fn valid_password(password: &str) -> Result<&str> {
    let chars = password.chars().count();
    if !(8..=128).contains(&chars) {
        return Err(Error::invalid("password must be 8 to 128 characters"));
    }
    Ok(password)
}

fn valid_device_id(device_id: Option<String>) -> Result<String> {
    match device_id {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(d)
            if !d.is_empty()
                && d.len() <= 128
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)) =>
        {
            Ok(d)
        }
        Some(_) => Err(Error::invalid(
            "device_id must be 1 to 128 of A-Z, a-z, 0-9, `-`, `_`, `:`",
        )),
    }
}

fn argon2(cost: HashCost) -> Result<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| Error::dependency("argon2", e))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The argon2id PHC string of `secret` (on a blocking thread: it is slow on purpose).
pub(crate) async fn hash_secret(api: &Api, secret: &str) -> Result<String> {
    let hasher = argon2(api.options.hash_cost)?;
    let secret = secret.to_string();
    tokio::task::spawn_blocking(move || {
        hasher
            .hash_password(secret.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::dependency("argon2", e))
    })
    .await
    .map_err(|e| Error::dependency("argon2", e))?
}

/// Whether `secret` matches the PHC string `hash`.
pub(crate) async fn verify_secret(api: &Api, secret: &str, hash: &str) -> Result<bool> {
    let verifier = argon2(api.options.hash_cost)?;
    let (secret, hash) = (secret.to_string(), hash.to_string());
    tokio::task::spawn_blocking(move || {
        verifier
            .verify_password(secret.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .map_err(|e| Error::dependency("argon2", e))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn after(now: DateTime, d: Duration) -> DateTime {
    DateTime::from_millis(now.timestamp_millis() + d.as_millis() as i64)
}

fn secs_until(now: DateTime, then: DateTime) -> u64 {
    let ms = (then.timestamp_millis() - now.timestamp_millis()).max(0) as u64;
    ms.div_ceil(1000).max(1)
}

/// Limits sign-in traffic per phone number or email, whatever the client address.
async fn limit_contact(api: &Api, contact: &Contact) -> Result<()> {
    let subject = sha256_hex(&contact.destination());
    api.limit("api-contact", &subject, api.options.auth_rate_limit)
        .await
        .map(|_| ())
}

/// Sends a new code to `contact` for `purpose`, within the resend throttle.
async fn send_code(
    api: &Api,
    contact: &Contact,
    purpose: CodePurpose,
    user_id: Option<String>,
    name: Option<String>,
    password_hash: Option<String>,
) -> Result<CodeSent> {
    let store = &api.ctx.store;
    let options = &api.options;
    let destination = contact.destination();
    let now = DateTime::now();
    let previous = store.verification_code(&destination).await?;
    let (sends, window_started_at) = match &previous {
        Some(p) if after(p.window_started_at, options.code_send_window) > now => {
            let next_allowed = after(p.last_sent_at, options.code_resend_interval);
            if next_allowed > now {
                return Err(Error::RateLimited {
                    retry_after_secs: secs_until(now, next_allowed),
                });
            }
            if p.sends >= options.code_max_sends {
                return Err(Error::RateLimited {
                    retry_after_secs: secs_until(
                        now,
                        after(p.window_started_at, options.code_send_window),
                    ),
                });
            }
            (p.sends + 1, p.window_started_at)
        }
        _ => (1, now),
    };
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let code_hash = hash_secret(api, &code).await?;
    let expires_at = after(now, options.code_ttl);
    let window_end = after(window_started_at, options.code_send_window);
    let record = VerificationCode {
        destination: destination.clone(),
        channel: contact.channel(),
        purpose,
        code_hash: code_hash.clone(),
        attempts: 0,
        sends,
        window_started_at,
        last_sent_at: now,
        expires_at,
        purge_at: if window_end > expires_at {
            window_end
        } else {
            expires_at
        },
        user_id,
        name,
        password_hash,
    };
    store.put_verification_code(&record).await?;
    let message = CodeMessage::new(
        contact.channel(),
        contact.address(),
        &code,
        purpose,
        options.code_ttl,
    );
    if let Err(e) = options.code_sender.send(&message).await {
        // Not sent: do not let the throttle hold the person back for our provider's failure.
        match previous {
            Some(p) => store.put_verification_code(&p).await?,
            None => {
                store
                    .delete_verification_code(&destination, Some(&code_hash))
                    .await?;
            }
        }
        return Err(e);
    }
    Ok(CodeSent {
        channel: wire_name(&contact.channel()),
        destination: contact.masked(),
        purpose: wire_name(&purpose),
        expires_in: options.code_ttl.as_secs(),
        resend_after: options.code_resend_interval.as_secs(),
    })
}

/// Issues an access token and a refresh token (of `family`, or of a new family).
async fn issue_tokens(
    api: &Api,
    user: &User,
    device_id: String,
    family: Option<String>,
) -> Result<TokenPair> {
    let options = &api.options;
    let mut claims = options
        .issuer
        .claims(&user.user_id, options.access_token_ttl);
    claims.device_id = Some(device_id.clone());
    let access_token = options.issuer.sign(&claims)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let refresh_token = format!(
        "rt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let now = DateTime::now();
    api.ctx
        .store
        .insert_refresh_token(&RefreshToken {
            token_hash: sha256_hex(&refresh_token),
            family_id: family.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            user_id: user.user_id.clone(),
            device_id: Some(device_id),
            created_at: now,
            expires_at: after(now, options.refresh_token_ttl),
            used_at: None,
            revoked_at: None,
        })
        .await?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in: options.access_token_ttl.as_secs(),
        refresh_token,
        refresh_expires_in: options.refresh_token_ttl.as_secs(),
        user: Profile::from(user),
    })
}

/// Register with a phone number or email address.
#[utoipa::path(
    operation_id = "register",
    post, path = "/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 202, description = "A verification code was sent", body = CodeSent),
        (status = 400, description = "Invalid phone, email, name or password", body = ErrorBody),
        (status = 409, description = "An account with this phone or email exists", body = ErrorBody),
        (status = 429, description = "Too many requests or codes; see Retry-After", body = ErrorBody),
        (status = 503, description = "The code could not be sent", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    State(ref api): State<Api>,
    Json(request): Json<RegisterRequest>,
) -> Result<Reply> {
    let contact = Contact::parse(request.contact.phone(), request.contact.email())?;
    limit_contact(api, &contact).await?;
    let name = valid_name(&request.name, "name")?;
    let password_hash = match &request.password {
        Some(p) => Some(hash_secret(api, valid_password(p)?).await?),
        None => None,
    };
    if contact.account(api).await?.is_some() {
        return Err(Error::client(
            ErrorCode::Conflict,
            "an account with this phone number or email exists; sign in or recover it",
        ));
    }
    let sent = send_code(
        api,
        &contact,
        CodePurpose::Register,
        None,
        Some(name),
        password_hash,
    )
    .await?;
    Reply::json(202, &sent)
}

/// Send a new code for whatever is pending (registration, sign-in or recovery).
#[utoipa::path(
    operation_id = "resendCode",
    post, path = "/v1/auth/resend", tag = "auth",
    request_body = ContactRequest,
    responses(
        (status = 202, description = "A new code was sent", body = CodeSent),
        (status = 404, description = "No code is pending for this phone or email", body = ErrorBody),
        (status = 429, description = "Asked too soon or too often; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn resend(
    State(ref api): State<Api>,
    Json(request): Json<ContactRequest>,
) -> Result<Reply> {
    let contact = Contact::parse(request.contact.phone(), request.contact.email())?;
    limit_contact(api, &contact).await?;
    let pending = api
        .ctx
        .store
        .verification_code(&contact.destination())
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "no code is pending for this phone number or email; register, sign in or recover first",
            )
        })?;
    let sent = send_code(
        api,
        &contact,
        pending.purpose,
        pending.user_id,
        pending.name,
        pending.password_hash,
    )
    .await?;
    Reply::json(202, &sent)
}

/// Enter a code: creates the account (201), signs in or recovers it (200).
#[utoipa::path(
    operation_id = "verifyCode",
    post, path = "/v1/auth/verify", tag = "auth",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in (code sign-in or recovery)", body = TokenPair),
        (status = 201, description = "Account created and signed in", body = TokenPair),
        (status = 401, description = "Wrong code (attempts left in the message)", body = ErrorBody),
        (status = 403, description = "Too many wrong codes: request a new one", body = ErrorBody),
        (status = 404, description = "No code pending for this phone or email, or it expired: request one", body = ErrorBody),
        (status = 409, description = "The code was used already (a concurrent entry)", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    )
)]
pub(crate) async fn verify(
    State(ref api): State<Api>,
    Json(request): Json<VerifyRequest>,
) -> Result<Reply> {
    let contact = Contact::parse(request.contact.phone(), request.contact.email())?;
    limit_contact(api, &contact).await?;
    let code = request.code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("code must be the six digits that were sent"));
    }
    let device_id = valid_device_id(request.device_id.clone())?;
    let new_password = match &request.new_password {
        Some(p) => Some(valid_password(p)?.to_string()),
        None => None,
    };
    let store = &api.ctx.store;
    let destination = contact.destination();
    let now = DateTime::now();
    let max = api.options.code_max_attempts;
    let Some(record) = store.count_code_attempt(&destination, max, now).await? else {
        return Err(match store.verification_code(&destination).await? {
            None => Error::not_found(
                "no code is pending for this phone number or email; request one first",
            ),
            Some(r) if r.expires_at <= now => {
                Error::not_found("the code has expired; request a new one")
            }
            Some(_) => Error::forbidden("too many wrong codes; request a new one"),
        });
    };
    if !verify_secret(api, code, &record.code_hash).await? {
        let left = max.saturating_sub(record.attempts + 1);
        return Err(Error::client(
            ErrorCode::Unauthenticated,
            if left == 0 {
                "wrong code; no attempts left, request a new one".to_string()
            } else {
                format!("wrong code; {left} attempts left")
            },
        ));
    }
    if !store
        .delete_verification_code(&destination, Some(&record.code_hash))
        .await?
    {
        return Err(Error::client(
            ErrorCode::Conflict,
            "this code was already used",
        ));
    }
    match record.purpose {
        CodePurpose::Register => {
            let (phone, email) = match &contact {
                Contact::Phone(p) => (Some(p.clone()), None),
                Contact::Email(e) => (None, Some(e.clone())),
            };
            let user = User {
                user_id: uuid::Uuid::new_v4().to_string(),
                phone,
                email,
                name: record.name.clone().unwrap_or_else(|| "New user".into()),
                avatar_url: None,
                created_at: now,
                last_seen: None,
                status: PresenceStatus::Offline,
            };
            store.insert_user(&user).await?;
            if let Some(hash) = &record.password_hash {
                store.set_password_hash(&user.user_id, hash).await?;
            }
            tracing::info!(user = %messaging::telemetry::hashed_id(&user.user_id), "account created");
            Reply::json(201, &issue_tokens(api, &user, device_id, None).await?)
        }
        CodePurpose::Login | CodePurpose::Recover => {
            let user_id = record.user_id.as_deref().unwrap_or_default();
            let user = store
                .user(user_id)
                .await?
                .ok_or_else(|| Error::not_found("the account no longer exists"))?;
            if record.purpose == CodePurpose::Recover {
                let revoked = store
                    .revoke_refresh_tokens_of(&user.user_id, DateTime::now())
                    .await?;
                if let Some(password) = &new_password {
                    let hash = hash_secret(api, password).await?;
                    store.set_password_hash(&user.user_id, &hash).await?;
                }
                tracing::info!(
                    user = %messaging::telemetry::hashed_id(&user.user_id),
                    revoked,
                    "account recovered"
                );
            }
            Reply::ok(&issue_tokens(api, &user, device_id, None).await?)
        }
    }
}

/// Sign in with a password (200 with tokens), or without one to get a sign-in code (202).
#[utoipa::path(
    operation_id = "login",
    post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 202, description = "A sign-in code was sent", body = CodeSent),
        (status = 401, description = "Wrong phone, email or password", body = ErrorBody),
        (status = 404, description = "No account (code sign-in)", body = ErrorBody),
        (status = 429, description = "Too many requests or codes", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(ref api): State<Api>,
    Json(request): Json<LoginRequest>,
) -> Result<Reply> {
    let contact = Contact::parse(request.contact.phone(), request.contact.email())?;
    limit_contact(api, &contact).await?;
    let user = contact.account(api).await?;
    let Some(password) = &request.password else {
        let user = user.ok_or_else(|| {
            Error::not_found("no account with this phone number or email; register first")
        })?;
        let sent = send_code(
            api,
            &contact,
            CodePurpose::Login,
            Some(user.user_id),
            None,
            None,
        )
        .await?;
        return Reply::json(202, &sent);
    };
    let device_id = valid_device_id(request.device_id.clone())?;
    let hash = match &user {
        Some(u) => api.ctx.store.password_hash(&u.user_id).await?,
        None => None,
    };
    let matches = match &hash {
        Some(hash) => verify_secret(api, password, hash).await?,
        None => {
            // Spend the same time as a real check, so timing does not tell accounts apart.
            let _ = hash_secret(api, password).await?;
            false
        }
    };
    match user {
        Some(user) if matches => Reply::ok(&issue_tokens(api, &user, device_id, None).await?),
        _ => Err(Error::client(
            ErrorCode::Unauthenticated,
            "wrong phone number, email or password",
        )),
    }
}

/// Send a recovery code to the account's verified phone number or email.
#[utoipa::path(
    operation_id = "recoverAccount",
    post, path = "/v1/auth/recover", tag = "auth",
    request_body = ContactRequest,
    responses(
        (status = 202, description = "A recovery code was sent; enter it at /v1/auth/verify", body = CodeSent),
        (status = 404, description = "No account with this phone or email", body = ErrorBody),
        (status = 429, description = "Too many requests or codes", body = ErrorBody),
    )
)]
pub(crate) async fn recover(
    State(ref api): State<Api>,
    Json(request): Json<ContactRequest>,
) -> Result<Reply> {
    let contact = Contact::parse(request.contact.phone(), request.contact.email())?;
    limit_contact(api, &contact).await?;
    let user = contact
        .account(api)
        .await?
        .ok_or_else(|| Error::not_found("no account with this phone number or email"))?;
    let sent = send_code(
        api,
        &contact,
        CodePurpose::Recover,
        Some(user.user_id),
        None,
        None,
    )
    .await?;
    Reply::json(202, &sent)
}

/// Exchange a refresh token for a new pair (rotation; a reused token revokes its family).
#[utoipa::path(
    operation_id = "refreshTokens",
    post, path = "/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens; the old refresh token is spent", body = TokenPair),
        (status = 401, description = "Unknown, expired, revoked or reused token (reuse revokes every token of the sign-in)", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    )
)]
pub(crate) async fn refresh(
    State(ref api): State<Api>,
    Json(request): Json<RefreshRequest>,
) -> Result<Reply> {
    let store = &api.ctx.store;
    let hash = sha256_hex(request.refresh_token.trim());
    let invalid = |why: &str| Error::client(ErrorCode::InvalidToken, why.to_string());
    match store.use_refresh_token(&hash, DateTime::now()).await? {
        RefreshUse::Rotated(token) => {
            let user = store
                .user(&token.user_id)
                .await?
                .ok_or_else(|| invalid("the account no longer exists"))?;
            let device_id = token
                .device_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            Reply::ok(&issue_tokens(api, &user, device_id, Some(token.family_id)).await?)
        }
        RefreshUse::Reused(token) => {
            let revoked = store
                .revoke_refresh_family(&token.family_id, DateTime::now())
                .await?;
            tracing::warn!(
                user = %messaging::telemetry::hashed_id(&token.user_id),
                revoked,
                "refresh token reused: family revoked"
            );
            Err(invalid(
                "refresh token was already used: every session of this sign-in is revoked; sign in again",
            ))
        }
        RefreshUse::Revoked(_) => Err(invalid("refresh token was revoked; sign in again")),
        RefreshUse::Expired(_) => Err(Error::client(
            ErrorCode::TokenExpired,
            "refresh token has expired; sign in again",
        )),
        RefreshUse::Unknown => Err(invalid("unknown refresh token")),
    }
}

/// Sign out: revoke this session's refresh tokens (or every session with `everywhere`).
#[utoipa::path(
    operation_id = "logout",
    post, path = "/v1/auth/logout", tag = "auth",
    request_body = LogoutRequest,
    responses(
        (status = 204, description = "Signed out (also for an unknown token)"),
        (status = 429, description = "Too many requests", body = ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(ref api): State<Api>,
    Json(request): Json<LogoutRequest>,
) -> Result<Reply> {
    let store = &api.ctx.store;
    if let Some(token) = store
        .refresh_token(&sha256_hex(request.refresh_token.trim()))
        .await?
    {
        let now = DateTime::now();
        if request.everywhere {
            store.revoke_refresh_tokens_of(&token.user_id, now).await?;
        } else {
            store.revoke_refresh_family(&token.family_id, now).await?;
        }
    }
    Reply::no_content()
}

/// The caller's profile.
#[utoipa::path(
    operation_id = "getMe",
    get, path = "/v1/me", tag = "profile", security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile", body = Profile),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "The account no longer exists", body = ErrorBody),
    )
)]
pub(crate) async fn get_me(State(ref api): State<Api>, caller: Caller) -> Result<Reply> {
    let user = api
        .ctx
        .store
        .user(caller.user_id()?)
        .await?
        .ok_or_else(|| Error::not_found("the account no longer exists"))?;
    Reply::ok(&Profile::from(&user))
}

/// Change the caller's name and avatar.
#[utoipa::path(
    operation_id = "updateMe",
    patch, path = "/v1/me", tag = "profile", security(("bearer" = [])),
    request_body = UpdateProfileRequest,
    responses(
        (status = 200, description = "The updated profile", body = Profile),
        (status = 400, description = "Invalid name or avatar URL", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "The account no longer exists", body = ErrorBody),
    )
)]
pub(crate) async fn update_me(
    State(ref api): State<Api>,
    caller: Caller,
    Json(request): Json<UpdateProfileRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let name = request
        .name
        .as_deref()
        .map(|n| valid_name(n, "name"))
        .transpose()?;
    let avatar = match &request.avatar_url {
        Some(Some(url)) => Some(Some(valid_url(url, "avatar_url")?)),
        Some(None) => Some(None),
        None => None,
    };
    let user = api
        .ctx
        .store
        .update_profile(
            user_id,
            name.as_deref(),
            avatar.as_ref().map(|a| a.as_deref()),
        )
        .await?
        .ok_or_else(|| Error::not_found("the account no longer exists"))?;
    Reply::ok(&Profile::from(&user))
}

/// Someone's public profile (yourself, or someone you share a conversation with).
#[utoipa::path(
    operation_id = "getUser",
    get, path = "/v1/users/{user_id}", tag = "profile", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Name and avatar", body = PublicProfile),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "No such user, or no conversation in common", body = ErrorBody),
    )
)]
pub(crate) async fn get_user(
    State(ref api): State<Api>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Reply> {
    let me = caller.user_id()?;
    let other = user_id.as_str();
    let not_found = || Error::not_found(format!("user {other} not found"));
    if !messaging::conversations::is_contact(&api.ctx, me, other).await? {
        return Err(not_found());
    }
    let user = api.ctx.store.user(other).await?.ok_or_else(not_found)?;
    Reply::ok(&PublicProfile::from(&user))
}

/// Fails unless the caller's account still exists (a deleted account's access token lives on
/// for minutes; routes that create data check this).
pub(crate) async fn require_account(api: &Api, user_id: &str) -> Result<User> {
    api.ctx.store.user(user_id).await?.ok_or_else(|| {
        Error::client(
            ErrorCode::Unauthenticated,
            "the account of this token no longer exists",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_validated_and_normalised() {
        assert_eq!(
            Contact::parse(Some("+14155550123"), None).unwrap(),
            Contact::Phone("+14155550123".into())
        );
        assert!(Contact::parse(Some("14155550123"), None).is_err());
        assert!(Contact::parse(Some("+0415555"), None).is_err());
        assert!(Contact::parse(Some("+1415555012345678"), None).is_err());
        assert_eq!(
            Contact::parse(None, Some(" Alice@Example.COM ")).unwrap(),
            Contact::Email("alice@example.com".into())
        );
        assert!(Contact::parse(None, Some("alice@localhost")).is_err());
        assert!(Contact::parse(None, Some("no-at-sign")).is_err());
        assert!(Contact::parse(Some("+14155550123"), Some("a@b.co")).is_err());
        assert!(Contact::parse(None, None).is_err());
        assert_eq!(
            Contact::Phone("+14155550123".into()).masked(),
            "+1415•••0123"
        );
        assert_eq!(
            Contact::Email("alice@example.com".into()).masked(),
            "a•••@example.com"
        );
    }
}
