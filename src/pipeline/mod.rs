//! The inspection daemon (`gcm-inspect run`): camera -> GCM decision ->
//! logged evidence with divergence checks.
//!
//! ```text
//! capture thread    FrameSource (v4l2 | replay | synthetic)
//!    | bounded queue: a live source drops the oldest waiting frame (counted)
//! infer thread      preprocess (ROI, resize, channels, scaling) + network + decision
//!    | bounded queue: never drops, the model waits
//! sink thread       checks (a) evidence reproduction, (b) reference cross-check,
//!                   evidence (atomic, quota), decision log line (fsync policy)
//! main thread       signals: SIGTERM/SIGINT stop, SIGHUP reload; sd_notify status
//! metrics thread    /metrics, /healthz
//! ```
//!
//! Shutdown: the stop flag ends the source first; its queue closes, the infer
//! thread drains it and closes its own; the sink thread drains that, fsyncs
//! and ends. Every frame captured before the stop gets its decision logged
//! (frames dropped by the keep-latest queue never had one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::config::{Loaded, MetricsConfig, PipelineConfig};
use crate::error::{Error, Result};

pub mod frame;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod sink;
pub mod source;

use frame::{unix_us, Frame};
use metrics::Metrics;
use model::Bundle;
use notify::Notifier;
use source::{FrameSource, Next};

/// Options from the command line.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many frames have been captured (then drain and exit).
    pub max_frames: Option<u64>,
}

/// What a run did, printed as one JSON line on stdout when it ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub frames_captured: u64,
    pub frames_dropped: u64,
    pub frames_skipped: u64,
    pub decisions: u64,
    /// Logged verdicts by name: `ok`, `ng`, `review`.
    pub verdicts: std::collections::BTreeMap<String, u64>,
    /// Frames sent to review by each health check: `dark`, `saturated`,
    /// `flat`, `frozen`, `no_evidence`.
    pub health_reviews: std::collections::BTreeMap<String, u64>,
    pub log_lines_written: u64,
    pub log_lines_synced: u64,
    pub divergences: u64,
    pub evidence_written: u64,
    /// Evidence that was to be kept but could not be written.
    pub evidence_write_failures: u64,
    pub evidence_bytes: u64,
    /// Decisions made but never written to the decision log (its disk
    /// refused them for longer than the backlog holds, or until the stop).
    pub decisions_unlogged: u64,
    pub source_reconnects: u64,
    /// Per line output (by name): decisions `sent`, `dropped` (its queue
    /// was full), `failed` (deliveries and connection attempts).
    pub outputs: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Why the run ended: `source ended`, `max frames`, `signal SIGTERM`, ...
    pub ended_by: String,
}

enum Event {
    Signal(i32),
    /// A stage thread ended (normally or with an error).
    StageEnded(&'static str),
}

fn signal_name(s: i32) -> &'static str {
    match s {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Spawns a stage thread that raises `stop` and reports when it ends.
fn stage<T: Send + 'static>(
    name: &'static str,
    stop: &Arc<AtomicBool>,
    events: &Sender<Event>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let (stop, events) = (stop.clone(), events.clone());
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = f();
            if let Err(e) = &r {
                tracing::error!("{name} stage failed: {e}");
                stop.store(true, Ordering::SeqCst);
            }
            let _ = events.send(Event::StageEnded(name));
            r
        })
        .map_err(|e| Error::Runtime(format!("cannot start the {name} thread: {e}")))
}

fn join<T>(name: &str, h: JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| Error::Runtime(format!("the {name} thread panicked")))?
}

/// Why the capture loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CaptureEnd {
    Source,
    MaxFrames,
    Stopped,
    Downstream,
}

struct Capture {
    source: Box<dyn FrameSource>,
    tx: Sender<Frame>,
    /// For a live source: a receiver of the same queue to drop the oldest frame.
    drop_oldest: Option<Receiver<Frame>>,
    stop: Arc<AtomicBool>,
    max_frames: Option<u64>,
    next_id: u64,
    metrics: Arc<Metrics>,
}

