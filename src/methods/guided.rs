//! Guided Backprop (Springenberg et al.) and Guided Grad-CAM (the `002`
//! seed).
//!
//! Guided Backprop is the gradient of the class score with respect to the
//! input, where every ReLU passes back only positive gradients, and only
//! where its forward input was positive: `dL/dx = [x > 0] * max(g, 0)`. It is
//! computed by candle's autograd with the network's ReLUs swapped for
//! [`guided_relu`], an op whose forward is a ReLU and whose backward is that
//! rule (CPU tensors). Guided Grad-CAM is the Grad-CAM map upsampled
//! (bilinear) to the input, times Guided Backprop, elementwise per channel.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, Var};

use crate::model::Cnn;

/// ReLU forward, guided backward (see the module docs).
struct GuidedRelu;

impl CustomOp1 for GuidedRelu {
    fn name(&self) -> &'static str {
        "guided-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("guided relu: f32 input only");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("guided relu: contiguous input only");
        };
        let out = v[a..b].iter().map(|x| x.max(0.0)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let passed = arg.gt(0f32)?.to_dtype(grad_res.dtype())?;
        Ok(Some(grad_res.relu()?.mul(&passed)?))
    }
}

/// A ReLU whose gradient follows Guided Backprop's rule (CPU, f32).
pub fn guided_relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GuidedRelu)
}

/// Guided Backprop of class `classes[b]` for each image of scaled input
/// `[B, D, R, C]`: the guided gradient, `[B, D, R, C]`.
pub fn guided_backprop(net: &Cnn, scaled: &Tensor, classes: &[usize]) -> Result<Tensor> {
    input_gradient(net, scaled, classes, &guided_relu)
}

/// The gradient of the class scores with respect to the input, with `relu`
/// as the network's ReLU (`Tensor::relu` gives the plain gradient).
pub fn input_gradient(
    net: &Cnn,
    scaled: &Tensor,
    classes: &[usize],
    relu: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let x = Var::from_tensor(&scaled.detach())?;
    let f = net.features_with(x.as_tensor(), relu)?;
    let y = super::class_score_sum(&net.logits(&f)?, classes)?;
    let grads = y.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => x.as_tensor().zeros_like(),
    }
}

/// Guided Grad-CAM: the Grad-CAM map `[B, h, w]` upsampled to the guided
/// gradient's size, times the guided gradient `[B, D, R, C]`.
pub fn guided_grad_cam(grad_cam_map: &Tensor, guided: &Tensor) -> Result<Tensor> {
    let (_, _, r, c) = guided.dims4()?;
    let up = super::upsample(grad_cam_map, r, c)?;
    guided.broadcast_mul(&up.unsqueeze(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gcm::init_varmap;
    use crate::model::ModelConfig;
    use candle_core::{DType, Device};

    #[test]
    fn guided_relu_passes_only_positive_gradients_where_the_input_was_positive() {
        let dev = Device::Cpu;
        let x = Var::new(&[-1f32, 2., 3., -4., 0.5], &dev).unwrap();
        let g = Tensor::new(&[1f32, -1., 2., 5., 0.25], &dev).unwrap();
        let y = guided_relu(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.0, 2.0, 3.0, 0.0, 0.5]);
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // Input <= 0 or gradient < 0: zero; otherwise the gradient.
        assert_eq!(dx, vec![0.0, 0.0, 2.0, 0.0, 0.25]);
    }

    /// A one-layer CNN (one 3x3 convolution to two channels, BN, ReLU, GAP,
    /// FC) with FC weights of both signs.
    fn one_layer() -> Cnn {
        let mut cfg = ModelConfig::table6(4, 4, 1, vec!["a".into(), "b".into()]);
        cfg.encoder_widths = vec![2];
        cfg.encoder_depths = vec![1];
        cfg.stem_width = None;
        let dev = Device::Cpu;
        let vm = init_varmap(&cfg, 5, &dev).unwrap();
        {
            let data = vm.data().lock().unwrap();
            let fc = Tensor::new(&[[1.0f32, -0.5], [-0.3, 0.8]], &dev).unwrap();
            data.get("fc.weight").unwrap().set(&fc).unwrap();
        }
        Cnn::new(
            &cfg,
            candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap()
    }

    #[test]
    fn guided_and_plain_gradients_of_a_one_layer_net_by_hand() {
        let net = one_layer();
        let dev = Device::Cpu;
        // Signed input, so that some pre-activations are negative.
        let x = Tensor::rand(-1f32, 1.0, (1, 1, 4, 4), &dev).unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let l = &net.encoder()[0];
        let wk = l.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(); // [2, 1, 3, 3]
        let (s, t) = l.bn.folded().unwrap();
        let (s, t) = (s.to_vec1::<f32>().unwrap(), t.to_vec1::<f32>().unwrap());
        let fc = net.fc().0.to_vec2::<f32>().unwrap();
        let n = 4i64;
        let at = |r: i64, c: i64| {
            if (0..n).contains(&r) && (0..n).contains(&c) {
                xv[(r * n + c) as usize] as f64
            } else {
                0.0
            }
        };
        for (class, fc_row) in fc.iter().enumerate() {
            let mut plain = [0f64; 16];
            let mut guided = [0f64; 16];
            for k in 0..2 {
                let w = |dr: i64, dc: i64| wk[k * 9 + (dr * 3 + dc) as usize] as f64;
                let up = fc_row[k] as f64 / 16.0;
                for qr in 0..n {
                    for qc in 0..n {
                        let mut z = 0.0;
                        for dr in 0..3 {
                            for dc in 0..3 {
                                z += w(dr, dc) * at(qr + dr - 1, qc + dc - 1);
                            }
                        }
                        let z = s[k] as f64 * z + t[k] as f64;
                        if z <= 0.0 {
                            continue;
                        }
                        for dr in 0..3 {
                            for dc in 0..3 {
                                let (pr, pc) = (qr + dr - 1, qc + dc - 1);
                                if (0..n).contains(&pr) && (0..n).contains(&pc) {
                                    let d = s[k] as f64 * w(dr, dc);
                                    plain[(pr * n + pc) as usize] += up * d;
                                    guided[(pr * n + pc) as usize] += up.max(0.0) * d;
                                }
                            }
                        }
                    }
                }
            }
            let got_plain = input_gradient(&net, &x, &[class], &|t| t.relu())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got_guided = guided_backprop(&net, &x, &[class])
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for p in 0..16 {
                assert!(
                    (got_plain[p] as f64 - plain[p]).abs() < 1e-5,
                    "class {class} pixel {p}: plain {} vs {}",
                    got_plain[p],
                    plain[p]
                );
                assert!(
                    (got_guided[p] as f64 - guided[p]).abs() < 1e-5,
                    "class {class} pixel {p}: guided {} vs {}",
                    got_guided[p],
                    guided[p]
                );
            }
            // The negative FC weight's channel is what guided drops.
            assert!(plain.iter().zip(&guided).any(|(a, b)| (a - b).abs() > 1e-6));
        }
    }

    #[test]
    fn guided_grad_cam_is_the_upsampled_map_times_the_guided_gradient() {
        let dev = Device::Cpu;
        // A constant 1 x 1 map upsamples to a constant.
        let m = Tensor::new(&[[[2f32]]], &dev).unwrap();
        let g = Tensor::new(&[[[[1f32, -2.], [0.5, 0.]]]], &dev).unwrap();
        let ggc = guided_grad_cam(&m, &g)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ggc, vec![2.0, -4.0, 1.0, 0.0]);
    }
}
