//! The local zero-cost tier: a text classifier trained when the pipeline loads, from labelled
//! examples (a CSV of `text,label`), that answers only what it is sure of and abstains on the
//! rest, so that easy jobs never reach a paid model and hard or unfamiliar ones always do.
//!
//! - Features ([`features`]): TF-IDF over word 1–2-grams and character 2–5-grams.
//! - Model ([`linear`]): multinomial logistic regression trained by SGD on sparse vectors.
//! - Calibration ([`calibrate`]): k-fold cross-validation gives an out-of-fold prediction for
//!   every example; one temperature is fitted on them, and the confidence threshold for the
//!   requested precision is the lowest whose 95% lower bound reaches it. When no threshold
//!   does, the tier abstains on everything and says so at start.
//! - Out of scope: a query unlike the training examples of the class it would get (its best
//!   cosine similarity to them is below what 95% of in-scope training queries reach) is not
//!   answered; optional out-of-scope examples train an extra "none of these" class whose
//!   predictions are never answered either.

pub mod calibrate;
pub mod features;
pub mod linear;

use std::path::Path;

use calibrate::Held;
use features::{Sparse, Vectorizer, dot};
use linear::{Fit, Softmax, softmax};

/// The internal label of out-of-scope examples.
const NONE_LABEL: &str = "\u{0}none";

/// How to train.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Precision the answered predictions must reach on validation data; none: answer all.
    pub precision: Option<f64>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Features must appear in at least this many examples.
    pub min_df: u32,
    /// Share of in-scope validation queries the novelty cut lets through.
    pub in_scope_pass: f64,
    /// SGD settings.
    pub fit: Fit,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            precision: None,
            folds: 4,
            min_df: 2,
            in_scope_pass: 0.95,
            fit: Fit::default(),
        }
    }
}

/// Why a classifier could not be trained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    /// The examples file.
    #[error("{0}")]
    Read(String),
    /// Too few examples or labels.
    #[error("{0}")]
    TooFew(String),
}

/// A trained classifier.
#[derive(Debug, Clone)]
pub struct Classifier {
    labels: Vec<String>,
    vectorizer: Vectorizer,
    model: Softmax,
    temperature: f32,
    /// Training vectors by class, for the novelty score.
    by_class: Vec<Vec<Sparse>>,
    /// Below this similarity to its class's examples a query is out of scope.
    min_similarity: f32,
    /// Answer only at or above this calibrated confidence (None: answer nothing).
    threshold: Option<f64>,
    /// What training measured.
    pub report: TrainReport,
}

/// What training measured on the out-of-fold predictions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainReport {
    /// Training examples (out-of-scope ones included).
    pub examples: usize,
    /// In-scope labels.
    pub labels: usize,
    /// Features in the vocabulary.
    pub features: usize,
    /// Cross-validation folds.
    pub folds: usize,
    /// Fitted temperature.
    pub temperature: f64,
    /// Top-1 accuracy of the out-of-fold predictions.
    pub top1: f64,
    /// Expected calibration error after the temperature.
    pub ece: f64,
    /// The requested precision.
    pub target_precision: Option<f64>,
    /// The threshold chosen for it (none: the data cannot support it).
    pub threshold: Option<f64>,
    /// Share of validation predictions the threshold takes.
    pub coverage: f64,
    /// Their precision, and its 95% lower bound.
    pub precision: f64,
    /// 95% lower bound of that precision (or the best seen when no threshold qualifies).
    pub precision_lower_bound: f64,
    /// The novelty cut.
    pub min_similarity: f64,
}

impl TrainReport {
    /// One line for the start-up log and `validate`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} examples, {} labels, {} features; {}-fold top-1 {:.3}, ECE {:.3}, temperature {:.2}",
            self.examples,
            self.labels,
            self.features,
            self.folds,
            self.top1,
            self.ece,
            self.temperature
        );
        match (self.target_precision, self.threshold) {
            (Some(p), Some(t)) => s.push_str(&format!(
                "; precision {p:.3}: threshold {t:.3} takes {:.1}% at {:.3} (lower bound {:.3})",
                self.coverage * 100.0,
                self.precision,
                self.precision_lower_bound
            )),
            (Some(p), None) => s.push_str(&format!(
                "; precision {p:.3} is NOT supported by the data (best lower bound {:.3}): every job escalates",
                self.precision_lower_bound
            )),
            (None, _) => {}
        }
        s
    }
}