impl Capture {
    fn run(mut self) -> Result<CaptureEnd> {
        let mut n = 0u64;
        loop {
            if self.max_frames.is_some_and(|m| n >= m) {
                return Ok(CaptureEnd::MaxFrames);
            }
            let c = match self.source.next(&self.stop)? {
                Next::Frame(c) => c,
                Next::End => return Ok(CaptureEnd::Source),
                Next::Stopped => return Ok(CaptureEnd::Stopped),
            };
            // A source's capture time (a GStreamer buffer's) is at most a
            // minute old: an older one is a clock the source misread.
            let age = c.age.min(std::time::Duration::from_secs(60));
            let now = Instant::now();
            let mut frame = Frame {
                id: self.next_id,
                captured: now.checked_sub(age).unwrap_or(now),
                queued: now,
                captured_unix_us: unix_us().saturating_sub(age.as_micros() as u64),
                name: c.name,
                data: c.data,
            };
            self.next_id += 1;
            n += 1;
            self.metrics.frames_captured.inc();
            match &self.drop_oldest {
                Some(oldest) => loop {
                    match self.tx.try_send(frame) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            if oldest.try_recv().is_ok() {
                                self.metrics.frames_dropped.inc();
                            }
                            frame = back;
                        }
                        Err(TrySendError::Disconnected(_)) => return Ok(CaptureEnd::Downstream),
                    }
                },
                None => {
                    if self.tx.send(frame).is_err() {
                        return Ok(CaptureEnd::Downstream);
                    }
                }
            }
        }
    }
}

fn status_line(m: &Metrics, b: &Bundle) -> String {
    let degraded = m
        .degraded()
        .map(|r| format!("DEGRADED: {r}; "))
        .unwrap_or_default();
    format!(
        "{degraded}{} decisions, {} captured, {} dropped, {} divergent; model {}",
        m.decisions_total(),
        m.frames_captured.get(),
        m.frames_dropped.get(),
        m.evidence_divergent.get() + m.reference_divergent.get(),
        b.predictor.card.short_id()
    )
}

/// Loads the new config and model for a reload; the running ones stay if this fails.
fn reload(current: &Loaded) -> Result<(Loaded, Bundle)> {
    let fresh = if current.origin.as_os_str() == crate::config::DEFAULT_NAME {
        Loaded::builtin()?
    } else {
        Loaded::from_file(&current.origin)?
    };
    let bundle = Bundle::open(&fresh)?;
    let (a, b) = (&current.config, &fresh.config);
    for (what, same) in [
        ("source", a.source == b.source),
        ("output", a.output == b.output),
        ("metrics", a.metrics == b.metrics),
        ("pipeline", a.pipeline == b.pipeline),
        ("outputs", a.outputs == b.outputs && a.station == b.station),
    ] {
        if !same {
            tracing::warn!(
                "reload: changes to `{what}` need a restart; the running {what} settings stay"
            );
        }
    }
    Ok((fresh, bundle))
}

