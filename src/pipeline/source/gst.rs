//! A GStreamer source: a pipeline ([`super::gst_spec`] writes its text)
//! whose appsink hands over the latest frame, in one of the formats of the
//! preprocessing contract (the negotiated caps fix it: GRAY8, YUY2, RGB,
//! NV12, or an 8-bit Bayer mosaic, `video/x-bayer` `rggb`, `bggr`, `grbg`,
//! `gbrg`, demosaiced by the contract).
//!
//! **Timestamps.** A frame's capture time is its buffer's: the running time
//! of its PTS in its segment, plus the pipeline's base time, is the clock
//! time at which it was captured (for RTSP: its arrival, as the jitter
//! buffer dates it; the jitter buffer hands in-order packets over at once,
//! its latency only bounds the wait for a late one, and the appsink does not
//! wait for the clock); the pipeline clock's time now, less that,
//! is the frame's age, and the capture stage dates the frame that much
//! before the hand-over (on the wall clock as on the monotonic one). A
//! buffer without a timestamp is dated at its hand-over.
//!
//! **Losing the camera.** An error or end of stream on the bus, or no frame
//! within `frame_timeout_ms`, stops the pipeline; it is built again after a
//! wait that starts at `reconnect_initial_backoff_ms` and doubles after each
//! attempt that brings no frame, up to `reconnect_max_backoff_ms`. As for a
//! V4L2 camera, each loss and each failed attempt counts in
//! `gcm_source_errors_total`, and each rebuilt pipeline that delivers a frame
//! in `gcm_source_reconnects_total`. The first pipeline must deliver a frame
//! within `frame_timeout_ms`, or the daemon does not start (an element that
//! is not installed is named).
//!
//! **Credentials** (RTSP) are read from their file when the source opens and
//! set on the `rtspsrc` element's `user-id` and `user-pw`; they are in no
//! pipeline text, log line or message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::VideoFrameExt;

use super::gst_spec::{self, APPSINK_CAPS};
use super::{sleep_until, FrameSource, Next};
use crate::config::GstreamerConfig;
use crate::error::{Error, Result};
use crate::pipeline::frame::{Captured, FrameData};
use crate::pipeline::metrics::Metrics;
use crate::preprocess::{Bayer, BayerDepth, BayerOrder, PixelFormat};

/// How long one wait for a frame lasts before `stop` and the bus are looked at.
const POLL: Duration = Duration::from_millis(100);

