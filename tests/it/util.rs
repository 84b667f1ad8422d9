//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gcm-inspect"))
}

/// Runs the binary with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// Runs and requires success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "gcm-inspect {args:?} failed ({:?}):\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// Runs and requires failure with `code`, returning stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "gcm-inspect {args:?}: stderr:\n{err}"
    );
    assert!(
        !err.contains("panicked"),
        "gcm-inspect {args:?} panicked:\n{err}"
    );
    err
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Files under `dir` (recursively), sorted, relative.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Writes a randomly initialised tiny grey model (`size` x `size`, narrow
/// widths) into `dir` and returns its card.
pub fn tiny_model(
    dir: &Path,
    classes: &[&str],
    size: usize,
    seed: u64,
) -> gcm_inspect::model::ModelCard {
    use gcm_inspect::model::{checkpoint, gcm, Gcm, ModelConfig};
    let mut cfg = ModelConfig::table3(
        size,
        size,
        1,
        classes.iter().map(|c| c.to_string()).collect(),
    );
    cfg.encoder_widths = vec![2, 3, 4];
    let (_, vm) = Gcm::init(&cfg, seed, &candle_core::Device::Cpu).unwrap();
    checkpoint::save(dir, &gcm::varmap_tensors(&vm), checkpoint::new_card(cfg)).unwrap()
}

/// A synthetic set via the binary.
pub fn synth(dir: &Path, count: usize, size: usize, classes: &str, seed: u64) {
    ok(&[
        "synth",
        "--out",
        p(dir),
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
        "--classes",
        classes,
        "--seed",
        &seed.to_string(),
    ]);
}

/// A training config for fast tests: narrow network, no pad-crop.
pub const TINY_TRAIN_YAML: &str =
    "batch_size: 16\nlr: 0.05\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n";
