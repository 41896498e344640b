//! The key directory (end-to-end encryption): devices publish their identity keys, one-time
//! keys and fallback key; contacts read a user's devices and claim one key per device to start
//! Olm sessions. The server checks every signature (`messaging::e2ee::directory`) but holds no
//! private key.
//!
//! Who sees what: a user's devices and keys only to the user and to people sharing a
//! conversation with them (else 404, as for profiles). A token issued to a device may publish
//! keys for that device only. Changes are told over the WebSocket: a new or removed device
//! sends `device_list` to every contact's connections; a claim that leaves a device fewer than
//! [`LOW_ONE_TIME_KEYS`] one-time keys sends `one_time_keys_low` to that device.

use std::collections::BTreeSet;

use axum::extract::State;
use messaging::e2ee::{DeviceKeys, KeyKind};
use messaging::http::{Caller, Json, Path, Reply};
use messaging::protocol::{DeviceListPayload, KeysLowPayload, ServerFrame};
use messaging::store::Published;
use messaging::{Error, ErrorCode, Result};

use crate::Api;
use crate::views::{
    AckToDeviceRequest, ClaimRequest, ClaimResponse, ClaimedKeyView, DeviceRef, ErrorBody,
    KeyCounts, PendingToDevice, PublishKeysRequest, SendToDeviceRequest, ToDeviceSent, UserKeys,
};

/// Below this many one-time keys left, a claim tells the device to publish more.
pub const LOW_ONE_TIME_KEYS: u64 = 10;

/// Publish a device's keys (its identity once, one-time and fallback keys any time).
#[utoipa::path(
    operation_id = "publishKeys",
    put, path = "/v1/keys/{device_id}", tag = "keys", security(("bearer" = [])),
    params(("device_id" = String, Path, pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$", max_length = 128, description = "The device (as in tokens and connections)")),
    request_body = PublishKeysRequest,
    responses(
        (status = 200, description = "What the directory now holds for the device", body = KeyCounts),
        (status = 400, description = "A key or signature does not verify, or too many one-time keys", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "The token belongs to another device", body = ErrorBody),
        (status = 409, description = "The device published other identity keys (delete them first)", body = ErrorBody),
    )
)]
pub(crate) async fn publish(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
    Json(request): Json<PublishKeysRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    messaging::ids::check("device_id", &device_id)?;
    own_device(&caller, &device_id)?;
    if request.one_time_keys.len() > 100 {
        return Err(Error::invalid("at most 100 one-time keys per upload"));
    }
    let keys = DeviceKeys {
        user_id: user_id.to_string(),
        device_id: device_id.clone(),
        identity: request.identity,
        signature: request.signature,
    };
    keys.verify()?;
    let mut ids = BTreeSet::new();
    for key in &request.one_time_keys {
        key.verify(
            KeyKind::OneTime,
            user_id,
            &device_id,
            &keys.identity.ed25519,
        )?;
        if !ids.insert(&key.key_id) {
            return Err(Error::invalid(format!(
                "key_id {} appears twice",
                key.key_id
            )));
        }
    }
    if let Some(fallback) = &request.fallback_key {
        fallback.verify(
            KeyKind::Fallback,
            user_id,
            &device_id,
            &keys.identity.ed25519,
        )?;
    }
    // People with an account, and agents (a token whose subject is a registered agent).
    if api.ctx.store.user(user_id).await?.is_none() && api.ctx.store.agent(user_id).await?.is_none()
    {
        crate::accounts::require_account(api, user_id).await?;
    }
    match api.ctx.store.publish_device(&keys).await? {
        Published::Conflict => {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!(
                    "device {device_id} published other identity keys: delete them first (DELETE /v1/keys/{device_id})"
                ),
            ));
        }
        Published::New => tell_contacts(api, user_id).await,
        Published::Unchanged => {}
    }
    let count = api
        .ctx
        .store
        .add_keys(
            user_id,
            &device_id,
            &request.one_time_keys,
            request.fallback_key.as_ref(),
        )
        .await?;
    let record = api.ctx.store.device_key_record(user_id, &device_id).await?;
    Reply::ok(&KeyCounts {
        one_time_key_count: count,
        has_fallback_key: record.is_some_and(|r| r.fallback_key.is_some()),
    })
}

