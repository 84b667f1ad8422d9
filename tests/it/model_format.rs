//! `docs/model-format.md` against the library: the document's tensor and
//! card tables, expanded for several architectures, name exactly what
//! `checkpoint::save` writes; its input contract is the loader's; and a
//! reference written from the document's formulas alone (plain loops over
//! the safetensors bytes, no library code) reproduces the scores of
//! `gcm-inspect explain`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use gcm_inspect::model::checkpoint::{self, CardMetrics, InitSource};
use gcm_inspect::model::{gcm, Gcm, InputScaling, ModelConfig};
use serde_json::Value;

use crate::util::{ok, p};

const DOC: &str = include_str!("../../docs/model-format.md");

// ---------------------------------------------------------------------------
// Reading the document's machine-read tables.

/// The rows (cells, backticks removed) of the first markdown table after
/// the line containing `marker`, header row excluded.
fn table_after(marker: &str) -> Vec<Vec<String>> {
    let start = DOC
        .find(marker)
        .unwrap_or_else(|| panic!("docs/model-format.md has no {marker:?}"));
    let lines: Vec<&str> = DOC[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .collect();
    assert!(lines.len() > 2, "no table after {marker:?}");
    assert!(lines[1].contains("---"), "{marker:?}: not a table");
    lines[2..]
        .iter()
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().replace('`', "")).collect()
        })
        .collect()
}

/// The tensor table: (name pattern, shape formula, one for each).
fn tensor_rows() -> Vec<(String, Vec<String>, String)> {
    table_after("machine-read: the tensor table")
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), 3, "tensor table row {r:?}");
            let shape = r[1]
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            (r[0].clone(), shape, r[2].clone())
        })
        .collect()
}

/// The card table: field path -> documented type.
fn card_rows() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in table_after("machine-read: the card's fields") {
        assert_eq!(r.len(), 3, "card table row {r:?}");
        assert!(
            out.insert(r[0].clone(), r[1].clone()).is_none(),
            "{} listed twice",
            r[0]
        );
    }
    out
}

// ---------------------------------------------------------------------------
// The layer plan, as the document's prose states it.

/// One convolution layer: input and output channels, transposed or not.
#[derive(Clone, Copy, Debug)]
struct Layer {
    cin: usize,
    cout: usize,
    transposed: bool,
}

/// The encoder's layers, stage after stage (the first of each stage after
/// the first has stride 2, which the shapes do not show: the reference
/// below applies it).
fn encoder_layers(cfg: &ModelConfig) -> Vec<Layer> {
    let mut out: Vec<Layer> = Vec::new();
    for (&w, &d) in cfg.encoder_widths.iter().zip(&cfg.encoder_depths) {
        for _ in 0..d {
            let cin = out.last().map_or(cfg.input_channels, |l| l.cout);
            out.push(Layer {
                cin,
                cout: w,
                transposed: false,
            });
        }
    }
    out
}

fn decoder_layers(cfg: &ModelConfig) -> Vec<Layer> {
    let w = &cfg.encoder_widths;
    let s = w.len();
    let per = cfg.decoder_convs_per_stage + 1;
    (0..(s - 1) * per)
        .map(|j| {
            let t = s - 2 - j / per;
            if j % per == 0 {
                Layer {
                    cin: w[t + 1],
                    cout: w[t],
                    transposed: true,
                }
            } else {
                Layer {
                    cin: w[t],
                    cout: w[t],
                    transposed: false,
                }
            }
        })
        .collect()
}

fn decoder_prefixes(cfg: &ModelConfig) -> Vec<String> {
    if cfg.shared_decoder {
        vec!["decoder".into()]
    } else {
        (0..cfg.classes.len())
            .map(|n| format!("decoders.{n}"))
            .collect()
    }
}

