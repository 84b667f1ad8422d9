//! `gcm-inspect train`: trains a GCM on labelled images.
//!
//! Output folder:
//! * `model.safetensors`, `model.json`: the best epoch by validation accuracy
//!   (ties go to the lower validation loss): the model to use;
//! * `last/`: the last epoch's model plus `train_state.safetensors` (the
//!   optimiser's state) and `train_state.json` (epochs done, the config, best so far),
//!   which `--resume` continues from; with `ema_decay`, the models are the
//!   averaged weights and `last/train_weights.safetensors` the optimiser's own;
//! * `history.jsonl`: one line of metrics per epoch.

pub mod config;
pub mod data;
pub mod ema;
mod net;
pub mod optim;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{self, stratified_split_by_name, Dataset, Split};
use crate::data::ImageSet;
use crate::error::{Error, IoContext, Result};
use crate::eval::{evaluate, EvalReport};
use crate::model::checkpoint::{CardMetrics, InitSource};
use crate::model::ModelConfig;
use config::TrainConfig;
use net::Net;
use optim::Optimizer;
use run::{load_sets, Begin, DataPlan, Run};

/// How a run starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// A new run with this configuration, from a seeded init or from `init`'s
    /// weights (fine-tuning: the initial model's architecture and classes are kept).
    Fresh {
        config: Box<TrainConfig>,
        init: Option<PathBuf>,
    },
    /// Continue the run in `out/last/` with its saved configuration; `epochs`
    /// raises the total to train longer.
    Resume { epochs: Option<usize> },
}

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainJob {
    pub data: PathBuf,
    pub out: PathBuf,
    pub start: Start,
    pub device: Device,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// `last/train_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    pub config: TrainConfig,
    pub model: ModelConfig,
    pub best: Option<CardMetrics>,
    pub data: serde_json::Value,
    /// Updates folded into the weight average so far (`ema_decay`).
    #[serde(default)]
    pub ema_updates: u64,
    /// The model the run started from (`--init`), kept for the cards a
    /// resumed run writes.
    #[serde(default)]
    pub init: Option<InitSource>,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// With `ema_decay`: the validation accuracy of the optimiser's own
    /// weights (`val_accuracy` is the average's), to see what averaging gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_accuracy_train_weights: Option<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub best: CardMetrics,
    pub last: EpochRecord,
    pub parameters: usize,
    pub mean_epoch_seconds: f64,
}

const LAST: &str = "last";
const STATE_JSON: &str = "train_state.json";
const STATE_TENSORS: &str = "train_state.safetensors";
/// With `ema_decay`: the optimiser's own weights (the models hold the average).
const TRAIN_WEIGHTS: &str = "train_weights.safetensors";
/// The validation images of a run, a `path,label` manifest in the output folder.
const VAL_MANIFEST: &str = "validation.csv";

/// Trains as `job` says (see the module docs for what it writes).
pub fn train(job: TrainJob) -> Result<TrainSummary> {
    let ds = Dataset::open(&job.data)?;
    let begin = Begin::resolve(&job)?;
    let classes = begin.classes(&ds, &job.data)?;
    let (train_s, val_s, split_desc) = split(&ds, &begin.cfg)?;
    let (train_s, val_s, split_desc) = mix_in((train_s, val_s, split_desc), &begin.cfg, &classes)?;
    let shape = begin.input_shape(&train_s)?;
    let sets = load_sets(&job.data, &begin.cfg, (&train_s, &val_s), &classes, shape)?;
    let model_cfg = begin.architecture(shape, &classes, &sets.0)?;
    let plan = DataPlan {
        ds: &ds,
        split: split_desc,
        val: &val_s,
    };
    let mut run = Run::new(&job, &begin, model_cfg, classes, plan, (&sets.0, &sets.1))?;
    for epoch in run.start_epoch..run.epochs() {
        run.epoch(epoch, &sets.0, &sets.1)?;
    }
    run.finish()
}

type SplitSamples = (
    Vec<crate::data::Sample>,
    Vec<crate::data::Sample>,
    serde_json::Value,
);