/// Remove a device from the directory (a lost or reset device), with its keys and its queue.
#[utoipa::path(
    operation_id = "deleteKeys",
    delete, path = "/v1/keys/{device_id}", tag = "keys", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "One of the caller's devices")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "The device published no keys", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    messaging::ids::check("device_id", &device_id)?;
    if !api
        .ctx
        .store
        .delete_device_keys(user_id, &device_id)
        .await?
    {
        return Err(Error::not_found(format!(
            "device {device_id} published no keys"
        )));
    }
    tell_contacts(api, user_id).await;
    Reply::no_content()
}

/// A user's devices and their identity keys (the user, or someone sharing a conversation).
#[utoipa::path(
    operation_id = "getUserKeys",
    get, path = "/v1/users/{user_id}/keys", tag = "keys", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The user's published devices", body = UserKeys),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "No such user, or no conversation in common", body = ErrorBody),
    )
)]
pub(crate) async fn user_keys(
    State(ref api): State<Api>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Reply> {
    let me = caller.user_id()?;
    visible(api, me, &user_id).await?;
    let devices = api.ctx.store.device_keys_of(&user_id).await?;
    Reply::ok(&UserKeys { user_id, devices })
}

/// Claim one key of each of several devices (a one-time key, each handed out once; the
/// fallback key when none is left).
#[utoipa::path(
    operation_id = "claimKeys",
    post, path = "/v1/keys/claim", tag = "keys", security(("bearer" = [])),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "One key per device that had one", body = ClaimResponse),
        (status = 400, description = "No or too many devices", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "A user shares no conversation with the caller", body = ErrorBody),
    )
)]
pub(crate) async fn claim(
    State(ref api): State<Api>,
    caller: Caller,
    Json(request): Json<ClaimRequest>,
) -> Result<Reply> {
    let me = caller.user_id()?;
    if request.devices.is_empty() || request.devices.len() > 200 {
        return Err(Error::invalid("devices must name 1 to 200 devices"));
    }
    let devices: BTreeSet<DeviceRef> = request.devices.into_iter().collect();
    let users: BTreeSet<&str> = devices.iter().map(|d| d.user_id.as_str()).collect();
    for user in users {
        visible(api, me, user).await?;
    }
    let claims = devices.iter().map(|d| async move {
        let claimed = api.ctx.store.claim_key(&d.user_id, &d.device_id).await?;
        Ok::<_, Error>((d, claimed))
    });
    let mut response = ClaimResponse {
        keys: Vec::new(),
        missing: Vec::new(),
    };
    for outcome in futures::future::join_all(claims).await {
        let (device, claimed) = outcome?;
        let Some(claimed) = claimed else {
            response.missing.push(device.clone());
            continue;
        };
        if claimed.remaining < LOW_ONE_TIME_KEYS {
            tell_low(api, device, claimed.remaining).await;
        }
        response.keys.push(ClaimedKeyView {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            key: claimed.key,
            fallback: claimed.fallback,
        });
    }
    Reply::ok(&response)
}

