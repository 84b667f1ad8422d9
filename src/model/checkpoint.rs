//! Model directories: `model.safetensors` (the tensors) and `model.json` (the card).
//!
//! The format is specified in `docs/model-format.md`: every card field, every
//! tensor's name and shape as a function of the architecture, each layer's
//! arithmetic, the score, and the input contract, completely enough for a
//! tool outside gcm-inspect to load a model and reproduce its scores
//! (`tests/it/model_format.rs` checks the document against [`save`] and
//! `explain`). The tensor names come from the layer plan
//! ([`super::layers::LayerSpec`], [`tensor_specs`]); the card's sha256 of the
//! weights file is the model id the daemon logs with every decision.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::ModelConfig;
use super::gcm::{tensor_specs, Gcm};
use super::layers::all_finite;
use crate::error::{Error, IoContext, Result};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CARD_FILE: &str = "model.json";
pub const CARD_FORMAT: &str = "gcm-inspect-model/1";

/// Validation metrics recorded with a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardMetrics {
    /// Epoch (1-based) these weights come from.
    pub epoch: usize,
    /// Accuracy on the validation split, 0..1.
    pub val_accuracy: f64,
    /// Mean cross-entropy on the validation split.
    pub val_loss: f64,
    /// Images in the validation split.
    pub val_images: usize,
    /// Accuracy on the training split during that epoch (augmented, running).
    pub train_accuracy: f64,
    /// Mean training loss during that epoch.
    pub train_loss: f64,
}

/// `model.json`: what the weights are and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// Architecture, classes, input shape and input scaling.
    pub model: ModelConfig,
    /// Trained parameters (BatchNorm statistics excluded).
    pub parameters: usize,
    /// sha256 of `model.safetensors`, lower-case hex: the model id.
    pub weights_sha256: String,
    /// The training configuration used (as `train --config` reads it).
    #[serde(default)]
    pub training: Option<serde_json::Value>,
    /// Summary of the training data (source, images per class and split).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Validation metrics of these weights.
    #[serde(default)]
    pub metrics: Option<CardMetrics>,
    /// The model training started from (`train --init`): its folder and
    /// weights' sha256. Absent for a model trained from a seeded start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSource>,
    /// The gcm-inspect version that wrote the card.
    #[serde(default)]
    pub written_by: String,
}

/// Where fine-tuning started: the initial model's folder and weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSource {
    pub model: PathBuf,
    pub weights_sha256: String,
}

impl ModelCard {
    /// A short model id for logs: the first 12 hex digits of the weights' sha256.
    pub fn short_id(&self) -> &str {
        &self.weights_sha256[..12.min(self.weights_sha256.len())]
    }
}

/// A loaded model: its card and its validated tensors.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub card: ModelCard,
    pub tensors: HashMap<String, Tensor>,
}

impl LoadedModel {
    /// Builds the network on `device`. A baseline CNN is refused: it has no
    /// class weight maps, so none of the GCM's evidence (CWM, CCM) that
    /// `run`, `explain` and `eval` of a GCM write and check.
    pub fn build(&self, device: &Device) -> Result<Gcm> {
        if self.card.model.arch == super::config::Arch::Cnn {
            return Err(Error::model(
                &self.dir,
                "model.arch is cnn, the baseline CNN: it has no class weight maps, so no CCM evidence to decide by or to log; \
                 serve and explain a GCM model (train without --arch cnn); the CNN is for eval --methods all, explain --method cam|gradcam|guided-backprop|guided-gradcam|cav|all and bench"
                    .to_string(),
            ));
        }
        let tensors = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Gcm::new(&self.card.model, vb).map_err(|e| Error::model(&self.dir, e.to_string()))
    }

    /// Builds the baseline CNN (`"arch": "cnn"`) on `device`.
    pub fn build_cnn(&self, device: &Device) -> Result<super::cnn::Cnn> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        super::cnn::Cnn::new(&self.card.model, vb)
            .map_err(|e| Error::model(&self.dir, e.to_string()))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and checks a model directory: the card parses and validates, every
/// tensor the architecture needs is present with the right shape and finite
/// values, there are no extra tensors, and the card's sha256 matches.
pub fn load(dir: &Path) -> Result<LoadedModel> {
    if !dir.exists() {
        return Err(Error::no_input(dir, "no such model directory"));
    }
    if !dir.is_dir() {
        return Err(Error::model(
            dir,
            "not a model directory (expected model.json and model.safetensors)",
        ));
    }
    // A model directory without its files is an unusable model, whatever
    // the I/O error says.
    let unreadable = |p: &Path, e: std::io::Error| Error::model(p, format!("cannot read: {e}"));
    let card_path = dir.join(CARD_FILE);
    let text = std::fs::read_to_string(&card_path).map_err(|e| unreadable(&card_path, e))?;
    let w_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w_path).map_err(|e| unreadable(&w_path, e))?;
    load_parts(dir, &text, &bytes)
}

