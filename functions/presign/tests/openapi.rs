//! The OpenAPI document of the presign function: valid, and exactly the routes `handle` serves
//! (the CI check that code and document agree).

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
    let doc = fn_presign::openapi();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string());
    let mut problems = Vec::new();
    check_refs(&doc, &doc, &mut problems);
    let mut ids = HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            if id.is_empty() || !ids.insert(id.to_string()) {
                problems.push(format!("{method} {path}: missing or duplicate operationId"));
            }
            let responses = op["responses"].as_object().unwrap();
            if !responses.keys().any(|k| k.starts_with('2')) {
                problems.push(format!("{method} {path}: no success response"));
            }
            for status in ["401", "429"] {
                if !responses.contains_key(status) {
                    problems.push(format!("{method} {path}: {status} undocumented"));
                }
            }
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            if declared != templated {
                problems.push(format!("{method} {path}: path parameters {declared:?}"));
            }
            if op["security"][0].get("bearer").is_none() {
                problems.push(format!("{method} {path}: not marked as needing a token"));
            }
        }
    }
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "bearer scheme"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
