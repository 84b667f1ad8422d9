//! Evidence: the images a person reviews, stored so that they reproduce the decision.
//!
//! For one image, the evidence folder holds:
//!
//! | file | what |
//! |---|---|
//! | `input.png` | the input as the model saw it (after preprocessing, before scaling), 8-bit |
//! | `frame.png` | the frame within the region of interest at full resolution, before resizing, 8-bit (format /2; the daemon and `explain`) |
//! | `cwm_<class>.png` | the class weight map as a heatmap (red > 0, blue < 0, white 0; symmetric scale) |
//! | `ccm_<class>_pos.png`, `ccm_<class>_neg.png` | the CCM's positive part and the magnitude of its negative part, 16-bit (grey, or RGB for 3-channel models) |
//! | `panel.png` | frame id, time, scores, probabilities and margin as text; input, CCM overlaid on the input, CWM, CCM+ (red), CCM- (blue) of the decided class and the runner-up |
//! | `evidence.json` | classes, decision, scores, and the scale of every CCM file |
//!
//! A CCM file stores `round(value / scale)` with `scale = max / 65535`, so the
//! CCM is known to within `scale / 2` per pixel and the class score, its mean,
//! to within `(scale_pos + scale_neg) / 2`. Because the GCM's score *is* the
//! CCM's mean, anyone can recompute every class score from the files alone
//! ([`reproduce`]); the product checks that for every decision it logs, and
//! `gcm-inspect verify` re-checks a whole log for auditors.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageBuffer, Luma, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::data::image_io::{encode_png, planar_to_dynamic, Planar};
use crate::decision::{argmax, Decision};
use crate::error::{Error, IoContext, Result};
use crate::fs::write_atomic;
use crate::model::Predictor;

pub(crate) mod panel;
pub use panel::heatmap;

pub const EVIDENCE_FORMAT: &str = "gcm-inspect-evidence/2";
/// The formats [`reproduce`] reads: /1 had no `frame.png`.
pub const EVIDENCE_FORMATS_READ: [&str; 2] = ["gcm-inspect-evidence/1", EVIDENCE_FORMAT];
pub const EVIDENCE_JSON: &str = "evidence.json";

/// One image's network outputs on the host, as evidence is made from them.
#[derive(Clone, Debug)]
pub struct FrameMaps {
    pub rows: usize,
    pub cols: usize,
    pub channels: usize,
    /// The scaled input, `[D, R, C]` flattened.
    pub scaled: Vec<f32>,
    /// Class weight maps, `[N, R, C]` flattened.
    pub cwm: Vec<f32>,
}

impl FrameMaps {
    /// Image `b` of a batch: `scaled` `[B, D, R, C]`, `cwm` `[B, N, R, C]`.
    pub fn from_batch(scaled: &Tensor, cwm: &Tensor, b: usize) -> Result<Self> {
        let (_, d, r, c) = scaled.dims4()?;
        let s = scaled
            .get(b)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let w = cwm
            .get(b)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(FrameMaps {
            rows: r,
            cols: c,
            channels: d,
            scaled: s,
            cwm: w,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.cwm.len() / (self.rows * self.cols)
    }

    pub fn cwm_of(&self, class: usize) -> &[f32] {
        let hw = self.rows * self.cols;
        &self.cwm[class * hw..(class + 1) * hw]
    }

    /// `CCM_j`, `[D, R, C]`: the class weight map tiled over channels times the scaled input.
    pub fn ccm_of(&self, class: usize) -> Vec<f32> {
        let hw = self.rows * self.cols;
        let w = self.cwm_of(class);
        self.scaled
            .chunks_exact(hw)
            .flat_map(|ch| ch.iter().zip(w).map(|(&x, &m)| x * m))
            .collect()
    }
}

/// A CCM split into quantised positive and negative parts.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantCcm {
    pub scale_pos: f64,
    pub scale_neg: f64,
    /// `[D, R, C]`, value `q * scale_pos`.
    pub pos: Vec<u16>,
    /// `[D, R, C]`, magnitude `q * scale_neg` of the negative part.
    pub neg: Vec<u16>,
}

impl QuantCcm {
    pub fn new(ccm: &[f32]) -> Self {
        let max_pos = ccm.iter().fold(0f32, |m, &v| m.max(v)) as f64;
        let max_neg = ccm.iter().fold(0f32, |m, &v| m.max(-v)) as f64;
        let scale = |m: f64| if m > 0.0 { m / 65535.0 } else { 0.0 };
        let (sp, sn) = (scale(max_pos), scale(max_neg));
        let q = |v: f64, s: f64| {
            if s > 0.0 {
                (v / s).round().clamp(0.0, 65535.0) as u16
            } else {
                0
            }
        };
        QuantCcm {
            scale_pos: sp,
            scale_neg: sn,
            pos: ccm.iter().map(|&v| q((v as f64).max(0.0), sp)).collect(),
            neg: ccm.iter().map(|&v| q((-v as f64).max(0.0), sn)).collect(),
        }
    }

