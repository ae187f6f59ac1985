//! The OpenAPI 3.1 document of a server's REST routes, generated from the
//! same descriptors the routes come from: paths and verbs from
//! `google.api.http`, schemas from the messages (their proto3 JSON form),
//! descriptions from the `.proto` comments, the bearer scheme, and Google's
//! JSON error shape for every error answer. `docs/openapi.json` is this
//! document for the gateway (every service); a test keeps the two equal.

use std::collections::BTreeMap;

use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    MethodDescriptor,
};
use serde_json::{Map, Value, json};

use super::routes::{BodyTarget, Route, Routes};

/// The document for `routes`.
pub fn document(pool: &DescriptorPool, routes: &Routes) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    for route in routes.iter() {
        let base = format!(
            "{}_{}",
            route.method.parent_service().name(),
            route.method.name()
        );
        let seen = operation_ids.entry(base.clone()).or_default();
        let operation_id = match *seen {
            0 => base,
            n => format!("{base}{}", n + 1),
        };
        *seen += 1;
        let operation = operation(route, operation_id, &mut schemas);
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(route.verb.as_str().to_ascii_lowercase(), operation);
    }
    schemas.add_error_model(pool);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Casebook",
            "version": "v1",
            "description": "The caller's cases and identity over HTTP/JSON. Every method is also \
                served over gRPC, grpc-web and Connect at /{package.Service}/{Method}. \
                Authenticate with the Better Auth JWT as a bearer token.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT issued by Better Auth, verified against its JWKS.",
                }
            },
            "responses": {
                "Error": {
                    "description": "A google.rpc.Status in Google's JSON error shape; \
                        details carry an ErrorInfo whose reason is stable.",
                    "content": { "application/json": { "schema": schema_ref("Error") } },
                }
            },
            "schemas": schemas.0,
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(route: &Route, operation_id: String, schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let input = method.input();
    let mut parameters = Vec::new();
    for (name, field, pattern) in route.template.parameters() {
        parameters.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "schema": { "type": "string" },
            "description": format!("Fills `{field}` as `{pattern}`, this segment standing for `*`."),
        }));
    }
    let bound: Vec<&str> = route.template.fields().collect();
    if !matches!(route.body, BodyTarget::Whole) {
        for field in input.fields() {
            let in_body = matches!(&route.body, BodyTarget::Field(name) if name == field.name());
            if bound.contains(&field.name()) || in_body || !queryable(&field) {
                continue;
            }
            parameters.push(json!({
                "name": field.json_name(),
                "in": "query",
                "schema": schemas.field(&field),
                "description": comment(&field.parent_file(), field.path()).unwrap_or_default(),
            }));
        }
    }
    let has = |name: &str| {
        input.get_field_by_name(name).is_some()
            || matches!(&route.body, BodyTarget::Field(body)
            if input.get_field_by_name(body).is_some_and(|f| match f.kind() {
                Kind::Message(m) => m.get_field_by_name(name).is_some(),
                _ => false,
            }))
    };
    if has("request_id") {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "schema": { "type": "string" },
            "description": "The request id: a retry with the same key returns the first result.",
        }));
    }
    if has("etag") && route.verb != http::Method::GET {
        parameters.push(json!({
            "name": "If-Match", "in": "header", "schema": { "type": "string" },
            "description": "Only if the resource still has this ETag (412 otherwise).",
        }));
    }
    let output = method.output();
    let has_etag = output.get_field_by_name("etag").is_some();
    if has_etag && route.verb == http::Method::GET {
        parameters.push(json!({
            "name": "If-None-Match", "in": "header", "schema": { "type": "string" },
            "description": "304 without a body when the resource still has this ETag.",
        }));
    }
    if method.is_server_streaming() && input.get_field_by_name("resume_token").is_some() {
        parameters.push(json!({
            "name": "Last-Event-ID", "in": "header", "schema": { "type": "string" },
            "description": "Sent by a reconnecting EventSource: the stream resumes after that event (as `resumeToken`).",
        }));
    }
    let content = match method.is_server_streaming() {
        // OpenAPI cannot type the events; the description does.
        true => json!({ "text/event-stream": { "schema": {
            "type": "string",
            "description": format!(
                "Server-Sent Events. Each event's `data` is a {} as JSON; its `id` is the message's `resumeToken`. A failure after the stream started is an `error` event whose `data` is the error JSON.",
                output.full_name()
            ),
        } } }),
        false => json!({ "application/json": { "schema": schemas.message(&output) } }),
    };
    let mut ok = json!({
        "description": summary(method).unwrap_or_else(|| "OK".to_owned()),
        "content": content,
    });
    if has_etag {
        ok["headers"] = json!({ "ETag": {
            "description": "The resource's etag, quoted.", "schema": { "type": "string" } } });
    }
    let mut responses = json!({
        "200": ok,
        "default": { "$ref": "#/components/responses/Error" },
    });
    if has_etag && route.verb == http::Method::GET {
        responses["304"] = json!({ "description": "Not modified since the ETag sent." });
    }
    let mut operation = json!({
        "operationId": operation_id,
        "tags": [method.parent_service().name()],
        "summary": summary(method).unwrap_or_default(),
        "description": comment(&method.parent_file(), method.path()).unwrap_or_default(),
        "parameters": parameters,
        "responses": responses,
    });
    let body_schema = match &route.body {
        BodyTarget::None => None,
        BodyTarget::Whole => Some(schemas.message(&input)),
        BodyTarget::Field(name) => input.get_field_by_name(name).map(|f| schemas.field(&f)),
    };
    if let Some(schema) = body_schema {
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    operation
}

