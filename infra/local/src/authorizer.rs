//! The WebSocket API's Lambda REQUEST authorizer, emulated the way API Gateway runs it.
//!
//! On every upgrade, before `$connect`, the emulator invokes the authorizer with AWS's event for
//! WebSocket APIs ([`authorizer_event`]: `type: REQUEST`, the `$connect` method ARN, headers,
//! query string, stage variables and the connection's request context) and reads its answer as
//! API Gateway does ([`evaluate`]):
//!
//! - an error whose message is exactly `Unauthorized`: the upgrade is refused with 401;
//! - any other error, an answer without `principalId` or policy, or a context value that is an
//!   object or an array: 500;
//! - a policy that does not allow the method ARN (an explicit `Deny`, or no matching `Allow`;
//!   resources match with IAM wildcards `*` and `?`): 403;
//! - otherwise the connection is let in, and its `requestContext.authorizer` in every later event
//!   is `principalId` plus the context, values stringified (`null` stays `null`); the CONNECT
//!   event also carries `integrationLatency`. Results are not cached (WebSocket authorizers are
//!   not).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequestContext;
use serde_json::{Map, Value};

/// An authorizer integration: one Lambda invocation, its JSON answer or its error message.
#[async_trait]
pub trait Authorizer: Send + Sync {
    /// Invokes the authorizer with `event`.
    async fn invoke(&self, event: Value) -> Result<Value, String>;
}

#[async_trait]
impl<F, Fut> Authorizer for F
where
    F: Fn(Value) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Value, String>> + Send,
{
    async fn invoke(&self, event: Value) -> Result<Value, String> {
        self(event).await
    }
}

/// A shared authorizer.
pub type SharedAuthorizer = Arc<dyn Authorizer>;

/// What API Gateway decides from the authorizer's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let the connection in; these are its `requestContext.authorizer` fields.
    Allow(HashMap<String, Value>),
    /// Refuse the upgrade with this HTTP status and JSON body.
    Refuse(u16, Value),
}

/// The method ARN of a stage's `$connect` route.
pub fn method_arn(api_id: &str, stage: &str) -> String {
    format!("arn:aws:execute-api:us-east-1:000000000000:{api_id}/{stage}/$connect")
}

/// AWS's authorizer event for a WebSocket `$connect`.
pub fn authorizer_event(
    method_arn: &str,
    headers: &axum::http::HeaderMap,
    query: &HashMap<String, Vec<String>>,
    request_context: &ApiGatewayWebsocketProxyRequestContext,
) -> Value {
    let mut single = Map::new();
    let mut multi = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| Value::String(v.to_string()))
            .collect();
        if let Some(Value::String(last)) = values.last() {
            single.insert(name.as_str().to_string(), Value::String(last.clone()));
        }
        multi.insert(name.as_str().to_string(), Value::Array(values));
    }
    let query_single: Map<String, Value> = query
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), Value::String(v.last()?.clone()))))
        .collect();
    let query_multi: Map<String, Value> = query
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::Array(v.iter().cloned().map(Value::String).collect()),
            )
        })
        .collect();
    let mut event = serde_json::json!({
        "type": "REQUEST",
        "methodArn": method_arn,
        "headers": single,
        "multiValueHeaders": multi,
        "stageVariables": {},
        "requestContext": request_context,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query_single);
        event["multiValueQueryStringParameters"] = Value::Object(query_multi);
    }
    event
}

fn refuse(status: u16, message: &str) -> Decision {
    Decision::Refuse(status, serde_json::json!({ "message": message }))
}

