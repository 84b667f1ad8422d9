//! Parsing `--device cpu|cuda[:N]`. A CUDA device that cannot be had is an
//! error, never a silent fall-back to the CPU.

use candle_core::Device;

use crate::error::{Error, Result};

/// Opens the device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn open(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::device(spec, "expected cpu, cuda or cuda:N"))?,
        None => return Err(Error::device(spec, "expected cpu, cuda or cuda:N")),
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::device(
            spec,
            "this gcm-inspect was built without CUDA support (rebuild with `--features cuda`)",
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::device(spec, format!("cannot open GPU {ordinal}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_nonsense_is_refused() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        let e = open("gpu0").unwrap_err();
        assert!(
            e.to_string().contains("expected cpu, cuda or cuda:N"),
            "{e}"
        );
        assert!(open("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = open("cuda:0").unwrap_err();
        assert!(e.to_string().contains("built without CUDA support"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::DEVICE);
    }
}
