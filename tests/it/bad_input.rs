//! Bad input: every case gives a clear error naming what is wrong, and the
//! documented exit code, never a panic.

use crate::util::*;
use std::collections::HashMap;

const DATA: i32 = gcm_inspect::error::exit::DATA;
const MODEL: i32 = gcm_inspect::error::exit::MODEL;
const CONFIG: i32 = gcm_inspect::error::exit::CONFIG;
const NO_INPUT: i32 = gcm_inspect::error::exit::NO_INPUT;

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        "1",
        "--no-progress",
    ]
}

#[test]
fn missing_data_dir_is_named() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let err = fails(&train_args(p(&missing), p(&t.path().join("o"))), NO_INPUT);
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn empty_data_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = fails(&train_args(p(&empty), p(&t.path().join("o"))), DATA);
    assert!(err.contains("no class folders"), "{err}");
}

#[test]
fn class_folder_without_images_is_named() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("d");
    synth(&data, 4, 16, "ok,spot", 1);
    std::fs::create_dir(data.join("crack")).unwrap();
    std::fs::write(data.join("crack/readme.txt"), "no images here").unwrap();
    let err = fails(&train_args(p(&data), p(&t.path().join("o"))), DATA);
    assert!(
        err.contains("crack") && err.contains("holds no images"),
        "{err}"
    );
}

#[test]
fn corrupt_image_is_named_in_train_and_explain() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("d");
    synth(&data, 8, 16, "ok,spot", 1);
    let bad = data.join("spot/zz_truncated.png");
    let good = std::fs::read(data.join("spot/spot_00001.png")).unwrap();
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let err = fails(&train_args(p(&data), p(&t.path().join("o"))), DATA);
    assert!(err.contains("zz_truncated.png"), "{err}");
    let model = t.path().join("m");
    tiny_model(&model, &["ok", "spot"], 16, 1);
    let err = fails(&["explain", "--model", p(&model), p(&bad)], DATA);
    assert!(
        err.contains("zz_truncated.png") && err.contains("cannot decode"),
        "{err}"
    );
}

#[test]
fn rgb_image_for_a_grey_model_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("m");
    tiny_model(&model, &["ok", "spot"], 16, 1);
    let img = t.path().join("colour.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([10, 200, 30]))
        .save(&img)
        .unwrap();
    let err = fails(&["explain", "--model", p(&model), p(&img)], DATA);
    assert!(
        err.contains("colour.png") && err.contains("RGB") && err.contains("grey"),
        "{err}"
    );
}

#[test]
fn other_size_needs_resize() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("m");
    tiny_model(&model, &["ok", "spot"], 16, 1);
    let img = t.path().join("big.png");
    image::GrayImage::from_pixel(20, 24, image::Luma([100]))
        .save(&img)
        .unwrap();
    let err = fails(&["explain", "--model", p(&model), p(&img)], DATA);
    assert!(err.contains("big.png") && err.contains("--resize"), "{err}");
    let out = ok(&[
        "explain",
        "--model",
        p(&model),
        p(&img),
        "--resize",
        "--json",
    ]);
    assert!(out.contains("\"decision\""), "{out}");
}

/// Rewrites a model's weights through `edit`, and its card's sha256 to match,
/// so that only the edit itself is wrong.
fn edit_weights(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut HashMap<String, candle_core::Tensor>),
) {
    let mut t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    card["weights_sha256"] = gcm_inspect::model::checkpoint::sha256_hex(&bytes).into();
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_string(&card).unwrap(),
    )
    .unwrap();
}

fn explain_fails_with_model(edit: impl FnOnce(&std::path::Path)) -> String {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("m");
    tiny_model(&model, &["ok", "spot"], 16, 1);
    edit(&model);
    let img = t.path().join("x.png");
    image::GrayImage::from_pixel(16, 16, image::Luma([100]))
        .save(&img)
        .unwrap();
    fails(&["explain", "--model", p(&model), p(&img)], MODEL)
}

#[test]
fn missing_tensor_is_named() {
    let err = explain_fails_with_model(|m| {
        edit_weights(m, |t| {
            t.remove("decoder.1.conv.weight");
        })
    });
    assert!(
        err.contains("decoder.1.conv.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let err = explain_fails_with_model(|m| {
        edit_weights(m, |t| {
            t.insert(
                "head.bias".into(),
                candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap(),
            );
        })
    });
    assert!(
        err.contains("head.bias") && err.contains("[3]") && err.contains("[2]"),
        "{err}"
    );
}

#[test]
fn nan_in_weights_is_named() {
    let err = explain_fails_with_model(|m| {
        edit_weights(m, |t| {
            let w = t["encoder.2.conv.weight"].clone();
            let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[5] = f32::NAN;
            t.insert(
                "encoder.2.conv.weight".into(),
                candle_core::Tensor::from_vec(v, w.shape(), &candle_core::Device::Cpu).unwrap(),
            );
        })
    });
    assert!(
        err.contains("encoder.2.conv.weight") && err.contains("NaN"),
        "{err}"
    );
}

#[test]
fn card_inconsistent_with_weights_is_refused() {
    // Weights replaced behind the card's back: the sha256 no longer matches.
    let err = explain_fails_with_model(|m| {
        let t = tempfile::tempdir().unwrap();
        tiny_model(t.path(), &["ok", "spot"], 16, 99);
        std::fs::copy(
            t.path().join("model.safetensors"),
            m.join("model.safetensors"),
        )
        .unwrap();
    });
    assert!(
        err.contains("weights_sha256") && err.contains("does not match"),
        "{err}"
    );
    // A card that claims a third class: the head's shape gives it away.
    let err = explain_fails_with_model(|m| {
        let path = m.join("model.json");
        let mut card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        card["model"]["classes"] = serde_json::json!(["ok", "spot", "crack"]);
        std::fs::write(&path, serde_json::to_string(&card).unwrap()).unwrap();
    });
    assert!(
        err.contains("head.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn training_config_unknown_key_is_named_with_line() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("d");
    synth(&data, 4, 16, "ok,spot", 1);
    let cfg = t.path().join("train.yaml");
    std::fs::write(&cfg, "epochs: 2\nbatch_size: 8\nlearning_rate: 0.1\n").unwrap();
    let err = fails(
        &[
            "train",
            "--data",
            p(&data),
            "--out",
            p(&t.path().join("o")),
            "--config",
            p(&cfg),
        ],
        CONFIG,
    );
    assert!(
        err.contains("learning_rate") && err.contains("line 3") && err.contains("train.yaml"),
        "{err}"
    );
}

/// `gcm-inspect synth ... | head` where the reader has gone: the command ends
/// on SIGPIPE, as Unix tools do, with no panic on stderr.
#[cfg(target_os = "linux")]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    // The reader is gone before the command writes: its first line hits EPIPE.
    drop(reader);
    let child = bin()
        .args(["synth", "--out", p(&t.path().join("s")), "--count", "2"])
        .args(["--size", "16"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
    // Its work was done before it wrote the line.
    let written = files(&t.path().join("s"));
    assert_eq!(
        written.iter().filter(|f| f.ends_with(".png")).count(),
        2,
        "{written:?}"
    );
}