/// Training and validation samples: the manifest's splits if it has them
/// (`test` is never used), else a seeded split stratified by label.
fn split(ds: &Dataset, cfg: &TrainConfig) -> Result<SplitSamples> {
    let pick = |s: Split| {
        ds.samples
            .iter()
            .filter(|x| x.split == Some(s))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (pool, given_val) = if ds.has_splits() {
        let tr = pick(Split::Train);
        if tr.is_empty() {
            return Err(Error::data(
                &ds.source,
                "the manifest's split column names no train images",
            ));
        }
        (tr, pick(Split::Val))
    } else {
        (ds.samples.clone(), Vec::new())
    };
    if !given_val.is_empty() {
        return Ok((pool, given_val, serde_json::json!({"kind": "manifest"})));
    }
    let labels: Vec<&str> = pool.iter().map(|s| s.label.as_str()).collect();
    let (tr, va) = stratified_split_by_name(&labels, cfg.val_fraction, cfg.seed);
    if va.is_empty() {
        return Err(Error::data(
            &ds.source,
            format!(
                "no validation images: val_fraction {} of {} images",
                cfg.val_fraction,
                pool.len()
            ),
        ));
    }
    if tr.is_empty() {
        return Err(Error::data(
            &ds.source,
            "no training images left after the validation split",
        ));
    }
    Ok((
        tr.iter().map(|&i| pool[i].clone()).collect(),
        va.iter().map(|&i| pool[i].clone()).collect(),
        serde_json::json!({"kind": "stratified", "val_fraction": cfg.val_fraction, "seed": cfg.seed}),
    ))
}

/// The `mix` data's share added to the training and validation samples
/// (see [`config::MixConfig`]); the split's description records what came
/// from where.
fn mix_in(
    (mut tr, mut va, desc): SplitSamples,
    cfg: &TrainConfig,
    classes: &[String],
) -> Result<SplitSamples> {
    let Some(mix) = &cfg.mix else {
        return Ok((tr, va, desc));
    };
    let other = Dataset::open(&mix.data)?;
    if let Some(s) = other.samples.iter().find(|s| !classes.contains(&s.label)) {
        return Err(Error::data(
            &mix.data,
            format!(
                "label {:?} ({}) is not a class of the model: {}",
                s.label,
                s.path.display(),
                classes.join(", ")
            ),
        ));
    }
    let (pool, mix_val, _) = split(&other, cfg)?;
    let want = ((tr.len() as f64 * mix.ratio).round() as usize).min(pool.len());
    let labels: Vec<&str> = pool.iter().map(|s| s.label.as_str()).collect();
    let share = want as f64 / pool.len().max(1) as f64;
    // The held-out side of a stratified split: `want` images, stratified by label.
    let (_, drawn) = stratified_split_by_name(&labels, share, cfg.seed ^ 0x006d_6978);
    let drawn: Vec<crate::data::Sample> = drawn.iter().map(|&i| pool[i].clone()).collect();
    let summary = serde_json::json!({
        "data": mix.data,
        "ratio": mix.ratio,
        "train": drawn.len(),
        "of_train": pool.len(),
        "val": mix_val.len(),
        "main_train": tr.len(),
        "main_val": va.len(),
    });
    tr.extend(drawn);
    va.extend(mix_val);
    Ok((tr, va, serde_json::json!({"main": desc, "mix": summary})))
}

fn validate(
    net: &Net,
    set: &ImageSet,
    classes: &[String],
    cfg: &TrainConfig,
    device: &Device,
) -> Result<EvalReport> {
    match net {
        Net::Gcm(net) => evaluate(set, classes, cfg.eval_batch_size, device, |x| {
            Ok(net.forward_t(x, false)?)
        }),
        Net::Cnn(net) => {
            crate::eval::evaluate_scores(set, classes, cfg.eval_batch_size, device, |x| {
                Ok(net.forward_t(x, false)?.scores)
            })
        }
    }
}

/// Softmax cross-entropy on the scores against the labels, or against soft
/// `targets` `[B, K]` (each row a distribution over the classes) where given,
/// optionally weighted per class, or with label smoothing `eps` (PyTorch's
/// `label_smoothing`: the target is `1 - eps` on the label, or on the soft
/// target, plus `eps / K` on every class; the config refuses weights with
/// either).
pub fn loss_fn(
    scores: &Tensor,
    labels: &Tensor,
    targets: Option<&Tensor>,
    weights: Option<&Tensor>,
    smoothing: f64,
) -> Result<Tensor> {
    if targets.is_none() && weights.is_none() && smoothing == 0.0 {
        return Ok(candle_nn::loss::cross_entropy(scores, labels)?);
    }
    let logp = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    let picked = match targets {
        Some(t) => logp.mul(t)?.sum(D::Minus1)?,
        None => logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?,
    };
    match weights {
        None => {
            let uniform = logp.mean(D::Minus1)?;
            let per_image = ((picked * (1.0 - smoothing))? + (uniform * smoothing)?)?;
            Ok(per_image.mean_all()?.neg()?)
        }
        Some(w) => {
            let wi = w.gather(labels, 0)?;
            Ok((picked.mul(&wi)?.sum_all()?.neg()? / wi.sum_all()?.to_scalar::<f32>()? as f64)?)
        }
    }
}

/// Top-k scores `[B, N]` for `topk_loss:`: each class's contribution map
/// (the CCM averaged over the input channels, `[B, N, R, C]`) averaged over
/// its `max(1, round(fraction * R * C))` largest pixels. With `fraction` 1
/// it is the class score; the pixels are picked without gradient, and the
/// gradient flows to the picked ones only.
pub fn topk_scores(cwm: &Tensor, scaled: &Tensor, fraction: f64) -> Result<Tensor> {
    let (b, n, r, c) = cwm.dims4()?;
    let per_pixel = crate::model::score::ccm(cwm, scaled)?
        .mean(2)?
        .reshape((b, n, r * c))?;
    let k = ((fraction * (r * c) as f64).round() as usize).clamp(1, r * c);
    let picked = per_pixel
        .detach()
        .contiguous()?
        .arg_sort_last_dim(false)?
        .narrow(2, 0, k)?
        .contiguous()?;
    Ok(per_pixel.gather(&picked, 2)?.mean(2)?)
}

/// Each sample's soft target (`soft_target:`), in sample order: the
/// manifest column's value for the named class, the rest for the other one.
/// A value that is not a probability, or that contradicts the label (more
/// than 1/2 on the other class), is an error naming the image.
fn soft_targets(
    manifest: &Path,
    samples: &[dataset::Sample],
    classes: &[String],
    st: &config::SoftTarget,
) -> Result<Vec<Vec<f32>>> {
    if classes.len() != 2 {
        return Err(Error::Usage(format!(
            "soft_target: needs a two-class model; this one has {} classes {classes:?}",
            classes.len()
        )));
    }
    let c = classes.iter().position(|x| x == &st.class).ok_or_else(|| {
        Error::Usage(format!(
            "soft_target.class: {:?} is not a class of the model {classes:?}",
            st.class
        ))
    })?;
    let column = st.column.to_ascii_lowercase();
    samples
        .iter()
        .map(|s| {
            let v = s.columns.get(&column).ok_or_else(|| {
                Error::data(
                    manifest,
                    format!(
                        "soft_target.column: no column {:?} for {} (columns: {:?})",
                        st.column,
                        s.path.display(),
                        s.columns.keys().collect::<Vec<_>>()
                    ),
                )
            })?;
            let bad = |why: &str| {
                Error::data(
                    manifest,
                    format!("{}: {} {v:?} {why}", s.path.display(), st.column),
                )
            };
            let p: f32 = v
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| bad("is not a probability in [0, 1]"))?;
            let majority = match p {
                p if p > 0.5 => Some(c),
                p if p < 0.5 => Some(1 - c),
                _ => None,
            };
            // An unknown label is load_images' error, naming it as such.
            if classes.contains(&s.label) && majority.is_some_and(|m| classes[m] != s.label) {
                return Err(bad(&format!(
                    "for {:?} contradicts the label {:?}",
                    st.class, s.label
                )));
            }
            let mut t = vec![0.0; 2];
            t[c] = p;
            t[1 - c] = 1.0 - p;
            Ok(t)
        })
        .collect()
}

