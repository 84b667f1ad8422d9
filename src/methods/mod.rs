//! The evidence methods an inspection engineer already knows, on the
//! baseline CNN of the GCM paper's Table 6 ([`crate::model::Cnn`]), to set
//! beside the GCM's own evidence: CAM ([`cam`]), Grad-CAM ([`gradcam`]),
//! Guided Backprop and Guided Grad-CAM ([`guided`]), and CAV, the model
//! inverse analysis ([`cav`]). Each method gives a
//! *weight map* (what it attributes to each place) and a *visual map* (what
//! a person is shown), as in the paper's Fig. 10:
//!
//! | method | weight map | visual map |
//! |---|---|---|
//! | CAM, Grad-CAM | the map, bilinearly upsampled to the input | CAM-style blend: jet colours of the min-max normalised map x 0.7 + image x 0.2 |
//! | Guided Backprop, Guided Grad-CAM | the response, summed over input channels | the response as an image (0.5 + 0.5 x response / max abs) |
//! | CAV | the contributions at the analysed layer summed over channels (signed), bilinearly upsampled when coarser than the input | the CAM-style blend of that map |
//! | GCM | the CWM | the CCM (CWM x scaled input), summed over channels |
//!
//! Gradients come from candle's autograd through the engine's convolution
//! backward; the methods run on the CPU (Guided Backprop's ReLU is a CPU op).
//! `gcm-inspect explain --method NAME` writes them ([`explain`]).

pub mod cam;
pub mod cav;
pub mod decline;
pub mod explain;
pub mod faithfulness;
pub mod gradcam;
pub mod guided;
pub mod render;

use candle_core::{Result, Tensor, D};

/// An evidence method `explain --method` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// The GCM's own evidence (CWM and CCM), from a GCM model.
    Gcm,
    Cam,
    Gradcam,
    GuidedBackprop,
    GuidedGradcam,
    /// CAV, the model inverse analysis (contributions chained back from the score).
    Cav,
    /// Every method the model supports, and a comparison grid per image.
    All,
}

impl Method {
    /// The methods of the baseline CNN, in the grid's order.
    pub const CNN: [Method; 5] = [
        Method::Cam,
        Method::Gradcam,
        Method::GuidedBackprop,
        Method::GuidedGradcam,
        Method::Cav,
    ];

    /// The name in file names and `methods.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Gcm => "gcm",
            Method::Cam => "cam",
            Method::Gradcam => "gradcam",
            Method::GuidedBackprop => "guided-backprop",
            Method::GuidedGradcam => "guided-gradcam",
            Method::Cav => "cav",
            Method::All => "all",
        }
    }

    /// The name people read (the grid's captions).
    pub fn title(self) -> &'static str {
        match self {
            Method::Gcm => "GCM",
            Method::Cam => "CAM",
            Method::Gradcam => "Grad-CAM",
            Method::GuidedBackprop => "Guided Backprop",
            Method::GuidedGradcam => "Guided Grad-CAM",
            Method::Cav => "CAV",
            Method::All => "all",
        }
    }
}

/// What a method gives for a batch.
#[derive(Debug)]
pub enum MethodMap {
    /// A map coarser than (or as fine as) the input, `[B, h, w]`: CAM,
    /// Grad-CAM, CAV.
    Coarse(Tensor),
    /// A response at input size over the input's channels, `[B, D, R, C]`:
    /// Guided Backprop, Guided Grad-CAM.
    Response(Tensor),
}

impl MethodMap {
    pub fn flatten_all(&self) -> Result<Tensor> {
        match self {
            MethodMap::Coarse(t) | MethodMap::Response(t) => t.flatten_all(),
        }
    }
}

/// The map of a CNN `method` for class `classes[b]` of each image of scaled
/// input `[B, D, R, C]`; CAV at the input of encoder layer `cav_layer`.
pub fn method_map(
    net: &crate::model::Cnn,
    scaled: &Tensor,
    classes: &[usize],
    method: Method,
    cav_layer: usize,
) -> Result<MethodMap> {
    let last = net.encoder().len() - 1;
    Ok(match method {
        Method::Cam => MethodMap::Coarse(cam::cam(net, scaled, classes)?),
        Method::Gradcam => MethodMap::Coarse(gradcam::grad_cam(net, scaled, classes, last)?.map),
        Method::GuidedBackprop => {
            MethodMap::Response(guided::guided_backprop(net, scaled, classes)?)
        }
        Method::GuidedGradcam => {
            let gc = gradcam::grad_cam(net, scaled, classes, last)?;
            let gb = guided::guided_backprop(net, scaled, classes)?;
            MethodMap::Response(guided::guided_grad_cam(&gc.map, &gb)?)
        }
        Method::Cav => MethodMap::Coarse(cav::cav(net, scaled, classes, cav_layer)?.map),
        Method::Gcm | Method::All => {
            candle_core::bail!(
                "--method {}: not a method of the baseline CNN",
                method.name()
            )
        }
    })
}

/// `all[b, classes[b]]` for each image: `[B, N, h, w]` -> `[B, h, w]`.
pub fn pick_classes(all: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let maps = classes
        .iter()
        .enumerate()
        .map(|(b, &c)| all.get(b)?.get(c))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&maps, 0)
}

