//! The inference stage: prepare each frame, run the network, decide. It is
//! also where the watchdog is fed: a hung model stops the pings and systemd
//! restarts the daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::frame::Frame;
use super::metrics::Metrics;
use super::model::Bundle;
use super::notify::Notifier;
use crate::data::image_io::Planar;
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::evidence::DeviceMaps;
use crate::model::Input;
use crate::outputs::{Payload, Publisher, SCHEMA};
use crate::preprocess::{self, FrameData};
use crate::verdict::{judge, FrameStats, Judged, Repeats};

/// Per-stage latencies of one decision, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Latency {
    /// Waiting in the queue for the model.
    pub queue_ms: f64,
    /// Decode, crop, resize, scaling.
    pub preprocess_ms: f64,
    /// Network forward and decision.
    pub infer_ms: f64,
    /// From capture to the decision: the sum of the three, plus hand-overs,
    /// plus, for a source that dates its frames (GStreamer), the time from
    /// the capture to the hand-over.
    pub capture_to_decision_ms: f64,
}

/// A decision on its way to the sinks.
pub struct Decided {
    pub frame: u64,
    pub captured_unix_us: u64,
    pub name: Option<String>,
    /// The model (and settings) that decided.
    pub bundle: Arc<Bundle>,
    pub decision: Decision,
    /// The verdict on the decision and the frame's health.
    pub judged: Judged,
    /// The input as the model saw it (8-bit).
    pub planar: Planar,
    /// Scaled input and class weight maps where the network left them (the
    /// evidence is built there).
    pub maps: DeviceMaps,
    /// The frame as captured: the evidence's `frame.png`, and check (b)
    /// prepares it again on the CPU reference path.
    pub source: FrameData,
    pub latency: Latency,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub struct Infer {
    pub rx: Receiver<Frame>,
    pub tx: Sender<Decided>,
    pub reload: Receiver<Arc<Bundle>>,
    pub bundle: Arc<Bundle>,
    pub metrics: Arc<Metrics>,
    pub notifier: Arc<Notifier>,
    /// Identical frames in a row, for the frozen-source check.
    pub repeats: Repeats,
    /// The line outputs, told as soon as a verdict is known.
    pub publisher: Publisher,
}

impl Infer {
    /// Until the frame queue is closed and empty.
    pub fn run(mut self) -> Result<()> {
        let tick = self
            .notifier
            .watchdog_interval()
            .map_or(Duration::from_millis(500), |w| {
                (w / 4).min(Duration::from_millis(500))
            });
        loop {
            self.metrics.tick();
            self.notifier.watchdog();
            if let Ok(b) = self.reload.try_recv() {
                tracing::info!("now serving {}", b.describe());
                self.metrics.set_model(b.model_id(), b.predictor.classes());
                self.bundle = b;
            }
            let frame = match self.rx.recv_timeout(tick) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let Some(d) = self.decide(frame)? else {
                continue;
            };
            if self.tx.send(d).is_err() {
                return Err(Error::Runtime(
                    "the sink stage stopped; decisions can no longer be logged".into(),
                ));
            }
        }
    }