    /// The sums of the stored parts: all that the score needs.
    pub fn sum(&self) -> QuantSum {
        QuantSum {
            scale_pos: self.scale_pos,
            scale_neg: self.scale_neg,
            pos: self.pos.iter().map(|&q| q as u64).sum(),
            neg: self.neg.iter().map(|&q| q as u64).sum(),
            len: self.pos.len(),
        }
    }

    /// The class score the stored parts give: their signed mean.
    pub fn score(&self) -> f64 {
        self.sum().score()
    }

    /// See [`QuantSum::tolerance`].
    pub fn tolerance(&self, score: f64) -> f64 {
        self.sum().tolerance(score)
    }
}

/// A quantised CCM reduced to what its score needs: the scales and the sums
/// of the stored values (check (a) for frames whose evidence is not kept;
/// on a GPU only these come back).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantSum {
    pub scale_pos: f64,
    pub scale_neg: f64,
    pub pos: u64,
    pub neg: u64,
    /// Values in the CCM (`D * R * C`).
    pub len: usize,
}

impl QuantSum {
    /// The class score the stored parts give: their signed mean.
    pub fn score(&self) -> f64 {
        (self.pos as f64 * self.scale_pos - self.neg as f64 * self.scale_neg) / self.len as f64
    }

    /// The largest difference between [`QuantSum::score`] and the exact mean
    /// that quantisation can cause, plus float rounding of the network's score.
    pub fn tolerance(&self, score: f64) -> f64 {
        (self.scale_pos + self.scale_neg) / 2.0 + 1e-5 * score.abs().max(1.0)
    }
}

/// One image's network outputs as evidence is built from them, wherever
/// they are: [`FrameMaps`] on the host, [`DeviceMaps`] on the device the
/// network ran on (the CCM is then built and quantised there, and only
/// what the evidence stores comes back). [`build`] and [`check`] take either.
pub trait Maps {
    /// `(D, R, C)` of the input and the number of classes N.
    fn dims(&self) -> ((usize, usize, usize), usize);
    /// Class `j`'s weight map `[R, C]` on the host.
    fn cwm_of(&self, j: usize) -> Result<Vec<f32>>;
    /// The quantised CCM of every class, in class order.
    fn quantised(&self) -> Result<Vec<QuantCcm>>;
    /// [`QuantCcm::sum`] of every class, in class order.
    fn sums(&self) -> Result<Vec<QuantSum>>;
}

impl Maps for FrameMaps {
    fn dims(&self) -> ((usize, usize, usize), usize) {
        ((self.channels, self.rows, self.cols), self.num_classes())
    }

    fn cwm_of(&self, j: usize) -> Result<Vec<f32>> {
        Ok(FrameMaps::cwm_of(self, j).to_vec())
    }

    fn quantised(&self) -> Result<Vec<QuantCcm>> {
        Ok((0..self.num_classes())
            .map(|j| QuantCcm::new(&self.ccm_of(j)))
            .collect())
    }

    fn sums(&self) -> Result<Vec<QuantSum>> {
        Ok(self.quantised()?.iter().map(QuantCcm::sum).collect())
    }
}

/// One image's scaled input `[1, D, R, C]` and class weight maps `[1, N, R,
/// C]` where the network left them (no copy). On a GPU the evidence ops
/// (`crate::gpu::evidence`) run there; on the CPU their reference runs.
#[derive(Clone, Debug)]
pub struct DeviceMaps {
    scaled: Tensor,
    cwm: Tensor,
}

