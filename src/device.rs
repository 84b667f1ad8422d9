//! Parsing `--device cpu|cuda[:N]`. A CUDA device that cannot be had is an
//! error, never a silent fall-back to the CPU.

use candle_core::Device;

use crate::error::{Error, Result};

/// A compute device as named in a config or on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// A GPU by its CUDA ordinal.
    Cuda(usize),
}

/// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`; the error says what is expected.
/// Whether the device exists is [`open`]'s question.
pub fn parse(spec: &str) -> std::result::Result<DeviceSpec, String> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(DeviceSpec::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => Some(0),
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()),
        None => None,
    };
    ordinal
        .map(DeviceSpec::Cuda)
        .ok_or_else(|| format!("{spec:?} is not a device: expected cpu, cuda or cuda:N"))
}

/// Opens the device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
/// A name that is not a device is a usage error; a device that cannot be had
/// is a device error.
pub fn open(spec: &str) -> Result<Device> {
    let ordinal = match parse(spec).map_err(Error::Usage)? {
        DeviceSpec::Cpu => return Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => n,
    };
    let spec = spec.trim();
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
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(open("cuda:x").is_err());
        assert_eq!(parse(" cuda:3 "), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(parse("cuda"), Ok(DeviceSpec::Cuda(0)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = open("cuda:0").unwrap_err();
        assert!(e.to_string().contains("built without CUDA support"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::DEVICE);
    }
}
