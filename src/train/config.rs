//! The training configuration (`train --config FILE`, YAML, unknown keys refused).
//!
//! Defaults follow Table 4 of the GCM paper: SGD with momentum 0.9, learning
//! rate 0.1 divided by 10 at 100/180 and 150/180 of the epochs, batch 128,
//! horizontal flips and a random crop after zero-padding 4 pixels.
//!
//! Weight decay: the paper's value is not legible. We use 5e-4 on convolution
//! weights only (not on BatchNorm parameters or biases), the common choice for
//! SGD at lr 0.1 on networks of this size; `weights/README.md` records the
//! measurement on the synthetic set that kept it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::model::config::MAX_STAGES;
use crate::model::{InputScaling, ModelConfig};

fn d_epochs() -> usize {
    180
}
fn d_batch() -> usize {
    128
}
fn d_lr() -> f64 {
    0.1
}
fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    5e-4
}
fn d_milestones() -> Vec<f64> {
    vec![100.0 / 180.0, 150.0 / 180.0]
}
fn d_factor() -> f64 {
    0.1
}
fn d_val() -> f64 {
    0.1
}
fn d_eval_batch() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}

/// Data augmentation applied to training images (never to validation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Mirror left-right with probability 1/2.
    #[serde(default = "yes")]
    pub hflip: bool,
    /// Mirror top-bottom with probability 1/2.
    #[serde(default)]
    pub vflip: bool,
    /// Rotate by a random multiple of 90 degrees (square inputs only).
    #[serde(default)]
    pub rot90: bool,
    /// Zero-pad this many pixels on each side, then crop back at a random offset.
    #[serde(default = "four")]
    pub pad_crop_px: usize,
    /// Exposure jitter: every pixel of an image is multiplied by one gain
    /// drawn uniformly from `[1 - exposure, 1 + exposure]`, then clamped to
    /// [0, 1] (before the model's input scaling). 0 turns it off.
    #[serde(default)]
    pub exposure: f32,
    /// Brightness jitter: one offset per image, uniform in
    /// `[-brightness, brightness]`, added after the gain. 0 turns it off.
    #[serde(default)]
    pub brightness: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            hflip: true,
            vflip: false,
            rot90: false,
            pad_crop_px: 4,
            exposure: 0.0,
            brightness: 0.0,
        }
    }
}

/// Where soft targets come from (`soft_target:`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftTarget {
    /// The manifest column holding the probability of `class`, in [0, 1].
    pub column: String,
    /// The class the column's value is the probability of.
    pub class: String,
}

/// An auxiliary training loss on each class's largest contributions
/// (`topk_loss:`); the model, its scores and its decisions are unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopkLoss {
    /// The share of pixels, in (0, 1], whose contributions are averaged
    /// (at least one pixel).
    pub fraction: f64,
    /// The auxiliary loss's weight, added to the main loss; > 0.
    pub weight: f64,
}

/// The architecture to train; absent fields take Table 3's values, and the
/// input size and channels default to the data's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// `gcm` (Table 3, the default) or `cnn` (the paper's Table 6 baseline:
    /// encoder, global average pooling, fully connected layer).
    #[serde(default)]
    pub arch: Option<crate::model::Arch>,
    /// The first convolution's width when it differs from the first
    /// stage's (Table 6's cnn: 16; dropped when `encoder_widths` is given
    /// without it).
    #[serde(default)]
    pub stem_width: Option<usize>,
    /// Input height in pixels (images are resized to it); default: the data's.
    #[serde(default)]
    pub input_rows: Option<usize>,
    /// Input width in pixels; default: the data's.
    #[serde(default)]
    pub input_cols: Option<usize>,
    #[serde(default)]
    pub encoder_widths: Option<Vec<usize>>,
    #[serde(default)]
    pub encoder_depths: Option<Vec<usize>>,
    #[serde(default)]
    pub decoder_convs_per_stage: Option<usize>,
    #[serde(default)]
    pub head_kernel: Option<usize>,
    #[serde(default)]
    pub shared_decoder: Option<bool>,
    #[serde(default)]
    pub clipped: Option<bool>,
    /// `raw`, `inverted` or `centred` (the mean is measured on the training split).
    #[serde(default)]
    pub scaling: Option<ScalingChoice>,
}

