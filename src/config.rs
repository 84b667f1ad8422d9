//! The daemon's configuration (`gcm-inspect run --config FILE`), in YAML.
//!
//! Loaded as `from_yaml -> validate`: parsing refuses unknown keys and wrong
//! types with the key and the line; [`DaemonConfig::validate`] then checks the
//! values and names the key (and its line, when the text is at hand). Units
//! are part of every field's name (`fps`, `_ms`, `_bytes`, `_px`, `_frames`).
//! Every field is documented here and in `config/default.yaml`, which is
//! embedded into the binary and used when `run` is given no `--config`.
//! Each section's `impl Default` holds its defaults (serde fills absent keys
//! from it); tests hold `config/default.yaml` to those values and to every key.
//!
//! What can change on SIGHUP: the model, the device, preprocessing, evidence
//! policy and checks. The source, the output folders and the metrics address
//! need a restart (a reload that changes them is applied without them, with a
//! warning).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::preprocess::{PixelFormat, Roi};

/// The built-in configuration: demo model, synthetic source, outputs under
/// the state directory (see [`OutputConfig`]).
pub const DEFAULT_YAML: &str = include_str!("../config/default.yaml");

/// Where the built-in configuration comes from, for messages.
pub const DEFAULT_NAME: &str = "<built-in config/default.yaml>";

/// The daemon configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The model: a model directory (`model.json` + `model.safetensors`) or
    /// `builtin:demo`, the demo model bundled in the binary.
    pub model: String,
    /// Compute device for inference: `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "DaemonConfig::default_device")]
    pub device: String,
    /// Test-time symmetry averaging: `none`, `flips` (scores and evidence
    /// averaged over the 4 mirror images: 4 forward passes a frame) or `d4`
    /// (the 8 flips and quarter turns of a square input: 8 passes); see
    /// `crate::model::tta`.
    #[serde(default)]
    pub tta: crate::model::tta::Tta,
    /// Where frames come from.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub source: SourceConfig,
    /// Frame preparation before the model.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// Queues between the stages.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Decision log and evidence folders.
    #[serde(default)]
    pub output: OutputConfig,
    /// Which frames keep their evidence, and how much disk it may use.
    #[serde(default)]
    pub evidence: EvidenceConfig,
    /// Divergence checks.
    #[serde(default)]
    pub checks: ChecksConfig,
    /// From decision to verdict: reject classes, the operating point, frame
    /// health checks.
    #[serde(default)]
    pub decision: DecisionConfig,
    /// Where decisions go besides the log: MQTT, webhook, Modbus TCP
    /// (see [`crate::outputs`]).
    #[serde(default)]
    pub outputs: Vec<crate::outputs::OutputSpec>,
    /// This station's name in output topics and payloads. Default: the host name.
    #[serde(default)]
    pub station: Option<String>,
    /// Prometheus `/metrics` and `/healthz`.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// A frame source: one key naming its kind (`v4l2`, `gstreamer`, `replay` or `synthetic`)
/// holding its settings. (An external tag rather than a `kind:` field keeps
/// serde's position information, so errors inside a source name their line.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A V4L2 camera, mmap streaming.
    V4l2(V4l2Config),
    /// A GStreamer pipeline ending in an appsink: RTSP IP cameras, Jetson CSI
    /// sensors, GigE Vision cameras, or any pipeline text.
    Gstreamer(GstreamerConfig),
    /// The images of a folder, in sorted file-name order.
    Replay(ReplayConfig),
    /// Synthetic EL cell images (the same generator as `gcm-inspect synth`).
    Synthetic(SyntheticConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::V4l2(_) => "v4l2",
            SourceConfig::Gstreamer(_) => "gstreamer",
            SourceConfig::Replay(_) => "replay",
            SourceConfig::Synthetic(_) => "synthetic",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// The camera's device node, e.g. `/dev/video0`.
    pub device_path: PathBuf,
    /// Frame width asked of the camera, in pixels.
    pub width_px: u32,
    /// Frame height asked of the camera, in pixels.
    pub height_px: u32,
    /// Frame rate asked of the camera, frames per second.
    pub fps: u32,
    /// `YUYV`, `MJPEG`, `GREY`, `RGB3`, `NV12`, or a Bayer code: 8-bit
    /// `RGGB BA81 GRBG GBRG`, 10-bit `RG10 BG10 BA10 GB10`, 12-bit `RG12
    /// BG12 BA12 GB12`, MIPI packed 10-bit `pRAA pBAA pgAA pGAA`.
    pub pixel_format: PixelFormat,
    /// mmap buffers shared with the driver.
    #[serde(default = "number::<_, 4>")]
    pub buffer_count: u32,
    /// A dequeue that waits longer than this counts as a lost camera.
    #[serde(default = "number::<_, 2000>")]
    pub dequeue_timeout_ms: u64,
    /// First wait before reopening a lost camera; doubled after each failure.
    #[serde(default = "number::<_, 250>")]
    pub reconnect_initial_backoff_ms: u64,
    /// The longest wait between reopening attempts.
    #[serde(default = "number::<_, 10_000>")]
    pub reconnect_max_backoff_ms: u64,
    /// Camera controls set when the camera opens and again after each
    /// reopening (the driver forgets them when the camera is lost).
    #[serde(default)]
    pub controls: V4l2Controls,
}

/// V4L2 camera controls (absent: the camera's own automatic setting).
/// Lighting drift on a line should reach the model as a darker or brighter
/// frame (which the health checks see), not be hidden by the camera's
/// automatic exposure, gain and white balance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V4l2Controls {
    /// Manual exposure: auto exposure off (`auto_exposure` = manual), and
    /// `exposure_time_absolute` set to this, in units of 100 µs.
    pub exposure_time_100us: Option<i64>,
    /// Gain: `gain_automatic` off (where the camera has it), `gain` set.
    pub gain: Option<i64>,
    /// `white_balance_automatic` off: the white balance stays where it is
    /// (or at `white_balance_temperature_k`).
    pub white_balance_lock: bool,
    /// White balance temperature, in kelvin (needs `white_balance_lock`).
    pub white_balance_temperature_k: Option<i64>,
    /// `focus_automatic_continuous` off: the focus stays where it is (or at
    /// `focus_absolute`).
    pub focus_lock: bool,
    /// Focus position, in the camera's units (needs `focus_lock`).
    pub focus_absolute: Option<i64>,
}

