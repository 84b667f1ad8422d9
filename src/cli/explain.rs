//! `gcm-inspect explain`: decisions and their evidence for image files.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::explain::{explain, Options};
use crate::model::Predictor;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, or builtin:demo for the bundled demo model.
    #[arg(long)]
    pub model: String,
    /// Images to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Write evidence PNGs to OUT/<image name>/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON list instead of text.
    #[arg(long)]
    pub json: bool,
    /// Heatmaps of every class's weight map, not only the decided class's.
    #[arg(long)]
    pub all_classes: bool,
    /// Resize images of another size to the model's input (otherwise refused).
    #[arg(long)]
    pub resize: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = super::positive)]
    pub batch_size: usize,
    /// Test-time symmetry averaging: `flips` averages the scores (and the
    /// evidence) over the 4 mirror images of the input, `d4` over the 8
    /// flips and quarter turns of a square input. Use only symmetries the
    /// model was trained with (a warning says when it was not).
    #[arg(long, value_enum, default_value = "none")]
    pub tta: crate::model::tta::Tta,
    /// The evidence method: gcm (a GCM model's own CWM and CCM), or, on the
    /// baseline CNN (train --arch cnn), cam, gradcam, guided-backprop,
    /// guided-gradcam, cav, or all of them with a comparison grid per image.
    #[arg(long, value_enum, default_value = "gcm")]
    pub method: crate::methods::Method,
    /// With a CNN method: a GCM model whose CWM and CCM join the evidence
    /// and the comparison grid.
    #[arg(long, value_name = "MODEL_DIR")]
    pub gcm_model: Option<String>,
    /// With --method cav or all: the layer CAV analyses, as the input of
    /// encoder layer N (0: the input pixels; the number of encoder layers:
    /// the last feature maps).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub cav_layer: usize,
}

/// `--method` other than gcm: the baseline CNN's methods (on the CPU).
fn methods_explain(a: &Args) -> Result<Vec<crate::explain::Explained>> {
    let out = a.out.clone().ok_or_else(|| {
        Error::Usage(format!(
            "--method {}: give --out, the folder the maps are written to",
            a.method.name()
        ))
    })?;
    if a.tta != crate::model::tta::Tta::None || a.all_classes {
        return Err(Error::Usage(
            "--tta and --all-classes apply to --method gcm only".into(),
        ));
    }
    let m = crate::model::bundled::open(&a.model)?;
    let opts = crate::methods::explain::Options {
        out,
        method: a.method,
        resize: a.resize,
        gcm_model: a.gcm_model.clone(),
        cav_layer: a.cav_layer,
    };
    crate::methods::explain::explain(&m, &a.images, &opts)
}

pub fn run(a: Args) -> Result<()> {
    let results = if a.method == crate::methods::Method::Gcm {
        if a.gcm_model.is_some() {
            return Err(Error::Usage(
                "--gcm-model goes with a CNN method (--method cam, ..., all)".into(),
            ));
        }
        let device = crate::device::open(&a.device)?;
        let p = Predictor::open(&a.model, &device)?.with_tta(a.tta)?;
        let opts = Options {
            out: a.out.clone(),
            all_classes: a.all_classes,
            resize: a.resize,
            batch_size: a.batch_size,
        };
        explain(&p, &a.images, &opts)?
    } else {
        methods_explain(&a)?
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("serialises")
        );
    } else {
        for r in &results {
            let scores: Vec<String> = r
                .classes
                .iter()
                .zip(&r.scores)
                .zip(&r.probabilities)
                .map(|((c, s), q)| format!("{c} {s:+.4} ({:.1}%)", 100.0 * q))
                .collect();
            println!(
                "{}: {}  [{}]",
                r.image.display(),
                r.decision,
                scores.join(", ")
            );
            if let Some(e) = &r.evidence {
                println!(
                    "  evidence: {}{}",
                    e.display(),
                    if r.evidence_reproduces != Some(false) {
                        ""
                    } else {
                        "  (does NOT reproduce the decision)"
                    }
                );
            }
        }
    }
    if results.iter().any(|r| r.evidence_reproduces == Some(false)) {
        return Err(Error::Divergent(
            "written evidence does not reproduce a decision".into(),
        ));
    }
    Ok(())
}
