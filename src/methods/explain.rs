//! `gcm-inspect explain --method NAME` for the baseline CNN: each image's
//! decision and the chosen method's maps, in an evidence folder per image.
//!
//! `OUT/<image name>/` holds `input.png`, `<method>-weight.png` (the weight
//! map at input size, signed heatmap: red positive, blue negative),
//! `<method>-visual.png` (what the method shows a person, see
//! [`super`]), `methods.json` (the decision, and per method its class and
//! its weight map at the method's own resolution, so that anyone can check
//! it: for CAM, the map's mean plus the class's FC bias is the class score),
//! and with `--method all` `compare.png`, the comparison grid. With
//! `--gcm-model`, the GCM's CWM and CCM of the same image (from that model,
//! for its own decided class) join the folder and the grid, as the paper's
//! Fig. 10 sets them beside the CNN's methods.
//!
//! Maps are of the CNN's decided class. Images go through the same
//! preprocessing contract as `explain` and the daemon, on the CPU.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::{cam, cav, gradcam, guided, render, upsample, Method};
use crate::data::image_io::planar_to_dynamic;
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::evidence::panel::heatmap;
use crate::explain::Explained;
use crate::model::checkpoint::LoadedModel;
use crate::model::{Arch, Cnn, Input, Predictor};
use crate::preprocess::{self, PreprocessSpec};

/// What to write.
#[derive(Clone, Debug)]
pub struct Options {
    pub out: PathBuf,
    pub method: Method,
    pub resize: bool,
    /// A GCM model whose evidence joins the CNN's (`--gcm-model`).
    pub gcm_model: Option<String>,
    /// The layer CAV analyses (the input of encoder layer N; 0 the pixels).
    pub cav_layer: usize,
}

