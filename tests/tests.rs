//! Integration tests: the real `gcm-inspect` binary run as a subprocess.
//! One test binary, modules under `tests/it/`.

#[path = "it/util.rs"]
mod util;

#[path = "it/synth.rs"]
mod synth;

#[path = "it/engine.rs"]
mod engine;
