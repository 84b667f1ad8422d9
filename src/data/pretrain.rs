//! The painted-crack pretraining set (`gcm-inspect paint-cracks`): clean
//! training cells of a manifest, each also with painted thin cracks
//! ([`super::paint`]), and the real task's manifest with its validation
//! images set aside first, so that pretraining never sees them
//! (docs/elpv.md, the adopted recipe).
//!
//! Output folder: `images/` (the painted cells), `pretrain.csv` (each clean
//! cell as it is and painted), `task.csv` (the real task's rows with the
//! validation marked `val`), `joint.csv` (task.csv's rows and every
//! pretraining image as a training row: the second step's data, so that the
//! painted cracks stay in training).

use std::path::{Path, PathBuf};

use super::dataset::{csv_field, manifest_path, stratified_split_by_name};
use super::{image_io, paint, Dataset, Sample, Split};
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;

/// What to paint and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// The real task's manifest (path,label,split[,other columns]).
    pub data: PathBuf,
    pub out: PathBuf,
    /// The label of clean cells; painted cells get `defect_label`.
    pub clean_label: String,
    pub defect_label: String,
    /// A column that must read 0 for a cell to count as clean (ELPV: the
    /// defect probability); empty: none.
    pub clean_column: String,
    /// Share of each label's training rows set aside as the real task's
    /// validation (when the manifest has no `val` rows), in [0, 1).
    pub val_fraction: f64,
    /// Share of the clean cells held out for the pretraining's own
    /// validation, in [0, 1).
    pub pretrain_val_fraction: f64,
    /// The same seed and manifest give the same files.
    pub seed: u64,
}

/// What [`paint_set`] wrote.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Clean cells painted (each is in the pretraining set twice).
    pub painted: usize,
    /// Cells painted at each strength, by name.
    pub per_strength: Vec<(&'static str, usize)>,
    /// Clean cells held out for the pretraining's validation.
    pub pretrain_val: usize,
    /// The real task's validation images.
    pub task_val: usize,
    /// Whether that validation was carved out of the training rows (else the
    /// manifest gave it).
    pub carved: bool,
    pub pretrain_csv: PathBuf,
    pub task_csv: PathBuf,
    pub joint_csv: PathBuf,
}

/// Writes the pretraining set and the task's manifests (see the module docs).
pub fn paint_set(o: &Options) -> Result<Summary> {
    let ds = Dataset::open(&o.data)?;
    if !ds.has_splits() {
        return Err(Error::data(
            &o.data,
            "needs a split column (train/val/test): the test rows must stay out of pretraining",
        ));
    }
    let clean_col = clean_column(&ds, o)?;
    let (splits, carved) = task_splits(&ds, o);
    let mut clean = clean_cells(&ds, &splits, clean_col.as_deref(), o)?;
    Rng::derive(o.seed, 1).shuffle(&mut clean);
    let pretrain_val = (o.pretrain_val_fraction * clean.len() as f64).round() as usize;
    let (painted, per_strength) = paint_cells(&ds, &clean, pretrain_val, o)?;
    let (task_csv, joint_csv) = write_task(&ds, &splits, &painted, clean_col.as_deref(), o)?;
    Ok(Summary {
        painted: clean.len(),
        per_strength,
        pretrain_val,
        task_val: splits.iter().filter(|s| **s == Some(Split::Val)).count(),
        carved,
        pretrain_csv: o.out.join("pretrain.csv"),
        task_csv,
        joint_csv,
    })
}

/// The clean column as the reader keys it (lower case), if one is used.
fn clean_column(ds: &Dataset, o: &Options) -> Result<Option<String>> {
    if o.clean_column.is_empty() {
        return Ok(None);
    }
    let col = o.clean_column.to_ascii_lowercase();
    if !ds.samples[0].columns.contains_key(&col) {
        return Err(Error::data(
            &o.data,
            format!(
                "no column {:?} (--clean-column; columns: {:?}); give --clean-column '' to use the label alone",
                o.clean_column,
                ds.samples[0].columns.keys().collect::<Vec<_>>()
            ),
        ));
    }
    Ok(Some(col))
}

/// The real task's splits: its validation is the manifest's own, or a
/// stratified share of its training rows (`true`: carved).
fn task_splits(ds: &Dataset, o: &Options) -> (Vec<Option<Split>>, bool) {
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
        let (_, val) = stratified_split_by_name(&labels, o.val_fraction, o.seed);
        for v in val {
            splits[train[v]] = Some(Split::Val);
        }
    }
    (splits, carved)
}

