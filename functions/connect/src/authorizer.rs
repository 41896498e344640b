//! The `$connect` authorizer as a function: a WebSocket REQUEST authorizer event in, an IAM
//! policy with the connection's identity out (see `messaging::identity` for the rules). It needs
//! only the JWT settings: no Redis, no MongoDB, so it starts in milliseconds and keeps working
//! when they are down.

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerResponse;
use messaging::auth::JwtVerifier;
use messaging::identity::{AuthorizerError, AuthorizerRequest, authorize};

/// Handles one authorizer invocation.
pub fn handle(
    jwt: &JwtVerifier,
    request: &AuthorizerRequest,
) -> Result<ApiGatewayCustomAuthorizerResponse, AuthorizerError> {
    authorize(jwt, request)
}