/// Send `to_device` messages from one of the caller's devices (for devices without a WebSocket:
/// agents; apps use the `to_device` frame).
#[utoipa::path(
    operation_id = "sendToDevice",
    post, path = "/v1/keys/{device_id}/to_device", tag = "keys", security(("bearer" = [])),
    params(("device_id" = String, Path, pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$", max_length = 128, description = "The sending device (one of the caller's)")),
    request_body = SendToDeviceRequest,
    responses(
        (status = 200, description = "Stored, and posted to the receiving devices' live connections", body = ToDeviceSent),
        (status = 400, description = "Not 1 to 100 messages, or a content that is not an Olm envelope", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "The token belongs to another device", body = ErrorBody),
        (status = 404, description = "A user shares no conversation with the caller, or a device published no keys", body = ErrorBody),
        (status = 413, description = "A content is too large", body = ErrorBody),
        (status = 429, description = "A receiving device's queue is full", body = ErrorBody),
        (status = 503, description = "Stored, but a device could not be reached: send the same messages again", body = ErrorBody),
    )
)]
pub(crate) async fn send_to_device(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
    Json(request): Json<SendToDeviceRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    messaging::ids::check("device_id", &device_id)?;
    own_device(&caller, &device_id)?;
    messaging::to_device::send(&api.ctx, user_id, &device_id, &request.messages).await?;
    Reply::ok(&ToDeviceSent {
        message_ids: request.messages.into_iter().map(|m| m.message_id).collect(),
    })
}

/// A device's queue of `to_device` messages, oldest first (what a connection gets on `auth`).
#[utoipa::path(
    operation_id = "pendingToDevice",
    get, path = "/v1/keys/{device_id}/to_device", tag = "keys", security(("bearer" = [])),
    params(("device_id" = String, Path, pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$", max_length = 128, description = "One of the caller's devices")),
    responses(
        (status = 200, description = "The queue's first messages", body = PendingToDevice),
        (status = 400, description = "Malformed device id", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "The token belongs to another device", body = ErrorBody),
    )
)]
pub(crate) async fn pending_to_device(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    messaging::ids::check("device_id", &device_id)?;
    own_device(&caller, &device_id)?;
    let (messages, has_more) = messaging::to_device::pending(&api.ctx, user_id, &device_id).await?;
    Reply::ok(&PendingToDevice { messages, has_more })
}

/// Acknowledge `to_device` messages a device has kept: their content is deleted.
#[utoipa::path(
    operation_id = "ackToDevice",
    post, path = "/v1/keys/{device_id}/to_device/ack", tag = "keys", security(("bearer" = [])),
    params(("device_id" = String, Path, pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$", max_length = 128, description = "One of the caller's devices")),
    request_body = AckToDeviceRequest,
    responses(
        (status = 204, description = "Deleted (sequence numbers not queued are ignored)"),
        (status = 400, description = "Not 1 to 1000 sequence numbers", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "The token belongs to another device", body = ErrorBody),
    )
)]
pub(crate) async fn ack_to_device(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
    Json(request): Json<AckToDeviceRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    messaging::ids::check("device_id", &device_id)?;
    own_device(&caller, &device_id)?;
    messaging::to_device::ack(&api.ctx, user_id, &device_id, &request.sequences).await?;
    Reply::no_content()
}

/// A token issued to a device acts for that device only.
fn own_device(caller: &Caller, device_id: &str) -> Result<()> {
    match caller.claims.as_ref().and_then(|c| c.device_id.as_deref()) {
        Some(token_device) if token_device != device_id => Err(Error::forbidden(format!(
            "this token belongs to device {token_device}"
        ))),
        _ => Ok(()),
    }
}

/// `me` may see `user`'s keys: themselves, or someone they share a conversation with.
async fn visible(api: &Api, me: &str, user: &str) -> Result<()> {
    if !messaging::conversations::is_contact(&api.ctx, me, user).await? {
        return Err(Error::not_found(format!("user {user} not found")));
    }
    Ok(())
}

/// Tells everyone sharing a conversation with `user_id` (and the user's other devices) that
/// their devices changed. Best effort: a client also refetches keys before it shares a session.
async fn tell_contacts(api: &Api, user_id: &str) {
    let frame = ServerFrame::DeviceList {
        payload: DeviceListPayload {
            user_id: user_id.to_string(),
            timestamp: messaging::clock::now_ms(),
        },
    };
    let told = async {
        let mut users = api.ctx.store.contacts_of(user_id).await?;
        users.push(user_id.to_string());
        messaging::fanout::send_to_users(&api.ctx, &users, &frame, |_, _| false).await
    };
    if let Err(e) = told.await {
        tracing::warn!(user_id, error = %e, "device_list not sent");
    }
}

/// Tells a device its one-time keys are running out. Best effort: uploads also return the count.
async fn tell_low(api: &Api, device: &DeviceRef, remaining: u64) {
    let frame = ServerFrame::OneTimeKeysLow {
        payload: KeysLowPayload {
            device_id: device.device_id.clone(),
            remaining,
        },
    };
    let told = async {
        for connection in api
            .ctx
            .realtime
            .device_connections(&device.user_id, &device.device_id)
            .await?
        {
            messaging::fanout::post(&api.ctx, &connection, &frame).await?;
        }
        Ok::<_, Error>(())
    };
    if let Err(e) = told.await {
        tracing::warn!(user_id = device.user_id, error = %e, "one_time_keys_low not sent");
    }
}
