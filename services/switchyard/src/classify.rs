//! The local zero-cost tier: a text classifier trained at start-up from labelled examples
//! (a CSV of `text,label`), with a calibrated confidence, so that easy jobs never reach a paid
//! model.
//!
//! Multinomial naive Bayes over lower-cased word unigrams and bigrams with additive smoothing.
//! Its raw posteriors are over-confident, so confidence is calibrated: a fifth of the examples
//! is held out, the held-out predictions are binned by raw posterior, and each bin's measured
//! accuracy (made monotone) is the confidence reported for posteriors in that bin. The model
//! used afterwards is trained on every example.
//!
//! Sparse counts are kept per token: a dense document-term matrix (what general-purpose
//! naive-Bayes crates take) would be 10,000 examples × tens of thousands of n-grams.

use std::collections::HashMap;
use std::path::Path;

/// Smoothing added to every token count.
const ALPHA: f64 = 0.1;
/// Calibration bins.
const BINS: usize = 12;

/// A trained classifier.
#[derive(Debug, Clone)]
pub struct Classifier {
    labels: Vec<String>,
    log_prior: Vec<f64>,
    /// Per token, the log-likelihood under each label.
    log_lik: HashMap<String, Vec<f64>>,
    /// (upper bound of raw posterior, calibrated accuracy), ascending.
    calibration: Vec<(f64, f64)>,
}

/// A prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most likely label.
    pub label: String,
    /// Calibrated probability that it is right.
    pub confidence: f64,
    /// The model's own posterior for it (over-confident).
    pub raw: f64,
}

/// Lower-cased words and adjacent word pairs.
pub fn tokens(text: &str) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = words.clone();
    out.extend(words.windows(2).map(|w| format!("{} {}", w[0], w[1])));
    out
}

/// Reads `text,label` rows (a header row first; quoted fields may hold commas and newlines).
pub fn read_examples(path: &Path) -> Result<Vec<(String, String)>, String> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| format!("cannot read training examples {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
        match (record.get(0), record.get(1)) {
            (Some(text), Some(label)) if !label.trim().is_empty() => {
                rows.push((text.to_string(), label.trim().to_string()));
            }
            _ => {
                return Err(format!(
                    "{}:{}: a row must be `text,label`",
                    path.display(),
                    i + 2
                ));
            }
        }
    }
    if rows.is_empty() {
        return Err(format!("{} holds no examples", path.display()));
    }
    Ok(rows)
}