/// A running pipeline.
struct Conn {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    /// When it was started or last delivered a frame.
    last: Instant,
    /// Whether it has delivered a frame.
    delivered: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub struct Source {
    cfg: GstreamerConfig,
    text: String,
    what: String,
    credentials: Option<(String, String)>,
    metrics: Arc<Metrics>,
    conn: Option<Conn>,
    backoff: Duration,
    /// The frame `open` waited for, handed over first.
    pending: Option<Captured>,
    /// The format of the last frame, for `describe`.
    negotiated: Option<String>,
}

/// What a bus error says, with a hint for the commonest one.
fn bus_error(e: &gst::message::Error) -> String {
    let from = e
        .src()
        .map(|s| format!("{}: ", s.name()))
        .unwrap_or_default();
    let debug = e.debug().map(|d| d.to_string()).unwrap_or_default();
    let mut m = format!("{from}{}", e.error());
    if debug.contains("not-negotiated") {
        m.push_str(&format!(
            " (not-negotiated: the pipeline's frames are not among the formats the daemon takes, {APPSINK_CAPS}; end the pipeline with videoconvert)"
        ));
    } else if let Some(line) = debug.lines().last().filter(|l| !l.is_empty()) {
        m.push_str(&format!(" ({line})"));
    }
    m
}

/// Builds and starts the pipeline.
fn build(text: &str, credentials: Option<&(String, String)>) -> std::result::Result<Conn, String> {
    let element = gst::parse::launch_full(text, None, gst::ParseFlags::FATAL_ERRORS).map_err(|e| {
        let m = e.to_string();
        match m.strip_prefix("no element ") {
            Some(name) => format!(
                "cannot build the pipeline: no element {name}: the GStreamer plugin that provides it is not installed (`gst-inspect-1.0 {}` finds no such element)",
                name.trim_matches('"')
            ),
            None => format!("cannot build the pipeline: {m}"),
        }
    })?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| "the pipeline text holds a single element, not a pipeline".to_string())?;
    let sink = pipeline
        .by_name("sink")
        .ok_or("the pipeline has no element named `sink`")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "the element named `sink` is not an appsink".to_string())?;
    let caps = APPSINK_CAPS.parse::<gst::Caps>().expect("valid caps");
    sink.set_caps(Some(&caps));
    sink.set_max_buffers(1);
    sink.set_drop(true);
    sink.set_property("sync", false);
    if let Some((user, password)) = credentials {
        let camera = pipeline
            .by_name("camera")
            .ok_or("credentials are set but the pipeline has no element named `camera`")?;
        camera.set_property("user-id", user.as_str());
        camera.set_property("user-pw", password.as_str());
    }
    let bus = pipeline.bus().expect("a pipeline has a bus");
    if pipeline.set_state(gst::State::Playing).is_err() {
        let why = bus
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(bus_error(e)),
                _ => None,
            })
            .unwrap_or_else(|| "the pipeline refused to start".into());
        let _ = pipeline.set_state(gst::State::Null);
        return Err(why);
    }
    Ok(Conn {
        pipeline,
        sink,
        bus,
        last: Instant::now(),
        delivered: false,
    })
}

/// The frame in a sample, with its age (see the module docs).
fn frame_of(
    sample: &gst::Sample,
    pipeline: &gst::Pipeline,
) -> std::result::Result<Captured, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let age = age_of(sample, buffer, pipeline);
    if let Some(s) = caps.structure(0).filter(|s| s.has_name("video/x-bayer")) {
        return bayer_frame(s, buffer, age);
    }
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| format!("caps {caps}: {e}"))?;
    let format = match info.format() {
        gst_video::VideoFormat::Gray8 => PixelFormat::Grey,
        gst_video::VideoFormat::Yuy2 => PixelFormat::Yuyv,
        gst_video::VideoFormat::Rgb => PixelFormat::Rgb24,
        gst_video::VideoFormat::Nv12 => PixelFormat::Nv12,
        f => return Err(format!("unexpected format {f:?}")),
    };
    let (width, height) = (info.width(), info.height());
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| "cannot map the buffer".to_string())?;
    let (bytes, bytes_per_line) = if format == PixelFormat::Nv12 {
        // Two planes, repacked one after the other at one stride.
        let cw = (width as usize).div_ceil(2) * 2;
        let (h, ch) = (height as usize, (height as usize).div_ceil(2));
        let mut bytes = Vec::with_capacity(cw * (h + ch));
        for (plane, rows, len) in [(0, h, width as usize), (1, ch, cw)] {
            let stride = frame.plane_stride()[plane] as usize;
            let data = frame
                .plane_data(plane as u32)
                .map_err(|e| format!("plane {plane}: {e}"))?;
            for r in 0..rows {
                let row = data
                    .get(r * stride..r * stride + len)
                    .ok_or_else(|| format!("plane {plane} is short of row {r}"))?;
                bytes.extend_from_slice(row);
                bytes.resize(bytes.len() + cw - len, 0);
            }
        }
        (bytes, cw)
    } else {
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data(0).map_err(|e| format!("plane 0: {e}"))?;
        (data.to_vec(), stride)
    };
    Ok(Captured {
        name: None,
        data: FrameData::Camera {
            format,
            width,
            height,
            bytes_per_line,
            bytes,
        },
        age,
    })
}

