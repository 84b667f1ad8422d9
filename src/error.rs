//! One error type for the whole product, and the exit codes it maps to.
//!
//! The exit codes are part of the interface: systemd's `RestartPreventExitStatus=`
//! lists the ones that a restart cannot fix (bad configuration, bad model files),
//! so a broken config does not turn into a restart loop. Keep this table in sync
//! with the README's "Exit codes" section.

use std::path::{Path, PathBuf};

/// Exit codes of the `gcm-inspect` binary.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A runtime failure that a restart may fix (I/O error, internal error).
    pub const RUNTIME: i32 = 1;
    /// Bad command-line usage (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// A configuration file is invalid (unknown key, wrong type, bad value).
    pub const CONFIG: i32 = 3;
    /// Input data is unusable (missing folder, corrupt image, wrong shape).
    pub const DATA: i32 = 4;
    /// Model files are unusable (missing tensor, wrong shape, NaN, card mismatch).
    pub const MODEL: i32 = 5;
    /// A device is unavailable (no CUDA support, no GPU, camera missing).
    pub const DEVICE: i32 = 6;
    /// An audit found divergent evidence (`verify`).
    pub const DIVERGENT: i32 = 7;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file (daemon or training) is invalid.
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// An input image, folder or manifest is unusable.
    #[error("data {path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// Model files are unusable.
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// A compute device or camera is unavailable.
    #[error("device {name}: {msg}")]
    Device { name: String, msg: String },
    /// An audit found evidence that does not reproduce its decision.
    #[error("{0}")]
    Divergent(String),
    /// Bad arguments that clap could not catch (e.g. mutually dependent values).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn config(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn data(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn model(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn device(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Device {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => exit::CONFIG,
            Error::Data { .. } => exit::DATA,
            Error::Model { .. } => exit::MODEL,
            Error::Device { .. } => exit::DEVICE,
            Error::Divergent(_) => exit::DIVERGENT,
            Error::Usage(_) => exit::USAGE,
            Error::Io { .. } | Error::Candle(_) | Error::Runtime(_) => exit::RUNTIME,
        }
    }
}

/// Attach a path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