fn class_weights(
    cfg: &TrainConfig,
    set: &ImageSet,
    n: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    if !cfg.class_balanced_loss {
        return Ok(None);
    }
    let counts = set.per_class(n);
    let total: usize = counts.iter().sum();
    let w: Vec<f32> = counts
        .iter()
        .map(|&c| {
            if c > 0 {
                total as f32 / (n as f32 * c as f32)
            } else {
                0.0
            }
        })
        .collect();
    Ok(Some(Tensor::from_vec(w, n, device)?))
}

fn set_vars(varmap: &VarMap, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| {
            Error::Runtime(format!("tensor {name} missing from the initial weights"))
        })?;
        var.set(&t.to_device(device)?)?;
    }
    Ok(())
}

/// Writes `dir/name` through a temporary file, so a crash leaves the old one.
fn save_tensors(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, &p).at(&p)
}

fn save_state(dir: &Path, opt: &Optimizer, st: &TrainState) -> Result<()> {
    let tensors: HashMap<String, Tensor> = opt
        .state()?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    save_tensors(dir, STATE_TENSORS, &tensors)?;
    crate::fs::write_atomic(
        &dir.join(STATE_JSON),
        &serde_json::to_vec_pretty(st).expect("state serialises"),
    )
}

fn read_state(out: &Path) -> Result<TrainState> {
    let p = out.join(LAST).join(STATE_JSON);
    if !p.exists() {
        return Err(Error::Usage(format!(
            "--resume: {} does not exist (no earlier run in {}?)",
            p.display(),
            out.display()
        )));
    }
    let text = std::fs::read_to_string(&p).at(&p)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::model(&p, format!("invalid training state: {e}")))
}

