//! CAV, the model inverse analysis (the `004` seed): how much of a class
//! score each unit of a chosen layer contributed, chained back from the
//! score layer by layer.
//!
//! For a layer `y_j = sum_i w_ji x_i (+ b_j)` the paper's contribution ratio
//! of input `x_i` to output `y_j` is `beta_x_i^y_j = x_i w_ji / y_j`, and
//! ratios chain: `beta_x_i^p = sum_j beta_y_j^p beta_x_i^y_j`. This module
//! carries the *contributions* `c = beta * p` instead of the ratios (the
//! same numbers times the score, which never needs dividing by a score
//! near zero): the class score starts with `c_p = p`, and each layer hands
//! its outputs' contributions to its inputs by its rule:
//!
//! | layer | rule |
//! |---|---|
//! | fully connected `p_n = sum_k w_nk g_k + b_n` | `c_g_k = g_k sum_n w_nk c_p_n / p_n` |
//! | global average pooling `g_k = mean_xy f_kxy` | `c_f_kxy = (f_kxy / hw) c_g_k / g_k` |
//! | max pooling | each output's contribution goes to its window's maximum ([`max_pool`]) |
//! | ReLU (one to one) | `c_z = c_y` |
//! | BatchNorm (inference: `z = s u + t` per channel) | `c_u = s u c_z / z` |
//! | convolution `u_j = sum_i w_ji x_i` | `c_x_i = x_i sum_j w_ji c_u_j / u_j` |
//!
//! **Biases.** The paper treats a bias as an input fixed at 1: it takes its
//! share `b_j c_y_j / y_j` like any input, and that share stays with it,
//! since nothing lies behind it. Here the biases are the FC's `b_n` and the
//! BatchNorm's shift `t = beta - mean * s` (the Table 6 convolutions have
//! none). So the contributions at a layer add up to the score minus the
//! shares the biases at and after that layer kept ([`Cav::absorbed`]);
//! with bias-free layers they add up to the score exactly.
//!
//! **BatchNorm** is the inference transform with the running statistics,
//! one to one per channel, so its rule is that of a one-input layer with a
//! bias: the scale passes contributions through in proportion, the shift
//! keeps its share.
//!
//! Each "sum_j w_ji r_j" is the transpose of the layer applied to `r`,
//! which is the gradient of `<layer(x), r>` with respect to `x`: the rules
//! run on candle's autograd through the engine's own convolution backward,
//! one layer at a time. A ratio `c / y` is taken as 0 where `c` is 0 (then
//! `y` may be 0: a ReLU's zero output contributes nothing).
//!
//! For a ReLU network whose biases are treated so, these rules make the
//! contribution of a unit equal to its value times the gradient of the
//! score with respect to it (the tests check it), so CAV at the input is
//! "input x gradient", and at the last feature maps it is CAM divided by the
//! number of positions; the chain above is the paper's definition, and it
//! is what this module computes.
//!
//! The map shown is the contributions summed over channels, signed:
//! negative values suppress the class.

use candle_core::{Result, Tensor, Var};

use crate::model::Cnn;

/// CAV of one class per image at one layer.
#[derive(Debug)]
pub struct Cav {
    /// Contributions of every unit of the analysed layer, `[B, K, h, w]`.
    pub contributions: Tensor,
    /// The contributions summed over channels (the signed map), `[B, h, w]`.
    pub map: Tensor,
    /// Per image, the share the biases at and after the analysed layer
    /// kept: `map.sum() + absorbed = score`.
    pub absorbed: Vec<f32>,
}

/// `c / y` where `c != 0`, else 0.
fn ratio(c: &Tensor, y: &Tensor) -> Result<Tensor> {
    let nz = c.ne(0f32)?;
    let denom = nz.where_cond(y, &y.ones_like()?)?;
    c / denom
}

/// The contributions of `x` to `f(x)` for a layer `f` that is linear in
/// `x` (or piecewise linear and positively homogeneous, like max pooling),
/// given its outputs' contributions `c_out` and their values `y`:
/// `c_x = x * grad_x <f(x), c_out / y>`.
pub fn linear_rule(
    x: &Tensor,
    c_out: &Tensor,
    y: &Tensor,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let r = ratio(c_out, y)?.detach();
    let v = Var::from_tensor(&x.detach())?;
    let grads = (f(v.as_tensor())? * r)?.sum_all()?.backward()?;
    match grads.get(v.as_tensor()) {
        Some(g) => x.mul(g),
        None => x.zeros_like(),
    }
}

