//! `gcm-inspect paint-cracks` on a stand-in manifest with ELPV's layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::util::{fails, ok};

/// 60 cells of 90 x 90 (textured grey), path,label,split,probability,type:
/// 40 train (24 ok at p 0, 6 ok at p 0.3333, 10 defect) and 20 test.
fn stand_in(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut csv = String::from("path,label,split,probability,type\n");
    for i in 0..60u32 {
        let img = image::GrayImage::from_fn(90, 90, |x, y| {
            image::Luma([(120 + (x * 7 + y * 13 + i * 31) % 90) as u8])
        });
        let name = format!("images/cell{i:04}.png");
        img.save(root.join(&name)).unwrap();
        let (label, p) = match i % 6 {
            0 | 1 => ("defect", "1.0000"),
            2 => ("ok", "0.3333"),
            _ => ("ok", "0.0000"),
        };
        let split = if i < 40 { "train" } else { "test" };
        csv.push_str(&format!("{name},{label},{split},{p},mono\n"));
    }
    let m = root.join("binary.csv");
    std::fs::write(&m, csv).unwrap();
    m
}

/// Rows of a manifest written by paint-cracks: header -> value maps.
fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

fn grey(path: &str) -> image::GrayImage {
    image::open(path).unwrap().to_luma8()
}

