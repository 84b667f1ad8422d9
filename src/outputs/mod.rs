//! Decisions to the line: MQTT, an HTTP webhook, Modbus TCP.
//!
//! ```text
//! infer thread --try_send--> [queue per output] --> output thread --> broker / server / PLC
//! ```
//!
//! The inference stage hands every decision to [`Publisher::publish`] as
//! soon as its verdict is known, before the evidence is encoded and before
//! the decision log's fsync: the reject gate hears first. Each output has
//! its own thread and bounded queue; when the queue is full (a slow or dead
//! receiver) the decision is dropped *for that output* and counted
//! (`gcm_output_dropped_total`), so no output can stall inference or another
//! output. Failed deliveries are counted (`gcm_output_failures_total`) and
//! logged (the first of a run of failures, and the recovery). The decision
//! log stays the record: an output is a notification, and every message
//! carries the frame id that finds its log line.
//!
//! The message is one JSON object, [`Payload`], schema
//! `gcm-inspect/decision/1` (documented in `docs/outputs.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::metrics::Metrics;
use crate::verdict::Verdict;

pub mod config;
mod modbus;
mod mqtt;
mod webhook;

pub use config::OutputSpec;

/// The payload's schema name and major version.
pub const SCHEMA: &str = "gcm-inspect/decision/1";

/// What every output receives for a decision (MQTT and webhook as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// [`SCHEMA`]: a reader refuses another major version.
    pub schema: String,
    /// The station (the config's `station`, default the host name).
    pub station: String,
    /// Frame id: the same as the decision log line's `frame`.
    pub frame: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub captured_unix_us: u64,
    /// When the decision was made, microseconds since the Unix epoch.
    pub decided_unix_us: u64,
    /// The source's name for the frame (a replayed file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `ok`, `ng` or `review`: what the line does with the part.
    pub verdict: Verdict,
    /// Why, e.g. `class crack p=0.97` or `frame saturated: ...`.
    pub reason: String,
    /// The decided class (argmax of the scores) and its index.
    pub class: String,
    pub class_index: usize,
    /// The model's classes, in the order of `scores` and `probabilities`.
    pub classes: Vec<String>,
    pub scores: Vec<f32>,
    pub probabilities: Vec<f32>,
    /// Decided score minus the runner-up's.
    pub margin: f32,
    /// The model id (sha256 of its weights).
    pub model: String,
    /// The folder this frame's evidence is written to, when the evidence
    /// policy keeps it (written just after the message is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<PathBuf>,
}

/// A decision on its way to the outputs: the JSON once, and what the
/// outputs that do not send JSON need.
#[derive(Debug)]
pub struct Message {
    pub json: Vec<u8>,
    pub verdict: Verdict,
    pub class: String,
    pub class_index: usize,
    pub frame: u64,
}

impl Message {
    pub fn new(p: &Payload) -> Message {
        Message {
            json: serde_json::to_vec(p).expect("a payload serialises"),
            verdict: p.verdict,
            class: p.class.clone(),
            class_index: p.class_index,
            frame: p.frame,
        }
    }
}

/// One kind of receiver. `deliver` may block (it runs on the output's own
/// thread) and says whether the message has arrived (`true`) or is on its
/// way and counted later (MQTT: when the broker has it); `finish` flushes
/// what is in flight before the daemon exits.
trait Deliver: Send {
    fn deliver(&mut self, m: &Message) -> std::result::Result<bool, String>;
    fn finish(&mut self, _patience: Duration) {}
}

/// An output as the inference stage sees it: a name, a filter and a queue.
struct Line {
    name: String,
    verdicts: Vec<Verdict>,
    tx: Sender<Arc<Message>>,
}

/// Hands decisions to the output threads; owned by the inference stage.
/// Dropping it closes the queues: the threads drain them and end.
#[derive(Default)]
pub struct Publisher {
    lines: Vec<Line>,
    metrics: Arc<Metrics>,
    station: String,
    evidence_dir: PathBuf,
}

/// The output threads, joined at the end of a run (with a receiver of
/// each queue, to count what is left undelivered).
#[derive(Default)]
pub struct Threads(Vec<(String, JoinHandle<()>, Receiver<Arc<Message>>)>);

/// How long the end of a run waits for the outputs to deliver what they hold.
pub const FINISH_PATIENCE: Duration = Duration::from_secs(3);

