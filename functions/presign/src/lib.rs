//! Presigned media upload and download URLs: not built yet.
//!
//! Every request is answered `501 Not Implemented` with a JSON error body naming the open issue,
//! never a fake success, so clients and operators see at once what is missing.

#![warn(missing_docs)]

use lambda_http::{Body, Request, Response};

/// Answers every request with 501 and an explanation.
pub async fn handle(request: Request) -> Response<Body> {
    let what = format!("{} {}", request.method(), request.uri().path());
    let error = messaging::Error::not_implemented(&format!("media presigning ({what})"));
    Response::builder()
        .status(error.http_status())
        .header("content-type", "application/json")
        .body(Body::Text(error.to_http_body().to_string()))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_request_gets_a_clear_501() {
        let request = lambda_http::http::Request::builder()
            .method("POST")
            .uri("/v1/anything")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let response = super::handle(request).await;
        assert_eq!(response.status(), 501);
        let lambda_http::Body::Text(body) = response.body() else {
            panic!("text body expected");
        };
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "not_implemented");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/v1/anything")
        );
    }
}