impl DeviceMaps {
    /// Image `b` of a batch: `scaled` `[B, D, R, C]`, `cwm` `[B, N, R, C]`.
    pub fn from_batch(scaled: &Tensor, cwm: &Tensor, b: usize) -> Result<Self> {
        Ok(DeviceMaps {
            scaled: scaled.narrow(0, b, 1)?,
            cwm: cwm.narrow(0, b, 1)?,
        })
    }

    fn all(&self) -> Result<Vec<crate::gpu::Pick>> {
        let n = self.cwm.dim(1)?;
        Ok((0..n)
            .map(|class| crate::gpu::Pick { frame: 0, class })
            .collect())
    }
}

impl Maps for DeviceMaps {
    fn dims(&self) -> ((usize, usize, usize), usize) {
        let (_, d, r, c) = self.scaled.dims4().unwrap_or((1, 0, 0, 0));
        ((d, r, c), self.cwm.dim(1).unwrap_or(0))
    }

    fn cwm_of(&self, j: usize) -> Result<Vec<f32>> {
        Ok(self.cwm.get(0)?.get(j)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn quantised(&self) -> Result<Vec<QuantCcm>> {
        crate::gpu::ccm_evidence(&self.cwm, &self.scaled, &self.all()?)
    }

    fn sums(&self) -> Result<Vec<QuantSum>> {
        crate::gpu::ccm_sums(&self.cwm, &self.scaled, &self.all()?)
    }
}

/// One class's entry in `evidence.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CcmEntry {
    pub class: String,
    pub pos: String,
    pub neg: String,
    pub scale_pos: f64,
    pub scale_neg: f64,
    /// The score the network computed.
    pub score: f64,
    /// The score recomputed from the stored files when written.
    pub score_from_evidence: f64,
    /// The largest difference quantisation allows.
    pub tolerance: f64,
    /// The heatmap of this class's weight map, if written.
    #[serde(default)]
    pub cwm: Option<String>,
}

/// `evidence.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRecord {
    pub format: String,
    pub classes: Vec<String>,
    /// Index of the decided class.
    pub decision: usize,
    pub rows: usize,
    pub cols: usize,
    pub channels: usize,
    /// The model's input scaling (`raw`, `inverted`, `centred`).
    pub scaling: String,
    /// Model id (sha256 of the weights) when known.
    #[serde(default)]
    pub model_id: Option<String>,
    pub input: String,
    /// The frame at full resolution within the region of interest (format
    /// /2, when the frame was known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
    pub panel: String,
    pub ccm: Vec<CcmEntry>,
}

/// Which class heatmaps to write besides the CCM files of every class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapClasses {
    Decided,
    All,
}

/// Result of recomputing the scores from evidence files.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reproduction {
    /// Scores recomputed from the CCM files.
    pub scores: Vec<f64>,
    /// The argmax of the recomputed scores.
    pub decision: usize,
    /// The decision the record states.
    pub recorded_decision: usize,
    /// Largest |recomputed - recorded| over classes.
    pub max_abs_error: f64,
    /// Classes whose recomputed score is outside its tolerance.
    pub out_of_tolerance: Vec<String>,
}

impl Reproduction {
    pub fn ok(&self) -> bool {
        self.decision == self.recorded_decision && self.out_of_tolerance.is_empty()
    }
}

/// Encoded evidence for one image, ready to be written (PNG bytes in memory).
#[derive(Clone, Debug)]
pub struct Evidence {
    pub record: EvidenceRecord,
    /// `(file name, bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// The reproduction check on the quantised data, done before writing.
    pub check: Reproduction,
}

impl Evidence {
    /// The length of every file [`Evidence::write`] writes, `evidence.json`
    /// included.
    pub fn file_lengths(&self) -> Vec<u64> {
        let json = serde_json::to_vec_pretty(&self.record).map_or(0, |j| j.len());
        self.files
            .iter()
            .map(|(_, b)| b.len() as u64)
            .chain([json as u64])
            .collect()
    }

    /// Writes the files and `evidence.json` into `dir`: into a temporary
    /// sibling folder first, renamed into place, so a reader never sees half
    /// an evidence folder.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).at(parent)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        let written = self.write_into(&tmp).and_then(|()| {
            if dir.exists() {
                std::fs::remove_dir_all(dir).at(dir)?;
            }
            std::fs::rename(&tmp, dir).at(dir)
        });
        if written.is_err() {
            // A full disk must not fill up further with half-written folders.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written
    }

    fn write_into(&self, tmp: &Path) -> Result<()> {
        std::fs::create_dir_all(tmp).at(tmp)?;
        for (f, bytes) in &self.files {
            std::fs::write(tmp.join(f), bytes).at(tmp.join(f))?;
        }
        let json = serde_json::to_vec_pretty(&self.record).expect("record serialises");
        write_atomic(&tmp.join(EVIDENCE_JSON), &json)
    }
}

