//! `scripts/fetch-elpv.sh` on a tiny generated stand-in with the ELPV wheel's
//! layout (no download): manifests, the shared stratified test split,
//! idempotence, wheel input, clear errors, and that `train`/`eval` read them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// Cells per defect probability in the stand-in (label, count).
const COUNTS: [(&str, usize); 4] = [
    ("0.0", 12),
    ("0.3333333333333333", 8),
    ("0.6666666666666666", 4),
    ("1.0", 8),
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-elpv.sh")
}

fn fetch(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env_remove("ELPV_FROM")
        .env_remove("ELPV_OUT")
        .output()
        .expect("bash runs")
}

fn fetch_ok(args: &[&str]) -> String {
    let o = fetch(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "fetch-elpv.sh {args:?} failed:\n{err}");
    err
}

fn fetch_fails(args: &[&str]) -> String {
    let o = fetch(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "fetch-elpv.sh {args:?}: {err}");
    err
}

/// `root/elpv_dataset/data/{labels.csv, images/cellNNNN.png}` as in the wheel:
/// 16x16 grey cells, darker with the defect probability, alternating mono/poly.
fn stand_in(root: &Path) -> PathBuf {
    let data = root.join("elpv_dataset/data");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let mut labels = String::new();
    let mut n = 0;
    for (k, (prob, count)) in COUNTS.iter().enumerate() {
        for _ in 0..*count {
            n += 1;
            let name = format!("images/cell{n:04}.png");
            let img = image::GrayImage::from_fn(16, 16, |x, y| {
                let crack = k > 0 && x == y;
                image::Luma([if crack {
                    20
                } else {
                    200 - 10 * k as u8 + (n % 7) as u8
                }])
            });
            img.save(data.join(&name)).unwrap();
            let kind = if n % 2 == 0 { "mono" } else { "poly" };
            labels += &format!("{name}  {prob:<18}  {kind}\n");
        }
    }
    std::fs::write(data.join("labels.csv"), labels).unwrap();
    root.to_path_buf()
}

struct Row {
    path: String,
    label: String,
    split: String,
    kind: String,
    probability: f64,
}

fn manifest(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,label,split,type,probability"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            Row {
                path: f[0].into(),
                label: f[1].into(),
                split: f[2].into(),
                kind: f[3].into(),
                probability: f[4].parse().unwrap(),
            }
        })
        .collect()
}

fn test_set(rows: &[Row]) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.split == "test")
        .map(|r| r.path.clone())
        .collect()
}

#[test]
fn fetch_elpv_writes_both_manifests_with_one_stratified_test_split() {
    let t = tempfile::tempdir().unwrap();
    let src = stand_in(&t.path().join("src"));
    let out = t.path().join("elpv");
    let log = fetch_ok(&["--from", p(&src), "--out", p(&out)]);
    assert!(log.contains("32 images, 24 train / 8 test"), "{log}");

    let binary = manifest(&out.join("binary.csv"));
    let four = manifest(&out.join("four_class.csv"));
    assert_eq!(binary.len(), 32);
    assert_eq!(four.len(), 32);
    for (b, f) in binary.iter().zip(&four) {
        assert_eq!((&b.path, &b.split, &b.kind), (&f.path, &f.split, &f.kind));
        assert!(out.join(&b.path).is_file(), "{} not unpacked", b.path);
        assert!(["mono", "poly"].contains(&b.kind.as_str()));
        let want = if b.probability >= 0.5 { "defect" } else { "ok" };
        assert_eq!(b.label, want, "{}", b.path);
        let four_label = match (b.probability * 3.0).round() as u32 {
            0 => "p0",
            1 => "p33",
            2 => "p67",
            _ => "p100",
        };
        assert_eq!(f.label, four_label, "{}", b.path);
        assert!(["train", "test"].contains(&b.split.as_str()));
    }
    // A quarter of every probability class is test (round half to even).
    let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in &four {
        let e = per.entry(r.label.as_str()).or_default();
        e.0 += 1;
        e.1 += (r.split == "test") as usize;
    }
    assert_eq!(per["p0"], (12, 3));
    assert_eq!(per["p33"], (8, 2));
    assert_eq!(per["p67"], (4, 1));
    assert_eq!(per["p100"], (8, 2));
    assert_eq!(test_set(&binary), test_set(&four));

    // Idempotent: a second run rewrites the same bytes and keeps the images.
    let before = std::fs::read(out.join("binary.csv")).unwrap();
    let log = fetch_ok(&["--from", p(&src), "--out", p(&out)]);
    assert!(!log.contains("unpacked"), "unpacked again:\n{log}");
    assert_eq!(std::fs::read(out.join("binary.csv")).unwrap(), before);

    // A lost image is noticed and the files are unpacked again.
    std::fs::remove_file(out.join(&binary[3].path)).unwrap();
    let log = fetch_ok(&["--from", p(&src), "--out", p(&out)]);
    assert!(log.contains("unpacked 32 images"), "{log}");
    assert!(out.join(&binary[3].path).is_file());
}