/// The training rows labelled clean (and, with a clean column, reading 0 there).
fn clean_cells(
    ds: &Dataset,
    splits: &[Option<Split>],
    clean_col: Option<&str>,
    o: &Options,
) -> Result<Vec<usize>> {
    let mut clean = Vec::new();
    for (i, s) in ds.samples.iter().enumerate() {
        if splits[i] != Some(Split::Train) || s.label != o.clean_label {
            continue;
        }
        if let Some(col) = clean_col {
            let v = &s.columns[col];
            let p: f64 = v.parse().map_err(|_| {
                Error::data(
                    &o.data,
                    format!(
                        "{}: {} {v:?} is not a number",
                        s.path.display(),
                        o.clean_column
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
            &o.data,
            format!(
                "no clean training cells (label {:?}{}) to paint",
                o.clean_label,
                if o.clean_column.is_empty() {
                    String::new()
                } else {
                    format!(", {} 0", o.clean_column)
                }
            ),
        ));
    }
    Ok(clean)
}

/// A cell as 8-bit grey (cracks are painted on greyscale EL images only).
fn grey_cell(path: &Path) -> Result<image::GrayImage> {
    match image_io::decode(path)? {
        image::DynamicImage::ImageLuma8(g) => Ok(g),
        other => Err(Error::data(
            path,
            format!(
                "is {:?}, not 8-bit greyscale: cracks are painted on greyscale EL images only",
                other.color()
            ),
        )),
    }
}

/// Paints every clean cell (the first `n_val` in the pretraining's
/// validation) and writes `pretrain.csv`; returns (sample, painted copy)
/// pairs and the count per strength.
#[allow(clippy::type_complexity)]
fn paint_cells(
    ds: &Dataset,
    clean: &[usize],
    n_val: usize,
    o: &Options,
) -> Result<(Vec<(usize, PathBuf)>, Vec<(&'static str, usize)>)> {
    let img_dir = o.out.join("images");
    std::fs::create_dir_all(&img_dir).at(&img_dir)?;
    let prob_col = (!o.clean_column.is_empty()).then_some(o.clean_column.as_str());
    let mut pre = String::from("path,label,split");
    if let Some(c) = prob_col {
        pre.push_str(&format!(",{}", csv_field(c)));
    }
    pre.push('\n');
    let mut rng = Rng::derive(o.seed, 2);
    let mut per_strength = [0usize; paint::STRENGTHS.len()];
    let mut painted = Vec::with_capacity(clean.len());
    for (k, &i) in clean.iter().enumerate() {
        let s = &ds.samples[i];
        let grey = grey_cell(&s.path)?;
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
        let split = if k < n_val { "val" } else { "train" };
        for (path, label, p) in [
            (manifest_path(&s.path)?, &o.clean_label, "0"),
            (manifest_path(&out_path)?, &o.defect_label, "1"),
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
        painted.push((i, out_path));
    }
    let pre_path = o.out.join("pretrain.csv");
    std::fs::write(&pre_path, pre).at(&pre_path)?;
    let per_strength = paint::STRENGTHS
        .iter()
        .zip(per_strength)
        .map(|(s, n)| (s.0, n))
        .collect();
    Ok((painted, per_strength))
}

/// Writes `task.csv` (the real task, every row, its validation marked) and
/// `joint.csv` (the same plus each pretraining image as a training row,
/// with the columns of the cell it was made from: the clean column 0 as it
/// is, 1 painted); returns their paths.
fn write_task(
    ds: &Dataset,
    splits: &[Option<Split>],
    painted: &[(usize, PathBuf)],
    clean_col: Option<&str>,
    o: &Options,
) -> Result<(PathBuf, PathBuf)> {
    let cols: Vec<String> = ds.samples[0].columns.keys().cloned().collect();
    let row = |path: &Path, label: &str, split: &str, s: &Sample, clean: Option<&str>| {
        let mut r = format!(
            "{},{},{split}",
            csv_field(&manifest_path(path)?),
            csv_field(label)
        );
        for c in &cols {
            let v = match (clean, clean_col) {
                (Some(v), Some(cc)) if cc == c => v,
                _ => s.columns.get(c).map(String::as_str).unwrap_or(""),
            };
            r.push_str(&format!(",{}", csv_field(v)));
        }
        r.push('\n');
        Ok::<_, Error>(r)
    };
    let mut task = String::from("path,label,split");
    for c in &cols {
        task.push_str(&format!(",{}", csv_field(c)));
    }
    task.push('\n');
    for (s, split) in ds.samples.iter().zip(splits) {
        let split = match split {
            Some(Split::Train) => "train",
            Some(Split::Val) => "val",
            Some(Split::Test) => "test",
            None => "",
        };
        task.push_str(&row(&s.path, &s.label, split, s, None)?);
    }
    let mut joint = task.clone();
    for (i, painted_path) in painted {
        let s = &ds.samples[*i];
        joint.push_str(&row(&s.path, &o.clean_label, "train", s, Some("0"))?);
        joint.push_str(&row(painted_path, &o.defect_label, "train", s, Some("1"))?);
    }
    let task_path = o.out.join("task.csv");
    std::fs::write(&task_path, task).at(&task_path)?;
    let joint_path = o.out.join("joint.csv");
    std::fs::write(&joint_path, joint).at(&joint_path)?;
    Ok((task_path, joint_path))
}
