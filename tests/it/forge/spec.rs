//! The forges' published API descriptions, as the stand-ins use them: every answer body is
//! built from the response schema of its operation (all required fields, null where the
//! schema allows null) and validated against that schema before it is served, so the
//! stand-ins cannot drift from the real APIs again.
//!
//! The schemas are extracts of Forgejo's swagger document and GitHub's OpenAPI description
//! (`fixtures/forge-api/`, made by `scripts/forge-api-extract`, which names the source commit
//! and version). OpenAPI 3.0's `nullable: true` and go-swagger's `x-nullable: true` (which the
//! extract script sets on Forgejo's Go pointer and slice fields) have no JSON Schema keyword:
//! [`to_json_schema`] rewrites them as `type: [T, "null"]` (with `null` added to an `enum`), or
//! `anyOf: [schema, {type: null}]` where the schema has no `type` (a `$ref`, `allOf`, `oneOf`).
//! Formats are not validated: real servers send `""` in `format: email` and `uri` fields
//! (Forgejo's `Ghost` user has no email).

use std::sync::OnceLock;

use nixprox::forge::ForgeKind;
use serde_json::{Map, Value, json};

use crate::support::nix::repo;

/// The operations nixprox calls, named as in the extracts (`METHOD path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    User,
    ListComments,
    CreateComment,
    EditComment,
    ListIssues,
    CreateIssue,
    EditIssue,
    CommitPulls,
    CreateStatus,
}

impl Op {
    pub fn key(self, kind: ForgeKind) -> &'static str {
        match (kind, self) {
            (ForgeKind::GitHub, Op::User) | (ForgeKind::Forgejo, Op::User) => "GET /user",
            (ForgeKind::GitHub, Op::ListComments) => {
                "GET /repos/{owner}/{repo}/issues/{issue_number}/comments"
            }
            (ForgeKind::GitHub, Op::CreateComment) => {
                "POST /repos/{owner}/{repo}/issues/{issue_number}/comments"
            }
            (ForgeKind::GitHub, Op::EditComment) => {
                "PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}"
            }
            (ForgeKind::GitHub, Op::ListIssues) => "GET /repos/{owner}/{repo}/issues",
            (ForgeKind::GitHub, Op::CreateIssue) => "POST /repos/{owner}/{repo}/issues",
            (ForgeKind::GitHub, Op::EditIssue) => "PATCH /repos/{owner}/{repo}/issues/{issue_number}",
            (ForgeKind::GitHub, Op::CommitPulls) => "GET /repos/{owner}/{repo}/commits/{commit_sha}/pulls",
            (ForgeKind::GitHub, Op::CreateStatus) => "POST /repos/{owner}/{repo}/statuses/{sha}",
            (ForgeKind::Forgejo, Op::ListComments) => "GET /repos/{owner}/{repo}/issues/{index}/comments",
            (ForgeKind::Forgejo, Op::CreateComment) => "POST /repos/{owner}/{repo}/issues/{index}/comments",
            (ForgeKind::Forgejo, Op::EditComment) => "PATCH /repos/{owner}/{repo}/issues/comments/{id}",
            (ForgeKind::Forgejo, Op::ListIssues) => "GET /repos/{owner}/{repo}/issues",
            (ForgeKind::Forgejo, Op::CreateIssue) => "POST /repos/{owner}/{repo}/issues",
            (ForgeKind::Forgejo, Op::EditIssue) => "PATCH /repos/{owner}/{repo}/issues/{index}",
            (ForgeKind::Forgejo, Op::CommitPulls) => "GET /repos/{owner}/{repo}/commits/{sha}/pull",
            (ForgeKind::Forgejo, Op::CreateStatus) => "POST /repos/{owner}/{repo}/statuses/{sha}",
        }
    }

    pub const ALL: [Op; 9] = [
        Op::User,
        Op::ListComments,
        Op::CreateComment,
        Op::EditComment,
        Op::ListIssues,
        Op::CreateIssue,
        Op::EditIssue,
        Op::CommitPulls,
        Op::CreateStatus,
    ];
}

