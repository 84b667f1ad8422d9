//! The benchmark scripts: `scripts/bench-ab.sh` (two binaries' `bench`
//! figures, interleaved, and the medians and ratio it reports from them),
//! `scripts/bench-publish.sh` (capture-to-publish through a real broker) and
//! `scripts/bench-review.sh` (the review page over a large log).

use std::path::Path;
use std::process::{Command, Output};

fn bench_ab(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("scripts/bench-ab.sh"))
        .args(args)
        .output()
        .expect("bash runs")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn bench_ab_reports_the_medians_of_its_rounds() {
    let bin = env!("CARGO_BIN_EXE_gcm-inspect");
    let o = bench_ab(&[
        bin,
        bin,
        "3",
        "--model",
        "builtin:demo",
        "--batch",
        "2",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--iters",
        "2",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let per_round = |tag: &str| -> Vec<f64> {
        let line = out
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line in:\n{out}"));
        let v: Vec<f64> = line
            .rsplit("images/s ")
            .next()
            .unwrap()
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 3, "{line}");
        assert!(v.iter().all(|&x| x > 0.0), "{line}");
        v
    };
    let (mut a, mut b) = (per_round("A "), per_round("B "));
    let (ma, mb) = (median(&mut a), median(&mut b));
    let line = out
        .lines()
        .find(|l| l.starts_with("median images/s"))
        .unwrap_or_else(|| panic!("no median line in:\n{out}"));
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| s.parse().unwrap())
        .collect();
    // "median images/s: A <a>, B <b>, B / A <r>x"
    assert_eq!(nums.len(), 3, "{line}");
    // Each figure is printed to 0.1: the medians of the printed rounds are
    // within 0.1 of the printed medians.
    assert!((nums[0] - ma).abs() <= 0.11, "{line}: median of A is {ma}");
    assert!((nums[1] - mb).abs() <= 0.11, "{line}: median of B is {mb}");
    assert!((nums[2] - nums[1] / nums[0]).abs() <= 0.02, "{line}");
}

#[test]
fn bench_ab_refuses_bad_arguments_by_name() {
    let bin = env!("CARGO_BIN_EXE_gcm-inspect");
    for (args, needle) in [
        (vec![bin, bin, "0", "--model", "builtin:demo"], "ROUNDS"),
        (
            vec![bin, "/nonexistent/gcm", "1", "--model", "builtin:demo"],
            "/nonexistent/gcm",
        ),
        (
            vec![bin, bin, "1", "--model", "/nonexistent/model"],
            "/nonexistent/model",
        ),
    ] {
        let o = bench_ab(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// `scripts/bench-publish.sh` on a short run: every decision reaches the
/// subscriber through a real broker, and the table has its figures.
#[test]
fn bench_publish_reports_every_decision_received_and_the_three_throughputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/bench-publish.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_gcm-inspect"))
        .env("FPS", "20")
        .env("DURATION_S", "2")
        .env("FRAMES", "30")
        .env("ROUNDS", "1")
        .output()
        .expect("bash runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("| builtin:demo | 20 |"))
        .unwrap_or_else(|| panic!("no latency row in:\n{out}"))
        .split('|')
        .map(str::trim)
        .collect();
    // | date | model | fps | decisions | received | sent / dropped | p50 | p99 | max | ...
    // 40 frames are captured; a loaded machine may drop a few before the
    // model (counted by the daemon), but every decision made is received.
    let decisions: usize = row[4].parse().unwrap();
    assert!((30..=40).contains(&decisions), "{out}");
    assert_eq!(row[5], row[4], "{out}");
    assert_eq!(row[6], format!("{decisions} / 0"), "{out}");
    let p50: f64 = row[7].parse().unwrap();
    let p99: f64 = row[8].parse().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{out}");
    for way in ["no output", "broker up", "broker down"] {
        let rate: f64 = out
            .lines()
            .find(|l| l.starts_with(&format!("| {way} |")))
            .and_then(|l| l.split('|').nth(2)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {way} row in:\n{out}"));
        assert!(rate > 0.0, "{out}");
    }
}

/// `scripts/bench-review.sh` on a small log: the page starts on it and
/// every request it times answers.
#[test]
fn bench_review_times_every_request_over_the_generated_log() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/bench-review.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_gcm-inspect"))
        .env("DECISIONS", "3000")
        .env("SEED", "20")
        .env("ROUNDS", "3")
        .output()
        .expect("bash runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.starts_with("bench-review: 3000 decisions"), "{out}");
    for what in [
        "gallery, newest page",
        "gallery, page 1000",
        "gallery, filtered",
        "detail",
        "summary",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line in:\n{out}"));
        let median: f64 = line
            .split("median")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no median in {line:?}"));
        assert!(median > 0.0 && line.ends_with("(3 requests)"), "{line}");
    }
}
