//! Test-time symmetry averaging end to end: the averaged score is the mean
//! of the 8 (d4) or 4 (flips) symmetric images' scores, its evidence
//! reproduces it, the daemon's two divergence checks hold with it, and a
//! model trained without the symmetries is warned of.

use std::path::Path;

use image::{imageops, GrayImage};

use crate::daemon_util::{config, log_lines, summary, tiny_model, Daemon};
use crate::util::{fails, ok, p, run};

/// The 8 symmetries of a square image: quarter turns, then the same after
/// a left-right flip.
fn symmetries(img: &GrayImage) -> Vec<GrayImage> {
    let mut out = Vec::new();
    for flip in [false, true] {
        let mut g = if flip {
            imageops::flip_horizontal(img)
        } else {
            img.clone()
        };
        for _ in 0..4 {
            out.push(g.clone());
            g = imageops::rotate90(&g);
        }
    }
    out
}

fn scores(json: &str) -> Vec<Vec<f64>> {
    let v: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    v.iter()
        .map(|e| serde_json::from_value(e["scores"].clone()).unwrap())
        .collect()
}

/// Writes the symmetric images of a synthetic cracked cell numbered `which`
/// (as [`symmetries`] numbers them), scores each with `explain`, and checks
/// that `explain --tta TTA` on the first gives their mean, with evidence that
/// reproduces it. Returns the image files and the averaged scores.
fn averaged_is_the_mean(
    root: &Path,
    model: &Path,
    sample_seed: u64,
    which: &[usize],
    tta: &str,
) -> (Vec<String>, Vec<f64>) {
    let (_, px) = gcm_inspect::data::synth::sample(
        sample_seed,
        1,
        16,
        &[gcm_inspect::data::synth::Kind::Crack],
    );
    let img = GrayImage::from_raw(16, 16, px).unwrap();
    let all = symmetries(&img);
    let mut files = Vec::new();
    for &i in which {
        let f = root.join(format!("s{i}.png"));
        all[i].save(&f).unwrap();
        files.push(f.display().to_string());
    }
    let mut args = vec!["explain", "--model", p(model), "--json"];
    args.extend(files.iter().map(String::as_str));
    let each = scores(&ok(&args));
    let out = root.join(format!("ev-{tta}"));
    let json = ok(&[
        "explain",
        "--model",
        p(model),
        "--json",
        "--tta",
        tta,
        "--out",
        p(&out),
        &files[0],
    ]);
    let avg = scores(&json).remove(0);
    for (j, a) in avg.iter().enumerate() {
        let mean = each.iter().map(|s| s[j]).sum::<f64>() / which.len() as f64;
        assert!(
            (a - mean).abs() <= 1e-5 * mean.abs().max(1.0),
            "{tta}, class {j}: {a} vs {mean}"
        );
    }
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["evidence_reproduces"], true, "{json}");
    (files, avg)
}

#[test]
fn d4_scores_are_the_mean_of_the_eight_symmetric_images_and_their_evidence_reproduces() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 3);
    let (files, avg) = averaged_is_the_mean(root, &model, 5, &[0, 1, 2, 3, 4, 5, 6, 7], "d4");
    // A turned image has the same averaged scores.
    let turned = scores(&ok(&[
        "explain",
        "--model",
        p(&model),
        "--json",
        "--tta",
        "d4",
        &files[1],
    ]));
    for (a, b) in turned[0].iter().zip(avg) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

/// `--tta flips` is the mean over the identity, the half turn and the two
/// mirror images (`symmetries` numbers them 0, 2, 4, 6); a model card that
/// says it was trained without quarter turns draws a warning for d4 naming
/// the setting, and none for flips.
#[test]
fn flips_scores_are_the_mean_of_the_four_mirror_images_and_untrained_symmetries_are_warned_of() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 7);
    let (files, _) = averaged_is_the_mean(root, &model, 9, &[0, 2, 4, 6], "flips");

    // The card says the model was trained with flips but no quarter turns.
    let card_path = model.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["training"] =
        serde_json::json!({"augment": {"hflip": true, "vflip": true, "rot90": false}});
    std::fs::write(&card_path, serde_json::to_string_pretty(&card).unwrap()).unwrap();
    let warned = |tta: &str| {
        let o = run(&[
            "explain",
            "--model",
            p(&model),
            "--json",
            "--tta",
            tta,
            &files[0],
        ]);
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = warned("d4");
    assert!(e.contains("rot90 false") && e.contains("tta flips"), "{e}");
    let e = warned("flips");
    assert!(!e.contains("not trained with"), "{e}");
}

#[test]
fn the_daemon_with_d4_passes_both_divergence_checks_and_refuses_non_square_models() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 4);
    let cfg = config(
        root,
        &model,
        "  synthetic:\n    fps: 0\n    size_px: 24\n",
        "tta: d4\nevidence:\n  every_nth_frame: 2\nchecks:\n  reference_every_nth_frame: 1\n",
    );
    let (st, out, err) = Daemon::start(root, &["--config", p(&cfg), "--max-frames", "6"]).wait(120);
    assert!(st.success(), "{err}");
    assert_eq!(summary(&out)["divergences"].as_u64(), Some(0), "{out}");
    for l in log_lines(root) {
        assert!(l.checks.evidence.as_ref().unwrap().ok, "{l:?}");
        assert!(l.checks.reference.as_ref().unwrap().ok, "{l:?}");
    }
    let wide = root.join("wide");
    gcm_inspect_wide_model(&wide);
    let cfg = config(root, &wide, "  synthetic:\n    fps: 0\n", "tta: d4\n");
    let e = fails(&["check-config", p(&cfg)], gcm_inspect::error::exit::CONFIG);
    assert!(e.contains("tta") && e.contains("square"), "{e}");
}

/// A model of 16x32 input (not square).
fn gcm_inspect_wide_model(dir: &Path) {
    use gcm_inspect::model::{checkpoint, gcm, Gcm, ModelConfig};
    let mut cfg = ModelConfig::table3(16, 32, 1, vec!["ok".into(), "crack".into()]);
    cfg.encoder_widths = vec![2, 3, 4];
    let (_, vm) = Gcm::init(&cfg, 1, &candle_core::Device::Cpu).unwrap();
    checkpoint::save(dir, &gcm::varmap_tensors(&vm), checkpoint::new_card(cfg)).unwrap();
}