impl Publisher {
    /// Starts a thread per output. `station` fills topic templates and
    /// payloads; `evidence_dir` is where payloads say evidence is kept.
    pub fn start(
        specs: &[OutputSpec],
        station: &str,
        evidence_dir: &std::path::Path,
        metrics: &Arc<Metrics>,
    ) -> Result<(Publisher, Threads)> {
        let mut p = Publisher {
            lines: Vec::new(),
            metrics: metrics.clone(),
            station: station.to_string(),
            evidence_dir: evidence_dir.to_path_buf(),
        };
        let mut threads = Threads::default();
        for (i, spec) in specs.iter().enumerate() {
            let name = output_name(specs, i);
            let sink: Box<dyn Deliver> = match (&spec.mqtt, &spec.webhook, &spec.modbus) {
                (Some(c), _, _) => Box::new(mqtt::Mqtt::connect(c, &name, station, metrics)?),
                (_, Some(c), _) => Box::new(webhook::Webhook::new(c, &name)?),
                (_, _, Some(c)) => Box::new(modbus::Modbus::new(c, &name)?),
                _ => return Err(Error::Runtime(format!("output {name}: no kind"))),
            };
            let (tx, rx) = bounded(spec.queue_capacity);
            metrics.output_declare(&name);
            let worker = Worker {
                name: name.clone(),
                rx: rx.clone(),
                sink,
                metrics: metrics.clone(),
                failing: FailureRun::default(),
            };
            let h = std::thread::Builder::new()
                .name(format!("output-{name}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::Runtime(format!("cannot start output {name}: {e}")))?;
            tracing::info!("output {name}: {}", describe(spec, station));
            threads.0.push((name.clone(), h, rx));
            p.lines.push(Line {
                name,
                verdicts: spec.verdicts.clone(),
                tx,
            });
        }
        Ok((p, threads))
    }

    pub fn station(&self) -> &str {
        &self.station
    }

    pub fn evidence_dir(&self) -> &std::path::Path {
        &self.evidence_dir
    }

    /// True when some output takes this verdict (the payload is worth building).
    pub fn wants(&self, v: Verdict) -> bool {
        self.lines.iter().any(|l| l.verdicts.contains(&v))
    }

    /// Queues the decision for every output that takes its verdict; never waits.
    pub fn publish(&self, p: &Payload) {
        let mut msg = None;
        for l in self
            .lines
            .iter()
            .filter(|l| l.verdicts.contains(&p.verdict))
        {
            let m = msg.get_or_insert_with(|| Arc::new(Message::new(p)));
            match l.tx.try_send(m.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let n = self.metrics.output_dropped(&l.name);
                    if n.is_power_of_two() {
                        tracing::warn!(
                            output = l.name,
                            frame = p.frame,
                            "output queue full: decision not sent ({n} dropped so far)"
                        );
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.metrics.output_dropped(&l.name);
                }
            }
        }
    }
}

impl Threads {
    /// Waits up to `patience` for every output to deliver its queue, then
    /// leaves the rest, counted as dropped (their decisions are in the log).
    pub fn finish(self, patience: Duration, metrics: &Metrics) {
        let deadline = Instant::now() + patience;
        for (name, h, rx) in self.0 {
            if wait_until(deadline, || h.is_finished()) {
                let _ = h.join();
                continue;
            }
            // Taken from the queue here, so the thread cannot also send them.
            let left = rx.try_iter().count();
            for _ in 0..left {
                metrics.output_dropped(&name);
            }
            tracing::warn!(
                output = name,
                "output still delivering after {patience:?}: {left} queued decisions not sent"
            );
        }
    }
}

/// The thread of one output.
struct Worker {
    name: String,
    rx: Receiver<Arc<Message>>,
    sink: Box<dyn Deliver>,
    metrics: Arc<Metrics>,
    failing: FailureRun,
}

impl Worker {
    fn run(mut self) {
        let rx = self.rx.clone();
        for m in rx.iter() {
            match self.sink.deliver(&m) {
                Ok(arrived) => self.delivered(arrived),
                Err(e) => self.failed(m.frame, &e),
            }
        }
        // The queue is closed and empty: the run is ending. What the sink
        // still holds gets half the patience the end of the run gives the
        // outputs (the other half is for draining queues).
        self.sink.finish(FINISH_PATIENCE / 2);
    }

    fn delivered(&mut self, arrived: bool) {
        if arrived {
            self.metrics.output_sent(&self.name);
        }
        if let Some((n, took)) = self.failing.recover() {
            tracing::info!(
                output = self.name,
                "output delivering again after {n} failures in {:.1} s",
                took.as_secs_f64()
            );
        }
    }

    fn failed(&mut self, frame: u64, e: &str) {
        self.metrics.output_failed(&self.name);
        if self.failing.fail() {
            tracing::warn!(output = self.name, frame, "output failed: {e}");
        }
    }
}

/// The name of `specs[i]`: its own, or its kind (numbered when the kind repeats).
pub fn output_name(specs: &[OutputSpec], i: usize) -> String {
    if let Some(n) = &specs[i].name {
        return n.clone();
    }
    let kind = specs[i].kind();
    let same: Vec<usize> = (0..specs.len())
        .filter(|&j| specs[j].name.is_none() && specs[j].kind() == kind)
        .collect();
    match same.iter().position(|&j| j == i) {
        Some(k) if same.len() > 1 => format!("{kind}-{}", k + 1),
        _ => kind.to_string(),
    }
}

/// One line for logs and `check-config`: kind, target, filter.
pub fn describe(spec: &OutputSpec, station: &str) -> String {
    let target = match (&spec.mqtt, &spec.webhook, &spec.modbus) {
        (Some(m), _, _) => format!(
            "MQTT {} topic {} qos {}",
            m.url,
            mqtt::topic_example(&m.topic, station),
            m.qos
        ),
        (_, Some(w), _) => format!("POST {} ({} attempts)", w.url, w.attempts),
        (_, _, Some(m)) => format!("Modbus TCP {} unit {}", m.address, m.unit_id),
        _ => String::new(),
    };
    let verdicts: Vec<&str> = spec.verdicts.iter().map(|v| v.name()).collect();
    format!("{target}; verdicts {}", verdicts.join(", "))
}

/// A PEM file, read whole; one that cannot be read is a configuration error naming it.
pub fn pem(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::config(path, format!("cannot read the certificate file: {e}")))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::config(path, "not a PEM file (no -----BEGIN line)"));
    }
    Ok(bytes)
}

