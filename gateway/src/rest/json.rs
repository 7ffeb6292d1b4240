//! Proto3 canonical JSON of a response, as grpc-gateway writes it.

use prost_reflect::{DynamicMessage, SerializeOptions};
use tonic::Status;

/// Proto3 canonical JSON of a response message, default values included.
pub(super) fn to_json(
    desc: &prost_reflect::MessageDescriptor,
    bytes: &[u8],
) -> Result<String, Status> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::internal(format!("cannot decode the response: {e}")))?;
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))?;
    let mut json: serde_json::Value = serde_json::from_slice(&out.into_inner())
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))?;
    emit_unpopulated(desc, &mut json);
    integral_floats(&mut json);
    serde_json::to_string(&json)
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
}

/// Doubles with no fraction as integers (`2`, not `2.0`), as protojson writes them.
fn integral_floats(json: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match json {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < EXACT
            {
                let whole = f as i64;
                *json = serde_json::Value::from(whole);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// Every field of the schema in the answer, in field order, unset message fields
/// as `null`: what grpc-gateway's marshaler (protojson `EmitUnpopulated`) sends.
fn emit_unpopulated(desc: &prost_reflect::MessageDescriptor, json: &mut serde_json::Value) {
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    let serde_json::Value::Object(object) = json else {
        return;
    };
    let mut ordered = serde_json::Map::new();
    for field in desc.fields() {
        let present = object.remove(field.json_name());
        if present.is_none() && field.containing_oneof().is_some() {
            continue;
        }
        let mut value = present.unwrap_or(serde_json::Value::Null);
        if let prost_reflect::Kind::Message(inner) = field.kind()
            && !field.is_map()
        {
            match &mut value {
                serde_json::Value::Array(items) => {
                    items
                        .iter_mut()
                        .for_each(|item| emit_unpopulated(&inner, item));
                }
                item => emit_unpopulated(&inner, item),
            }
        }
        ordered.insert(field.json_name().to_owned(), value);
    }
    ordered.append(object);
    *object = ordered;
}