#[test]
fn fetch_elpv_reads_a_wheel_and_the_split_does_not_depend_on_the_source() {
    let t = tempfile::tempdir().unwrap();
    let src = stand_in(&t.path().join("src"));
    let wheel = t.path().join("elpv_dataset-1.0.0.post1-py3-none-any.whl");
    let z = Command::new("python3")
        .args(["-m", "zipfile", "-c", p(&wheel), "elpv_dataset"])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(z.success());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fetch_ok(&["--from", p(&wheel), "--out", p(&a)]);
    let o = Command::new("bash")
        .arg(script())
        .env("ELPV_FROM", &src)
        .env("ELPV_OUT", &b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for m in ["binary.csv", "four_class.csv"] {
        assert_eq!(
            std::fs::read(a.join(m)).unwrap(),
            std::fs::read(b.join(m)).unwrap(),
            "{m} differs between the wheel and the folder"
        );
    }
    assert_eq!(files(&a.join("images")).len(), 32);
}

#[test]
fn fetch_elpv_refuses_bad_sources_with_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let e = fetch_fails(&["--from", p(&t.path().join("nope")), "--out", p(&out)]);
    assert!(e.contains("no such file or folder"), "{e}");

    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fetch_fails(&["--from", p(&empty), "--out", p(&out)]);
    assert!(e.contains("no elpv_dataset/data/labels.csv"), "{e}");

    let not_zip = t.path().join("x.whl");
    std::fs::write(&not_zip, b"not a zip").unwrap();
    let e = fetch_fails(&["--from", p(&not_zip), "--out", p(&out)]);
    assert!(e.contains("not a wheel"), "{e}");

    let src = stand_in(&t.path().join("bad_prob"));
    let labels = src.join("elpv_dataset/data/labels.csv");
    let text = std::fs::read_to_string(&labels).unwrap();
    std::fs::write(&labels, text.replacen("0.0 ", "0.5 ", 1)).unwrap();
    let e = fetch_fails(&["--from", p(&src), "--out", p(&out)]);
    assert!(e.contains("line 1: probability 0.5"), "{e}");

    let src = stand_in(&t.path().join("missing_image"));
    std::fs::remove_file(src.join("elpv_dataset/data/images/cell0005.png")).unwrap();
    let e = fetch_fails(&["--from", p(&src), "--out", p(&out)]);
    assert!(e.contains("images/cell0005.png, which is missing"), "{e}");

    let e = fetch_fails(&["--bogus"]);
    assert!(e.contains("unknown argument: --bogus"), "{e}");
}