/// One forge's extract.
pub struct Spec {
    kind: ForgeKind,
    doc: Value,
    /// The definitions with nullability rewritten for JSON Schema.
    definitions: Value,
}

impl Spec {
    /// The extract of `kind`, loaded once per test process.
    pub fn of(kind: ForgeKind) -> &'static Spec {
        static GITHUB: OnceLock<Spec> = OnceLock::new();
        static FORGEJO: OnceLock<Spec> = OnceLock::new();
        let (cell, file) = match kind {
            ForgeKind::GitHub => (&GITHUB, "github-openapi-extract.json"),
            ForgeKind::Forgejo => (&FORGEJO, "forgejo-swagger-extract.json"),
        };
        cell.get_or_init(|| {
            let path = repo().join("fixtures/forge-api").join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("read {} (regenerate with scripts/forge-api-extract): {e}", path.display())
            });
            let doc: Value = serde_json::from_str(&text).expect("the extract is JSON");
            let definitions = to_json_schema(&doc["definitions"]);
            Spec { kind, doc, definitions }
        })
    }

    pub fn source(&self) -> &Value {
        &self.doc["source"]
    }

    /// The documented response schema of `op` for `status`; for an undocumented error status,
    /// the forge's generic error body (GitHub `basic-error`, Forgejo `APIError`).
    fn response_schema(&self, op: Op, status: u16) -> Value {
        let responses = &self.doc["operations"][op.key(self.kind)]["responses"];
        assert!(responses.is_object(), "operation `{}` is not in the extract", op.key(self.kind));
        match responses.get(status.to_string()) {
            Some(schema) => schema.clone(),
            None if status >= 400 => {
                let name = match self.kind {
                    ForgeKind::GitHub => "basic-error",
                    ForgeKind::Forgejo => "APIError",
                };
                json!({ "$ref": format!("#/definitions/{name}") })
            }
            None => panic!(
                "`{}` documents no {status} answer (documented: {:?})",
                op.key(self.kind),
                responses.as_object().map(|o| o.keys().collect::<Vec<_>>())
            ),
        }
    }

    /// Validates an answer body; the error lists every violation with its JSON pointer.
    pub fn check(&self, op: Op, status: u16, body: &Value) -> Result<(), String> {
        let mut schema = to_json_schema(&self.response_schema(op, status));
        schema["definitions"] = self.definitions.clone();
        let validator = jsonschema::draft4::options()
            .should_validate_formats(false)
            .build(&schema)
            .unwrap_or_else(|e| panic!("the schema of `{}` compiles: {e}", op.key(self.kind)));
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{} at `{}`", e, e.instance_path())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?} answer of `{}` {status}:\n  {}",
                self.kind,
                op.key(self.kind),
                errors.join("\n  ")
            ))
        }
    }

    /// Panics unless `body` is a valid answer: every stand-in answer goes through this.
    pub fn assert_valid(&self, op: Op, status: u16, body: &Value) {
        if let Err(e) = self.check(op, status, body) {
            panic!("a stand-in answer drifted from the published schema: {e}");
        }
    }

    /// A value of definition `name` with every required property (every property, for
    /// Forgejo's swagger, which lists none: Go writes every field), null wherever the schema
    /// allows null, then `fields` laid over it.
    pub fn example(&self, name: &str, fields: Value) -> Value {
        // The definition itself, even when it is a `nullable-…` one: the caller wants a value.
        let mut definition = self.definition(name).clone();
        if let Some(map) = definition.as_object_mut() {
            map.remove("nullable");
        }
        let mut value = self.generate(&definition, 0);
        overlay(&mut value, fields);
        value
    }

    fn definition(&self, reference: &str) -> &Value {
        let name = reference.trim_start_matches("#/definitions/");
        self.doc["definitions"].get(name).unwrap_or_else(|| panic!("definition `{name}` is in the extract"))
    }

    fn generate(&self, schema: &Value, depth: usize) -> Value {
        assert!(depth < 40, "the schema recurses without a nullable break");
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            // A nullable reference (a Go pointer) is null: it also ends recursive types.
            if nullable(schema) {
                return Value::Null;
            }
            return self.generate(self.definition(reference), depth + 1);
        }
        if nullable(schema) {
            return Value::Null;
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Value::Object(Map::new());
            for part in parts {
                overlay(&mut merged, self.generate(part, depth + 1));
            }
            return merged;
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(first) = schema.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
                return self.generate(first, depth + 1);
            }
        }
        if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|a| a.first()) {
            return first.clone();
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => json!(match schema.get("format").and_then(Value::as_str) {
                Some("date-time") => "2026-11-20T10:00:00Z",
                Some("uri") => "https://forge.example/",
                Some("email") => "someone@forge.example",
                _ => "",
            }),
            Some("integer") => json!(0),
            Some("number") => json!(0.0),
            Some("boolean") => json!(false),
            Some("array") => json!([]),
            _ => {
                let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                    return json!({});
                };
                let required: Vec<&str> = match schema.get("required").and_then(Value::as_array) {
                    Some(names) => names.iter().filter_map(Value::as_str).collect(),
                    None if self.kind == ForgeKind::Forgejo => {
                        properties.keys().map(String::as_str).collect()
                    }
                    None => Vec::new(),
                };
                let mut out = Map::new();
                for name in required {
                    if let Some(property) = properties.get(name) {
                        out.insert(name.to_string(), self.generate(property, depth + 1));
                    }
                }
                Value::Object(out)
            }
        }
    }
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable") == Some(&json!(true)) || schema.get("x-nullable") == Some(&json!(true))
}