/// The fully connected rule: inputs `g` `[B, K]`, weight `[N, K]`, outputs
/// `p` `[B, N]` (bias included) with contributions `c_p`: `[B, K]`.
pub fn fc(g: &Tensor, w: &Tensor, p: &Tensor, c_p: &Tensor) -> Result<Tensor> {
    let r = ratio(c_p, p)?;
    g.mul(&r.matmul(w)?)
}

/// The global average pooling rule: `[B, K, h, w]` from `[B, K]`.
pub fn gap(f: &Tensor, g: &Tensor, c_g: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = f.dims4()?;
    let r = ratio(c_g, g)?.unsqueeze(2)?.unsqueeze(3)?;
    f.broadcast_mul(&r)? / (h * w) as f64
}

/// The BatchNorm rule (inference, per channel `z = s u + t`): `c_u`.
pub fn batch_norm(u: &Tensor, scale: &Tensor, z: &Tensor, c_z: &Tensor) -> Result<Tensor> {
    let c = scale.dim(0)?;
    u.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .mul(&ratio(c_z, z)?)
}

/// The max pooling rule (`k x k` windows, stride `k`): every output's
/// contribution goes to its window's maximum (computed directly: candle's
/// max-pool gradient divides by the window's size). The Table 6 CNN downsamples
/// by stride-2 convolutions and has no max pooling; the rule is here for
/// completeness of the method.
/// Windows tie-share their output's contribution equally; the input's sides
/// must be multiples of `k`.
pub fn max_pool(x: &Tensor, k: usize, c_y: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let up = |t: &Tensor| t.upsample_nearest2d(h, w);
    let winners = x.eq(&up(&x.max_pool2d(k)?)?)?.to_dtype(x.dtype())?;
    let count = (winners.avg_pool2d(k)? * (k * k) as f64)?;
    winners.mul(&up(&c_y.div(&count)?)?)
}

/// Sum over all but the first dimension, per image.
fn per_image_sum(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_from(1)?.sum(1)?.to_vec1()
}

