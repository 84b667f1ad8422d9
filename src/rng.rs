//! A small, seeded, version-stable random number generator.
//!
//! Synthetic data sets, weight initialisation, data splits and augmentation must
//! be reproducible from a seed across releases and platforms, so they do not
//! depend on an external crate's stream (xoshiro256** seeded by SplitMix64).

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Rng {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    /// An independent stream derived from this seed and a label, e.g. one per image.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng::new(splitmix(&mut x))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn f32(&mut self) -> f32 {
        self.f64() as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    pub fn bool(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(1e-300);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(shape, 1) (Marsaglia and Tsang, 2000; shape < 1 by the
    /// `Gamma(shape + 1) * U^(1 / shape)` boost).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        assert!(shape > 0.0 && shape.is_finite(), "gamma shape {shape}");
        if shape < 1.0 {
            let u = 1.0 - self.f64(); // (0, 1]
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.f64();
            if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// Beta(a, b), as `X / (X + Y)` of two Gamma draws.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        loop {
            let x = self.gamma(a);
            let y = self.gamma(b);
            if x + y > 0.0 {
                return x / (x + y);
            }
        }
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        assert_ne!(Rng::new(8).next_u64(), a[0]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let k = r.below(7);
            seen[k] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(3);
        let n = 20000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "{m} {v}");
    }

    fn moments(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn gamma_has_the_shapes_mean_and_variance() {
        // Gamma(k, 1): mean k, variance k; k < 1 goes through the boost.
        let mut r = Rng::new(5);
        for k in [0.2, 1.0, 3.5] {
            let xs: Vec<f64> = (0..40000).map(|_| r.gamma(k)).collect();
            assert!(xs.iter().all(|&x| x >= 0.0 && x.is_finite()), "{k}");
            let (m, v) = moments(&xs);
            assert!((m - k).abs() < 0.03 * k.max(1.0), "k {k}: mean {m}");
            assert!((v - k).abs() < 0.1 * k.max(1.0), "k {k}: variance {v}");
        }
    }

    #[test]
    fn beta_has_its_mean_and_variance() {
        // Beta(a, b): mean a / (a + b), variance ab / ((a + b)^2 (a + b + 1)).
        let mut r = Rng::new(6);
        for (a, b) in [(0.2, 0.2), (2.0, 5.0), (1.0, 1.0)] {
            let xs: Vec<f64> = (0..40000).map(|_| r.beta(a, b)).collect();
            assert!(xs.iter().all(|&x| (0.0..=1.0).contains(&x)), "{a} {b}");
            let (m, v) = moments(&xs);
            let (em, ev) = (a / (a + b), a * b / ((a + b).powi(2) * (a + b + 1.0)));
            assert!(
                (m - em).abs() < 0.01,
                "Beta({a}, {b}): mean {m}, expected {em}"
            );
            assert!(
                (v - ev).abs() < 0.01,
                "Beta({a}, {b}): variance {v}, expected {ev}"
            );
        }
        // Beta(0.2, 0.2) puts most of its mass near 0 and 1: a blend is mostly one image.
        let near = (0..10000)
            .map(|_| r.beta(0.2, 0.2))
            .filter(|x| !(0.1..0.9).contains(x))
            .count();
        assert!(near > 6000, "{near} of 10000 draws within 0.1 of 0 or 1");
    }
}