/// Runs the daemon until the source ends, `--max-frames` is reached or a
/// stop signal arrives.
pub fn run(loaded: Loaded, opts: RunOptions) -> Result<Summary> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Signals first, so that a stop during a slow start is not lost.
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    let daemon = Daemon {
        metrics: Arc::new(Metrics::new()),
        notifier: Arc::new(Notifier::from_env()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let bundle = daemon.open_model(&loaded)?;
    let outputs = daemon.open_outputs(&loaded)?;
    let source = daemon.open_source(&loaded)?;
    let http = daemon.serve_metrics(&loaded.config.metrics)?;

    let (events_tx, events) = crossbeam_channel::unbounded::<Event>();
    let signals = SignalForwarder::start(signals, events_tx.clone())?;
    // Everything is open: say so before the stage threads start pinging the watchdog.
    let status = status_line(&daemon.metrics, &bundle);
    daemon.notifier.ready(&format!("serving; {status}"));
    tracing::info!("ready");
    let (pipeline, max_frames) = (&loaded.config.pipeline, opts.max_frames);
    let (stages, reload) =
        daemon.start_stages(pipeline, outputs, source, &bundle, &events_tx, max_frames)?;
    drop(events_tx);

    let mut supervisor = Supervisor::new(&daemon, loaded, bundle, reload);
    supervisor.watch(&events, &stages.capture);
    let end = daemon.drain(stages, signals, http)?;
    Ok(daemon.summary(ended_by(supervisor.ended_by, end)))
}

/// What the steps of a run share.
struct Daemon {
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    /// Raised to stop the source (a signal, a failed stage); the stages then drain.
    stop: Arc<AtomicBool>,
}

/// The decision log and the evidence store, open, and the id of the first
/// frame of this run (after every frame either holds).
struct Outputs {
    log: sink::log::DecisionLog,
    store: sink::evidence_store::EvidenceStore,
    first_id: u64,
    /// The line outputs (MQTT, webhook, Modbus) and their threads.
    publisher: crate::outputs::Publisher,
    line: crate::outputs::Threads,
}

/// The stage threads: capture -> infer -> sinks.
struct Stages {
    capture: JoinHandle<Result<CaptureEnd>>,
    infer: JoinHandle<Result<()>>,
    sinks: JoinHandle<Result<()>>,
    line: crate::outputs::Threads,
}

impl Daemon {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn open_model(&self, loaded: &Loaded) -> Result<Arc<Bundle>> {
        let bundle = Bundle::open(loaded)?;
        self.metrics
            .set_model(bundle.model_id(), bundle.predictor.classes());
        tracing::info!("serving {}", bundle.describe());
        tracing::info!(
            "reference cross-check: every {} frame(s) against {}{}",
            loaded.config.checks.reference_every_nth_frame,
            bundle.reference.describe(),
            if loaded.config.device == "cpu" {
                " (same device as serving, different code path)"
            } else {
                ""
            }
        );
        Ok(Arc::new(bundle))
    }

    fn open_outputs(&self, loaded: &Loaded) -> Result<Outputs> {
        let cfg = &loaded.config;
        let (log_dir, evidence_dir) = loaded.prepare_output_dirs()?;
        let (log, rec) =
            sink::log::DecisionLog::open(&log_dir, &cfg.output.log, self.metrics.clone())?;
        let quota = cfg.evidence.quota_bytes;
        let store =
            sink::evidence_store::EvidenceStore::open(&evidence_dir, quota, self.metrics.clone())?;
        let first_id = [rec.last_frame, store.last_frame()]
            .into_iter()
            .flatten()
            .max()
            .map_or(0, |l| l + 1);
        tracing::info!(
            "decision log {} ({} lines kept{}), evidence in {} ({} bytes of {}); first frame id {first_id}",
            log.path().display(),
            rec.lines,
            if rec.cut_bytes > 0 { format!(", torn tail of {} bytes cut", rec.cut_bytes) } else { String::new() },
            store.dir().display(),
            store.total_bytes(),
            quota
        );
        let (publisher, line) = crate::outputs::Publisher::start(
            &loaded.outputs(),
            &loaded.station(),
            store.dir(),
            &self.metrics,
        )?;
        Ok(Outputs {
            log,
            store,
            first_id,
            publisher,
            line,
        })
    }

    fn open_source(&self, loaded: &Loaded) -> Result<Box<dyn FrameSource>> {
        let source = source::open(loaded, &self.metrics)?;
        tracing::info!(
            "source: {} ({})",
            source.describe(),
            if source.live() {
                "live: drops the oldest frame when the model is busy"
            } else {
                "waits for the model"
            }
        );
        Ok(source)
    }

    fn serve_metrics(&self, cfg: &MetricsConfig) -> Result<Option<http::Server>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let healthy_within = Duration::from_millis(cfg.healthy_within_ms);
        let s = http::serve(&cfg.listen, self.metrics.clone(), healthy_within)?;
        tracing::info!(
            "metrics: listening on http://{}/metrics and /healthz",
            s.addr
        );
        Ok(Some(s))
    }

    /// Starts the sinks, then infer, then capture, each on its queue; with
    /// them, the way to hand the infer stage a reloaded model.
    fn start_stages(
        &self,
        cfg: &PipelineConfig,
        outputs: Outputs,
        source: Box<dyn FrameSource>,
        bundle: &Arc<Bundle>,
        events: &Sender<Event>,
        max_frames: Option<u64>,
    ) -> Result<(Stages, Sender<Arc<Bundle>>)> {
        let (frame_tx, frame_rx) = bounded::<Frame>(cfg.queue_capacity_frames);
        let (dec_tx, dec_rx) = bounded(cfg.sink_queue_capacity_decisions);
        let (reload_tx, reload) = bounded::<Arc<Bundle>>(1);
        let sinks = sink::Sinks {
            rx: dec_rx,
            log: outputs.log,
            store: outputs.store,
            metrics: self.metrics.clone(),
            evidence_failing: None,
        };
        let sinks = stage("sinks", &self.stop, events, move || sinks.run())?;
        let infer = infer::Infer {
            rx: frame_rx.clone(),
            tx: dec_tx,
            reload,
            bundle: bundle.clone(),
            metrics: self.metrics.clone(),
            notifier: self.notifier.clone(),
            repeats: Default::default(),
            publisher: outputs.publisher,
        };
        let infer = stage("infer", &self.stop, events, move || infer.run())?;
        let capture = Capture {
            drop_oldest: source.live().then_some(frame_rx),
            source,
            tx: frame_tx,
            stop: self.stop.clone(),
            max_frames,
            next_id: outputs.first_id,
            metrics: self.metrics.clone(),
        };
        let capture = stage("capture", &self.stop, events, move || capture.run())?;
        let stages = Stages {
            capture,
            infer,
            sinks,
            line: outputs.line,
        };
        Ok((stages, reload_tx))
    }

    /// Stops the source, lets every stage drain and end, then the signal
    /// thread and the metrics server. The first failure downstream is the
    /// cause of the ones upstream, so it is the one returned.
    fn drain(
        &self,
        stages: Stages,
        signals: SignalForwarder,
        http: Option<http::Server>,
    ) -> Result<CaptureEnd> {
        if !self.stopping() {
            self.notifier.stopping();
        }
        self.stop.store(true, Ordering::SeqCst);
        let captured = join("capture", stages.capture);
        let inferred = join("infer", stages.infer);
        // The infer stage has ended and closed the outputs' queues.
        stages
            .line
            .finish(crate::outputs::FINISH_PATIENCE, &self.metrics);
        let sunk = join("sinks", stages.sinks);
        signals.close();
        if let Some(h) = http {
            h.shutdown();
        }
        sunk?;
        inferred?;
        captured
    }

    /// The run's summary, also logged (an error if decisions or evidence were lost).
    fn summary(&self, ended_by: String) -> Summary {
        let m = &self.metrics;
        let summary = Summary {
            frames_captured: m.frames_captured.get(),
            frames_dropped: m.frames_dropped.get(),
            frames_skipped: m.skipped_total(),
            decisions: m.decisions_total(),
            verdicts: m.verdict_counts().into_iter().collect(),
            health_reviews: m.by_health_check().into_iter().collect(),
            log_lines_written: m.log_lines_written.get(),
            log_lines_synced: m.log_lines_synced.get(),
            divergences: m.evidence_divergent.get() + m.reference_divergent.get(),
            evidence_written: m.evidence_written.get(),
            evidence_write_failures: m.evidence_write_failures.get(),
            evidence_bytes: m.evidence_bytes.get(),
            decisions_unlogged: m.decisions_unlogged.get(),
            source_reconnects: m.source_reconnects.get(),
            outputs: m.output_summary(),
            ended_by,
        };
        tracing::info!(
            "stopped ({}): {} decisions, {} frames captured, {} dropped, {} skipped",
            summary.ended_by,
            summary.decisions,
            summary.frames_captured,
            summary.frames_dropped,
            summary.frames_skipped
        );
        if summary.decisions_unlogged > 0 || summary.evidence_write_failures > 0 {
            tracing::error!(
                "{} decisions were not written to the decision log and {} kept frames' evidence was not written (see the errors above)",
                summary.decisions_unlogged,
                summary.evidence_write_failures
            );
        }
        summary
    }
}

