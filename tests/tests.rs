//! Integration tests: the real `gcm-inspect` binary run as a subprocess.
//! One test binary, modules under `tests/it/`.

#[path = "it/util.rs"]
mod util;

#[path = "it/synth.rs"]
mod synth;

#[path = "it/daemon_util.rs"]
mod daemon_util;

#[path = "it/daemon.rs"]
mod daemon;

#[path = "it/train.rs"]
mod train;

#[path = "it/bad_input.rs"]
mod bad_input;

#[path = "it/hostile.rs"]
mod hostile;

#[path = "it/engine.rs"]
mod engine;

#[path = "it/verdict.rs"]
mod verdict;

// GPU parity tests: built with `--features cuda`, all #[ignore]d, run by
// scripts/gpu-run.sh on a machine with a GPU (see the module's docs).
#[cfg(feature = "cuda")]
#[path = "it/gpu.rs"]
mod gpu;

#[path = "it/elpv_scripts.rs"]
mod elpv_scripts;

#[path = "it/bundled.rs"]
mod bundled;

#[path = "it/bench_scripts.rs"]
mod bench_scripts;

#[path = "it/paint.rs"]
mod paint;

#[path = "it/http.rs"]
mod http;

#[path = "it/model_format.rs"]
mod model_format;

#[path = "it/outputs.rs"]
mod outputs;

#[path = "it/sweep.rs"]
mod sweep;

#[path = "it/review.rs"]
mod review;

#[path = "it/review_loop.rs"]
mod review_loop;

#[path = "it/tta.rs"]
mod tta;

#[path = "it/methods.rs"]
mod methods;

// The GStreamer source against a real RTSP server and videotestsrc.
#[cfg(all(feature = "gstreamer", target_os = "linux"))]
#[path = "it/camera.rs"]
mod camera;
