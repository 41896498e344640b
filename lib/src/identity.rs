//! Who is talking on a WebSocket connection, carried the way API Gateway carries it.
//!
//! A Lambda REQUEST authorizer runs on `$connect` ([`authorize`]): it verifies the JWT (from
//! `?token=` or `Authorization: Bearer`) and answers with an IAM policy and a context
//! (`user_id`, `device_id`). API Gateway then passes that context to every later route of the
//! connection in `requestContext.authorizer` (flat, values stringified, next to `principalId`),
//! so the message function knows who sent a frame without asking Redis ([`Identity::of_event`]),
//! and a connection keeps working when Redis loses its record (the next frame registers it
//! again).
//!
//! A connection opened without a token is let in anonymously: it must send an `auth` frame, and
//! that identity lives in Redis only. If Redis loses it, the next frame is answered
//! `unauthenticated` and the client sends `auth` again (the client library does this by itself).
//!
//! The authorizer's outcomes follow AWS: a valid token is `Allow` with the context; a token for
//! someone else than `?user_id=` is `Deny` (API Gateway answers 403); a bad or expired token
//! fails with the error message `Unauthorized` (API Gateway answers 401).

use std::collections::HashMap;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayWebsocketProxyRequest, ApiGatewayWebsocketProxyRequestContext,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::JwtVerifier;

/// Authorizer context key of the user id.
pub const USER_ID_KEY: &str = "user_id";
/// Authorizer context key of the device id.
pub const DEVICE_ID_KEY: &str = "device_id";
/// `principalId` of a connection opened without a token.
pub const ANONYMOUS_PRINCIPAL: &str = "anonymous";
/// Device id when neither the client nor the token names one.
pub const DEFAULT_DEVICE: &str = "default";

/// The identity the authorizer gave a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user.
    pub user_id: String,
    /// Their device.
    pub device_id: String,
}

impl Identity {
    /// The identity carried by a route event (`requestContext.authorizer`), if the connection was
    /// authorized with a token.
    pub fn of_event(event: &ApiGatewayWebsocketProxyRequest) -> Option<Self> {
        let fields = &event.request_context.authorizer.fields;
        let text = |key: &str| match fields.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        };
        Some(Self {
            user_id: text(USER_ID_KEY)?,
            device_id: text(DEVICE_ID_KEY).unwrap_or_else(|| DEFAULT_DEVICE.to_string()),
        })
    }
}

/// The event a WebSocket API's REQUEST authorizer receives on `$connect` (AWS: "Lambda
/// authorizer input for WebSocket APIs"): no body, no path parameters, the method ARN of the
/// `$connect` route, headers and query string, and the WebSocket request context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerRequest {
    /// Always `REQUEST`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `arn:aws:execute-api:{region}:{account}:{api-id}/{stage}/$connect`.
    #[serde(default)]
    pub method_arn: String,
    /// Request headers, as the client sent their names.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Every value of every header.
    #[serde(default)]
    pub multi_value_headers: HashMap<String, Vec<String>>,
    /// Query string parameters (the last value of each).
    #[serde(default, deserialize_with = "nullable_map")]
    pub query_string_parameters: HashMap<String, String>,
    /// Every value of every query string parameter.
    #[serde(default, deserialize_with = "nullable_map")]
    pub multi_value_query_string_parameters: HashMap<String, Vec<String>>,
    /// Stage variables.
    #[serde(default, deserialize_with = "nullable_map")]
    pub stage_variables: HashMap<String, String>,
    /// The connection's context (`connectionId`, `routeKey: $connect`, `eventType: CONNECT`, ...).
    pub request_context: ApiGatewayWebsocketProxyRequestContext,
}

fn nullable_map<'de, D, T>(deserializer: D) -> Result<HashMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<HashMap<String, T>>::deserialize(deserializer)?.unwrap_or_default())
}

impl AuthorizerRequest {
    /// The token: `?token=`, else `Authorization: Bearer` (header names in any case).
    pub fn token(&self) -> Option<&str> {
        if let Some(token) = self.query("token") {
            return Some(token);
        }
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// A query string parameter, if present and not empty.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query_string_parameters
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Why the authorizer refuses without a policy: API Gateway answers 401 when the error message
/// is exactly `Unauthorized`, 500 for any other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    /// A bad, expired or malformed token.
    #[error("Unauthorized")]
    Unauthorized,
}

/// The authorizer's decision for one `$connect` (see the module documentation).
pub fn authorize(
    jwt: &JwtVerifier,
    request: &AuthorizerRequest,
) -> Result<ApiGatewayCustomAuthorizerResponse, AuthorizerError> {
    let Some(token) = request.token() else {
        return Ok(policy(
            ANONYMOUS_PRINCIPAL,
            IamPolicyEffect::Allow,
            &request.method_arn,
            serde_json::Map::new(),
        ));
    };
    let claims = jwt.verify(token).map_err(|e| {
        tracing::info!(code = ?e.code(), "authorizer: token refused");
        AuthorizerError::Unauthorized
    })?;
    if let Some(claimed) = request.query("user_id")
        && claimed != claims.sub
    {
        return Ok(policy(
            &claims.sub,
            IamPolicyEffect::Deny,
            &request.method_arn,
            serde_json::Map::new(),
        ));
    }
    let device_id = request
        .query("device_id")
        .map(str::to_string)
        .or(claims.device_id.clone())
        .unwrap_or_else(|| DEFAULT_DEVICE.to_string());
    // A token issued to a device connects as that device only: the device id decides whose
    // end-to-end encryption queue the connection reads and acknowledges.
    let other_device = claims
        .device_id
        .as_ref()
        .is_some_and(|bound| bound != &device_id);
    if other_device || !crate::ids::is_valid(&device_id) {
        // API Gateway answers 403: the caller is known, the request is not acceptable.
        return Ok(policy(
            &claims.sub,
            IamPolicyEffect::Deny,
            &request.method_arn,
            serde_json::Map::new(),
        ));
    }
    let mut context = serde_json::Map::new();
    context.insert(USER_ID_KEY.into(), Value::String(claims.sub.clone()));
    context.insert(DEVICE_ID_KEY.into(), Value::String(device_id));
    Ok(policy(
        &claims.sub,
        IamPolicyEffect::Allow,
        &request.method_arn,
        context,
    ))
}

fn policy(
    principal: &str,
    effect: IamPolicyEffect,
    method_arn: &str,
    context: serde_json::Map<String, Value>,
) -> ApiGatewayCustomAuthorizerResponse {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".into()];
    statement.effect = effect;
    statement.resource = vec![method_arn.to_string()];
    let mut document = ApiGatewayCustomAuthorizerPolicy::default();
    document.version = Some("2012-10-17".into());
    document.statement = vec![statement];
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    response.principal_id = Some(principal.to_string());
    response.policy_document = document;
    response.context = Value::Object(context);
    response
}