/// A GStreamer source: exactly one of `pipeline` (the text of a pipeline) or
/// the presets `rtsp`, `csi`, `gige`, each expanded to a pipeline
/// (`pipeline::source::gst_spec`; `check-config` prints it). The frames leave
/// through an appsink that takes the latest frame only, in GRAY8, YUY2, RGB,
/// NV12 or Bayer; a pipeline that stops (EOS, an error, no frame within
/// `frame_timeout_ms`) is rebuilt with capped exponential backoff, counted
/// as a V4L2 camera's reopening is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GstreamerConfig {
    /// A pipeline in `gst-launch-1.0` syntax. It may end in its own
    /// `appsink name=sink`; otherwise the daemon's appsink is appended.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// An RTSP IP camera (H.264, H.265 or MJPEG; decoded by `decodebin`).
    #[serde(default)]
    pub rtsp: Option<RtspConfig>,
    /// A Jetson CSI sensor through `nvarguscamerasrc` and `nvvidconv`.
    #[serde(default)]
    pub csi: Option<CsiConfig>,
    /// A GigE Vision (or USB3 Vision) camera through Aravis's `aravissrc`.
    #[serde(default)]
    pub gige: Option<GigeConfig>,
    /// No frame for this long counts as a lost camera (the first frame of a
    /// new connection may take this long too).
    #[serde(default = "number::<_, 5000>")]
    pub frame_timeout_ms: u64,
    /// First wait before rebuilding a lost pipeline; doubled after each failure.
    #[serde(default = "number::<_, 250>")]
    pub reconnect_initial_backoff_ms: u64,
    /// The longest wait between rebuilding attempts.
    #[serde(default = "number::<_, 10_000>")]
    pub reconnect_max_backoff_ms: u64,
}

/// An RTSP camera.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspConfig {
    /// `rtsp://host[:port]/path` (or `rtsps://`), without credentials.
    pub url: String,
    /// The jitter buffer's latency: frames are held this long to reorder
    /// packets (part of the capture-to-decision latency).
    #[serde(default = "number::<_, 200>")]
    pub latency_ms: u32,
    /// A file holding `user:password` on its first line (relative to the
    /// config file); never in the config, never logged.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

/// A Jetson CSI sensor (Argus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiConfig {
    /// `nvarguscamerasrc sensor-id`.
    #[serde(default)]
    pub sensor_id: u32,
    pub width_px: u32,
    pub height_px: u32,
    pub fps: u32,
    /// What `nvvidconv` hands over: `GRAY8` (grey models) or `NV12`.
    #[serde(default = "CsiConfig::default_format")]
    pub format: String,
}

impl CsiConfig {
    fn default_format() -> String {
        "GRAY8".into()
    }
}

/// A GigE Vision camera (Aravis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GigeConfig {
    /// Aravis's camera name (`arv-tool-0.8` lists them, e.g.
    /// `Basler-21234567`); absent: the first camera found.
    #[serde(default)]
    pub camera_name: Option<String>,
}

/// The default of a numeric key, written in its `#[serde(default = ...)]`
/// as `number::<_, N>`: for the keys of a struct that also holds required
/// keys, so that serde cannot take their defaults from an `impl Default`.
fn number<T: From<u32>, const N: u32>() -> T {
    T::from(N)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The folder; its image files (png, jpg, jpeg, bmp, tif, tiff) are read
    /// in sorted file-name order, sub-folders are not entered.
    pub dir: PathBuf,
    /// Start again from the first image after the last.
    #[serde(default, rename = "loop")]
    pub loop_: bool,
    /// Pacing in frames per second, like a camera (frames the model cannot
    /// keep up with are dropped and counted). 0: as fast as the model takes
    /// them, never dropping.
    #[serde(default)]
    pub fps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Pacing in frames per second (frames the model cannot keep up with are
    /// dropped and counted). 0: as fast as the model takes them, never dropping.
    pub fps: f64,
    /// Generator seed: the same seed gives the same frames.
    pub seed: u64,
    /// Frame side in pixels (square grey frames).
    pub size_px: usize,
    /// Kinds of cell to draw, in turn: `ok`, `crack`, `inactive`, `spot`.
    pub classes: Vec<String>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            fps: 30.0,
            seed: 0,
            size_px: 64,
            classes: ["ok", "crack", "inactive", "spot"].map(String::from).into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Crop to this region before resizing to the model's input size; the
    /// whole frame when absent. A frame smaller than the region is skipped
    /// and counted.
    pub roi: Option<Roi>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Frames waiting between capture and the model. A live source (camera,
    /// paced replay or synthetic) drops the oldest waiting frame when full and
    /// counts it; an unpaced source waits.
    pub queue_capacity_frames: usize,
    /// Decisions waiting between the model and the sinks (log, evidence,
    /// checks). Decisions are never dropped: when full, the model waits.
    pub sink_queue_capacity_decisions: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity_frames: 4,
            sink_queue_capacity_decisions: 64,
        }
    }
}

/// Log durability: how often written lines are forced to disk (fsync).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Rotate `decisions.jsonl` to `decisions.NNNNNN.jsonl` once it is this large.
    pub rotate_bytes: u64,
    /// fsync after this many lines (1: every line; 0: no line count).
    pub fsync_every_lines: u64,
    /// fsync when the oldest unsynced line is this old (0: no time limit).
    pub fsync_every_ms: u64,
    /// Disk the decision log may use, active file included; the oldest
    /// rotated files are deleted first. Absent: [`DEFAULT_KEEP_DISK_PERCENT`]
    /// of the log folder's file system (at least two rotations); 0: no limit.
    pub keep_bytes: Option<u64>,
    /// Rotated files older than this many days (by their last write) are
    /// deleted; 0: no age limit.
    pub keep_days: u64,
}