    fn decide(&mut self, frame: Frame) -> Result<Option<Decided>> {
        let t0 = Instant::now();
        let queue = t0.duration_since(frame.queued);
        let b = self.bundle.clone();
        let prepared = match preprocess::prepare(&frame.data, &b.prep, b.predictor.device()) {
            Ok(p) => p,
            Err(skip) => {
                self.metrics.skip(skip.reason());
                tracing::warn!(
                    frame = frame.id,
                    source = frame.name.as_deref().unwrap_or(""),
                    "frame skipped ({}): {skip}",
                    skip.reason()
                );
                return Ok(None);
            }
        };
        let t1 = Instant::now();
        let out = b.predictor.forward(Input::Scaled(&prepared.scaled))?;
        let decision = b
            .predictor
            .decide(&out.scores)?
            .pop()
            .ok_or_else(|| Error::Runtime("the network returned no scores".into()))?;
        let maps = DeviceMaps::from_batch(&out.scaled, &out.cwm, 0)?;
        let stats = FrameStats::of(&prepared.planar.data);
        let run = self.repeats.see(stats.hash);
        let judged = judge(&b.decision, &stats, run, &decision);
        self.publish(&frame, &b, &decision, &judged);
        let t2 = Instant::now();
        let latency = Latency {
            queue_ms: ms(queue),
            preprocess_ms: ms(t1 - t0),
            infer_ms: ms(t2 - t1),
            capture_to_decision_ms: ms(t2.duration_since(frame.captured)),
        };
        self.metrics.latency_queue.observe(queue);
        self.metrics.latency_preprocess.observe(t1 - t0);
        self.metrics.latency_infer.observe(t2 - t1);
        self.metrics
            .latency_capture_to_decision
            .observe(t2.duration_since(frame.captured));
        Ok(Some(Decided {
            frame: frame.id,
            captured_unix_us: frame.captured_unix_us,
            name: frame.name,
            bundle: b,
            decision,
            judged,
            planar: prepared.planar,
            maps,
            source: frame.data,
            latency,
        }))
    }
}

impl Infer {
    /// Hands the decision to the outputs that take its verdict.
    fn publish(&self, frame: &Frame, b: &Bundle, decision: &Decision, judged: &Judged) {
        let p = &self.publisher;
        if !p.wants(judged.verdict) {
            return;
        }
        let kept = b
            .evidence
            .selects(&decision.class, decision.margin, frame.id);
        p.publish(&Payload {
            schema: SCHEMA.into(),
            station: p.station().into(),
            frame: frame.id,
            captured_unix_us: frame.captured_unix_us,
            decided_unix_us: super::frame::unix_us(),
            source: frame.name.clone(),
            verdict: judged.verdict,
            reason: judged.reason.clone(),
            class: decision.class.clone(),
            class_index: decision.class_index,
            classes: b.predictor.classes().to_vec(),
            scores: decision.scores.clone(),
            probabilities: decision.probabilities.clone(),
            margin: decision.margin,
            model: b.model_id().into(),
            evidence: kept.then(|| {
                p.evidence_dir()
                    .join(super::sink::evidence_store::folder_name(frame.id))
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PixelFormat;
    use crate::pipeline::frame::FrameData;

    fn mjpeg_frame(id: u64, bytes: Vec<u8>) -> Frame {
        Frame {
            id,
            captured: Instant::now(),
            queued: Instant::now(),
            captured_unix_us: 0,
            name: None,
            data: FrameData::Camera {
                format: PixelFormat::Mjpeg,
                width: 8,
                height: 8,
                bytes_per_line: 0,
                bytes,
            },
        }
    }

    #[test]
    fn a_corrupt_mjpeg_frame_is_skipped_and_counted_and_the_stream_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let bundle = Arc::new(crate::pipeline::model::test_bundle(t.path()));
        let img = image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
        });
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let good = jpeg.into_inner();
        let mut torn = good.clone();
        torn.truncate(40);
        let (ftx, frx) = crossbeam_channel::unbounded();
        let (dtx, drx) = crossbeam_channel::unbounded();
        let (_rtx, rrx) = crossbeam_channel::bounded(1);
        for (id, bytes) in [(0, good.clone()), (1, torn), (2, vec![0u8; 64]), (3, good)] {
            ftx.send(mjpeg_frame(id, bytes)).unwrap();
        }
        drop(ftx);
        let metrics = Arc::new(Metrics::new());
        Infer {
            rx: frx,
            tx: dtx,
            reload: rrx,
            bundle,
            metrics: metrics.clone(),
            notifier: Arc::new(Notifier::disabled()),
            repeats: Repeats::default(),
            publisher: Publisher::default(),
        }
        .run()
        .unwrap();
        let ids: Vec<u64> = drx.try_iter().map(|d| d.frame).collect();
        assert_eq!(ids, vec![0, 3]);
        assert_eq!(metrics.skipped("corrupt"), 2);
    }
}
