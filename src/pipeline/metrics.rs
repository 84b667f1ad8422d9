//! The daemon's counters, gauges and latency histograms, rendered in the
//! Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
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
    pub frames_captured: Counter,
    pub frames_dropped: Counter,
    skipped: Mutex<BTreeMap<String, u64>>,
    pub source_errors: Counter,
    pub source_reconnects: Counter,
    decisions: Mutex<BTreeMap<String, u64>>,
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
            frames_captured: Counter::default(),
            frames_dropped: Counter::default(),
            skipped: Mutex::default(),
            source_errors: Counter::default(),
            source_reconnects: Counter::default(),
            decisions: Mutex::default(),
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

    /// A frame skipped before the model, by reason (`corrupt`, `roi`, `channels`).
    pub fn skip(&self, reason: &str) {
        *self
            .skipped
            .lock()
            .expect("metrics lock")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn skipped(&self, reason: &str) -> u64 {
        let m = self.skipped.lock().expect("metrics lock");
        m.get(reason).copied().unwrap_or(0)
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.lock().expect("metrics lock").values().sum()
    }

    pub fn decided(&self, class: &str) {
        *self
            .decisions
            .lock()
            .expect("metrics lock")
            .entry(class.to_string())
            .or_default() += 1;
    }

    pub fn decisions_total(&self) -> u64 {
        self.decisions.lock().expect("metrics lock").values().sum()
    }

    pub fn set_model(&self, id: &str) {
        *self.model.lock().expect("metrics lock") = id.to_string();
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "gcm_frames_captured_total",
            "Frames delivered by the source.",
            self.frames_captured.get(),
        );
        counter(
            &mut o,
            "gcm_frames_dropped_total",
            "Frames dropped because the model was busy (the queue keeps the latest).",
            self.frames_dropped.get(),
        );
        let _ = writeln!(o, "# HELP gcm_frames_skipped_total Frames skipped before the model, by reason.\n# TYPE gcm_frames_skipped_total counter");
        for reason in ["corrupt", "roi", "channels"] {
            let _ = writeln!(
                o,
                "gcm_frames_skipped_total{{reason=\"{reason}\"}} {}",
                self.skipped(reason)
            );
        }
        counter(
            &mut o,
            "gcm_source_errors_total",
            "Capture errors (lost camera, timeouts, failed reopen attempts).",
            self.source_errors.get(),
        );
        counter(
            &mut o,
            "gcm_source_reconnects_total",
            "Times a lost camera was reopened.",
            self.source_reconnects.get(),
        );
        let _ = writeln!(o, "# HELP gcm_decisions_total Decisions, by decided class.\n# TYPE gcm_decisions_total counter");
        for (c, n) in self.decisions.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "gcm_decisions_total{{class=\"{}\"}} {n}", escape(c));
        }
        let _ = writeln!(
            o,
            "# HELP gcm_checks_total Divergence checks run.\n# TYPE gcm_checks_total counter"
        );
        let _ = writeln!(
            o,
            "gcm_checks_total{{check=\"evidence\"}} {}",
            self.evidence_checks.get()
        );
        let _ = writeln!(
            o,
            "gcm_checks_total{{check=\"reference\"}} {}",
            self.reference_checks.get()
        );
        let _ = writeln!(o, "# HELP gcm_divergences_total Divergence checks that failed.\n# TYPE gcm_divergences_total counter");
        let _ = writeln!(
            o,
            "gcm_divergences_total{{check=\"evidence\"}} {}",
            self.evidence_divergent.get()
        );
        let _ = writeln!(
            o,
            "gcm_divergences_total{{check=\"reference\"}} {}",
            self.reference_divergent.get()
        );
        counter(
            &mut o,
            "gcm_evidence_written_total",
            "Evidence folders written.",
            self.evidence_written.get(),
        );
        counter(
            &mut o,
            "gcm_evidence_deleted_total",
            "Evidence folders deleted to stay within the quota.",
            self.evidence_deleted.get(),
        );
        counter(
            &mut o,
            "gcm_evidence_over_quota_total",
            "Evidence not written because it alone exceeds the quota.",
            self.evidence_over_quota.get(),
        );
        counter(
            &mut o,
            "gcm_evidence_write_failures_total",
            "Evidence that was to be kept but could not be written (a full disk, an I/O error).",
            self.evidence_write_failures.get(),
        );
        let _ = writeln!(o, "# HELP gcm_evidence_bytes Disk used by the evidence folder (allocated blocks).\n# TYPE gcm_evidence_bytes gauge\ngcm_evidence_bytes {}", self.evidence_bytes.get());
        counter(
            &mut o,
            "gcm_log_lines_written_total",
            "Decision log lines written.",
            self.log_lines_written.get(),
        );
        counter(
            &mut o,
            "gcm_log_lines_synced_total",
            "Decision log lines known to be on disk (fsynced).",
            self.log_lines_synced.get(),
        );
        counter(
            &mut o,
            "gcm_log_rotations_total",
            "Decision log rotations.",
            self.log_rotations.get(),
        );
        counter(
            &mut o,
            "gcm_log_write_failures_total",
            "Failed writes and fsyncs of the decision log (a full disk, an I/O error).",
            self.log_write_failures.get(),
        );
        let _ = writeln!(o, "# HELP gcm_log_backlog_lines Decision lines waiting in memory for the log to be writable.\n# TYPE gcm_log_backlog_lines gauge\ngcm_log_backlog_lines {}", self.log_backlog_lines.get());
        counter(
            &mut o,
            "gcm_decisions_unlogged_total",
            "Decisions made but never written to the decision log (backlog full, or waiting at the stop).",
            self.decisions_unlogged.get(),
        );
        let _ = writeln!(o, "# HELP gcm_config_reloads_total Configuration reloads (SIGHUP), by result.\n# TYPE gcm_config_reloads_total counter");
        let _ = writeln!(
            o,
            "gcm_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.get()
        );
        let _ = writeln!(
            o,
            "gcm_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_failed.get()
        );
        self.latency_capture_to_decision.render(
            &mut o,
            "gcm_capture_to_decision_seconds",
            "From capture to the decision.",
        );
        self.latency_queue.render(
            &mut o,
            "gcm_queue_wait_seconds",
            "Time a frame waited for the model.",
        );
        self.latency_preprocess.render(
            &mut o,
            "gcm_preprocess_seconds",
            "Frame preparation (decode, crop, resize, scaling).",
        );
        self.latency_infer.render(
            &mut o,
            "gcm_infer_seconds",
            "Network forward pass and decision.",
        );
        self.latency_sinks.render(
            &mut o,
            "gcm_sinks_seconds",
            "Checks, evidence and log line for one decision.",
        );
        let _ = writeln!(o, "# HELP gcm_model_info The model in use (sha256 of its weights).\n# TYPE gcm_model_info gauge\ngcm_model_info{{model=\"{}\"}} 1", escape(&self.model.lock().expect("metrics lock")));
        let _ = writeln!(o, "# HELP gcm_uptime_seconds Seconds since the daemon started.\n# TYPE gcm_uptime_seconds gauge\ngcm_uptime_seconds {}", self.start.elapsed().as_secs_f64());
        o
    }
}

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
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.015\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
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
