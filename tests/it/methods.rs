//! The baseline CNN (`train --arch cnn`) and its evidence methods
//! (`explain --method ...`) end to end on a tiny synthetic set.

use crate::util::*;
use serde_json::Value;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const CNN_YAML: &str = "batch_size: 16\nlr: 0.05\naugment:\n  pad_crop_px: 0\nmodel:\n  arch: cnn\n  encoder_widths: [4, 6, 8]\n";

/// Distinct colours in a PNG: a map that says something has more than one.
fn colours(path: &std::path::Path) -> usize {
    let img = image::open(path).unwrap().to_rgb8();
    let mut seen: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

#[test]
fn cnn_trains_and_explain_method_all_writes_every_methods_maps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = dir.path().join("cnn");
    let gcm = dir.path().join("gcm");
    synth(&data, 32, 32, "ok,crack", 5);
    let cfg = dir.path().join("cnn.yaml");
    std::fs::write(&cfg, CNN_YAML).unwrap();
    ok(&[
        "train",
        "--data",
        p(&data),
        "--out",
        p(&model),
        "--config",
        p(&cfg),
        "--epochs",
        "2",
        "--no-progress",
    ]);
    let card = json(&model.join("model.json"));
    assert_eq!(card["model"]["arch"], "cnn", "{card}");
    assert!(card["weights_sha256"].as_str().unwrap().len() == 64);

    // eval takes the CNN: accuracy, no decline rows (it has no class maps).
    let report: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["images"], 32);
    assert!(report["decline"].as_object().unwrap().is_empty());
    // --methods all: the methods' decline table, one row per method, each
    // map kind's B and decline consistent with A.
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--methods",
        "all",
        "--json",
    ]))
    .unwrap();
    let t = &v["methods"];
    let a = t["accuracy"].as_f64().unwrap();
    assert_eq!(a, v["accuracy"].as_f64().unwrap());
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        for k in ["raw", "abs", "blend", "image"] {
            let b = r["kinds"][k]["accuracy"].as_f64().unwrap();
            let d = r["kinds"][k]["decline"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&b));
            assert!(a == 0.0 || (d - (a - b) / a).abs() < 1e-9, "{r}");
        }
    }
    let md = ok(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--methods",
        "all",
    ]);
    assert!(md.contains("| guided-gradcam | cnn |"), "{md}");

    // bench takes the CNN: its forward, an evidence method, a training
    // step; a method of the other architecture is refused, naming why.
    for extra in [
        vec![],
        vec!["--method", "cav"],
        vec!["--method", "guided-gradcam"],
        vec!["--mode", "train"],
    ] {
        let mut args = vec![
            "bench",
            "--model",
            p(&model),
            "--batch",
            "2",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--min-seconds",
            "0",
            "--json",
        ];
        args.extend(&extra);
        let r: Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(r["arch"], "cnn", "{r}");
        assert_eq!(r["batch"], 2);
        assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
        if extra.first() == Some(&"--method") {
            assert_eq!(r["method"], extra[1]);
        }
    }
    let err = fails(
        &[
            "bench",
            "--model",
            p(&model),
            "--method",
            "gcm",
            "--iters",
            "1",
        ],
        64,
    );
    assert!(err.contains("cnn model") && err.contains("GCM"), "{err}");

    // A GCM beside it, for the grid's GCM column.
    let gcm_cfg = dir.path().join("gcm.yaml");
    std::fs::write(&gcm_cfg, TINY_TRAIN_YAML).unwrap();
    ok(&[
        "train",
        "--data",
        p(&data),
        "--out",
        p(&gcm),
        "--config",
        p(&gcm_cfg),
        "--epochs",
        "1",
        "--no-progress",
    ]);

    // With the GCM beside it: every method x map kind, and the
    // faithfulness columns, each row on its own model's accuracy.
    let gcm_eval: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&gcm),
        "--data",
        p(&data),
        "--json",
    ]))
    .unwrap();
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&model),
        "--gcm-model",
        p(&gcm),
        "--data",
        p(&data),
        "--methods",
        "all",
        "--steps",
        "8",
        "--json",
    ]))
    .unwrap();
    let t = &v["methods"];
    assert_eq!(t["faithfulness"]["steps"], 8);
    let fill = t["faithfulness"]["fill"][0].as_f64().unwrap();
    assert!(fill > 0.0 && fill < 1.0, "{fill}");
    let rows = t["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cam",
            "gradcam",
            "guided-backprop",
            "guided-gradcam",
            "cav",
            "gcm"
        ]
    );
    for r in rows {
        let want_a = match r["model"].as_str().unwrap() {
            "gcm" => gcm_eval["accuracy"].as_f64().unwrap(),
            _ => v["accuracy"].as_f64().unwrap(),
        };
        assert_eq!(r["accuracy"].as_f64().unwrap(), want_a, "{r}");
        assert_eq!(r["kinds"].as_object().unwrap().len(), 4, "{r}");
        let f = &r["faithfulness"];
        for k in ["deletion", "insertion", "road_morf", "road_lerf"] {
            let x = f[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} {r}");
        }
    }
    let g = &rows[5];
    // The CCM's sum is the GCM's score times the input size: classifying by
    // it is the GCM's decision (decline 0), and (i) raw matches eval's.
    assert_eq!(g["kinds"]["image"]["decline"].as_f64().unwrap(), 0.0, "{g}");
    assert_eq!(
        g["kinds"]["raw"]["accuracy"].as_f64().unwrap(),
        gcm_eval["decline"]["raw"]["accuracy"].as_f64().unwrap()
    );
    let md = ok(&[
        "eval",
        "--model",
        p(&model),
        "--gcm-model",
        p(&gcm),
        "--data",
        p(&data),
        "--methods",
        "all",
    ]);
    for want in [
        "| cav | cnn |",
        "| gcm | gcm |",
        "(iii) blend",
        "10 steps",
        "ROAD MoRF",
    ] {
        assert!(md.contains(want), "{want}: {md}");
    }

    let images: Vec<std::path::PathBuf> = ["crack", "ok"]
        .iter()
        .map(|c| {
            let d = data.join(c);
            let mut f: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            f.sort();
            f[0].clone()
        })
        .collect();
    let ev = dir.path().join("ev");
    let mut args = vec![
        "explain",
        "--model",
        p(&model),
        "--method",
        "all",
        "--gcm-model",
        p(&gcm),
        "--out",
        p(&ev),
        "--json",
    ];
    args.extend(images.iter().map(|i| p(i)));
    let out: Value = serde_json::from_str(&ok(&args)).unwrap();
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 2);
    for (r, img) in out.iter().zip(&images) {
        let stem = img.file_stem().unwrap().to_str().unwrap();
        let folder = ev.join(stem);
        let rec = json(&folder.join("methods.json"));
        let k = r["class_index"].as_u64().unwrap() as usize;
        let score = r["scores"][k].as_f64().unwrap();
        let names: Vec<&str> = rec["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["method"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "cam",
                "gradcam",
                "guided-backprop",
                "guided-gradcam",
                "cav",
                "gcm"
            ]
        );
        for m in rec["methods"].as_array().unwrap() {
            for f in [&m["weight_png"], &m["visual_png"]] {
                let f = folder.join(f.as_str().unwrap());
                assert!(colours(&f) > 2, "{} is (nearly) one colour", f.display());
            }
            let vals: Vec<f64> = m["map"]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let (rows, cols) = (
                m["map"]["rows"].as_u64().unwrap(),
                m["map"]["cols"].as_u64().unwrap(),
            );
            assert_eq!(vals.len() as u64, rows * cols);
            assert!(vals.iter().all(|v| v.is_finite()));
            let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert!(hi > lo, "{} map is constant", m["method"]);
        }
        // CAM with GAP + FC: the map's mean plus the class bias is the score.
        let cam = &rec["methods"][0];
        assert_eq!(cam["class_index"].as_u64().unwrap() as usize, k);
        let vals = cam["map"]["values"].as_array().unwrap();
        let mean = vals.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / vals.len() as f64;
        let bias = cam["bias"].as_f64().unwrap();
        assert!(
            (mean + bias - score).abs() < 1e-4,
            "CAM mean {mean} + bias {bias} vs score {score}"
        );
        // CAV at the input: the map's sum plus the biases' share is the score.
        let cav = &rec["methods"][4];
        let sum = cav["map"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum::<f64>();
        let absorbed = cav["absorbed"].as_f64().unwrap();
        assert_eq!(cav["layer"], 0);
        assert!(
            (sum + absorbed - score).abs() < 1e-3 * (1.0 + score.abs()),
            "CAV sum {sum} + absorbed {absorbed} vs score {score}"
        );
        // The GCM's CCM sums to its score times the input size (one channel).
        let g = &rec["methods"][5];
        let gvals = g["map"]["values"].as_array().unwrap();
        let gsum = gvals.iter().map(|v| v.as_f64().unwrap()).sum::<f64>();
        let gscore = g["score"].as_f64().unwrap();
        assert!(
            (gsum / gvals.len() as f64 - gscore).abs() < 1e-4,
            "CCM mean {} vs GCM score {gscore}",
            gsum / gvals.len() as f64
        );
        let grid = image::open(folder.join("compare.png")).unwrap();
        assert!(grid.width() > 5 * 32 && colours(&folder.join("compare.png")) > 50);
        assert!(folder.join("input.png").exists());
    }

    // One method writes only its own maps; the wrong model kind is refused.
    let one = dir.path().join("one");
    ok(&[
        "explain",
        "--model",
        p(&model),
        "--method",
        "gradcam",
        "--out",
        p(&one),
        p(&images[0]),
    ]);
    let stem = images[0].file_stem().unwrap().to_str().unwrap();
    let mut written = files(&one.join(stem));
    written.sort();
    assert_eq!(
        written,
        [
            "gradcam-visual.png",
            "gradcam-weight.png",
            "input.png",
            "methods.json"
        ]
    );
    let err = fails(
        &[
            "explain",
            "--model",
            p(&gcm),
            "--method",
            "cam",
            "--out",
            p(&one),
            p(&images[0]),
        ],
        64,
    );
    assert!(err.contains("baseline CNN"), "{err}");
    let err = fails(&["explain", "--model", p(&model), p(&images[0])], 65);
    assert!(err.contains("cnn"), "{err}");
}

