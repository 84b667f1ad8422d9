//! An exponential moving average of the weights (`ema_decay` in the config).
//!
//! After every optimiser step each tensor of the model (weights, biases and
//! the BatchNorm running statistics) is folded into its average:
//! `avg = d * avg + (1 - d) * current`, with `d = min(ema_decay, (1 + n) / (10 + n))`
//! after `n` earlier updates, so that the average is not dominated by the
//! initial weights during the first steps (the warm-up of timm's `ModelEmaV2`
//! and TensorFlow's `ExponentialMovingAverage(num_updates=...)`). Validation,
//! the best-epoch checkpoint and `last/model.safetensors` use the averaged
//! weights; the optimiser goes on from its own, which `last/` keeps for
//! `--resume` in `train_weights.safetensors`.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::Result;

/// The averaged tensors of every variable of a [`VarMap`], by name.
pub struct Ema {
    decay: f64,
    updates: u64,
    /// `(name, variable, average)`, sorted by name.
    entries: Vec<(String, Var, Tensor)>,
}

/// The optimiser's own weights while the averaged ones are swapped in.
pub struct Swapped<'a> {
    ema: &'a Ema,
    saved: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the variables' current values, as if `updates`
    /// steps had been averaged already (0 for a new run).
    pub fn new(varmap: &VarMap, decay: f64, updates: u64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut entries = data
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema {
            decay,
            updates,
            entries,
        })
    }

    /// Updates done so far (kept across `--resume`).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay used by the next update.
    pub fn next_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Folds the variables' current values into the average.
    pub fn update(&mut self) -> Result<()> {
        let d = self.next_decay();
        for (_, var, avg) in &mut self.entries {
            let cur = var.as_tensor().detach();
            *avg = (avg.affine(d, 0.0)? + cur.affine(1.0 - d, 0.0)?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }

    /// Replaces the variables' values by the averages until
    /// [`Swapped::restore`].
    pub fn swap_in(&self) -> Result<Swapped<'_>> {
        let mut saved = Vec::with_capacity(self.entries.len());
        for (_, var, avg) in &self.entries {
            saved.push(var.as_tensor().detach().copy()?);
            var.set(avg)?;
        }
        Ok(Swapped { ema: self, saved })
    }
}

impl Swapped<'_> {
    /// The optimiser's own weights, by name.
    pub fn train_weights(&self) -> HashMap<String, Tensor> {
        self.ema
            .entries
            .iter()
            .zip(&self.saved)
            .map(|((n, _, _), t)| (n.clone(), t.clone()))
            .collect()
    }

    /// Puts the optimiser's own weights back.
    pub fn restore(self) -> Result<()> {
        for ((_, var, _), t) in self.ema.entries.iter().zip(&self.saved) {
            var.set(t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn varmap_with(v: f32) -> (VarMap, Var) {
        let vm = VarMap::new();
        let t = vm
            .get(
                2,
                "w",
                candle_nn::Init::Const(v as f64),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let var = vm.data().lock().unwrap()["w"].clone();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![v, v]);
        (vm, var)
    }

    fn value(var: &Var) -> f32 {
        var.as_tensor().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn average_follows_the_warm_up_then_the_decay() {
        let (vm, var) = varmap_with(0.0);
        let mut ema = Ema::new(&vm, 0.5, 0).unwrap();
        // Steps set the weight to 10, 20, 30; decays min(0.5, 1/10, 2/11, 3/12).
        let mut want = 0f64;
        for (i, w) in [10f32, 20.0, 30.0].into_iter().enumerate() {
            var.set(&Tensor::new(&[w, w], &Device::Cpu).unwrap())
                .unwrap();
            let n = i as f64;
            let d = 0.5f64.min((1.0 + n) / (10.0 + n));
            assert_eq!(ema.next_decay(), d);
            ema.update().unwrap();
            want = d * want + (1.0 - d) * w as f64;
        }
        assert_eq!(ema.updates(), 3);
        // The variable itself is untouched by update().
        assert_eq!(value(&var), 30.0);
        let swapped = ema.swap_in().unwrap();
        assert!((value(&var) as f64 - want).abs() < 1e-4, "{}", value(&var));
        assert_eq!(
            swapped.train_weights()["w"].to_vec1::<f32>().unwrap()[0],
            30.0
        );
        swapped.restore().unwrap();
        assert_eq!(value(&var), 30.0);
        // After the warm-up the configured decay rules.
        let late = Ema::new(&vm, 0.5, 1000).unwrap();
        assert_eq!(late.next_decay(), 0.5);
    }

    #[test]
    fn the_average_does_not_alias_the_variable() {
        // set() writes into the variable's storage: an average or a saved
        // copy sharing it would change with the next optimiser step.
        let (vm, var) = varmap_with(1.0);
        let mut ema = Ema::new(&vm, 0.9, 1000).unwrap();
        var.set(&Tensor::new(&[5f32, 5.0], &Device::Cpu).unwrap())
            .unwrap();
        let swapped = ema.swap_in().unwrap();
        assert_eq!(value(&var), 1.0);
        let saved = swapped.train_weights();
        swapped.restore().unwrap();
        var.set(&Tensor::new(&[7f32, 7.0], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(saved["w"].to_vec1::<f32>().unwrap()[0], 5.0);
        ema.update().unwrap();
        let s = ema.swap_in().unwrap();
        assert!((value(&var) - (0.9 * 1.0 + 0.1 * 7.0)).abs() < 1e-6);
        s.restore().unwrap();
    }
}