/// The share of its file system the decision log keeps when
/// `output.log.keep_bytes` is not set.
pub const DEFAULT_KEEP_DISK_PERCENT: u64 = 10;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            rotate_bytes: 64 << 20,
            fsync_every_lines: 30,
            fsync_every_ms: 1000,
            keep_bytes: None,
            keep_days: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder of the decision log. Default: `$LOGS_DIRECTORY` (systemd's
    /// `LogsDirectory=`), else `$XDG_STATE_HOME/gcm-inspect/log`, else
    /// `~/.local/state/gcm-inspect/log`.
    pub log_dir: Option<PathBuf>,
    /// Folder of the evidence. Default: `$STATE_DIRECTORY/evidence`
    /// (systemd's `StateDirectory=`), else `$XDG_STATE_HOME/gcm-inspect/evidence`,
    /// else `~/.local/state/gcm-inspect/evidence`.
    pub evidence_dir: Option<PathBuf>,
    /// Rotation and durability of the decision log.
    pub log: LogConfig,
}

/// Which frames keep their evidence: a frame is kept when any rule selects it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Every frame.
    pub all_frames: bool,
    /// Frames decided as one of these classes.
    pub classes: Vec<String>,
    /// Frames whose margin (decided score minus runner-up) is below this.
    pub margin_below: Option<f32>,
    /// Frames whose divergence checks failed.
    pub divergent: bool,
    /// Every Nth frame (by frame id); 0: off.
    pub every_nth_frame: u64,
    /// Heatmaps for every class, not only the decided one.
    pub heatmaps_all_classes: bool,
    /// Disk the evidence folder may use; the oldest evidence is deleted first.
    /// The decision log is never touched.
    pub quota_bytes: u64,
}

impl EvidenceConfig {
    /// Does the policy keep frame `id`'s evidence for what it is (divergence
    /// aside, which the checks find later)?
    pub fn selects(&self, class: &str, margin: f32, id: u64) -> bool {
        self.all_frames
            || self.classes.iter().any(|c| c == class)
            || self.margin_below.is_some_and(|m| margin < m)
            || (self.every_nth_frame > 0 && id.is_multiple_of(self.every_nth_frame))
    }
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            all_frames: false,
            classes: Vec::new(),
            margin_below: None,
            divergent: true,
            every_nth_frame: 0,
            heatmaps_all_classes: false,
            quota_bytes: 1 << 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksConfig {
    /// Check (a), evidence reproduction. Kept evidence is always checked as
    /// written; on every Nth other frame (1: all; 0: none) the evidence's
    /// quantised CCMs are checked in memory, without writing files.
    pub evidence_every_nth_frame: u64,
    /// Check (b), reference cross-check: every Nth frame is scored again on
    /// the CPU by the reference (unfolded) network; 0: off.
    pub reference_every_nth_frame: u64,
    /// Largest |score - reference score| accepted by check (b).
    pub reference_tolerance: f32,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            evidence_every_nth_frame: 1,
            reference_every_nth_frame: 100,
            reference_tolerance: 1e-3,
        }
    }
}

/// From decision to verdict (`ok`, `ng`, `review`; see [`crate::verdict`]).
/// The defaults decide as a bare argmax: no review band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Classes whose decision rejects the part (`ng`); every other class
    /// passes (`ok`). Empty: no class rejects.
    pub reject_classes: Vec<String>,
    /// Below this probability of the decided class the verdict is `review`
    /// (0: never).
    pub min_probability: f64,
    /// Below this lead of the decided score over the runner-up the verdict
    /// is `review` (0: never).
    pub min_margin: f64,
    /// Frame health checks before the verdict.
    pub health: HealthConfig,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            reject_classes: Vec::new(),
            min_probability: 0.0,
            min_margin: 0.0,
            health: HealthConfig::default(),
        }
    }
}

