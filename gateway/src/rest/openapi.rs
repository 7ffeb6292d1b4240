//! The OpenAPI 3.0 document of the REST shim, generated from the same route table
//! and descriptors that serve the requests, so it cannot drift from them.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::NDJSON;
use super::routes::{Route, Table, by_template};

/// The document as pretty JSON (what `/openapi.json` serves).
pub(crate) fn document(table: &Table) -> String {
    let mut schemas = BTreeMap::new();
    schemas.insert(
        "google.rpc.Status".to_owned(),
        json!({
            "type": "object",
            "description": "An error: the gRPC code (number), a message saying what to fix, and google.rpc details a program can read, each with its @type: always an ErrorInfo (reason, domain jobmesh.dev, metadata), a BadRequest naming the field for INVALID_ARGUMENT (code 3), a RetryInfo for RESOURCE_EXHAUSTED (8) and UNAVAILABLE (14).",
            "properties": {
                "code": {"type": "integer", "format": "int32"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}}
            },
            "required": ["code", "message", "details"]
        }),
    );
    schemas.insert(
        "google.protobuf.Any".to_owned(),
        json!({
            "type": "object",
            "description": "One error detail: @type names it; the other properties are its fields. type.googleapis.com/google.rpc.ErrorInfo: reason (UPPER_SNAKE_CASE, stable), domain, metadata (strings). type.googleapis.com/google.rpc.BadRequest: fieldViolations [{field, description}]. type.googleapis.com/google.rpc.RetryInfo: retryDelay (a duration, e.g. \"1s\").",
            "properties": {
                "@type": {"type": "string"},
                "reason": {"type": "string"},
                "domain": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "fieldViolations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "description": {"type": "string"}}
                    }
                },
                "retryDelay": {"type": "string"}
            },
            "required": ["@type"],
            "additionalProperties": true
        }),
    );
    let mut paths = BTreeMap::new();
    let grouped = by_template(table);
    let mut templates: Vec<&String> = grouped.keys().collect();
    templates.sort();
    for template in templates {
        let mut item = serde_json::Map::new();
        for route in &grouped[template] {
            item.insert(
                route.method.as_str().to_ascii_lowercase(),
                operation(route, &mut schemas),
            );
        }
        paths.insert(template.clone(), Value::Object(item));
    }
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "jobmesh",
            "version": "v1",
            "description": "REST shim of the jobmesh gRPC API (grpc-gateway compatible): proto3 canonical JSON, errors as google.rpc.Status, server streams as newline-delimited JSON. Generated from the google.api.http annotations of proto/jobmesh/v1."
        },
        "servers": [{"url": "http://127.0.0.1:50051"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": schemas
        }
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(route: &Route, schemas: &mut BTreeMap<String, Value>) -> Value {
    let rpc = &route.rpc;
    let input = rpc.input();
    let mut parameters = Vec::new();
    let path_fields: Vec<&str> = route.path_fields().collect();
    for field in &path_fields {
        // Ids are UUIDs; saying so lets client generators and fuzzers send real ones.
        let schema = if field.ends_with("_id") {
            json!({"type": "string", "format": "uuid"})
        } else {
            json!({"type": "string", "minLength": 1})
        };
        parameters.push(json!({
            "name": field,
            "in": "path",
            "required": true,
            "schema": schema
        }));
    }
    let mut operation = serde_json::Map::new();
    operation.insert(
        "operationId".into(),
        json!(format!("{}_{}", rpc.parent_service().name(), rpc.name())),
    );
    operation.insert(
        "summary".into(),
        json!(format!("{}.{}", rpc.parent_service().name(), rpc.name())),
    );
    operation.insert("tags".into(), json!([rpc.parent_service().name()]));
    if route.body.is_empty() {
        for field in input.fields() {
            if path_fields.contains(&field.name()) || field.is_map() {
                continue;
            }
            if matches!(field.kind(), Kind::Message(_) | Kind::Bytes) {
                continue;
            }
            parameters.push(json!({
                "name": field.json_name(),
                "in": "query",
                "required": false,
                "schema": field_schema(&field, schemas)
            }));
        }
    } else {
        let body_schema = if route.body == "*" {
            message_schema(&input, schemas, &path_fields)
        } else {
            input
                .get_field_by_name(&route.body)
                .map(|f| field_schema(&f, schemas))
                .unwrap_or(json!({}))
        };
        operation.insert(
            "requestBody".into(),
            json!({
                "required": false,
                "content": {"application/json": {"schema": body_schema}}
            }),
        );
    }
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    let output = rpc.output();
    register(&output, schemas);
    let ok = if route.server_streaming() {
        json!({
            "description": "A stream: one JSON object per line, {\"result\": message} per message and a final {\"error\": status} if the stream fails.",
            "content": {NDJSON: {"schema": {
                "type": "object",
                "properties": {
                    "result": reference(output.full_name()),
                    "error": reference("google.rpc.Status")
                }
            }}}
        })
    } else {
        json!({
            "description": "OK",
            "content": {"application/json": {"schema": reference(output.full_name())}}
        })
    };
    operation.insert(
        "responses".into(),
        json!({
            "200": ok,
            "default": {
                "description": "An error (google.rpc.Status); the HTTP status follows grpc-gateway's table.",
                "content": {"application/json": {"schema": reference("google.rpc.Status")}}
            }
        }),
    );
    Value::Object(operation)
}

/// The schema of a request body: the message minus the fields bound by the path.
fn message_schema(
    message: &MessageDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    skip: &[&str],
) -> Value {
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        if skip.contains(&field.name()) {
            continue;
        }
        let mut schema = field_schema(&field, schemas);
        if field.name() == "task" && field.kind() == Kind::String {
            // The rule every service applies to task names.
            schema = json!({
                "type": "string",
                "pattern": jobmesh_runtime::names::TASK_NAME_PATTERN,
                "maxLength": jobmesh_runtime::names::MAX_TASK_NAME
            });
        }
        properties.insert(field.json_name().to_owned(), schema);
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// Adds `message` (and what it refers to) to the components.
fn register(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) {
    if schemas.contains_key(message.full_name()) {
        return;
    }
    schemas.insert(message.full_name().to_owned(), json!({}));
    let schema = message_schema(message, schemas, &[]);
    schemas.insert(message.full_name().to_owned(), schema);
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => entry
                .get_field_by_name("value")
                .map(|v| kind_schema(&v.kind(), schemas))
                .unwrap_or(json!({})),
            _ => json!({}),
        };
        return json!({"type": "object", "additionalProperties": value});
    }
    let item = kind_schema(&field.kind(), schemas);
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::String => json!({"type": "string"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
            "type": "integer", "format": "int32",
            "minimum": i32::MIN, "maximum": i32::MAX
        }),
        Kind::Uint32 | Kind::Fixed32 => json!({
            "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
        }
        Kind::Float | Kind::Double => json!({"type": "number"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(enumeration) => json!({
            "type": "string",
            "enum": enumeration.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()
        }),
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Struct" => {
                json!({"type": "object", "additionalProperties": true, "nullable": true})
            }
            "google.protobuf.Value" => json!({}),
            "google.protobuf.ListValue" => json!({"type": "array", "items": {}, "nullable": true}),
            "google.protobuf.Timestamp" => json!({
                "type": "string", "format": "date-time", "nullable": true,
                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
            }),
            "google.protobuf.Duration" => json!({
                "type": "string", "nullable": true, "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$"
            }),
            name => {
                register(message, schemas);
                json!({"allOf": [reference(name)], "nullable": true})
            }
        },
    }
}