/// Lays `fields` over `value`: objects merge key by key, anything else replaces.
pub fn overlay(value: &mut Value, fields: Value) {
    match (value, fields) {
        (Value::Object(base), Value::Object(fields)) => {
            for (key, field) in fields {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && field.is_object() => overlay(slot, field),
                    _ => {
                        base.insert(key, field);
                    }
                }
            }
        }
        (slot, field) => *slot = field,
    }
}

/// OpenAPI 3.0 / Swagger 2.0 schema → JSON Schema draft 4: `nullable`/`x-nullable` become an
/// explicit `null` (see the module header); everything else is already draft-4 JSON Schema.
pub fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        Value::Object(map) => {
            let mut out: Map<String, Value> = Map::new();
            for (key, value) in map {
                if key == "nullable" || key == "x-nullable" {
                    continue;
                }
                // `properties` and `definitions` are maps of schemas, not schemas.
                let converted = match key.as_str() {
                    "properties" | "definitions" | "patternProperties" => Value::Object(
                        value
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| (k.clone(), to_json_schema(v))).collect())
                            .unwrap_or_default(),
                    ),
                    "example" | "examples" | "enum" | "default" | "required" => value.clone(),
                    _ => to_json_schema(value),
                };
                out.insert(key.clone(), converted);
            }
            if !nullable(schema) {
                return Value::Object(out);
            }
            if out.contains_key("$ref") {
                // Draft 4 ignores a `$ref`'s siblings: wrap it.
                return json!({ "anyOf": [out, { "type": "null" }] });
            }
            match out.get("type").cloned() {
                Some(Value::String(t)) => {
                    out.insert("type".into(), json!([t, "null"]));
                    if let Some(Value::Array(values)) = out.get_mut("enum") {
                        values.push(Value::Null);
                    }
                    Value::Object(out)
                }
                _ => json!({ "anyOf": [out, { "type": "null" }] }),
            }
        }
        other => other.clone(),
    }
}