/// How long ago the sample's buffer was captured (see the module docs).
fn age_of(sample: &gst::Sample, buffer: &gst::BufferRef, pipeline: &gst::Pipeline) -> Duration {
    (|| {
        let pts = buffer.pts()?;
        let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
        let running = segment.to_running_time(pts)?;
        let base = pipeline.base_time()?;
        let now = pipeline.clock()?.time()?;
        now.checked_sub(base + running)
    })()
    .map(|t| Duration::from_nanos(t.nseconds()))
    .unwrap_or(Duration::ZERO)
}

/// An 8-bit Bayer frame (`video/x-bayer`); its rows are as long as the
/// buffer's size over the height (GStreamer pads them to 4 bytes).
fn bayer_frame(
    s: &gst::StructureRef,
    buffer: &gst::BufferRef,
    age: Duration,
) -> std::result::Result<Captured, String> {
    let order = match s
        .get::<&str>("format")
        .map_err(|e| format!("bayer caps: {e}"))?
    {
        "rggb" => BayerOrder::Rggb,
        "bggr" => BayerOrder::Bggr,
        "grbg" => BayerOrder::Grbg,
        "gbrg" => BayerOrder::Gbrg,
        f => return Err(format!("unexpected bayer format {f}")),
    };
    let width = s
        .get::<i32>("width")
        .map_err(|e| format!("bayer caps: {e}"))?;
    let height = s
        .get::<i32>("height")
        .map_err(|e| format!("bayer caps: {e}"))?;
    let (width, height) = (width.max(0) as u32, height.max(1) as u32);
    let map = buffer.map_readable().map_err(|_| "cannot map the buffer")?;
    let bytes = map.as_slice().to_vec();
    let stride = bytes.len() / height as usize;
    Ok(Captured {
        name: None,
        data: FrameData::Camera {
            format: PixelFormat::Bayer(Bayer {
                order,
                depth: BayerDepth::Eight,
            }),
            width,
            height,
            bytes_per_line: stride,
            bytes,
        },
        age,
    })
}

/// What a pulled wait gave.
enum Pulled {
    Frame(Captured),
    /// A frame that cannot be read (counted as corrupt).
    Bad(String),
    Nothing,
    Lost(String),
}

impl Conn {
    /// Waits up to [`POLL`] for a frame, looking at the bus first.
    fn pull(&mut self, timeout: Duration) -> Pulled {
        while let Some(m) = self
            .bus
            .pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])
        {
            match m.view() {
                gst::MessageView::Eos(_) => return Pulled::Lost("end of stream".into()),
                gst::MessageView::Error(e) => return Pulled::Lost(bus_error(e)),
                _ => {}
            }
        }
        match self
            .sink
            .try_pull_sample(gst::ClockTime::from_mseconds(POLL.as_millis() as u64))
        {
            Some(sample) => {
                self.last = Instant::now();
                match frame_of(&sample, &self.pipeline) {
                    Ok(c) => Pulled::Frame(c),
                    Err(m) => Pulled::Bad(m),
                }
            }
            None if self.sink.is_eos() => Pulled::Lost("end of stream".into()),
            None if self.last.elapsed() > timeout => Pulled::Lost(format!(
                "no frame for {} ms",
                self.last.elapsed().as_millis()
            )),
            None => Pulled::Nothing,
        }
    }
}

fn describe_format(c: &Captured) -> String {
    match &c.data {
        FrameData::Camera {
            format,
            width,
            height,
            ..
        } => format!("{width}x{height} {}", format.name()),
        _ => String::new(),
    }
}