/// The stand-in's manifests written by fetch-elpv.sh under `dir/elpv`, and a
/// tiny training config `dir/tiny.yaml`: batch 8, lr 0.05, a quarter held
/// out, resized, then `rest` (augmentation and model keys).
fn fetched_stand_in(dir: &Path, rest: &str) -> (PathBuf, PathBuf) {
    let src = stand_in(&dir.join("src"));
    let out = dir.join("elpv");
    fetch_ok(&["--from", p(&src), "--out", p(&out)]);
    let cfg = dir.join("tiny.yaml");
    std::fs::write(
        &cfg,
        format!("batch_size: 8\nlr: 0.05\nval_fraction: 0.25\nresize: true\n{rest}"),
    )
    .unwrap();
    (out, cfg)
}

#[test]
fn elpv_manifests_train_and_evaluate_on_their_test_split() {
    let t = tempfile::tempdir().unwrap();
    let (out, cfg) = fetched_stand_in(
        t.path(),
        "augment:\n  pad_crop_px: 0\n  vflip: true\n  rot90: true\nmodel:\n  input_rows: 8\n  input_cols: 8\n  encoder_widths: [2, 3, 4]\n  scaling: inverted\n",
    );
    let model = t.path().join("model");
    ok(&[
        "train",
        "--data",
        p(&out.join("four_class.csv")),
        "--out",
        p(&model),
        "--config",
        p(&cfg),
        "--epochs",
        "1",
        "--no-progress",
    ]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        card["model"]["classes"],
        serde_json::json!(["p0", "p100", "p33", "p67"])
    );
    // The test rows are not trained on: train + val hold the 24 train rows only.
    let seen: u64 = ["train_per_class", "val_per_class"]
        .iter()
        .flat_map(|k| card["data"][k].as_array().unwrap().clone())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(seen, 24);
    let report = ok(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&out.join("four_class.csv")),
        "--split",
        "test",
        "--resize",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    let acc = r["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{report}");
    assert_eq!(r["images"], 8, "{report}");

    // scripts/elpv-errors.py breaks the same decisions down by probability
    // and cell type: its error count is eval's, group by group.
    let errors = |model: &Path, split: &str| {
        let o = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/elpv-errors.py"))
            .args([
                "--model",
                p(model),
                "--data",
                p(&out.join("four_class.csv")),
                "--split",
                split,
            ])
            .args(["--bin", env!("CARGO_BIN_EXE_gcm-inspect"), "--json"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "elpv-errors.py --split {split}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let b: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        (b, stdout)
    };
    let (b, stdout) = errors(&model, "test");
    assert_eq!(b["images"], 8, "{stdout}");
    let groups = b["groups"].as_array().unwrap();
    let sum = |k: &str| groups.iter().map(|g| g[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("images"), 8, "{stdout}");
    let wrong = (8.0 * (1.0 - acc)).round() as u64;
    assert_eq!(b["errors"].as_u64(), Some(wrong), "{stdout}\n{report}");
    assert_eq!(sum("errors"), wrong, "{stdout}");
    // Per label, the groups hold as many images as eval's confusion row.
    let mut per_label: BTreeMap<String, u64> = BTreeMap::new();
    for g in groups {
        *per_label
            .entry(g["label"].as_str().unwrap().to_string())
            .or_default() += g["images"].as_u64().unwrap();
    }
    let confusion = r["confusion"].as_array().unwrap();
    let classes = r["classes"].as_array().unwrap();
    for (c, row) in classes.iter().zip(confusion) {
        let support: u64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            per_label[c.as_str().unwrap()],
            support,
            "{stdout}\n{report}"
        );
    }

    // On the model's own validation images (MODEL/validation.csv) it counts
    // the errors behind the best epoch's validation accuracy.
    let (v, stdout) = errors(&model, "val");
    let n_val = card["metrics"]["val_images"].as_u64().unwrap();
    let val_acc = card["metrics"]["val_accuracy"].as_f64().unwrap();
    assert_eq!(v["images"].as_u64(), Some(n_val), "{stdout}");
    let val_wrong = (n_val as f64 * (1.0 - val_acc)).round() as u64;
    assert_eq!(v["errors"].as_u64(), Some(val_wrong), "{stdout}\n{card}");

    // On the images it trained on: the 24 train rows less the validation ones.
    // The last epoch's folder (MODEL/last/) holds out the same images.
    for m in [model.clone(), model.join("last")] {
        let (f, stdout) = errors(&m, "fit");
        assert_eq!(f["images"].as_u64(), Some(24 - n_val), "{stdout}");
        assert!(f["errors"].as_u64().unwrap() <= 24 - n_val, "{stdout}");
    }
}

fn average(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/elpv-average.py"))
        .args(args)
        .args(["--bin", env!("CARGO_BIN_EXE_gcm-inspect")])
        .output()
        .unwrap()
}

/// Class scores per image, in the order asked, from `gcm-inspect explain --json`.
fn explain_scores(model: &Path, images: &[String]) -> Vec<Vec<f64>> {
    let mut args = vec!["explain", "--model", p(model), "--resize", "--json"];
    args.extend(images.iter().map(String::as_str));
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn elpv_average_decides_on_the_mean_score_and_refuses_models_that_saw_the_images() {
    let t = tempfile::tempdir().unwrap();
    let (out, cfg) = fetched_stand_in(
        t.path(),
        "model:\n  input_rows: 8\n  input_cols: 8\n  encoder_widths: [2, 3]\n  encoder_depths: [1, 1]\n  scaling: inverted\n",
    );
    let data = out.join("four_class.csv");
    let train = |data: &Path, seed: &str, dir: &Path| {
        ok(&[
            "train",
            "--data",
            p(data),
            "--out",
            p(dir),
            "--config",
            p(&cfg),
            "--epochs",
            "2",
            "--seed",
            seed,
            "--no-progress",
        ]);
    };
    let a = t.path().join("a");
    train(&data, "0", &a);
    // A second model held out the same images: the manifest names them as `val`.
    let val_list = a.join("validation.csv");
    let held: BTreeSet<String> = std::fs::read_to_string(&val_list)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines = text.lines();
    let mut with_val = format!("{}\n", lines.next().unwrap());
    for l in lines {
        let mut f: Vec<String> = l.split(',').map(str::to_string).collect();
        let abs = out.join(&f[0]).to_string_lossy().into_owned();
        if held.contains(&abs) {
            f[2] = "val".into();
        }
        f[0] = abs;
        with_val.push_str(&f.join(","));
        with_val.push('\n');
    }
    let data_v = t.path().join("with_val.csv");
    std::fs::write(&data_v, with_val).unwrap();
    let b = t.path().join("b");
    train(&data_v, "1", &b);

    // The script on two models (or saved scores), as JSON.
    let averaged = |x: &Path, y: &Path| {
        let o = average(&[
            "--data",
            p(&data),
            "--images",
            p(&val_list),
            p(x),
            p(y),
            "--json",
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        (v, stdout)
    };
    let (r, stdout) = averaged(&a, &b);

    // The same decisions, recomputed here from explain's scores.
    let rows: Vec<(String, String)> = std::fs::read_to_string(&val_list)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (path, label) = l.split_once(',').unwrap();
            (path.to_string(), label.to_string())
        })
        .collect();
    let images: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let classes: Vec<String> = r["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let (sa, sb) = (explain_scores(&a, &images), explain_scores(&b, &images));
    let decide = |s: &[f64]| {
        let k = (0..s.len())
            .max_by(|&i, &j| s[i].partial_cmp(&s[j]).unwrap())
            .unwrap();
        classes[k].clone()
    };
    let n = rows.len();
    let right = |d: &dyn Fn(usize) -> String| (0..n).filter(|&i| d(i) == rows[i].1).count();
    let acc_a = right(&|i| decide(&sa[i])) as f64 / n as f64;
    let acc_b = right(&|i| decide(&sb[i])) as f64 / n as f64;
    let mean = |i: usize| -> Vec<f64> {
        sa[i]
            .iter()
            .zip(&sb[i])
            .map(|(x, y)| (x + y) / 2.0)
            .collect()
    };
    let acc_ab = right(&|i| decide(&mean(i))) as f64 / n as f64;
    assert_eq!(r["images"], n, "{stdout}");
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9;
    assert!(close(&r["models"][0]["accuracy"], acc_a), "{stdout}");
    assert!(close(&r["models"][1]["accuracy"], acc_b), "{stdout}");
    assert!(
        close(&r["subsets"][0]["mean"], (acc_a + acc_b) / 2.0),
        "{stdout}"
    );
    assert_eq!(r["subsets"][1]["subsets"], 1, "{stdout}");
    assert!(close(&r["subsets"][1]["mean"], acc_ab), "{stdout}");
    // The first model alone is what `train` measured on these images.
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("model.json")).unwrap()).unwrap();
    assert!(
        close(
            &r["models"][0]["accuracy"],
            card["metrics"]["val_accuracy"].as_f64().unwrap()
        ),
        "{stdout}\n{card}"
    );
    let both_wrong = (0..n)
        .filter(|&i| decide(&sa[i]) != rows[i].1 && decide(&sb[i]) != rows[i].1)
        .count();
    let both_right = (0..n)
        .filter(|&i| decide(&sa[i]) == rows[i].1 && decide(&sb[i]) == rows[i].1)
        .count();
    assert_eq!(r["wrong_in_every_model"], both_wrong, "{stdout}");
    assert_eq!(r["right_in_every_model"], both_right, "{stdout}");
    let grouped: u64 = r["wrong_in_every_model_by_group"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["images"].as_u64().unwrap())
        .sum();
    assert_eq!(grouped as usize, both_wrong, "{stdout}");

    // Saved scores (explain's JSON) where the mean decides otherwise than
    // either model, or the larger of their scores: A is right on even images
    // and wrong on odd ones, B the reverse, and the mean is right on all.
    let wrong_class = |l: &str| {
        let k = classes.iter().position(|c| c == l).unwrap();
        classes[(k + 1) % classes.len()].clone()
    };
    let crafted = |name: &str, pick: &dyn Fn(usize) -> (f64, f64)| {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .enumerate()
            .map(|(i, (path, label))| {
                let (on_label, on_wrong) = pick(i);
                let w = wrong_class(label);
                let scores: Vec<f64> = classes
                    .iter()
                    .map(|c| {
                        if c == label {
                            on_label
                        } else if *c == w {
                            on_wrong
                        } else {
                            -10.0
                        }
                    })
                    .collect();
                serde_json::json!({"image": path, "classes": classes, "scores": scores})
            })
            .collect();
        let f = t.path().join(name);
        std::fs::write(&f, serde_json::to_string(&v).unwrap()).unwrap();
        f
    };
    let fa = crafted("a.json", &|i| {
        if i % 2 == 0 {
            (2.0, 0.0)
        } else {
            (2.0, 2.5)
        }
    });
    let fb = crafted("b.json", &|i| {
        if i % 2 == 0 {
            (0.0, 1.0)
        } else {
            (2.0, -2.0)
        }
    });
    let (c, stdout) = averaged(&fa, &fb);
    let evens = n.div_ceil(2) as f64 / n as f64;
    assert!(close(&c["models"][0]["accuracy"], evens), "{stdout}");
    assert!(close(&c["models"][1]["accuracy"], 1.0 - evens), "{stdout}");
    assert!(close(&c["subsets"][1]["mean"], 1.0), "{stdout}");
    assert_eq!(c["wrong_in_every_model"], 0, "{stdout}");
    assert_eq!(c["right_in_every_model"], 0, "{stdout}");
    assert!(close(&c["some_model_right"], 1.0), "{stdout}");

    // Models are refused, by name, on images other than those they held out
    // (here one image fewer: a model may have trained on the images asked).
    let list = std::fs::read_to_string(&val_list).unwrap();
    let fewer = t.path().join("fewer.csv");
    std::fs::write(
        &fewer,
        list.lines().take(n).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let o = average(&["--data", p(&data), "--images", p(&fewer), p(&a)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} held out other images", p(&a))),
        "{err}"
    );
    let o = average(&[
        "--data",
        p(&data),
        "--images",
        p(&val_list),
        p(&t.path().join("none")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("is not a model directory"),
        "{err}"
    );
}

/// A stand-in whose cell types come in runs, as ELPV's modules do: runs of
/// 120 mono, 60 poly, 90 mono and 30 poly cells make 2 + 1 + 2 + 1 module
/// blocks of 60, 60, 60, 45, 45 and 30 cells; the defects cluster by block.
fn stand_in_by_module(root: &Path) -> PathBuf {
    let data = root.join("elpv_dataset/data");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let img = image::GrayImage::from_pixel(8, 8, image::Luma([128]));
    let mut labels = String::new();
    let mut n = 0;
    for (kind, len) in [("mono", 120), ("poly", 60), ("mono", 90), ("poly", 30)] {
        for i in 0..len {
            n += 1;
            let name = format!("images/cell{n:04}.png");
            img.save(data.join(&name)).unwrap();
            // Every third block-sized stretch is mostly defective.
            let prob = if (n / 45) % 3 == 0 && i % 4 != 0 {
                "1.0"
            } else {
                "0.0"
            };
            labels += &format!("{name}  {prob}  {kind}\n");
        }
    }
    std::fs::write(data.join("labels.csv"), labels).unwrap();
    root.to_path_buf()
}

#[test]
fn the_grouped_split_keeps_module_blocks_whole_and_the_floor_script_reads_both_splits() {
    let t = tempfile::tempdir().unwrap();
    let src = stand_in_by_module(&t.path().join("src"));
    let out = t.path().join("elpv");
    let log = fetch_ok(&["--from", p(&src), "--out", p(&out)]);
    assert!(log.contains("grouped split: 6 module blocks"), "{log}");
    let text = std::fs::read_to_string(out.join("binary-grouped.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("path,label,split,type,probability,module")
    );
    let mut blocks: BTreeMap<u32, (usize, BTreeSet<String>)> = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let e = blocks.entry(f[5].parse().unwrap()).or_default();
        e.0 += 1;
        e.1.insert(f[2].to_string());
    }
    let sizes: Vec<usize> = blocks.values().map(|b| b.0).collect();
    assert_eq!(sizes, vec![60, 60, 60, 45, 45, 30]);
    assert!(
        blocks.values().all(|b| b.1.len() == 1),
        "a block on both sides"
    );
    let test: usize = blocks
        .values()
        .filter(|b| b.1.contains("test"))
        .map(|b| b.0)
        .sum();
    assert!((60..=90).contains(&test), "{test} of 300 cells in test");
    let four = std::fs::read_to_string(out.join("four_class-grouped.csv")).unwrap();
    let split = |t: &str| -> Vec<String> {
        t.lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().to_string())
            .collect()
    };
    assert_eq!(split(&text), split(&four));

    let floor = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/elpv-file-order-floor.py"))
        .arg(out.join("binary.csv"))
        .arg(out.join("binary-grouped.csv"))
        .output()
        .unwrap();
    assert!(
        floor.status.success(),
        "{}",
        String::from_utf8_lossy(&floor.stderr)
    );
    let table = String::from_utf8(floor.stdout).unwrap();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("binary-grouped.csv | "), "{table}");
}

/// `eval --sweep`'s predictions.csv with the columns the seed report reads:
/// (defective, reject score); the argmax class is `defect` at >= 0.5.
fn predictions(dir: &Path, cells: &[(bool, f64)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = String::from(
        "path,label,predicted,probability,margin,reject_score,verdict,defective,score_ok,score_defect\n",
    );
    for (i, &(defective, r)) in cells.iter().enumerate() {
        let label = if defective { "defect" } else { "ok" };
        let predicted = if r >= 0.5 { "defect" } else { "ok" };
        s += &format!(
            "c{i}.png,{label},{predicted},{},0,{r},PASS,{defective},0,0\n",
            r.max(1.0 - r)
        );
    }
    std::fs::write(dir.join("predictions.csv"), s).unwrap();
}

#[test]
fn the_seed_report_chooses_the_operating_point_on_validation_and_scores_it_on_test() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Validation: 10 ok cells; at <= 5% false rejects none may be rejected
    // (threshold just above 0.9), at <= 10% one (just above 0.8).
    let mut val: Vec<(bool, f64)> = [0.9, 0.8, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]
        .iter()
        .map(|&r| (false, r))
        .collect();
    val.push((true, 0.7));
    // Test: defects 0.95, 0.85, 0.6, 0.2 and ok cells 0.91, 0.1, 0.1, 0.1.
    let test = [
        (true, 0.95),
        (true, 0.85),
        (true, 0.6),
        (true, 0.2),
        (false, 0.91),
        (false, 0.1),
        (false, 0.1),
        (false, 0.1),
    ];
    for tta in ["none", "d4"] {
        predictions(&run.join(format!("val-{tta}")), &val);
        predictions(&run.join(format!("test-{tta}")), &test);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/elpv-seeds-report.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--run", p(&run), "--split", "grouped", "--seed", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["split"], "grouped");
    assert_eq!(line["seed"], 3);
    let r = &line["d4"];
    let close = |v: &serde_json::Value, want: f64| {
        let got = v.as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{v} != {want}");
    };
    // Validation: the ok cells at 0.9 and 0.8 are called defects.
    close(&r["val_accuracy"], 9.0 / 11.0);
    close(&r["accuracy"], 6.0 / 8.0);
    close(&r["defect_recall"], 3.0 / 4.0);
    close(&r["defect_precision"], 3.0 / 4.0);
    close(&r["ok_recall"], 3.0 / 4.0);
    // Only 0.6 lies within 0.5 +- 0.2; of the other 7, 0.2 (defect) and 0.91
    // (ok) are wrong.
    close(&r["review_share"], 1.0 / 8.0);
    close(&r["accuracy_outside_review"], 5.0 / 7.0);
    close(&r["at_frr_5"]["defect_recall"], 1.0 / 4.0);
    close(&r["at_frr_5"]["false_reject"], 1.0 / 4.0);
    assert!(r["at_frr_5"]["threshold"].as_f64().unwrap() > 0.9);
    close(&r["at_frr_10"]["defect_recall"], 2.0 / 4.0);
    assert!(r["at_frr_10"]["threshold"].as_f64().unwrap() > 0.8);

    // The table: two seeds of the same figures, so sd 0.
    let results = tmp.path().join("runs.jsonl");
    let mut two = String::from_utf8(out.stdout.clone()).unwrap();
    two += &two.replace("\"seed\": 3", "\"seed\": 4");
    std::fs::write(&results, two).unwrap();
    let table = Command::new("python3")
        .arg(&script)
        .arg(&results)
        .output()
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("| grouped | d4 | 3, 4 | 75.0 +- 0.0 | 75.0 +- 0.0 |"),
        "{table}"
    );
    assert!(table.contains("25.0 +- 0.0 (25.0 +- 0.0)"), "{table}");
    assert!(
        !table.contains("| flips |"),
        "no run was scored with flips: {table}"
    );
    assert!(
        table.contains(
            "| grouped | - | none | 3, 4 | 75.0 +- 0.0 | 75.0 +- 0.0 | 25.0 +- 0.0 (25.0 +- 0.0) |"
        ),
        "the summary, without a floor: {table}"
    );

    // With --floor the summary names what file order alone reaches: test
    // cells b and e (defect, ok) between training cells; k = 1 takes the
    // nearest (ties: the earlier), so it gets both right (100%), while the
    // majority of training labels (ok, 3 of 4) gets half.
    let manifest = tmp.path().join("m.csv");
    std::fs::write(
        &manifest,
        "path,label,split\na,defect,train\nb,defect,test\nc,ok,train\nd,ok,train\ne,ok,test\nf,ok,train\n",
    )
    .unwrap();
    let floor = format!("grouped={}", manifest.display());
    let table = Command::new("python3")
        .arg(&script)
        .args([p(&results), "--floor", &floor])
        .output()
        .unwrap();
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("| grouped | 100.0 / 50.0 | none | 3, 4 |"),
        "{table}"
    );
    let bad = Command::new("python3")
        .arg(&script)
        .args([p(&results), "--floor", "grouped"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SPLIT=MANIFEST"));

    // Scored again once flips predictions exist, into the results file: the
    // run's line is replaced (not added), gains flips, and keeps its
    // training time when none is given.
    predictions(&run.join("val-flips"), &val);
    predictions(&run.join("test-flips"), &[(true, 0.95), (false, 0.1)]);
    let into = |extra: &[&str]| {
        let o = Command::new("python3")
            .arg(&script)
            .args(["--run", p(&run), "--split", "grouped", "--seed", "3"])
            .args(extra)
            .args(["--results", p(&results)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty());
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines
    };
    let lines = into(&["--train-seconds", "120"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let lines = into(&[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let three = lines.iter().find(|l| l["seed"] == 3).unwrap();
    assert_eq!(three["train_seconds"], 120);
    close(&three["flips"]["accuracy"], 1.0);
    assert!(lines
        .iter()
        .any(|l| l["seed"] == 4 && l.get("flips").is_none()));

    // A run folder without predictions is named.
    let missing = Command::new("python3")
        .arg(&script)
        .args([
            "--run",
            p(&tmp.path().join("nothing")),
            "--split",
            "random",
            "--seed",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("val-none/predictions.csv"));
}

#[test]
fn seed_runs_written_at_once_by_side_by_side_series_are_all_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    predictions(&run.join("val-none"), &[(false, 0.1), (true, 0.9)]);
    predictions(&run.join("test-none"), &[(false, 0.2), (true, 0.8)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/elpv-seeds-report.py");
    let results = tmp.path().join("runs.jsonl");
    let write = |seed: usize| {
        Command::new("python3")
            .arg(&script)
            .args(["--run", p(&run), "--split", "random", "--seed"])
            .arg(seed.to_string())
            .args(["--train-seconds", "60", "--results", p(&results)])
            .spawn()
            .unwrap()
    };
    // Two series finishing in the same second once lost a line; eight
    // writers started together must leave eight whole lines.
    for round in 0..3 {
        let seeds: Vec<usize> = (round * 8..round * 8 + 8).collect();
        let children: Vec<_> = seeds.iter().map(|&s| write(s)).collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let text = std::fs::read_to_string(&results).unwrap();
        let got: BTreeSet<u64> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                v["seed"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(got, (0..round as u64 * 8 + 8).collect(), "{text}");
    }

    // A results file with a broken line is refused, naming file and line,
    // rather than rewritten without it.
    let mut text = std::fs::read_to_string(&results).unwrap();
    text += "ld\": 0.99, \"defect_recall\": 0.5}\n";
    std::fs::write(&results, &text).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(["--run", p(&run), "--split", "grouped", "--seed", "0"])
        .args(["--results", p(&results)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs.jsonl:25: not a JSON line"), "{err}");
    assert_eq!(std::fs::read_to_string(&results).unwrap(), text);
}
