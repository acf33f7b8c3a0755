//! `switchyard local-eval`: the local tier alone on labelled data, as it would run in a
//! pipeline — trained (and its threshold chosen by cross-validation) on the training split
//! only, then scored on the test split it never saw. Reads banking77-style CSVs (`text,label`)
//! or clinc150's `data_full.json` (150 intents plus out-of-scope queries).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use switchyard::classify::{Classifier, Options, TrainReport, read_examples};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct LocalEvalOptions {
    /// Training CSV (`text,label`), or clinc150's data_full.json.
    pub train: PathBuf,
    /// Test CSV (ignored for clinc150, whose test split is used).
    pub test: Option<PathBuf>,
    /// Precision target for the threshold.
    pub precision: Option<f64>,
    /// clinc150: train with its out-of-scope training queries as a "none of these" class.
    pub oos_examples: bool,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct LocalEvalReport {
    /// What training measured (cross-validated on the training split).
    pub training: TrainReport,
    /// In-scope test queries.
    pub test_queries: usize,
    /// Top-1 accuracy over every in-scope test query.
    pub top1: f64,
    /// Share of in-scope test queries the tier answers.
    pub coverage: f64,
    /// Precision of those answers.
    pub precision: f64,
    /// Out-of-scope test queries (clinc150).
    pub oos_queries: usize,
    /// Share of them the tier answers (each answer is wrong).
    pub oos_taken: f64,
    /// Seconds to train (load included).
    pub train_seconds: f64,
    /// Microseconds per prediction.
    pub predict_us: f64,
}

impl LocalEvalReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut s = format!("training: {}\n", self.training.summary());
        s.push_str(&format!(
            "test: {} in-scope queries: top-1 {:.3}; answered {:.1}% at precision {:.3}\n",
            self.test_queries,
            self.top1,
            self.coverage * 100.0,
            self.precision
        ));
        if self.oos_queries > 0 {
            s.push_str(&format!(
                "out of scope: {} queries, {:.1}% answered (wrongly)\n",
                self.oos_queries,
                self.oos_taken * 100.0
            ));
        }
        s.push_str(&format!(
            "train {:.1} s, {:.0} µs per prediction\n",
            self.train_seconds, self.predict_us
        ));
        s
    }
}

type Split = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<String>,
    Vec<String>,
);

/// clinc150's splits: (train, test, oos_train, oos_test).
fn clinc(path: &PathBuf) -> anyhow::Result<Split> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("clinc150 JSON")?;
    let pairs = |key: &str| -> Vec<(String, String)> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let texts = |key: &str| pairs(key).into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    let (train, test) = (pairs("train"), pairs("test"));
    if train.is_empty() || test.is_empty() {
        bail!(
            "{} has no train/test splits (clinc150's data_full.json?)",
            path.display()
        );
    }
    Ok((train, test, texts("oos_train"), texts("oos_test")))
}

/// A test split: a CSV of `text,label`, or eval's JSON lines (`{"payload": {"text": …},
/// "label": …}`).
fn read_test(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    if path.extension().is_none_or(|e| e != "jsonl") {
        return Ok(read_examples(path)?);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            match (
                v.pointer("/payload/text").and_then(|t| t.as_str()),
                v["label"].as_str(),
            ) {
                (Some(t), Some(label)) => Ok((t.to_string(), label.to_string())),
                _ => bail!(
                    "{}:{}: a line needs payload.text and label",
                    path.display(),
                    i + 1
                ),
            }
        })
        .collect()
}

/// Runs the evaluation.
pub fn run_local_eval(o: &LocalEvalOptions) -> anyhow::Result<LocalEvalReport> {
    let started = Instant::now();
    let (train, test, oos_train, oos_test) = if o.train.extension().is_some_and(|e| e == "json") {
        clinc(&o.train)?
    } else {
        let Some(test) = &o.test else {
            bail!("--test is needed with a CSV training file");
        };
        (
            read_examples(&o.train)?,
            read_test(test)?,
            Vec::new(),
            Vec::new(),
        )
    };
    let options = Options {
        precision: o.precision,
        ..Options::default()
    };
    let oos = if o.oos_examples {
        oos_train
    } else {
        Vec::new()
    };
    let c = Classifier::train_with_oos(&train, &oos, options)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let predicted = Instant::now();
    let (mut right, mut answered, mut answered_right) = (0usize, 0usize, 0usize);
    for (text, label) in &test {
        let p = c.predict(text);
        let ok = p.label == *label;
        right += usize::from(ok);
        if p.abstain.is_none() {
            answered += 1;
            answered_right += usize::from(ok);
        }
    }
    let oos_answered = oos_test
        .iter()
        .filter(|t| c.predict(t).abstain.is_none())
        .count();
    let predictions = (test.len() + oos_test.len()).max(1);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(LocalEvalReport {
        training: c.report.clone(),
        test_queries: test.len(),
        top1: ratio(right, test.len()),
        coverage: ratio(answered, test.len()),
        precision: ratio(answered_right, answered),
        oos_queries: oos_test.len(),
        oos_taken: ratio(oos_answered, oos_test.len()),
        train_seconds,
        predict_us: predicted.elapsed().as_secs_f64() * 1e6 / predictions as f64,
    })
}
