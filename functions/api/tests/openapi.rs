//! The OpenAPI document: valid, served, and exactly the routes `handle` serves (the CI check that
//! code and document agree).

mod support;

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

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

#[test]
fn the_document_lists_exactly_the_routes_handle_serves() {
    let doc = fn_api::openapi();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = fn_api::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented routes handle does not serve: {unserved:?}"
    );
    assert!(served.len() >= 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_at_openapi_json() {
    let env = support::env().await;
    let r = env.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.body, fn_api::openapi());
}