/// Frame health: a frame that fails a check gets `review`, never a class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// More than this share of the input's values at 0: `dark` (1: off).
    pub max_dark_share: f64,
    /// More than this share at 255: `saturated` (1: off).
    pub max_saturated_share: f64,
    /// Standard deviation of the input's values (0-255) below this: `flat`
    /// (0: off).
    pub min_contrast: f64,
    /// This many identical frames in a row (the last ones included):
    /// `frozen` (0: off).
    pub frozen_frames: u64,
    /// Every class score within this of the others: `no_evidence`.
    pub evidence_tolerance: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_dark_share: 0.95,
            max_saturated_share: 0.95,
            min_contrast: 1.0,
            frozen_frames: 3,
            evidence_tolerance: 1e-6,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthz`.
    pub enabled: bool,
    /// Address to listen on; loopback by default. Port 0 picks a free port
    /// (the address is logged).
    pub listen: String,
    /// `/healthz` answers 503 when the inference loop has not turned for this long.
    pub healthy_within_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
            healthy_within_ms: 10_000,
        }
    }
}

/// A config as loaded: where from, its text (for line numbers), its values.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub origin: PathBuf,
    pub text: String,
    pub config: DaemonConfig,
}

impl DaemonConfig {
    /// The device when none is set. (The config has required keys, so it
    /// has no `impl Default`; each section has its own.)
    fn default_device() -> String {
        "cpu".into()
    }

    /// Parses YAML; unknown keys and wrong types are refused with the key and line.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|e| Error::config(origin, yaml_message(&e)))
    }

    /// Checks the values; the error names the key (and its line in `text`).
    pub fn validate(self, text: &str, origin: &Path) -> Result<Self> {
        match self.check() {
            Ok(()) => Ok(self),
            Err((key, msg)) => Err(key_error(origin, text, &key, msg)),
        }
    }

    /// The value checks, section by section in the file's order; the first
    /// failure is the one reported.
    fn check(&self) -> Checked {
        self.check_model()?;
        self.source.check()?;
        if let Some(roi) = &self.preprocess.roi {
            roi.check()?;
        }
        self.pipeline.check()?;
        self.output.log.check()?;
        self.evidence.check()?;
        self.checks.check()?;
        self.decision.check()?;
        self.check_outputs()?;
        self.metrics.check()
    }

    fn check_outputs(&self) -> Checked {
        if let Some(s) = &self.station {
            let fine = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if s.is_empty() || !s.chars().all(fine) {
                return fail("station", format!("{s:?}: use letters, digits, - _ ."));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, o) in self.outputs.iter().enumerate() {
            o.check(i)?;
            let name = crate::outputs::output_name(&self.outputs, i);
            if !names.insert(name.clone()) {
                return fail(
                    &format!("outputs[{i}].name"),
                    format!("{name:?} is used twice"),
                );
            }
        }
        Ok(())
    }

    fn check_model(&self) -> Checked {
        if self.model.trim().is_empty() {
            return fail("model", "must name a model directory or builtin:demo");
        }
        crate::device::parse(&self.device).map_err(|m| ("device".to_string(), m))?;
        Ok(())
    }

    /// Checks that need the model: classes named in the evidence policy exist,
    /// a grey camera is not given to a colour model.
    pub fn check_against_model(
        &self,
        classes: &[String],
        channels: usize,
        origin: &Path,
        text: &str,
    ) -> Result<()> {
        let fail = |key: &str, msg: String| Err(key_error(origin, text, key, msg));
        let named = [
            ("evidence.classes", &self.evidence.classes),
            ("decision.reject_classes", &self.decision.reject_classes),
        ];
        for (key, list) in named {
            if let Some(c) = list.iter().find(|c| !classes.contains(c)) {
                let msg = format!(
                    "{c:?} is not a class of the model (classes: {})",
                    classes.join(", ")
                );
                return fail(key, msg);
            }
        }
        if channels == 3 {
            let grey_source = match &self.source {
                SourceConfig::V4l2(v) => !v.pixel_format.is_colour(),
                SourceConfig::Gstreamer(g) => g.csi.as_ref().is_some_and(|c| c.format == "GRAY8"),
                SourceConfig::Synthetic(_) => true,
                SourceConfig::Replay(_) => false,
            };
            if grey_source {
                return fail(
                    "source",
                    "delivers grey frames, the model takes RGB (3 channels)".into(),
                );
            }
        }
        Ok(())
    }
}

/// The largest frame side (and ROI edge) accepted, in pixels.
const MAX_SIDE_PX: u32 = 16_384;
/// The longest wait, period or timeout a config may set: one hour. Longer
/// ones are typing errors, and every duration the daemon computes from one
/// (deadlines, doubled backoffs) stays far inside what `Instant` can hold.
const MAX_WAIT_MS: u64 = 3_600_000;
/// The largest byte count (file sizes, quotas) accepted: 1 PiB.
const MAX_BYTES: u64 = 1 << 50;
/// The range of a frame rate: 0 (unpaced) or one frame an hour to 10,000 fps.
const FPS_RANGE: (f64, f64) = (1.0 / 3600.0, 10_000.0);

/// A value check: `Err((key, what is wrong))` for the first value refused.
type Checked = std::result::Result<(), (String, String)>;

fn fail(key: &str, msg: impl Into<String>) -> Checked {
    Err((key.to_string(), msg.into()))
}

/// `value` must lie in `lo..=hi`; the error names the key and the range.
fn within<T: PartialOrd + std::fmt::Display>(key: &str, value: T, lo: T, hi: T) -> Checked {
    // Written so that NaN (which compares false with everything) fails.
    if !(value >= lo && value <= hi) {
        return Err((
            key.to_string(),
            format!("{value} is out of range (must be between {lo} and {hi})"),
        ));
    }
    Ok(())
}

/// A frame rate: 0 (unpaced) or within [`FPS_RANGE`].
fn rate(key: &str, fps: f64) -> Checked {
    let (lo, hi) = FPS_RANGE;
    if fps == 0.0 || (fps.is_finite() && (lo..=hi).contains(&fps)) {
        return Ok(());
    }
    Err((
        key.to_string(),
        format!("{fps} is not a frame rate (0 for unpaced, or between one frame an hour, {lo:.6}, and {hi})"),
    ))
}

impl SourceConfig {
    fn check(&self) -> Checked {
        match self {
            SourceConfig::V4l2(v) => v.check(),
            SourceConfig::Gstreamer(g) => g.check(),
            SourceConfig::Replay(r) => rate("source.replay.fps", r.fps),
            SourceConfig::Synthetic(s) => s.check(),
        }
    }
}

impl V4l2Config {
    fn check(&self) -> Checked {
        within("source.v4l2.width_px", self.width_px, 1, MAX_SIDE_PX)?;
        within("source.v4l2.height_px", self.height_px, 1, MAX_SIDE_PX)?;
        within("source.v4l2.fps", self.fps, 1, 1000)?;
        within("source.v4l2.buffer_count", self.buffer_count, 2, 32)?;
        let timeout = self.dequeue_timeout_ms;
        within("source.v4l2.dequeue_timeout_ms", timeout, 1, MAX_WAIT_MS)?;
        let first = self.reconnect_initial_backoff_ms;
        within(
            "source.v4l2.reconnect_initial_backoff_ms",
            first,
            1,
            MAX_WAIT_MS,
        )?;
        within(
            "source.v4l2.reconnect_max_backoff_ms",
            self.reconnect_max_backoff_ms,
            first,
            MAX_WAIT_MS,
        )?;
        let c = &self.controls;
        if c.white_balance_temperature_k.is_some() && !c.white_balance_lock {
            return fail(
                "source.v4l2.controls.white_balance_temperature_k",
                "needs white_balance_lock: true (the automatic white balance would override it)",
            );
        }
        if c.focus_absolute.is_some() && !c.focus_lock {
            return fail(
                "source.v4l2.controls.focus_absolute",
                "needs focus_lock: true (the automatic focus would override it)",
            );
        }
        if let Some(e) = c.exposure_time_100us {
            within("source.v4l2.controls.exposure_time_100us", e, 1, 10_000_000)?;
        }
        if let Some(k) = c.white_balance_temperature_k {
            within(
                "source.v4l2.controls.white_balance_temperature_k",
                k,
                1000,
                20_000,
            )?;
        }
        Ok(())
    }
}

impl GstreamerConfig {
    fn check(&self) -> Checked {
        let key = "source.gstreamer";
        let set = [
            ("pipeline", self.pipeline.is_some()),
            ("rtsp", self.rtsp.is_some()),
            ("csi", self.csi.is_some()),
            ("gige", self.gige.is_some()),
        ];
        let named: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        if named.len() != 1 {
            return fail(
                key,
                format!(
                    "needs exactly one of pipeline, rtsp, csi, gige (has {})",
                    if named.is_empty() {
                        "none".to_string()
                    } else {
                        named.join(", ")
                    }
                ),
            );
        }
        let timeout = self.frame_timeout_ms;
        within("source.gstreamer.frame_timeout_ms", timeout, 1, MAX_WAIT_MS)?;
        let first = self.reconnect_initial_backoff_ms;
        within(
            "source.gstreamer.reconnect_initial_backoff_ms",
            first,
            1,
            MAX_WAIT_MS,
        )?;
        within(
            "source.gstreamer.reconnect_max_backoff_ms",
            self.reconnect_max_backoff_ms,
            first,
            MAX_WAIT_MS,
        )?;
        crate::pipeline::source::gst_spec::check(self)
    }
}

impl SyntheticConfig {
    fn check(&self) -> Checked {
        rate("source.synthetic.fps", self.fps)?;
        within("source.synthetic.size_px", self.size_px, 8, 4096)?;
        crate::data::synth::parse_kinds(&self.classes.join(","))
            .map_err(|m| ("source.synthetic.classes".to_string(), m))?;
        Ok(())
    }
}

impl Roi {
    /// Inside the largest frame: the corner, then the size from there.
    fn check(&self) -> Checked {
        within("preprocess.roi.x_px", self.x_px, 0, MAX_SIDE_PX - 1)?;
        within("preprocess.roi.y_px", self.y_px, 0, MAX_SIDE_PX - 1)?;
        let (w, h) = (self.width_px, self.height_px);
        within("preprocess.roi.width_px", w, 1, MAX_SIDE_PX - self.x_px)?;
        within("preprocess.roi.height_px", h, 1, MAX_SIDE_PX - self.y_px)
    }
}

impl PipelineConfig {
    fn check(&self) -> Checked {
        let frames = self.queue_capacity_frames;
        within("pipeline.queue_capacity_frames", frames, 1, 1024)?;
        within(
            "pipeline.sink_queue_capacity_decisions",
            self.sink_queue_capacity_decisions,
            1,
            65_536,
        )
    }
}

impl LogConfig {
    fn check(&self) -> Checked {
        let rotate = self.rotate_bytes;
        within("output.log.rotate_bytes", rotate, 4096, MAX_BYTES)?;
        let (lines, ms) = (self.fsync_every_lines, self.fsync_every_ms);
        within("output.log.fsync_every_lines", lines, 0, 1_000_000)?;
        within("output.log.fsync_every_ms", ms, 0, MAX_WAIT_MS)?;
        within("output.log.keep_days", self.keep_days, 0, 36_500)?;
        match self.keep_bytes {
            // Room for the active file and at least one rotated one.
            Some(k) if k > 0 => within("output.log.keep_bytes", k, 2 * rotate, MAX_BYTES),
            _ => Ok(()),
        }
    }
}

impl EvidenceConfig {
    fn check(&self) -> Checked {
        within("evidence.quota_bytes", self.quota_bytes, 0, MAX_BYTES)?;
        match self.margin_below {
            Some(m) if !m.is_finite() => fail(
                "evidence.margin_below",
                format!("{m} is not a finite number"),
            ),
            _ => Ok(()),
        }
    }
}

impl ChecksConfig {
    fn check(&self) -> Checked {
        let tol = self.reference_tolerance;
        if !(tol.is_finite() && tol >= 0.0) {
            return fail(
                "checks.reference_tolerance",
                format!("{tol} is not a finite number >= 0"),
            );
        }
        Ok(())
    }
}

impl DecisionConfig {
    fn check(&self) -> Checked {
        let h = &self.health;
        let shares = [
            ("decision.min_probability", self.min_probability),
            ("decision.health.max_dark_share", h.max_dark_share),
            ("decision.health.max_saturated_share", h.max_saturated_share),
        ];
        for (key, v) in shares {
            within(key, v, 0.0, 1.0)?;
        }
        within("decision.min_margin", self.min_margin, 0.0, 1e6)?;
        within("decision.health.min_contrast", h.min_contrast, 0.0, 255.0)?;
        within(
            "decision.health.frozen_frames",
            h.frozen_frames,
            0,
            1_000_000,
        )?;
        within(
            "decision.health.evidence_tolerance",
            h.evidence_tolerance,
            0.0,
            1e6,
        )
    }

    /// The rules in one line, as `check-config` prints them, e.g. `ng for
    /// crack, spot; review below p=0.8; health: ...`.
    pub fn describe(&self) -> String {
        let rejects = match self.reject_classes.is_empty() {
            true => "no reject class (every confident decision is ok)".to_string(),
            false => format!("ng for {}", self.reject_classes.join(", ")),
        };
        let mut band = Vec::new();
        if self.min_probability > 0.0 {
            band.push(format!("p<{}", self.min_probability));
        }
        if self.min_margin > 0.0 {
            band.push(format!("margin<{}", self.min_margin));
        }
        let band = match band.is_empty() {
            true => "no review band".to_string(),
            false => format!("review at {}", band.join(" or ")),
        };
        let h = &self.health;
        let pct = |v: f64| match v >= 1.0 {
            true => "off".to_string(),
            false => format!(">{}%", v * 100.0),
        };
        let frozen = match h.frozen_frames {
            0 => "off".to_string(),
            n => format!("{n} identical frames"),
        };
        format!(
            "{rejects}; {band}; health: dark {}, saturated {}, contrast <{}, frozen {frozen}, \
             no evidence within {}",
            pct(h.max_dark_share),
            pct(h.max_saturated_share),
            h.min_contrast,
            h.evidence_tolerance
        )
    }
}

