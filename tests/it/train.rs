//! `train`, `explain`, `eval` end to end on tiny synthetic sets.

use crate::util::*;
use serde_json::Value;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The lines of `OUT/history.jsonl`, one per epoch.
fn history(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn train_tiny(data: &std::path::Path, out: &std::path::Path, epochs: &str) -> String {
    train_with(data, out, epochs, TINY_TRAIN_YAML)
}

/// `train` with this config text (written beside OUT as OUT.yaml).
fn train_with(data: &std::path::Path, out: &std::path::Path, epochs: &str, yaml: &str) -> String {
    let cfg = out.with_extension("yaml");
    std::fs::write(&cfg, yaml).unwrap();
    ok(&[&train_args(data, out, &cfg)[..], &["--epochs", epochs]].concat())
}

/// `train --data DATA --out OUT --config CFG --no-progress`.
fn train_args<'a>(
    data: &'a std::path::Path,
    out: &'a std::path::Path,
    cfg: &'a std::path::Path,
) -> [&'a str; 8] {
    [
        "train",
        "--data",
        p(data),
        "--out",
        p(out),
        "--config",
        p(cfg),
        "--no-progress",
    ]
}

#[test]
fn train_writes_model_card_checkpoints_and_history() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("data"), t.path().join("model"));
    synth(&data, 24, 16, "ok,spot", 1);
    let stdout = train_tiny(&data, &out, "2");
    assert!(stdout.contains("best val accuracy"), "{stdout}");
    let card = json(&out.join("model.json"));
    assert_eq!(card["model"]["classes"], serde_json::json!(["ok", "spot"]));
    assert_eq!(card["model"]["input_rows"], 16);
    assert_eq!(
        card["model"]["encoder_widths"],
        serde_json::json!([2, 3, 4])
    );
    assert_eq!(card["training"]["batch_size"], 16);
    assert_eq!(card["data"]["train_per_class"].as_array().unwrap().len(), 2);
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    assert_eq!(
        card["weights_sha256"],
        gcm_inspect::model::checkpoint::sha256_hex(&weights)
    );
    let (_, net) = gcm_inspect::model::load_model(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        card["parameters"].as_u64().unwrap() as usize,
        net.num_parameters()
    );
    assert!(card["metrics"]["val_accuracy"].as_f64().unwrap() >= 0.0);
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 2);
    assert!(out.join("last/model.json").exists() && out.join("last/train_state.json").exists());

    // The seeded validation carve-out is written as a manifest: `eval` on it
    // sees the images the best epoch was chosen on and gives its accuracy.
    assert_eq!(card["data"]["val_manifest"], "validation.csv");
    let val = std::fs::read_to_string(out.join("validation.csv")).unwrap();
    let n_val = card["metrics"]["val_images"].as_u64().unwrap();
    assert_eq!(val.lines().count() as u64, n_val + 1, "{val}");
    // last/ is a model folder too: the list its card names is there.
    let last_card = json(&out.join("last/model.json"));
    assert_eq!(last_card["data"]["val_manifest"], "validation.csv");
    assert_eq!(
        std::fs::read_to_string(out.join("last/validation.csv")).unwrap(),
        val
    );
    let ev: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&out),
        "--data",
        p(&out.join("validation.csv")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(ev["images"].as_u64(), Some(n_val), "{ev}");
    assert_eq!(ev["accuracy"], card["metrics"]["val_accuracy"], "{ev}");
}

#[test]
fn resume_continues_where_the_run_stopped() {
    let t = tempfile::tempdir().unwrap();
    let (data, out) = (t.path().join("data"), t.path().join("model"));
    synth(&data, 24, 16, "ok,spot", 2);
    train_tiny(&data, &out, "1");
    ok(&[
        "train",
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--resume",
        "--epochs",
        "3",
        "--no-progress",
    ]);
    let st = json(&out.join("last/train_state.json"));
    assert_eq!(st["epochs_done"], 3);
    // Trained from a seeded start: the card names no initial model.
    let card = json(&out.join("model.json"));
    assert!(card.get("init").is_none(), "{card}");
    let epochs: Vec<u64> = history(&out)
        .iter()
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    history_script_agrees_with_the_run(&out);
    // Nothing left to do is an error, not a silent success.
    let err = fails(
        &[
            "train",
            "--data",
            p(&data),
            "--out",
            p(&out),
            "--resume",
            "--no-progress",
        ],
        gcm_inspect::error::exit::USAGE,
    );
    assert!(err.contains("nothing to do"), "{err}");
}

