//! `gcm-inspect paint-cracks`: a pretraining set of clean cells, each also
//! with painted thin cracks, and the real task's manifest with its
//! validation images set aside first, so that pretraining never sees them
//! (docs/elpv.md, sixteenth round).

use std::path::PathBuf;

use crate::data::dataset::{csv_field, manifest_path, stratified_split_by_name};
use crate::data::{image_io, paint, Dataset, Split};
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;

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
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Share of the clean cells (both copies) held out for the
    /// pretraining's own validation.
    #[arg(long, default_value_t = 0.15)]
    pub pretrain_val_fraction: f64,
    /// Seed: the same seed and manifest give the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    for (name, v) in [
        ("--val-fraction", a.val_fraction),
        ("--pretrain-val-fraction", a.pretrain_val_fraction),
    ] {
        if !(0.0..1.0).contains(&v) {
            return Err(Error::Usage(format!("{name}: {v} must be in [0, 1)")));
        }
    }
    let ds = Dataset::open(&a.data)?;
    if !ds.has_splits() {
        return Err(Error::data(
            &a.data,
            "needs a split column (train/val/test): the test rows must stay out of pretraining",
        ));
    }
    // The clean column as the reader keys it (lower case), if one is used.
    let clean_col = (!a.clean_column.is_empty()).then(|| a.clean_column.to_ascii_lowercase());
    if let Some(col) = &clean_col {
        if !ds.samples[0].columns.contains_key(col) {
            return Err(Error::data(
                &a.data,
                format!(
                    "no column {:?} (--clean-column; columns: {:?}); give --clean-column '' to use the label alone",
                    a.clean_column,
                    ds.samples[0].columns.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    // The real task's validation: the manifest's own, or a stratified share
    // of its training rows.
    let mut splits: Vec<Option<Split>> = ds.samples.iter().map(|s| s.split).collect();
    let carved = !splits.contains(&Some(Split::Val));
    if carved {
        let train: Vec<usize> = (0..ds.samples.len())
            .filter(|&i| splits[i] == Some(Split::Train))
            .collect();
        // Split as `train` splits its training rows, so that the same seed
        // sets the same images aside.
        let labels: Vec<&str> = train
            .iter()
            .map(|&i| ds.samples[i].label.as_str())
            .collect();
        let (_, val) = stratified_split_by_name(&labels, a.val_fraction, a.seed);
        for v in val {
            splits[train[v]] = Some(Split::Val);
        }
    }
    let mut clean = Vec::new();
    for (i, s) in ds.samples.iter().enumerate() {
        if splits[i] != Some(Split::Train) || s.label != a.clean_label {
            continue;
        }
        if let Some(col) = &clean_col {
            let v = &s.columns[col];
            let p: f64 = v.parse().map_err(|_| {
                Error::data(
                    &a.data,
                    format!(
                        "{}: {} {v:?} is not a number",
                        s.path.display(),
                        a.clean_column
                    ),
                )
            })?;
            if p != 0.0 {
                continue;
            }
        }
        clean.push(i);
    }
    if clean.is_empty() {
        return Err(Error::data(
            &a.data,
            format!(
                "no clean training cells (label {:?}{}) to paint",
                a.clean_label,
                if a.clean_column.is_empty() {
                    String::new()
                } else {
                    format!(", {} 0", a.clean_column)
                }
            ),
        ));
    }
    Rng::derive(a.seed, 1).shuffle(&mut clean);
    let n_val = (a.pretrain_val_fraction * clean.len() as f64).round() as usize;

    let img_dir = a.out.join("images");
    std::fs::create_dir_all(&img_dir).at(&img_dir)?;
    let prob_col = (!a.clean_column.is_empty()).then_some(a.clean_column.as_str());
    let mut pre = String::from("path,label,split");
    if let Some(c) = prob_col {
        pre.push_str(&format!(",{}", csv_field(c)));
    }
    pre.push('\n');
    let mut rng = Rng::derive(a.seed, 2);
    let mut per_strength = [0usize; paint::STRENGTHS.len()];
    // (sample, painted copy) for joint.csv.
    let mut painted = Vec::with_capacity(clean.len());
    for (k, &i) in clean.iter().enumerate() {
        let s = &ds.samples[i];
        let grey = match image_io::decode(&s.path)? {
            image::DynamicImage::ImageLuma8(g) => g,
            other => {
                return Err(Error::data(
                    &s.path,
                    format!(
                    "is {:?}, not 8-bit greyscale: cracks are painted on greyscale EL images only",
                    other.color()
                ),
                ))
            }
        };
        let (cracks, strength) = paint::draw_cracks(&mut rng, grey.width(), grey.height());
        per_strength[strength] += 1;
        let stem = s
            .path
            .file_stem()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out_path = img_dir.join(format!("{k:05}_{stem}_crack.png"));
        paint::paint(&grey, &cracks)
            .save(&out_path)
            .map_err(|e| Error::data(&out_path, format!("cannot write: {e}")))?;
        painted.push((i, out_path.clone()));
        let split = if k < n_val { "val" } else { "train" };
        for (path, label, p) in [
            (manifest_path(&s.path)?, &a.clean_label, "0"),
            (manifest_path(&out_path)?, &a.defect_label, "1"),
        ] {
            pre.push_str(&format!(
                "{},{},{split}",
                csv_field(&path),
                csv_field(label)
            ));
            if prob_col.is_some() {
                pre.push_str(&format!(",{p}"));
            }
            pre.push('\n');
        }
    }
    let pre_path = a.out.join("pretrain.csv");
    std::fs::write(&pre_path, pre).at(&pre_path)?;

    // The real task, every row, with its validation marked; joint.csv adds
    // each pretraining image as a training row, with the columns of the
    // cell it was made from (the clean column 0 as it is, 1 painted).
    let cols: Vec<String> = ds.samples[0].columns.keys().cloned().collect();
    let row = |path: &std::path::Path,
               label: &str,
               split: &str,
               s: &crate::data::Sample,
               clean: Option<&str>|
     -> Result<String> {
        let mut r = format!(
            "{},{},{split}",
            csv_field(&manifest_path(path)?),
            csv_field(label)
        );
        for c in &cols {
            let v = match (clean, &clean_col) {
                (Some(v), Some(cc)) if cc == c => v,
                _ => s.columns.get(c).map(String::as_str).unwrap_or(""),
            };
            r.push_str(&format!(",{}", csv_field(v)));
        }
        r.push('\n');
        Ok(r)
    };
    let mut task = String::from("path,label,split");
    for c in &cols {
        task.push_str(&format!(",{}", csv_field(c)));
    }
    task.push('\n');
    for (s, split) in ds.samples.iter().zip(&splits) {
        let split = match split {
            Some(Split::Train) => "train",
            Some(Split::Val) => "val",
            Some(Split::Test) => "test",
            None => "",
        };
        task.push_str(&row(&s.path, &s.label, split, s, None)?);
    }
    let mut joint = task.clone();
    for (i, painted_path) in &painted {
        let s = &ds.samples[*i];
        joint.push_str(&row(&s.path, &a.clean_label, "train", s, Some("0"))?);
        joint.push_str(&row(painted_path, &a.defect_label, "train", s, Some("1"))?);
    }
    let task_path = a.out.join("task.csv");
    std::fs::write(&task_path, task).at(&task_path)?;
    let joint_path = a.out.join("joint.csv");
    std::fs::write(&joint_path, joint).at(&joint_path)?;

    let n_task_val = splits.iter().filter(|s| **s == Some(Split::Val)).count();
    let strengths: Vec<String> = paint::STRENGTHS
        .iter()
        .zip(per_strength)
        .map(|(s, n)| format!("{} {n}", s.0))
        .collect();
    println!(
        "painted {} clean cells ({}); {} of them held out for the pretraining's validation: {}",
        clean.len(),
        strengths.join(", "),
        n_val,
        pre_path.display()
    );
    println!(
        "real task: {} validation images {} (never painted): {}",
        n_task_val,
        if carved {
            "set aside"
        } else {
            "as the manifest gives them"
        },
        task_path.display()
    );
    println!(
        "real task with the {} pretraining images as training images: {}",
        2 * clean.len(),
        joint_path.display()
    );
    Ok(())
}
