//! JWT accept/reject table: only well-formed, correctly signed, current tokens for our issuer and
//! audience, with an accepted algorithm, get through.

use std::time::Duration;

use base64_helpers::b64;
use messaging::ErrorCode;
use messaging::auth::{JwtConfig, JwtIssuer, JwtVerifier};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
const ISS: &str = "messaging";
const AUD: &str = "messaging-clients";

fn rsa_public() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa_public.pem"
    ))
    .unwrap()
}

fn rsa_private(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn verifier(hs: bool, rs: bool) -> JwtVerifier {
    JwtVerifier::new(&JwtConfig {
        hs256_secret: hs.then(|| SECRET.to_vec()),
        rs256_public_pem: rs.then(rsa_public),
        issuer: ISS.into(),
        audience: AUD.into(),
        leeway: Duration::from_secs(5),
    })
    .unwrap()
}

mod base64_helpers {
    /// Unpadded base64url, as JWTs use.
    pub fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

fn code_of(result: messaging::Result<messaging::auth::Claims>) -> ErrorCode {
    result.expect_err("token must be rejected").code()
}

#[test]
fn valid_hs256_and_rs256_tokens_are_accepted() {
    let hs = JwtIssuer::hs256(SECRET, ISS, AUD);
    let claims = verifier(true, false)
        .verify(&hs.issue("user-1", Duration::from_secs(60)).unwrap())
        .unwrap();
    assert_eq!(claims.sub, "user-1");

    let rs = JwtIssuer::rs256(&rsa_private("rsa_private.pem"), ISS, AUD).unwrap();
    let claims = verifier(false, true)
        .verify(&rs.issue("user-2", Duration::from_secs(60)).unwrap())
        .unwrap();
    assert_eq!(claims.sub, "user-2");

    // Both configured: each algorithm with its own key.
    let both = verifier(true, true);
    assert!(
        both.verify(&hs.issue("a", Duration::from_secs(60)).unwrap())
            .is_ok()
    );
    assert!(
        both.verify(&rs.issue("b", Duration::from_secs(60)).unwrap())
            .is_ok()
    );
}

#[test]
fn reject_table() {
    let hs = JwtIssuer::hs256(SECRET, ISS, AUD);
    let v = verifier(true, false);

    // Expired (beyond the leeway).
    let mut expired = hs.claims("u", Duration::from_secs(60));
    expired.exp -= 3600;
    expired.iat -= 3600;
    expired.nbf = Some(expired.iat);
    assert_eq!(
        code_of(v.verify(&hs.sign(&expired).unwrap())),
        ErrorCode::TokenExpired
    );

    // Not valid yet.
    let mut future = hs.claims("u", Duration::from_secs(7200));
    future.nbf = Some(future.iat + 3600);
    assert_eq!(
        code_of(v.verify(&hs.sign(&future).unwrap())),
        ErrorCode::InvalidToken
    );

    // Wrong key.
    let other = JwtIssuer::hs256(b"another-secret-another-secret-another", ISS, AUD);
    assert_eq!(
        code_of(v.verify(&other.issue("u", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );

    // Wrong audience, wrong issuer.
    let wrong_aud = JwtIssuer::hs256(SECRET, ISS, "someone-else");
    assert_eq!(
        code_of(v.verify(&wrong_aud.issue("u", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );
    let wrong_iss = JwtIssuer::hs256(SECRET, "evil", AUD);
    assert_eq!(
        code_of(v.verify(&wrong_iss.issue("u", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );

    // alg: none, unsigned.
    let claims = serde_json::to_vec(&hs.claims("u", Duration::from_secs(60))).unwrap();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims)
    );
    assert_eq!(code_of(v.verify(&none)), ErrorCode::InvalidToken);

    // Garbage.
    assert_eq!(code_of(v.verify("not-a-token")), ErrorCode::InvalidToken);
    assert_eq!(code_of(v.verify("")), ErrorCode::InvalidToken);

    // Missing exp.
    let no_exp = serde_json::json!({"sub": "u", "iss": ISS, "aud": AUD});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &no_exp,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(code_of(v.verify(&token)), ErrorCode::InvalidToken);
}

#[test]
fn algorithm_swaps_are_rejected() {
    // RS256-only deployment: an HS256 token signed with the *public key* as the secret (the
    // classic confusion attack) must fail.
    let rs_only = verifier(false, true);
    let forged = JwtIssuer::hs256(rsa_public().as_bytes(), ISS, AUD);
    assert_eq!(
        code_of(rs_only.verify(&forged.issue("admin", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );
    // HS256-only deployment: an RS256 token is refused even when correctly signed.
    let hs_only = verifier(true, false);
    let rs = JwtIssuer::rs256(&rsa_private("rsa_private.pem"), ISS, AUD).unwrap();
    assert_eq!(
        code_of(hs_only.verify(&rs.issue("u", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );
    // RS256 signed by another key pair.
    let other = JwtIssuer::rs256(&rsa_private("other_rsa_private.pem"), ISS, AUD).unwrap();
    assert_eq!(
        code_of(rs_only.verify(&other.issue("u", Duration::from_secs(60)).unwrap())),
        ErrorCode::InvalidToken
    );
}

#[test]
fn verifier_needs_a_key() {
    let result = JwtVerifier::new(&JwtConfig {
        hs256_secret: None,
        rs256_public_pem: None,
        issuer: ISS.into(),
        audience: AUD.into(),
        leeway: Duration::ZERO,
    });
    assert!(result.is_err());
}