impl Classifier {
    /// Trains on `examples` and calibrates on a held-out fifth of them.
    pub fn train(examples: &[(String, String)]) -> Result<Self, String> {
        if examples.len() < 10 {
            return Err(format!(
                "{} training examples are too few (at least 10)",
                examples.len()
            ));
        }
        let (fit, held): (Vec<_>, Vec<_>) =
            examples.iter().enumerate().partition(|(i, _)| i % 5 != 4);
        let fit: Vec<(String, String)> = fit.into_iter().map(|(_, e)| e.clone()).collect();
        let probe = Self::fit(&fit);
        let mut scored: Vec<(f64, bool)> = held
            .iter()
            .map(|(_, (text, label))| {
                let (l, raw) = probe.best(text);
                (raw, probe.labels[l] == *label)
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut model = Self::fit(examples);
        model.calibration = calibrate(&scored);
        Ok(model)
    }

    fn fit(examples: &[(String, String)]) -> Self {
        let mut labels: Vec<String> = examples.iter().map(|(_, l)| l.clone()).collect();
        labels.sort();
        labels.dedup();
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let k = labels.len();
        let mut docs = vec![0usize; k];
        let mut totals = vec![0f64; k];
        let mut counts: HashMap<String, Vec<f64>> = HashMap::new();
        for (text, label) in examples {
            let Some(&c) = index.get(label.as_str()) else {
                continue;
            };
            docs[c] += 1;
            for t in tokens(text) {
                counts.entry(t).or_insert_with(|| vec![0.0; k])[c] += 1.0;
                totals[c] += 1.0;
            }
        }
        let vocab = counts.len() as f64;
        let denom: Vec<f64> = totals.iter().map(|t| t + ALPHA * vocab).collect();
        let log_lik = counts
            .into_iter()
            .map(|(t, c)| {
                let v = c
                    .iter()
                    .zip(&denom)
                    .map(|(n, d)| ((n + ALPHA) / d).ln())
                    .collect();
                (t, v)
            })
            .collect();
        let n = examples.len() as f64;
        Self {
            log_prior: docs
                .iter()
                .map(|d| (*d as f64 / n).max(1e-12).ln())
                .collect(),
            labels,
            log_lik,
            calibration: Vec::new(),
        }
    }

    /// The best label's index and its posterior.
    fn best(&self, text: &str) -> (usize, f64) {
        let mut score = self.log_prior.clone();
        for t in tokens(text) {
            // Tokens never seen in training say nothing about the label.
            if let Some(l) = self.log_lik.get(&t) {
                for (s, x) in score.iter_mut().zip(l) {
                    *s += x;
                }
            }
        }
        let max = score.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = score.iter().map(|s| (s - max).exp()).sum();
        let best = score
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        (best, 1.0 / sum.max(1.0))
    }

    /// Classifies one text.
    pub fn predict(&self, text: &str) -> Prediction {
        let (i, raw) = self.best(text);
        let confidence = self
            .calibration
            .iter()
            .find(|(upper, _)| raw <= *upper)
            .or(self.calibration.last())
            .map_or(raw, |(_, acc)| *acc);
        Prediction {
            label: self.labels.get(i).cloned().unwrap_or_default(),
            confidence,
            raw,
        }
    }

    /// The labels it knows.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

/// Equal-count bins of (raw posterior, right?) sorted by posterior → (upper bound, accuracy),
/// accuracy made non-decreasing.
fn calibrate(scored: &[(f64, bool)]) -> Vec<(f64, f64)> {
    if scored.is_empty() {
        return Vec::new();
    }
    let size = scored.len().div_ceil(BINS);
    let mut out: Vec<(f64, f64)> = scored
        .chunks(size)
        .map(|c| {
            let right = c.iter().filter(|(_, r)| *r).count() as f64;
            (c.last().map_or(1.0, |x| x.0), right / c.len() as f64)
        })
        .collect();
    for i in 1..out.len() {
        if out[i].1 < out[i - 1].1 {
            out[i].1 = out[i - 1].1;
        }
    }
    if let Some(last) = out.last_mut() {
        last.0 = 1.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<(String, String)> {
        let mut e = Vec::new();
        for i in 0..30 {
            e.push((
                format!("my card {i} was stolen yesterday"),
                "stolen".to_string(),
            ));
            e.push((format!("how do I top up {i} euros"), "top_up".to_string()));
            e.push((
                format!("what is the exchange rate for {i} dollars"),
                "rate".to_string(),
            ));
        }
        e
    }

    #[test]
    fn learns_labels_from_words() {
        let c = Classifier::train(&examples()).unwrap();
        assert_eq!(c.labels().len(), 3);
        assert_eq!(c.predict("someone stole my card").label, "stolen");
        assert_eq!(c.predict("top up please").label, "top_up");
        assert_eq!(c.predict("exchange rate today?").label, "rate");
        let p = c.predict("my card was stolen");
        assert!(p.confidence > 0.5 && p.confidence <= 1.0, "{p:?}");
    }

    #[test]
    fn calibration_reports_measured_accuracy_per_bin_monotone() {
        // Raw 0.1..0.9: low ones mostly wrong, high ones right.
        let scored: Vec<(f64, bool)> = (0..120)
            .map(|i| (i as f64 / 120.0, i % 10 < i / 12))
            .collect();
        let cal = calibrate(&scored);
        assert_eq!(cal.len(), BINS);
        assert_eq!(cal.last().unwrap().0, 1.0);
        assert!(cal.windows(2).all(|w| w[0].1 <= w[1].1), "{cal:?}");
        assert!(cal[0].1 < 0.2 && cal[BINS - 1].1 > 0.8, "{cal:?}");
    }

    #[test]
    fn tokens_are_words_and_pairs() {
        assert_eq!(
            tokens("Card, stolen!"),
            vec!["card".to_string(), "stolen".into(), "card stolen".into()]
        );
    }

    #[test]
    fn too_few_examples_are_refused() {
        assert!(Classifier::train(&examples()[..5]).is_err());
    }
}
