//! Labelled image sets: a folder per class, or a CSV manifest.
//!
//! * Folder: `DIR/<class>/<image>`; classes are the sub-folders, sorted by name.
//!   Files directly in `DIR` are ignored (e.g. `synth.json`).
//! * Manifest: a CSV file with the header `path,label` or `path,label,split`;
//!   paths are relative to the manifest's folder; `split` is `train`, `val` or
//!   `test`. Classes are the labels, sorted by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::image_io::is_image_name;
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: String,
    pub split: Option<Split>,
    /// A manifest's other columns (header lower-cased) and this line's values.
    pub columns: BTreeMap<String, String>,
}

/// A labelled image set.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder or manifest it was read from.
    pub source: PathBuf,
    /// Labels present, sorted.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Opens a class-folder tree or a CSV manifest.
    pub fn open(path: &Path) -> Result<Dataset> {
        if !path.exists() {
            return Err(Error::no_input(path, "does not exist"));
        }
        if path.is_dir() {
            read_folder(path)
        } else {
            read_manifest(path)
        }
    }

    /// Images per class, in class order.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = self.classes.iter().map(|c| (c.clone(), 0)).collect();
        for s in &self.samples {
            *m.entry(s.label.clone()).or_default() += 1;
        }
        m
    }

    /// Does the manifest give splits?
    pub fn has_splits(&self) -> bool {
        self.samples.iter().any(|s| s.split.is_some())
    }

    /// Only the samples of one split.
    pub fn only(&self, split: Split) -> Result<Dataset> {
        if !self.has_splits() {
            return Err(Error::data(
                &self.source,
                format!("--split {split:?} needs a manifest with a split column").to_lowercase(),
            ));
        }
        let samples: Vec<Sample> = self
            .samples
            .iter()
            .filter(|s| s.split == Some(split))
            .cloned()
            .collect();
        if samples.is_empty() {
            return Err(Error::data(
                &self.source,
                format!("no images in split {split:?}").to_lowercase(),
            ));
        }
        Ok(Dataset {
            source: self.source.clone(),
            classes: self.classes.clone(),
            samples,
        })
    }
}

fn read_folder(dir: &Path) -> Result<Dataset> {
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(Error::data(
            dir,
            "no class folders (expected DIR/<class>/<images>, or a CSV manifest)",
        ));
    }
    let mut classes = Vec::new();
    let mut samples = Vec::new();
    for cd in class_dirs {
        let label = cd
            .file_name()
            .expect("dir entry")
            .to_string_lossy()
            .into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cd)
            .at(&cd)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image_name(p) && !is_hidden(p))
            .collect();
        if files.is_empty() {
            return Err(Error::data(
                &cd,
                format!("class folder {label:?} holds no images (.png, .jpg, .bmp, .tif)"),
            ));
        }
        files.sort();
        samples.extend(files.into_iter().map(|path| Sample {
            path,
            label: label.clone(),
            split: None,
            columns: BTreeMap::new(),
        }));
        classes.push(label);
    }
    Ok(Dataset {
        source: dir.to_path_buf(),
        classes,
        samples,
    })
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(false)
}

/// Splits one CSV line (double quotes may enclose a field; `""` is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

fn read_manifest(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).at(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        Error::data(
            path,
            "manifest is empty (expected a header path,label[,split])",
        )
    })?;
    let cols = csv_fields(header.trim_start_matches('\u{feff}'));
    let idx = |name: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(name));
    let (pi, li) = match (idx("path"), idx("label")) {
        (Some(p), Some(l)) => (p, l),
        _ => {
            return Err(Error::data(
                path,
                format!("line 1: header {header:?} lacks the columns path and label"),
            ))
        }
    };
    let si = idx("split");
    let others: Vec<(usize, String)> = cols
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != pi && k != li && Some(k) != si)
        .map(|(k, c)| (k, c.to_ascii_lowercase()))
        .collect();
    let mut samples = Vec::new();
    for (i, line) in lines {
        let f = csv_fields(line);
        let get = |k: usize| f.get(k).map(String::as_str).unwrap_or("");
        let (p, label) = (get(pi), get(li));
        if p.is_empty() || label.is_empty() {
            return Err(Error::data(
                path,
                format!("line {}: empty path or label", i + 1),
            ));
        }
        let split = match si {
            Some(k) => Some(Split::parse(get(k)).ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "line {}: split {:?} is not train, val or test",
                        i + 1,
                        get(k)
                    ),
                )
            })?),
            None => None,
        };
        samples.push(Sample {
            path: base.join(p),
            label: label.to_string(),
            split,
            columns: others
                .iter()
                .map(|(k, c)| (c.clone(), get(*k).to_string()))
                .collect(),
        });
    }
    if samples.is_empty() {
        return Err(Error::data(path, "manifest lists no images"));
    }
    let mut classes: Vec<String> = samples.iter().map(|s| s.label.clone()).collect();
    classes.sort();
    classes.dedup();
    Ok(Dataset {
        source: path.to_path_buf(),
        classes,
        samples,
    })
}

/// Writes `samples` as a `path,label` manifest that [`Dataset::open`] reads
/// back: absolute paths (the file may be read from anywhere), fields quoted
/// where they hold a comma or a quote. A path or label that the reader would
/// not give back (a line break, spaces at either end: fields are trimmed), or
/// a path that is not UTF-8, is an error naming it.
pub fn write_manifest(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut text = String::from("path,label\n");
    for smp in samples {
        let p = manifest_path(&smp.path)?;
        if unreadable(&smp.label) {
            return Err(Error::data(
                &smp.path,
                format!(
                    "label {:?}: a line break or edge spaces in the path or label cannot go into a manifest",
                    smp.label
                ),
            ));
        }
        text.push_str(&format!("{},{}\n", csv_field(&p), csv_field(&smp.label)));
    }
    std::fs::write(path, text).at(path)
}

