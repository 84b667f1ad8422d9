//! A V4L2 camera: mmap streaming with a dequeue timeout; a lost camera
//! (ENODEV, timeouts, I/O errors) is reopened with capped exponential backoff,
//! counted in `gcm_source_errors_total` and `gcm_source_reconnects_total`.
//!
//! This path needs a real camera and cannot run in CI; the conversion of its
//! buffers (YUYV, MJPEG, GREY) is tested on recorded buffers in
//! `pipeline::convert`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;
use v4l::{Format, FourCC};

use super::{sleep_until, FrameSource, Next};
use crate::config::V4l2Config;
use crate::error::{Error, Result};
use crate::pipeline::frame::{Captured, FrameData};
use crate::pipeline::metrics::Metrics;

/// An open camera stream.
struct Conn {
    stream: MmapStream<'static>,
    _dev: Device,
    bytes_per_line: usize,
}

pub struct Camera {
    cfg: V4l2Config,
    metrics: Arc<Metrics>,
    conn: Option<Conn>,
    backoff: Duration,
}

fn open_conn(cfg: &V4l2Config) -> std::result::Result<Conn, String> {
    let path = &cfg.device_path;
    let dev = Device::with_path(path).map_err(|e| format!("cannot open: {e}"))?;
    let caps = dev
        .query_caps()
        .map_err(|e| format!("not a V4L2 device ({e})"))?;
    let flags = caps.capabilities;
    if !flags.contains(v4l::capability::Flags::VIDEO_CAPTURE) {
        return Err(format!(
            "{} ({}) cannot capture video",
            caps.card, caps.driver
        ));
    }
    if !flags.contains(v4l::capability::Flags::STREAMING) {
        return Err(format!(
            "{} ({}) does not support streaming I/O",
            caps.card, caps.driver
        ));
    }
    let want = FourCC::new(&cfg.pixel_format.fourcc());
    let fmt = dev
        .set_format(&Format::new(cfg.width_px, cfg.height_px, want))
        .map_err(|e| format!("cannot set the format: {e}"))?;
    if fmt.fourcc != want {
        return Err(format!(
            "the camera does not offer {} (it chose {})",
            cfg.pixel_format.name(),
            fmt.fourcc
        ));
    }
    if (fmt.width, fmt.height) != (cfg.width_px, cfg.height_px) {
        return Err(format!(
            "the camera does not offer {}x{} in {} (it chose {}x{})",
            cfg.width_px,
            cfg.height_px,
            cfg.pixel_format.name(),
            fmt.width,
            fmt.height
        ));
    }
    match dev.set_params(&v4l::video::capture::Parameters::with_fps(cfg.fps)) {
        Ok(p) => {
            let got = p.interval.denominator as f64 / p.interval.numerator.max(1) as f64;
            if (got - cfg.fps as f64).abs() > 0.5 {
                tracing::warn!(
                    camera = %path.display(),
                    "asked for {} fps, the camera runs at {got:.1} fps",
                    cfg.fps
                );
            }
        }
        Err(e) => tracing::warn!(camera = %path.display(), "cannot set the frame rate: {e}"),
    }
    let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, cfg.buffer_count)
        .map_err(|e| format!("cannot map {} buffers: {e}", cfg.buffer_count))?;
    stream.set_timeout(Duration::from_millis(cfg.dequeue_timeout_ms));
    Ok(Conn {
        stream,
        _dev: dev,
        bytes_per_line: fmt.stride as usize,
    })
}

impl Conn {
    /// Stops streaming and releases the buffers. The v4l crate panics when
    /// STREAMOFF fails with anything but ENODEV (a camera that vanished
    /// mid-stream can do that); a lost camera must not take the daemon down,
    /// so that panic is contained here. Every `Conn` ends through `close`.
    fn close(self) {
        let Conn { stream, _dev, .. } = self;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream)));
        drop(_dev);
    }
}

impl Camera {
    /// Opens the camera once; failure is a device error (the daemon does not start).
    pub fn open(cfg: &V4l2Config, metrics: Arc<Metrics>) -> Result<Self> {
        let conn =
            open_conn(cfg).map_err(|m| Error::device(cfg.device_path.display().to_string(), m))?;
        Ok(Camera {
            cfg: cfg.clone(),
            metrics,
            conn: Some(conn),
            backoff: Duration::from_millis(cfg.reconnect_initial_backoff_ms),
        })
    }

    /// Checks that the camera opens and takes the format (for `check-config`).
    pub fn probe(cfg: &V4l2Config) -> Result<()> {
        let c =
            open_conn(cfg).map_err(|m| Error::device(cfg.device_path.display().to_string(), m))?;
        c.close();
        Ok(())
    }

    fn lose(&mut self, why: String) {
        self.metrics.source_errors.inc();
        tracing::warn!(camera = %self.cfg.device_path.display(), "camera lost: {why}; reopening");
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }
}

impl FrameSource for Camera {
    fn describe(&self) -> String {
        format!(
            "V4L2 camera {} {}x{} {} at {} fps",
            self.cfg.device_path.display(),
            self.cfg.width_px,
            self.cfg.height_px,
            self.cfg.pixel_format.name(),
            self.cfg.fps
        )
    }

    fn live(&self) -> bool {
        true
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Next> {
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(Next::Stopped);
            }
            let Some(conn) = self.conn.as_mut() else {
                if !sleep_until(Instant::now() + self.backoff, stop) {
                    return Ok(Next::Stopped);
                }
                match open_conn(&self.cfg) {
                    Ok(c) => {
                        self.metrics.source_reconnects.inc();
                        tracing::info!(camera = %self.cfg.device_path.display(), "camera reopened");
                        self.conn = Some(c);
                        self.backoff = Duration::from_millis(self.cfg.reconnect_initial_backoff_ms);
                    }
                    Err(m) => {
                        self.metrics.source_errors.inc();
                        tracing::warn!(
                            camera = %self.cfg.device_path.display(),
                            "cannot reopen the camera: {m}; next try in {:?}",
                            self.backoff
                        );
                        self.backoff = (self.backoff * 2)
                            .min(Duration::from_millis(self.cfg.reconnect_max_backoff_ms));
                    }
                }
                continue;
            };
            let stride = conn.bytes_per_line;
            let got = match conn.stream.next() {
                Ok((buf, meta)) => {
                    let used = (meta.bytesused as usize).min(buf.len());
                    let used = if used == 0 { buf.len() } else { used };
                    let damaged = meta.flags.contains(v4l::buffer::Flags::ERROR);
                    Ok((buf[..used].to_vec(), damaged))
                }
                Err(e) => Err(e),
            };
            match got {
                Ok((_, true)) => {
                    // The driver marks the buffer as damaged: skip it.
                    self.metrics.skip("corrupt");
                    continue;
                }
                Ok((bytes, false)) => {
                    return Ok(Next::Frame(Captured {
                        name: None,
                        data: FrameData::Camera {
                            format: self.cfg.pixel_format,
                            width: self.cfg.width_px,
                            height: self.cfg.height_px,
                            bytes_per_line: stride,
                            bytes,
                        },
                    }))
                }
                Err(e) => self.lose(e.to_string()),
            }
        }
    }
}