/// File-name-safe form of a class name.
/// A class name as a file-name part: ASCII letters, digits, `-` and `_`
/// kept, anything else `_`.
pub fn safe_name(class: &str) -> String {
    class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the evidence says about the model that made it.
#[derive(Clone, Copy, Debug)]
pub struct ModelInfo<'a> {
    pub classes: &'a [String],
    /// The input scaling's name (`InputScaling::name`).
    pub scaling: &'a str,
    /// The model id (sha256 of the weights), when known.
    pub model_id: Option<&'a str>,
}

impl<'a> ModelInfo<'a> {
    /// What the evidence records of the model `p`.
    pub fn of(p: &'a Predictor) -> Self {
        ModelInfo {
            classes: p.classes(),
            scaling: p.config().scaling.name(),
            model_id: Some(&p.card.weights_sha256),
        }
    }
}

/// The evidence of decision `d` made by `p` on `input`: the one builder
/// `explain` and the daemon share. `all_classes`: a weight-map heatmap for
/// every class, not only the decided one.
pub fn of_decision(
    p: &Predictor,
    seen: &Seen,
    maps: &dyn Maps,
    d: &Decision,
    all_classes: bool,
) -> Result<Evidence> {
    let heatmaps = if all_classes {
        HeatmapClasses::All
    } else {
        HeatmapClasses::Decided
    };
    build(
        seen,
        maps,
        ModelInfo::of(p),
        &d.scores,
        d.class_index,
        heatmaps,
    )
}

/// What the evidence shows of the image itself.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// The input as the model saw it, 8-bit (`input.png`).
    pub input: &'a Planar,
    /// The frame within the region of interest at full resolution, before
    /// resizing (`frame.png`), so that a relabelled frame can train a model
    /// of any input size.
    pub frame: Option<&'a DynamicImage>,
    /// For the panel's caption.
    pub frame_id: Option<u64>,
    pub captured_unix_us: Option<u64>,
    /// The source's name for the image (a replayed file's name).
    pub name: Option<&'a str>,
}

impl<'a> Seen<'a> {
    /// Only the model's input (no frame, no caption).
    pub fn input(input: &'a Planar) -> Self {
        Seen {
            input,
            frame: None,
            frame_id: None,
            captured_unix_us: None,
            name: None,
        }
    }
}

