//! The review loop end to end on synthetic data: a weak model on the line,
//! its mistakes relabelled from the known truth through the review page's
//! API (as the page's buttons and keys send them), the reviewed frames
//! exported, the model fine-tuned on them mixed with its original data, and
//! held-back frames decided better than before.

use std::collections::BTreeMap;
use std::path::Path;

use crate::daemon_util::{config, log_dir, log_lines, Daemon};
use crate::review::{get, post_label, Review};
use crate::util::{ok, p, synth};

/// A small network that learns the synthetic cells in a few epochs (dark
/// defects need the inverted scaling).
const TRAIN_YAML: &str = "batch_size: 16\nlr: 0.05\naugment:\n  pad_crop_px: 0\nmodel:\n  scaling: inverted\n  encoder_widths: [4, 8, 16]\n";

/// The images of a `synth` folder (`DIR/<class>/*.png`) copied flat into
/// `flat`, with their true class by file name.
fn flatten(synth_dir: &Path, flat: &Path) -> BTreeMap<String, String> {
    std::fs::create_dir_all(flat).unwrap();
    let mut truth = BTreeMap::new();
    for class in std::fs::read_dir(synth_dir).unwrap() {
        let class = class.unwrap().path();
        if !class.is_dir() {
            continue;
        }
        let label = class.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            let name = format!("{label}_{}", f.file_name().unwrap().to_string_lossy());
            std::fs::copy(&f, flat.join(&name)).unwrap();
            truth.insert(name, label.clone());
        }
    }
    truth
}

/// Accuracy of `model` on a labelled folder, from `eval --json`.
fn accuracy(model: &Path, data: &Path) -> f64 {
    let out = ok(&["eval", "--model", p(model), "--data", p(data), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["accuracy"]
        .as_f64()
        .unwrap_or_else(|| panic!("no accuracy in {v}"))
}

#[test]
fn relabelled_mistakes_exported_and_fine_tuned_raise_held_back_accuracy() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let cfg = root.join("tiny.yaml");
    std::fs::write(&cfg, TRAIN_YAML).unwrap();
    // A deliberately weak model: one epoch on a few cells.
    let original = root.join("original");
    synth(&original, 40, 32, "ok,crack", 1);
    let weak = root.join("weak");
    ok(&[
        "train",
        "--data",
        p(&original),
        "--out",
        p(&weak),
        "--config",
        p(&cfg),
        "--epochs",
        "1",
        "--seed",
        "1",
        "--no-progress",
    ]);
    // The line: a replay of collected cells, evidence for every frame.
    let collected = root.join("collected");
    synth(&collected, 200, 32, "ok,crack", 2);
    let frames = root.join("frames");
    let truth = flatten(&collected, &frames);
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    let daemon_cfg = config(root, &weak, &src, "evidence:\n  all_frames: true\n");
    let (st, _, err) = Daemon::start(root, &["--config", p(&daemon_cfg)]).wait(180);
    assert!(st.success(), "{err}");
    // The reviewer corrects the mistakes and confirms the rest.
    let review = Review::start(root, &["--log", p(&log_dir(root)), "--bind", "127.0.0.1:0"]);
    let a = review.addr.as_str();
    let csrf = get(a, "/api/meta").json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut mistakes, mut lines) = (0, 0);
    for l in log_lines(root) {
        let name = l.source.clone().unwrap();
        let right = &truth[&name];
        mistakes += (&l.class != right) as usize;
        let act = serde_json::json!({"frame": l.frame, "label": right});
        let r = post_label(a, &csrf, &act);
        assert_eq!(r.status, 200, "{}", r.text());
        lines += 1;
    }
    drop(review);
    assert_eq!(lines, truth.len());
    assert!(
        mistakes > 0,
        "the weak model made no mistake: nothing to learn"
    );
    // Export, then fine-tune on the export mixed with the original data.
    let export = root.join("export");
    let said = ok(&["export", "--log", p(&log_dir(root)), "--out", p(&export)]);
    assert!(
        said.contains(&format!(
            "({mistakes} corrected, {} confirmed)",
            lines - mistakes
        )),
        "{said}"
    );
    let manifest = std::fs::read_to_string(export.join("export.csv")).unwrap();
    assert_eq!(manifest.lines().count(), lines + 1, "{manifest}");
    let tuned = root.join("tuned");
    let mix = format!("{}:1", original.display());
    // --init keeps the weak model's architecture: the config without `model:`.
    let tune_cfg = root.join("tune.yaml");
    std::fs::write(&tune_cfg, TRAIN_YAML.split("model:").next().unwrap()).unwrap();
    ok(&[
        "train",
        "--data",
        p(&export.join("export.csv")),
        "--out",
        p(&tuned),
        "--init",
        p(&weak),
        "--mix",
        &mix,
        "--config",
        p(&tune_cfg),
        "--epochs",
        "10",
        "--seed",
        "1",
        "--no-progress",
    ]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tuned.join("model.json")).unwrap()).unwrap();
    let parent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(weak.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["init"]["weights_sha256"], parent["weights_sha256"]);
    assert!(
        card["data"]["source"]
            .as_str()
            .unwrap()
            .ends_with("export.csv"),
        "{}",
        card["data"]
    );
    assert_eq!(
        card["data"]["split"]["mix"]["ratio"], 1.0,
        "{}",
        card["data"]
    );
    // Held-back cells, seen by neither model.
    let held = root.join("held");
    synth(&held, 200, 32, "ok,crack", 3);
    let (before, after) = (accuracy(&weak, &held), accuracy(&tuned, &held));
    println!("held-back accuracy: weak {before:.3}, fine-tuned {after:.3}");
    // Measured: 0.50 -> 0.94.
    assert!(
        after >= before + 0.2,
        "fine-tuning did not help enough: {before} -> {after}"
    );
}