impl MetricsConfig {
    /// The address only when it is to be served.
    fn check(&self) -> Checked {
        if self.enabled {
            self.listen
                .parse::<SocketAddr>()
                .map_err(|e| ("metrics.listen".to_string(), format!("{e} (want IP:PORT)")))?;
        }
        let stall = self.healthy_within_ms;
        within("metrics.healthy_within_ms", stall, 1, MAX_WAIT_MS)
    }
}

impl Loaded {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(path, format!("cannot read: {e}")))?;
        Loaded::from_text(text, path)
    }

    /// The built-in configuration.
    pub fn builtin() -> Result<Self> {
        Loaded::from_text(DEFAULT_YAML.to_string(), Path::new(DEFAULT_NAME))
    }

    /// `--config FILE`, or the built-in configuration without one.
    pub fn from_arg(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Loaded::from_file(p),
            None => Loaded::builtin(),
        }
    }

    fn from_text(text: String, origin: &Path) -> Result<Self> {
        let config = DaemonConfig::from_yaml(&text, origin)?.validate(&text, origin)?;
        Ok(Loaded {
            origin: origin.to_path_buf(),
            text,
            config,
        })
    }

    /// Relative paths in a config file are relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() || self.origin.as_os_str() == DEFAULT_NAME {
            return p.to_path_buf();
        }
        match self.origin.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The station name: the config's, or the host name.
    pub fn station(&self) -> String {
        if let Some(s) = &self.config.station {
            return s.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if host.is_empty() {
            "gcm-inspect".into()
        } else {
            host
        }
    }

    /// The outputs with their files' paths (secrets, certificates) resolved.
    pub fn outputs(&self) -> Vec<crate::outputs::OutputSpec> {
        let mut specs = self.config.outputs.clone();
        for o in &mut specs {
            let mut files = Vec::new();
            if let Some(m) = o.mqtt.as_mut() {
                files.extend([
                    m.password_file.as_mut(),
                    m.ca_file.as_mut(),
                    m.client_cert_file.as_mut(),
                    m.client_key_file.as_mut(),
                ]);
            }
            if let Some(w) = o.webhook.as_mut() {
                files.extend([w.bearer_token_file.as_mut(), w.ca_file.as_mut()]);
            }
            for f in files.into_iter().flatten() {
                *f = self.resolve(f);
            }
        }
        specs
    }

    /// The model spec with a relative directory resolved.
    pub fn model_spec(&self) -> String {
        let m = &self.config.model;
        if m.starts_with("builtin:") {
            m.clone()
        } else {
            self.resolve(Path::new(m)).to_string_lossy().into_owned()
        }
    }

    /// The decision log folder (see [`OutputConfig::log_dir`]).
    pub fn log_dir(&self) -> Result<PathBuf> {
        match &self.config.output.log_dir {
            Some(p) => Ok(self.resolve(p)),
            None => default_dir("LOGS_DIRECTORY", None, "log")
                .ok_or_else(|| self.no_default("output.log_dir")),
        }
    }

    /// The evidence folder (see [`OutputConfig::evidence_dir`]).
    pub fn evidence_dir(&self) -> Result<PathBuf> {
        match &self.config.output.evidence_dir {
            Some(p) => Ok(self.resolve(p)),
            None => default_dir("STATE_DIRECTORY", Some("evidence"), "evidence")
                .ok_or_else(|| self.no_default("output.evidence_dir")),
        }
    }

    /// Creates the decision log and evidence folders if needed and proves
    /// each writable by writing and removing a probe file; returns them
    /// (log, evidence). A path that runs through a regular file is a config
    /// error naming the key; a folder that is there but refuses writes (read
    /// only, permissions, a full disk) is an I/O error, which a restart may
    /// fix (a disk mounted late).
    pub fn prepare_output_dirs(&self) -> Result<(PathBuf, PathBuf)> {
        let log = self.log_dir()?;
        let evidence = self.evidence_dir()?;
        for (key, dir) in [("output.log_dir", &log), ("output.evidence_dir", &evidence)] {
            self.writable_dir(key, dir)?;
        }
        Ok((log, evidence))
    }

    fn writable_dir(&self, key: &str, dir: &Path) -> Result<()> {
        use std::io::ErrorKind::{AlreadyExists, NotADirectory};
        let not_a_folder = |e: &std::io::Error| {
            matches!(e.kind(), NotADirectory | AlreadyExists)
                || dir.ancestors().any(|a| a.is_file())
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            if not_a_folder(&e) {
                let msg = format!(
                    "{} cannot be a folder: {e} (a part of the path is a file)",
                    dir.display()
                );
                return Err(key_error(&self.origin, &self.text, key, msg));
            }
            return Err(Error::io(dir, e));
        }
        let probe = dir.join(format!(".gcm-inspect-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                let _ = std::fs::remove_file(&probe);
                Error::io(
                    dir,
                    std::io::Error::new(e.kind(), format!("{key} is not writable: {e}")),
                )
            })
    }

    fn no_default(&self, key: &str) -> Error {
        Error::config(
            &self.origin,
            format!("{key}: not set, and neither the systemd directory variable, XDG_STATE_HOME nor HOME is set to derive it from"),
        )
    }
}

