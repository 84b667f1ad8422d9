//! Planned inference: a chain of convolutions planned once for a model and an
//! input size, run on buffers allocated once and reused for every frame.

use super::conv::ConvPlan;

/// Convolutions applied one after another, each to the previous output.
#[derive(Debug)]
pub struct Chain {
    plans: Vec<ConvPlan>,
    batch: usize,
    ping: Vec<f32>,
    pong: Vec<f32>,
}

impl Chain {
    /// A chain for `batch` images; consecutive plans must agree on channels and size.
    pub fn new(plans: Vec<ConvPlan>, batch: usize) -> Chain {
        for pair in plans.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(
                (a.cout, a.oh, a.ow),
                (b.cin, b.h, b.w),
                "chained convolutions disagree on shape"
            );
        }
        let out = plans.iter().map(|p| p.out_len()).max().unwrap_or(0) * batch;
        Chain {
            plans,
            batch,
            ping: vec![0.0; out],
            pong: vec![0.0; out],
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `(channels, rows, cols)` of the output.
    pub fn out_shape(&self) -> (usize, usize, usize) {
        self.plans
            .last()
            .map(|p| (p.cout, p.oh, p.ow))
            .unwrap_or((0, 0, 0))
    }

    /// Runs the chain on NCHW `x` (`batch` images); returns the output
    /// (`batch * channels * rows * cols` floats, valid until the next run).
    pub fn run(&mut self, x: &[f32]) -> &[f32] {
        if self.plans.is_empty() {
            // An empty chain is the identity.
            self.ping.clear();
            self.ping.extend_from_slice(x);
            return &self.ping;
        }
        let b = self.batch;
        for (i, p) in self.plans.iter().enumerate() {
            let n = b * p.out_len();
            let (src, dst): (&[f32], &mut [f32]) = match i {
                0 => (x, &mut self.ping[..n]),
                i if i % 2 == 1 => (&self.ping[..b * p.cin * p.h * p.w], &mut self.pong[..n]),
                _ => (&self.pong[..b * p.cin * p.h * p.w], &mut self.ping[..n]),
            };
            p.run(src, b, dst);
        }
        let last = self.plans.len() - 1;
        let n = b * self.plans[last].out_len();
        if last.is_multiple_of(2) {
            &self.ping[..n]
        } else {
            &self.pong[..n]
        }
    }
}
