//! The GCM network, its scoring op, checkpoints and inference.

pub mod bundled;
pub mod checkpoint;
pub mod cnn;
pub mod config;
mod executor;
pub mod folded;
pub mod gcm;
pub mod layers;
pub mod predictor;
pub mod score;
pub mod tta;

pub use checkpoint::{load_model, ModelCard};
pub use cnn::{Cnn, CnnOutput};
pub use config::{Arch, InputScaling, ModelConfig};
pub use gcm::{Gcm, GcmOutput};
pub use predictor::{Input, Predictor};
pub use score::{ccm, gcm_score};
