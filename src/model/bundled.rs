//! Models bundled in the binary, so `gcm-inspect run` works with no files at all.

use candle_core::Device;

use super::predictor::Predictor;
use crate::error::{Error, Result};

/// Loads the bundled model `name` (`demo`).
pub fn load(name: &str, _device: &Device) -> Result<Predictor> {
    Err(Error::model(
        format!("builtin:{name}"),
        "no bundled model of that name in this build",
    ))
}
