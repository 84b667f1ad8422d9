//! The daemon's counters, gauges and latency histograms, rendered in the
//! Prometheus text format for `/metrics`.
//!
//! Labelled series that alerts take a `rate()` of exist from the start at 0:
//! every verdict, skip reason and health check always, and every class of
//! the model as soon as it is loaded ([`Metrics::set_model`]), so a rule on
//! a class that has not yet been decided sees a series, not an absence.
//! The `process_*` families are the conventional ones of Prometheus' client
//! libraries, read from `/proc/self` when scraped (absent where there is no
//! `/proc`); `gcm_build_info` names the build.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::preprocess::Skip;
use crate::verdict::{Health, Judged, Verdict};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by the value of one label (`reason`, `class`), each made at its
/// first count.
#[derive(Debug, Default)]
pub struct LabelledCounter(Mutex<BTreeMap<String, u64>>);

impl LabelledCounter {
    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.0.lock().expect("metrics lock")
    }
    pub fn inc(&self, label: &str) {
        self.inc_get(label);
    }
    /// Counts one and returns the new count.
    pub fn inc_get(&self, label: &str) -> u64 {
        let mut counts = self.counts();
        let n = counts.entry(label.to_string()).or_default();
        *n += 1;
        *n
    }
    /// Makes the label's sample exist (at 0), so that it is shown before its first count.
    pub fn declare(&self, label: &str) {
        self.counts().entry(label.to_string()).or_default();
    }
    pub fn get(&self, label: &str) -> u64 {
        self.counts().get(label).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }
    /// Every label counted so far with its count, in label order.
    fn samples(&self) -> Vec<(String, u64)> {
        self.counts().iter().map(|(l, n)| (l.clone(), *n)).collect()
    }
}

/// Bucket upper bounds in seconds: 0.5 ms to 10 s.
const LATENCY_BOUNDS_S: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.033, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
    10.0,
];

