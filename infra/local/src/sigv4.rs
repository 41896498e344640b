//! SigV4 verification of management-API calls, as API Gateway checks IAM authorization on
//! `@connections`.
//!
//! A signed call (one with an `Authorization` header) must carry a valid signature by the local
//! stack's credentials ([`crate::s3::ACCESS_KEY`]), else it is refused with 403, as AWS would:
//! so a function whose signing is wrong fails here, not first on AWS. The signature is
//! recomputed with `aws-sigv4` over exactly the headers the caller says it signed; the AWS SDK's
//! clients and the functions' own adapter are both checked against it in the gateway tests.
//! Unsigned calls are still accepted (plain HTTP in tests and tools), unlike on AWS.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::HeaderMap;

/// How far a request's `x-amz-date` may be from now (AWS allows 15 minutes).
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct Authorization<'a> {
    access_key: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse(header: &str) -> Option<Authorization<'_>> {
    let rest = header.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        let (key, value) = part.split_once('=')?;
        match key {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    // Credential = access key / date / region / service / aws4_request
    let mut scope = credential?.split('/');
    let access_key = scope.next()?;
    let _date = scope.next()?;
    let region = scope.next()?;
    let service = scope.next()?;
    (scope.next()? == "aws4_request").then_some(())?;
    Some(Authorization {
        access_key,
        region,
        service,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

/// Checks a call's signature. `path_and_query` is the request target as received (still
/// percent-encoded). `Err` says why it is refused.
pub fn verify(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let Some(header) = headers.get("authorization") else {
        return Ok(());
    };
    let header = header
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    let auth = parse(header).ok_or("the Authorization header is not AWS4-HMAC-SHA256")?;
    if auth.access_key != crate::s3::ACCESS_KEY {
        return Err("the security token included in the request is invalid".into());
    }
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let date = value("x-amz-date").ok_or("x-amz-date is missing")?;
    let time = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| format!("x-amz-date `{date}` is not a SigV4 date"))?
        .and_utc();
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(time.timestamp().max(0) as u64);
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err("signature expired: x-amz-date is more than 15 minutes from now".into());
    }
    let host = value("host").ok_or("the Host header is missing")?;
    let token = value("x-amz-security-token").map(str::to_string);
    let signed: Vec<(&str, &str)> = auth
        .signed_headers
        .iter()
        .filter(|name| !matches!(**name, "host" | "x-amz-date" | "x-amz-security-token"))
        .map(|name| {
            Ok((
                *name,
                value(name).ok_or(format!("signed header {name} is missing"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let identity: Identity = Credentials::new(
        crate::s3::ACCESS_KEY,
        crate::s3::SECRET_KEY,
        token,
        None,
        "local-stack",
    )
    .into();
    // Sign exactly what the caller signed: no header is left out by name.
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = format!("http://{host}{path_and_query}");
    let signable = SignableRequest::new(
        method,
        uri,
        signed.into_iter().chain(std::iter::once(("host", host))),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected != auth.signature {
        return Err(
            "the request signature we calculated does not match the signature you \
                    provided"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_authorization_header() {
        let auth = parse(
            "AWS4-HMAC-SHA256 Credential=AKID/20261128/eu-west-1/execute-api/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc123",
        )
        .expect("parses");
        assert_eq!(auth.access_key, "AKID");
        assert_eq!(auth.region, "eu-west-1");
        assert_eq!(auth.service, "execute-api");
        assert_eq!(auth.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert_eq!(auth.signature, "abc123");
        assert!(parse("Bearer x").is_none());
        assert!(parse("AWS4-HMAC-SHA256 Credential=AKID/d/r/s/other, Signature=x").is_none());
    }
}
