//! Request bodies are checked against the very JSON Schema the OpenAPI document publishes for
//! them (the type's `utoipa` schema) before they are read: whatever the schema refuses, the
//! server refuses with a 400 naming the field, and whatever it allows gets past the shape
//! checks. The document and the server cannot disagree about what a valid request is, which is
//! what schemathesis checks from both sides.
//!
//! One validator per type, compiled on first use and kept for the life of the process.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::error::Error;

type Validators = Mutex<HashMap<TypeId, &'static jsonschema::Validator>>;

/// The validator of `T`'s published schema.
fn validator<T: ToSchema + 'static>() -> crate::Result<&'static jsonschema::Validator> {
    static VALIDATORS: OnceLock<Validators> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(Default::default);
    let mut validators = validators
        .lock()
        .map_err(|_| Error::dependency("schema", "validator cache poisoned"))?;
    if let Some(validator) = validators.get(&TypeId::of::<T>()) {
        return Ok(validator);
    }
    let schema = document_of::<T>();
    let validator = jsonschema::draft202012::new(&schema)
        .map_err(|e| Error::dependency("schema", format!("{}: {e}", T::name())))?;
    // A handful of request types per process: leaking them makes the cache lock-free to read.
    let validator: &'static jsonschema::Validator = Box::leak(Box::new(validator));
    validators.insert(TypeId::of::<T>(), validator);
    Ok(validator)
}

/// `T`'s schema with every schema it refers to, as one JSON Schema document whose root refers
/// to `T` (`#/components/schemas/T`, the references the OpenAPI document uses).
pub fn document_of<T: ToSchema>() -> Value {
    let mut referenced = Vec::new();
    T::schemas(&mut referenced);
    let mut components: Map<String, Value> = referenced
        .into_iter()
        .map(|(name, schema)| (name, serde_json::to_value(schema).unwrap_or_default()))
        .collect();
    components.insert(
        T::name().into_owned(),
        serde_json::to_value(T::schema()).unwrap_or_default(),
    );
    json!({
        "$ref": format!("#/components/schemas/{}", T::name()),
        "components": {"schemas": components},
    })
}

/// Fails with `invalid_request`, naming the first field that breaks `T`'s schema, unless `value`
/// is valid.
pub fn check<T: ToSchema + 'static>(value: &Value) -> crate::Result<()> {
    let validator = validator::<T>()?;
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(error) => {
            let path = error.instance_path().to_string();
            let at = if path.is_empty() {
                "request body".to_string()
            } else {
                format!("request body {path}")
            };
            Err(Error::invalid(format!("{at}: {error}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, utoipa::ToSchema)]
    #[allow(dead_code)]
    struct Named {
        #[schema(min_length = 1, max_length = 3)]
        name: String,
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, utoipa::ToSchema)]
    #[allow(dead_code)]
    struct Inner {
        #[schema(minimum = 1)]
        n: u32,
    }

    #[test]
    fn bodies_are_checked_against_their_schema_with_references() {
        assert!(check::<Named>(&json!({"name": "abc"})).is_ok());
        assert!(check::<Named>(&json!({"name": "abc", "inner": {"n": 1}})).is_ok());
        let error = check::<Named>(&json!({"name": ""})).unwrap_err();
        assert!(error.public_message().contains("/name"), "{error}");
        let error = check::<Named>(&json!({"name": "a", "inner": {"n": 0}})).unwrap_err();
        assert!(error.public_message().contains("/inner"), "{error}");
        assert!(check::<Named>(&json!([])).is_err());
    }
}