#[test]
fn paint_cracks_paints_clean_training_cells_only_and_sets_the_validation_aside() {
    let t = tempfile::tempdir().unwrap();
    let m = stand_in(&t.path().join("elpv"));
    let out = t.path().join("painted");
    let said = ok(&[
        "paint-cracks",
        "--data",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(said.contains("painted"), "{said}");

    // task.csv: every row, test rows untouched, 15% of each label's
    // training rows (round(0.15 * 10) = 2 defects, round(0.15 * 30) = 4 ok)
    // marked val.
    let task = rows(&out.join("task.csv"));
    assert_eq!(task.len(), 60);
    let count = |label: &str, split: &str| {
        task.iter()
            .filter(|r| r["label"] == label && r["split"] == split)
            .count()
    };
    assert_eq!((count("defect", "val"), count("ok", "val")), (2, 4));
    assert_eq!(task.iter().filter(|r| r["split"] == "test").count(), 20);
    for (i, r) in task.iter().enumerate() {
        assert!(r["path"].ends_with(&format!("cell{i:04}.png")), "{r:?}");
        assert!(Path::new(&r["path"]).is_absolute());
        assert_eq!(r["type"], "mono");
    }
    let val: BTreeSet<&str> = task
        .iter()
        .filter(|r| r["split"] == "val")
        .map(|r| r["path"].as_str())
        .collect();
    let clean: BTreeSet<&str> = task
        .iter()
        .filter(|r| r["split"] == "train" && r["label"] == "ok" && r["probability"] == "0.0000")
        .map(|r| r["path"].as_str())
        .collect();

    // pretrain.csv: each clean training cell (not p 0.3333, not val, not
    // test) once as it is and once painted, both in the same split.
    let pre = rows(&out.join("pretrain.csv"));
    assert_eq!(pre.len(), 2 * clean.len());
    for pair in pre.chunks(2) {
        let (c, p) = (&pair[0], &pair[1]);
        assert!(
            clean.contains(c["path"].as_str()) && !val.contains(c["path"].as_str()),
            "{c:?}"
        );
        assert_eq!(
            (c["label"].as_str(), c["probability"].as_str()),
            ("ok", "0")
        );
        assert_eq!(
            (p["label"].as_str(), p["probability"].as_str()),
            ("defect", "1")
        );
        assert_eq!(c["split"], p["split"]);
        // The painted copy only darkens, along a thin line: some pixels,
        // far from all of them.
        let (a, b) = (grey(&c["path"]), grey(&p["path"]));
        assert_eq!(a.dimensions(), b.dimensions());
        let darker = a
            .pixels()
            .zip(b.pixels())
            .filter(|(x, y)| y[0] < x[0])
            .count();
        assert!(a.pixels().zip(b.pixels()).all(|(x, y)| y[0] <= x[0]));
        assert!(
            darker > 0 && darker < 90 * 90 / 4,
            "{darker} pixels darkened"
        );
    }
    let held = pre.iter().filter(|r| r["split"] == "val").count();
    assert_eq!(held, 2 * (0.15 * clean.len() as f64).round() as usize);

    // joint.csv: task.csv's rows, then every pretraining image as a
    // training row with the columns of its cell (probability 0 / 1).
    let joint = rows(&out.join("joint.csv"));
    assert_eq!(joint.len(), task.len() + pre.len());
    assert_eq!(joint[..task.len()], task[..]);
    for (j, r) in joint[task.len()..].iter().zip(&pre) {
        assert_eq!(
            j.keys().collect::<Vec<_>>(),
            task[0].keys().collect::<Vec<_>>()
        );
        assert_eq!((&j["path"], &j["label"]), (&r["path"], &r["label"]));
        assert_eq!(j["split"], "train");
        assert_eq!(j["type"], "mono");
        let p = if r["label"] == "ok" { "0" } else { "1" };
        assert_eq!(j["probability"], p);
    }

    // The same seed writes the same files.
    let again = t.path().join("again");
    ok(&[
        "paint-cracks",
        "--data",
        m.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("task.csv")).unwrap(),
        std::fs::read_to_string(again.join("task.csv")).unwrap()
    );
    for r in pre.iter().filter(|r| r["label"] == "defect") {
        let name = Path::new(&r["path"]).file_name().unwrap();
        assert_eq!(
            std::fs::read(&r["path"]).unwrap(),
            std::fs::read(again.join("images").join(name)).unwrap()
        );
    }
}

#[test]
fn paint_cracks_sets_aside_the_images_train_would_hold_out_with_the_same_seed() {
    let t = tempfile::tempdir().unwrap();
    let m = stand_in(&t.path().join("elpv"));
    let out = t.path().join("painted");
    ok(&[
        "paint-cracks",
        "--data",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    let cfg = t.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "epochs: 1\nseed: 3\nval_fraction: 0.15\nresize: true\nmodel:\n  input_rows: 16\n  input_cols: 16\n  encoder_widths: [2, 3, 4]\n",
    )
    .unwrap();
    let model = t.path().join("m");
    ok(&[
        "train",
        "--data",
        m.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--no-progress",
    ]);
    let held: BTreeSet<String> = rows(&model.join("validation.csv"))
        .into_iter()
        .map(|r| r["path"].clone())
        .collect();
    let set_aside: BTreeSet<String> = rows(&out.join("task.csv"))
        .into_iter()
        .filter(|r| r["split"] == "val")
        .map(|r| r["path"].clone())
        .collect();
    assert_eq!(held.len(), 6);
    assert_eq!(held, set_aside);
}

#[test]
fn paint_cracks_refuses_what_it_cannot_paint_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let m = stand_in(&t.path().join("elpv"));
    let out = t.path().join("o");
    let (data, o) = (m.to_str().unwrap(), out.to_str().unwrap());
    // No such column.
    let err = fails(
        &[
            "paint-cracks",
            "--data",
            data,
            "--out",
            o,
            "--clean-column",
            "p",
        ],
        gcm_inspect::error::exit::DATA,
    );
    assert!(err.contains("\"p\"") && err.contains("binary.csv"), "{err}");
    // No clean cells under that label.
    let err = fails(
        &[
            "paint-cracks",
            "--data",
            data,
            "--out",
            o,
            "--clean-label",
            "fine",
        ],
        gcm_inspect::error::exit::DATA,
    );
    assert!(
        err.contains("no clean training cells") && err.contains("fine"),
        "{err}"
    );
    // A colour image among the clean cells is named.
    let first_clean = t.path().join("elpv/images/cell0003.png");
    image::RgbImage::from_pixel(90, 90, image::Rgb([10, 200, 30]))
        .save(&first_clean)
        .unwrap();
    let err = fails(
        &["paint-cracks", "--data", data, "--out", o],
        gcm_inspect::error::exit::DATA,
    );
    assert!(
        err.contains("cell0003.png") && err.contains("greyscale"),
        "{err}"
    );
    // A manifest without splits.
    let plain = t.path().join("plain.csv");
    std::fs::write(&plain, "path,label\nelpv/images/cell0004.png,ok\n").unwrap();
    let err = fails(
        &[
            "paint-cracks",
            "--data",
            plain.to_str().unwrap(),
            "--out",
            o,
        ],
        gcm_inspect::error::exit::DATA,
    );
    assert!(err.contains("split"), "{err}");
    // A fraction out of range is a usage error.
    let err = fails(
        &[
            "paint-cracks",
            "--data",
            data,
            "--out",
            o,
            "--val-fraction",
            "1.5",
        ],
        gcm_inspect::error::exit::USAGE,
    );
    assert!(err.contains("--val-fraction"), "{err}");
}
