//! `gcm-inspect train`: train a GCM on image folders or a CSV manifest.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::train::config::{ScalingChoice, TrainConfig};
use crate::train::{train, Start, TrainJob};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Labelled images: DIR/<class>/<image>, or a CSV manifest path,label[,split].
    #[arg(long)]
    pub data: PathBuf,
    /// Output model folder (best model; last/ holds the last epoch and the resume state).
    #[arg(long)]
    pub out: PathBuf,
    /// Training configuration (YAML); command-line options override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in OUT/last/ (only --epochs may be given with it).
    #[arg(long)]
    pub resume: bool,
    /// Start from this model's weights (fine-tuning; keeps its architecture and classes).
    #[arg(long, value_name = "MODEL_DIR")]
    pub init: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_parser = super::positive)]
    pub epochs: Option<usize>,
    #[arg(long, value_parser = super::positive)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Input size in pixels (rows = columns); images of another size need --resize.
    #[arg(long)]
    pub size: Option<usize>,
    /// Resize images of another size to the input size.
    #[arg(long)]
    pub resize: bool,
    /// The network: gcm (Table 3, the default) or cnn (the paper's Table 6
    /// baseline, for comparing evidence methods; config key `model.arch`).
    #[arg(long, value_enum)]
    pub arch: Option<crate::model::Arch>,
    /// Input scaling before the network and the CCM product.
    #[arg(long, value_enum)]
    pub scaling: Option<ScalingChoice>,
    /// Share of each class held out for validation (without a manifest split).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Mix RATIO training images of PATH (e.g. the original training
    /// manifest) per image of --data, so that fine-tuning on collected
    /// frames does not forget (config key `mix`).
    #[arg(long, value_name = "PATH:RATIO")]
    pub mix: Option<crate::train::config::MixConfig>,
    /// No progress bar (one line per epoch is printed regardless).
    #[arg(long)]
    pub no_progress: bool,
}

impl Args {
    /// The configuration file with the command-line overrides applied.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::load(p)?,
            None => TrainConfig::default(),
        };
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.weight_decay {
            c.weight_decay = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.size {
            c.model.input_rows = Some(v);
            c.model.input_cols = Some(v);
        }
        if self.resize {
            c.resize = true;
        }
        if let Some(v) = self.scaling {
            c.model.scaling = Some(v);
        }
        if let Some(v) = self.arch {
            c.model.arch = Some(v);
        }
        if let Some(v) = self.val_fraction {
            c.val_fraction = v;
        }
        if let Some(m) = &self.mix {
            c.mix = Some(m.clone());
        }
        c.validate()
            .map_err(|m| Error::Usage(format!("--{}", m.replace('_', "-"))))?;
        Ok(c)
    }
}

pub fn run(a: Args) -> Result<()> {
    let start = if a.resume {
        let others = a.config.is_some()
            || a.init.is_some()
            || a.batch_size.is_some()
            || a.lr.is_some()
            || a.weight_decay.is_some()
            || a.seed.is_some()
            || a.size.is_some()
            || a.resize
            || a.scaling.is_some()
            || a.arch.is_some()
            || a.val_fraction.is_some()
            || a.mix.is_some();
        if others {
            return Err(Error::Usage(
                "--resume continues with the saved configuration: only --epochs may be given with it".into(),
            ));
        }
        Start::Resume { epochs: a.epochs }
    } else {
        Start::Fresh {
            config: Box::new(a.config()?),
            init: a.init.clone(),
        }
    };
    let device = crate::device::open(&a.device)?;
    let s = train(TrainJob {
        data: a.data,
        out: a.out.clone(),
        start,
        device,
        progress: !a.no_progress,
    })?;
    println!(
        "trained {} parameters: best val accuracy {:.2}% (epoch {}), {:.1}s per epoch; model in {}",
        s.parameters,
        100.0 * s.best.val_accuracy,
        s.best.epoch,
        s.mean_epoch_seconds,
        a.out.display()
    );
    Ok(())
}
