//! `gcm-inspect eval --sweep`: the review threshold swept on a synthetic set
//! with the bundled demo model; its files, its suggestion and its snippet.

use std::path::Path;

use crate::util::{fails, ok, p};

/// Writes a synthetic set of `count` 64 x 64 cells (seed 5) into `dir`.
fn synth(dir: &Path, count: &str) {
    ok(&[
        "synth",
        "--out",
        p(dir),
        "--count",
        count,
        "--size",
        "64",
        "--seed",
        "5",
    ]);
}

/// The rows of a CSV file as (header, rows of fields); no field is quoted.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(String::from).collect());
    let header = lines.next().expect("a header");
    (header, lines.collect())
}

fn col(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| {
        panic!("no column {name} in {header:?}");
    })
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// The sweep's rows: counts add up, rates match the counts, and raising the
/// threshold only ever moves frames into review.
fn check_sweep_csv(path: &Path, images: usize) -> Vec<(f64, f64, f64)> {
    let (h, rows) = csv(path);
    let counts = [
        "defect_ok",
        "defect_ng",
        "defect_review",
        "good_ok",
        "good_ng",
        "good_review",
    ];
    let mut prev: Option<Vec<f64>> = None;
    let mut out = Vec::new();
    for r in &rows {
        let c: Vec<f64> = counts.iter().map(|n| num(&r[col(&h, n)])).collect();
        assert_eq!(c.iter().sum::<f64>() as usize, images, "{r:?}");
        let miss = num(&r[col(&h, "miss_rate")]);
        assert_eq!(miss, c[0] / (c[0] + c[1] + c[2]), "{r:?}");
        assert_eq!(num(&r[col(&h, "recall")]), 1.0 - miss);
        let review = (c[2] + c[5]) / images as f64;
        assert_eq!(num(&r[col(&h, "review_rate")]), review, "{r:?}");
        if let Some(p) = &prev {
            // Fewer or as many misses, false rejects and passes; more reviews.
            for i in [0, 3, 4] {
                assert!(c[i] <= p[i], "{r:?} after {p:?}");
            }
            assert!(c[2] + c[5] >= p[2] + p[5], "{r:?} after {p:?}");
        }
        prev = Some(c);
        let cost = num(&r[col(&h, "cost")]);
        out.push((num(&r[col(&h, "threshold")]), miss, cost));
    }
    assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "thresholds rise");
    assert_eq!((out[0].0, out.last().unwrap().0), (0.0, 1.0));
    out
}

/// ROC from (0, 0) to (1, 1), never falling; PR on the same thresholds.
fn check_curves(dir: &Path) {
    let (h, roc) = csv(&dir.join("roc.csv"));
    let pts: Vec<(f64, f64)> = roc
        .iter()
        .map(|r| {
            let fpr = num(&r[col(&h, "false_positive_rate")]);
            (fpr, num(&r[col(&h, "true_positive_rate")]))
        })
        .collect();
    assert_eq!((pts[0], *pts.last().unwrap()), ((0.0, 0.0), (1.0, 1.0)));
    assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    let (_, pr) = csv(&dir.join("pr.csv"));
    assert_eq!(pr.len(), roc.len());
    for name in ["roc.png", "pr.png"] {
        let img = image::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width(), img.height()), (640, 480), "{name}");
    }
}

/// The YAML block after the "paste into" line, as printed.
fn snippet(stdout: &str) -> String {
    let start = stdout.find("\ndecision:\n").expect("a decision: block") + 1;
    let block = &stdout[start..];
    block[..block.find("\n\n").expect("a blank line after it") + 1].to_string()
}

/// The value after "suggested min_probability ".
fn suggested(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("suggested min_probability "))
        .expect("a suggestion");
    num(line.split(':').next().unwrap())
}

