//! Multinomial logistic regression over sparse inputs, trained by stochastic gradient descent
//! with L2 regularisation. Weights are dense per (feature, class) — a row of `k` floats per
//! feature, so a sparse input touches `nnz × k` contiguous floats — and the L2 shrinkage is
//! applied lazily through one scale factor, so an update costs `nnz × k`, not `features × k`.
//! (AdaGrad was tried: no better on banking77 and twice as slow.)
//!
//! Written here rather than taken from a crate: the maintained Rust ML crates (linfa's
//! logistic regression, smartcore) train on dense `ndarray` matrices, and a dense
//! 10,000 × 60,000 TF-IDF matrix is what this module exists to avoid.

use super::features::Sparse;

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    /// Passes over the data.
    pub epochs: usize,
    /// L2 strength per example.
    pub lambda: f32,
    /// Initial learning rate (decays as 1 / (1 + epoch)).
    pub learning_rate: f32,
    /// Seed of the example order.
    pub seed: u64,
}

impl Default for Fit {
    fn default() -> Self {
        Self {
            epochs: 10,
            lambda: 1e-5,
            learning_rate: 3.0,
            seed: 7,
        }
    }
}

/// A trained model: scores for `k` classes.
#[derive(Debug, Clone, Default)]
pub struct Softmax {
    k: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// A small deterministic generator for the example order (xorshift64*).
struct Order(u64);

impl Order {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below.max(1)
    }
}

impl Softmax {
    /// Trains on inputs `x` (features below `dims`) with labels `y` below `k`.
    pub fn train(x: &[&Sparse], y: &[usize], k: usize, dims: usize, fit: Fit) -> Self {
        let mut v = vec![0f32; dims * k];
        let mut bias = vec![0f32; k];
        let mut scale = 1f32;
        let mut order: Vec<usize> = (0..x.len()).collect();
        let mut rng = Order(fit.seed.max(1));
        let mut scores = vec![0f32; k];
        for epoch in 0..fit.epochs {
            for i in (1..order.len()).rev() {
                let j = rng.next(i + 1);
                order.swap(i, j);
            }
            let lr = fit.learning_rate / (1.0 + epoch as f32);
            for &n in &order {
                let xs = x[n];
                scores.copy_from_slice(&bias);
                for &(f, xv) in xs {
                    let row = &v[f as usize * k..(f as usize + 1) * k];
                    for (s, w) in scores.iter_mut().zip(row) {
                        *s += scale * xv * w;
                    }
                }
                softmax(&mut scores);
                scores[y[n]] -= 1.0;
                // Shrink every weight through the scale, then step along the gradient.
                scale *= 1.0 - lr * fit.lambda;
                let step = lr / scale;
                for &(f, xv) in xs {
                    let row = &mut v[f as usize * k..(f as usize + 1) * k];
                    for (w, g) in row.iter_mut().zip(&scores) {
                        *w -= step * xv * g;
                    }
                }
                for (b, g) in bias.iter_mut().zip(&scores) {
                    *b -= lr * g;
                }
                if scale < 1e-4 {
                    for w in &mut v {
                        *w *= scale;
                    }
                    scale = 1.0;
                }
            }
        }
        for w in &mut v {
            *w *= scale;
        }
        Self {
            k,
            weights: v,
            bias,
        }
    }

    /// Raw class scores (logits) for `x`.
    pub fn scores(&self, x: &Sparse) -> Vec<f32> {
        let mut s = self.bias.clone();
        for &(f, xv) in x {
            let start = f as usize * self.k;
            if let Some(row) = self.weights.get(start..start + self.k) {
                for (s, w) in s.iter_mut().zip(row) {
                    *s += xv * w;
                }
            }
        }
        s
    }
}

/// Turns scores into probabilities in place.
pub fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        for x in s.iter_mut() {
            *x /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_classes_on_disjoint_features() {
        let data: Vec<Sparse> = (0..60)
            .map(|i| vec![((i % 3) as u32 * 2, 0.8), ((i % 3) as u32 * 2 + 1, 0.6)])
            .collect();
        let x: Vec<&Sparse> = data.iter().collect();
        let y: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let m = Softmax::train(&x, &y, 3, 6, Fit::default());
        for (xs, want) in data.iter().zip(&y).take(3) {
            let mut s = m.scores(xs);
            softmax(&mut s);
            let best = s
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(best, *want);
            assert!(s[best] > 0.8, "{s:?}");
        }
    }
}