/// The document's tensor table expanded for `cfg`: name -> shape.
fn documented_tensors(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let eval = |sym: &str, l: Option<&Layer>| -> usize {
        match sym {
            "cin" => l.expect("cin outside a layer").cin,
            "cout" => l.expect("cout outside a layer").cout,
            "N" => cfg.classes.len(),
            "W" => cfg.encoder_widths[0],
            "k" => cfg.head_kernel,
            n => n
                .parse()
                .unwrap_or_else(|_| panic!("unknown symbol {n:?} in the tensor table")),
        }
    };
    let mut out = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>| {
        assert!(
            out.insert(name.clone(), shape).is_none(),
            "{name} twice in the expansion"
        );
    };
    for (pattern, shape, each) in tensor_rows() {
        let dims = |l: Option<&Layer>| shape.iter().map(|s| eval(s, l)).collect::<Vec<_>>();
        match each.as_str() {
            "encoder layer" => {
                for (e, l) in encoder_layers(cfg).iter().enumerate() {
                    add(pattern.replace("{e}", &e.to_string()), dims(Some(l)));
                }
            }
            "decoder layer" | "decoder transposed convolution" | "decoder convolution" => {
                for prefix in decoder_prefixes(cfg) {
                    for (j, l) in decoder_layers(cfg).iter().enumerate() {
                        let wanted = match each.as_str() {
                            "decoder transposed convolution" => l.transposed,
                            "decoder convolution" => !l.transposed,
                            _ => true,
                        };
                        if wanted {
                            let name = pattern
                                .replace("{decoder}", &prefix)
                                .replace("{j}", &j.to_string());
                            add(name, dims(Some(l)));
                        }
                    }
                }
            }
            "model" => add(pattern.clone(), dims(None)),
            other => panic!("unknown 'one for each' {other:?} in the tensor table"),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Reading a safetensors file as the document describes it.

struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off: Vec<usize> = t["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let values = data[off[0]..off[1]]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(
            name.clone(),
            RawTensor {
                dtype: t["dtype"].as_str().unwrap().to_string(),
                shape: t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect(),
                data: values,
            },
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Configurations.

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

/// Table 3 and variations of it: narrow, per-class decoders, several
/// classes, RGB, four stages, one stage, no or two decoder convolutions
/// per stage, a 3x3 head.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    let t3 = |r, c, d, n| ModelConfig::table3(r, c, d, classes(n));
    let with = |name, mut cfg: ModelConfig, f: &dyn Fn(&mut ModelConfig)| {
        f(&mut cfg);
        (name, cfg)
    };
    vec![
        ("Table 3, RGB, 10 classes", t3(32, 32, 3, 10)),
        ("Table 3, grey, 2 classes", t3(64, 64, 1, 2)),
        with("narrow, grey, 2 classes", t3(8, 8, 1, 2), &|c| {
            c.encoder_widths = vec![2, 3, 4]
        }),
        with("per-class decoders, 3 classes", t3(8, 8, 1, 3), &|c| {
            c.encoder_widths = vec![2, 3, 4];
            c.shared_decoder = false
        }),
        with(
            "per-class decoders, RGB, 5 classes",
            t3(8, 12, 3, 5),
            &|c| {
                c.encoder_widths = vec![3, 5, 6];
                c.shared_decoder = false;
                c.clipped = true
            },
        ),
        with("four stages (the ELPV configs)", t3(16, 16, 1, 2), &|c| {
            c.encoder_widths = vec![16, 32, 64, 96];
            c.encoder_depths = vec![4, 3, 3, 2]
        }),
        with("one stage, 3x3 head", t3(5, 7, 1, 4), &|c| {
            c.encoder_widths = vec![3];
            c.encoder_depths = vec![2];
            c.head_kernel = 3
        }),
        with("no decoder convolutions", t3(8, 8, 3, 2), &|c| {
            c.encoder_widths = vec![2, 4, 5];
            c.decoder_convs_per_stage = 0
        }),
        with(
            "two decoder convolutions, per class",
            t3(4, 8, 1, 2),
            &|c| {
                c.encoder_widths = vec![2, 3];
                c.encoder_depths = vec![1, 2];
                c.decoder_convs_per_stage = 2;
                c.shared_decoder = false
            },
        ),
    ]
}

/// A model for `cfg` written by the library into `dir`.
fn write_model(dir: &Path, cfg: &ModelConfig, seed: u64) -> checkpoint::ModelCard {
    let (_, vm) = Gcm::init(cfg, seed, &Device::Cpu).unwrap();
    checkpoint::save(
        dir,
        &gcm::varmap_tensors(&vm),
        checkpoint::new_card(cfg.clone()),
    )
    .unwrap()
}

#[test]
fn the_tensor_table_names_exactly_the_tensors_the_library_writes() {
    let t = tempfile::tempdir().unwrap();
    for (i, (what, cfg)) in configs().into_iter().enumerate() {
        cfg.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
        let dir = t.path().join(i.to_string());
        let card = write_model(&dir, &cfg, i as u64);
        let written = read_safetensors(&dir.join("model.safetensors"));
        let documented = documented_tensors(&cfg);
        let names: BTreeSet<&String> = written.keys().collect();
        let doc_names: BTreeSet<&String> = documented.keys().collect();
        let extra: Vec<_> = names.difference(&doc_names).collect();
        let missing: Vec<_> = doc_names.difference(&names).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{what}: written but not documented {extra:?}; documented but not written {missing:?}"
        );
        for (name, t) in &written {
            assert_eq!(t.dtype, "F32", "{what}: {name}");
            assert_eq!(
                t.shape, documented[name],
                "{what}: {name} written as {:?}, documented as {:?}",
                t.shape, documented[name]
            );
            assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
        }
        // `parameters`: every value but the BatchNorm running statistics.
        let params: usize = documented
            .iter()
            .filter(|(n, _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(card.parameters, params, "{what}");
    }
}

#[test]
fn the_documented_parameter_counts_are_the_librarys() {
    // The counts the document quotes for Table 3 and the ELPV network.
    let count = |cfg: &ModelConfig| -> usize {
        documented_tensors(cfg)
            .iter()
            .filter(|(n, _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    let mut four = ModelConfig::table3(64, 64, 1, classes(2));
    four.encoder_widths = vec![16, 32, 64, 96];
    four.encoder_depths = vec![4, 3, 3, 2];
    for (cfg, quoted) in [
        (ModelConfig::table3(64, 64, 1, classes(2)), "158,514"),
        (ModelConfig::table3(64, 64, 1, classes(4)), "159,316"),
        (ModelConfig::table3(32, 32, 3, classes(10)), "162,010"),
        (four, "389,554"),
    ] {
        assert!(
            DOC.contains(quoted),
            "the document no longer quotes {quoted}"
        );
        let (net, _) = Gcm::init(&cfg, 0, &Device::Cpu).unwrap();
        assert_eq!(net.num_parameters(), count(&cfg));
        assert_eq!(count(&cfg).to_string(), quoted.replace(',', ""));
    }
}

/// `value`'s fields as dotted paths; `training` and `data` are free-form
/// (leaves).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(m) if prefix != "training" && prefix != "data" => {
            if !prefix.is_empty() {
                out.insert(prefix.to_string(), value.clone());
            }
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// Whether `v` has the documented type.
fn has_type(v: &Value, ty: &str) -> bool {
    if let Some(t) = ty.strip_suffix(" or null") {
        return v.is_null() || has_type(v, t);
    }
    if let Some(t) = ty.strip_prefix("array of ") {
        return v
            .as_array()
            .is_some_and(|a| a.iter().all(|e| has_type(e, t)));
    }
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        other => panic!("unknown type {other:?} in the card table"),
    }
}

#[test]
fn the_card_table_lists_exactly_the_fields_the_library_writes() {
    let documented = card_rows();
    let t = tempfile::tempdir().unwrap();

    // Every optional part present: a centred scaling, metrics, the initial
    // model, the training config and the data summary.
    let mut cfg = ModelConfig::table3(8, 8, 3, classes(2));
    cfg.encoder_widths = vec![2, 3, 4];
    cfg.scaling = InputScaling::Centred {
        mean: vec![0.25, 0.5, 0.75],
    };
    let (_, vm) = Gcm::init(&cfg, 1, &Device::Cpu).unwrap();
    let mut card = checkpoint::new_card(cfg);
    card.training = Some(serde_json::json!({"epochs": 3, "lr": 0.1}));
    card.data = Some(serde_json::json!({"source": "cells"}));
    card.metrics = Some(CardMetrics {
        epoch: 3,
        val_accuracy: 0.5,
        val_loss: 0.7,
        val_images: 10,
        train_accuracy: 0.6,
        train_loss: 0.65,
    });
    card.init = Some(InitSource {
        model: "models/pre".into(),
        weights_sha256: "0".repeat(64),
    });
    let full = t.path().join("full");
    checkpoint::save(&full, &gcm::varmap_tensors(&vm), card).unwrap();

    // Nothing optional: raw scaling, no metrics, no initial model.
    let bare = t.path().join("bare");
    let mut cfg = ModelConfig::table3(8, 8, 1, classes(2));
    cfg.encoder_widths = vec![2, 3, 4];
    write_model(&bare, &cfg, 2);

    // The baseline CNN's card: its fields are listed too.
    let cnn = t.path().join("cnn");
    let cfg = ModelConfig::table6(8, 8, 1, classes(2));
    let (_, vm) = gcm_inspect::model::Cnn::init(&cfg, 3, &Device::Cpu).unwrap();
    checkpoint::save(&cnn, &gcm::varmap_tensors(&vm), checkpoint::new_card(cfg)).unwrap();

    for (dir, everything) in [(&full, true), (&bare, false), (&cnn, false)] {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap())
                .unwrap();
        let mut written = BTreeMap::new();
        flatten("", &json, &mut written);
        for (field, value) in &written {
            let ty = documented.get(field).unwrap_or_else(|| {
                panic!("model.json has {field}, which docs/model-format.md does not list")
            });
            assert!(has_type(value, ty), "{field} = {value}, documented as {ty}");
        }
        let unwritten: Vec<&String> = documented
            .keys()
            .filter(|f| !written.contains_key(*f))
            .collect();
        // The baseline CNN's fields are absent from GCM cards.
        let unwritten: Vec<&String> = unwritten
            .into_iter()
            .filter(|f| *f != "model.arch" && *f != "model.stem_width")
            .collect();
        if everything {
            assert!(
                unwritten.is_empty(),
                "documented but never written: {unwritten:?}"
            );
        } else {
            // Only the optional parts may be absent.
            for f in unwritten {
                assert!(
                    f.starts_with("init") || f.starts_with("metrics.") || f == "model.scaling.mean",
                    "{f} not written for a plain model"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The input contract.

/// The three coefficients of the document's RGB-to-grey formula.
fn luma_coefficients() -> [f32; 3] {
    let line = DOC
        .lines()
        .find(|l| l.contains("Y = round(255 * ((("))
        .expect("the document's RGB-to-grey formula");
    let nums: Vec<f32> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|t| t.contains('.'))
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{line}");
    [nums[0], nums[1], nums[2]]
}

#[test]
fn the_documented_colour_to_grey_formula_is_the_loaders_for_every_colour() {
    use gcm_inspect::data::image_io::planar_from_dynamic;
    use image::{DynamicImage, RgbImage};
    let k = luma_coefficients();
    let q = 1.0f32 / 255.0;
    let img = RgbImage::from_fn(4096, 4096, |x, y| {
        let i = y * 4096 + x;
        image::Rgb([(i >> 16) as u8, (i >> 8) as u8, i as u8])
    });
    let grey = planar_from_dynamic(DynamicImage::ImageRgb8(img), 1, 4096, 4096).data;
    let mut wrong = Vec::new();
    for (i, &g) in grey.iter().enumerate() {
        let (r, gr, b) = ((i >> 16) as u8, (i >> 8) as u8, i as u8);
        let (rf, gf, bf) = (r as f32 * q, gr as f32 * q, b as f32 * q);
        let y = (255.0 * (((rf * k[0]) + gf * k[1]) + bf * k[2])).round() as u8;
        if y != g && wrong.len() < 10 {
            wrong.push(((r, gr, b), g, y));
        }
    }
    assert!(wrong.is_empty(), "(rgb, loader, document): {wrong:?}");
}

#[test]
fn sixteen_bit_grey_and_alpha_become_eight_bits_as_documented() {
    use gcm_inspect::data::image_io::planar_from_dynamic;
    use image::{DynamicImage, ImageBuffer, LumaA, Rgba};
    let la: ImageBuffer<LumaA<u16>, Vec<u16>> = ImageBuffer::from_fn(256, 256, |x, y| {
        LumaA([(y * 256 + x) as u16, (x * 97) as u16])
    });
    let got = planar_from_dynamic(DynamicImage::ImageLumaA16(la), 1, 256, 256).data;
    for (v, g) in got.iter().enumerate() {
        assert_eq!(*g as usize, (v + 128) / 257, "16-bit grey {v}");
    }
    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(16, 16, |x, y| {
        Rgba([x as u8, y as u8, (x * y) as u8, (x * 16) as u8])
    });
    let got = planar_from_dynamic(DynamicImage::ImageRgba8(rgba), 3, 16, 16).data;
    for y in 0..16 {
        for x in 0..16 {
            let i = y * 16 + x;
            assert_eq!(
                [got[i], got[256 + i], got[512 + i]],
                [x as u8, y as u8, (x * y) as u8],
                "alpha must be dropped, not blended"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// An independent reference: the document's formulas as plain loops.

/// splitmix64, for reproducible test values.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Feature maps: `c` planes of `h x w`, f64.
#[derive(Clone)]
struct Maps {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl Maps {
    fn zeros(c: usize, h: usize, w: usize) -> Self {
        Maps {
            c,
            h,
            w,
            v: vec![0.0; c * h * w],
        }
    }
    fn at(&self, c: usize, r: usize, col: usize) -> f64 {
        self.v[(c * self.h + r) * self.w + col]
    }
}

/// The document's convolution: `k` `[cout, cin, kk, kk]`, stride, padding kk/2.
fn conv(x: &Maps, k: &RawTensor, stride: usize) -> Maps {
    let (cout, cin, kk) = (k.shape[0], k.shape[1], k.shape[2]);
    assert_eq!(cin, x.c);
    let pad = kk / 2;
    let p = pad as isize;
    let oh = (x.h + 2 * pad - kk) / stride + 1;
    let ow = (x.w + 2 * pad - kk) / stride + 1;
    let mut y = Maps::zeros(cout, oh, ow);
    for o in 0..cout {
        for r in 0..oh {
            for c in 0..ow {
                let mut acc = 0.0;
                for i in 0..cin {
                    for a in 0..kk {
                        for b in 0..kk {
                            let (sr, sc) =
                                ((stride * r + a) as isize - p, (stride * c + b) as isize - p);
                            if sr < 0 || sc < 0 || sr >= x.h as isize || sc >= x.w as isize {
                                continue;
                            }
                            let wv = k.data[((o * cin + i) * kk + a) * kk + b] as f64;
                            acc += wv * x.at(i, sr as usize, sc as usize);
                        }
                    }
                }
                y.v[(o * oh + r) * ow + c] = acc;
            }
        }
    }
    y
}

/// The document's transposed convolution: `k` `[cin, cout, 3, 3]`, stride
/// 2, padding 1, output padding 1.
fn deconv(x: &Maps, k: &RawTensor) -> Maps {
    let (cin, cout) = (k.shape[0], k.shape[1]);
    assert_eq!(cin, x.c);
    let (oh, ow) = (2 * x.h, 2 * x.w);
    let mut y = Maps::zeros(cout, oh, ow);
    for i in 0..cin {
        for r0 in 0..x.h {
            for c0 in 0..x.w {
                let xv = x.at(i, r0, c0);
                for a in 0..3 {
                    for b in 0..3 {
                        let (r, c) = ((2 * r0 + a) as isize - 1, (2 * c0 + b) as isize - 1);
                        if r < 0 || c < 0 || r >= oh as isize || c >= ow as isize {
                            continue;
                        }
                        for o in 0..cout {
                            let wv = k.data[((i * cout + o) * 3 + a) * 3 + b] as f64;
                            y.v[(o * oh + r as usize) * ow + c as usize] += wv * xv;
                        }
                    }
                }
            }
        }
    }
    y
}

/// BatchNorm (inference) and ReLU, from the tensors under `prefix.bn`.
fn bn_relu(y: &mut Maps, t: &BTreeMap<String, RawTensor>, prefix: &str, eps: f64) {
    let get = |f: &str| &t[&format!("{prefix}.bn.{f}")].data;
    let (g, b, m, v) = (
        get("weight"),
        get("bias"),
        get("running_mean"),
        get("running_var"),
    );
    let hw = y.h * y.w;
    for o in 0..y.c {
        let s = g[o] as f64 / (v[o] as f64 + eps).sqrt();
        for z in &mut y.v[o * hw..(o + 1) * hw] {
            *z = ((*z - m[o] as f64) * s + b[o] as f64).max(0.0);
        }
    }
}

/// One pass of the documented triangle resize over `n` source values
/// `src(i)` to `m` outputs, in f32.
fn tent_weights(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = n as f32 / m as f32;
    let scale = if ratio < 1.0 { 1.0 } else { ratio };
    let support = scale;
    (0..m)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, n as i64 - 1) as usize;
            let right =
                ((centre + support).ceil() as i64).clamp(left as i64 + 1, n as i64) as usize;
            let mut w: Vec<f32> = (left..right)
                .map(|i| {
                    let x = (i as f32 - (centre - 0.5)) / scale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let sum: f32 = w.iter().fold(0.0, |a, b| a + b);
            for v in &mut w {
                *v /= sum;
            }
            (left, w)
        })
        .collect()
}

/// The documented resize of one 8-bit plane `h x w` to `rows x cols`.
fn resize(plane: &[u8], h: usize, w: usize, rows: usize, cols: usize) -> Vec<u8> {
    if (h, w) == (rows, cols) {
        return plane.to_vec();
    }
    let vert = tent_weights(h, rows);
    let mut mid = vec![0f32; rows * w];
    for (o, (left, ws)) in vert.iter().enumerate() {
        for x in 0..w {
            let mut t = 0f32;
            for (i, wt) in ws.iter().enumerate() {
                t += plane[(left + i) * w + x] as f32 * wt;
            }
            mid[o * w + x] = t;
        }
    }
    let horiz = tent_weights(w, cols);
    let mut out = vec![0u8; rows * cols];
    for y in 0..rows {
        for (o, (left, ws)) in horiz.iter().enumerate() {
            let mut t = 0f32;
            for (i, wt) in ws.iter().enumerate() {
                t += mid[y * w + left + i] * wt;
            }
            out[y * cols + o] = t.clamp(0.0, 255.0).round() as u8;
        }
    }
    out
}

/// The scaled input x from 8-bit planes, as the document's step 5.
fn scaled(planes: &[Vec<u8>], scaling: &Value) -> Vec<Vec<f32>> {
    planes
        .iter()
        .enumerate()
        .map(|(d, pl)| {
            let (a, b) = match scaling["kind"].as_str().unwrap() {
                "raw" => (1.0f32, 0.0f32),
                "inverted" => (-1.0, 1.0),
                "centred" => (1.0, -(scaling["mean"][d].as_f64().unwrap() as f32)),
                k => panic!("scaling {k}"),
            };
            pl.iter().map(|&p| a * (p as f32 / 255.0) + b).collect()
        })
        .collect()
}

/// Scores and probabilities of a model directory for the scaled input,
/// from `model.json`, `model.safetensors` and the document alone.
fn reference_scores(dir: &Path, x: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    let m = &card["model"];
    let u = |v: &Value| v.as_u64().unwrap() as usize;
    let (rows, cols, d) = (
        u(&m["input_rows"]),
        u(&m["input_cols"]),
        u(&m["input_channels"]),
    );
    let n = m["classes"].as_array().unwrap().len();
    let widths: Vec<usize> = m["encoder_widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect();
    let depths: Vec<usize> = m["encoder_depths"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect();
    let per = u(&m["decoder_convs_per_stage"]) + 1;
    let eps = m["bn_eps"].as_f64().unwrap();
    let t = read_safetensors(&dir.join("model.safetensors"));

    let mut h = Maps {
        c: d,
        h: rows,
        w: cols,
        v: x.iter().flatten().map(|&v| v as f64).collect(),
    };
    let input = h.clone();
    // Encoder: stage after stage; the first layer of stages after the first has stride 2.
    let mut e = 0;
    for (s, &depth) in depths.iter().enumerate() {
        for pos in 0..depth {
            let stride = if s > 0 && pos == 0 { 2 } else { 1 };
            let prefix = format!("encoder.{e}");
            h = conv(&h, &t[&format!("{prefix}.conv.weight")], stride);
            bn_relu(&mut h, &t, &prefix, eps);
            e += 1;
        }
    }
    let decoders: Vec<String> = if m["shared_decoder"].as_bool().unwrap() {
        vec!["decoder".into()]
    } else {
        (0..n).map(|j| format!("decoders.{j}")).collect()
    };
    let decoded: Vec<Maps> = decoders
        .iter()
        .map(|dec| {
            let mut g = h.clone();
            for j in 0..(widths.len() - 1) * per {
                let prefix = format!("{dec}.{j}");
                g = if j % per == 0 {
                    deconv(&g, &t[&format!("{prefix}.deconv.weight")])
                } else {
                    conv(&g, &t[&format!("{prefix}.conv.weight")], 1)
                };
                bn_relu(&mut g, &t, &prefix, eps);
            }
            g
        })
        .collect();
    let hw = &t["head.weight"];
    let hb = &t["head.bias"];
    let (wch, k) = (hw.shape[1], hw.shape[2]);
    let clipped = m["clipped"].as_bool().unwrap();
    let mut scores = Vec::new();
    for class in 0..n {
        let g = &decoded[if decoders.len() == 1 { 0 } else { class }];
        let row = RawTensor {
            dtype: "F32".into(),
            shape: vec![1, wch, k, k],
            data: hw.data[class * wch * k * k..(class + 1) * wch * k * k].to_vec(),
        };
        let mut cwm = conv(g, &row, 1);
        assert_eq!((cwm.h, cwm.w), (rows, cols));
        let mut sum = 0.0;
        for r in 0..rows {
            for c in 0..cols {
                let mut v = cwm.at(0, r, c) + hb.data[class] as f64;
                if clipped {
                    v = v.max(0.0);
                }
                cwm.v[r * cols + c] = v;
                for dd in 0..d {
                    sum += v * input.at(dd, r, c);
                }
            }
        }
        scores.push(sum / (rows * cols * d) as f64);
    }
    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|s| (s - top).exp()).sum();
    let probs = scores.iter().map(|s| (s - top).exp() / z).collect();
    (scores, probs)
}

/// A model for `cfg` whose BatchNorm parameters, running statistics and head
/// bias are all different from their initial values (so the reference
/// exercises every formula).
fn write_perturbed_model(dir: &Path, cfg: &ModelConfig, seed: u64) {
    let (_, vm) = Gcm::init(cfg, seed, &Device::Cpu).unwrap();
    let mut rng = Rand(seed);
    // In name order, so that every run draws the same values.
    let mut tensors: BTreeMap<String, Tensor> = gcm::varmap_tensors(&vm).into_iter().collect();
    for (name, t) in tensors.iter_mut() {
        let range = if name.ends_with(".bn.weight") {
            (0.5, 1.5)
        } else if name.ends_with(".bn.bias") {
            (-0.2, 0.2)
        } else if name.ends_with(".running_mean") {
            (-0.3, 0.3)
        } else if name.ends_with(".running_var") {
            (0.5, 2.0)
        } else if name == "head.bias" {
            (-0.5, 0.5)
        } else {
            continue;
        };
        let v: Vec<f32> = (0..t.elem_count())
            .map(|_| rng.uniform(range.0, range.1))
            .collect();
        *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    }
    let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
    checkpoint::save(dir, &tensors, checkpoint::new_card(cfg.clone())).unwrap();
}

/// One test image: its raw samples (channel-interleaved, as stored) and
/// what the document makes of them before resizing (8-bit planes).
struct TestImage {
    name: &'static str,
    w: usize,
    h: usize,
    planes: Vec<Vec<u8>>,
}

/// Writes the test images for a model of `channels` channels and returns
/// them with their documented 8-bit planes.
fn write_images(
    dir: &Path,
    channels: usize,
    rng: &mut Rand,
    sizes: &[(usize, usize)],
) -> Vec<TestImage> {
    use image::{ImageBuffer, LumaA, Rgb, Rgba};
    let mut out = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let path = dir.join(format!("img{i}.png"));
        let (name, planes): (&'static str, Vec<Vec<u8>>) = match (channels, i % 2) {
            (1, 0) => {
                // 16-bit grey with alpha: 8 bits by (v + 128) div 257, alpha dropped.
                let px: Vec<[u16; 2]> = (0..w * h)
                    .map(|_| [rng.next() as u16, rng.next() as u16])
                    .collect();
                ImageBuffer::<LumaA<u16>, _>::from_fn(w as u32, h as u32, |x, y| {
                    LumaA(px[y as usize * w + x as usize])
                })
                .save(&path)
                .unwrap();
                let plane = px
                    .iter()
                    .map(|p| ((p[0] as u32 + 128) / 257) as u8)
                    .collect();
                ("16-bit grey + alpha", vec![plane])
            }
            (1, _) => {
                let px: Vec<u8> = (0..w * h).map(|_| rng.next() as u8).collect();
                image::GrayImage::from_raw(w as u32, h as u32, px.clone())
                    .unwrap()
                    .save(&path)
                    .unwrap();
                ("8-bit grey", vec![px])
            }
            (3, 0) => {
                let px: Vec<[u8; 4]> = (0..w * h)
                    .map(|_| (rng.next() as u32).to_le_bytes())
                    .collect();
                ImageBuffer::<Rgba<u8>, _>::from_fn(w as u32, h as u32, |x, y| {
                    Rgba(px[y as usize * w + x as usize])
                })
                .save(&path)
                .unwrap();
                let planes = (0..3).map(|c| px.iter().map(|p| p[c]).collect()).collect();
                ("8-bit RGB + alpha", planes)
            }
            _ => {
                let px: Vec<[u16; 3]> = (0..w * h)
                    .map(|_| [rng.next() as u16, rng.next() as u16, rng.next() as u16])
                    .collect();
                ImageBuffer::<Rgb<u16>, _>::from_fn(w as u32, h as u32, |x, y| {
                    Rgb(px[y as usize * w + x as usize])
                })
                .save(&path)
                .unwrap();
                let planes = (0..3)
                    .map(|c| {
                        px.iter()
                            .map(|p| ((p[c] as u32 + 128) / 257) as u8)
                            .collect()
                    })
                    .collect();
                ("16-bit RGB", planes)
            }
        };
        out.push(TestImage { name, w, h, planes });
    }
    out
}

#[test]
fn scores_recomputed_from_the_document_alone_match_explain() {
    let t = tempfile::tempdir().unwrap();
    // A grey Table-3-shaped model (narrow), inverted input; and a colour one
    // with per-class decoders, two decoder convolutions per stage, a 3x3
    // head, clipped maps and centred input.
    let grey = {
        let mut c = ModelConfig::table3(16, 16, 1, vec!["ok".into(), "defect".into()]);
        c.encoder_widths = vec![2, 3, 4];
        c.scaling = InputScaling::Inverted;
        c
    };
    let colour = {
        let mut c = ModelConfig::table3(8, 12, 3, classes(3));
        c.encoder_widths = vec![3, 4];
        c.encoder_depths = vec![2, 1];
        c.decoder_convs_per_stage = 2;
        c.head_kernel = 3;
        c.shared_decoder = false;
        c.clipped = true;
        c.scaling = InputScaling::Centred {
            mean: vec![0.3, 0.5, 0.7],
        };
        c.bn_eps = 1e-3;
        c
    };
    let mut worst = 0f64;
    for (i, cfg) in [grey, colour].into_iter().enumerate() {
        let (rows, cols, d) = (cfg.input_rows, cfg.input_cols, cfg.input_channels);
        let model = t.path().join(format!("model{i}"));
        write_perturbed_model(&model, &cfg, 10 + i as u64);
        let imgs_dir = t.path().join(format!("images{i}"));
        std::fs::create_dir_all(&imgs_dir).unwrap();
        let mut rng = Rand(100 + i as u64);
        // The model's size, smaller in one dimension and larger in the
        // other, and larger in both (the resize's three cases).
        let sizes = [
            (cols, rows),
            (cols + 7, rows - 3),
            (2 * cols + 1, 3 * rows - 1),
            (cols, rows),
        ];
        let images = write_images(&imgs_dir, d, &mut rng, &sizes);
        let files: Vec<String> = (0..images.len())
            .map(|j| p(&imgs_dir.join(format!("img{j}.png"))).to_string())
            .collect();
        let out = t.path().join(format!("evidence{i}"));
        let mut args = vec![
            "explain",
            "--model",
            p(&model),
            "--json",
            "--resize",
            "--out",
            p(&out),
        ];
        args.extend(files.iter().map(|s| s.as_str()));
        let explained: Value = serde_json::from_str(&ok(&args)).unwrap();
        for (j, img) in images.iter().enumerate() {
            let planes: Vec<Vec<u8>> = img
                .planes
                .iter()
                .map(|pl| resize(pl, img.h, img.w, rows, cols))
                .collect();
            // The 8-bit input the model saw (explain's evidence) is the document's.
            let seen = image::open(out.join(format!("img{j}")).join("input.png")).unwrap();
            let seen: Vec<Vec<u8>> = if d == 1 {
                vec![seen.to_luma8().into_raw()]
            } else {
                let rgb = seen.to_rgb8().into_raw();
                (0..3)
                    .map(|c| rgb.iter().skip(c).step_by(3).copied().collect())
                    .collect()
            };
            assert!(
                seen == planes,
                "model {i}, {} {}x{}: the 8-bit input differs from the document's",
                img.name,
                img.w,
                img.h
            );
            let card: Value =
                serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap())
                    .unwrap();
            let x = scaled(&planes, &card["model"]["scaling"]);
            let (scores, probs) = reference_scores(&model, &x);
            let e = &explained[j];
            let got = |k: &str| -> Vec<f64> {
                e[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            };
            let (gs, gp) = (got("scores"), got("probabilities"));
            for n in 0..scores.len() {
                let err = (gs[n] - scores[n]).abs().max((gp[n] - probs[n]).abs());
                worst = worst.max(err);
                assert!(
                    err <= 1e-5,
                    "model {i}, {}, class {n}: explain {} / {}, document {} / {}",
                    img.name,
                    gs[n],
                    gp[n],
                    scores[n],
                    probs[n]
                );
            }
            let best = (0..scores.len()).fold(0, |b, n| if scores[n] > scores[b] { n } else { b });
            assert_eq!(e["class_index"].as_u64().unwrap() as usize, best);
        }
    }
    println!("largest difference, explain against the document: {worst:.2e}");
}