/// Why the tier does not answer a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Abstain {
    /// Unlike the examples of the class it would get (or predicted "none of these").
    OutOfScope {
        /// Best similarity to that class's examples.
        similarity: f32,
        /// The cut.
        min: f32,
    },
    /// Less sure than the precision target allows.
    BelowThreshold {
        /// The threshold.
        threshold: f64,
    },
    /// The training data cannot support the requested precision.
    Unsupported,
}

impl std::fmt::Display for Abstain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abstain::OutOfScope { similarity, min } => write!(
                f,
                "out of scope: similarity {similarity:.2} to the predicted class's examples is below {min:.2}"
            ),
            Abstain::BelowThreshold { threshold } => {
                write!(f, "confidence below the precision threshold {threshold:.3}")
            }
            Abstain::Unsupported => f.write_str(
                "the training data cannot support the requested precision; every job escalates",
            ),
        }
    }
}

/// A prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most likely label (empty for "none of these").
    pub label: String,
    /// Calibrated probability that it is right.
    pub confidence: f64,
    /// The model's own probability for it, before calibration.
    pub raw: f64,
    /// Best cosine similarity to the training examples of that label.
    pub similarity: f32,
    /// Why the tier does not answer, if it does not.
    pub abstain: Option<Abstain>,
}

/// Reads `text,label` rows (a header row first; quoted fields may hold commas and newlines).
pub fn read_examples(path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| {
        TrainError::Read(format!(
            "cannot read training examples {}: {e}",
            path.display()
        ))
    })?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| TrainError::Read(format!("{}: {e}", path.display())))?;
        match (record.get(0), record.get(1)) {
            (Some(text), Some(label)) if !label.trim().is_empty() => {
                rows.push((text.to_string(), label.trim().to_string()));
            }
            _ => {
                return Err(TrainError::Read(format!(
                    "{}:{}: a row must be `text,label`",
                    path.display(),
                    i + 2
                )));
            }
        }
    }
    if rows.is_empty() {
        return Err(TrainError::Read(format!(
            "{} holds no examples",
            path.display()
        )));
    }
    Ok(rows)
}

/// Assigns examples to folds so each label is spread across them.
fn folds_of(y: &[usize], k: usize, folds: usize) -> Vec<usize> {
    let mut seen = vec![0usize; k];
    y.iter()
        .map(|&c| {
            let f = seen[c] % folds;
            seen[c] += 1;
            f
        })
        .collect()
}

impl Classifier {
    /// Trains on in-scope `examples` (and optional out-of-scope ones) and calibrates on
    /// cross-validated predictions.
    pub fn train(examples: &[(String, String)], options: Options) -> Result<Self, TrainError> {
        Self::train_with_oos(examples, &[], options)
    }