/// The checks of [`load`] on a card's text and a weights file's bytes that
/// are already in memory (a model bundled in the binary). `dir` names the
/// model in errors.
pub fn load_parts(dir: &Path, text: &str, bytes: &[u8]) -> Result<LoadedModel> {
    let card_path = dir.join(CARD_FILE);
    let w_path = dir.join(WEIGHTS_FILE);
    let card: ModelCard = serde_json::from_str(text)
        .map_err(|e| Error::model(&card_path, format!("invalid model card: {e}")))?;
    if card.format != CARD_FORMAT {
        return Err(Error::model(
            &card_path,
            format!("format {:?} is not {CARD_FORMAT:?}", card.format),
        ));
    }
    card.model
        .validate()
        .map_err(|m| Error::model(&card_path, format!("model.{m}")))?;

    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::model(&w_path, format!("not a safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    let specs = tensor_specs(&card.model);
    for (name, shape, _) in &specs {
        let view = st.tensor(name).map_err(|_| {
            Error::model(
                &w_path,
                format!("tensor {name} is missing (the architecture in model.json needs it, shape {shape:?})"),
            )
        })?;
        if view.shape() != shape.as_slice() {
            return Err(Error::model(
                &w_path,
                format!(
                    "tensor {name} has shape {:?}, model.json's architecture needs {shape:?}",
                    view.shape()
                ),
            ));
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::model(
                &w_path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(
                &w_path,
                format!(
                    "tensor {name} holds a non-finite value ({}) at flat index {i}",
                    values[i]
                ),
            ));
        }
        tensors.insert(
            name.clone(),
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?,
        );
    }
    if let Some(extra) = st
        .names()
        .into_iter()
        .find(|n| !specs.iter().any(|(s, _, _)| s == *n))
    {
        return Err(Error::model(
            &w_path,
            format!("tensor {extra} is not part of the architecture in model.json"),
        ));
    }
    let sha = sha256_hex(bytes);
    if sha != card.weights_sha256 {
        return Err(Error::model(
            &card_path,
            format!(
                "weights_sha256 {} does not match {WEIGHTS_FILE} (sha256 {sha}): the card belongs to other weights",
                card.weights_sha256
            ),
        ));
    }
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        card,
        tensors,
    })
}

/// Loads a model directory and builds the network on `device`.
pub fn load_model(dir: &Path, device: &Device) -> Result<(ModelCard, Gcm)> {
    let m = load(dir)?;
    let net = m.build(device)?;
    Ok((m.card, net))
}

/// Writes `model.safetensors` and `model.json` into `dir` (created if needed),
/// each atomically (temporary file, fsync, rename). Fills in `parameters`,
/// `weights_sha256`, `format` and `written_by`; returns the card as written.
pub fn save(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    mut card: ModelCard,
) -> Result<ModelCard> {
    std::fs::create_dir_all(dir).at(dir)?;
    let specs = tensor_specs(&card.model);
    let mut named = Vec::with_capacity(specs.len());
    for (name, shape, _) in &specs {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::model(dir, format!("cannot save: tensor {name} missing")))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::model(
                dir,
                format!(
                    "cannot save: tensor {name} has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        if !all_finite(t)? {
            return Err(Error::model(
                dir,
                format!(
                    "cannot save: tensor {name} holds NaN or infinite values (training diverged?)"
                ),
            ));
        }
        named.push((
            name.clone(),
            t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
        ));
    }
    let bytes = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| Error::Runtime(format!("serialising weights: {e}")))?;
    card.parameters = specs
        .iter()
        .filter(|(_, _, r)| r.trainable())
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    card.weights_sha256 = sha256_hex(&bytes);
    card.format = CARD_FORMAT.into();
    card.written_by = format!("gcm-inspect {}", env!("CARGO_PKG_VERSION"));
    crate::fs::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let json = serde_json::to_vec_pretty(&card).expect("card serialises");
    crate::fs::write_atomic(&dir.join(CARD_FILE), &json)?;
    Ok(card)
}

/// A new card for `model` with nothing measured yet.
pub fn new_card(model: ModelConfig) -> ModelCard {
    ModelCard {
        format: CARD_FORMAT.into(),
        model,
        parameters: 0,
        weights_sha256: String::new(),
        training: None,
        data: None,
        metrics: None,
        init: None,
        written_by: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gcm::varmap_tensors;

    fn tiny() -> ModelConfig {
        let mut c = ModelConfig::table3(8, 8, 1, vec!["ok".into(), "defect".into()]);
        c.encoder_widths = vec![2, 3, 4];
        c
    }

    #[test]
    fn save_load_round_trip_gives_same_scores() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let (net, vm) = Gcm::init(&cfg, 3, &Device::Cpu).unwrap();
        let card = save(dir.path(), &varmap_tensors(&vm), new_card(cfg)).unwrap();
        assert_eq!(card.parameters, net.num_parameters());
        let (card2, net2) = load_model(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(card, card2);
        let x = Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu).unwrap();
        let a = net.forward_t(&x, false).unwrap().scores;
        let b = net2.forward_t(&x, false).unwrap().scores;
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
