//! The OpenAPI document: valid, served, and exactly the routes `handle` serves (the CI check that
//! code and document agree).

mod support;

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

/// The whole HTTP API's document, generated from both HTTP functions' route registrations.
fn generated() -> Value {
    fn_api::whole_document([fn_presign::openapi_document()])
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix("#/")?;
    path.split('/').try_fold(doc, |v, part| v.get(part))
}

fn check_refs(doc: &Value, node: &Value, problems: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && resolve(doc, r).is_none()
            {
                problems.push(format!("unresolved $ref {r}"));
            }
            for v in map.values() {
                check_refs(doc, v, problems);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v, problems)),
        _ => {}
    }
}

#[test]
fn the_document_is_valid_openapi_3() {
    let doc = fn_api::openapi();
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut problems = Vec::new();
    check_refs(&doc, &doc, &mut problems);
    let schemes = &doc["components"]["securitySchemes"];
    let mut operation_ids = HashSet::new();
    let methods = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            if !methods.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"].as_str().unwrap_or_default();
            if id.is_empty() || !operation_ids.insert(id.to_string()) {
                problems.push(format!(
                    "{method} {path}: missing or duplicate operationId `{id}`"
                ));
            }
            let responses = op["responses"].as_object();
            match responses {
                Some(r) if r.keys().any(|k| k.starts_with('2')) => {
                    for (status, response) in r {
                        if response
                            .get("description")
                            .and_then(Value::as_str)
                            .is_none()
                        {
                            problems.push(format!("{method} {path} {status}: no description"));
                        }
                    }
                }
                _ => problems.push(format!("{method} {path}: no success response")),
            }
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(
                                p["required"], true,
                                "{method} {path}: path params are required"
                            );
                            p["name"].as_str().unwrap()
                        })
                        .collect()
                })
                .unwrap_or_default();
            if declared != templated {
                problems.push(format!(
                    "{method} {path}: path parameters {declared:?} != {templated:?}"
                ));
            }
            if let Some(security) = op["security"].as_array() {
                for requirement in security {
                    for name in requirement.as_object().unwrap().keys() {
                        if schemes.get(name).is_none() {
                            problems
                                .push(format!("{method} {path}: unknown security scheme {name}"));
                        }
                    }
                }
            }
            if matches!(method.as_str(), "post" | "put" | "patch")
                && let Some(body) = op.get("requestBody")
                && body["content"]["application/json"]["schema"].is_null()
            {
                problems.push(format!(
                    "{method} {path}: request body without a JSON schema"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every documented operation is routed: called without credentials, each answers with its own
/// refusal (or the document), never the router's "no route" 404 or a 405. Routes and documents
/// come from the same registrations, so this mostly guards the paths as API Gateway passes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let env = support::env().await;
    let aws = messaging::aws_sdk::sdk_config().await;
    let presign = fn_presign::router(fn_presign::Presign::new(
        env.api.context().clone(),
        std::sync::Arc::new(messaging::objects::S3Objects::new(
            &aws,
            Some("http://127.0.0.1:9"),
            true,
        )),
        fn_presign::PresignOptions::default(),
    ));
    let doc = fn_api::openapi();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let concrete: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for stage in ["", "/prod"] {
                let request = lambda_http::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(format!("{stage}{concrete}"))
                    .body(lambda_http::Body::Empty)
                    .unwrap();
                let router = if path.starts_with("/v1/media") {
                    &presign
                } else {
                    &env.router
                };
                let response = fn_api::handle(router, request).await;
                let status = response.status().as_u16();
                let body = match response.body() {
                    lambda_http::Body::Text(t) => t.clone(),
                    _ => String::new(),
                };
                assert!(
                    status != 405 && !body.contains("no route"),
                    "{method} {stage}{concrete}: {status} {body}"
                );
                assert_eq!(
                    response.headers()["content-type"],
                    "application/json",
                    "{method} {path}"
                );
            }
        }
    }
    assert!(operations >= 41, "{operations} operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_at_openapi_json() {
    let env = support::env().await;
    let r = env.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.body, fn_api::openapi());
}

/// The published contract (`docs/contract/`) is what the code generates: a client author reads
/// it in the repository, and outside tools in CI validate it. After changing a route, a view,
/// a frame or an event, regenerate it with
/// `UPDATE_CONTRACT=1 cargo test -p fn-api --test openapi published`.
#[test]
fn the_published_documents_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/contract");
    for (name, document) in [
        ("openapi.json", generated()),
        ("asyncapi.json", messaging::contract::asyncapi()),
    ] {
        let text = serde_json::to_string_pretty(&document).unwrap() + "\n";
        let path = root.join(name);
        if std::env::var_os("UPDATE_CONTRACT").is_some() {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == text,
            "docs/contract/{name} is not what the code generates: run \
             `UPDATE_CONTRACT=1 cargo test -p fn-api --test openapi published` and commit it"
        );
    }
}

/// The merged document keeps one schema per name: a presign schema whose name the api function
/// also uses for something else would silently describe the wrong answers.
#[test]
fn the_merged_document_keeps_every_media_schema() {
    let merged = generated();
    let media = fn_presign::openapi();
    for (name, schema) in media["components"]["schemas"].as_object().unwrap() {
        assert_eq!(
            &merged["components"]["schemas"][name], schema,
            "schema {name} of the presign function is another one in the merged document"
        );
    }
}
