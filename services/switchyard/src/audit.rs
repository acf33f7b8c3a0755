//! Audited precision. A stage with `gate.audit: RATE` sends that share of the jobs it accepts
//! to the next stage as well, as a shadow: the next stage re-does the job, its decision is
//! compared with the accepted one, and the comparison is recorded (ledger `audit` record) —
//! the job's result was already published once and nothing of the shadow is published. The
//! agreement rate is the stage's audited precision, shown with a Wilson interval.
//!
//! With `gate.target_precision: P` the [`AuditBook`] also moves the stage's threshold: when the
//! audits of what the current threshold accepts show precision surely below P (the interval's
//! upper end under P), the threshold rises to the lowest audited confidence above which the
//! audits reach P (or to the upper bound); when they show it surely above P, it steps down a
//! little, so the stage takes more once it has earned it. Every move is logged and recorded.
//!
//! The book lives in the process that runs both stages (`switchyard run` runs every stage of a
//! pipeline); each replica learns from the audits it runs itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::GateSpec;

/// Audits kept per stage for moving its threshold.
const WINDOW: usize = 400;
/// Audits needed since the last move before the threshold moves again.
const MIN_AUDITS_PER_MOVE: usize = 30;
/// Audits needed above a candidate threshold to choose it.
const MIN_AUDITS_ABOVE: usize = 20;
/// How far the threshold steps down when the audits show room.
const STEP_DOWN: f64 = 0.02;
/// How far it steps up when no audited confidence shows the target reached: a step, not a
/// jump to the upper bound, so that jobs keep being accepted (and audited) on the way.
const STEP_UP: f64 = 0.05;

/// Whether the job with `seed` (see [`crate::route::job_seed`]) is in a stage's audit sample:
/// decided by the job, so a redelivered job is sampled the same way.
pub fn sampled(seed: u64, rate: f64) -> bool {
    // The seed's top 53 bits as a fraction in [0, 1).
    let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
    u < rate
}

/// The 95% Wilson score interval of `agreed` successes out of `n`; (0, 1) with no data.
pub fn wilson(agreed: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96_f64;
    let n_f = n as f64;
    let p = agreed as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = p + z * z / (2.0 * n_f);
    let spread = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt();
    (
        ((centre - spread) / denom).clamp(0.0, 1.0),
        ((centre + spread) / denom).clamp(0.0, 1.0),
    )
}

/// A stage's audit figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditFigures {
    /// Audits with a comparable answer.
    pub audited: u64,
    /// Of those, how many agreed.
    pub agreed: u64,
    /// The threshold in force when `target_precision` moves it (None: the configured one).
    pub threshold: Option<f64>,
}

impl AuditFigures {
    /// Agreement rate, if anything was audited.
    pub fn precision(&self) -> Option<f64> {
        (self.audited > 0).then(|| self.agreed as f64 / self.audited as f64)
    }

    /// Its 95% Wilson interval.
    pub fn interval(&self) -> (f64, f64) {
        wilson(self.agreed, self.audited)
    }
}

/// A threshold move, for the log and the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMove {
    /// The stage whose threshold moved.
    pub stage: String,
    /// Before.
    pub from: f64,
    /// After.
    pub to: f64,
    /// The precision asked for.
    pub target: f64,
    /// Audits at or above the old threshold that the decision used.
    pub audits: u64,
    /// Of those, how many agreed.
    pub agreed: u64,
    /// Their Wilson interval.
    pub lower: f64,
    /// Their Wilson interval.
    pub upper: f64,
}

#[derive(Debug, Default)]
struct StageBook {
    totals: AuditFigures,
    /// (confidence, agreed) of the latest audits.
    window: VecDeque<(Option<f64>, bool)>,
    since_move: usize,
}

/// Audit figures and moved thresholds of every audited stage in this process.
#[derive(Debug, Default)]
pub struct AuditBook {
    stages: Mutex<HashMap<String, StageBook>>,
    /// The stages this process runs (None: all). A threshold moves only when the process
    /// that re-does the audits also runs the audited stage; otherwise no stage would use the
    /// move, and recording it would say a threshold changed that did not.
    running: Option<Vec<String>>,
}