/// Reads the first line of a secret file (a password, a token); a file
/// that cannot be read or is empty is a configuration error naming it.
fn secret(path: &std::path::Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(path, format!("cannot read the {what} file: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(Error::config(path, format!("the {what} file is empty")));
    }
    Ok(line)
}

/// Reads the secret files an output names (what `check-config` checks
/// before a start would).
pub fn check_secrets(spec: &OutputSpec) -> Result<()> {
    if let Some(m) = &spec.mqtt {
        if let Some(f) = &m.password_file {
            secret(f, "MQTT password")?;
        }
        let pems = [&m.ca_file, &m.client_cert_file, &m.client_key_file];
        for f in pems.into_iter().flatten() {
            pem(f)?;
        }
    }
    if let Some(f) = spec
        .webhook
        .as_ref()
        .and_then(|w| w.bearer_token_file.as_ref())
    {
        secret(f, "webhook bearer token")?;
    }
    Ok(())
}

/// A run of failures of one output: the first is logged, then the
/// recovery with the count, not every one in between.
#[derive(Debug, Default)]
pub struct FailureRun(Option<(Instant, u64)>);

impl FailureRun {
    /// Counts a failure; true for the first of a run (the one to log).
    pub fn fail(&mut self) -> bool {
        match &mut self.0 {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.0 = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// Ends the run, if there was one: its failures and how long it lasted.
    pub fn recover(&mut self) -> Option<(u64, Duration)> {
        self.0.take().map(|(since, n)| (n, since.elapsed()))
    }
}

/// Polls `done` every 10 ms until it holds or `deadline` passes; says which.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits that start at 100 ms and double up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100).min(max),
            max,
        }
    }

    /// The next wait.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> OutputSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn outputs_are_named_by_kind_and_numbered_when_a_kind_repeats() {
        let specs = [
            spec("mqtt: {url: 'mqtt://127.0.0.1:1883'}"),
            spec("webhook: {url: 'http://127.0.0.1/x'}"),
            spec("mqtt: {url: 'mqtt://127.0.0.1:1884'}"),
            spec("{name: gate, modbus: {address: '127.0.0.1:502', coils: {ng: 1}}}"),
        ];
        let names: Vec<String> = (0..4).map(|i| output_name(&specs, i)).collect();
        assert_eq!(names, ["mqtt-1", "webhook", "mqtt-2", "gate"]);
    }

    #[test]
    fn a_failure_run_reports_its_first_failure_and_its_count_on_recovery() {
        let mut run = FailureRun::default();
        assert_eq!(run.recover(), None);
        assert_eq!([run.fail(), run.fail(), run.fail()], [true, false, false]);
        assert_eq!(run.recover().map(|(n, _)| n), Some(3));
        assert!(run.fail(), "a new run starts after a recovery");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[test]
    fn a_full_queue_drops_for_that_output_only_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let (slow_tx, _slow_rx) = bounded(2);
        let (fast_tx, fast_rx) = bounded(100);
        let p = Publisher {
            lines: vec![
                Line {
                    name: "slow".into(),
                    verdicts: Verdict::ALL.to_vec(),
                    tx: slow_tx,
                },
                Line {
                    name: "ng-only".into(),
                    verdicts: vec![Verdict::Ng],
                    tx: fast_tx,
                },
            ],
            metrics: metrics.clone(),
            ..Publisher::default()
        };
        for frame in 0..10 {
            let verdict = if frame % 2 == 0 {
                Verdict::Ng
            } else {
                Verdict::Ok
            };
            p.publish(&payload(frame, verdict));
        }
        assert_eq!(metrics.output_counts("slow")[1], 8);
        assert_eq!(metrics.output_counts("ng-only")[1], 0);
        let got: Vec<u64> = fast_rx.try_iter().map(|m| m.frame).collect();
        assert_eq!(got, [0, 2, 4, 6, 8]);
        assert!(p.wants(Verdict::Review));
    }

    pub fn payload(frame: u64, verdict: Verdict) -> Payload {
        Payload {
            schema: SCHEMA.into(),
            station: "s1".into(),
            frame,
            captured_unix_us: 1,
            decided_unix_us: 2,
            source: None,
            verdict,
            reason: "test".into(),
            class: "crack".into(),
            class_index: 0,
            classes: vec!["crack".into(), "ok".into()],
            scores: vec![0.5, 0.1],
            probabilities: vec![0.6, 0.4],
            margin: 0.4,
            model: "m".into(),
            evidence: None,
        }
    }
}
