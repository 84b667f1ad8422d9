//! The optimisers of `gcm-inspect train`, each with PyTorch's update rule so
//! that the twin (`scripts/reference/train_twin.py`) trains the same way.
//!
//! * SGD with momentum and L2 weight decay: `g = grad + wd * w` (weights
//!   only), `buf = m * buf + g` (`buf = g` at the first step),
//!   `w = w - lr * buf`.
//! * AdamW (`torch.optim.AdamW`, betas 0.9 / 0.999, eps 1e-8): decoupled
//!   weight decay `w = w - lr * wd * w` (weights only), then the Adam step
//!   with bias correction. Adam scales each parameter's step by its own
//!   gradient history, which matters for a GCM: the class score is the mean
//!   over every pixel, so the gradient reaching the layers that must mark a
//!   small defect is diluted by the image area, and SGD learns them slowly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::config::OptimizerChoice;

/// The optimiser a run uses, with its state for `--resume`.
pub enum Optimizer {
    Sgd(Sgd),
    AdamW(AdamW),
}

impl Optimizer {
    /// `params`: `(name, variable, weight decay applies)`.
    pub fn new(
        choice: OptimizerChoice,
        params: Vec<(String, Var, bool)>,
        momentum: f64,
        weight_decay: f64,
    ) -> Self {
        match choice {
            OptimizerChoice::Sgd => Optimizer::Sgd(Sgd::new(params, momentum, weight_decay)),
            OptimizerChoice::Adamw => Optimizer::AdamW(AdamW::new(params, weight_decay)),
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.step(grads, lr),
            Optimizer::AdamW(o) => o.step(grads, lr),
        }
    }

    /// State tensors by name (for `--resume`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            Optimizer::Sgd(o) => Ok(o.state()),
            Optimizer::AdamW(o) => o.state(),
        }
    }

    /// Restores [`Optimizer::state`]; the error names what is missing.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        match self {
            Optimizer::Sgd(o) => {
                o.load_state(state);
                Ok(())
            }
            Optimizer::AdamW(o) => o.load_state(state),
        }
    }
}

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

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

pub struct AdamW {
    params: Vec<(String, Var, bool)>,
    /// First and second moment per parameter (None before its first step).
    moments: Vec<Option<(Tensor, Tensor)>>,
    steps: u64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var, bool)>, weight_decay: f64) -> Self {
        let moments = vec![None; params.len()];
        AdamW {
            params,
            moments,
            steps: 0,
            weight_decay,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for ((_, var, decay), mom) in self.params.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var) else { continue };
            let mut w = var.as_tensor().clone();
            if *decay && self.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * self.weight_decay))?;
            }
            let (m, v) = match mom.take() {
                Some((m, v)) => (
                    ((m * BETA1)? + (g * (1.0 - BETA1))?)?,
                    ((v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?,
                ),
                None => ((g * (1.0 - BETA1))?, (g.sqr()? * (1.0 - BETA2))?),
            };
            let denom = ((v.sqrt()? / bc2.sqrt())? + EPS)?;
            let update = ((&m / &denom)? * (lr / bc1))?;
            var.set(&(w - update)?)?;
            *mom = Some((m.detach(), v.detach()));
        }
        Ok(())
    }

    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for ((n, _, _), mom) in self.params.iter().zip(&self.moments) {
            if let Some((m, v)) = mom {
                out.insert(format!("adamw.m.{n}"), m.clone());
                out.insert(format!("adamw.v.{n}"), v.clone());
            }
        }
        out.insert(
            "adamw.steps".into(),
            Tensor::new(&[self.steps as f64], &Device::Cpu)?,
        );
        Ok(out)
    }

    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let steps = state
            .get("adamw.steps")
            .ok_or("adamw.steps is missing (the run was not trained with adamw?)")?;
        let steps = steps
            .to_dtype(DType::F64)
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| format!("adamw.steps: {e}"))?;
        self.steps = match steps[..] {
            [t] if t >= 0.0 && t.fract() == 0.0 => t as u64,
            _ => return Err(format!("adamw.steps: {steps:?} is not one step count")),
        };
        for ((n, _, _), mom) in self.params.iter().zip(self.moments.iter_mut()) {
            *mom = match (
                state.get(&format!("adamw.m.{n}")),
                state.get(&format!("adamw.v.{n}")),
            ) {
                (Some(m), Some(v)) => Some((m.clone(), v.clone())),
                (None, None) => None,
                _ => return Err(format!("adamw state of {n} is incomplete")),
            };
        }
        Ok(())
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

    #[test]
    fn adamw_matches_the_pytorch_update_rule() {
        // loss = w^2 / 2, grad = w; decoupled decay 0.1 at lr 0.05.
        let w = Var::new(&[2.0f64], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone(), true)], 0.1);
        let (lr, mut ew, mut m, mut v) = (0.05, 2.0f64, 0.0f64, 0.0f64);
        for t in 1..=4 {
            let loss = (w.as_tensor().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap(), lr).unwrap();
            let g = ew;
            ew *= 1.0 - lr * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            ew -= lr * mh / (vh.sqrt() + 1e-8);
            let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
            assert!((got - ew).abs() < 1e-12, "step {t}: {got} vs {ew}");
        }
        // The first step moves by lr whatever the gradient's scale: that is
        // what lets a diluted gradient learn at the same pace.
        let tiny = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("t".into(), tiny.clone(), false)], 0.0);
        let loss = (tiny.as_tensor() * 1e-4).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.01).unwrap();
        let got = tiny.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((got - 0.99).abs() < 1e-5, "{got}");
    }

    #[test]
    fn adamw_state_round_trips_and_names_what_is_missing() {
        let w = Var::new(&[1.0f64, -1.0], &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone(), true)];
        let mut a = AdamW::new(params.clone(), 0.01);
        for _ in 0..3 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            a.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let st = a.state().unwrap();
        let mut b = AdamW::new(params, 0.01);
        b.load_state(&st).unwrap();
        assert_eq!(b.steps, 3);
        let (am, av) = a.moments[0].as_ref().unwrap();
        let (bm, bv) = b.moments[0].as_ref().unwrap();
        assert_eq!(am.to_vec1::<f64>().unwrap(), bm.to_vec1::<f64>().unwrap());
        assert_eq!(av.to_vec1::<f64>().unwrap(), bv.to_vec1::<f64>().unwrap());

        let mut partial = st.clone();
        partial.remove("adamw.v.w");
        assert!(b.load_state(&partial).unwrap_err().contains("w"));
        let mut bad = st.clone();
        bad.insert(
            "adamw.steps".into(),
            Tensor::new(&[0f64; 0], &Device::Cpu).unwrap(),
        );
        assert!(b
            .load_state(&bad)
            .unwrap_err()
            .contains("not one step count"));
        let sgd_state = HashMap::new();
        assert!(b
            .load_state(&sgd_state)
            .unwrap_err()
            .contains("adamw.steps"));
    }
}
