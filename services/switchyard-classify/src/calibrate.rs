//! Calibration of the local tier on out-of-fold predictions: one temperature that divides the
//! logits (fitted by minimising the negative log-likelihood; a single parameter cannot
//! overfit small bins), the expected calibration error, and the lowest confidence threshold
//! whose precision is supported by the data — its one-sided 95% Wilson lower bound must reach
//! the requested precision, so a small or noisy validation set yields no threshold at all.

use super::linear::softmax;

/// One out-of-fold prediction: the logits and the true class.
#[derive(Debug, Clone)]
pub struct Held {
    /// Class scores.
    pub logits: Vec<f32>,
    /// The right class.
    pub truth: usize,
}

/// The temperature minimising the mean negative log-likelihood of `held`.
pub fn temperature(held: &[Held]) -> f32 {
    let nll = |t: f32| -> f64 {
        let mut sum = 0f64;
        let mut p = Vec::new();
        for h in held {
            p.clear();
            p.extend(h.logits.iter().map(|x| x / t));
            softmax(&mut p);
            sum -= f64::from(p[h.truth].max(1e-12)).ln();
        }
        sum / held.len().max(1) as f64
    };
    // Golden-section search on ln t in [ln 0.05, ln 20]; the NLL is unimodal in t.
    let (mut a, mut b) = (0.05f32.ln(), 20f32.ln());
    let g = 0.618_034f32;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (nll(c.exp()), nll(d.exp()));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = nll(c.exp());
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = nll(d.exp());
        }
    }
    ((a + b) / 2.0).exp()
}

/// The top class, its calibrated probability, and whether it is right.
pub fn judged(held: &[Held], t: f32) -> Vec<(usize, f64, bool)> {
    held.iter()
        .map(|h| {
            let mut p: Vec<f32> = h.logits.iter().map(|x| x / t).collect();
            softmax(&mut p);
            let (best, conf) = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or((0, 0.0), |(i, c)| (i, *c));
            (best, f64::from(conf), best == h.truth)
        })
        .collect()
}

/// Expected calibration error over 15 equal-width bins.
pub fn ece(judged: &[(usize, f64, bool)]) -> f64 {
    let bins = 15;
    let mut sum = vec![(0f64, 0f64, 0usize); bins];
    for &(_, c, right) in judged {
        let b = ((c * bins as f64) as usize).min(bins - 1);
        sum[b].0 += c;
        sum[b].1 += f64::from(u8::from(right));
        sum[b].2 += 1;
    }
    let n = judged.len().max(1) as f64;
    sum.iter()
        .filter(|(_, _, k)| *k > 0)
        .map(|(c, r, _)| (c - r).abs() / n)
        .sum()
}

/// The one-sided 95% Wilson lower bound of a proportion `right / n`.
pub fn wilson_lower(right: usize, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let z = 1.645f64;
    let n = n as f64;
    let p = right as f64 / n;
    let centre = p + z * z / (2.0 * n);
    let margin = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt();
    (centre - margin) / (1.0 + z * z / n)
}

/// A threshold and what it gives on the validation predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// Take a prediction when its calibrated confidence is at least this.
    pub confidence: f64,
    /// Share of validation predictions taken.
    pub coverage: f64,
    /// Precision of those taken.
    pub precision: f64,
    /// Its 95% lower bound.
    pub lower_bound: f64,
}

/// The lowest threshold (most coverage) whose precision's lower bound reaches `target`, or
/// `Err` with the best lower bound seen when none does.
pub fn threshold(judged: &[(usize, f64, bool)], target: f64) -> Result<Threshold, f64> {
    let mut sorted: Vec<(f64, bool)> = judged.iter().map(|&(_, c, r)| (c, r)).collect();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut taken, mut right) = (0usize, 0usize);
    let mut best: Option<Threshold> = None;
    let mut best_bound = 0f64;
    let mut i = 0;
    while i < sorted.len() {
        // Take every prediction with this confidence at once.
        let c = sorted[i].0;
        while i < sorted.len() && sorted[i].0 == c {
            taken += 1;
            right += usize::from(sorted[i].1);
            i += 1;
        }
        let lower = wilson_lower(right, taken);
        best_bound = best_bound.max(lower);
        if lower >= target {
            best = Some(Threshold {
                confidence: c,
                coverage: taken as f64 / sorted.len() as f64,
                precision: right as f64 / taken as f64,
                lower_bound: lower,
            });
        }
    }
    best.ok_or(best_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overconfident_model_gets_a_temperature_above_one() {
        // Logits say 99% but only 70% are right.
        let held: Vec<Held> = (0..200)
            .map(|i| Held {
                logits: vec![5.0, 0.0],
                truth: usize::from(i % 10 >= 7),
            })
            .collect();
        let t = temperature(&held);
        assert!(t > 1.5, "{t}");
        let j = judged(&held, t);
        assert!((j[0].1 - 0.7).abs() < 0.05, "{:?}", j[0]);
        assert!(ece(&j) < 0.05);
    }

    #[test]
    fn wilson_bounds_shrink_with_evidence() {
        assert!(wilson_lower(10, 10) < 0.85);
        assert!(wilson_lower(1000, 1000) > 0.99);
        assert!(wilson_lower(0, 0) == 0.0);
    }

    #[test]
    fn tiny_data_cannot_support_a_high_precision() {
        // Eight predictions, all right: the lower bound stays far below 0.98.
        let j: Vec<(usize, f64, bool)> =
            (0..8).map(|i| (0, 0.9 + i as f64 / 100.0, true)).collect();
        let best = threshold(&j, 0.98).unwrap_err();
        assert!(best < 0.98, "{best}");
    }

    #[test]
    fn the_threshold_takes_as_much_as_the_target_allows() {
        // 1,000 confident and right, then 1,000 less confident and half right.
        let mut j: Vec<(usize, f64, bool)> = (0..1000).map(|_| (0, 0.99, true)).collect();
        j.extend((0..1000).map(|i| (0, 0.6, i % 2 == 0)));
        let t = threshold(&j, 0.98).unwrap();
        assert_eq!(t.confidence, 0.99);
        assert!((t.coverage - 0.5).abs() < 1e-9);
        // A lower target takes the half-right group too: 1,500 of 2,000 right.
        let loose = threshold(&j, 0.7).unwrap();
        assert_eq!(loose.confidence, 0.6);
        assert_eq!(loose.coverage, 1.0);
    }
}