/// A field the manifest reader would not give back: a line break, or
/// spaces at either end (fields are trimmed).
fn unreadable(f: &str) -> bool {
    f.contains(['\n', '\r']) || f.trim() != f
}

/// A CSV field, quoted where it holds a comma or a quote.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `path` made absolute, as a manifest field (before [`csv_field`]); a path
/// that is not UTF-8 or that the reader would not give back is an error
/// naming it.
pub(crate) fn manifest_path(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path).at(path)?;
    let p = abs
        .to_str()
        .ok_or_else(|| Error::data(path, "the path is not UTF-8: it cannot go into a manifest"))?;
    if unreadable(p) {
        return Err(Error::data(
            path,
            "a line break or edge spaces in the path cannot go into a manifest",
        ));
    }
    Ok(p.to_string())
}

/// [`stratified_split`] over label names: each label is indexed among the
/// labels present in `labels` (sorted), so that every caller with the same
/// rows and seed gets the same split (`train`'s validation hold-out, and
/// `paint-cracks`, which sets the same images aside).
pub fn stratified_split_by_name(
    labels: &[&str],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut names: Vec<&str> = labels.to_vec();
    names.sort_unstable();
    names.dedup();
    let idx: Vec<usize> = labels
        .iter()
        .map(|l| names.binary_search(l).expect("present"))
        .collect();
    stratified_split(&idx, fraction, seed)
}

/// Indices of a split stratified by label: for each label, a seeded shuffle,
/// then `round(fraction * n)` images (at least one where the label has two or
/// more) go to the second part.
pub fn stratified_split(labels: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_label: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_label.entry(l).or_default().push(i);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (l, mut idx) in by_label {
        let mut rng = Rng::derive(seed, l as u64);
        rng.shuffle(&mut idx);
        let mut k = (fraction * idx.len() as f64).round() as usize;
        if k == 0 && fraction > 0.0 && idx.len() >= 2 {
            k = 1;
        }
        b.extend_from_slice(&idx[..k]);
        a.extend_from_slice(&idx[k..]);
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_fields(r#""a,b",c, "d""e" "#), vec!["a,b", "c", "d\"e"]);
    }

    #[test]
    fn manifest_with_split_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        std::fs::write(
            &m,
            "path,label,split\nimg/a.png,ok,train\nimg/b.png,bad,test\n",
        )
        .unwrap();
        let d = Dataset::open(&m).unwrap();
        assert_eq!(d.classes, vec!["bad", "ok"]);
        assert_eq!(d.samples[0].path, dir.path().join("img/a.png"));
        assert_eq!(d.only(Split::Test).unwrap().samples.len(), 1);
        assert!(d.samples[0].columns.is_empty());
    }

    #[test]
    fn manifest_keeps_its_other_columns() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        std::fs::write(
            &m,
            "path,label,Probability,split,type\na.png,defect,0.67,train,mono\nb.png,ok,0.0,test\n",
        )
        .unwrap();
        let d = Dataset::open(&m).unwrap();
        let cols = |i: usize| -> Vec<(String, String)> {
            d.samples[i]
                .columns
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(cols(0), vec![kv("probability", "0.67"), kv("type", "mono")]);
        // A short line gives empty values, as for the split.
        assert_eq!(cols(1), vec![kv("probability", "0.0"), kv("type", "")]);
    }

    #[test]
    fn written_manifest_reads_back_from_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let samples = vec![
            Sample {
                path: dir.path().join("a, \"quoted\" b.png"),
                label: "defect".into(),
                split: Some(Split::Val),
                columns: BTreeMap::new(),
            },
            Sample {
                path: dir.path().join("sub/c.png"),
                label: "ok,1".into(),
                split: None,
                columns: BTreeMap::new(),
            },
        ];
        let m = dir.path().join("out/v.csv");
        std::fs::create_dir_all(m.parent().unwrap()).unwrap();
        write_manifest(&m, &samples).unwrap();
        let d = Dataset::open(&m).unwrap();
        let got: Vec<_> = d
            .samples
            .iter()
            .map(|s| (s.path.clone(), s.label.clone()))
            .collect();
        let want = vec![
            (samples[0].path.clone(), "defect".to_string()),
            (samples[1].path.clone(), "ok,1".to_string()),
        ];
        assert_eq!(got, want);
        // What the reader would not give back is an error naming the image.
        for (name, label) in [("x.png", "o\nk"), ("y.png ", "ok")] {
            let bad = [Sample {
                path: dir.path().join(name),
                label: label.into(),
                split: None,
                columns: BTreeMap::new(),
            }];
            let e = write_manifest(&m, &bad).unwrap_err().to_string();
            assert!(
                e.contains(name.trim()) && e.contains("a line break or edge spaces"),
                "{e}"
            );
        }
    }

    #[test]
    fn manifest_bad_split_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        std::fs::write(&m, "path,label,split\na.png,ok,train\nb.png,ok,holdout\n").unwrap();
        let e = Dataset::open(&m).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("holdout"), "{e}");
    }

    #[test]
    fn stratified_split_keeps_label_ratios_and_is_seeded() {
        let labels: Vec<usize> = (0..100).map(|i| if i < 80 { 0 } else { 1 }).collect();
        let (tr, va) = stratified_split(&labels, 0.25, 1);
        assert_eq!(va.len(), 25);
        assert_eq!(va.iter().filter(|&&i| labels[i] == 1).count(), 5);
        assert_eq!(tr.len() + va.len(), 100);
        assert_eq!(stratified_split(&labels, 0.25, 1), (tr.clone(), va.clone()));
        assert_ne!(stratified_split(&labels, 0.25, 2).1, va);
    }
}