/// `scripts/train-history.py` on a finished (here: resumed) run: its best
/// epoch is the one `train` kept in `model.json`, its means are the history's,
/// and a range the run does not cover is an error naming the history file.
fn history_script_agrees_with_the_run(out: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/train-history.py");
    let run = |extra: &[&str]| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--range", "1-3", "--range", "2-3", "--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "train-history.py: {stderr}");
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &rows[0];
    let card = json(&out.join("model.json"));
    assert_eq!(row["epochs"], 3, "{row}");
    assert_eq!(row["best_epoch"], card["metrics"]["epoch"], "{row}");
    let best = card["metrics"]["val_accuracy"].as_f64().unwrap();
    assert!(
        (row["best_val"].as_f64().unwrap() - 100.0 * best).abs() < 1e-9,
        "{row}"
    );
    let val: Vec<f64> = history(out)
        .iter()
        .map(|r| r["val_accuracy"].as_f64().unwrap())
        .collect();
    for (range, from) in [("1-3", 0), ("2-3", 1)] {
        let want = 100.0 * val[from..].iter().sum::<f64>() / (3 - from) as f64;
        let got = row["means"][range].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{range}: {got} vs {want}");
    }
    let o = run(&["--range", "2-5"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    // The history script's own usage error (argparse), not the binary's.
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("history.jsonl") && stderr.contains("needs epochs 2 to 5"),
        "{stderr}"
    );
}