#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: LATENCY_BOUNDS_S.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS_S.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The samples: cumulative buckets, sum and count.
    fn render(&self, out: &mut String, name: &str) {
        let mut cum = 0;
        for (b, c) in LATENCY_BOUNDS_S.iter().zip(&self.buckets) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {n}");
    }
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    pub start: Instant,
    /// `start` as Unix time, for `process_start_time_seconds`.
    start_unix_s: f64,
    pub frames_captured: Counter,
    pub frames_dropped: Counter,
    skipped: LabelledCounter,
    pub source_errors: Counter,
    pub source_reconnects: Counter,
    decisions: LabelledCounter,
    verdicts: LabelledCounter,
    health_reviews: LabelledCounter,
    outputs_sent: LabelledCounter,
    outputs_dropped: LabelledCounter,
    outputs_failed: LabelledCounter,
    pub evidence_checks: Counter,
    pub evidence_divergent: Counter,
    pub reference_checks: Counter,
    pub reference_divergent: Counter,
    pub evidence_written: Counter,
    pub evidence_deleted: Counter,
    pub evidence_over_quota: Counter,
    pub evidence_bytes: Gauge,
    pub log_lines_written: Counter,
    pub log_lines_synced: Counter,
    pub log_rotations: Counter,
    pub log_write_failures: Counter,
    pub log_backlog_lines: Gauge,
    pub log_files_deleted: Counter,
    pub log_bytes_deleted: Counter,
    pub log_bytes: Gauge,
    pub log_keep_bytes: Gauge,
    pub log_disk_free_bytes: Gauge,
    pub decisions_unlogged: Counter,
    pub evidence_write_failures: Counter,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    pub latency_capture_to_decision: Histogram,
    pub latency_queue: Histogram,
    pub latency_preprocess: Histogram,
    pub latency_infer: Histogram,
    pub latency_sinks: Histogram,
    /// Milliseconds since `start` when the inference loop last turned.
    infer_tick_ms: AtomicU64,
    model: Mutex<String>,
    /// Why the daemon is degraded although its inference loop turns (the
    /// decision log cannot be written, ...); `None` when healthy.
    degraded: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            start: Instant::now(),
            start_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            frames_captured: Counter::default(),
            frames_dropped: Counter::default(),
            skipped: LabelledCounter::default(),
            source_errors: Counter::default(),
            source_reconnects: Counter::default(),
            decisions: LabelledCounter::default(),
            verdicts: LabelledCounter::default(),
            health_reviews: LabelledCounter::default(),
            outputs_sent: LabelledCounter::default(),
            outputs_dropped: LabelledCounter::default(),
            outputs_failed: LabelledCounter::default(),
            evidence_checks: Counter::default(),
            evidence_divergent: Counter::default(),
            reference_checks: Counter::default(),
            reference_divergent: Counter::default(),
            evidence_written: Counter::default(),
            evidence_deleted: Counter::default(),
            evidence_over_quota: Counter::default(),
            evidence_bytes: Gauge::default(),
            log_lines_written: Counter::default(),
            log_lines_synced: Counter::default(),
            log_rotations: Counter::default(),
            log_write_failures: Counter::default(),
            log_backlog_lines: Gauge::default(),
            log_files_deleted: Counter::default(),
            log_bytes_deleted: Counter::default(),
            log_bytes: Gauge::default(),
            log_keep_bytes: Gauge::default(),
            log_disk_free_bytes: Gauge::default(),
            decisions_unlogged: Counter::default(),
            evidence_write_failures: Counter::default(),
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            latency_capture_to_decision: Histogram::default(),
            latency_queue: Histogram::default(),
            latency_preprocess: Histogram::default(),
            latency_infer: Histogram::default(),
            latency_sinks: Histogram::default(),
            infer_tick_ms: AtomicU64::new(0),
            model: Mutex::default(),
            degraded: Mutex::default(),
        }
    }

    /// A frame skipped before the model, by reason (one of [`Skip::REASONS`]).
    pub fn skip(&self, reason: &str) {
        self.skipped.inc(reason);
    }

    pub fn skipped(&self, reason: &str) -> u64 {
        self.skipped.get(reason)
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.total()
    }

    pub fn decided(&self, class: &str) {
        self.decisions.inc(class);
    }

    /// A logged decision's verdict, and the health check behind a review.
    pub fn judged(&self, j: &Judged) {
        self.verdicts.inc(j.verdict.name());
        if let Some(h) = j.health {
            self.health_reviews.inc(h.name());
        }
    }

    pub fn verdicts(&self, v: Verdict) -> u64 {
        self.verdicts.get(v.name())
    }

    pub fn health_reviews(&self, h: Health) -> u64 {
        self.health_reviews.get(h.name())
    }

    /// `gcm_verdicts_total`: every verdict, counted or not.
    pub fn verdict_counts(&self) -> Vec<(String, u64)> {
        Verdict::ALL
            .iter()
            .map(|v| (v.name().to_string(), self.verdicts(*v)))
            .collect()
    }

    /// `gcm_health_reviews_total`: every health check, counted or not.
    pub fn by_health_check(&self) -> Vec<(String, u64)> {
        Health::ALL
            .iter()
            .map(|h| (h.name().to_string(), self.health_reviews(*h)))
            .collect()
    }

    /// An output's samples exist from its start.
    pub fn output_declare(&self, name: &str) {
        for c in [
            &self.outputs_sent,
            &self.outputs_dropped,
            &self.outputs_failed,
        ] {
            c.declare(name);
        }
    }

    /// A decision that reached the output's receiver.
    pub fn output_sent(&self, name: &str) {
        self.outputs_sent.inc(name);
    }

    /// A decision not queued for an output (its queue was full); returns
    /// the output's drops so far.
    pub fn output_dropped(&self, name: &str) -> u64 {
        self.outputs_dropped.inc_get(name)
    }

    /// A failed delivery (or connection attempt) of an output.
    pub fn output_failed(&self, name: &str) {
        self.outputs_failed.inc(name);
    }

    /// Sent, dropped and failed counts of an output.
    pub fn output_counts(&self, name: &str) -> [u64; 3] {
        [
            &self.outputs_sent,
            &self.outputs_dropped,
            &self.outputs_failed,
        ]
        .map(|c| c.get(name))
    }

    /// Every output's counts by name: `sent`, `dropped`, `failed`.
    pub fn output_summary(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let names: Vec<String> = self
            .outputs_sent
            .samples()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names
            .into_iter()
            .map(|n| {
                let counts = ["sent", "dropped", "failed"]
                    .into_iter()
                    .map(str::to_string)
                    .zip(self.output_counts(&n))
                    .collect();
                (n, counts)
            })
            .collect()
    }

    pub fn decisions_total(&self) -> u64 {
        self.decisions.total()
    }

    /// The model in use, and its classes' series (at 0 until decided).
    pub fn set_model(&self, id: &str, classes: &[String]) {
        *self.model.lock().expect("metrics lock") = id.to_string();
        for c in classes {
            self.decisions.declare(c);
        }
    }

    /// The inference loop is alive.
    pub fn tick(&self) {
        self.infer_tick_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the inference loop last turned.
    pub fn since_tick(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.infer_tick_ms.load(Ordering::Relaxed)))
    }

    /// Marks the daemon degraded, with the reason `/healthz` gives (503), or
    /// healthy again with `None`.
    pub fn set_degraded(&self, reason: Option<String>) {
        *self.degraded.lock().expect("metrics lock") = reason;
    }

    /// Why the daemon is degraded, if it is (see [`Metrics::set_degraded`]).
    pub fn degraded(&self) -> Option<String> {
        self.degraded.lock().expect("metrics lock").clone()
    }

    /// The Prometheus text exposition: every family of [`FAMILIES`], in order.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        for (name, kind, help, samples) in FAMILIES {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match samples {
                One(value) => {
                    let _ = writeln!(o, "{name} {}", value(self));
                }
                By(label, values) => {
                    for (v, n) in values(self) {
                        let _ = writeln!(o, "{name}{{{label}=\"{}\"}} {n}", escape(&v));
                    }
                }
                Latency(h) => h(self).render(&mut o, name),
                Seconds(value) => {
                    let _ = writeln!(o, "{name} {}", value(self));
                }
                Process(value) => match value(self) {
                    Some(v) => {
                        let _ = writeln!(o, "{name} {v}");
                    }
                    None => continue,
                },
                Info(labels) => {
                    let pairs: Vec<String> = labels()
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = writeln!(o, "{name}{{{}}} 1", pairs.join(","));
                }
            }
        }
        o
    }

    /// `gcm_frames_skipped_total`: every reason, counted or not.
    fn skipped_by_reason(&self) -> Vec<(String, u64)> {
        Skip::REASONS
            .iter()
            .map(|r| (r.to_string(), self.skipped(r)))
            .collect()
    }

    /// `gcm_model_info`: the model in use, always 1.
    fn model_info(&self) -> Vec<(String, u64)> {
        vec![(self.model.lock().expect("metrics lock").clone(), 1)]
    }
}