fn progress_bar(
    enabled: bool,
    steps: u64,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let b = indicatif::ProgressBar::new(steps);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "epoch {:>3}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}<{{eta}})",
            epoch + 1
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_scores_average_the_largest_contributions_and_only_they_get_gradient() {
        // Two images, two classes, two input channels, 3 x 4 pixels; the
        // expected values are computed here in f64 from the definition.
        let (b, n, d, r, c) = (2usize, 2usize, 2usize, 3usize, 4usize);
        let cwm_v: Vec<f32> = (0..b * n * r * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let img_v: Vec<f32> = (0..b * d * r * c)
            .map(|i| (i * 13 % 17) as f32 / 16.0)
            .collect();
        let dev = Device::Cpu;
        let cwm = candle_core::Var::from_vec(cwm_v.clone(), (b, n, r, c), &dev).unwrap();
        let img = Tensor::from_vec(img_v.clone(), (b, d, r, c), &dev).unwrap();
        let contrib = |bi: usize, j: usize, p: usize| -> f64 {
            let w = cwm_v[(bi * n + j) * r * c + p] as f64;
            (0..d)
                .map(|ch| w * img_v[(bi * d + ch) * r * c + p] as f64)
                .sum::<f64>()
                / d as f64
        };
        // fraction 1 is the class score itself.
        let all = topk_scores(cwm.as_tensor(), &img, 1.0).unwrap();
        let score = crate::model::score::gcm_score(cwm.as_tensor(), &img).unwrap();
        let diff = (all - score).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        // 0.25 of 12 pixels is 3; 0.01 rounds to 0 and takes one pixel.
        for (fraction, k) in [(0.25, 3usize), (0.01, 1), (0.6, 7)] {
            let top = topk_scores(cwm.as_tensor(), &img, fraction).unwrap();
            let got = top.to_vec2::<f32>().unwrap();
            let grads = top.sum_all().unwrap().backward().unwrap();
            let g = grads.get(cwm.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            for bi in 0..b {
                for j in 0..n {
                    let mut order: Vec<usize> = (0..r * c).collect();
                    order.sort_by(|&p, &q| contrib(bi, j, q).total_cmp(&contrib(bi, j, p)));
                    let want =
                        order[..k].iter().map(|&p| contrib(bi, j, p)).sum::<f64>() / k as f64;
                    assert!(
                        (got[bi][j] as f64 - want).abs() < 1e-5,
                        "fraction {fraction}, image {bi}, class {j}: {} vs {want}",
                        got[bi][j]
                    );
                    for (rank, &p) in order.iter().enumerate() {
                        let mean_x = (0..d)
                            .map(|ch| img_v[(bi * d + ch) * r * c + p] as f64)
                            .sum::<f64>()
                            / d as f64;
                        let want_g = if rank < k { mean_x / k as f64 } else { 0.0 };
                        let got_g = g[(bi * n + j) * r * c + p] as f64;
                        assert!(
                            (got_g - want_g).abs() < 1e-6,
                            "fraction {fraction}, image {bi}, class {j}, pixel {p}: grad {got_g} vs {want_g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn label_smoothing_and_soft_targets_follow_the_definition() {
        // Two images, three classes; the expected loss is computed here in
        // f64 from the definition: -((1 - e) sum_k t_k log p_k + e / K sum_k
        // log p_k), with t the one-hot label or the given soft target.
        let logits = [[2.0f64, -1.0, 0.5], [0.1, 0.2, 3.0]];
        let labels = [0u32, 1];
        let soft = [[0.7f64, 0.3, 0.0], [0.0, 0.6, 0.4]];
        let dev = Device::Cpu;
        // The second image is labelled 1 and scored confidently as 2.
        let flat: Vec<f32> = logits.iter().flatten().map(|&v| v as f32).collect();
        let scores = Tensor::from_vec(flat, (2, 3), &dev).unwrap();
        let y = Tensor::new(&labels, &dev).unwrap();
        let flat: Vec<f32> = soft.iter().flatten().map(|&v| v as f32).collect();
        let t = Tensor::from_vec(flat, (2, 3), &dev).unwrap();
        for use_soft in [false, true] {
            for eps in [0.0, 0.1, 0.3] {
                let mut want = 0.0;
                for (i, row) in logits.iter().enumerate() {
                    let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                    let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
                    let uniform = logp.iter().sum::<f64>() / 3.0;
                    let target: f64 = if use_soft {
                        soft[i].iter().zip(&logp).map(|(t, l)| t * l).sum()
                    } else {
                        logp[labels[i] as usize]
                    };
                    want -= (1.0 - eps) * target + eps * uniform;
                }
                want /= 2.0;
                let got = loss_fn(&scores, &y, use_soft.then_some(&t), None, eps)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "soft {use_soft} eps {eps}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn soft_targets_come_from_the_column_and_must_agree_with_the_label() {
        let sample = |label: &str, p: &str| dataset::Sample {
            path: PathBuf::from(format!("{label}-{p}.png")),
            label: label.into(),
            split: None,
            columns: [("probability".to_string(), p.to_string())].into(),
        };
        let classes = vec!["defect".to_string(), "ok".to_string()];
        let st = |column: &str, class: &str| config::SoftTarget {
            column: column.into(),
            class: class.into(),
        };
        let m = Path::new("m.csv");
        let samples = [
            sample("defect", "1.0"),
            sample("defect", "0.6667"),
            sample("ok", "0.3333"),
            sample("ok", "0"),
        ];
        let got = soft_targets(m, &samples, &classes, &st("Probability", "defect")).unwrap();
        let want = [[1.0, 0.0], [0.6667, 0.3333], [0.3333, 0.6667], [0.0, 1.0]];
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-6),
                "{g:?} vs {w:?}"
            );
        }
        // The column may name either class: here it is the probability of ok.
        let got = soft_targets(
            m,
            &[sample("defect", "0.25")],
            &classes,
            &st("probability", "ok"),
        )
        .unwrap();
        assert_eq!(got, vec![vec![0.75, 0.25]]);
        // Errors name what is wrong.
        for (samples, st, classes, says) in [
            (
                vec![sample("ok", "0.9")],
                st("probability", "defect"),
                &classes,
                "contradicts the label",
            ),
            (
                vec![sample("ok", "1.5")],
                st("probability", "defect"),
                &classes,
                "not a probability",
            ),
            (
                vec![sample("ok", "n/a")],
                st("probability", "defect"),
                &classes,
                "ok-n/a.png",
            ),
            (
                vec![sample("ok", "0")],
                st("prob", "defect"),
                &classes,
                "no column \"prob\"",
            ),
            (
                vec![sample("ok", "0")],
                st("probability", "crack"),
                &classes,
                "\"crack\" is not a class",
            ),
            (
                vec![sample("ok", "0")],
                st("probability", "defect"),
                &vec!["a".to_string(), "b".to_string(), "ok".to_string()],
                "two-class",
            ),
        ] {
            let e = soft_targets(m, &samples, classes, &st)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