/// Whether a field can be given as a query parameter.
fn queryable(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(message) => matches!(
            message.full_name(),
            "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
        ),
        _ => !field.is_map(),
    }
}

/// The first sentence of a method's comment.
fn summary(method: &MethodDescriptor) -> Option<String> {
    let text = comment(&method.parent_file(), method.path())?;
    let first = text.split(". ").next().unwrap_or(&text);
    Some(first.trim_end_matches('.').to_owned())
}

/// The leading comment at `path` in `file`, lines joined.
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!joined.is_empty()).then_some(joined)
}

/// The component schemas, by full message name.
#[derive(Default)]
struct Schemas(BTreeMap<String, Value>);

impl Schemas {
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.0.contains_key(&name) {
            // Reserve the name first: messages may refer to themselves.
            self.0.insert(name.clone(), Value::Null);
            let mut properties = Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                if let Some(text) = comment(&field.parent_file(), field.path()) {
                    if text.starts_with("Output only") || text.contains(". Output only") {
                        schema["readOnly"] = Value::Bool(true);
                    }
                    schema["description"] = Value::String(text);
                }
                properties.insert(field.json_name().to_owned(), schema);
            }
            let mut schema = json!({ "type": "object", "properties": properties });
            if let Some(text) = comment(&message.parent_file(), message.path()) {
                schema["description"] = Value::String(text);
            }
            self.0.insert(name.clone(), schema);
        }
        schema_ref(&name)
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => entry
                    .get_field_by_name("value")
                    .map(|value| self.single(&value))
                    .unwrap_or_else(|| json!({})),
                _ => json!({}),
            };
            return json!({ "type": "object", "additionalProperties": value });
        }
        let single = self.single(field);
        if field.is_list() {
            json!({ "type": "array", "items": single })
        } else {
            single
        }
    }

    fn single(&mut self, field: &FieldDescriptor) -> Value {
        match field.kind() {
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64" }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "int64" })
            }
            Kind::Float | Kind::Double => json!({ "type": "number" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(descriptor) => enumeration(&descriptor),
            Kind::Message(message) => self.message(&message),
        }
    }

    /// Google's JSON error shape and the detail types Casebook sends.
    fn add_error_model(&mut self, pool: &DescriptorPool) {
        let mut detail_refs = Vec::new();
        for name in [
            "google.rpc.ErrorInfo",
            "google.rpc.BadRequest",
            "google.rpc.RetryInfo",
        ] {
            if let Some(message) = pool.get_message_by_name(name) {
                let reference = self.message(&message);
                if let Some(Value::Object(schema)) = self.0.get_mut(name) {
                    let properties = schema.entry("properties").or_insert_with(|| json!({}));
                    properties["@type"] =
                        json!({ "type": "string", "const": format!("type.googleapis.com/{name}") });
                }
                detail_refs.push(reference);
            }
        }
        self.0.insert(
            "Error".to_owned(),
            json!({
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message", "status"],
                        "properties": {
                            "code": { "type": "integer", "description": "The HTTP status." },
                            "message": { "type": "string", "description": "For humans." },
                            "status": { "type": "string", "description": "The gRPC code's name, e.g. NOT_FOUND." },
                            "details": { "type": "array", "items": { "anyOf": detail_refs } },
                        },
                    }
                },
            }),
        );
    }
}

fn enumeration(descriptor: &EnumDescriptor) -> Value {
    let names: Vec<String> = descriptor.values().map(|v| v.name().to_owned()).collect();
    json!({ "type": "string", "enum": names })
}

/// The JSON schemas of the well-known types used, by their proto3 JSON form.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" })
        }
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Comma-separated field paths, e.g. `title,status`."
        }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        _ => return None,
    })
}
