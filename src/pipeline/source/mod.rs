//! Frame sources: one trait, four kinds (V4L2 camera, GStreamer pipeline,
//! folder replay, synthetic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::frame::Captured;
use super::metrics::Metrics;
use crate::config::{Loaded, SourceConfig};
use crate::error::Result;

#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod gst_spec;
pub mod replay;
pub mod synthetic;
#[cfg(target_os = "linux")]
pub mod v4l2;

/// What a source gives the capture stage.
pub enum Next {
    Frame(Captured),
    /// The source has nothing more (end of a replay without loop).
    End,
    /// `stop` was raised while waiting.
    Stopped,
}

/// A source of frames. `next` may block (camera, pacing) but must return
/// [`Next::Stopped`] promptly (within about 100 ms) once `stop` is raised.
pub trait FrameSource: Send {
    /// For logs: what and where.
    fn describe(&self) -> String;
    /// A live source (camera, paced replay/synthetic) has frames whether or
    /// not the model is ready: when the queue is full the oldest waiting frame
    /// is dropped and counted. A non-live source waits for the model instead.
    fn live(&self) -> bool;
    /// The next frame. Errors are fatal: recoverable trouble (a lost camera)
    /// is handled inside the source and counted.
    fn next(&mut self, stop: &AtomicBool) -> Result<Next>;
}

/// Opens the configured source. A missing camera, folder or an empty folder
/// is an error here (the daemon refuses to start); later trouble is handled
/// by the source.
pub fn open(loaded: &Loaded, metrics: &std::sync::Arc<Metrics>) -> Result<Box<dyn FrameSource>> {
    Ok(match &loaded.config.source {
        SourceConfig::Synthetic(s) => Box::new(synthetic::Synthetic::new(s)?),
        SourceConfig::Replay(r) => {
            let mut r = r.clone();
            r.dir = loaded.resolve(&r.dir);
            Box::new(replay::Replay::open(&r)?)
        }
        SourceConfig::Gstreamer(g) => open_gstreamer(loaded, g, metrics)?,
        #[cfg(target_os = "linux")]
        SourceConfig::V4l2(v) => Box::new(v4l2::Camera::open(v, metrics.clone())?),
        #[cfg(not(target_os = "linux"))]
        SourceConfig::V4l2(v) => {
            let _ = metrics;
            return Err(crate::error::Error::device(
                v.device_path.display().to_string(),
                "V4L2 cameras are supported on Linux only",
            ));
        }
    })
}

/// Opens a GStreamer source (its credentials file relative to the config).
#[cfg(feature = "gstreamer")]
pub fn open_gstreamer(
    loaded: &Loaded,
    g: &crate::config::GstreamerConfig,
    metrics: &std::sync::Arc<Metrics>,
) -> Result<Box<dyn FrameSource>> {
    let credentials = g
        .rtsp
        .as_ref()
        .and_then(|r| r.credentials_file.as_ref())
        .map(|f| loaded.resolve(f));
    Ok(Box::new(gst::Source::open(
        g,
        credentials.as_deref(),
        metrics.clone(),
    )?))
}

/// Without the `gstreamer` feature a GStreamer source is refused.
#[cfg(not(feature = "gstreamer"))]
pub fn open_gstreamer(
    _loaded: &Loaded,
    g: &crate::config::GstreamerConfig,
    _metrics: &std::sync::Arc<Metrics>,
) -> Result<Box<dyn FrameSource>> {
    Err(crate::error::Error::device(
        gst_spec::kind(g),
        "this gcm-inspect was built without the `gstreamer` feature",
    ))
}

/// Sleeps until `deadline` in short slices, returning false if `stop` was raised.
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// Paces a source at a fixed rate (0: unpaced). Deadlines are absolute, so a
/// slow frame does not slow the rate; if the source falls more than a frame
/// behind it does not try to catch up in a burst.
#[derive(Debug)]
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer at `fps` (0: unpaced); `key` names the setting in the error
    /// for a rate whose period no `Duration` can hold (config validation
    /// refuses those first).
    pub fn new(fps: f64, key: &str) -> Result<Self> {
        let period = if fps == 0.0 {
            None
        } else {
            Some(Duration::try_from_secs_f64(1.0 / fps).map_err(|e| {
                crate::error::Error::config(key, format!("{fps} fps has no usable period: {e}"))
            })?)
        };
        Ok(Pacer { period, next: None })
    }

    pub fn paced(&self) -> bool {
        self.period.is_some()
    }

    /// Waits for the next frame's time; false if `stop` was raised.
    pub fn wait(&mut self, stop: &AtomicBool) -> bool {
        let Some(p) = self.period else {
            return !stop.load(Ordering::SeqCst);
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if !sleep_until(due, stop) {
            return false;
        }
        let after = due + p;
        self.next = Some(if after < now { now + p } else { after });
        true
    }
}
