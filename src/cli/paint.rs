//! `gcm-inspect paint-cracks`: a pretraining set of clean cells, each also
//! with painted thin cracks (see `data::pretrain`).

use std::path::PathBuf;

use crate::data::pretrain::{paint_set, Options};
use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The real task's manifest (path,label,split[,other columns]): its
    /// `train` rows are split into training and validation; clean cells of
    /// the former are painted. `val` rows, where it has some, are kept as
    /// the validation instead.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: OUT/images/ (painted cells), OUT/pretrain.csv (each
    /// clean cell as it is and painted), OUT/task.csv (the real task's rows
    /// with the validation marked `val`), OUT/joint.csv (task.csv's rows and
    /// every pretraining image as a training row: the second step's data,
    /// so that the painted cracks stay in training).
    #[arg(long)]
    pub out: PathBuf,
    /// The label of clean cells; painted cells get --defect-label.
    #[arg(long, default_value = "ok")]
    pub clean_label: String,
    #[arg(long, default_value = "defect")]
    pub defect_label: String,
    /// A column that must read 0 for a cell to count as clean (ELPV: the
    /// defect probability: a 33% cell is labelled ok but is not clean);
    /// pretrain.csv gets it too (0 and 1), for `soft_target`. Empty: none.
    #[arg(long, default_value = "probability")]
    pub clean_column: String,
    /// Share of each label's training rows set aside as the real task's
    /// validation (when the manifest has no `val` rows).
    #[arg(long, default_value_t = 0.15, value_parser = super::fraction)]
    pub val_fraction: f64,
    /// Share of the clean cells (both copies) held out for the
    /// pretraining's own validation.
    #[arg(long, default_value_t = 0.15, value_parser = super::fraction)]
    pub pretrain_val_fraction: f64,
    /// Seed: the same seed and manifest give the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let s = paint_set(&Options {
        data: a.data,
        out: a.out,
        clean_label: a.clean_label,
        defect_label: a.defect_label,
        clean_column: a.clean_column,
        val_fraction: a.val_fraction,
        pretrain_val_fraction: a.pretrain_val_fraction,
        seed: a.seed,
    })?;
    let strengths: Vec<String> = s
        .per_strength
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!(
        "painted {} clean cells ({}); {} of them held out for the pretraining's validation: {}",
        s.painted,
        strengths.join(", "),
        s.pretrain_val,
        s.pretrain_csv.display()
    );
    println!(
        "real task: {} validation images {} (never painted): {}",
        s.task_val,
        if s.carved {
            "set aside"
        } else {
            "as the manifest gives them"
        },
        s.task_csv.display()
    );
    println!(
        "real task with the {} pretraining images as training images: {}",
        2 * s.painted,
        s.joint_csv.display()
    );
    Ok(())
}