impl Source {
    /// Builds the pipeline and waits for its first frame; failure is a
    /// device error naming the camera (the daemon does not start).
    pub fn open(
        cfg: &GstreamerConfig,
        credentials_file: Option<&std::path::Path>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let text = gst_spec::expand(cfg);
        let what = describe(cfg);
        gst::init()
            .map_err(|e| Error::device(&what, format!("cannot initialise GStreamer: {e}")))?;
        let credentials = credentials_file
            .map(gst_spec::read_credentials)
            .transpose()?;
        let mut conn = build(&text, credentials.as_ref()).map_err(|m| Error::device(&what, m))?;
        let timeout = Duration::from_millis(cfg.frame_timeout_ms);
        let first = loop {
            match conn.pull(timeout) {
                Pulled::Frame(c) => break c,
                Pulled::Nothing => {}
                Pulled::Bad(m) | Pulled::Lost(m) => {
                    return Err(Error::device(&what, format!("no first frame: {m}")))
                }
            }
        };
        conn.delivered = true;
        tracing::info!(camera = %what, "first frame: {}", describe_format(&first));
        Ok(Source {
            cfg: cfg.clone(),
            text,
            what,
            credentials,
            metrics,
            conn: Some(conn),
            backoff: Duration::from_millis(cfg.reconnect_initial_backoff_ms),
            negotiated: Some(describe_format(&first)),
            pending: Some(first),
        })
    }

    /// What the camera delivers (`640x480 NV12`), once it has.
    pub fn negotiated(&self) -> Option<&str> {
        self.negotiated.as_deref()
    }

    fn lose(&mut self, why: &str) {
        self.metrics.source_errors.inc();
        let Some(c) = self.conn.take() else { return };
        if c.delivered {
            tracing::warn!(camera = %self.what, "camera lost: {why}; restarting the pipeline");
        } else {
            tracing::warn!(
                camera = %self.what,
                "the restarted pipeline brought no frame: {why}; next try in {:?}",
                self.backoff
            );
            self.backoff =
                (self.backoff * 2).min(Duration::from_millis(self.cfg.reconnect_max_backoff_ms));
        }
    }
}

/// The camera for messages: the preset's address, or the pipeline.
pub fn describe(cfg: &GstreamerConfig) -> String {
    let kind = gst_spec::kind(cfg);
    if let Some(r) = &cfg.rtsp {
        format!("{kind} {}", r.url)
    } else if let Some(c) = &cfg.csi {
        format!("{kind} {}", c.sensor_id)
    } else if let Some(g) = &cfg.gige {
        format!(
            "{kind} {}",
            g.camera_name.as_deref().unwrap_or("(first found)")
        )
    } else {
        format!("{kind} `{}`", cfg.pipeline.as_deref().unwrap_or("").trim())
    }
}

impl FrameSource for Source {
    fn describe(&self) -> String {
        match &self.negotiated {
            Some(f) => format!("{}, {f}", self.what),
            None => self.what.clone(),
        }
    }

    fn live(&self) -> bool {
        true
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Next> {
        if let Some(c) = self.pending.take() {
            return Ok(Next::Frame(c));
        }
        let timeout = Duration::from_millis(self.cfg.frame_timeout_ms);
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(Next::Stopped);
            }
            let Some(conn) = self.conn.as_mut() else {
                if !sleep_until(Instant::now() + self.backoff, stop) {
                    return Ok(Next::Stopped);
                }
                match build(&self.text, self.credentials.as_ref()) {
                    Ok(c) => self.conn = Some(c),
                    Err(m) => {
                        self.metrics.source_errors.inc();
                        tracing::warn!(
                            camera = %self.what,
                            "cannot restart the pipeline: {m}; next try in {:?}",
                            self.backoff
                        );
                        self.backoff = (self.backoff * 2)
                            .min(Duration::from_millis(self.cfg.reconnect_max_backoff_ms));
                    }
                }
                continue;
            };
            match conn.pull(timeout) {
                Pulled::Frame(c) => {
                    if !conn.delivered {
                        conn.delivered = true;
                        self.metrics.source_reconnects.inc();
                        self.backoff = Duration::from_millis(self.cfg.reconnect_initial_backoff_ms);
                        tracing::info!(camera = %self.what, "camera back: {}", describe_format(&c));
                    }
                    return Ok(Next::Frame(c));
                }
                Pulled::Bad(m) => {
                    tracing::warn!(camera = %self.what, "frame skipped: {m}");
                    self.metrics.skip("corrupt");
                }
                Pulled::Nothing => {}
                Pulled::Lost(m) => self.lose(&m),
            }
        }
    }
}
