//! Push device tokens: a device's FCM or APNs token, registered per (user, device) and used by
//! the push function to notify users with no live connection. A token belongs to one user at a
//! time: registering it moves it.

use messaging::model::DeviceToken;
use messaging::{Error, Result};
use mongodb::bson::DateTime;

use crate::Api;
use crate::accounts::require_account;
use crate::views::{DeviceList, DeviceRequest, DeviceView, ErrorBody};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Reply};

fn valid_device_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
    {
        return Err(Error::invalid(
            "device_id must be 1 to 128 of A-Z, a-z, 0-9, `-`, `_`, `:`",
        ));
    }
    Ok(())
}

/// The caller's registered devices.
#[utoipa::path(
    operation_id = "listDevices",
    get, path = "/v1/devices", tag = "devices", security(("bearer" = [])),
    responses(
        (status = 200, description = "Devices by id", body = DeviceList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(ref api): State<Api>, caller: Caller) -> Result<Reply> {
    let devices = api.ctx.store.devices_of(caller.user_id()?).await?;
    Reply::ok(&DeviceList {
        devices: devices.iter().map(DeviceView::from).collect(),
    })
}

/// Register (or replace) a device's push token.
#[utoipa::path(
    operation_id = "putDevice",
    put, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, pattern = r"^[A-Za-z0-9_:-]{1,128}$", description = "The device (as in tokens and connections)")),
    request_body = DeviceRequest,
    responses(
        (status = 200, description = "The device", body = DeviceView),
        (status = 400, description = "Bad device id, platform or token", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
    Json(request): Json<DeviceRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let device_id = device_id.as_str();
    valid_device_id(device_id)?;
    let token = request.token.trim();
    if token.is_empty() || token.len() > 4096 || token.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            "token must be 1 to 4096 characters without spaces",
        ));
    }
    require_account(api, user_id).await?;
    let now = DateTime::now();
    api.ctx
        .store
        .upsert_device(&DeviceToken {
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            platform: request.platform.into(),
            token: token.to_string(),
            created_at: now,
            updated_at: now,
        })
        .await?;
    let device = api
        .ctx
        .store
        .devices_of(user_id)
        .await?
        .into_iter()
        .find(|d| d.device_id == device_id)
        .ok_or_else(|| Error::dependency("mongodb", "registered device not found"))?;
    Reply::ok(&DeviceView::from(&device))
}

/// Unregister a device.
#[utoipa::path(
    operation_id = "deleteDevice",
    delete, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device")),
    responses(
        (status = 204, description = "Unregistered"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(ref api): State<Api>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let device_id = device_id.as_str();
    if !api.ctx.store.delete_device(user_id, device_id).await? {
        return Err(Error::not_found(format!(
            "device {device_id} is not registered"
        )));
    }
    Reply::no_content()
}