/// Builds the evidence for one image.
///
/// `seen` is the image as the model saw it and, if known, as captured; `maps`
/// its scaled input and class weight maps; `scores` the network's scores;
/// `decision` the decided class.
pub fn build(
    seen: &Seen,
    maps: &dyn Maps,
    model: ModelInfo,
    scores: &[f32],
    decision: usize,
    heatmaps: HeatmapClasses,
) -> Result<Evidence> {
    let ModelInfo {
        classes,
        scaling,
        model_id,
    } = model;
    let n = classes.len();
    let ((d, r, c), maps_n) = maps.dims();
    if maps_n != n || scores.len() != n {
        return Err(Error::Runtime(format!(
            "evidence: {} classes, {maps_n} maps, {} scores",
            n,
            scores.len()
        )));
    }
    let quants = maps.quantised()?;
    let input = seen.input;
    let mut files = vec![(
        "input.png".to_string(),
        encode_png(&planar_to_dynamic(input))?,
    )];
    let frame = match seen.frame {
        Some(img) => {
            files.push(("frame.png".to_string(), encode_png(img)?));
            Some("frame.png".to_string())
        }
        None => None,
    };
    let mut entries = Vec::with_capacity(n);
    let mut decided_cwm = None;
    for (j, (class, q)) in classes.iter().zip(&quants).enumerate() {
        let (pos, neg) = (
            format!("ccm_{}_pos.png", safe_name(class)),
            format!("ccm_{}_neg.png", safe_name(class)),
        );
        files.push((pos.clone(), encode_png(&u16_image(&q.pos, d, r, c))?));
        files.push((neg.clone(), encode_png(&u16_image(&q.neg, d, r, c))?));
        let cwm = if heatmaps == HeatmapClasses::All || j == decision {
            let f = format!("cwm_{}.png", safe_name(class));
            let map = maps.cwm_of(j)?;
            files.push((
                f.clone(),
                encode_png(&DynamicImage::ImageRgb8(heatmap(&map, r, c)))?,
            ));
            if j == decision {
                decided_cwm = Some(map);
            }
            Some(f)
        } else {
            None
        };
        let score = scores[j] as f64;
        entries.push(CcmEntry {
            class: class.clone(),
            pos,
            neg,
            scale_pos: q.scale_pos,
            scale_neg: q.scale_neg,
            score,
            score_from_evidence: q.score(),
            tolerance: q.tolerance(score),
            cwm,
        });
    }
    let decided_cwm = match decided_cwm {
        Some(m) => m,
        None => maps.cwm_of(decision)?,
    };
    let picture = panel_of(
        seen,
        maps,
        (classes, scores),
        &quants,
        (decision, decided_cwm),
    )?;
    files.push((
        "panel.png".to_string(),
        encode_png(&DynamicImage::ImageRgb8(picture))?,
    ));
    let record = EvidenceRecord {
        format: EVIDENCE_FORMAT.into(),
        classes: classes.to_vec(),
        decision,
        rows: r,
        cols: c,
        channels: d,
        scaling: scaling.to_string(),
        model_id: model_id.map(str::to_string),
        input: "input.png".into(),
        frame,
        panel: "panel.png".into(),
        ccm: entries,
    };
    let check = compare(
        &record,
        &quants.iter().map(QuantCcm::score).collect::<Vec<_>>(),
    );
    Ok(Evidence {
        record,
        files,
        check,
    })
}

/// The panel of the decided class and the runner-up (the best other score).
fn panel_of(
    seen: &Seen,
    maps: &dyn Maps,
    (classes, scores): (&[String], &[f32]),
    quants: &[QuantCcm],
    (decision, decided_cwm): (usize, Vec<f32>),
) -> Result<RgbImage> {
    let p = crate::decision::softmax(scores);
    let runner_up = (0..scores.len()).filter(|&j| j != decision).reduce(|a, b| {
        if scores[b] > scores[a] {
            b
        } else {
            a
        }
    });
    let ru_cwm = runner_up.map(|k| maps.cwm_of(k)).transpose()?;
    let mut rows = vec![panel::ClassRow {
        class: &classes[decision],
        score: scores[decision],
        probability: p[decision],
        cwm: &decided_cwm,
        q: &quants[decision],
    }];
    if let (Some(k), Some(cwm)) = (runner_up, ru_cwm.as_deref()) {
        rows.push(panel::ClassRow {
            class: &classes[k],
            score: scores[k],
            probability: p[k],
            cwm,
            q: &quants[k],
        });
    }
    let margin = runner_up.map_or(0.0, |k| scores[decision] - scores[k]);
    panel::panel(seen, &rows, margin)
}

/// Check (a) in memory: quantises every class's CCM exactly as [`build`]
/// stores it and recomputes the scores, without encoding any file. Use it for
/// frames whose evidence is not kept; [`build`] does the same for those that are.
pub fn check(
    maps: &dyn Maps,
    classes: &[String],
    scores: &[f32],
    decision: usize,
) -> Result<Reproduction> {
    let sums = maps.sums()?;
    if sums.len() != scores.len() {
        return Err(Error::Runtime(format!(
            "evidence: {} maps, {} scores",
            sums.len(),
            scores.len()
        )));
    }
    let recomputed: Vec<f64> = sums.iter().map(QuantSum::score).collect();
    let tolerances: Vec<f64> = sums
        .iter()
        .zip(scores)
        .map(|(q, &s)| q.tolerance(s as f64))
        .collect();
    Ok(reproduction(
        classes,
        scores,
        &tolerances,
        decision,
        &recomputed,
    ))
}

impl Reproduction {
    /// A sentence for logs when the check fails.
    pub fn describe_failure(&self, classes: &[String]) -> String {
        let name = |i: usize| classes.get(i).map(String::as_str).unwrap_or("?");
        format!(
            "evidence decides {} (decision {}); classes out of tolerance: {:?}",
            name(self.decision),
            name(self.recorded_decision),
            self.out_of_tolerance
        )
    }
}