impl AuditBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StageBook>> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A book for a process that runs only `stages` (see [`AuditBook::moves_here`]).
    pub fn running(stages: Vec<String>) -> AuditBook {
        AuditBook {
            stages: Mutex::default(),
            running: Some(stages),
        }
    }

    /// Whether `stage`'s threshold can move in this process: it runs here.
    pub fn moves_here(&self, stage: &str) -> bool {
        self.running
            .as_ref()
            .is_none_or(|r| r.iter().any(|s| s == stage))
    }

    /// The threshold `target_precision` set for `stage`, if it moved one.
    pub fn threshold(&self, stage: &str) -> Option<f64> {
        self.lock().get(stage).and_then(|b| b.totals.threshold)
    }

    /// The figures of `stage`.
    pub fn figures(&self, stage: &str) -> AuditFigures {
        self.lock().get(stage).map(|b| b.totals).unwrap_or_default()
    }

    /// Records one audit of `stage` (whose gate is `gate`): the confidence it accepted the job
    /// with and whether the next stage agreed. Returns the threshold move it caused, if any.
    pub fn record(
        &self,
        stage: &str,
        gate: &GateSpec,
        confidence: Option<f64>,
        agreed: bool,
    ) -> Option<ThresholdMove> {
        let mut stages = self.lock();
        let book = stages.entry(stage.to_string()).or_default();
        book.totals.audited += 1;
        book.totals.agreed += u64::from(agreed);
        book.window.push_back((confidence, agreed));
        if book.window.len() > WINDOW {
            book.window.pop_front();
        }
        book.since_move += 1;
        let (target, start) = (gate.target_precision?, gate.min_confidence?);
        if book.since_move < MIN_AUDITS_PER_MOVE || !self.moves_here(stage) {
            return None;
        }
        let [lo, hi] = gate.bounds();
        let current = book.totals.threshold.unwrap_or(start);
        let to = next_threshold(&book.window, current, target, lo, hi)?;
        let (audits, agreed) = counts(&book.window, current);
        let (lower, upper) = wilson(agreed, audits);
        book.totals.threshold = Some(to);
        book.since_move = 0;
        Some(ThresholdMove {
            stage: stage.to_string(),
            from: current,
            to,
            target,
            audits,
            agreed,
            lower,
            upper,
        })
    }
}

/// Audits (and agreements) of jobs accepted at `threshold` or above. An audit without a
/// confidence was accepted on rules alone and counts at every threshold.
fn counts(window: &VecDeque<(Option<f64>, bool)>, threshold: f64) -> (u64, u64) {
    window
        .iter()
        .filter(|(c, _)| c.is_none_or(|c| c >= threshold))
        .fold((0, 0), |(n, k), (_, a)| (n + 1, k + u64::from(*a)))
}

