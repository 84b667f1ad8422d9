//! CAM (Zhou et al., the `003` seed): for a network that ends in global
//! average pooling and a fully connected layer, the class activation map of
//! class `c` is `M_c(x, y) = sum_k w_ck f_k(x, y)` over the last feature maps
//! `f_k`. Because the score is `sum_k w_ck mean_xy f_k + b_c`, the map's mean
//! plus the class bias *is* the score: CAM is exact for such a network, but
//! only at the feature maps' resolution (here 1/4 of the input's a side); the
//! map shown at input size is upsampled (bilinear).

use candle_core::{Result, Tensor};

use crate::model::Cnn;

/// CAM of every class from features `[B, K, h, w]` and FC weights `[N, K]`:
/// `[B, N, h, w]`.
pub fn cam_maps(features: &Tensor, fc_w: &Tensor) -> Result<Tensor> {
    let (b, k, h, w) = features.dims4()?;
    let n = fc_w.dim(0)?;
    let f = features.reshape((b, k, h * w))?;
    let wb = fc_w.unsqueeze(0)?.broadcast_as((b, n, k))?.contiguous()?;
    wb.matmul(&f.contiguous()?)?.reshape((b, n, h, w))
}

/// CAM of the class `classes[b]` for each image of a batch of scaled input
/// `[B, D, R, C]`: `[B, h, w]` at the feature maps' resolution.
pub fn cam(net: &Cnn, scaled: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let features = net.features(scaled, false)?;
    let all = cam_maps(&features, net.fc().0)?;
    super::pick_classes(&all, classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use candle_core::Device;

    #[test]
    fn cam_of_a_two_channel_gap_net_by_hand() {
        // f0 = [[1, 2], [3, 4]], f1 = [[0, 1], [-1, 2]];
        // class 0: w = (1, -2) -> [[1, 0], [5, 0]];
        // class 1: w = (0.5, 1) -> [[0.5, 2], [0.5, 4]].
        let dev = Device::Cpu;
        let f = Tensor::new(&[[[[1f32, 2.], [3., 4.]], [[0., 1.], [-1., 2.]]]], &dev).unwrap();
        let w = Tensor::new(&[[1f32, -2.], [0.5, 1.]], &dev).unwrap();
        let m = cam_maps(&f, &w)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(
            m,
            vec![
                vec![vec![1.0, 0.0], vec![5.0, 0.0]],
                vec![vec![0.5, 2.0], vec![0.5, 4.0]]
            ]
        );
    }

    #[test]
    fn cam_mean_plus_bias_is_the_score() {
        let mut cfg = ModelConfig::table6(8, 8, 3, vec!["a".into(), "b".into(), "c".into()]);
        cfg.encoder_widths = vec![3, 4, 5];
        cfg.stem_width = Some(2);
        let (net, _) = Cnn::init(&cfg, 4, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
        let out = net.forward_t(&x, false).unwrap();
        let scores = out.scores.to_vec2::<f32>().unwrap();
        let bias = net.fc().1.to_vec1::<f32>().unwrap();
        for c in 0..3 {
            let m = cam(&net, &out.scaled, &[c, c]).unwrap();
            let means = m.mean((1, 2)).unwrap().to_vec1::<f32>().unwrap();
            for b in 0..2 {
                let got = means[b] + bias[c];
                assert!(
                    (got - scores[b][c]).abs() < 1e-5,
                    "image {b} class {c}: {got} vs {}",
                    scores[b][c]
                );
            }
        }
    }
}
