//! Models bundled in the binary, so `gcm-inspect run` works with no files at
//! all. `builtin:demo` is `weights/demo/`, trained on the synthetic EL set
//! by the commands in `weights/README.md`.

use std::path::Path;

use super::checkpoint::{load_parts, LoadedModel};
use crate::error::{Error, Result};

const DEMO_CARD: &str = include_str!("../../weights/demo/model.json");
const DEMO_WEIGHTS: &[u8] = include_bytes!("../../weights/demo/model.safetensors");

/// Names of the bundled models.
pub const NAMES: [&str; 1] = ["demo"];

/// The bundled model `name`, checked like a model directory.
pub fn loaded(name: &str) -> Result<LoadedModel> {
    let origin = format!("builtin:{name}");
    match name {
        "demo" => load_parts(Path::new(&origin), DEMO_CARD, DEMO_WEIGHTS),
        _ => Err(Error::model(
            &origin,
            format!(
                "no bundled model of that name (bundled: {})",
                NAMES.join(", ")
            ),
        )),
    }
}

/// A model directory or `builtin:NAME`, loaded and checked.
pub fn open(spec: &str) -> Result<LoadedModel> {
    match spec.strip_prefix("builtin:") {
        Some(name) => loaded(name),
        None => super::checkpoint::load(Path::new(spec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_loads_and_unknown_names_are_refused() {
        let m = loaded("demo").unwrap();
        assert_eq!(
            m.card.model.classes,
            vec!["crack", "inactive", "ok", "spot"]
        );
        let e = loaded("nope").unwrap_err().to_string();
        assert!(e.contains("builtin:nope") && e.contains("demo"), "{e}");
    }
}