/// API Gateway's reading of an authorizer's outcome for `method_arn`.
pub fn evaluate(outcome: Result<Value, String>, method_arn: &str) -> Decision {
    let answer = match outcome {
        Ok(answer) => answer,
        Err(message) if message == "Unauthorized" => return refuse(401, "Unauthorized"),
        Err(_) => return refuse(500, "Internal server error"),
    };
    let Some(principal) = answer.get("principalId").and_then(Value::as_str) else {
        return refuse(500, "Internal server error");
    };
    let Some(statements) = answer
        .pointer("/policyDocument/Statement")
        .and_then(Value::as_array)
    else {
        return refuse(500, "Internal server error");
    };
    let mut allowed = false;
    for statement in statements {
        let effect = statement
            .get("Effect")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        let resources: Vec<&str> = match statement.get("Resource") {
            Some(Value::String(r)) => vec![r.as_str()],
            Some(Value::Array(rs)) => rs.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !resources.iter().any(|r| wildcard_match(r, method_arn)) {
            continue;
        }
        match effect {
            "Deny" => return refuse(403, "Forbidden"),
            "Allow" => allowed = true,
            _ => return refuse(500, "Internal server error"),
        }
    }
    if !allowed {
        return refuse(403, "Forbidden");
    }
    let mut fields = HashMap::new();
    if let Some(context) = answer.get("context").and_then(Value::as_object) {
        for (key, value) in context {
            let value = match value {
                Value::String(_) | Value::Null => value.clone(),
                Value::Bool(b) => Value::String(b.to_string()),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Array(_) | Value::Object(_) => {
                    return refuse(500, "Internal server error");
                }
            };
            fields.insert(key.clone(), value);
        }
    }
    fields.insert("principalId".into(), Value::String(principal.to_string()));
    Decision::Allow(fields)
}

/// IAM-style wildcard match: `*` any run of characters, `?` one character.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:execute-api:us-east-1:000000000000:api/local/$connect";

    fn policy(effect: &str, resource: Value, context: Value) -> Value {
        json!({
            "principalId": "alice",
            "policyDocument": {"Version": "2012-10-17", "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}
            ]},
            "context": context,
        })
    }

    #[test]
    fn allow_passes_the_context_stringified() {
        let decision = evaluate(
            Ok(policy(
                "Allow",
                json!(ARN),
                json!({"user_id": "alice", "n": 1, "b": true, "z": null}),
            )),
            ARN,
        );
        let Decision::Allow(fields) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(fields["principalId"], "alice");
        assert_eq!(fields["user_id"], "alice");
        assert_eq!(fields["n"], "1");
        assert_eq!(fields["b"], "true");
        assert_eq!(fields["z"], Value::Null);
    }

    #[test]
    fn refusals_map_to_api_gateway_statuses() {
        let status = |d: Decision| match d {
            Decision::Refuse(s, _) => s,
            Decision::Allow(_) => 200,
        };
        assert_eq!(status(evaluate(Err("Unauthorized".into()), ARN)), 401);
        assert_eq!(status(evaluate(Err("unauthorized".into()), ARN)), 500);
        assert_eq!(
            status(evaluate(Ok(policy("Deny", json!(ARN), json!({}))), ARN)),
            403
        );
        // An Allow for another route is an implicit deny.
        assert_eq!(
            status(evaluate(
                Ok(policy("Allow", json!("arn:other"), json!({}))),
                ARN
            )),
            403
        );
        // `.../local/*/*` does not match `.../local/$connect` (one segment, not two).
        let two_segments = "arn:aws:execute-api:us-east-1:000000000000:api/local/*/*";
        assert_eq!(
            status(evaluate(
                Ok(policy("Allow", json!(two_segments), json!({}))),
                ARN
            )),
            403
        );
        assert_eq!(
            status(evaluate(
                Ok(policy(
                    "Allow",
                    json!(["x", "arn:aws:execute-api:*"]),
                    json!({})
                )),
                ARN
            )),
            200
        );
        assert_eq!(
            status(evaluate(
                Ok(policy("Allow", json!(ARN), json!({"o": {}}))),
                ARN
            )),
            500
        );
        assert_eq!(
            status(evaluate(Ok(json!({"policyDocument": {}})), ARN)),
            500
        );
    }

    #[test]
    fn wildcards_follow_iam() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "abbc"));
        assert!(wildcard_match("arn:*:$connect", "arn:x:y:$connect"));
        assert!(!wildcard_match("arn:*/*/*", "arn:a/b"));
    }
}