/// CAV of class `classes[b]` for each image of scaled input `[B, D, R, C]`
/// at the *input* of encoder layer `layer` (0: the input pixels;
/// `net.encoder().len()`: the last feature maps).
pub fn cav(net: &Cnn, scaled: &Tensor, classes: &[usize], layer: usize) -> Result<Cav> {
    let layers = net.encoder().len();
    if layer > layers {
        candle_core::bail!(
            "cav layer {layer}: the network has {layers} layers (0 is the input, {layers} the last feature maps)"
        );
    }
    // Forward, keeping every layer's input x, convolution output u and
    // BatchNorm output z.
    let mut xs = Vec::with_capacity(layers);
    let mut us = Vec::with_capacity(layers);
    let mut zs = Vec::with_capacity(layers);
    let mut h = scaled.detach();
    for l in net.encoder() {
        let (s, t) = l.bn.folded()?;
        let c = l.spec.cout;
        let u = l.conv(&h)?;
        let z = u
            .broadcast_mul(&s.reshape((1, c, 1, 1))?)?
            .broadcast_add(&t.reshape((1, c, 1, 1))?)?;
        xs.push(h);
        h = z.relu()?;
        us.push(u);
        zs.push(z);
    }
    let f = h;
    let g = f.mean((2, 3))?;
    let (w, bias) = net.fc();
    let p = net.logits(&f)?;
    // c_p: the class score itself at its class, 0 elsewhere.
    let (b, n) = p.dims2()?;
    let mut onehot = vec![0f32; b * n];
    for (i, &c) in classes.iter().enumerate() {
        onehot[i * n + c] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (b, n), p.device())?;
    let c_p = p.mul(&onehot)?;
    // The FC bias keeps b_c c_p / p = b_c.
    let mut absorbed = per_image_sum(&ratio(&c_p, &p)?.broadcast_mul(&bias.unsqueeze(0)?)?)?;
    let c_g = fc(&g, w, &p, &c_p)?;
    let mut c = gap(&f, &g, &c_g)?;
    for i in (layer..layers).rev() {
        let l = &net.encoder()[i];
        let (s, t) = l.bn.folded()?;
        let ch = l.spec.cout;
        // ReLU: c_z = c (one to one). BatchNorm: the shift keeps t c_z / z.
        let r = ratio(&c, &zs[i])?;
        let kept = per_image_sum(&r.broadcast_mul(&t.reshape((1, ch, 1, 1))?)?)?;
        for (a, k) in absorbed.iter_mut().zip(kept) {
            *a += k;
        }
        let c_u = batch_norm(&us[i], &s, &zs[i], &c)?;
        c = linear_rule(&xs[i], &c_u, &us[i], &|x: &Tensor| l.conv(x))?;
    }
    let map = c.sum(1)?;
    Ok(Cav {
        contributions: c,
        map,
        absorbed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gcm::init_varmap;
    use crate::model::ModelConfig;
    use candle_core::{DType, Device};

    fn set(vm: &candle_nn::VarMap, name: &str, t: Tensor) {
        let data = vm.data().lock().unwrap();
        data.get(name)
            .unwrap_or_else(|| panic!("{name}"))
            .set(&t)
            .unwrap();
    }

    /// A small CNN (2 input channels, 3 classes) with random BatchNorm
    /// statistics, so that scale and shift are not trivial; `shifts`: with
    /// BatchNorm shifts and FC biases, else none.
    fn small(widths: Vec<usize>, depths: Vec<usize>, seed: u64, shifts: bool) -> Cnn {
        let mut cfg = ModelConfig::table6(8, 8, 2, vec!["a".into(), "b".into(), "c".into()]);
        cfg.encoder_widths = widths;
        cfg.encoder_depths = depths;
        cfg.stem_width = None;
        let dev = Device::Cpu;
        let vm = init_varmap(&cfg, seed, &dev).unwrap();
        let build = |vm: &candle_nn::VarMap| {
            Cnn::new(
                &cfg,
                candle_nn::VarBuilder::from_varmap(vm, DType::F32, &dev),
            )
            .unwrap()
        };
        let net = build(&vm);
        let mut rng = crate::rng::Rng::derive(seed, 9);
        let mut rand = |n: usize, lo: f32, hi: f32| {
            let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.f32()).collect();
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        for l in net.encoder() {
            let c = l.spec.cout;
            set(&vm, &l.spec.bn_name("weight"), rand(c, 0.5, 1.5));
            set(&vm, &l.spec.bn_name("running_var"), rand(c, 0.5, 2.0));
            let (mean, beta) = if shifts {
                (rand(c, -0.3, 0.3), rand(c, -0.2, 0.2))
            } else {
                (rand(c, 0.0, 0.0), rand(c, 0.0, 0.0))
            };
            set(&vm, &l.spec.bn_name("running_mean"), mean);
            set(&vm, &l.spec.bn_name("bias"), beta);
        }
        let fc_b = if shifts {
            rand(3, -0.5, 0.5)
        } else {
            rand(3, 0.0, 0.0)
        };
        set(&vm, "fc.bias", fc_b);
        build(&vm)
    }

    fn scores(net: &Cnn, x: &Tensor) -> Vec<Vec<f32>> {
        net.logits(&net.features(x, false).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn bias_free_contributions_sum_to_the_score_at_every_layer() {
        let net = small(vec![3, 4], vec![2, 2], 1, false);
        let x = Tensor::rand(0f32, 1.0, (2, 2, 8, 8), &Device::Cpu).unwrap();
        let s = scores(&net, &x);
        for layer in 0..=net.encoder().len() {
            for class in 0..3 {
                let c = cav(&net, &x, &[class, class], layer).unwrap();
                let sums = per_image_sum(&c.contributions).unwrap();
                for (b, (sum, row)) in sums.iter().zip(&s).enumerate() {
                    assert!(c.absorbed[b].abs() < 1e-6, "{}", c.absorbed[b]);
                    assert!(
                        (sum - row[class]).abs() < 1e-4 * (1.0 + row[class].abs()),
                        "layer {layer} class {class} image {b}: sum {sum} vs score {}",
                        row[class]
                    );
                }
            }
        }
    }

    #[test]
    fn with_biases_the_sum_plus_the_biases_shares_is_the_score() {
        let net = small(vec![3, 4], vec![2, 1], 2, true);
        let x = Tensor::rand(0f32, 1.0, (2, 2, 8, 8), &Device::Cpu).unwrap();
        let s = scores(&net, &x);
        for layer in [0, 1, 3] {
            let c = cav(&net, &x, &[0, 2], layer).unwrap();
            let sums = per_image_sum(&c.contributions).unwrap();
            for (b, class) in [(0, 0), (1, 2)] {
                let got = sums[b] + c.absorbed[b];
                assert!(c.absorbed[b].abs() > 1e-4, "the shifts keep a share");
                assert!(
                    (got - s[b][class]).abs() < 1e-4 * (1.0 + s[b][class].abs()),
                    "layer {layer} image {b}: {got} vs {}",
                    s[b][class]
                );
            }
        }
    }

    #[test]
    fn cav_is_value_times_gradient_and_cam_over_positions_at_the_last_maps() {
        let net = small(vec![3, 4], vec![1, 2], 3, true);
        let x = Tensor::rand(-1f32, 1.0, (2, 2, 8, 8), &Device::Cpu).unwrap();
        let classes = [1, 2];
        let c = cav(&net, &x, &classes, 0).unwrap();
        let g = super::super::guided::input_gradient(&net, &x, &classes, &|t| t.relu()).unwrap();
        let want = (&x * g).unwrap();
        let d = super::super::max_abs_diff(&c.contributions, &want);
        assert!(d < 1e-4, "{d}");
        let last = net.encoder().len();
        let c = cav(&net, &x, &classes, last).unwrap();
        let cam = super::super::cam::cam(&net, &x, &classes).unwrap();
        let (_, _, h, w) = c.contributions.dims4().unwrap();
        let d = super::super::max_abs_diff(&c.map, &(cam / (h * w) as f64).unwrap());
        assert!(d < 1e-5, "{d}");
        assert!(cav(&net, &x, &classes, last + 1).is_err());
    }

    #[test]
    fn a_one_layer_net_by_hand() {
        // 1 channel 4x4 input; one 3x3 convolution whose only tap is the
        // centre, 2; BatchNorm scale 1, shift 0.5; GAP; FC weights 1 and
        // -2, biases 0.1 and 0.2. So z = 2x + 0.5, y = ReLU(z), and for
        // class 0: c_y = y / 16, c_u = 2x c_y / z = 2x / 16 = c_x where
        // z > 0, else 0; class 1 is -2 times that. The shift keeps
        // 0.5 / 16 per active position, the FC bias keeps its bias.
        let mut cfg = ModelConfig::table6(4, 4, 1, vec!["a".into(), "b".into()]);
        cfg.encoder_widths = vec![1];
        cfg.encoder_depths = vec![1];
        cfg.stem_width = None;
        let dev = Device::Cpu;
        let vm = init_varmap(&cfg, 0, &dev).unwrap();
        let mut k = vec![0f32; 9];
        k[4] = 2.0;
        set(
            &vm,
            "encoder.0.conv.weight",
            Tensor::from_vec(k, (1, 1, 3, 3), &dev).unwrap(),
        );
        set(
            &vm,
            "encoder.0.bn.weight",
            Tensor::new(&[1f32], &dev).unwrap(),
        );
        set(
            &vm,
            "encoder.0.bn.bias",
            Tensor::new(&[0.5f32], &dev).unwrap(),
        );
        set(
            &vm,
            "encoder.0.bn.running_mean",
            Tensor::new(&[0f32], &dev).unwrap(),
        );
        set(
            &vm,
            "encoder.0.bn.running_var",
            Tensor::new(&[1.0f32 - cfg.bn_eps as f32], &dev).unwrap(),
        );
        set(
            &vm,
            "fc.weight",
            Tensor::new(&[[1f32], [-2.]], &dev).unwrap(),
        );
        set(&vm, "fc.bias", Tensor::new(&[0.1f32, 0.2], &dev).unwrap());
        let net = Cnn::new(
            &cfg,
            candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let xv: Vec<f32> = vec![
            0.5, -0.5, 1.0, -0.1, 0.0, 2.0, -1.0, 0.25, -0.3, 0.7, 0.1, -2.0, 1.5, -0.2, 0.3, 0.9,
        ];
        let x = Tensor::from_vec(xv.clone(), (1, 1, 4, 4), &dev).unwrap();
        for (class, wc, bc) in [(0usize, 1f32, 0.1f32), (1, -2.0, 0.2)] {
            let c = cav(&net, &x, &[class], 0).unwrap();
            let got = c.map.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let active = xv.iter().filter(|&&v| 2.0 * v + 0.5 > 0.0).count();
            for (i, &v) in xv.iter().enumerate() {
                let want = if 2.0 * v + 0.5 > 0.0 {
                    wc * 2.0 * v / 16.0
                } else {
                    0.0
                };
                assert!(
                    (got[i] - want).abs() < 1e-6,
                    "class {class} pixel {i}: {} vs {want}",
                    got[i]
                );
            }
            let want_absorbed = bc + wc * 0.5 * active as f32 / 16.0;
            assert!(
                (c.absorbed[0] - want_absorbed).abs() < 1e-6,
                "{} vs {want_absorbed}",
                c.absorbed[0]
            );
        }
    }

    #[test]
    fn the_rules_by_hand() {
        let dev = Device::Cpu;
        // FC (the paper's Fig. 1): x = (1, 2, 3), w = (0.5, -1, 2), b = 1:
        // p = 5.5; contributions 0.5, -2, 6 (the bias keeps 1).
        let g = Tensor::new(&[[1f32, 2., 3.]], &dev).unwrap();
        let w = Tensor::new(&[[0.5f32, -1., 2.]], &dev).unwrap();
        let p = Tensor::new(&[[5.5f32]], &dev).unwrap();
        let c = fc(&g, &w, &p, &p).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, vec![vec![0.5, -2.0, 6.0]]);
        // Two FC layers (the paper's Fig. 2, equations 4-6): x = (1, 2),
        // layer 0 w = [[1, 1], [2, -1]] -> y = (3, 0); layer 1 w = (2, 5)
        // -> p = 6, beta_y^p = (1, 0); beta_x^y0 = (1/3, 2/3), so
        // beta_x^p = (1/3, 2/3) and c = 6 beta = (2, 4).
        let x = Tensor::new(&[[1f32, 2.]], &dev).unwrap();
        let w0 = Tensor::new(&[[1f32, 1.], [2., -1.]], &dev).unwrap();
        let y = x.matmul(&w0.t().unwrap()).unwrap();
        let w1 = Tensor::new(&[[2f32, 5.]], &dev).unwrap();
        let p = y.matmul(&w1.t().unwrap()).unwrap();
        let c_y = fc(&y, &w1, &p, &p).unwrap();
        let c_x = fc(&x, &w0, &y, &c_y).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c_x, vec![vec![2.0, 4.0]]);
        // Max pooling: the window's maximum takes the output's contribution.
        let x = Tensor::new(&[[[[1f32, 3.], [-2., 0.5]]]], &dev).unwrap();
        let c = max_pool(&x, 2, &Tensor::new(&[[[[1.5f32]]]], &dev).unwrap()).unwrap();
        assert_eq!(
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.5, 0.0, 0.0]
        );
        // A tie shares it.
        let x = Tensor::new(&[[[[3f32, 3.], [-2., 0.5]]]], &dev).unwrap();
        let c = max_pool(&x, 2, &Tensor::new(&[[[[1.5f32]]]], &dev).unwrap()).unwrap();
        assert_eq!(
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.75, 0.75, 0.0, 0.0]
        );
        // Global average pooling: f = (1, 3) -> g = 2, c_g = 4: c = (1, 3).
        let f = Tensor::new(&[[[[1f32, 3.]]]], &dev).unwrap();
        let c = gap(
            &f,
            &Tensor::new(&[[2f32]], &dev).unwrap(),
            &Tensor::new(&[[4f32]], &dev).unwrap(),
        )
        .unwrap();
        assert_eq!(
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 3.0]
        );
        // BatchNorm: u = 2, s = 3, t = -1 -> z = 5, c_z = 10: c_u = 12
        // (the shift keeps -2).
        let c = batch_norm(
            &Tensor::new(&[[[[2f32]]]], &dev).unwrap(),
            &Tensor::new(&[3f32], &dev).unwrap(),
            &Tensor::new(&[[[[5f32]]]], &dev).unwrap(),
            &Tensor::new(&[[[[10f32]]]], &dev).unwrap(),
        )
        .unwrap();
        assert_eq!(
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![12.0]
        );
    }
}