/// Where the threshold should go from `current`, if anywhere.
fn next_threshold(
    window: &VecDeque<(Option<f64>, bool)>,
    current: f64,
    target: f64,
    lo: f64,
    hi: f64,
) -> Option<f64> {
    let (n, k) = counts(window, current);
    if (n as usize) < MIN_AUDITS_PER_MOVE {
        return None;
    }
    let (lower, upper) = wilson(k, n);
    let to = if upper < target {
        // Surely short of the target: the lowest audited confidence above which the audits
        // reach it, else a step up.
        let mut candidates: Vec<f64> = window
            .iter()
            .filter_map(|(c, _)| *c)
            .filter(|c| *c > current && *c <= hi)
            .collect();
        candidates.sort_by(f64::total_cmp);
        candidates.dedup();
        candidates
            .into_iter()
            .find(|c| {
                let (n, k) = counts(window, *c);
                n as usize >= MIN_AUDITS_ABOVE && k as f64 >= target * n as f64
            })
            .unwrap_or(current + STEP_UP)
    } else if lower > target {
        (current - STEP_DOWN).max(lo)
    } else {
        return None;
    };
    let to = to.clamp(lo, hi);
    ((to - current).abs() > 1e-9).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(target: f64, start: f64) -> GateSpec {
        GateSpec {
            min_confidence: Some(start),
            audit: Some(1.0),
            target_precision: Some(target),
            ..GateSpec::default()
        }
    }

    #[test]
    fn wilson_intervals_narrow_with_evidence_and_contain_the_rate() {
        let (lo, hi) = wilson(9, 10);
        assert!(lo < 0.9 && hi > 0.9 && lo > 0.5, "{lo} {hi}");
        let (lo2, hi2) = wilson(900, 1000);
        assert!(lo2 > lo && hi2 < hi, "{lo2} {hi2}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        assert!(wilson(0, 50).1 < 0.1);
    }

    #[test]
    fn sampling_takes_about_the_rate_and_is_stable_per_job() {
        let picked = (0..10_000u64)
            .filter(|i| sampled(crate::route::job_seed(&format!("job-{i}")), 0.1))
            .count();
        assert!((800..1200).contains(&picked), "{picked}");
        let seed = crate::route::job_seed("job-7");
        assert_eq!(sampled(seed, 0.3), sampled(seed, 0.3));
        assert!(!sampled(seed, 0.0));
        assert!(sampled(seed, 1.0));
    }

    /// An overconfident stage: every answer says 0.9 or more, but only answers above 0.97 are
    /// right 95% of the time. The audits raise the threshold into that band.
    #[test]
    fn audits_showing_low_precision_raise_the_threshold_toward_the_target() {
        let book = AuditBook::default();
        let g = gate(0.95, 0.7);
        let mut moves = Vec::new();
        for i in 0..300u64 {
            let c = 0.90 + (i % 10) as f64 * 0.01; // 0.90 ..= 0.99
            let agreed = if c > 0.97 { i % 20 != 0 } else { i % 2 == 0 };
            moves.extend(book.record("triage", &g, Some(c), agreed));
        }
        let first = moves.first().expect("the threshold moved");
        assert_eq!(first.from, 0.7);
        assert!(first.upper < 0.95, "{first:?}");
        let t = book.threshold("triage").unwrap();
        assert!(t > 0.97 && t <= 0.99, "threshold {t}: {moves:?}");
        // Above it, the audits now meet the target.
        let f = book.figures("triage");
        assert_eq!(f.audited, 300);
        assert_eq!(f.threshold, Some(t));
    }

    #[test]
    fn audits_showing_room_lower_the_threshold_in_small_steps_within_bounds() {
        let book = AuditBook::default();
        let g = GateSpec {
            threshold_bounds: Some([0.6, 0.99]),
            ..gate(0.9, 0.7)
        };
        for _ in 0..600 {
            book.record("triage", &g, Some(0.95), true);
        }
        let t = book.threshold("triage").unwrap();
        assert!((t - 0.6).abs() < 1e-9, "stops at the lower bound: {t}");
    }

    #[test]
    fn a_process_that_does_not_run_the_audited_stage_counts_but_moves_nothing() {
        let book = AuditBook::running(vec!["resolve".into()]);
        let g = gate(0.95, 0.7);
        for _ in 0..200 {
            assert!(book.record("triage", &g, Some(0.8), false).is_none());
        }
        assert_eq!(book.threshold("triage"), None);
        assert_eq!(book.figures("triage").audited, 200);
        assert!(!book.moves_here("triage") && book.moves_here("resolve"));
    }

    #[test]
    fn without_a_target_the_book_only_counts() {
        let book = AuditBook::default();
        let g = GateSpec {
            target_precision: None,
            ..gate(0.9, 0.7)
        };
        for i in 0..100 {
            assert!(book.record("s", &g, Some(0.8), i % 2 == 0).is_none());
        }
        let f = book.figures("s");
        assert_eq!((f.audited, f.agreed, f.threshold), (100, 50, None));
        assert_eq!(f.precision(), Some(0.5));
    }

    #[test]
    fn precision_inside_the_interval_leaves_the_threshold_alone() {
        let book = AuditBook::default();
        let g = gate(0.9, 0.7);
        for i in 0..200 {
            assert!(book.record("s", &g, Some(0.8), i % 10 != 0).is_none());
        }
        assert_eq!(book.threshold("s"), None);
    }
}