fn compare(record: &EvidenceRecord, recomputed: &[f64]) -> Reproduction {
    let scores: Vec<f32> = record.ccm.iter().map(|e| e.score as f32).collect();
    let tolerances: Vec<f64> = record.ccm.iter().map(|e| e.tolerance).collect();
    reproduction(
        &record.classes,
        &scores,
        &tolerances,
        record.decision,
        recomputed,
    )
}

fn reproduction(
    classes: &[String],
    scores: &[f32],
    tolerances: &[f64],
    decision: usize,
    recomputed: &[f64],
) -> Reproduction {
    let recomputed_f32: Vec<f32> = recomputed.iter().map(|&v| v as f32).collect();
    let mut out_of_tolerance = Vec::new();
    let mut max_abs_error = 0f64;
    for (j, &s) in recomputed.iter().enumerate() {
        let err = (s - scores[j] as f64).abs();
        max_abs_error = max_abs_error.max(err);
        if err.is_nan() || err > tolerances[j] {
            out_of_tolerance.push(classes[j].clone());
        }
    }
    Reproduction {
        scores: recomputed.to_vec(),
        decision: argmax(&recomputed_f32),
        recorded_decision: decision,
        max_abs_error,
        out_of_tolerance,
    }
}

/// Reads an evidence folder back and recomputes every class score from the
/// stored CCM files (the audit check).
pub fn reproduce(dir: &Path) -> Result<(EvidenceRecord, Reproduction)> {
    let jp = dir.join(EVIDENCE_JSON);
    let text = std::fs::read_to_string(&jp).at(&jp)?;
    let record: EvidenceRecord = serde_json::from_str(&text)
        .map_err(|e| Error::data(&jp, format!("invalid evidence record: {e}")))?;
    if !EVIDENCE_FORMATS_READ.contains(&record.format.as_str()) {
        return Err(Error::data(
            &jp,
            format!(
                "format {:?} is not one of {EVIDENCE_FORMATS_READ:?}",
                record.format
            ),
        ));
    }
    let expect = record.rows * record.cols * record.channels;
    let mut recomputed = Vec::with_capacity(record.ccm.len());
    for e in &record.ccm {
        let pos = read_u16(&dir.join(&e.pos), &record)?;
        let neg = read_u16(&dir.join(&e.neg), &record)?;
        if pos.len() != expect || neg.len() != expect {
            return Err(Error::data(
                dir,
                format!("class {}: CCM files do not hold {expect} values", e.class),
            ));
        }
        let q = QuantCcm {
            scale_pos: e.scale_pos,
            scale_neg: e.scale_neg,
            pos,
            neg,
        };
        recomputed.push(q.score());
    }
    let rep = compare(&record, &recomputed);
    Ok((record, rep))
}

/// Planar `[D, R, C]` u16 values as a 16-bit PNG image.
fn u16_image(v: &[u16], d: usize, r: usize, c: usize) -> DynamicImage {
    let hw = r * c;
    if d == 1 {
        DynamicImage::ImageLuma16(
            ImageBuffer::<Luma<u16>, _>::from_raw(c as u32, r as u32, v.to_vec()).expect("sized"),
        )
    } else {
        let mut inter = Vec::with_capacity(3 * hw);
        for i in 0..hw {
            for ch in 0..3 {
                inter.push(v[ch * hw + i]);
            }
        }
        DynamicImage::ImageRgb16(
            ImageBuffer::<Rgb<u16>, _>::from_raw(c as u32, r as u32, inter).expect("sized"),
        )
    }
}

