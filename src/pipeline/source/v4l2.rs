//! A V4L2 camera: mmap streaming with a dequeue timeout; a lost camera
//! (ENODEV, timeouts, I/O errors) is reopened with capped exponential backoff,
//! counted in `gcm_source_errors_total` and `gcm_source_reconnects_total`.
//!
//! Camera controls (manual exposure, gain, white balance and focus locks;
//! [`control_settings`]) are set on every opening, the first and each
//! reopening, since a camera that was lost comes back with its defaults; a
//! control the camera refuses fails the opening, naming it.
//!
//! This path needs a real camera and cannot run in CI; the conversion of its
//! buffers (YUYV, NV12, MJPEG, GREY, Bayer) is tested on recorded and
//! synthetic buffers in `preprocess::convert`, and the mapping of the
//! config's controls to V4L2 control ids and values in the tests below.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;
use v4l::{Format, FourCC};

use super::{sleep_until, FrameSource, Next};
use crate::config::{V4l2Config, V4l2Controls};
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
    for c in control_settings(&cfg.controls) {
        let value = if c.boolean {
            v4l::control::Value::Boolean(c.value != 0)
        } else {
            v4l::control::Value::Integer(c.value)
        };
        match dev.set_control(v4l::control::Control { id: c.id, value }) {
            Ok(()) => tracing::debug!(camera = %path.display(), "control {} = {}", c.name, c.value),
            Err(e) if !c.required => {
                tracing::debug!(camera = %path.display(), "no control {} ({e}): left alone", c.name)
            }
            Err(e) => {
                return Err(format!(
                    "cannot set the control {} to {} (source.v4l2.controls; `gcm-inspect check-config --list-controls` lists the camera's): {e}",
                    c.name, c.value
                ))
            }
        }
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

/// V4L2 control ids (linux/v4l2-controls.h).
pub mod cid {
    const USER: u32 = 0x0098_0900;
    const CAMERA: u32 = 0x009a_0900;
    pub const AUTO_WHITE_BALANCE: u32 = USER + 12;
    pub const AUTOGAIN: u32 = USER + 18;
    pub const GAIN: u32 = USER + 19;
    pub const WHITE_BALANCE_TEMPERATURE: u32 = USER + 26;
    pub const EXPOSURE_AUTO: u32 = CAMERA + 1;
    pub const EXPOSURE_ABSOLUTE: u32 = CAMERA + 2;
    pub const FOCUS_ABSOLUTE: u32 = CAMERA + 10;
    pub const FOCUS_AUTO: u32 = CAMERA + 12;
    /// `V4L2_EXPOSURE_MANUAL`, a value of the `auto_exposure` menu.
    pub const EXPOSURE_MANUAL: i64 = 1;
}

/// One control to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub id: u32,
    /// The control's name as `v4l2-ctl --list-ctrls` prints it.
    pub name: &'static str,
    pub value: i64,
    pub boolean: bool,
    /// A camera without the control fails to open (otherwise it is skipped:
    /// `gain_automatic`, which many cameras lack).
    pub required: bool,
}

/// The controls the config asks for, in the order they are set: each
/// automatic mode off before its manual value (a driver refuses the value
/// while the automatic mode owns it).
pub fn control_settings(c: &V4l2Controls) -> Vec<Setting> {
    let set = |id, name, value, boolean, required| Setting {
        id,
        name,
        value,
        boolean,
        required,
    };
    let mut v = Vec::new();
    if let Some(e) = c.exposure_time_100us {
        v.push(set(
            cid::EXPOSURE_AUTO,
            "auto_exposure",
            cid::EXPOSURE_MANUAL,
            false,
            true,
        ));
        v.push(set(
            cid::EXPOSURE_ABSOLUTE,
            "exposure_time_absolute",
            e,
            false,
            true,
        ));
    }
    if let Some(g) = c.gain {
        v.push(set(cid::AUTOGAIN, "gain_automatic", 0, true, false));
        v.push(set(cid::GAIN, "gain", g, false, true));
    }
    if c.white_balance_lock {
        v.push(set(
            cid::AUTO_WHITE_BALANCE,
            "white_balance_automatic",
            0,
            true,
            true,
        ));
    }
    if let Some(k) = c.white_balance_temperature_k {
        v.push(set(
            cid::WHITE_BALANCE_TEMPERATURE,
            "white_balance_temperature",
            k,
            false,
            true,
        ));
    }
    if c.focus_lock {
        v.push(set(
            cid::FOCUS_AUTO,
            "focus_automatic_continuous",
            0,
            true,
            true,
        ));
    }
    if let Some(f) = c.focus_absolute {
        v.push(set(cid::FOCUS_ABSOLUTE, "focus_absolute", f, false, true));
    }
    v
}