/// `$<systemd_var>[/<sub>]`, else `$XDG_STATE_HOME/gcm-inspect/<leaf>`, else
/// `$HOME/.local/state/gcm-inspect/<leaf>`. systemd may list several
/// directories separated by `:`; the first is ours.
fn default_dir(systemd_var: &str, sub: Option<&str>, leaf: &str) -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(v) = nonempty(systemd_var) {
        let first = v
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        let base = PathBuf::from(first);
        return Some(match sub {
            Some(s) => base.join(s),
            None => base,
        });
    }
    if let Some(x) = nonempty("XDG_STATE_HOME") {
        return Some(PathBuf::from(x).join("gcm-inspect").join(leaf));
    }
    nonempty("HOME").map(|h| PathBuf::from(h).join(".local/state/gcm-inspect").join(leaf))
}

/// A config error that names the key, and its line when `text` sets it:
/// `key (line L): msg`.
fn key_error(origin: &Path, text: &str, key: &str, msg: String) -> Error {
    let at = line_of_key(text, key)
        .or_else(|| list_item_line(text, key))
        .map(|l| format!(" (line {l})"))
        .unwrap_or_default();
    Error::config(origin, format!("{key}{at}: {msg}"))
}

/// serde_yaml's message, which carries the key path and `at line L column C`.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line") => {
            format!("{msg} (line {} column {})", loc.line(), loc.column())
        }
        _ => msg,
    }
}

