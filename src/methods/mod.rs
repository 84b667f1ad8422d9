//! The evidence methods an inspection engineer already knows, on the
//! baseline CNN of the GCM paper's Table 6 ([`crate::model::Cnn`]), to set
//! beside the GCM's own evidence: CAM ([`cam`]), Grad-CAM ([`gradcam`]),
//! Guided Backprop and Guided Grad-CAM ([`guided`]). Each method gives a
//! *weight map* (what it attributes to each place) and a *visual map* (what
//! a person is shown), as in the paper's Fig. 10:
//!
//! | method | weight map | visual map |
//! |---|---|---|
//! | CAM, Grad-CAM | the map, bilinearly upsampled to the input | CAM-style blend: jet colours of the min-max normalised map x 0.7 + image x 0.2 |
//! | Guided Backprop, Guided Grad-CAM | the response, summed over input channels | the response as an image (0.5 + 0.5 x response / max abs) |
//! | GCM | the CWM | the CCM (CWM x scaled input), summed over channels |
//!
//! Gradients come from candle's autograd through the engine's convolution
//! backward; the methods run on the CPU (Guided Backprop's ReLU is a CPU op).
//! `gcm-inspect explain --method NAME` writes them ([`explain`]).

pub mod cam;
pub mod decline;
pub mod explain;
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
    /// Every method the model supports, and a comparison grid per image.
    All,
}

impl Method {
    /// The methods of the baseline CNN, in the grid's order.
    pub const CNN: [Method; 4] = [
        Method::Cam,
        Method::Gradcam,
        Method::GuidedBackprop,
        Method::GuidedGradcam,
    ];

    /// The name in file names and `methods.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Gcm => "gcm",
            Method::Cam => "cam",
            Method::Gradcam => "gradcam",
            Method::GuidedBackprop => "guided-backprop",
            Method::GuidedGradcam => "guided-gradcam",
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
            Method::All => "all",
        }
    }
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
}