/// The default config with the snippet's decision keys in place: it must
/// load, and decide with the suggested threshold.
fn check_snippet_in_default_config(dir: &Path, yaml: &str, t: f64) {
    let snip: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let text = include_str!("../../config/default.yaml");
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    for (k, v) in snip["decision"].as_mapping().unwrap() {
        cfg["decision"][k] = v.clone();
    }
    let f = dir.join("pasted.yaml");
    std::fs::write(&f, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let loaded = gcm_inspect::config::Loaded::from_file(&f).unwrap();
    assert_eq!(loaded.config.decision.min_probability, t);
    let rejects = ["crack", "inactive", "spot"].map(String::from);
    assert_eq!(loaded.config.decision.reject_classes, rejects);
}

#[test]
fn sweep_writes_consistent_curves_and_a_threshold_within_the_miss_limit() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("cells"), t.path().join("out"));
    synth(&data, "120");
    let stdout = ok(&[
        "eval",
        "--model",
        "builtin:demo",
        "--data",
        p(&data),
        "--sweep",
        "--max-miss",
        "0.05",
        "--out",
        p(&out),
    ]);
    // The eval report comes first, as without --sweep.
    assert!(stdout.starts_with("images    120\n"), "{stdout}");
    let rows = check_sweep_csv(&out.join("sweep.csv"), 120);
    check_curves(&out);
    let t_sug = suggested(&stdout);
    let &(_, miss, cost) = rows
        .iter()
        .find(|r| r.0 == t_sug)
        .expect("a row of the sweep");
    let meets = !stdout.contains("warning: no threshold");
    assert_eq!(meets, miss <= 0.05, "{stdout}");
    // The rule: no row within the limit costs less, none below it as much.
    for &(t, _, c) in rows.iter().filter(|r| r.1 <= 0.05) {
        assert!(c > cost || (c == cost && t >= t_sug), "{t}: {c} vs {cost}");
    }
    assert!(
        stdout.contains("defective (crack, inactive, spot)"),
        "{stdout}"
    );
    let yaml = snippet(&stdout);
    check_snippet_in_default_config(t.path(), &yaml, t_sug);
    check_predictions(&out.join("predictions.csv"), 120);
}

/// One row per image; the verdicts are those of the suggested threshold.
fn check_predictions(path: &Path, images: usize) {
    let (h, rows) = csv(path);
    assert_eq!(rows.len(), images);
    let expected = [
        "path",
        "label",
        "predicted",
        "probability",
        "margin",
        "verdict",
    ];
    for name in expected {
        col(&h, name);
    }
    assert_eq!(h.iter().filter(|c| c.starts_with("score_")).count(), 4);
    for r in &rows {
        assert!(Path::new(&r[0]).is_file(), "{r:?}");
        assert!(["ok", "ng", "review"].contains(&r[col(&h, "verdict")].as_str()));
        let prob = num(&r[col(&h, "probability")]);
        assert!((0.25..=1.0).contains(&prob), "{r:?}");
    }
}

#[test]
fn reject_classes_come_from_the_config_or_the_flag_and_must_be_the_models() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("cells"), t.path().join("out"));
    synth(&data, "40");
    let base = ["eval", "--model", "builtin:demo", "--data", p(&data)];
    let sweep = [&base[..], &["--sweep", "--out", p(&out)]].concat();
    let e = fails(
        &[&sweep[..], &["--reject-classes", "crack,scratch"]].concat(),
        gcm_inspect::error::exit::USAGE,
    );
    assert!(
        e.contains("--reject-classes: \"scratch\" is not a class of the model")
            && e.contains("classes: crack, inactive, ok, spot"),
        "{e}"
    );
    assert!(!out.exists(), "refused before anything is written");
    let cfg = t.path().join("crack-only.yaml");
    let text = include_str!("../../config/default.yaml").replace(
        "reject_classes: [crack, inactive, spot]",
        "reject_classes: [crack]",
    );
    assert!(text.contains("reject_classes: [crack]\n"));
    std::fs::write(&cfg, text).unwrap();
    let stdout = ok(&[&sweep[..], &["--config", p(&cfg)]].concat());
    assert!(stdout.contains("10 defective (crack), 30 good"), "{stdout}");
    assert!(
        stdout.contains("\nmin_probability 0.8 (configured): "),
        "{stdout}"
    );
    let e = fails(
        &[&base[..], &["--max-miss", "0.02"]].concat(),
        gcm_inspect::error::exit::USAGE,
    );
    assert!(e.contains("--sweep"), "{e}");
}