impl ArchConfig {
    /// Sets the fields this config gives on `m` (all but the input size,
    /// channels and scaling, which depend on the data).
    pub fn apply(&self, m: &mut ModelConfig) {
        if let Some(v) = &self.encoder_widths {
            m.encoder_widths = v.clone();
            m.stem_width = None;
        }
        if let Some(v) = self.stem_width {
            m.stem_width = Some(v);
        }
        if let Some(v) = &self.encoder_depths {
            m.encoder_depths = v.clone();
        }
        if let Some(v) = self.decoder_convs_per_stage {
            m.decoder_convs_per_stage = v;
        }
        if let Some(v) = self.head_kernel {
            m.head_kernel = v;
        }
        if let Some(v) = self.shared_decoder {
            m.shared_decoder = v;
        }
        if let Some(v) = self.clipped {
            m.clipped = v;
        }
    }

    /// Checks what can be checked before the data is read: the architecture
    /// with Table 3's defaults for what is not given, on an input of the
    /// given size (or one every stage can halve). The message names the
    /// field as `model.<field>`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let arch = self.arch.unwrap_or_default();
        let mut m = ModelConfig::default_for(arch, 1, 1, 1, vec!["a".into(), "b".into()]);
        self.apply(&mut m);
        // Checked here, before `downsampling` is asked of absurd depths.
        let stages = m.encoder_widths.len().clamp(1, MAX_STAGES + 1);
        let any = 8 << (stages - 1);
        m.input_rows = self.input_rows.unwrap_or(any);
        m.input_cols = self.input_cols.unwrap_or(any);
        m.validate().map_err(|msg| format!("model.{msg}"))
    }
}

/// Input scaling as chosen in a training config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScalingChoice {
    Raw,
    Inverted,
    Centred,
}

impl ScalingChoice {
    /// The model's scaling, given the per-channel mean of the training images.
    pub fn resolve(self, mean: impl FnOnce() -> Vec<f32>) -> InputScaling {
        match self {
            ScalingChoice::Raw => InputScaling::Raw,
            ScalingChoice::Inverted => InputScaling::Inverted,
            ScalingChoice::Centred => InputScaling::Centred { mean: mean() },
        }
    }
}

/// Which optimiser updates the weights (`src/train/optim.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// SGD with `momentum` and L2 weight decay (Table 4).
    #[default]
    Sgd,
    /// AdamW (betas 0.9 / 0.999, eps 1e-8) with decoupled weight decay;
    /// `momentum` is not used.
    Adamw,
}