/// A weight map at the method's own resolution.
#[derive(Debug, Serialize)]
pub struct RawMap {
    pub rows: usize,
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// One method's entry in `methods.json`.
#[derive(Debug, Serialize)]
pub struct MethodEntry {
    pub method: &'static str,
    /// The class whose evidence this is.
    pub class: String,
    pub class_index: usize,
    /// That class's score under the model the method ran on.
    pub score: f32,
    pub weight_png: String,
    pub visual_png: String,
    /// CAM: `fc.bias` of the class (mean of `map` + bias = score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<f32>,
    /// CAV: the share of the score the biases at and after the analysed
    /// layer kept (sum of `map` + absorbed = score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absorbed: Option<f32>,
    /// CAV: the analysed layer (the input of encoder layer N).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// What `map` is, in words.
    pub map_is: &'static str,
    pub map: RawMap,
}

/// `methods.json`.
#[derive(Debug, Serialize)]
pub struct MethodsRecord {
    pub image: PathBuf,
    pub model: PathBuf,
    pub arch: &'static str,
    pub decision: String,
    pub class_index: usize,
    pub classes: Vec<String>,
    pub scores: Vec<f32>,
    pub methods: Vec<MethodEntry>,
    /// The comparison grid, with `--method all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_png: Option<String>,
}

/// The CNN model (its folder already loaded), checked to be one.
pub fn cnn_of(m: &LoadedModel) -> Result<Cnn> {
    if m.card.model.arch != Arch::Cnn {
        return Err(Error::Usage(format!(
            "{}: a {} model; CAM, Grad-CAM and Guided Backprop run on the baseline CNN (train --arch cnn); --method gcm explains a GCM",
            m.dir.display(),
            m.card.model.arch.name()
        )));
    }
    m.build_cnn(&Device::Cpu)
}

/// Decides every image with the CNN and writes the chosen methods' maps.
pub fn explain(m: &LoadedModel, images: &[PathBuf], opts: &Options) -> Result<Vec<Explained>> {
    let net = cnn_of(m)?;
    let layers = net.encoder().len();
    if opts.cav_layer > layers {
        return Err(Error::Usage(format!(
            "--cav-layer {}: {} has {layers} encoder layers (0 is the input, {layers} the last feature maps)",
            opts.cav_layer,
            m.dir.display()
        )));
    }
    let methods: Vec<Method> = match opts.method {
        Method::All => Method::CNN.to_vec(),
        Method::Gcm => {
            return Err(Error::Usage(format!(
                "{}: --method gcm needs a GCM model; this one is the baseline CNN",
                m.dir.display()
            )))
        }
        one => vec![one],
    };
    let gcm = match &opts.gcm_model {
        Some(spec) => Some(Predictor::open(spec, &Device::Cpu)?),
        None => None,
    };
    let spec = PreprocessSpec::for_model(&m.card.model, None);
    let frames = images
        .iter()
        .map(|f| crate::explain::checked(f, &spec, opts.resize))
        .collect::<Result<Vec<_>>>()?;
    let gcm_frames = match &gcm {
        Some(p) => {
            let s = PreprocessSpec::for_model(p.config(), None);
            let f = images
                .iter()
                .map(|f| crate::explain::checked(f, &s, opts.resize))
                .collect::<Result<Vec<_>>>()?;
            Some((p, s, f))
        }
        None => None,
    };
    let names = crate::explain::evidence_names(images);
    let mut results = Vec::with_capacity(images.len());
    for (i, frame) in frames.iter().enumerate() {
        let prepared = preprocess::prepare(frame, &spec, &Device::Cpu)
            .map_err(|e| Error::data(&images[i], e.to_string()))?;
        let scaled = &prepared.scaled;
        let scores = net.logits(&net.features(scaled, false)?)?;
        let d = Decision::from_scores(net.config().classes.as_slice(), scores.get(0)?.to_vec1()?);
        let input_rgb = planar_to_dynamic(&prepared.planar).to_rgb8();
        let mut drawn = Drawn {
            dir: opts.out.join(&names[i]),
            tiles: Vec::new(),
        };
        std::fs::create_dir_all(&drawn.dir)
            .map_err(|e| Error::data(&drawn.dir, format!("cannot create: {e}")))?;
        save_png(&drawn.dir.join("input.png"), &input_rgb)?;
        let mut entries = Vec::new();
        for &method in &methods {
            entries.push(cnn_method(
                &net,
                scaled,
                &d,
                &input_rgb,
                method,
                opts.cav_layer,
                &mut drawn,
            )?);
        }
        if let Some((p, s, f)) = &gcm_frames {
            entries.push(gcm_method(p, s, &f[i], &images[i], &mut drawn)?);
        }
        let compare_png = if opts.method == Method::All {
            let columns: Vec<render::GridColumn> = drawn
                .tiles
                .iter()
                .map(|(t, w, v)| render::GridColumn {
                    title: t,
                    weight: w,
                    visual: v,
                })
                .collect();
            let caption = format!(
                "{} · CNN decided {} (score {:.4}, p {:.3})",
                images[i]
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                d.class,
                d.scores[d.class_index],
                d.probabilities[d.class_index]
            );
            let g = render::grid(&caption, &input_rgb, &columns)?;
            save_png(&drawn.dir.join("compare.png"), &g)?;
            Some("compare.png".to_string())
        } else {
            None
        };
        let record = MethodsRecord {
            image: images[i].clone(),
            model: m.dir.clone(),
            arch: Arch::Cnn.name(),
            decision: d.class.clone(),
            class_index: d.class_index,
            classes: net.config().classes.clone(),
            scores: d.scores.clone(),
            methods: entries,
            compare_png,
        };
        let p = drawn.dir.join("methods.json");
        crate::fs::write_atomic(
            &p,
            &serde_json::to_vec_pretty(&record).expect("record serialises"),
        )?;
        results.push(Explained {
            image: images[i].clone(),
            decision: d.class,
            class_index: d.class_index,
            classes: net.config().classes.clone(),
            scores: d.scores,
            probabilities: d.probabilities,
            margin: d.margin,
            evidence: Some(drawn.dir),
            evidence_reproduces: None,
        });
    }
    Ok(results)
}

/// The folder being written and the grid's tiles so far.
struct Drawn {
    dir: PathBuf,
    tiles: Vec<(&'static str, RgbImage, RgbImage)>,
}

impl Drawn {
    /// Writes a method's two pictures; returns their file names.
    fn add(
        &mut self,
        method: Method,
        weight: RgbImage,
        visual: RgbImage,
    ) -> Result<(String, String)> {
        let w = format!("{}-weight.png", method.name());
        let v = format!("{}-visual.png", method.name());
        save_png(&self.dir.join(&w), &weight)?;
        save_png(&self.dir.join(&v), &visual)?;
        self.tiles.push((method.title(), weight, visual));
        Ok((w, v))
    }
}

fn raw(map: &Tensor) -> Result<RawMap> {
    let map = map.squeeze(0)?;
    let (rows, cols) = map.dims2()?;
    Ok(RawMap {
        rows,
        cols,
        values: map.flatten_all()?.to_vec1()?,
    })
}

/// One CNN method's pictures and entry, for the decided class.
fn cnn_method(
    net: &Cnn,
    scaled: &Tensor,
    d: &Decision,
    input_rgb: &RgbImage,
    method: Method,
    cav_layer: usize,
    drawn: &mut Drawn,
) -> Result<MethodEntry> {
    let (_, ch, r, c) = scaled.dims4()?;
    let cls = [d.class_index];
    let last = net.encoder().len() - 1;
    // A coarse map `[1, h, w]`, shown upsampled and blended; or a response
    // `[1, D, R, C]` shown as an image.
    let mut absorbed = None;
    let mut layer = None;
    let (native, response, map_is, bias) = match method {
        Method::Cam => {
            let b = net.fc().1.get(d.class_index)?.to_scalar::<f32>()?;
            let m = cam::cam(net, scaled, &cls)?;
            (
                Some(m),
                None,
                "CAM at the last feature maps' resolution",
                Some(b),
            )
        }
        Method::Gradcam => {
            let g = gradcam::grad_cam(net, scaled, &cls, last)?;
            (
                Some(g.map),
                None,
                "Grad-CAM at the last feature maps' resolution",
                None,
            )
        }
        Method::GuidedBackprop => {
            let g = guided::guided_backprop(net, scaled, &cls)?;
            (
                None,
                Some(g),
                "guided gradient, summed over input channels",
                None,
            )
        }
        Method::GuidedGradcam => {
            let gc = gradcam::grad_cam(net, scaled, &cls, last)?;
            let g = guided::guided_backprop(net, scaled, &cls)?;
            let ggc = guided::guided_grad_cam(&gc.map, &g)?;
            (
                None,
                Some(ggc),
                "Guided Grad-CAM, summed over input channels",
                None,
            )
        }
        Method::Cav => {
            let v = cav::cav(net, scaled, &cls, cav_layer)?;
            absorbed = Some(v.absorbed[0]);
            layer = Some(cav_layer);
            (
                Some(v.map),
                None,
                "CAV contributions at the input of encoder layer `layer`, summed over channels (sum + absorbed = score)",
                None,
            )
        }
        Method::Gcm | Method::All => unreachable!("not a CNN method"),
    };
    let (weight, visual, map) = match (native, response) {
        (Some(m), _) => {
            let full = upsample(&m, r, c)?.flatten_all()?.to_vec1::<f32>()?;
            (
                heatmap(&full, r, c),
                render::cam_blend(&full, input_rgb),
                raw(&m)?,
            )
        }
        (None, Some(g)) => {
            let summed = g.sum(1)?;
            let flat = summed.flatten_all()?.to_vec1::<f32>()?;
            let v = g.flatten_all()?.to_vec1::<f32>()?;
            (
                heatmap(&flat, r, c),
                render::response_image(&v, ch, r, c),
                raw(&summed)?,
            )
        }
        (None, None) => unreachable!("every method gives a map"),
    };
    let (weight_png, visual_png) = drawn.add(method, weight, visual)?;
    Ok(MethodEntry {
        method: method.name(),
        class: d.class.clone(),
        class_index: d.class_index,
        score: d.scores[d.class_index],
        weight_png,
        visual_png,
        bias,
        absorbed,
        layer,
        map_is,
        map,
    })
}

/// The GCM's CWM and CCM of one image, from the GCM model, for its decided class.
fn gcm_method(
    p: &Predictor,
    spec: &PreprocessSpec,
    frame: &preprocess::FrameData,
    image: &Path,
    drawn: &mut Drawn,
) -> Result<MethodEntry> {
    let prepared = preprocess::prepare(frame, spec, p.device())
        .map_err(|e| Error::data(image, e.to_string()))?;
    let out = p.forward(Input::Scaled(&prepared.scaled))?;
    let d = p
        .decide(&out.scores)?
        .into_iter()
        .next()
        .expect("one image");
    let cwm = out.cwm.get(0)?.get(d.class_index)?; // [R, C]
    let ccm = out
        .scaled
        .get(0)?
        .broadcast_mul(&cwm.unsqueeze(0)?)?
        .sum(0)?; // [R, C]
    let (r, c) = cwm.dims2()?;
    let cwm_v = cwm.flatten_all()?.to_vec1::<f32>()?;
    let ccm_v = ccm.flatten_all()?.to_vec1::<f32>()?;
    let (weight_png, visual_png) =
        drawn.add(Method::Gcm, heatmap(&cwm_v, r, c), heatmap(&ccm_v, r, c))?;
    Ok(MethodEntry {
        method: Method::Gcm.name(),
        class: d.class.clone(),
        class_index: d.class_index,
        score: d.scores[d.class_index],
        weight_png,
        visual_png,
        bias: None,
        absorbed: None,
        layer: None,
        map_is: "CCM summed over input channels (score = its sum / (rows x cols x channels))",
        map: RawMap {
            rows: r,
            cols: c,
            values: ccm_v,
        },
    })
}

fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::data(path, format!("cannot write: {e}")))
}