/// Why the run ended: what the supervision saw first (a signal, a stage
/// that ended), or when that was the capture stage, why capture ended.
fn ended_by(seen: String, end: CaptureEnd) -> String {
    if !seen.is_empty() && seen != "capture ended" {
        return seen;
    }
    match end {
        CaptureEnd::Source => "source ended",
        CaptureEnd::MaxFrames => "max frames",
        CaptureEnd::Stopped => "stopped",
        CaptureEnd::Downstream => "pipeline ended",
    }
    .into()
}

/// The thread that turns signals into [`Event::Signal`]s for the main loop.
struct SignalForwarder {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl SignalForwarder {
    fn start(
        mut signals: signal_hook::iterator::Signals,
        events: Sender<Event>,
    ) -> Result<SignalForwarder> {
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for s in signals.forever() {
                    if events.send(Event::Signal(s)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Runtime(format!("cannot start the signal thread: {e}")))?;
        Ok(SignalForwarder { handle, thread })
    }

    fn close(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// The main thread while the stages run: stop signals, reloads (SIGHUP),
/// and the status told to systemd.
struct Supervisor<'a> {
    daemon: &'a Daemon,
    loaded: Loaded,
    bundle: Arc<Bundle>,
    /// To the infer thread, which takes a new model between two frames.
    reload: Sender<Arc<Bundle>>,
    /// Why the run ends, once that is known (empty before).
    ended_by: String,
    last_drops: u64,
    last_status: Instant,
    last_degraded: Option<bool>,
}

impl<'a> Supervisor<'a> {
    fn new(
        daemon: &'a Daemon,
        loaded: Loaded,
        bundle: Arc<Bundle>,
        reload: Sender<Arc<Bundle>>,
    ) -> Self {
        Supervisor {
            daemon,
            loaded,
            bundle,
            reload,
            ended_by: String::new(),
            last_drops: 0,
            last_status: Instant::now(),
            last_degraded: None,
        }
    }

    /// Handles events until the capture stage has ended (or every sender is gone).
    fn watch(&mut self, events: &Receiver<Event>, capture: &JoinHandle<Result<CaptureEnd>>) {
        use signal_hook::consts::SIGHUP;
        loop {
            match events.recv_timeout(Duration::from_secs(1)) {
                Ok(Event::Signal(s)) if s == SIGHUP => self.reload(),
                Ok(Event::Signal(s)) => self.stop_on(s),
                Ok(Event::StageEnded(name)) => {
                    if self.stage_ended(name) {
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if self.daemon.stopping() && capture.is_finished() {
                break;
            }
            self.tell_status();
        }
    }

    /// SIGHUP: a new config and model, or the running ones if they fail.
    fn reload(&mut self) {
        let (metrics, notifier) = (&self.daemon.metrics, &self.daemon.notifier);
        notifier.reloading();
        tracing::info!("SIGHUP: reloading {}", self.loaded.origin.display());
        match reload(&self.loaded) {
            Ok((fresh, b)) => {
                let b = Arc::new(b);
                // The infer thread takes it between two frames.
                if self.reload.send(b.clone()).is_ok() {
                    tracing::info!("reload accepted: {}", b.describe());
                    metrics.reloads_ok.inc();
                    self.loaded = fresh;
                    self.bundle = b;
                }
            }
            Err(e) => {
                metrics.reloads_failed.inc();
                tracing::error!("reload failed, still serving the previous config and model: {e}");
            }
        }
        notifier.ready(&status_line(metrics, &self.bundle));
    }

    /// SIGTERM, SIGINT: stop the source and drain; a second one changes nothing.
    fn stop_on(&mut self, s: i32) {
        if !self.ended_by.is_empty() {
            tracing::info!("{}: already stopping", signal_name(s));
            return;
        }
        self.ended_by = format!("signal {}", signal_name(s));
        tracing::info!(
            "{}: stopping the source, draining the pipeline",
            signal_name(s)
        );
        self.daemon.notifier.stopping();
        self.daemon.stop.store(true, Ordering::SeqCst);
    }

    /// A stage thread ended; true when supervision is over (the capture
    /// stage ended, or the run is stopping).
    fn stage_ended(&mut self, name: &str) -> bool {
        if self.ended_by.is_empty() {
            self.ended_by = format!("{name} ended");
        }
        name == "capture" || self.daemon.stopping()
    }

    /// Every 10 s, and at once when the health changes: the status to
    /// systemd, and a warning if frames were dropped meanwhile.
    fn tell_status(&mut self) {
        let metrics = &self.daemon.metrics;
        let degraded = metrics.degraded().is_some();
        if self.last_status.elapsed() < Duration::from_secs(10)
            && self.last_degraded == Some(degraded)
        {
            return;
        }
        self.last_degraded = Some(degraded);
        self.last_status = Instant::now();
        self.daemon
            .notifier
            .status(&status_line(metrics, &self.bundle));
        let drops = metrics.frames_dropped.get();
        if drops > self.last_drops {
            tracing::warn!(
                "{} frames dropped in the last 10 s: the model does not keep up with the source",
                drops - self.last_drops
            );
            self.last_drops = drops;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frame::{Captured, FrameData};

    /// A live source with frames always ready (a camera faster than the model).
    struct Burst;

    impl FrameSource for Burst {
        fn describe(&self) -> String {
            "burst".into()
        }
        fn live(&self) -> bool {
            true
        }
        fn next(&mut self, _: &AtomicBool) -> Result<Next> {
            Ok(Next::Frame(Captured {
                name: None,
                data: FrameData::Grey {
                    width: 1,
                    height: 1,
                    bytes: vec![0],
                },
                age: std::time::Duration::ZERO,
            }))
        }
    }

    fn capture(live: bool, cap: usize, frames: u64) -> (CaptureEnd, Vec<u64>, Arc<Metrics>) {
        let (tx, rx) = bounded(cap);
        let metrics = Arc::new(Metrics::new());
        let c = Capture {
            source: Box::new(Burst),
            tx,
            drop_oldest: live.then(|| rx.clone()),
            stop: Arc::new(AtomicBool::new(false)),
            max_frames: Some(frames),
            next_id: 100,
            metrics: metrics.clone(),
        };
        let end = if live {
            c.run().unwrap()
        } else {
            // A waiting source needs a consumer.
            let h = std::thread::spawn(move || c.run().unwrap());
            let got: Vec<u64> = rx.iter().map(|f| f.id).collect();
            return (h.join().unwrap(), got, metrics);
        };
        let got = rx.try_iter().map(|f| f.id).collect();
        (end, got, metrics)
    }

    #[test]
    fn a_live_source_keeps_the_latest_frames_and_counts_drops() {
        let (end, kept, m) = capture(true, 4, 50);
        assert_eq!(end, CaptureEnd::MaxFrames);
        assert_eq!(kept, vec![146, 147, 148, 149]);
        assert_eq!(m.frames_captured.get(), 50);
        assert_eq!(m.frames_dropped.get(), 46);
    }

    /// Any config that `check-config` accepts starts `run` without a panic:
    /// every number the config holds, over its whole range and beyond
    /// (regression: `source.synthetic.fps: 1e-300` passed the check and
    /// panicked in `run`).
    mod config_property {
        use super::super::*;
        use proptest::prelude::*;
        use std::path::Path;

        /// A YAML scalar for `v` (YAML spells the non-finite floats its own way).
        fn yaml_f64(v: f64) -> String {
            if v.is_nan() {
                ".nan".into()
            } else if v.is_infinite() {
                if v > 0.0 { ".inf" } else { "-.inf" }.into()
            } else {
                format!("{v:e}")
            }
        }

        /// Anything a u64 field may be given: edges and arbitrary values.
        fn wild_int() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(u64::MAX),
                Just(1 << 50),
                Just((1 << 50) + 1),
                any::<u64>(),
            ]
        }

        /// Anything an f64 field may be given.
        fn wild_float() -> impl Strategy<Value = f64> {
            prop_oneof![
                Just(0.0f64),
                Just(1e-300),
                Just(5e-20),
                Just(1.0 / 3600.0),
                Just(1e300),
                Just(-1.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                any::<f64>(),
            ]
        }

        /// A field's usual values (so that most configs pass as a whole),
        /// now and then a wild one.
        fn int(usual: std::ops::RangeInclusive<u64>) -> BoxedStrategy<u64> {
            let (lo, hi) = (*usual.start(), *usual.end());
            prop_oneof![12 => usual, 2 => prop_oneof![Just(lo), Just(hi)], 1 => wild_int()].boxed()
        }

        fn float(usual: std::ops::Range<f64>) -> BoxedStrategy<f64> {
            prop_oneof![12 => usual, 1 => wild_float()].boxed()
        }

        fn config(frames: &Path, out: &Path) -> impl Strategy<Value = String> {
            let (frames, out) = (frames.display().to_string(), out.display().to_string());
            let source = prop_oneof![
                (float(0.0..200.0), any::<u64>(), int(8..=64)).prop_map(
                    |(fps, seed, size)| format!(
                        "  synthetic:\n    fps: {}\n    seed: {seed}\n    size_px: {size}\n",
                        yaml_f64(fps)
                    )
                ),
                (float(0.0..200.0), any::<bool>()).prop_map(move |(fps, l)| format!(
                    "  replay:\n    dir: {frames}\n    loop: {l}\n    fps: {}\n",
                    yaml_f64(fps)
                )),
            ];
            let side = || int(0..=100).prop_map(|v| v.min(u32::MAX as u64));
            let roi = prop_oneof![
                3 => Just("null".to_string()),
                1 => (side(), side(), side(), side()).prop_map(|(x, y, w, h)| format!(
                    "{{x_px: {x}, y_px: {y}, width_px: {w}, height_px: {h}}}"
                )),
            ];
            let counts = (
                int(1..=1024),
                int(1..=65_536),
                int(4096..=1 << 50),
                int(0..=1_000_000),
                int(0..=3_600_000),
                int(0..=1 << 50),
            );
            let checks = (
                int(0..=1000),
                int(0..=1000),
                int(0..=1000),
                float(0.0..1.0),
                float(-1.0..1.0),
                any::<bool>(),
                int(1..=3_600_000),
            );
            (source, roi, counts, checks).prop_map(
                move |(source, roi, (q, sq, rot, fl, fms, quota), (nth, en, rn, tol, margin, all, hw))| {
                    format!(
                        "model: model\nsource:\n{source}preprocess:\n  roi: {roi}\npipeline:\n  queue_capacity_frames: {q}\n  sink_queue_capacity_decisions: {sq}\noutput:\n  log_dir: {out}/log\n  evidence_dir: {out}/evidence\n  log:\n    rotate_bytes: {rot}\n    fsync_every_lines: {fl}\n    fsync_every_ms: {fms}\nevidence:\n  all_frames: {all}\n  every_nth_frame: {nth}\n  quota_bytes: {quota}\n  margin_below: {}\nchecks:\n  evidence_every_nth_frame: {en}\n  reference_every_nth_frame: {rn}\n  reference_tolerance: {}\nmetrics:\n  listen: 127.0.0.1:0\n  healthy_within_ms: {hw}\n",
                        yaml_f64(margin),
                        yaml_f64(tol)
                    )
                },
            )
        }

        #[test]
        fn a_config_check_config_accepts_runs_without_a_panic() {
            let t = tempfile::tempdir().unwrap();
            crate::pipeline::model::test_bundle(&t.path().join("model"));
            let frames = t.path().join("frames");
            std::fs::create_dir(&frames).unwrap();
            image::GrayImage::from_pixel(8, 8, image::Luma([90]))
                .save(frames.join("a.png"))
                .unwrap();
            let out = t.path().join("out");
            let file = t.path().join("daemon.yaml");
            let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                cases: 48,
                failure_persistence: None,
                ..ProptestConfig::default()
            });
            runner
                .run(&config(&frames, &out), |text| {
                    std::fs::write(&file, &text).unwrap();
                    let check = std::panic::catch_unwind(|| {
                        crate::cli::check_config::run(crate::cli::check_config::Args {
                            files: vec![file.clone()],
                            list_controls: false,
                        })
                    });
                    prop_assert!(check.is_ok(), "check-config panicked on\n{text}");
                    if check.unwrap().is_err() {
                        refused.set(refused.get() + 1);
                        return Ok(());
                    }
                    accepted.set(accepted.get() + 1);
                    let ran = std::panic::catch_unwind(|| {
                        let loaded = Loaded::from_file(&file)?;
                        run(
                            loaded,
                            RunOptions {
                                max_frames: Some(1),
                            },
                        )
                    });
                    prop_assert!(
                        ran.is_ok(),
                        "run panicked on a config check-config accepts:\n{text}"
                    );
                    let ran = ran.unwrap();
                    prop_assert!(ran.is_ok(), "{:?} on\n{text}", ran.err());
                    Ok(())
                })
                .unwrap();
            // Both sides of the check were exercised.
            let (accepted, refused) = (accepted.get(), refused.get());
            assert!(
                accepted >= 5 && refused >= 5,
                "{accepted} accepted, {refused} refused"
            );
        }
    }

    #[test]
    fn a_waiting_source_drops_nothing() {
        let (end, got, m) = capture(false, 2, 30);
        assert_eq!(end, CaptureEnd::MaxFrames);
        assert_eq!(got, (100..130).collect::<Vec<_>>());
        assert_eq!(m.frames_dropped.get(), 0);
    }
}