/// Every knob of `gcm-inspect train`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Images per SGD step.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// `sgd` (Table 4) or `adamw`.
    #[serde(default)]
    pub optimizer: OptimizerChoice,
    /// Initial learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// SGD momentum.
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    /// Weight decay on convolution weights (see the module docs): L2 for
    /// SGD, decoupled (`w -= lr * weight_decay * w`) for AdamW.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Fractions of `epochs` after which the learning rate is multiplied by
    /// `lr_decay_factor` (Table 4: 100/180 and 150/180).
    #[serde(default = "d_milestones")]
    pub lr_milestones_fraction: Vec<f64>,
    #[serde(default = "d_factor")]
    pub lr_decay_factor: f64,
    /// Share of each class held out for validation when the data has no split.
    #[serde(default = "d_val")]
    pub val_fraction: f64,
    /// Seed for the split, initialisation, shuffling and augmentation.
    #[serde(default)]
    pub seed: u64,
    /// Batch size for validation.
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    /// Resize images of another size to the input size (otherwise refused).
    #[serde(default)]
    pub resize: bool,
    /// Weight the loss by inverse class frequency (for unbalanced data).
    #[serde(default)]
    pub class_balanced_loss: bool,
    /// Validate and save an exponential moving average of the weights with
    /// this decay per step (`src/train/ema.rs`); 0 (the default) turns it off.
    #[serde(default)]
    pub ema_decay: f64,
    /// Cross-entropy against `1 - label_smoothing` on the label plus
    /// `label_smoothing / classes` on every class (PyTorch's definition);
    /// 0 (the default) is the plain loss.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Dropout on the decoder's output, just before the head, in training
    /// only: each value is zeroed with this probability and the rest scaled
    /// by `1 / (1 - head_dropout)` (as the classifier dropout of FCN-style
    /// segmentation heads). 0 (the default) turns it off.
    #[serde(default)]
    pub head_dropout: f64,
    /// Soft targets for a two-class model from a manifest column (off by
    /// default): each training image's target is the column's value for
    /// `class` and the rest for the other class, instead of all on its label.
    #[serde(default)]
    pub soft_target: Option<SoftTarget>,
    /// Mixup (Zhang et al., 2018) with this Beta(alpha, alpha) parameter, at
    /// least 0.01; 0 (the default) turns it off. Each training batch is blended with a
    /// shuffled copy of itself, `lam * x + (1 - lam) * x[perm]`, and trained
    /// on the same blend of the two images' targets (their soft targets, or
    /// one-hot labels); `lam` is drawn once per batch. The blend is applied
    /// after augmentation to the images in [0, 1]; the input scaling is
    /// affine, so blending before it or after it is the same.
    #[serde(default)]
    pub mixup: f64,
    /// Training only, off by default: adds `weight` x the same cross-entropy
    /// on top-k scores, each class's mean contribution (the CCM averaged over
    /// the input channels) over its `fraction` largest pixels. The class
    /// score is the CCM's mean over every pixel, so a crack on 1% of the
    /// cell gets 1% of the gradient; the top-k score's gradient reaches only
    /// the pixels that contribute most. The reported training loss is the sum.
    #[serde(default)]
    pub topk_loss: Option<TopkLoss>,
    #[serde(default)]
    pub augment: Augment,
    #[serde(default)]
    pub model: ArchConfig,
    /// Fine-tuning on collected frames without forgetting (off by default):
    /// training images of another data set mixed into the training split.
    #[serde(default)]
    pub mix: Option<MixConfig>,
}

/// `mix`: `ratio` training images of `data` (its train split, or all of it
/// less a stratified validation share when it has no split column) for each
/// training image of the main data, drawn stratified by label with the seed;
/// its validation images join the validation set, so model selection weighs
/// the old data as well as the new.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Image folder or CSV manifest (e.g. the original training manifest).
    pub data: PathBuf,
    /// Images of `data` per image of the main data (> 0).
    pub ratio: f64,
}

impl std::str::FromStr for MixConfig {
    type Err = String;

    /// `PATH:RATIO`, as `--mix` takes it.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (path, ratio) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not PATH:RATIO"))?;
        let ratio: f64 = ratio
            .parse()
            .map_err(|_| format!("{ratio:?} in {s:?} is not a number"))?;
        if path.is_empty() {
            return Err(format!("{s:?} names no data"));
        }
        Ok(MixConfig {
            data: PathBuf::from(path),
            ratio,
        })
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults parse")
    }
}