/// The same data, config and seed train the same weights on any thread
/// count: a line that retrains on another box, or with another
/// RAYON_NUM_THREADS, gets the model its colleague got. At batch 16, 9
/// threads compute the weight gradient one input channel per task, 1 thread
/// whole images per task (before the fix these trained weights that
/// differed by up to 1.2e-7 after two epochs).
#[test]
fn training_gives_the_same_weights_on_any_thread_count() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    synth(&data, 60, 32, "ok,spot", 7);
    let cfg = t.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        "optimizer: adamw\nweight_decay: 0.01\nlr: 0.01\nbatch_size: 16\naugment:\n  pad_crop_px: 0\n  exposure: 0.2\nmodel:\n  encoder_widths: [4, 8, 16]\n",
    )
    .unwrap();
    let mut runs = Vec::new();
    for threads in ["1", "9"] {
        let out = t.path().join(format!("threads{threads}"));
        let o = bin()
            .env("RAYON_NUM_THREADS", threads)
            .args(train_args(&data, &out, &cfg))
            .args(["--epochs", "2"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{threads} threads: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        runs.push(std::fs::read(out.join("model.safetensors")).unwrap());
    }
    assert!(
        runs[0] == runs[1],
        "1 and 9 threads trained different weights (largest difference {})",
        max_diff(
            &t.path().join("threads1/model.safetensors"),
            &t.path().join("threads9/model.safetensors")
        )
    );
}

/// Largest absolute difference between two safetensors files with the same names.
fn max_diff(a: &std::path::Path, b: &std::path::Path) -> f32 {
    let load = |p: &std::path::Path| {
        candle_core::safetensors::load(p, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (name, ta) in &a {
        let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in va.iter().zip(&vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// `train --resume` of the run in `out`, to `epochs` in all.
fn resume_args<'a>(
    data: &'a std::path::Path,
    out: &'a std::path::Path,
    epochs: &'a str,
) -> [&'a str; 9] {
    [
        "train",
        "--data",
        p(data),
        "--out",
        p(out),
        "--resume",
        "--epochs",
        epochs,
        "--no-progress",
    ]
}

/// Trains on a tiny set with `yaml` two epochs straight (`straight`) and
/// one epoch then `--resume` to two (`resumed`).
fn straight_and_resumed(
    yaml: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    synth(&data, 24, 16, "ok,spot", 5);
    let (straight, resumed) = (t.path().join("straight"), t.path().join("resumed"));
    train_with(&data, &straight, "2", yaml);
    train_with(&data, &resumed, "1", yaml);
    ok(&resume_args(&data, &resumed, "2"));
    (t, data, straight, resumed)
}

#[test]
fn adamw_resume_restores_the_moments() {
    // Two epochs straight, and one epoch then --resume to two, must end on
    // the same weights: an optimiser state that was not saved or not
    // restored (fresh moments, step count 0) moves them differently.
    let (_t, data, straight, resumed) = straight_and_resumed(
        "optimizer: adamw\nweight_decay: 0.01\nlr: 0.01\nbatch_size: 16\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n",
    );
    let card = json(&resumed.join("last/model.json"));
    assert_eq!(card["training"]["optimizer"], "adamw");
    let f = "last/model.safetensors";
    let worst = max_diff(&straight.join(f), &resumed.join(f));
    assert!(
        worst < 1e-4,
        "resumed run differs from the straight run by {worst}"
    );
    // Resuming an AdamW run whose state file lost its moments is refused.
    let state = resumed.join("last/train_state.safetensors");
    let mut st = candle_core::safetensors::load(&state, &candle_core::Device::Cpu).unwrap();
    st.remove("adamw.steps");
    candle_core::safetensors::save(&st, &state).unwrap();
    let err = fails(
        &resume_args(&data, &resumed, "3"),
        gcm_inspect::error::exit::MODEL,
    );
    assert!(err.contains("adamw.steps"), "{err}");
}

#[test]
fn weight_average_is_what_is_saved_and_survives_resume() {
    // With ema_decay the models hold the averaged weights and last/ keeps
    // the optimiser's own beside them; one epoch then --resume must end
    // where two straight epochs end, for both.
    let (_t, data, straight, resumed) = straight_and_resumed(
        "optimizer: adamw\nlr: 0.01\nbatch_size: 8\nema_decay: 0.9\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n",
    );
    let (avg, own) = ("last/model.safetensors", "last/train_weights.safetensors");
    for f in [avg, own] {
        let d = max_diff(&straight.join(f), &resumed.join(f));
        assert!(
            d < 1e-4,
            "{f}: resumed run differs from the straight run by {d}"
        );
    }
    // The average is not the optimiser's weights (8 steps at decay <= 0.9).
    let d = max_diff(&straight.join(avg), &straight.join(own));
    assert!(
        d > 1e-3,
        "averaged and optimiser weights differ by only {d}"
    );
    // Each epoch's history names both validation accuracies.
    let history = std::fs::read_to_string(straight.join("history.jsonl")).unwrap();
    for line in history.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let own_acc = v["val_accuracy_train_weights"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&own_acc), "{line}");
    }
    // Without the optimiser's weights the run cannot go on; the file is named.
    std::fs::remove_file(resumed.join(own)).unwrap();
    let err = fails(
        &resume_args(&data, &resumed, "3"),
        gcm_inspect::error::exit::MODEL,
    );
    assert!(err.contains("train_weights.safetensors"), "{err}");
}

/// A config knob drawn from its own seeded stream per epoch (`on`, a line
/// of `yaml`): two epochs straight and one then --resume draw the same and
/// end on the same weights; the model card records `key: value`; and the
/// run differs from the same config with `off` instead.
fn trains_repeatably_and_survives_resume(yaml: &str, on: &str, off: &str, key: &str, value: f64) {
    assert!(yaml.contains(on), "{on} is not in the config");
    let (t, data, straight, resumed) = straight_and_resumed(yaml);
    let f = "last/model.safetensors";
    let d = max_diff(&straight.join(f), &resumed.join(f));
    assert!(
        d < 1e-4,
        "{on}: resumed run differs from the straight run by {d}"
    );
    assert_eq!(json(&straight.join("model.json"))["training"][key], value);
    let plain = t.path().join("plain");
    train_with(&data, &plain, "2", &yaml.replace(on, off));
    let d = max_diff(&straight.join(f), &plain.join(f));
    assert!(d > 1e-3, "{on} and {off} trained weights only {d} apart");
}

#[test]
fn head_dropout_trains_repeatably_and_survives_resume() {
    // The dropout masks come from the config's seed and the epoch.
    let yaml = "optimizer: adamw\nlr: 0.01\nbatch_size: 8\nhead_dropout: 0.3\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n";
    trains_repeatably_and_survives_resume(
        yaml,
        "head_dropout: 0.3",
        "head_dropout: 0",
        "head_dropout",
        0.3,
    );
}

#[test]
fn mixup_trains_repeatably_and_survives_resume() {
    // The blends come from the config's seed and the epoch.
    let yaml = "optimizer: adamw\nlr: 0.01\nbatch_size: 8\nmixup: 0.4\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n";
    trains_repeatably_and_survives_resume(yaml, "mixup: 0.4", "mixup: 0", "mixup", 0.4);
}

#[test]
fn topk_loss_trains_repeatably_and_is_recorded() {
    // The auxiliary loss changes training only: a run with it resumes to
    // the straight run's weights, the card records it, and it trains other
    // weights than the same config without it.
    let on = "topk_loss: {fraction: 0.1, weight: 1.0}\n";
    let yaml = format!("optimizer: adamw\nlr: 0.01\nbatch_size: 8\n{on}augment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [2, 3, 4]\n");
    let (t, data, straight, resumed) = straight_and_resumed(&yaml);
    let f = "last/model.safetensors";
    let d = max_diff(&straight.join(f), &resumed.join(f));
    assert!(d < 1e-4, "resumed run differs from the straight run by {d}");
    let card = json(&straight.join("model.json"));
    assert_eq!(card["training"]["topk_loss"]["fraction"], 0.1);
    assert_eq!(card["training"]["topk_loss"]["weight"], 1.0);
    let plain = t.path().join("plain");
    train_with(&data, &plain, "2", &yaml.replace(on, ""));
    let d = max_diff(&straight.join(f), &plain.join(f));
    assert!(d > 1e-3, "with and without topk_loss only {d} apart");
}

#[test]
fn soft_targets_come_from_the_manifest_column() {
    // One epoch on the same images and seed: soft targets of exactly 0 and 1
    // are the labels and must train as the labels do; 0.25 / 0.75 must not.
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    synth(&data, 24, 16, "ok,spot", 6);
    let manifest = |name: &str, p_spot: [&str; 2]| {
        let mut csv = String::from("path,label,P_Spot\n");
        for f in files(&data).iter().filter(|f| f.ends_with(".png")) {
            let label = f.split('/').next().unwrap();
            let v = p_spot[usize::from(label == "spot")];
            csv += &format!("data/{f},{label},{v}\n");
        }
        let m = t.path().join(name);
        std::fs::write(&m, csv).unwrap();
        m
    };
    let (hard, exact, soft) = (
        manifest("hard.csv", ["0", "1"]),
        manifest("exact.csv", ["0", "1.0"]),
        manifest("soft.csv", ["0.25", "0.75"]),
    );
    let yaml = format!("{TINY_TRAIN_YAML}soft_target:\n  column: p_spot\n  class: spot\n");
    let out = |n: &str| t.path().join(n);
    train_tiny(&hard, &out("hard"), "1");
    train_with(&exact, &out("exact"), "1", &yaml);
    train_with(&soft, &out("soft"), "1", &yaml);
    let f = "last/model.safetensors";
    let same = max_diff(&out("hard").join(f), &out("exact").join(f));
    assert!(
        same < 1e-5,
        "0/1 soft targets differ from the labels by {same}"
    );
    let moved = max_diff(&out("hard").join(f), &out("soft").join(f));
    assert!(
        moved > 1e-4,
        "0.25/0.75 soft targets trained like the labels ({moved})"
    );
    let card = json(&out("soft").join("model.json"));
    assert_eq!(card["training"]["soft_target"]["column"], "p_spot");
    // A value that contradicts the label is refused, naming the image.
    let bad = manifest("bad.csv", ["0.9", "1"]);
    let cfg = out("bad.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let err = fails(
        &train_args(&bad, &out("bad"), &cfg),
        gcm_inspect::error::exit::DATA,
    );
    assert!(
        err.contains("bad.csv") && err.contains(".png") && err.contains("contradicts"),
        "{err}"
    );
}

#[test]
fn init_fine_tunes_from_a_model_and_keeps_its_classes() {
    let t = tempfile::tempdir().unwrap();
    let (data, base, tuned) = (
        t.path().join("data"),
        t.path().join("base"),
        t.path().join("tuned"),
    );
    synth(&data, 16, 16, "ok,spot", 3);
    tiny_model(&base, &["ok", "spot", "crack"], 16, 1);
    ok(&[
        "train",
        "--data",
        p(&data),
        "--out",
        p(&tuned),
        "--init",
        p(&base),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
    ]);
    let card = json(&tuned.join("model.json"));
    assert_eq!(
        card["model"]["classes"],
        serde_json::json!(["ok", "spot", "crack"])
    );
    // The card says which model it started from, and a resumed run's cards
    // still do.
    let base_card = json(&base.join("model.json"));
    let said_init = serde_json::json!({
        "model": std::fs::canonicalize(&base).unwrap(),
        "weights_sha256": base_card["weights_sha256"],
    });
    assert_eq!(card["init"], said_init);
    ok(&resume_args(&data, &tuned, "2"));
    for f in ["model.json", "last/model.json"] {
        let c = json(&tuned.join(f));
        assert_eq!(c["init"], said_init, "{f}");
    }
    assert_eq!(json(&tuned.join("last/train_state.json"))["epochs_done"], 2);
    // A label the model does not know is refused.
    let other = t.path().join("other");
    synth(&other, 8, 16, "ok,inactive", 3);
    let err = fails(
        &[
            "train",
            "--data",
            p(&other),
            "--out",
            p(&t.path().join("x")),
            "--init",
            p(&base),
            "--no-progress",
        ],
        gcm_inspect::error::exit::DATA,
    );
    assert!(err.contains("inactive"), "{err}");
}

#[test]
fn manifest_splits_drive_training_and_eval() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    synth(&data, 24, 16, "ok,spot", 4);
    let mut csv = String::from("path,label,split\n");
    for (i, f) in files(&data)
        .iter()
        .filter(|f| f.ends_with(".png"))
        .enumerate()
    {
        let label = f.split('/').next().unwrap();
        let split = ["train", "train", "val", "test"][i % 4];
        csv += &format!("data/{f},{label},{split}\n");
    }
    let manifest = t.path().join("m.csv");
    std::fs::write(&manifest, csv).unwrap();
    let out = t.path().join("model");
    train_tiny(&manifest, &out, "1");
    let card = json(&out.join("model.json"));
    assert_eq!(card["data"]["split"]["kind"], "manifest");
    assert_eq!(card["metrics"]["val_images"], 6);
    let ev: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&out),
        "--data",
        p(&manifest),
        "--split",
        "test",
        "--json",
    ]))
    .unwrap();
    assert_eq!(ev["images"], 6);
    let a = ev["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&a));
    for k in ["raw", "abs", "ccm"] {
        assert!(ev["decline"][k]["decline"].is_number(), "{ev}");
    }
    // The CCM classifies exactly like the network: the evidence is the decision.
    assert_eq!(ev["decline"]["ccm"]["accuracy"].as_f64().unwrap(), a);
}

