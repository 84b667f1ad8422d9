//! Grad-CAM (Selvaraju et al., the `002` seed): with `A` the output of a
//! convolution block and `y_c` the class score,
//! `alpha_k = mean_ij dy_c / dA_kij` and `L_c = ReLU(sum_k alpha_k A_k)`,
//! upsampled to the input (bilinear, as the paper). Works for any
//! differentiable head; the gradient comes from candle's autograd through the
//! engine's own convolution backward (no finite differences).
//!
//! For the last block of a GAP + FC network `alpha_k = w_ck / (h w)`, so
//! Grad-CAM there is ReLU(CAM) / (h w); an earlier block (`layer`) gives a
//! map the head's structure does not dictate.

use candle_core::{Result, Tensor, Var};

use crate::model::Cnn;

/// What Grad-CAM computed for a batch.
#[derive(Debug)]
pub struct GradCam {
    /// The block's output `A`, `[B, K, h, w]`.
    pub activations: Tensor,
    /// `dy_c / dA`, `[B, K, h, w]`.
    pub gradients: Tensor,
    /// `ReLU(sum_k alpha_k A_k)`, `[B, h, w]`.
    pub map: Tensor,
}

/// `ReLU(sum_k alpha_k A_k)` with `alpha_k` the spatial mean of the
/// gradient: `[B, K, h, w]` twice -> `[B, h, w]`.
pub fn combine(activations: &Tensor, gradients: &Tensor) -> Result<Tensor> {
    let alpha = gradients.mean_keepdim((2, 3))?;
    activations.broadcast_mul(&alpha)?.sum(1)?.relu()
}

/// Grad-CAM of class `classes[b]` for each image of scaled input
/// `[B, D, R, C]`, at the output of encoder layer `layer` (0-based; the
/// last, `net.encoder().len() - 1`, is the usual choice).
pub fn grad_cam(net: &Cnn, scaled: &Tensor, classes: &[usize], layer: usize) -> Result<GradCam> {
    let layers = net.encoder().len();
    if layer >= layers {
        candle_core::bail!("grad-cam layer {layer}: the network has {layers} layers");
    }
    let mut h = scaled.clone();
    for i in 0..=layer {
        h = net.layer(i, &h, &|t| t.relu())?;
    }
    let a = Var::from_tensor(&h.detach())?;
    let mut h = a.as_tensor().clone();
    for i in layer + 1..layers {
        h = net.layer(i, &h, &|t| t.relu())?;
    }
    let y = super::class_score_sum(&net.logits(&h)?, classes)?;
    let grads = y.backward()?;
    let g = grads
        .get(a.as_tensor())
        .cloned()
        .unwrap_or(a.as_tensor().zeros_like()?);
    let map = combine(a.as_tensor(), &g)?;
    Ok(GradCam {
        activations: a.as_tensor().clone(),
        gradients: g,
        map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use candle_core::Device;

    fn tiny() -> Cnn {
        let mut cfg = ModelConfig::table6(8, 8, 1, vec!["a".into(), "b".into()]);
        cfg.encoder_widths = vec![3, 4];
        cfg.encoder_depths = vec![2, 2];
        cfg.stem_width = None;
        Cnn::init(&cfg, 11, &Device::Cpu).unwrap().0
    }

    /// The class score after layer `layer` with `A` replaced by `a`.
    fn score_from(net: &Cnn, a: &Tensor, layer: usize, class: usize) -> f64 {
        let mut h = a.clone();
        for i in layer + 1..net.encoder().len() {
            h = net.layer(i, &h, &|t| t.relu()).unwrap();
        }
        let s = net.logits(&h).unwrap().to_vec2::<f32>().unwrap();
        s[0][class] as f64
    }

    #[test]
    fn alpha_matches_finite_differences_of_the_score() {
        // dy/d(eps) for A_k += eps everywhere is sum_ij dy/dA_kij = h w alpha_k.
        let net = tiny();
        let x = Tensor::rand(0f32, 1.0, (1, 1, 8, 8), &Device::Cpu).unwrap();
        for (layer, class) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            let gc = grad_cam(&net, &x, &[class], layer).unwrap();
            let (_, k, h, w) = gc.activations.dims4().unwrap();
            let alpha = gc
                .gradients
                .mean((2, 3))
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let eps = 1e-3;
            for ch in 0..k {
                let mut bump = vec![0f32; k * h * w];
                bump[ch * h * w..(ch + 1) * h * w].fill(eps as f32);
                let bump = Tensor::from_vec(bump, (1, k, h, w), &Device::Cpu).unwrap();
                let up = score_from(&net, &(&gc.activations + &bump).unwrap(), layer, class);
                let down = score_from(&net, &(&gc.activations - &bump).unwrap(), layer, class);
                let fd = (up - down) / (2.0 * eps) / (h * w) as f64;
                assert!(
                    (fd - alpha[ch] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                    "layer {layer} class {class} channel {ch}: autograd {} vs finite differences {fd}",
                    alpha[ch]
                );
            }
        }
    }

    #[test]
    fn last_layer_grad_cam_is_relu_cam_over_the_pooled_size() {
        let net = tiny();
        let x = Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu).unwrap();
        let last = net.encoder().len() - 1;
        let gc = grad_cam(&net, &x, &[1, 0], last).unwrap();
        let cam = super::super::cam::cam(&net, &x, &[1, 0]).unwrap();
        let (_, _, h, w) = gc.activations.dims4().unwrap();
        let want = (cam.relu().unwrap() / (h * w) as f64).unwrap();
        let d = super::super::max_abs_diff(&gc.map, &want);
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn combine_follows_the_definition_by_hand() {
        // A0 = [[1, 2]], A1 = [[3, -1]]; grads mean 0.5 and -1:
        // 0.5 A0 - A1 = [[-2.5, 2]] -> ReLU [[0, 2]].
        let dev = Device::Cpu;
        let a = Tensor::new(&[[[[1f32, 2.]], [[3., -1.]]]], &dev).unwrap();
        let g = Tensor::new(&[[[[0f32, 1.]], [[-2., 0.]]]], &dev).unwrap();
        let m = combine(&a, &g).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(m, vec![vec![vec![0.0, 2.0]]]);
    }
}