#[test]
fn eval_methods_all_on_a_trained_gcm_ranks_its_ccm_faithfully() {
    // A GCM that has learnt the synthetic cracks (10 epochs on 200 cells),
    // evaluated on 48 others beside a briefly trained CNN: the CCM's
    // deletion curve stays below its insertion curve, and removing its
    // most relevant pixels (ROAD, imputed) lowers the probability more
    // than removing its least relevant ones.
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train"), dir.path().join("test"));
    synth(&train, 200, 32, "ok,crack", 3);
    synth(&test, 48, 32, "ok,crack", 4);
    let cfg = dir.path().join("small.yaml");
    std::fs::write(
        &cfg,
        "batch_size: 16\nlr: 0.05\naugment:\n  pad_crop_px: 0\nmodel:\n  encoder_widths: [8, 12, 16]\n",
    )
    .unwrap();
    let (gcm, cnn) = (dir.path().join("gcm"), dir.path().join("cnn"));
    for (out, epochs, arch) in [(&gcm, "10", "gcm"), (&cnn, "3", "cnn")] {
        ok(&[
            "train",
            "--data",
            p(&train),
            "--out",
            p(out),
            "--config",
            p(&cfg),
            "--arch",
            arch,
            "--epochs",
            epochs,
            "--no-progress",
        ]);
    }
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        p(&cnn),
        "--gcm-model",
        p(&gcm),
        "--data",
        p(&test),
        "--methods",
        "all",
        "--steps",
        "6",
        "--json",
    ]))
    .unwrap();
    let rows = v["methods"]["rows"].as_array().unwrap();
    let g = rows.iter().find(|r| r["method"] == "gcm").unwrap();
    let a = g["accuracy"].as_f64().unwrap();
    assert!(
        a >= 0.8,
        "the GCM did not learn the set (accuracy {a}): {g}"
    );
    assert_eq!(g["kinds"]["image"]["decline"].as_f64().unwrap(), 0.0, "{g}");
    let f = &g["faithfulness"];
    let get = |k: &str| f[k].as_f64().unwrap();
    assert!(get("deletion") < get("insertion"), "{f}");
    assert!(get("road_morf") < get("road_lerf"), "{f}");
}
