//! JSON Schemas of the files other tools read: a decision log line and
//! `evidence.json`, generated from the Rust types that write them
//! (`schemars`), so that the schema cannot drift from the format.
//!
//! The generated files live in `docs/schema/` and are committed; a test
//! fails when a type changed and the file was not regenerated
//! (`GCM_UPDATE_SCHEMAS=1 cargo test --lib schema` writes them).
//!
//! Versioning: a log line names its schema in its `schema` field
//! ([`LOG_SCHEMA`], `name/major.minor`). A minor version only adds optional
//! fields, so a reader takes any minor version of its major one (the fields
//! it does not know are ignored) and refuses another major version with a
//! message naming both; `evidence.json` names its format in `format`, read
//! by the versions listed in [`crate::evidence::EVIDENCE_FORMATS_READ`].

use schemars::JsonSchema;

use crate::evidence::EvidenceRecord;
use crate::pipeline::sink::log::LogLine;
pub use crate::pipeline::sink::log::LOG_SCHEMA;

/// The committed schema files, relative to the repository root, each with
/// the text generated from its type.
pub fn files() -> Vec<(&'static str, String)> {
    vec![
        (
            "docs/schema/decision-log-line.schema.json",
            render::<LogLine>(),
        ),
        (
            "docs/schema/evidence.schema.json",
            render::<EvidenceRecord>(),
        ),
    ]
}

fn render<T: JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn committed_schemas_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let update = std::env::var_os("GCM_UPDATE_SCHEMAS").is_some();
        for (rel, text) in files() {
            let p = root.join(rel);
            if update {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                committed == text,
                "{rel} is not the schema of the current types; regenerate it with `GCM_UPDATE_SCHEMAS=1 cargo test --lib schema` and commit it"
            );
        }
    }

    /// The schema describes real lines: every field a written line has is
    /// a property of the schema, and the required ones are there.
    #[test]
    fn the_log_schema_names_the_fields_of_a_written_line() {
        let schema: serde_json::Value = serde_json::from_str(&render::<LogLine>()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let line = crate::pipeline::sink::log::example_line();
        let v = serde_json::to_value(&line).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(props.contains_key(k), "{k} is not in the schema");
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        for k in ["frame", "class", "scores", "model"] {
            assert!(required.contains(&k), "{k} not required: {required:?}");
        }
        assert!(
            !required.contains(&"schema"),
            "old lines have no schema field"
        );
    }
}
