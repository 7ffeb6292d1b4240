//! Path variables and query parameters into the request message, as grpc-gateway
//! binds them: a field by its proto or JSON name (dotted into nested messages),
//! scalars and enums from their text, repeated fields by repetition.

use jobmesh_runtime::quote::quoted;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

/// A field by its proto or JSON name, following dots into nested messages.
pub(crate) fn find_field(message: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut chain = Vec::new();
    let mut current = message.clone();
    for (i, name) in path.split('.').enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))?;
        if i + 1 < path.split('.').count() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => return None,
            }
        }
        chain.push(field);
    }
    Some(chain)
}

/// Why a path variable or query parameter could not be bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BindError {
    #[error("unknown query parameter {}", quoted(.0))]
    Unknown(String),
    #[error("query parameter {}: {why}", quoted(name))]
    Value { name: String, why: String },
}

/// Sets `path` (dotted) on `message` from its text form, as grpc-gateway binds
/// path variables and query parameters: scalars and enums (by name or number),
/// repeated fields by repetition.
pub(crate) fn bind(message: &mut DynamicMessage, path: &str, text: &str) -> Result<(), BindError> {
    let chain = find_field(&message.descriptor(), path)
        .ok_or_else(|| BindError::Unknown(path.to_owned()))?;
    let Some((last, parents)) = chain.split_last() else {
        return Err(BindError::Unknown(path.to_owned()));
    };
    let mut target = message;
    for parent in parents {
        let value = target.get_field_mut(parent);
        let Value::Message(inner) = value else {
            return Err(BindError::Unknown(path.to_owned()));
        };
        target = inner;
    }
    if last.is_map() {
        return Err(BindError::Value {
            name: path.to_owned(),
            why: "map fields cannot be set from the query string".to_owned(),
        });
    }
    let value = scalar(last, text).map_err(|why| BindError::Value {
        name: path.to_owned(),
        why,
    })?;
    if last.is_list() {
        if let Value::List(items) = target.get_field_mut(last) {
            items.push(value);
        }
    } else {
        target.set_field(last, value);
    }
    Ok(())
}

fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let number = |kind: &str| format!("{} is not a valid {kind}", quoted(text));
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{} is not true or false", quoted(text))),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| number("32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| number("64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            text.parse()
                .map_err(|_| number("unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            text.parse()
                .map_err(|_| number("unsigned 64-bit integer"))?,
        ),
        Kind::Float => Value::F32(text.parse().map_err(|_| number("number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| number("number"))?),
        Kind::Enum(enumeration) => {
            let found = enumeration
                .get_value_by_name(text)
                .or_else(|| text.parse().ok().and_then(|n| enumeration.get_value(n)));
            match found {
                Some(v) => Value::EnumNumber(v.number()),
                None => {
                    let names: Vec<String> =
                        enumeration.values().map(|v| v.name().to_owned()).collect();
                    return Err(format!(
                        "{} is not one of {}",
                        quoted(text),
                        names.join(", ")
                    ));
                }
            }
        }
        Kind::Bytes | Kind::Message(_) => {
            return Err("this field cannot be set from the query string".to_owned());
        }
    })
}

/// The query parameters of a request, in order, percent-decoded.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    #[test]
    fn query_parameters_bind_by_either_name_and_refuse_unknowns() {
        let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let desc = pool
            .get_message_by_name("jobmesh.v1.ListJobsRequest")
            .expect("message");
        let mut message = DynamicMessage::new(desc);
        bind(&mut message, "pageSize", "5").expect("json name");
        bind(&mut message, "page_token", "t").expect("proto name");
        bind(&mut message, "state", "JOB_STATE_FAILED").expect("enum name");
        bind(&mut message, "labels", "a=b").expect("repeated");
        bind(&mut message, "labels", "c=d").expect("repeated");
        assert_eq!(
            message
                .get_field_by_name("page_size")
                .map(|v| v.into_owned()),
            Some(Value::I32(5))
        );
        assert_eq!(
            message.get_field_by_name("state").map(|v| v.into_owned()),
            Some(Value::EnumNumber(4))
        );
        assert_eq!(
            message.get_field_by_name("labels").map(|v| v.into_owned()),
            Some(Value::List(vec![
                Value::String("a=b".into()),
                Value::String("c=d".into())
            ]))
        );
        assert_eq!(
            bind(&mut message, "nope", "1"),
            Err(BindError::Unknown("nope".into()))
        );
        assert!(matches!(
            bind(&mut message, "pageSize", "ten"),
            Err(BindError::Value { .. })
        ));
        assert!(matches!(
            bind(&mut message, "state", "DONE"),
            Err(BindError::Value { .. })
        ));
    }
}
