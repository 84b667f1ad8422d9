//! SGD with momentum and weight decay (PyTorch's update rule):
//! `g = grad + wd * w` (weights only), `buf = m * buf + g` (`buf = g` at the
//! first step), `w = w - lr * buf`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub struct Sgd {
    params: Vec<(String, Var, bool)>,
    bufs: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// `params`: `(name, variable, weight decay applies)`.
    pub fn new(params: Vec<(String, Var, bool)>, momentum: f64, weight_decay: f64) -> Self {
        let bufs = vec![None; params.len()];
        Sgd {
            params,
            bufs,
            momentum,
            weight_decay,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((_, var, decay), buf) in self.params.iter().zip(self.bufs.iter_mut()) {
            let Some(g) = grads.get(var) else { continue };
            let w = var.as_tensor();
            let g = if *decay && self.weight_decay > 0.0 {
                (g + (w * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let b = match buf.take() {
                Some(prev) if self.momentum > 0.0 => ((prev * self.momentum)? + g)?,
                _ => g,
            };
            var.set(&(w - (&b * lr)?)?)?;
            *buf = Some(b.detach());
        }
        Ok(())
    }

    /// Momentum buffers by parameter name (for `--resume`).
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .zip(&self.bufs)
            .filter_map(|((n, _, _), b)| b.as_ref().map(|b| (format!("momentum.{n}"), b.clone())))
            .collect()
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) {
        for ((n, _, _), b) in self.params.iter().zip(self.bufs.iter_mut()) {
            *b = state.get(&format!("momentum.{n}")).cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_pytorch_update_rule() {
        // One scalar parameter, loss = w^2 / 2 so grad = w.
        let w = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone(), true)], 0.9, 0.1);
        let (lr, mut expect_w, mut expect_buf) = (0.5, 1.0f64, 0.0f64);
        for step in 0..3 {
            let loss = (w.as_tensor().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, lr).unwrap();
            let g = expect_w + 0.1 * expect_w;
            expect_buf = if step == 0 { g } else { 0.9 * expect_buf + g };
            expect_w -= lr * expect_buf;
            let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
            assert!(
                (got - expect_w).abs() < 1e-12,
                "step {step}: {got} vs {expect_w}"
            );
        }
    }
}
