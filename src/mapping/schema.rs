//! A JSON Schema (draft 2020-12) of the mapping file format, generated from the same Rust types
//! serde reads the files into ([`MappingFile`] and the `verify:` specs), so it cannot drift from
//! what the loader accepts. Editors use it for completion and inline errors, e.g. with the YAML
//! language server: `# yaml-language-server: $schema=casegate-mapping.schema.json`.
//!
//! The schema checks shape only: paths, templates, queue ids and `${ENV}` references are
//! checked by `casegate check`.

use serde_json::Value;

use super::model::MappingFile;

/// The JSON Schema of one mapping file.
pub fn mapping_schema() -> Value {
    let mut schema = schemars::schema_for!(MappingFile);
    schema.insert("title".into(), "casegate mapping file".into());
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Map, Value, json};

    use super::mapping_schema;

    /// Every `scheme:` a `verify:` block accepts, as written in mapping files.
    const SCHEMES: [&str; 12] = [
        "shopify",
        "stripe",
        "github",
        "hubspot",
        "standard-webhooks",
        "slack",
        "zendesk",
        "woocommerce",
        "hmac",
        "basic",
        "token",
        "none",
    ];

    /// The schema `schema` points to, following a local `$ref`.
    fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("local reference");
                resolve(root, root.pointer(pointer).expect("reference resolves"))
            }
            None => schema,
        }
    }

    /// The subschemas `schema` is made of (itself, and its `allOf`/`anyOf`/`oneOf` branches).
    fn branches<'a>(root: &'a Value, schema: &'a Value, out: &mut Vec<&'a Value>) {
        let schema = resolve(root, schema);
        out.push(schema);
        for key in ["allOf", "anyOf", "oneOf"] {
            for branch in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                branches(root, branch, out);
            }
        }
    }

    /// Object keys in `value` that `schema` does not declare, as JSON pointers. A schema that
    /// declares no properties (e.g. `true` for a payload) accepts any key below it.
    fn undeclared_keys(root: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut all = Vec::new();
        branches(root, schema, &mut all);
        let mut found = Vec::new();
        match value {
            Value::Object(object) => {
                let declared: Vec<(&String, &Value)> = all
                    .iter()
                    .filter_map(|s| s.get("properties").and_then(Value::as_object))
                    .flat_map(Map::iter)
                    .collect();
                let open = declared.is_empty()
                    && all
                        .iter()
                        .all(|s| s.get("additionalProperties") != Some(&json!(false)));
                if open {
                    return found;
                }
                for (key, child) in object {
                    let schemas: Vec<&Value> = declared
                        .iter()
                        .filter(|(name, _)| *name == key)
                        .map(|(_, s)| *s)
                        .collect();
                    if schemas.is_empty() {
                        found.push(format!("{at}/{key}"));
                        continue;
                    }
                    // The key may be declared by several branches: fine if any accepts it.
                    let per_branch: Vec<Vec<String>> = schemas
                        .iter()
                        .map(|s| undeclared_keys(root, s, child, &format!("{at}/{key}")))
                        .collect();
                    if per_branch.iter().all(|v| !v.is_empty()) {
                        found.extend(per_branch.into_iter().next().unwrap_or_default());
                    }
                }
            }
            Value::Array(items) => {
                for schema in all.iter().filter_map(|s| s.get("items")) {
                    for (i, item) in items.iter().enumerate() {
                        found.extend(undeclared_keys(root, schema, item, &format!("{at}/{i}")));
                    }
                }
            }
            _ => {}
        }
        found
    }

    fn shipped_mappings() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let value: Value = serde_yaml_ng::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (path.display().to_string(), value)
            })
            .collect()
    }

    #[test]
    fn the_schema_describes_a_mapping_file() {
        let schema = mapping_schema();
        assert_eq!(schema["type"], "object");
        assert!(
            schema["$schema"]
                .as_str()
                .unwrap()
                .contains("json-schema.org")
        );
        let properties = schema["properties"].as_object().unwrap();
        for key in [
            "source",
            "verify",
            "event_type",
            "delivery_id",
            "rules",
            "examples",
        ] {
            assert!(properties.contains_key(key), "no property {key}");
        }
        assert_eq!(schema["additionalProperties"], json!(false));
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(required.contains(&"verify") && required.contains(&"rules"));
        let rule = resolve(&schema, &schema["properties"]["rules"]["items"]);
        for key in [
            "name", "when", "queue", "for_each", "title", "data", "labels",
        ] {
            assert!(rule["properties"].get(key).is_some(), "rule has no {key}");
        }
    }

    #[test]
    fn value_maps_and_template_filters_are_in_the_schema() {
        let schema = mapping_schema();
        let maps = &schema["properties"]["maps"];
        assert_eq!(maps["type"], "object", "{maps}");
        assert_eq!(
            maps["additionalProperties"]["additionalProperties"]["type"], "string",
            "{maps}"
        );
        let rule = resolve(&schema, &schema["properties"]["rules"]["items"]);
        let title = rule["properties"]["title"]["description"].as_str().unwrap();
        for feature in [
            "??", "join(", "json", "date(", "default(", "replace(", "map(",
        ] {
            assert!(
                title.contains(feature),
                "title description lacks {feature}: {title}"
            );
        }
    }

    #[test]
    fn the_verify_schema_names_every_scheme() {
        let schema = mapping_schema();
        let verify = resolve(&schema, &schema["properties"]["verify"]).to_string();
        for scheme in SCHEMES {
            assert!(
                verify.contains(&format!("\"{scheme}\"")),
                "scheme {scheme} missing from {verify}"
            );
        }
    }

    #[test]
    fn every_key_of_every_shipped_mapping_is_in_the_schema() {
        let schema = mapping_schema();
        let mappings = shipped_mappings();
        assert!(!mappings.is_empty(), "no mappings/*.yaml shipped");
        let top: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        for (file, value) in &mappings {
            for key in value.as_object().unwrap().keys() {
                assert!(
                    top.contains(&key),
                    "{file}: top-level key {key} not in schema"
                );
            }
            let undeclared = undeclared_keys(&schema, &schema, value, "");
            assert!(
                undeclared.is_empty(),
                "{file}: keys not in schema: {undeclared:?}"
            );
        }
    }

    #[test]
    fn a_misspelt_key_is_caught_by_the_schema_walk() {
        let schema = mapping_schema();
        let bad = json!({
            "verify": {"scheme": "none"},
            "rules": [{"name": "r", "queue": "q", "title": "t", "lables": []}],
        });
        assert_eq!(
            undeclared_keys(&schema, &schema, &bad, ""),
            vec!["/rules/0/lables".to_string()]
        );
    }
}