/// Where a family's samples come from.
enum Samples {
    /// One sample: `name N`.
    One(fn(&Metrics) -> u64),
    /// One sample per value of the label: `name{label="value"} N`.
    By(&'static str, fn(&Metrics) -> Vec<(String, u64)>),
    /// A latency histogram: `name_bucket{le="..."}`, `name_sum`, `name_count`.
    Latency(fn(&Metrics) -> &Histogram),
    /// One sample in seconds: `name S`.
    Seconds(fn(&Metrics) -> f64),
    /// One sample read from the process (`None`: not on this system; the
    /// HELP and TYPE lines are written anyway).
    Process(fn(&Metrics) -> Option<f64>),
    /// `name{k="v",...} 1`.
    Info(fn() -> Vec<(&'static str, String)>),
}
use Samples::{By, Info, Latency, One, Process, Seconds};

/// `gcm_build_info`'s labels: the crate version, the commit it was built
/// from (`GCM_GIT`, set by build.rs), the cargo features and the
/// instruction set the engine runs.
fn build_info() -> Vec<(&'static str, String)> {
    let features: Vec<&str> = [("cuda", cfg!(feature = "cuda"))]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("git", env!("GCM_GIT").to_string()),
        ("features", features.join(",")),
        ("isa", crate::engine::simd::Isa::detect().name().to_string()),
    ]
}

/// Fields of `/proc/self/stat` after the command name (field 3 on).
fn proc_stat() -> Option<Vec<u64>> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn page_and_tick() -> (f64, f64) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf only reads configuration values.
        let (page, tick) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        (page.max(1) as f64, tick.max(1) as f64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        (4096.0, 100.0)
    }
}

/// User and system CPU time (fields 14 and 15 of `/proc/self/stat`).
fn cpu_seconds(_: &Metrics) -> Option<f64> {
    let f = proc_stat()?;
    Some((f.get(10)? + f.get(11)?) as f64 / page_and_tick().1)
}

/// Resident set (field 24).
fn resident_bytes(_: &Metrics) -> Option<f64> {
    Some(*proc_stat()?.get(20)? as f64 * page_and_tick().0)
}

/// Virtual size in bytes (field 23).
fn virtual_bytes(_: &Metrics) -> Option<f64> {
    Some(*proc_stat()?.get(19)? as f64)
}

fn open_fds(_: &Metrics) -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

/// The soft limit of open files.
fn max_fds(_: &Metrics) -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fixed label values, each with its counter.
fn labels<const N: usize>(pairs: [(&str, &Counter); N]) -> Vec<(String, u64)> {
    pairs.map(|(l, c)| (l.to_string(), c.get())).into()
}

/// Everything `/metrics` shows, in the order shown: name, Prometheus type,
/// help text, samples. A new metric is a new row.
#[rustfmt::skip]
const FAMILIES: &[(&str, &str, &str, Samples)] = &[
    ("gcm_frames_captured_total", "counter", "Frames delivered by the source.", One(|m| m.frames_captured.get())),
    ("gcm_frames_dropped_total", "counter", "Frames dropped because the model was busy (the queue keeps the latest).", One(|m| m.frames_dropped.get())),
    ("gcm_frames_skipped_total", "counter", "Frames skipped before the model, by reason.", By("reason", Metrics::skipped_by_reason)),
    ("gcm_source_errors_total", "counter", "Capture errors (lost camera, timeouts, failed reopen attempts).", One(|m| m.source_errors.get())),
    ("gcm_source_reconnects_total", "counter", "Times a lost camera was reopened.", One(|m| m.source_reconnects.get())),
    ("gcm_decisions_total", "counter", "Decisions, by decided class.", By("class", |m| m.decisions.samples())),
    ("gcm_verdicts_total", "counter", "Logged verdicts: ok, ng (reject) or review.", By("verdict", Metrics::verdict_counts)),
    ("gcm_health_reviews_total", "counter", "Frames sent to review by a frame health check, by check.", By("check", Metrics::by_health_check)),
    ("gcm_output_sent_total", "counter", "Decisions delivered, by output (MQTT QoS 1: acknowledged by the broker).", By("output", |m| m.outputs_sent.samples())),
    ("gcm_output_dropped_total", "counter", "Decisions not sent because the output's queue was full, by output.", By("output", |m| m.outputs_dropped.samples())),
    ("gcm_output_failures_total", "counter", "Failed deliveries and connection attempts, by output.", By("output", |m| m.outputs_failed.samples())),
    ("gcm_checks_total", "counter", "Divergence checks run.", By("check", |m| labels([("evidence", &m.evidence_checks), ("reference", &m.reference_checks)]))),
    ("gcm_divergences_total", "counter", "Divergence checks that failed.", By("check", |m| labels([("evidence", &m.evidence_divergent), ("reference", &m.reference_divergent)]))),
    ("gcm_evidence_written_total", "counter", "Evidence folders written.", One(|m| m.evidence_written.get())),
    ("gcm_evidence_deleted_total", "counter", "Evidence folders deleted to stay within the quota.", One(|m| m.evidence_deleted.get())),
    ("gcm_evidence_over_quota_total", "counter", "Evidence not written because it alone exceeds the quota.", One(|m| m.evidence_over_quota.get())),
    ("gcm_evidence_write_failures_total", "counter", "Evidence that was to be kept but could not be written (a full disk, an I/O error).", One(|m| m.evidence_write_failures.get())),
    ("gcm_evidence_bytes", "gauge", "Disk used by the evidence folder (allocated blocks).", One(|m| m.evidence_bytes.get())),
    ("gcm_log_lines_written_total", "counter", "Decision log lines written.", One(|m| m.log_lines_written.get())),
    ("gcm_log_lines_synced_total", "counter", "Decision log lines known to be on disk (fsynced).", One(|m| m.log_lines_synced.get())),
    ("gcm_log_rotations_total", "counter", "Decision log rotations.", One(|m| m.log_rotations.get())),
    ("gcm_log_write_failures_total", "counter", "Failed writes and fsyncs of the decision log (a full disk, an I/O error).", One(|m| m.log_write_failures.get())),
    ("gcm_log_backlog_lines", "gauge", "Decision lines waiting in memory for the log to be writable.", One(|m| m.log_backlog_lines.get())),
    ("gcm_log_files_deleted_total", "counter", "Rotated decision log files deleted by retention (output.log.keep_bytes, keep_days).", One(|m| m.log_files_deleted.get())),
    ("gcm_log_bytes_deleted_total", "counter", "Bytes of rotated decision log files deleted by retention.", One(|m| m.log_bytes_deleted.get())),
    ("gcm_log_bytes", "gauge", "Disk the decision log's files take (active and rotated).", One(|m| m.log_bytes.get())),
    ("gcm_log_keep_bytes", "gauge", "The decision log's size bound in effect (0: none).", One(|m| m.log_keep_bytes.get())),
    ("gcm_log_disk_free_bytes", "gauge", "Free space on the decision log's file system.", One(|m| m.log_disk_free_bytes.get())),
    ("gcm_decisions_unlogged_total", "counter", "Decisions made but never written to the decision log (backlog full, or waiting at the stop).", One(|m| m.decisions_unlogged.get())),
    ("gcm_config_reloads_total", "counter", "Configuration reloads (SIGHUP), by result.", By("result", |m| labels([("ok", &m.reloads_ok), ("error", &m.reloads_failed)]))),
    ("gcm_capture_to_decision_seconds", "histogram", "From capture to the decision.", Latency(|m| &m.latency_capture_to_decision)),
    ("gcm_queue_wait_seconds", "histogram", "Time a frame waited for the model.", Latency(|m| &m.latency_queue)),
    ("gcm_preprocess_seconds", "histogram", "Frame preparation (decode, crop, resize, scaling).", Latency(|m| &m.latency_preprocess)),
    ("gcm_infer_seconds", "histogram", "Network forward pass and decision.", Latency(|m| &m.latency_infer)),
    ("gcm_sinks_seconds", "histogram", "Checks, evidence and log line for one decision.", Latency(|m| &m.latency_sinks)),
    ("gcm_model_info", "gauge", "The model in use (sha256 of its weights).", By("model", Metrics::model_info)),
    ("gcm_uptime_seconds", "gauge", "Seconds since the daemon started.", Seconds(|m| m.start.elapsed().as_secs_f64())),
    ("gcm_build_info", "gauge", "The build: crate version, git commit, cargo features, the engine's instruction set; always 1.", Info(build_info)),
    ("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds.", Seconds(|m| m.start_unix_s)),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", Process(cpu_seconds)),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", Process(resident_bytes)),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", Process(virtual_bytes)),
    ("process_open_fds", "gauge", "Number of open file descriptors.", Process(open_fds)),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors.", Process(max_fds)),
];

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(12));
        h.observe(Duration::from_secs(30));
        let mut s = String::new();
        h.render(&mut s, "x");
        assert!(s.contains("x_bucket{le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.015\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }

    /// Every counter, gauge, labelled family and histogram of `m` set to a
    /// value of its own.
    fn every_metric_set() -> Metrics {
        let m = Metrics::new();
        let counters = [
            &m.frames_captured,
            &m.frames_dropped,
            &m.source_errors,
            &m.source_reconnects,
            &m.evidence_checks,
            &m.evidence_divergent,
            &m.reference_checks,
            &m.reference_divergent,
            &m.evidence_written,
            &m.evidence_deleted,
            &m.evidence_over_quota,
            &m.log_lines_written,
            &m.log_lines_synced,
            &m.log_rotations,
            &m.log_write_failures,
            &m.decisions_unlogged,
            &m.evidence_write_failures,
            &m.reloads_ok,
            &m.reloads_failed,
            &m.log_files_deleted,
            &m.log_bytes_deleted,
        ];
        for (i, c) in counters.into_iter().enumerate() {
            c.add(101 + i as u64);
        }
        m.evidence_bytes.set(7_340_032);
        m.log_backlog_lines.set(77);
        m.log_bytes.set(123_456);
        m.log_keep_bytes.set(1 << 30);
        m.log_disk_free_bytes.set(9 << 30);
        for (reason, n) in [("corrupt", 3), ("roi", 5), ("channels", 7), ("other", 9)] {
            for _ in 0..n {
                m.skip(reason);
            }
        }
        for (class, n) in [("ok", 11), ("crack", 13), ("we\"ird\\\n", 2)] {
            for _ in 0..n {
                m.decided(class);
            }
        }
        let judged = |verdict, health| Judged {
            verdict,
            reason: String::new(),
            health,
        };
        for (j, n) in [
            (judged(Verdict::Ok, None), 11),
            (judged(Verdict::Ng, None), 9),
            (judged(Verdict::Review, Some(Health::Saturated)), 4),
            (judged(Verdict::Review, None), 2),
        ] {
            for _ in 0..n {
                m.judged(&j);
            }
        }
        let histograms = [
            &m.latency_capture_to_decision,
            &m.latency_queue,
            &m.latency_preprocess,
            &m.latency_infer,
            &m.latency_sinks,
        ];
        for (i, h) in histograms.into_iter().enumerate() {
            for us in [300, 1_500, 12_000, 90_000, 3_000_000, 30_000_000] {
                for _ in 0..=i {
                    h.observe(Duration::from_micros(us * (i as u64 + 1)));
                }
            }
        }
        for name in ["mqtt", "gate"] {
            m.output_declare(name);
        }
        for (name, sent, dropped, failed) in [("mqtt", 21, 0, 2), ("gate", 5, 3, 0)] {
            (0..sent).for_each(|_| m.output_sent(name));
            (0..dropped).for_each(|_| {
                m.output_dropped(name);
            });
            (0..failed).for_each(|_| m.output_failed(name));
        }
        m.set_model("sha256:ab\"cd", &[]);
        m
    }

    /// The exposition up to the uptime, with the uptime's value (it moves)
    /// replaced by `UPTIME`, after checking that it is a number. (The build
    /// and process families after it differ by machine and moment; the
    /// parser test below checks them.)
    fn render_without_uptime(m: &Metrics) -> String {
        let s = m.render();
        let (head, rest) = s.split_once("\ngcm_uptime_seconds ").unwrap();
        let value = rest.lines().next().unwrap();
        value.parse::<f64>().expect("uptime is a number");
        format!("{head}\ngcm_uptime_seconds UPTIME\n")
    }

    #[test]
    fn every_family_has_its_own_name_and_a_type_its_samples_fit() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family name repeats");
        for (name, kind, help, samples) in FAMILIES {
            let ours = name.starts_with("gcm_");
            assert!(
                (ours || name.starts_with("process_")) && !help.is_empty(),
                "{name}"
            );
            let histogram = matches!(samples, Latency(_));
            assert_eq!(*kind == "histogram", histogram, "{name}");
            assert!(["counter", "gauge", "histogram"].contains(kind), "{name}");
            assert_eq!(name.ends_with("_total"), *kind == "counter", "{name}");
        }
    }

    #[test]
    fn render_is_the_documented_exposition() {
        let got = render_without_uptime(&every_metric_set());
        if got != EXPOSITION {
            panic!("render changed; it now gives:\n{got}");
        }
    }

    /// `render` of [`every_metric_set`], as the daemon has always written it
    /// (the uptime's value aside).
    const EXPOSITION: &str = include_str!("../../tests/data/metrics.prom");

    /// Prometheus' data model: metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`,
    /// label names `[a-zA-Z_][a-zA-Z0-9_]*` not starting with `__`.
    fn prometheus_name(n: &str, colon: bool) -> bool {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colon && c == ':')
                || (!first && c.is_ascii_digit())
        };
        let mut cs = n.chars();
        cs.next().is_some_and(|c| ok(c, true)) && cs.all(|c| ok(c, false))
    }

    #[test]
    fn the_exposition_parses_and_every_name_follows_prometheus_rules() {
        use prometheus_parse::{Scrape, Value};
        let m = every_metric_set();
        let classes = ["crack".to_string(), "never decided".to_string()];
        m.set_model("sha256:ab", &classes);
        let text = m.render();
        let scrape =
            Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses");
        for (name, _, help, _) in FAMILIES {
            assert!(prometheus_name(name, true), "{name}");
            assert_eq!(
                scrape.docs.get(*name).map(String::as_str),
                Some(*help),
                "{name}"
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &scrape.samples {
            assert!(prometheus_name(&s.metric, true), "{}", s.metric);
            for (k, _) in s.labels.iter() {
                assert!(
                    prometheus_name(k, false) && !k.starts_with("__"),
                    "{}: label {k}",
                    s.metric
                );
            }
            seen.insert(s.metric.clone());
        }
        // Every family has samples (process ones where /proc exists).
        for (name, _, _, samples) in FAMILIES {
            let proc_here = std::path::Path::new("/proc/self/stat").exists();
            if !matches!(samples, Process(_)) || proc_here {
                assert!(seen.contains(*name), "{name} has no sample");
            }
        }
        let value = |metric: &str, label: Option<(&str, &str)>| -> f64 {
            let s = scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
                })
                .unwrap_or_else(|| panic!("{metric} {label:?}"));
            match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{metric} is not a number"),
            }
        };
        // A class of the model is a series before its first decision.
        assert_eq!(
            value("gcm_decisions_total", Some(("class", "never decided"))),
            0.0
        );
        assert_eq!(value("gcm_decisions_total", Some(("class", "crack"))), 13.0);
        let info = scrape
            .samples
            .iter()
            .find(|s| s.metric == "gcm_build_info")
            .unwrap();
        assert_eq!(info.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
        assert!(info.labels.get("git").is_some_and(|g| !g.is_empty()));
        assert_eq!(
            info.labels.get("isa"),
            Some(crate::engine::simd::Isa::detect().name())
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds", None);
        assert!(
            started <= now && started > now - 3600.0,
            "{started} vs {now}"
        );
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(value("process_resident_memory_bytes", None) > 1e6);
            assert!(value("process_open_fds", None) >= 3.0);
            assert!(value("process_max_fds", None) >= value("process_open_fds", None));
            // CPU time counts in clock ticks: work until one has passed.
            let t0 = Instant::now();
            let mut x = 0u64;
            while cpu_seconds(&m).unwrap() == 0.0 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "CPU time never rises"
                );
            }
            assert!(value("process_cpu_seconds_total", None) >= 0.0);
        }
    }

    #[test]
    fn render_has_per_class_decisions() {
        let m = Metrics::new();
        m.decided("crack");
        m.decided("crack");
        m.decided("ok");
        m.skip("corrupt");
        let s = m.render();
        assert!(
            s.contains("gcm_decisions_total{class=\"crack\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("gcm_frames_skipped_total{reason=\"corrupt\"} 1\n"),
            "{s}"
        );
        assert_eq!(m.decisions_total(), 3);
    }
}