/// The camera's controls, one a line: name, id, type, range, default and
/// current value (`check-config --list-controls`).
pub fn list_controls(cfg: &V4l2Config) -> Result<Vec<String>> {
    let path = &cfg.device_path;
    let fail = |m: String| Error::device(path.display().to_string(), m);
    let dev = Device::with_path(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    dev.query_caps()
        .map_err(|e| fail(format!("not a V4L2 device ({e})")))?;
    let descs = dev
        .query_controls()
        .map_err(|e| fail(format!("cannot list the controls: {e}")))?;
    let mut out = Vec::new();
    for d in descs {
        if d.typ == v4l::control::Type::CtrlClass {
            out.push(format!("{}:", d.name));
            continue;
        }
        let now = match dev.control(d.id) {
            Ok(v4l::control::Control {
                value: v4l::control::Value::Integer(v),
                ..
            }) => v.to_string(),
            Ok(v4l::control::Control {
                value: v4l::control::Value::Boolean(b),
                ..
            }) => b.to_string(),
            _ => "-".into(),
        };
        let mut line = format!(
            "  {} (0x{:08x}, {:?}): {}..{} step {}, default {}, now {now}",
            d.name, d.id, d.typ, d.minimum, d.maximum, d.step, d.default
        );
        if let Some(items) = &d.items {
            let names: Vec<String> = items.iter().map(|(i, m)| format!("{i}: {m}")).collect();
            line.push_str(&format!(" [{}]", names.join(", ")));
        }
        out.push(line);
    }
    Ok(out)
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
                        age: std::time::Duration::ZERO,
                    }))
                }
                Err(e) => self.lose(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_controls_set_nothing() {
        assert!(control_settings(&V4l2Controls::default()).is_empty());
    }

    #[test]
    fn controls_map_to_v4l2_ids_automatic_modes_off_first() {
        let c = V4l2Controls {
            exposure_time_100us: Some(156),
            gain: Some(12),
            white_balance_lock: true,
            white_balance_temperature_k: Some(5000),
            focus_lock: true,
            focus_absolute: Some(30),
        };
        let got: Vec<(u32, &str, i64, bool, bool)> = control_settings(&c)
            .into_iter()
            .map(|s| (s.id, s.name, s.value, s.boolean, s.required))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x009a_0901, "auto_exposure", 1, false, true),
                (0x009a_0902, "exposure_time_absolute", 156, false, true),
                (0x0098_0912, "gain_automatic", 0, true, false),
                (0x0098_0913, "gain", 12, false, true),
                (0x0098_090c, "white_balance_automatic", 0, true, true),
                (0x0098_091a, "white_balance_temperature", 5000, false, true),
                (0x009a_090c, "focus_automatic_continuous", 0, true, true),
                (0x009a_090a, "focus_absolute", 30, false, true),
            ]
        );
    }

    #[test]
    fn locks_alone_turn_the_automatic_modes_off() {
        let c = V4l2Controls {
            white_balance_lock: true,
            focus_lock: true,
            ..V4l2Controls::default()
        };
        let ids: Vec<u32> = control_settings(&c).iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![cid::AUTO_WHITE_BALANCE, cid::FOCUS_AUTO]);
    }

    #[test]
    fn listing_controls_without_a_camera_names_the_device() {
        let cfg: V4l2Config = serde_yaml::from_str(
            "device_path: /dev/v4l/by-id/no-such-camera\nwidth_px: 64\nheight_px: 64\nfps: 30\npixel_format: GREY\n",
        )
        .unwrap();
        let e = list_controls(&cfg).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::DEVICE);
        assert!(
            e.to_string().contains("/dev/v4l/by-id/no-such-camera"),
            "{e}"
        );
    }
}
