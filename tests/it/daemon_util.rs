//! Helpers for the daemon tests: tiny models, configs, a running daemon.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use gcm_inspect::model::checkpoint;
use gcm_inspect::model::gcm::{varmap_tensors, Gcm};
use gcm_inspect::model::ModelConfig;
use gcm_inspect::pipeline::sink::log::{log_files, LogLine};

/// Classes of the tiny test models, in score order.
pub const CLASSES: [&str; 2] = ["crack", "ok"];

/// A tiny untrained GCM (16x16 grey, narrow) saved as a model directory;
/// returns its model id (sha256 of the weights).
pub fn tiny_model(dir: &Path, seed: u64) -> String {
    let mut cfg = ModelConfig::table3(16, 16, 1, CLASSES.iter().map(|s| s.to_string()).collect());
    cfg.encoder_widths = vec![4, 8, 8];
    cfg.encoder_depths = vec![1, 1, 1];
    cfg.scaling = gcm_inspect::model::InputScaling::Inverted;
    let (_, vm) = Gcm::init(&cfg, seed, &Device::Cpu).unwrap();
    checkpoint::save(dir, &varmap_tensors(&vm), checkpoint::new_card(cfg))
        .unwrap()
        .weights_sha256
}

/// A test's folder with a tiny model (seed `seed`) and a config using it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    /// The model id.
    pub id: String,
    pub cfg: PathBuf,
}

impl Setup {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A synthetic source of 16x16 frames at `fps` (0: unpaced), as a source block.
pub fn synthetic(fps: u32) -> String {
    format!("  synthetic:\n    fps: {fps}\n    size_px: 16\n")
}

pub fn setup(seed: u64, source: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let id = tiny_model(&model, seed);
    let cfg = config(dir.path(), &model, source, extra);
    Setup {
        dir,
        model,
        id,
        cfg,
    }
}

/// A config with the given source block (YAML, indented under `source:`)
/// and extra top-level YAML; outputs under `root/out`.
pub fn config(root: &Path, model: &Path, source: &str, extra: &str) -> PathBuf {
    let text = format!(
        "model: {}\nsource:\n{source}\noutput:\n  log_dir: {}\n  evidence_dir: {}\n  log:\n    fsync_every_lines: 1\nmetrics:\n  listen: 127.0.0.1:0\n{extra}",
        model.display(),
        root.join("out/log").display(),
        root.join("out/evidence").display(),
    );
    let p = root.join("daemon.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn log_dir(root: &Path) -> PathBuf {
    root.join("out/log")
}

pub fn evidence_dir(root: &Path) -> PathBuf {
    root.join("out/evidence")
}

/// Every line of the decision log, oldest first (all must parse).
pub fn log_lines(root: &Path) -> Vec<LogLine> {
    let dir = log_dir(root);
    if !dir.exists() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in log_files(&dir).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, l) in text.lines().enumerate() {
            out.push(
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}:{}: {e}: {l:?}", f.display(), i + 1)),
            );
        }
    }
    out
}

/// Whole lines in the log so far (a line still being written is not counted).
pub fn count_lines(root: &Path) -> usize {
    let dir = log_dir(root);
    let Ok(files) = log_files(&dir) else { return 0 };
    files
        .iter()
        .map(|f| {
            std::fs::read(f)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0)
        })
        .sum()
}

/// Polls `cond` until it holds or `secs` pass (then panics with `what`).
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `gcm-inspect run` as a child process, stderr into a file.
pub struct Daemon {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Daemon {
    pub fn start(root: &Path, args: &[&str]) -> Daemon {
        Daemon::start_with(root, args, |_, _| {})
    }

    /// Starts with `setup(command, stderr file)` applied before spawning.
    pub fn start_with(
        root: &Path,
        args: &[&str],
        setup: impl FnOnce(&mut Command, &std::fs::File),
    ) -> Daemon {
        let n = std::fs::read_dir(root).unwrap().count();
        let stderr_path = root.join(format!("stderr-{n}.txt"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcm-inspect"));
        cmd.arg("run")
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("STATE_DIRECTORY")
            .env_remove("LOGS_DIRECTORY");
        setup(&mut cmd, &stderr);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("daemon starts");
        Daemon { child, stderr_path }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for a line of stderr containing `needle`.
    pub fn wait_stderr(&mut self, secs: u64, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "daemon exited ({st}) before logging {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics address the daemon logged.
    pub fn metrics_addr(&mut self) -> String {
        self.wait_stderr(60, "metrics: listening on http://");
        let e = self.stderr();
        let at = e.find("listening on http://").unwrap() + "listening on http://".len();
        e[at..].split('/').next().unwrap().to_string()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the exit; returns the status and stdout.
    pub fn wait(mut self, secs: u64) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (st, out, self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit in {secs} s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP GET on loopback; returns the whole response.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// A metric's value from a `/metrics` page.
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// The summary JSON line `run` prints on stdout.
pub fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary in stdout:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}
