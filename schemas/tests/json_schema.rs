//! Keeps `beacon.v1.schema.json` and the Rust types in step: every valid example must be
//! accepted by both the JSON Schema and the Rust validation, every invalid one refused by both.

use qoe_schemas::validate::{validate_envelope, validate_event, Arrival};
use qoe_schemas::{Envelope, Limits, BEACON_JSON_SCHEMA};
use serde_json::Value;

fn schema() -> (Value, jsonschema::Validator) {
    let doc: Value = serde_json::from_str(BEACON_JSON_SCHEMA).expect("schema is JSON");
    let validator = jsonschema::validator_for(&doc).expect("schema compiles");
    (doc, validator)
}

/// Validates with the Rust rules at a server clock close to the example's times.
fn rust_accepts(example: &Value) -> Result<usize, String> {
    let body = serde_json::to_vec(example).unwrap();
    let env = Envelope::parse(&body).map_err(|e| e.to_string())?;
    let limits = Limits::default();
    let view = validate_envelope(&env, &limits).map_err(|e| e.to_string())?;
    let received_at = env.sent_at.unwrap_or(1_763_721_600_000);
    let arrival = Arrival {
        received_at,
        sent_at: env.sent_at,
    };
    let context = view.into_context("unknown".into());
    for (i, raw) in env.events.iter().enumerate() {
        let fields = validate_event(raw, &arrival, &limits)
            .map_err(|r| format!("event {i}: {}", r.detail))?;
        let event = qoe_schemas::QoeEvent::from_parts(&context, fields.clone());
        // What the collector publishes is exactly the assembled event's encoding.
        let published = qoe_schemas::MessageEncoder::new(&context).encode(&fields);
        assert_eq!(published, event.encode());
        // The published form round-trips through the Kafka message encoding.
        let decoded = qoe_schemas::QoeEvent::decode(&event.encode()).unwrap();
        assert_eq!(decoded, event);
    }
    Ok(env.events.len())
}

#[test]
fn valid_examples_pass_both() {
    let (doc, validator) = schema();
    let examples = doc["examples"].as_array().expect("examples");
    assert!(examples.len() >= 3);
    for (i, ex) in examples.iter().enumerate() {
        let errors: Vec<String> = validator.iter_errors(ex).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "example {i} fails the JSON Schema: {errors:?}"
        );
        let n =
            rust_accepts(ex).unwrap_or_else(|e| panic!("example {i} fails Rust validation: {e}"));
        assert_eq!(n, ex["events"].as_array().unwrap().len());
    }
}

#[test]
fn invalid_examples_fail_both() {
    let (doc, validator) = schema();
    let examples = doc["x-invalid-examples"]
        .as_array()
        .expect("x-invalid-examples");
    assert!(examples.len() >= 10);
    for (i, ex) in examples.iter().enumerate() {
        assert!(
            !validator.is_valid(ex),
            "invalid example {i} passes the JSON Schema"
        );
        assert!(
            rust_accepts(ex).is_err(),
            "invalid example {i} passes Rust validation"
        );
    }
}