fn read_u16(path: &PathBuf, rec: &EvidenceRecord) -> Result<Vec<u16>> {
    let img = crate::data::image_io::decode(path)?;
    if (img.height() as usize, img.width() as usize) != (rec.rows, rec.cols) {
        return Err(Error::data(
            path,
            format!(
                "is {}x{}, the record says {}x{}",
                img.width(),
                img.height(),
                rec.cols,
                rec.rows
            ),
        ));
    }
    let hw = rec.rows * rec.cols;
    match (rec.channels, img) {
        (1, DynamicImage::ImageLuma16(b)) => Ok(b.into_raw()),
        (3, DynamicImage::ImageRgb16(b)) => {
            let raw = b.into_raw();
            let mut planar = vec![0u16; 3 * hw];
            for i in 0..hw {
                for ch in 0..3 {
                    planar[ch * hw + i] = raw[3 * i + ch];
                }
            }
            Ok(planar)
        }
        (d, other) => Err(Error::data(
            path,
            format!(
                "is {:?}, expected 16-bit {} for a {d}-channel model",
                other.color(),
                if d == 1 { "grey" } else { "RGB" }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn maps(d: usize, n: usize, r: usize, c: usize, seed: u64) -> (Planar, FrameMaps) {
        let mut rng = Rng::new(seed);
        let data: Vec<u8> = (0..d * r * c).map(|_| rng.below(256) as u8).collect();
        let input = Planar {
            channels: d,
            rows: r,
            cols: c,
            data: data.clone(),
        };
        let scaled = data.iter().map(|&b| b as f32 / 255.0 - 0.3).collect();
        let cwm = (0..n * r * c)
            .map(|_| rng.range(-3.0, 3.0) as f32)
            .collect();
        (
            input,
            FrameMaps {
                rows: r,
                cols: c,
                channels: d,
                scaled,
                cwm,
            },
        )
    }

    fn info<'a>(
        classes: &'a [String],
        scaling: &'a str,
        model_id: Option<&'a str>,
    ) -> ModelInfo<'a> {
        ModelInfo {
            classes,
            scaling,
            model_id,
        }
    }

    fn exact_scores(m: &FrameMaps) -> Vec<f32> {
        (0..m.num_classes())
            .map(|j| {
                let v = m.ccm_of(j);
                (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
            })
            .collect()
    }

    #[test]
    fn written_evidence_reproduces_the_scores() {
        let classes: Vec<String> = vec!["ok".into(), "crack".into(), "spot".into()];
        for d in [1, 3] {
            let (input, m) = maps(d, 3, 9, 7, d as u64);
            let scores = exact_scores(&m);
            let dec = argmax(&scores);
            let ev = build(
                &Seen::input(&input),
                &m,
                info(&classes, "centred", Some("abc")),
                &scores,
                dec,
                HeatmapClasses::Decided,
            )
            .unwrap();
            assert!(ev.check.ok(), "{:?}", ev.check);
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("frame-1");
            ev.write(&dir).unwrap();
            let (rec, rep) = reproduce(&dir).unwrap();
            assert_eq!(rec, ev.record);
            assert!(rep.ok(), "{rep:?}");
            for (a, b) in rep.scores.iter().zip(&scores) {
                assert!((a - *b as f64).abs() < 1e-4, "{a} vs {b}");
            }
            assert!(dir.join(format!("cwm_{}.png", classes[dec])).exists());
        }
    }

    #[test]
    fn a_corrupted_ccm_file_is_divergent() {
        let classes: Vec<String> = vec!["ok".into(), "crack".into()];
        let (input, m) = maps(1, 2, 16, 16, 7);
        let scores = exact_scores(&m);
        let ev = build(
            &Seen::input(&input),
            &m,
            info(&classes, "raw", None),
            &scores,
            argmax(&scores),
            HeatmapClasses::All,
        )
        .unwrap();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("f");
        ev.write(&dir).unwrap();
        // Paint the positive part of class 0 white: its score must move.
        let p = dir.join(&ev.record.ccm[0].pos);
        let img = ImageBuffer::<Luma<u16>, _>::from_pixel(16, 16, Luma([65535u16]));
        DynamicImage::ImageLuma16(img).save(&p).unwrap();
        let (_, rep) = reproduce(&dir).unwrap();
        assert!(!rep.ok());
        assert_eq!(rep.out_of_tolerance, vec!["ok".to_string()]);
    }

    #[test]
    fn quantisation_error_stays_within_the_stated_tolerance() {
        let mut rng = Rng::new(2);
        for _ in 0..50 {
            let n = 1 + rng.below(500);
            let scale = rng.range(1e-3, 1e3);
            let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
            let exact = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let q = QuantCcm::new(&v);
            assert!(
                (q.score() - exact).abs() <= q.tolerance(exact),
                "{} vs {exact}",
                q.score()
            );
        }
    }

    #[test]
    fn all_zero_ccm_is_zero() {
        let q = QuantCcm::new(&[0.0; 10]);
        assert_eq!((q.score(), q.scale_pos, q.scale_neg), (0.0, 0.0, 0.0));
    }
}
