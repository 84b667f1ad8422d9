//! One error type for the whole product, and the exit codes it maps to.
//!
//! The exit codes are part of the interface: systemd's `RestartPreventExitStatus=`
//! lists the ones that a restart cannot fix (bad configuration, bad model files),
//! so a broken config does not turn into a restart loop. Keep this table in sync
//! with the README's "Exit codes" section.

use std::path::{Path, PathBuf};

/// Exit codes of the `gcm-inspect` binary: the BSD `sysexits.h` values, which
/// systemd prints by name (`status=78/CONFIG`), so the journal reads right.
/// The LSB range 3-7 is avoided: systemd names those `NOTIMPLEMENTED`,
/// `NOTINSTALLED` and so on, which would mislead an operator.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// `verify` or `explain` found evidence that does not reproduce its
    /// decision: the audit ran and its answer is "no", as `diff` exits 1 when
    /// files differ.
    pub const DIVERGENT: i32 = 1;
    /// Bad command-line usage (EX_USAGE).
    pub const USAGE: i32 = 64;
    /// Input data or model files are unusable: corrupt image, wrong shape,
    /// missing tensor, NaN, card mismatch (EX_DATAERR).
    pub const DATA: i32 = 65;
    /// Model files are unusable; the same code as [`DATA`], the message names
    /// the model file.
    pub const MODEL: i32 = DATA;
    /// An input file, folder or model that does not exist (EX_NOINPUT).
    pub const NO_INPUT: i32 = 66;
    /// A device or service is unavailable: camera missing, no CUDA support or
    /// GPU, the metrics port taken (EX_UNAVAILABLE).
    pub const DEVICE: i32 = 69;
    /// An internal failure (tensor computation, a broken invariant) (EX_SOFTWARE).
    pub const SOFTWARE: i32 = 70;
    /// An I/O error reading or writing a file (EX_IOERR).
    pub const IO: i32 = 74;
    /// A configuration file is invalid: unknown key, wrong type, bad value (EX_CONFIG).
    pub const CONFIG: i32 = 78;
    /// A panic (Rust's own code): a bug.
    pub const PANIC: i32 = 101;
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
    /// An input file, folder or model directory does not exist.
    #[error("missing input {path}: {msg}")]
    NoInput { path: PathBuf, msg: String },
    /// A compute device or camera is unavailable.
    #[error("device {name}: {msg}")]
    Device { name: String, msg: String },
    /// A service the process needs is unavailable (e.g. its port is taken);
    /// the message names the setting.
    #[error("{0}")]
    Unavailable(String),
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
    pub fn no_input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::NoInput {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    /// An input file that cannot be read: missing (no input) or otherwise
    /// unreadable (data error), the path and the reason named.
    pub fn unreadable_input(path: impl AsRef<Path>, e: std::io::Error) -> Self {
        let msg = format!("cannot read: {e}");
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::no_input(path, msg)
        } else {
            Error::data(path, msg)
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
            Error::NoInput { .. } => exit::NO_INPUT,
            Error::Device { .. } | Error::Unavailable(_) => exit::DEVICE,
            Error::Divergent(_) => exit::DIVERGENT,
            Error::Usage(_) => exit::USAGE,
            Error::Io { .. } => exit::IO,
            Error::Candle(_) | Error::Runtime(_) => exit::SOFTWARE,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error class maps to its sysexits value, and none falls in the
    /// LSB range 2-7 that systemd names NOTIMPLEMENTED, NOTINSTALLED, ...
    #[test]
    fn error_classes_map_to_sysexits_values() {
        let io = || std::io::Error::other("disk");
        let cases = [
            (Error::config("c.yaml", "x"), 78),
            (Error::data("d.png", "x"), 65),
            (Error::model("m", "x"), 65),
            (Error::no_input("gone.png", "x"), 66),
            (Error::device("cuda", "x"), 69),
            (Error::Unavailable("metrics.listen: taken".into()), 69),
            (Error::Usage("x".into()), 64),
            (Error::io("f", io()), 74),
            (Error::Runtime("x".into()), 70),
            (Error::Divergent("x".into()), 1),
        ];
        for (e, code) in &cases {
            assert_eq!(e.exit_code(), *code, "{e:?}");
            assert!(!(2..=7).contains(code), "{e:?} uses an LSB code");
        }
    }

    #[test]
    fn a_missing_input_names_its_path() {
        let e = Error::no_input("/x/gone.png", "cannot read: no such file");
        assert_eq!(
            e.to_string(),
            "missing input /x/gone.png: cannot read: no such file"
        );
    }
}