/// For a key in a list item (`outputs[2].mqtt.qos`): the 1-based line where
/// that item starts (`- ...` in a block list under a top-level key).
fn list_item_line(text: &str, key: &str) -> Option<usize> {
    let (list, rest) = key.split_once('[')?;
    let index: usize = rest.split_once(']')?.0.parse().ok()?;
    let start = line_of_key(text, list)?;
    let mut item_indent = None;
    let mut items = 0;
    for (i, line) in text.lines().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            return None; // the next top-level key
        }
        if trimmed.starts_with('-') && *item_indent.get_or_insert(indent) == indent {
            if items == index {
                return Some(i + 1);
            }
            items += 1;
        }
    }
    None
}

/// The 1-based line where a dotted key path (`source.v4l2.fps`) is set, found by
/// following the keys through the indentation of block-style YAML.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut parts = key.split('.').peekable();
    let mut want = parts.next()?;
    // The block being searched: its parent's indent, and its keys' indent
    // (known from its first line).
    let mut parent_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            return None; // left the parent's block without finding the key
        }
        let level = *child_indent.get_or_insert(indent);
        if indent != level {
            continue;
        }
        let name = trimmed.split(':').next().unwrap_or("").trim();
        if trimmed.contains(':') && name == want {
            match parts.next() {
                None => return Some(i + 1),
                Some(next) => {
                    want = next;
                    parent_indent = Some(indent);
                    child_indent = None;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<DaemonConfig> {
        DaemonConfig::from_yaml(y, Path::new("t.yaml"))?.validate(y, Path::new("t.yaml"))
    }

    #[test]
    fn log_retention_must_leave_room_for_a_rotation() {
        let base = "model: m\nsource:\n  synthetic: {}\noutput:\n  log:\n    rotate_bytes: 4096\n";
        let e = parse(&format!("{base}    keep_bytes: 8191\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("output.log.keep_bytes") && e.contains("8191"),
            "{e}"
        );
        let ok = parse(&format!("{base}    keep_bytes: 8192\n    keep_days: 30\n")).unwrap();
        assert_eq!(
            (ok.output.log.keep_bytes, ok.output.log.keep_days),
            (Some(8192), 30)
        );
        assert_eq!(
            parse(&format!("{base}    keep_bytes: 0\n"))
                .unwrap()
                .output
                .log
                .keep_bytes,
            Some(0)
        );
        let e = parse(&format!("{base}    keep_days: 40000\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("output.log.keep_days"), "{e}");
    }

    #[test]
    fn builtin_config_is_valid_and_uses_the_demo_model() {
        let l = Loaded::builtin().unwrap();
        assert_eq!(l.config.model, "builtin:demo");
        assert_eq!(l.config.source.kind(), "synthetic");
        assert_eq!(l.config.metrics.listen, "127.0.0.1:9464");
    }

    /// `config/default.yaml` documents the defaults: it parses to exactly
    /// the values the code takes for absent keys, but for the few it sets on
    /// purpose, listed here.
    #[test]
    fn default_yaml_is_the_defaults() {
        let parsed = DaemonConfig::from_yaml(DEFAULT_YAML, Path::new(DEFAULT_NAME)).unwrap();
        let expected = DaemonConfig {
            // Required keys, no defaults: the bundled demo model ...
            model: "builtin:demo".into(),
            device: DaemonConfig::default_device(),
            tta: Default::default(),
            // ... and a source that needs no camera and no files.
            source: SourceConfig::Synthetic(SyntheticConfig::default()),
            preprocess: PreprocessConfig::default(),
            pipeline: PipelineConfig::default(),
            output: OutputConfig::default(),
            evidence: EvidenceConfig {
                // The demo keeps a frame's evidence every 10 s (at 30 fps) so
                // that a first run shows some; a config of one's own keeps
                // only what its rules select.
                every_nth_frame: 300,
                ..EvidenceConfig::default()
            },
            checks: ChecksConfig::default(),
            // The demo names its defect classes and sends unsure calls to
            // review; a config of one's own decides as a bare argmax until
            // it sets them.
            decision: DecisionConfig {
                reject_classes: vec!["crack".into(), "inactive".into(), "spot".into()],
                min_probability: 0.8,
                ..DecisionConfig::default()
            },
            outputs: Vec::new(),
            station: None,
            metrics: MetricsConfig::default(),
        };
        assert_eq!(parsed, expected);
    }

    /// Every key has its line in `config/default.yaml`, so that the test
    /// above compares every default (an absent key would pass unseen).
    #[test]
    fn default_yaml_sets_every_key() {
        fn leaves(v: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
            match v.as_mapping() {
                Some(m) if !m.is_empty() => {
                    for (k, v) in m {
                        let k = k.as_str().expect("string keys");
                        let sub = if path.is_empty() {
                            k.to_string()
                        } else {
                            format!("{path}.{k}")
                        };
                        leaves(v, sub, out);
                    }
                }
                _ => out.push(path),
            }
        }
        let config = Loaded::builtin().unwrap().config;
        let mut keys = Vec::new();
        leaves(
            &serde_yaml::to_value(&config).unwrap(),
            String::new(),
            &mut keys,
        );
        assert!(keys.len() > 25, "{keys:?}");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| line_of_key(DEFAULT_YAML, k).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "not in config/default.yaml: {missing:?}"
        );
    }

    #[test]
    fn the_decision_rules_are_described_in_one_line() {
        let bundled = DaemonConfig::from_yaml(DEFAULT_YAML, Path::new(DEFAULT_NAME)).unwrap();
        assert_eq!(
            bundled.decision.describe(),
            "ng for crack, inactive, spot; review at p<0.8; health: dark >95%, \
             saturated >95%, contrast <1, frozen 3 identical frames, no evidence within 0.000001"
        );
        let mut d = DecisionConfig {
            min_margin: 0.2,
            ..DecisionConfig::default()
        };
        d.health.max_dark_share = 1.0;
        d.health.frozen_frames = 0;
        let text = d.describe();
        assert!(
            text.starts_with(
                "no reject class (every confident decision is ok); review at margin<0.2;"
            ),
            "{text}"
        );
        assert!(
            text.contains("dark off,") && text.contains("frozen off,"),
            "{text}"
        );
    }

    #[test]
    fn camera_example_is_valid() {
        let text = include_str!("../config/camera.example.yaml");
        let c = parse(text).unwrap();
        assert!(matches!(c.source, SourceConfig::V4l2(_)));
    }

    /// The camera examples parse, pass the checks and expand to their
    /// presets' pipelines (the GStreamer tests run the RTSP one's kind).
    #[test]
    fn gstreamer_examples_are_valid_and_expand() {
        use crate::pipeline::source::gst_spec::expand;
        for (text, starts) in [
            (include_str!("../config/rtsp.example.yaml"), "rtspsrc name=camera location=\"rtsp://192.0.2.10:554/stream1\" latency=200 protocols=tcp ! decodebin"),
            (include_str!("../config/csi.example.yaml"), "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! nvvidconv ! video/x-raw,format=GRAY8 ! appsink name=sink"),
            (include_str!("../config/gige.example.yaml"), "aravissrc camera-name=\"Basler-21234567\" ! appsink name=sink"),
        ] {
            let c = parse(text).unwrap();
            let SourceConfig::Gstreamer(g) = &c.source else {
                panic!("{:?}", c.source)
            };
            assert!(expand(g).starts_with(starts), "{}", expand(g));
        }
    }

    #[test]
    fn a_gstreamer_source_needs_exactly_one_kind() {
        let raw = |y: &str| DaemonConfig::from_yaml(y, Path::new("t.yaml")).unwrap();
        let base = "model: m\nsource:\n  gstreamer:\n";
        let both = format!("{base}    pipeline: videotestsrc\n    gige: {{}}\n");
        let e = raw(&both).check().unwrap_err();
        assert_eq!(e.0, "source.gstreamer");
        assert!(e.1.contains("has pipeline, gige"), "{e:?}");
        let none = format!("{base}    frame_timeout_ms: 100\n");
        assert!(raw(&none).check().unwrap_err().1.contains("has none"));
        let url = format!("{base}    rtsp:\n      url: rtsp://u:p@cam/x\n");
        let e = parse(&url).unwrap_err().to_string();
        assert!(
            e.contains("source.gstreamer.rtsp.url (line 5)") && !e.contains("u:p"),
            "{e}"
        );
        let csi =
            format!("{base}    csi: {{width_px: 64, height_px: 64, fps: 30, format: RGBA}}\n");
        let e = raw(&csi).check().unwrap_err();
        assert_eq!(e.0, "source.gstreamer.csi.format");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let y = "model: m\nsource:\n  synthetic:\n    fps: 5\n    colour: red\n";
        let e = parse(y).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("unknown field `colour`") && m.contains("line 5"),
            "{m}"
        );
        assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let y = "model: m\nsource:\n  synthetic: {}\nevidence:\n  quota_bytes: lots\n";
        let m = parse(y).unwrap_err().to_string();
        assert!(
            m.contains("evidence.quota_bytes") && m.contains("line 5"),
            "{m}"
        );
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let y = "model: m\nsource:\n  v4l2:\n    device_path: /dev/video0\n    width_px: 640\n    height_px: 480\n    fps: 0\n    pixel_format: YUYV\n";
        let m = parse(y).unwrap_err().to_string();
        assert!(
            m.contains("source.v4l2.fps (line 7): 0 is out of range (must be between 1 and 1000)"),
            "{m}"
        );
        let y = "model: m\nsource:\n  synthetic: {}\nmetrics:\n  listen: localhost\n";
        let m = parse(y).unwrap_err().to_string();
        assert!(m.contains("metrics.listen (line 5)"), "{m}");
    }

    #[test]
    fn pixel_format_must_be_known() {
        let y = "model: m\nsource:\n  v4l2:\n    device_path: /dev/video0\n    width_px: 640\n    height_px: 480\n    fps: 30\n    pixel_format: H264\n";
        let m = parse(y).unwrap_err().to_string();
        assert!(m.contains("H264") && m.contains("line 8"), "{m}");
    }

    #[test]
    fn line_of_key_follows_nesting() {
        let t = "a: 1\nb:\n  # c\n  a: 2\n  c:\n    a: 3\nc: 4\n";
        assert_eq!(line_of_key(t, "a"), Some(1));
        assert_eq!(line_of_key(t, "b.a"), Some(4));
        assert_eq!(line_of_key(t, "b.c.a"), Some(6));
        assert_eq!(line_of_key(t, "c"), Some(7));
        assert_eq!(line_of_key(t, "b.x"), None);
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let y = "model: models/m1\nsource:\n  replay:\n    dir: frames\noutput:\n  log_dir: out\n";
        let cfg = parse(y).unwrap();
        let l = Loaded {
            origin: PathBuf::from("/etc/gcm/daemon.yaml"),
            text: y.into(),
            config: cfg,
        };
        assert_eq!(l.model_spec(), "/etc/gcm/models/m1");
        assert_eq!(l.log_dir().unwrap(), PathBuf::from("/etc/gcm/out"));
    }
}
