//! The architecture of a GCM network, stored with its weights in `model.json`.
//!
//! The default is exactly Table 3 of the GCM paper: an encoder of three stages
//! (16, 32, 64 channels; 4, 3, 3 convolutions; the first convolution of stages
//! 2 and 3 has stride 2), a decoder that mirrors it with one stride-2 transposed
//! convolution and one convolution per stage, and a 5x5 head that produces one
//! class weight map (CWM) per class at the input's resolution.
//!
//! The input scaling is part of the model, not of the data pipeline: the CCM is
//! `CWM x scaled input`, so a pixel whose scaled value is 0 can carry no evidence.
//! For dark-defect imagery (cracks in electroluminescence images) that choice
//! decides what the evidence can show, so it is recorded with the weights.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most encoder stages a model may have: each halves the input, so 12
/// stages already need inputs of at least 2,048 pixels a side.
pub const MAX_STAGES: usize = 12;

/// Upper bounds of the other sizes of an architecture, far above any model
/// this crate trains (Table 3: widths 16-64, depths 3-4, a 5x5 head), so
/// that a damaged or hostile model card is refused instead of sizing
/// millions of layers or gigabyte tensors from one number.
pub const MAX_WIDTH: usize = 8192;
pub const MAX_DEPTH: usize = 64;
pub const MAX_DECODER_CONVS: usize = 64;
pub const MAX_HEAD_KERNEL: usize = 63;
pub const MAX_INPUT_SIDE: usize = 16384;

/// How raw pixel values in [0, 1] are mapped before the network and before the
/// multiplicative (CCM) path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputScaling {
    /// `x` as it is, in [0, 1] (the paper's choice for the GCM).
    #[default]
    Raw,
    /// `1 - x`: dark defects become bright and can carry evidence.
    Inverted,
    /// `x - mean[d]`, the mean per channel measured on the training data.
    Centred { mean: Vec<f32> },
}

impl InputScaling {
    /// `(a, b)` per channel such that `scaled = a * x + b`.
    pub fn affine(&self, channels: usize) -> Vec<(f32, f32)> {
        match self {
            InputScaling::Raw => vec![(1.0, 0.0); channels],
            InputScaling::Inverted => vec![(-1.0, 1.0); channels],
            InputScaling::Centred { mean } => mean.iter().map(|m| (1.0, -m)).collect(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            InputScaling::Raw => "raw",
            InputScaling::Inverted => "inverted",
            InputScaling::Centred { .. } => "centred",
        }
    }
}

/// Which network a model is: the GCM (Table 3) or the baseline CNN of the
/// GCM paper's Table 6 (the GCM's encoder, widened, then global average
/// pooling and one fully connected layer), kept for comparing evidence
/// methods on the same data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    Gcm,
    Cnn,
}

impl Arch {
    pub fn is_gcm(&self) -> bool {
        *self == Arch::Gcm
    }
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Gcm => "gcm",
            Arch::Cnn => "cnn",
        }
    }
}

fn default_widths() -> Vec<usize> {
    vec![16, 32, 64]
}
fn default_depths() -> Vec<usize> {
    vec![4, 3, 3]
}
fn one() -> usize {
    1
}
fn five() -> usize {
    5
}
fn yes() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}

