//! `gcm-inspect eval`: accuracy, per-class precision/recall, confusion matrix
//! and the GCM rows of the decline-ratio table on a labelled set; with
//! `--sweep`, the review threshold swept as well (see [`super::sweep`]).

use std::path::PathBuf;

use crate::data::load_images;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::evaluate;
use crate::model::{Input, Predictor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, or builtin:demo.
    #[arg(long)]
    pub model: String,
    /// DIR/<class>/<images>, or a CSV manifest path,label[,split].
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only this split of a manifest (train, val, test).
    #[arg(long)]
    pub split: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "sweep")]
    pub json: bool,
    /// Resize images of another size to the model's input (otherwise refused).
    #[arg(long)]
    pub resize: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    pub batch_size: usize,
    /// Test-time symmetry averaging: `flips` averages the scores (and the
    /// evidence) over the 4 mirror images of the input, `d4` over the 8
    /// flips and quarter turns of a square input. Use only symmetries the
    /// model was trained with (a warning says when it was not).
    #[arg(long, value_enum, default_value = "none")]
    pub tta: crate::model::tta::Tta,
    /// `all`, with a baseline CNN model: the decline-ratio table of CAM,
    /// Grad-CAM, Guided Backprop, Guided Grad-CAM and CAV (GCM paper,
    /// Table 8, all four map kinds) and their deletion, insertion and ROAD
    /// faithfulness, after the report (markdown; with --json under
    /// `methods`).
    #[arg(long, value_name = "all")]
    pub methods: Option<String>,
    /// With --methods all: a GCM model whose CWM/CCM row joins the table,
    /// on its own accuracy.
    #[arg(long, value_name = "MODEL_DIR", requires = "methods")]
    pub gcm_model: Option<String>,
    /// With --methods all: steps of the faithfulness curves.
    #[arg(long, default_value_t = 10, value_parser = super::positive, requires = "methods")]
    pub steps: usize,
    /// With --methods all: the layer CAV analyses (the input of encoder
    /// layer N; 0 the input pixels).
    #[arg(long, default_value_t = 0, value_name = "N", requires = "methods")]
    pub cav_layer: usize,
    #[command(flatten)]
    pub sweep: super::sweep::SweepArgs,
}

/// The labelled images of `--data` (and `--split`) at the model's input.
fn load_set(a: &Args, cfg: &crate::model::ModelConfig) -> Result<crate::data::ImageSet> {
    let mut ds = Dataset::open(&a.data)?;
    if let Some(s) = &a.split {
        let split = Split::parse(s)
            .ok_or_else(|| Error::Usage(format!("--split {s}: expected train, val or test")))?;
        ds = ds.only(split)?;
    }
    let classes = &cfg.classes;
    load_images(
        &ds.samples,
        |l| classes.iter().position(|c| c == l),
        cfg.input_channels,
        cfg.input_rows,
        cfg.input_cols,
        a.resize,
        |_| {},
    )
}