#[test]
fn explain_json_and_evidence_agree_with_eval() {
    let t = tempfile::tempdir().unwrap();
    let (data, model, ev_dir) = (
        t.path().join("data"),
        t.path().join("m"),
        t.path().join("ev"),
    );
    synth(&data, 8, 16, "ok,crack", 5);
    tiny_model(&model, &["crack", "ok"], 16, 2);
    let imgs: Vec<String> = files(&data)
        .into_iter()
        .filter(|f| f.ends_with(".png"))
        .map(|f| p(&data.join(f)).to_string())
        .collect();
    let mut args = vec![
        "explain",
        "--model",
        p(&model),
        "--json",
        "--out",
        p(&ev_dir),
    ];
    args.extend(imgs.iter().map(String::as_str));
    let out: Value = serde_json::from_str(&ok(&args)).unwrap();
    let list = out.as_array().unwrap();
    assert_eq!(list.len(), 8);
    let mut correct = 0;
    for r in list {
        let scores: Vec<f64> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap())
            .unwrap();
        assert_eq!(r["classes"][best], r["decision"]);
        assert_eq!(r["evidence_reproduces"], true);
        // Re-read the evidence from disk: it reproduces the printed scores.
        let (_, rep) =
            gcm_inspect::evidence::reproduce(std::path::Path::new(r["evidence"].as_str().unwrap()))
                .unwrap();
        assert!(rep.ok());
        for (a, b) in rep.scores.iter().zip(&scores) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        let truth = std::path::Path::new(r["image"].as_str().unwrap())
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        correct += (r["decision"] == truth.as_str()) as usize;
    }
    let ev: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--json",
    ]))
    .unwrap();
    assert_eq!(ev["accuracy"].as_f64().unwrap(), correct as f64 / 8.0);
    // Decided-class heatmap only, unless --all-classes.
    let one = &list[0];
    let d = std::path::Path::new(one["evidence"].as_str().unwrap());
    assert!(d
        .join(format!("cwm_{}.png", one["decision"].as_str().unwrap()))
        .exists());
    assert_eq!(
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("cwm_"))
            .count(),
        1
    );
}