/// Architecture and input contract of a GCM network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input height R in pixels (a multiple of 2^(stages-1)).
    pub input_rows: usize,
    /// Input width C in pixels (a multiple of 2^(stages-1)).
    pub input_cols: usize,
    /// Input channels D: 1 (grey) or 3 (RGB).
    pub input_channels: usize,
    /// Class names, in score order.
    pub classes: Vec<String>,
    /// Channels of each encoder stage (Table 3: 16, 32, 64).
    #[serde(default = "default_widths")]
    pub encoder_widths: Vec<usize>,
    /// 3x3 convolutions per encoder stage; the first of every stage after the
    /// first has stride 2 (Table 3: 4, 3, 3).
    #[serde(default = "default_depths")]
    pub encoder_depths: Vec<usize>,
    /// 3x3 convolutions after each stride-2 transposed convolution (Table 3: 1).
    #[serde(default = "one")]
    pub decoder_convs_per_stage: usize,
    /// Kernel size of the per-class head (Table 3: 5).
    #[serde(default = "five")]
    pub head_kernel: usize,
    /// One decoder shared by all classes with a per-class head (Table 3), or a
    /// whole decoder per class.
    #[serde(default = "yes")]
    pub shared_decoder: bool,
    /// ReLU after the head: CWM >= 0 (the paper's "clipped" variant).
    #[serde(default)]
    pub clipped: bool,
    /// Input scaling applied before the network and the CCM product.
    #[serde(default)]
    pub scaling: InputScaling,
    /// BatchNorm epsilon.
    #[serde(default = "default_eps")]
    pub bn_eps: f64,
    /// The network: `gcm` (absent from GCM cards) or `cnn` (Table 6: the
    /// encoder, global average pooling, a fully connected layer; the decoder
    /// and head fields do not apply).
    #[serde(default, skip_serializing_if = "Arch::is_gcm")]
    pub arch: Arch,
    /// Output channels of the very first convolution when they differ from
    /// the first stage's width (Table 6: 16, with a first stage of 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem_width: Option<usize>,
}

impl ModelConfig {
    /// Table 3 for the given input and classes.
    pub fn table3(rows: usize, cols: usize, channels: usize, classes: Vec<String>) -> Self {
        ModelConfig {
            input_rows: rows,
            input_cols: cols,
            input_channels: channels,
            classes,
            encoder_widths: default_widths(),
            encoder_depths: default_depths(),
            decoder_convs_per_stage: 1,
            head_kernel: 5,
            shared_decoder: true,
            clipped: false,
            scaling: InputScaling::Raw,
            bn_eps: default_eps(),
            arch: Arch::Gcm,
            stem_width: None,
        }
    }

    /// The baseline CNN of the GCM paper's Table 6 for the given input and
    /// classes: the Table 3 encoder widened to 16 (first convolution), 18,
    /// 37 and 74 channels, then global average pooling and a fully connected
    /// layer (about 164K parameters for 32 x 32 RGB input and 10 classes).
    pub fn table6(rows: usize, cols: usize, channels: usize, classes: Vec<String>) -> Self {
        ModelConfig {
            encoder_widths: vec![18, 37, 74],
            stem_width: Some(16),
            arch: Arch::Cnn,
            ..ModelConfig::table3(rows, cols, channels, classes)
        }
    }