/// `sum_b scores[b, classes[b]]`: one scalar whose gradient is, image by
/// image, that of its own class score (images do not interact in inference).
pub fn class_score_sum(scores: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = classes.iter().map(|&c| c as u32).collect();
    let idx = Tensor::from_vec(idx, (classes.len(), 1), scores.device())?;
    scores.gather(&idx, D::Minus1)?.sum_all()
}

/// Bilinear upsampling (PyTorch's, corners not aligned) of maps `[B, h, w]`
/// to `[B, r, c]`.
pub fn upsample(maps: &Tensor, r: usize, c: usize) -> Result<Tensor> {
    maps.unsqueeze(1)?
        .upsample_bilinear2d(r, c, false)?
        .squeeze(1)
}

/// Bicubic upsampling of one map `[h, w]` (row-major) to `[r, c]`: cubic
/// convolution with `a = -0.75`, corners not aligned, borders clamped (as
/// PyTorch's and OpenCV's). The GCM paper's map kind (iii) upsamples so.
pub fn bicubic(map: &[f32], h: usize, w: usize, r: usize, c: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let kernel = |t: f64| {
        let t = t.abs();
        if t <= 1.0 {
            ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
        } else if t < 2.0 {
            ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A
        } else {
            0.0
        }
    };
    // Per output coordinate: four source indices (clamped) and weights.
    let taps = |n_out: usize, n_in: usize| -> Vec<([usize; 4], [f64; 4])> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|o| {
                let src = (o as f64 + 0.5) * scale - 0.5;
                let f = src.floor();
                let t = src - f;
                let mut idx = [0usize; 4];
                let mut wt = [0f64; 4];
                for k in 0..4 {
                    let i = f as isize - 1 + k as isize;
                    idx[k] = i.clamp(0, n_in as isize - 1) as usize;
                    wt[k] = kernel(t - (k as f64 - 1.0));
                }
                (idx, wt)
            })
            .collect()
    };
    let (ty, tx) = (taps(r, h), taps(c, w));
    // Columns first, then rows.
    let mut mid = vec![0f64; h * c];
    for y in 0..h {
        for (x, (idx, wt)) in tx.iter().enumerate() {
            mid[y * c + x] = (0..4).map(|k| wt[k] * map[y * w + idx[k]] as f64).sum();
        }
    }
    let mut out = vec![0f32; r * c];
    for (y, (idx, wt)) in ty.iter().enumerate() {
        for x in 0..c {
            out[y * c + x] = (0..4).map(|k| wt[k] * mid[idx[k] * c + x]).sum::<f64>() as f32;
        }
    }
    out
}

/// The largest absolute difference between two tensors of one shape (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn class_score_sum_picks_each_images_class() {
        let s = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
        let v = class_score_sum(&s, &[2, 0]).unwrap();
        assert_eq!(v.to_scalar::<f32>().unwrap(), 7.0);
    }

    #[test]
    fn upsampling_a_two_by_two_map_by_hand() {
        // PyTorch bilinear, align_corners=False, 2 -> 4: source positions
        // -0.25, 0.25, 0.75, 1.25, clamped at the borders.
        let m = Tensor::new(&[[[0f32, 4.], [8., 12.]]], &Device::Cpu).unwrap();
        let u = upsample(&m, 4, 4).unwrap().to_vec3::<f32>().unwrap();
        let row = |a: f32| vec![a, a + 1.0, a + 3.0, a + 4.0];
        assert_eq!(u[0], vec![row(0.0), row(2.0), row(6.0), row(8.0)]);
    }

    #[test]
    fn bicubic_keeps_constants_and_matches_its_weights_by_hand() {
        let c = bicubic(&[3.0; 6], 2, 3, 8, 12);
        assert!(c.iter().all(|v| (v - 3.0).abs() < 1e-6));
        // 1 -> 2 of [0, 1] in one row: output 0 sits at source x = -0.25,
        // t = 0.75 from floor -1: taps (-2, -1, 0, 1) clamp to (0, 0, 0, 1)
        // with weights k(1.75), k(0.75), k(0.25), k(1.25).
        let k = |t: f64| {
            let a = -0.75;
            let t: f64 = t.abs();
            if t <= 1.0 {
                ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
            } else {
                ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
            }
        };
        let u = bicubic(&[0.0, 1.0], 1, 2, 1, 4);
        let want = k(1.25) as f32;
        assert!((u[0] - want).abs() < 1e-6, "{} vs {want}", u[0]);
        assert!((k(1.75) + k(0.75) + k(0.25) + k(1.25) - 1.0).abs() < 1e-12);
        // Inside, 4 -> 8 of [0, 1, 2, 3]: output 3 sits at source 1.25,
        // taps 0..3 at distances 1.25, 0.25, 0.75, 1.75. (With a = -0.75
        // cubic convolution does not reproduce a ramp: 1.296875, not 1.25.)
        let ramp = bicubic(&[0.0, 1.0, 2.0, 3.0], 1, 4, 1, 8);
        let want = (k(0.25) + 2.0 * k(0.75) + 3.0 * k(1.75)) as f32;
        assert!((ramp[3] - want).abs() < 1e-6, "{} vs {want}", ramp[3]);
        assert!((ramp[3] - 1.296875).abs() < 1e-6);
    }
}