    /// Like [`Classifier::train`], with out-of-scope examples as a "none of these" class.
    pub fn train_with_oos(
        examples: &[(String, String)],
        oos: &[String],
        options: Options,
    ) -> Result<Self, TrainError> {
        if examples.len() < 10 {
            return Err(TrainError::TooFew(format!(
                "{} training examples are too few (at least 10)",
                examples.len()
            )));
        }
        let mut labels: Vec<String> = examples.iter().map(|(_, l)| l.clone()).collect();
        labels.sort();
        labels.dedup();
        if labels.len() < 2 {
            return Err(TrainError::TooFew(
                "training examples need at least two labels".into(),
            ));
        }
        if !oos.is_empty() {
            labels.push(NONE_LABEL.to_string());
        }
        let index: std::collections::HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let mut texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
        let mut y: Vec<usize> = examples
            .iter()
            .map(|(_, l)| index.get(l.as_str()).copied().unwrap_or(0))
            .collect();
        for t in oos {
            texts.push(t);
            y.push(labels.len() - 1);
        }
        let k = labels.len();
        let vectorizer = Vectorizer::fit(texts.iter().copied(), options.min_df.max(1));
        let x: Vec<Sparse> = texts.iter().map(|t| vectorizer.transform(t)).collect();
        let dims = vectorizer.len();
        let folds = options.folds.clamp(2, 10);
        let fold = folds_of(&y, k, folds);

        // Out-of-fold logits, folds trained in parallel.
        let per_fold: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..folds)
                .map(|f| {
                    let (x, y, fold) = (&x, &y, &fold);
                    s.spawn(move || {
                        let (train_x, train_y): (Vec<&Sparse>, Vec<usize>) = (0..x.len())
                            .filter(|&i| fold[i] != f)
                            .map(|i| (&x[i], y[i]))
                            .unzip();
                        let m = Softmax::train(&train_x, &train_y, k, dims, options.fit);
                        (0..x.len())
                            .filter(|&i| fold[i] == f)
                            .map(|i| (i, m.scores(&x[i])))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut held: Vec<Option<Held>> = vec![None; x.len()];
        for (i, logits) in per_fold.into_iter().flatten() {
            held[i] = Some(Held {
                logits,
                truth: y[i],
            });
        }
        let held: Vec<Held> = held.into_iter().flatten().collect();
        let temperature = calibrate::temperature(&held);
        let judged = calibrate::judged(&held, temperature);
        // Precision is measured on in-scope examples: a "none" prediction is never answered.
        let none = (!oos.is_empty()).then_some(k - 1);
        let answered: Vec<(usize, f64, bool)> = judged
            .iter()
            .zip(&held)
            .filter(|(j, h)| Some(h.truth) != none && Some(j.0) != none)
            .map(|(j, _)| *j)
            .collect();
        let in_scope = held.iter().filter(|h| Some(h.truth) != none).count().max(1);
        let top1 = judged
            .iter()
            .zip(&held)
            .filter(|(j, h)| Some(h.truth) != none && j.2)
            .count() as f64
            / in_scope as f64;
        let ece = calibrate::ece(&judged);

        let model = Softmax::train(&x.iter().collect::<Vec<_>>(), &y, k, dims, options.fit);
        let examples = x.len();
        // The training vectors move into their classes (kept for the novelty score); `at[i]`
        // is where example `i` went.
        let mut by_class: Vec<Vec<Sparse>> = vec![Vec::new(); k];
        let mut at = Vec::with_capacity(examples);
        for (xi, &c) in x.into_iter().zip(&y) {
            at.push(by_class[c].len());
            by_class[c].push(xi);
        }
        // The novelty cut: similarity of in-scope examples to the other examples of their
        // class, on a sample; the cut lets `in_scope_pass` of them through.
        let mut sims: Vec<f32> = (0..examples)
            .filter(|&i| Some(y[i]) != none)
            .step_by((examples / 3000).max(1))
            .map(|i| {
                let class = &by_class[y[i]];
                nearest(class, &class[at[i]], true)
            })
            .collect();
        sims.sort_by(f32::total_cmp);
        let cut = ((1.0 - options.in_scope_pass.clamp(0.5, 1.0)) * sims.len() as f64) as usize;
        let min_similarity = sims.get(cut).copied().unwrap_or(0.0);

        let (threshold, coverage, precision, lower) = match options.precision {
            None => (
                Some(0.0),
                1.0,
                top1,
                calibrate::wilson_lower((top1 * in_scope as f64) as usize, in_scope),
            ),
            Some(p) => match calibrate::threshold(&answered, p) {
                Ok(t) => (Some(t.confidence), t.coverage, t.precision, t.lower_bound),
                Err(best) => (None, 0.0, 0.0, best),
            },
        };
        let report = TrainReport {
            examples,
            labels: k - usize::from(none.is_some()),
            features: dims,
            folds,
            temperature: f64::from(temperature),
            top1,
            ece,
            target_precision: options.precision,
            threshold,
            coverage,
            precision,
            precision_lower_bound: lower,
            min_similarity: f64::from(min_similarity),
        };
        Ok(Self {
            labels,
            vectorizer,
            model,
            temperature,
            by_class,
            min_similarity,
            threshold,
            report,
        })
    }

    /// Classifies one text; `abstain` says when the tier should not answer.
    pub fn predict(&self, text: &str) -> Prediction {
        let x = self.vectorizer.transform(text);
        let logits = self.model.scores(&x);
        let mut raw = logits.clone();
        softmax(&mut raw);
        let mut p: Vec<f32> = logits.iter().map(|l| l / self.temperature).collect();
        softmax(&mut p);
        let (best, confidence) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or((0, 0.0), |(i, c)| (i, f64::from(*c)));
        let label = self.labels.get(best).cloned().unwrap_or_default();
        let similarity = self
            .by_class
            .get(best)
            .map_or(0.0, |examples| nearest(examples, &x, false));
        let abstain = if label == NONE_LABEL || similarity < self.min_similarity {
            Some(Abstain::OutOfScope {
                similarity,
                min: self.min_similarity,
            })
        } else {
            match self.threshold {
                None => Some(Abstain::Unsupported),
                Some(t) if confidence < t => Some(Abstain::BelowThreshold { threshold: t }),
                Some(_) => None,
            }
        };
        Prediction {
            label: if label == NONE_LABEL {
                String::new()
            } else {
                label
            },
            confidence,
            raw: raw.get(best).copied().map_or(0.0, f64::from),
            similarity,
            abstain,
        }
    }

    /// The in-scope labels it knows.
    pub fn labels(&self) -> &[String] {
        let n =
            self.labels.len() - usize::from(self.labels.last().is_some_and(|l| l == NONE_LABEL));
        &self.labels[..n]
    }
}

/// The best cosine similarity of `x` to `examples` (skipping an identical vector when
/// `leave_one_out`, so a training example is not compared with itself).
fn nearest(examples: &[Sparse], x: &Sparse, leave_one_out: bool) -> f32 {
    let mut best = 0f32;
    let mut skipped = !leave_one_out;
    for e in examples {
        if !skipped && e == x {
            skipped = true;
            continue;
        }
        best = best.max(dot(e, x));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<(String, String)> {
        let mut e = Vec::new();
        for i in 0..40 {
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
    fn learns_labels_and_answers_what_it_is_sure_of() {
        let c = Classifier::train(
            &examples(),
            Options {
                precision: Some(0.9),
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(c.labels().len(), 3);
        for (text, want) in [
            ("someone stole my card yesterday", "stolen"),
            ("top up 20 euros please", "top_up"),
            ("exchange rate for dollars today?", "rate"),
        ] {
            let p = c.predict(text);
            assert_eq!(p.label, want, "{p:?}");
            assert!(p.confidence > 0.5 && p.confidence <= 1.0, "{p:?}");
        }
        assert!(c.report.threshold.is_some(), "{}", c.report.summary());
        assert!(c.report.top1 > 0.95, "{}", c.report.summary());
    }

    #[test]
    fn a_query_unlike_any_example_is_out_of_scope() {
        let c = Classifier::train(&examples(), Options::default()).unwrap();
        let p = c.predict("please book a table for two at an italian restaurant");
        assert!(
            matches!(p.abstain, Some(Abstain::OutOfScope { .. })),
            "{p:?}"
        );
        assert!(c.predict("my card was stolen yesterday").abstain.is_none());
    }

    #[test]
    fn tiny_data_cannot_support_the_precision_and_escalates_everything() {
        let tiny: Vec<(String, String)> = examples().into_iter().take(12).collect();
        let c = Classifier::train(
            &tiny,
            Options {
                precision: Some(0.98),
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(c.report.threshold, None, "{}", c.report.summary());
        assert!(c.report.summary().contains("NOT supported"));
        let p = c.predict("my card 3 was stolen yesterday");
        assert_eq!(p.abstain, Some(Abstain::Unsupported), "{p:?}");
    }

    #[test]
    fn out_of_scope_examples_train_a_none_class() {
        let oos: Vec<String> = (0..40)
            .map(|i| format!("what is the weather like in city {i} tomorrow"))
            .collect();
        let c = Classifier::train_with_oos(&examples(), &oos, Options::default()).unwrap();
        assert_eq!(c.labels().len(), 3, "the none class is not a label");
        let p = c.predict("what will the weather be tomorrow in paris");
        assert_eq!(p.label, "");
        assert!(
            matches!(p.abstain, Some(Abstain::OutOfScope { .. })),
            "{p:?}"
        );
    }

    #[test]
    fn too_few_examples_are_refused() {
        assert!(Classifier::train(&examples()[..5], Options::default()).is_err());
    }
}