impl TrainConfig {
    /// Parses YAML; the error names the key and line.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self> {
        let cfg: TrainConfig =
            serde_yaml::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_yaml(&text, path)
    }

    /// Checks values; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(m) = &self.mix {
            if !(m.ratio.is_finite() && m.ratio > 0.0) {
                return Err(format!("mix.ratio: {} is not a number > 0", m.ratio));
            }
        }
        if self.epochs == 0 {
            return Err("epochs: must be at least 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err("batch_size: must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr: {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum: {} must be in [0, 1)", self.momentum));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!("weight_decay: {} must be >= 0", self.weight_decay));
        }
        if let Some(f) = self
            .lr_milestones_fraction
            .iter()
            .find(|f| !(0.0..=1.0).contains(*f))
        {
            return Err(format!("lr_milestones_fraction: {f} is not in [0, 1]"));
        }
        for (name, v) in [
            ("exposure", self.augment.exposure),
            ("brightness", self.augment.brightness),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("augment.{name}: {v} must be in [0, 1)"));
            }
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("ema_decay: {} must be in [0, 1)", self.ema_decay));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing: {} must be in [0, 1)",
                self.label_smoothing
            ));
        }
        if !(0.0..1.0).contains(&self.head_dropout) {
            return Err(format!(
                "head_dropout: {} must be in [0, 1)",
                self.head_dropout
            ));
        }
        self.model.check()?;
        if self.label_smoothing > 0.0 && self.class_balanced_loss {
            return Err("label_smoothing and class_balanced_loss cannot be used together".into());
        }
        if self.soft_target.is_some() && self.class_balanced_loss {
            return Err("soft_target and class_balanced_loss cannot be used together".into());
        }
        // Below 0.01 nearly every blend is all one image (a plain
        // permutation of the batch), and Beta draws underflow to 0 / 0.
        if !(self.mixup == 0.0 || (self.mixup >= 0.01 && self.mixup.is_finite())) {
            return Err(format!(
                "mixup: {} must be 0 (off) or at least 0.01",
                self.mixup
            ));
        }
        if self.mixup > 0.0 && self.class_balanced_loss {
            return Err("mixup and class_balanced_loss cannot be used together".into());
        }
        if let Some(t) = &self.topk_loss {
            if !(t.fraction > 0.0 && t.fraction <= 1.0) {
                return Err(format!(
                    "topk_loss.fraction: {} must be in (0, 1]",
                    t.fraction
                ));
            }
            if !(t.weight > 0.0 && t.weight.is_finite()) {
                return Err(format!("topk_loss.weight: {} must be positive", t.weight));
            }
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!(
                "val_fraction: {} must be in [0, 1)",
                self.val_fraction
            ));
        }
        Ok(())
    }

    /// Learning rate for (0-based) `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self
            .lr_milestones_fraction
            .iter()
            .filter(|&&f| epoch >= (f * self.epochs as f64).round() as usize)
            .count();
        self.lr * self.lr_decay_factor.powi(passed as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_reads_path_colon_ratio_and_refuses_the_rest() {
        let m: MixConfig = "data/train.csv:0.5".parse().unwrap();
        assert_eq!((m.data, m.ratio), (PathBuf::from("data/train.csv"), 0.5));
        let m: MixConfig = "C:/x:2".parse().unwrap();
        assert_eq!(m.data, PathBuf::from("C:/x"));
        assert!("data.csv".parse::<MixConfig>().is_err());
        assert!("data.csv:many".parse::<MixConfig>().is_err());
        assert!(":1".parse::<MixConfig>().is_err());
        let c = TrainConfig::from_yaml("mix:\n  data: a.csv\n  ratio: 0\n", Path::new("t.yaml"));
        assert!(c.unwrap_err().to_string().contains("mix.ratio"));
    }

    #[test]
    fn defaults_are_table4() {
        let c = TrainConfig::default();
        assert_eq!(
            (c.epochs, c.batch_size, c.lr, c.momentum),
            (180, 128, 0.1, 0.9)
        );
        assert_eq!(c.lr_at(0), 0.1);
        assert!((c.lr_at(99) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(100) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(150) - 0.001).abs() < 1e-12);
        assert!(c.augment.hflip && c.augment.pad_crop_px == 4);
    }

    #[test]
    fn schedule_scales_with_epochs() {
        let c = TrainConfig {
            epochs: 18,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(9) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(10) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(15) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = TrainConfig::from_yaml("epochs: 3\nlearning_rate: 0.1\n", Path::new("t.yaml"))
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("learning_rate") && m.contains("line 2") && m.contains("t.yaml"),
            "{m}"
        );
        assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
    }

    #[test]
    fn nested_unknown_key_is_refused() {
        let e = TrainConfig::from_yaml(
            "augment:\n  hflip: true\n  mixup: 0.2\n",
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mixup") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn photometric_jitter_outside_its_range_is_named() {
        let c = TrainConfig::from_yaml(
            "augment:\n  exposure: 0.2\n  brightness: 0.05\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!((c.augment.exposure, c.augment.brightness), (0.2, 0.05));
        assert_eq!(TrainConfig::default().augment.exposure, 0.0);
        for (yaml, field) in [
            ("augment:\n  exposure: 1.5\n", "augment.exposure: 1.5"),
            ("augment:\n  brightness: -0.1\n", "augment.brightness: -0.1"),
        ] {
            let e = TrainConfig::from_yaml(yaml, Path::new("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("t.yaml") && e.contains(field), "{e}");
        }
    }

    #[test]
    fn optimizer_is_sgd_unless_named() {
        assert_eq!(TrainConfig::default().optimizer, OptimizerChoice::Sgd);
        let c = TrainConfig::from_yaml("optimizer: adamw\n", Path::new("t.yaml")).unwrap();
        assert_eq!(c.optimizer, OptimizerChoice::Adamw);
        let e = TrainConfig::from_yaml("optimizer: adam\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.yaml") && e.contains("optimizer") && e.contains("`adamw`"),
            "{e}"
        );
    }

    #[test]
    fn shipped_training_configs_are_valid() {
        // A key the code no longer knows, or a value it refuses, in a config
        // the README and docs/elpv.md tell users to run is a bug here.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in [
            "demo-train.yaml",
            "elpv-binary.yaml",
            "elpv-4class.yaml",
            "elpv-pretrain.yaml",
            "elpv-binary-pretrained.yaml",
        ] {
            let p = dir.join(name);
            if let Err(e) = TrainConfig::load(&p) {
                panic!("{}: {e}", p.display());
            }
        }
    }

    #[test]
    fn bad_value_is_named() {
        for (yaml, field) in [
            ("momentum: 1.5\n", "momentum"),
            ("ema_decay: 1\n", "ema_decay"),
            ("label_smoothing: -0.1\n", "label_smoothing"),
            ("head_dropout: 1\n", "head_dropout"),
            ("head_dropout: -0.1\n", "head_dropout"),
            ("mixup: -0.2\n", "mixup"),
            (
                "topk_loss: {fraction: 0, weight: 1}\n",
                "topk_loss.fraction: 0 must be in (0, 1]",
            ),
            (
                "topk_loss: {fraction: 1.5, weight: 1}\n",
                "topk_loss.fraction",
            ),
            (
                "topk_loss: {fraction: 0.02, weight: -1}\n",
                "topk_loss.weight: -1 must be positive",
            ),
            ("topk_loss: {fraction: 0.02}\n", "weight"),
            ("mixup: .nan\n", "mixup"),
            (
                "mixup: 1e-9\n",
                "mixup: 0.000000001 must be 0 (off) or at least 0.01",
            ),
            (
                "mixup: 0.2\nclass_balanced_loss: true\n",
                "mixup and class_balanced_loss",
            ),
            (
                "label_smoothing: 0.1\nclass_balanced_loss: true\n",
                "cannot be used together",
            ),
            (
                "soft_target: {column: p, class: defect}\nclass_balanced_loss: true\n",
                "soft_target and class_balanced_loss",
            ),
            ("soft_target: {column: p}\n", "class"),
        ] {
            let e = TrainConfig::from_yaml(yaml, Path::new("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
        assert_eq!(TrainConfig::default().ema_decay, 0.0);
    }
}