    /// [`ModelConfig::table3`] or [`ModelConfig::table6`], by `arch`.
    pub fn default_for(
        arch: Arch,
        rows: usize,
        cols: usize,
        channels: usize,
        classes: Vec<String>,
    ) -> Self {
        match arch {
            Arch::Gcm => ModelConfig::table3(rows, cols, channels, classes),
            Arch::Cnn => ModelConfig::table6(rows, cols, channels, classes),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The factor by which the encoder reduces the resolution (at most
    /// `2^(MAX_STAGES - 1)` for a validated config).
    pub fn downsampling(&self) -> usize {
        1 << (self.encoder_widths.len().saturating_sub(1))
    }

    /// Checks the config for consistency; the error names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let stages = self.encoder_widths.len();
        if stages == 0 {
            return Err("encoder_widths: at least one stage is needed".into());
        }
        if stages > MAX_STAGES {
            return Err(format!(
                "encoder_widths: {stages} stages, at most {MAX_STAGES} (each halves the input)"
            ));
        }
        if self.encoder_depths.len() != stages {
            return Err(format!(
                "encoder_depths: {} stages given, encoder_widths has {stages}",
                self.encoder_depths.len()
            ));
        }
        if let Some(i) = self.encoder_depths.iter().position(|&d| d == 0) {
            return Err(format!("encoder_depths[{i}]: must be at least 1"));
        }
        if let Some(i) = self.encoder_widths.iter().position(|&w| w == 0) {
            return Err(format!("encoder_widths[{i}]: must be at least 1"));
        }
        if let Some(i) = self.encoder_depths.iter().position(|&d| d > MAX_DEPTH) {
            return Err(format!(
                "encoder_depths[{i}]: {} convolutions, at most {MAX_DEPTH}",
                self.encoder_depths[i]
            ));
        }
        if let Some(i) = self.encoder_widths.iter().position(|&w| w > MAX_WIDTH) {
            return Err(format!(
                "encoder_widths[{i}]: {} channels, at most {MAX_WIDTH}",
                self.encoder_widths[i]
            ));
        }
        if self.stem_width == Some(0) {
            return Err("stem_width: must be at least 1".into());
        }
        if self.stem_width.is_some_and(|w| w > MAX_WIDTH) {
            return Err(format!("stem_width: at most {MAX_WIDTH} channels"));
        }
        if self.decoder_convs_per_stage > MAX_DECODER_CONVS {
            return Err(format!(
                "decoder_convs_per_stage: {}, at most {MAX_DECODER_CONVS}",
                self.decoder_convs_per_stage
            ));
        }
        if self.head_kernel > MAX_HEAD_KERNEL {
            return Err(format!(
                "head_kernel: {}, at most {MAX_HEAD_KERNEL}",
                self.head_kernel
            ));
        }
        if !matches!(self.input_channels, 1 | 3) {
            return Err(format!(
                "input_channels: {} (must be 1 for grey or 3 for RGB)",
                self.input_channels
            ));
        }
        let f = self.downsampling();
        for (name, v) in [
            ("input_rows", self.input_rows),
            ("input_cols", self.input_cols),
        ] {
            if v > MAX_INPUT_SIDE {
                return Err(format!("{name}: {v} pixels, at most {MAX_INPUT_SIDE}"));
            }
            if v == 0 || v % f != 0 {
                return Err(format!(
                    "{name}: {v} is not a positive multiple of {f} (the encoder halves the size {} times)",
                    stages - 1
                ));
            }
        }
        if self.classes.is_empty() {
            return Err("classes: at least one class is needed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.classes {
            if c.is_empty() || c.contains('/') {
                return Err(format!("classes: invalid class name {c:?}"));
            }
            if !seen.insert(c) {
                return Err(format!("classes: {c:?} appears twice"));
            }
        }
        if self.head_kernel.is_multiple_of(2) {
            return Err(format!("head_kernel: {} must be odd", self.head_kernel));
        }
        if let InputScaling::Centred { mean } = &self.scaling {
            if mean.len() != self.input_channels {
                return Err(format!(
                    "scaling.mean: {} values for {} channels",
                    mean.len(),
                    self.input_channels
                ));
            }
            if mean.iter().any(|m| !m.is_finite()) {
                return Err("scaling.mean: not finite".into());
            }
        }
        if self.bn_eps.is_nan() || self.bn_eps <= 0.0 {
            return Err("bn_eps: must be positive".into());
        }
        Ok(())
    }

    /// Validates, turning the message into a model error for `path`.
    pub fn validated(self, path: &std::path::Path) -> Result<Self> {
        self.validate().map_err(|m| Error::model(path, m))?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn table3_validates() {
        ModelConfig::table3(32, 32, 3, classes(10))
            .validate()
            .unwrap();
    }

    #[test]
    fn size_not_multiple_of_four_is_refused() {
        let e = ModelConfig::table3(30, 32, 1, classes(2))
            .validate()
            .unwrap_err();
        assert!(e.starts_with("input_rows: 30"), "{e}");
    }

    #[test]
    fn duplicate_class_is_refused() {
        let mut c = ModelConfig::table3(32, 32, 1, classes(2));
        c.classes[1] = "c0".into();
        assert!(c.validate().unwrap_err().contains("appears twice"));
    }

    #[test]
    fn scaling_round_trips_through_json() {
        let mut c = ModelConfig::table3(32, 32, 1, classes(2));
        c.scaling = InputScaling::Centred { mean: vec![0.25] };
        let j = serde_json::to_string(&c).unwrap();
        assert!(
            j.contains(r#""scaling":{"kind":"centred","mean":[0.25]}"#),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<ModelConfig>(&j).unwrap(), c);
    }

    #[test]
    fn centred_mean_must_match_channels() {
        let mut c = ModelConfig::table3(32, 32, 3, classes(2));
        c.scaling = InputScaling::Centred { mean: vec![0.5] };
        assert!(c.validate().unwrap_err().starts_with("scaling.mean"));
    }
}