/// `eval` of the baseline CNN (`train --arch cnn`): accuracy, loss,
/// precision, recall and confusion; it has no class maps, so no decline rows.
fn run_cnn(
    a: &Args,
    m: &crate::model::checkpoint::LoadedModel,
    device: &candle_core::Device,
) -> Result<()> {
    if a.sweep.sweep || a.tta != crate::model::tta::Tta::None {
        return Err(Error::Usage(format!(
            "{}: --sweep and --tta are for GCM models; this is the baseline CNN",
            m.dir.display()
        )));
    }
    if let Some(v) = a.methods.as_deref().filter(|v| *v != "all") {
        return Err(Error::Usage(format!("--methods {v}: only `all` is known")));
    }
    let net = m.build_cnn(device)?;
    let cfg = net.config().clone();
    let set = load_set(a, &cfg)?;
    let report = crate::eval::evaluate_scores(&set, &cfg.classes, a.batch_size, device, |x| {
        Ok(net.forward_t(x, false)?.scores)
    })?;
    let table = match a.methods {
        Some(_) => {
            let cpu = candle_core::Device::Cpu;
            let net = m.build_cnn(&cpu)?;
            let layers = net.encoder().len();
            if a.cav_layer > layers {
                return Err(Error::Usage(format!(
                    "--cav-layer {}: {} has {layers} encoder layers (0 is the input, {layers} the last feature maps)",
                    a.cav_layer,
                    m.dir.display()
                )));
            }
            if a.steps < 2 {
                return Err(Error::Usage(format!(
                    "--steps {}: the curves need at least 2",
                    a.steps
                )));
            }
            let gcm = match &a.gcm_model {
                Some(spec) => Some(gcm_beside(spec, &cfg)?),
                None => None,
            };
            let o = crate::methods::decline::Options {
                batch: a.batch_size,
                steps: a.steps,
                cav_layer: a.cav_layer,
                ..Default::default()
            };
            Some(crate::methods::decline::decline_table(
                &net,
                gcm.as_ref(),
                &set,
                &o,
            )?)
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&report).expect("serialises");
        if let Some(t) = &table {
            v["methods"] = serde_json::to_value(t).expect("serialises");
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
    } else {
        print!("{}", report.render());
        if let Some(t) = &table {
            print!("\n{}", t.markdown());
        }
    }
    Ok(())
}

/// The GCM of `--gcm-model` on the CPU, checked to take the CNN's images
/// and classes.
fn gcm_beside(spec: &str, cnn: &crate::model::ModelConfig) -> Result<Predictor> {
    let p = Predictor::open(spec, &candle_core::Device::Cpu)?;
    let g = p.config();
    if g.classes != cnn.classes
        || (g.input_channels, g.input_rows, g.input_cols)
            != (cnn.input_channels, cnn.input_rows, cnn.input_cols)
    {
        return Err(Error::Usage(format!(
            "--gcm-model {spec}: classes {:?} and input {}x{}x{} differ from the CNN's {:?} and {}x{}x{}; the table compares models on the same images and classes",
            g.classes,
            g.input_channels,
            g.input_rows,
            g.input_cols,
            cnn.classes,
            cnn.input_channels,
            cnn.input_rows,
            cnn.input_cols
        )));
    }
    Ok(p)
}

pub fn run(a: Args) -> Result<()> {
    let device = crate::device::open(&a.device)?;
    let loaded = crate::model::bundled::open(&a.model)?;
    if loaded.card.model.arch == crate::model::Arch::Cnn {
        return run_cnn(&a, &loaded, &device);
    }
    if a.methods.is_some() {
        return Err(Error::Usage(format!(
            "--methods: the methods' table needs a baseline CNN model (train --arch cnn); {} is a GCM, whose rows `eval` prints",
            loaded.dir.display()
        )));
    }
    let p = Predictor::from_loaded(&loaded, &device)?.with_tta(a.tta)?;
    let mut ds = Dataset::open(&a.data)?;
    if let Some(s) = &a.split {
        let split = Split::parse(s)
            .ok_or_else(|| Error::Usage(format!("--split {s}: expected train, val or test")))?;
        ds = ds.only(split)?;
    }
    // The sweep's rules are checked before any image is loaded.
    let rules = match a.sweep.sweep {
        true => Some(super::sweep::rules(&a.sweep, p.classes())?),
        false => None,
    };
    let cfg = p.config().clone();
    let classes = p.classes().to_vec();
    let set = load_images(
        &ds.samples,
        |l| classes.iter().position(|c| c == l),
        cfg.input_channels,
        cfg.input_rows,
        cfg.input_cols,
        a.resize,
        |_| {},
    )?;
    if let Some(rules) = rules {
        return super::sweep::run(&a.sweep, rules, &p, &set, a.batch_size, &a.data);
    }
    let report = evaluate(&set, &classes, a.batch_size, &device, |x| {
        p.forward(Input::Raw(x))
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
