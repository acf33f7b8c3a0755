//! `switchyard eval`: labelled jobs through the pipeline and through two baselines — the first
//! stage's prompt on the cheap models only, and on the last stage's (strong) models only — on an
//! embedded broker, reporting accuracy, escalation rate, cost per job and p95 latency for each.
//!
//! Against the simulator, each job carries its gold label in the `x-sim-oracle` metadata entry,
//! which the simulated providers forward as a header (oracle mode): a simulated model answers
//! right with probability equal to its reported, calibrated confidence. That measures the gate
//! and the cascade, not any real model. With real providers (`--real-providers`) the label stays
//! in Switchyard and the models answer for themselves.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use switchyard::config::{ConfidenceSource, Pipeline};
use switchyard::envelope::{Intake, now};
use switchyard::ledger::{AuditedStage, MemoryLedger};
use switchyard_testkit::{Harness, Tally};

/// The metadata entry (and header) that carries the gold answer to the simulator.
pub const ORACLE: &str = "x-sim-oracle";

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Pipeline folder.
    pub pipeline: PathBuf,
    /// Labelled jobs: JSON lines `{"payload": {...}, "label": "..."}`.
    pub data: PathBuf,
    /// The output field the label is compared with.
    pub label_field: String,
    /// Evaluate only the first N jobs.
    pub limit: Option<usize>,
    /// Call the providers configured in providers.yaml instead of the in-process simulator.
    pub real_providers: bool,
    /// Simulator latency scale.
    pub latency_scale: f64,
    /// Simulator seed.
    pub seed: u64,
    /// Progress bar on stderr.
    pub progress: bool,
    /// Simulated models overstate their confidence by this much (0: calibrated).
    pub overconfidence: f64,
    /// Simulated models answer this share of out-of-scope jobs with a confident wrong intent.
    pub oos_confusion: f64,
    /// Override every model stage's gate confidence sources.
    pub confidence_from: Option<Vec<ConfidenceSource>>,
    /// The gold label of out-of-scope jobs (answering anything else for them is wrong).
    pub oos_label: String,
    /// Leave out the local tier.
    pub llm_stages_only: bool,
    /// Set `gate.audit` on every model stage that has a next stage.
    pub audit: Option<f64>,
    /// Set `gate.target_precision` on those stages.
    pub target_precision: Option<f64>,
}

/// One stage's audits in the pipeline run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditSummary {
    /// Audits, agreement, Wilson interval, the threshold at the end and its moves.
    #[serde(flatten)]
    pub figures: AuditedStage,
    /// Threshold at the start.
    pub threshold_start: Option<f64>,
    /// What the audit re-dos cost (included in the pipeline row's cost).
    pub cost_micro_usd: u64,
}

/// One row of the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Row {
    /// Share of jobs whose output label equals the gold label (dead letters count as wrong).
    pub accuracy: f64,
    /// Cost per job, US dollars.
    pub cost_usd: f64,
    /// Share of jobs escalated past their first stage.
    pub escalation_rate: f64,
    /// 95th percentile of job latency (intake to result), ms.
    pub p95_ms: u64,
    /// Jobs evaluated.
    pub jobs: usize,
    /// Jobs dead-lettered.
    pub dead_lettered: usize,
    /// Total cost, micro-dollars.
    pub cost_micro_usd: u64,
}

/// The report; `--json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// The pipeline as configured.
    pub pipeline: Row,
    /// The first stage on its cheap models, nothing escalated.
    pub cheap_only: Row,
    /// The first stage's prompt on the last stage's (strong) models.
    pub strong_only: Row,
    /// Pipeline cost ÷ strong-only cost.
    pub cost_share_of_strong: f64,
    /// Pipeline accuracy ÷ strong-only accuracy.
    pub quality_share_of_strong: f64,
    /// The pipeline's local classifier tier, when it has one.
    pub local_tier: Option<LocalTier>,
    /// Whether the models were simulated with oracle labels.
    pub oracle: bool,
    /// Labelled jobs read.
    pub jobs: usize,
    /// The simulator variant (none with real providers).
    pub simulator: Option<SimulatorVariant>,
    /// Where model stages' gates took their confidence from.
    pub confidence_from: Vec<ConfidenceSource>,
    /// What the pipeline did with out-of-scope jobs (when the data has some).
    pub oos: Option<OosFigures>,
    /// Calibration of each stage's confidence on the jobs it finished, in the pipeline run.
    pub calibration: Vec<StageCalibration>,
    /// Audited stages in the pipeline run (gate.audit).
    pub audits: Vec<AuditSummary>,
}

/// The pipeline's out-of-scope jobs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OosFigures {
    /// Out-of-scope jobs in the data.
    pub queries: usize,
    /// Finished by the local tier (always with some intent: wrong).
    pub taken_by_local: usize,
    /// Passed beyond the first stage.
    pub escalated: usize,
    /// Finished with an answer other than the out-of-scope label.
    pub answered_wrongly: usize,
}

/// How well one stage's confidence matched its accuracy.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StageCalibration {
    /// Stage.
    pub stage: String,
    /// Jobs it finished.
    pub jobs: usize,
    /// Their accuracy.
    pub accuracy: f64,
    /// Their mean confidence.
    pub mean_confidence: f64,
    /// Expected calibration error (15 bins).
    pub ece: f64,
}

/// Out-of-scope figures and per-stage calibration of the pipeline run.
fn oos_and_calibration(
    pipeline: &Pipeline,
    tally: &Tally,
    gold: &[(String, String)],
    label_field: &str,
    oos_label: &str,
) -> (Option<OosFigures>, Vec<StageCalibration>) {
    let local = pipeline
        .stages
        .first()
        .filter(|s| s.local.is_some())
        .map(|s| s.name.to_string());
    let mut oos = OosFigures::default();
    let mut by_stage: BTreeMap<String, Vec<(usize, f64, bool)>> = BTreeMap::new();
    for (id, label) in gold {
        let out_of_scope = label == oos_label;
        oos.queries += usize::from(out_of_scope);
        // A dead-lettered job gave no answer: neither right nor wrong.
        let Some(r) = tally.results.get(id).and_then(|v| v.first()) else {
            continue;
        };
        let answer = r.output.get(label_field).and_then(Value::as_str);
        let right = answer == Some(label.as_str());
        if let Some(c) = r.confidence {
            by_stage
                .entry(r.stage.to_string())
                .or_default()
                .push((0, c, right));
        }
        if out_of_scope {
            if local.as_deref() == Some(r.stage.as_str()) {
                oos.taken_by_local += 1;
            }
            if !r.escalations.is_empty() {
                oos.escalated += 1;
            }
            if !right {
                oos.answered_wrongly += 1;
            }
        }
    }
    let calibration = by_stage
        .into_iter()
        .map(|(stage, j)| {
            let n = j.len().max(1) as f64;
            StageCalibration {
                stage,
                jobs: j.len(),
                accuracy: j.iter().filter(|x| x.2).count() as f64 / n,
                mean_confidence: j.iter().map(|x| x.1).sum::<f64>() / n,
                ece: switchyard::classify::calibrate::ece(&j),
            }
        })
        .collect();
    ((oos.queries > 0).then_some(oos), calibration)
}

/// Which simulator the figures come from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimulatorVariant {
    /// `calibrated` or `overconfident`.
    pub name: String,
    /// How far reported confidence is pushed towards 1.
    pub overconfidence: f64,
    /// Share of out-of-scope jobs answered with a confident wrong intent.
    pub oos_confusion: f64,
}

impl EvalReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>9} {:>13} {:>11} {:>8} {:>6}\n",
            "", "accuracy", "cost/job USD", "escalated", "p95 ms", "dead"
        );
        for (name, r) in [
            ("pipeline", &self.pipeline),
            ("cheap-only", &self.cheap_only),
            ("strong-only", &self.strong_only),
        ] {
            s.push_str(&format!(
                "{:<12} {:>9.3} {:>13.6} {:>10.1}% {:>8} {:>6}\n",
                name,
                r.accuracy,
                r.cost_usd,
                r.escalation_rate * 100.0,
                r.p95_ms,
                r.dead_lettered
            ));
        }
        if let Some(l) = &self.local_tier {
            s.push_str(&format!(
                "local tier: finished {:.1}% of jobs with no paid call, {:.3} accurate on those (classifier top-1 on in-scope jobs: {:.3}, measured, not simulated)\n",
                l.coverage * 100.0,
                l.accuracy,
                l.top1_accuracy
            ));
        }
        if let Some(o) = &self.oos {
            s.push_str(&format!(
                "out of scope: {} jobs; {} taken by the local tier, {} escalated, {} answered wrongly ({:.1}%)\n",
                o.queries,
                o.taken_by_local,
                o.escalated,
                o.answered_wrongly,
                o.answered_wrongly as f64 * 100.0 / o.queries.max(1) as f64
            ));
        }
        for c in &self.calibration {
            s.push_str(&format!(
                "calibration of {}: {} jobs, accuracy {:.3}, mean confidence {:.3}, ECE {:.3}\n",
                c.stage, c.jobs, c.accuracy, c.mean_confidence, c.ece
            ));
        }
        for a in &self.audits {
            let f = &a.figures;
            s.push_str(&format!(
                "audits of {}: {} re-done by the next stage, {:.3} agreed (95% interval {:.3}–{:.3}); threshold {} → {} in {} moves; audits cost ${:.4} (in the pipeline row)\n",
                f.stage,
                f.audited,
                f.precision,
                f.lower,
                f.upper,
                a.threshold_start.map_or("—".into(), |t| format!("{t:.3}")),
                f.threshold.map_or("—".into(), |t| format!("{t:.3}")),
                f.threshold_moves,
                a.cost_micro_usd as f64 / 1e6
            ));
        }
        s.push_str(&format!(
            "pipeline: {:.1}% of strong-only accuracy at {:.1}% of its cost{}\n",
            self.quality_share_of_strong * 100.0,
            self.cost_share_of_strong * 100.0,
            if self.oracle {
                " (simulated models in oracle mode: this measures the gate and the cascade, not a real model)"
            } else {
                ""
            }
        ));
        s
    }
}

/// One labelled job as written.
#[derive(Debug, Deserialize)]
struct Labelled {
    payload: Value,
    label: String,
}

/// Reads labelled jobs; errors name file and line.
pub fn read_labelled(path: &Path) -> anyhow::Result<Vec<(Value, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Labelled = serde_json::from_str(line).map_err(|e| {
            anyhow!(
                "{}:{}: a line must be {{\"payload\": {{...}}, \"label\": \"...\"}}: {e}",
                path.display(),
                i + 1
            )
        })?;
        out.push((l.payload, l.label));
    }
    if out.is_empty() {
        bail!("{} holds no labelled jobs", path.display());
    }
    Ok(out)
}

/// The three variants of a loaded pipeline: as configured, cheap-only (its first model stage
/// alone, local stages left out), strong-only (that stage's prompt on the last stage's models).
pub fn variants(pipeline: &Pipeline) -> anyhow::Result<[Pipeline; 3]> {
    let Some(last) = pipeline.stages.last() else {
        bail!("the pipeline has no stages");
    };
    let Some(first) = pipeline.stages.iter().find(|s| s.local.is_none()) else {
        bail!("the pipeline has no stage that calls models");
    };
    let mut cheap = pipeline.clone();
    let mut only = first.clone();
    // It becomes the pipeline's only stage: it reads intake jobs.
    only.index = 0;
    only.input_topic = pipeline.topics.intake.clone();
    // A single stage is the last: its unsatisfied gate publishes for review, as the
    // pipeline's last stage would.
    only.gate.at_last_stage = last.gate.at_last_stage;
    cheap.stages = vec![only.clone()];
    let mut strong = cheap.clone();
    if let Some(s) = strong.stages.first_mut() {
        s.models = last.models.clone();
        s.route = last.route.clone();
        s.content_fallback = last.content_fallback.clone();
    }
    Ok([pipeline.clone(), cheap, strong])
}

/// The local tier's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LocalTier {
    /// Accuracy of the jobs the local tier finished itself.
    pub accuracy: f64,
    /// Share of jobs it finished itself (no paid call).
    pub coverage: f64,
    /// The classifier's top-1 accuracy over every in-scope job, before its gate.
    pub top1_accuracy: f64,
}

/// The local tier's coverage and accuracy in a pipeline run, and its top-1 accuracy on the
/// texts themselves.
fn local_tier(
    pipeline: &Pipeline,
    tally: &Tally,
    gold: &[(String, String)],
    texts: &[Option<String>],
    label_field: &str,
    oos_label: &str,
) -> Option<LocalTier> {
    let stage = pipeline.stages.first()?;
    let local = stage.local.as_ref()?;
    let mut finished = 0usize;
    let mut right = 0usize;
    for (id, label) in gold {
        if let Some(r) = tally.results.get(id).and_then(|v| v.first())
            && r.stage == stage.name
        {
            finished += 1;
            if r.output.get(label_field).and_then(Value::as_str) == Some(label.as_str()) {
                right += 1;
            }
        }
    }
    // Top-1 over in-scope jobs: an out-of-scope one has no right label to predict.
    let in_scope = gold.iter().filter(|(_, l)| l != oos_label).count();
    let top1 = gold
        .iter()
        .zip(texts)
        .filter(|((_, label), text)| {
            label != oos_label
                && text
                    .as_deref()
                    .is_some_and(|t| local.classifier.predict(t).label == *label)
        })
        .count();
    let n = gold.len().max(1) as f64;
    Some(LocalTier {
        accuracy: if finished > 0 {
            right as f64 / finished as f64
        } else {
            0.0
        },
        coverage: finished as f64 / n,
        top1_accuracy: top1 as f64 / in_scope.max(1) as f64,
    })
}

/// Scores the jobs of one variant read back into `tally`.
pub fn score(
    tally: &Tally,
    jobs: &[(String, String)],
    label_field: &str,
) -> (Row, Vec<(String, Option<String>)>) {
    let mut row = Row {
        jobs: jobs.len(),
        ..Row::default()
    };
    let mut right = 0usize;
    let mut escalated = 0usize;
    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    for (id, gold) in jobs {
        if let Some(r) = tally.results.get(id).and_then(|v| v.first()) {
            let label = r.output.get(label_field).and_then(Value::as_str);
            if label == Some(gold.as_str()) {
                right += 1;
            }
            if !r.escalations.is_empty() {
                escalated += 1;
            }
            row.cost_micro_usd += r.cost_micro_usd.0;
            latencies.push(r.latency_ms);
            answers.push((id.clone(), label.map(str::to_string)));
        } else if let Some(d) = tally.dead.get(id).and_then(|v| v.first()) {
            row.dead_lettered += 1;
            if !d.escalations.is_empty() {
                escalated += 1;
            }
            row.cost_micro_usd += d.attempts.iter().map(|a| a.cost_micro_usd.0).sum::<u64>();
            answers.push((id.clone(), None));
        }
    }
    let n = jobs.len().max(1) as f64;
    row.accuracy = right as f64 / n;
    row.escalation_rate = escalated as f64 / n;
    row.cost_usd = row.cost_micro_usd as f64 / 1e6 / n;
    latencies.sort_unstable();
    row.p95_ms = latencies
        .get((latencies.len() * 95 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    (row, answers)
}

/// Runs one variant on a fresh embedded broker and reads every job back.
pub(crate) async fn run_variant(
    pipeline: Pipeline,
    jobs: &[Intake],
    progress: &ProgressBar,
) -> anyhow::Result<(Tally, Arc<MemoryLedger>)> {
    let ledger = Arc::new(MemoryLedger::default());
    let mut harness = Harness::new(pipeline, 8, &[])?.with_ledger(ledger.clone());
    if !harness
        .start_stages("switchyard-eval", Duration::from_secs(30))
        .await
    {
        tracing::warn!("stages not all assigned after 30 s; producing anyway");
    }
    harness.send_jobs(jobs).await?;
    let expected: HashSet<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
    let tally = harness
        .read_back(&expected, 0, Duration::from_secs(120), |_, _| {
            progress.inc(1)
        })
        .await?;
    // Audit copies finish after the results they shadow: wait until the ledger is quiet.
    let mut last = (usize::MAX, 0);
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = ledger.counts();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    if let Err(e) = harness.stop_stages().await {
        tracing::warn!(error = %format!("{e:#}"), "pipeline stopped with an error");
    }
    let done = tally.finished_count(&expected);
    if done < expected.len() {
        bail!(
            "only {done} of {} jobs came back within two minutes of the last one",
            expected.len()
        );
    }
    Ok((tally, ledger))
}

/// Starts the in-process simulator in oracle mode and points the pipeline's providers at it,
/// forwarding the job's oracle metadata as a header.
pub(crate) async fn oracle_sim(
    pipeline: &mut Pipeline,
    latency_scale: f64,
    seed: Option<u64>,
    overconfidence: f64,
    oos_confusion: f64,
) -> anyhow::Result<llm_sim::SimServer> {
    let mut profile = llm_sim::Profile::default_profile()?
        .with_overconfidence(overconfidence)
        .with_oos_confusion(oos_confusion);
    profile.latency_scale = latency_scale;
    if let Some(seed) = seed {
        profile.seed = seed;
    }
    let sim = llm_sim::spawn(profile, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the in-process llm-sim")?;
    pipeline.point_providers_at(&sim.base_url());
    for p in pipeline.providers.values_mut() {
        p.forward_metadata.push(ORACLE.to_string());
    }
    Ok(sim)
}

/// Runs the evaluation.
pub async fn run_eval(options: EvalOptions) -> anyhow::Result<EvalReport> {
    let mut pipeline = Pipeline::load(&options.pipeline).map_err(|e| anyhow!("{e}"))?;
    if options.llm_stages_only {
        pipeline = pipeline.llm_stages_only();
    }
    let last = pipeline.stages.len().saturating_sub(1);
    for s in pipeline
        .stages
        .iter_mut()
        .take(last)
        .filter(|s| s.local.is_none())
    {
        if let Some(rate) = options.audit {
            s.gate.audit = Some(rate);
            if s.gate.decision_field.is_none() {
                s.gate.decision_field = Some(options.label_field.clone());
            }
        }
        let [lo, hi] = s.gate.bounds();
        if options.target_precision.is_some()
            && s.gate
                .min_confidence
                .is_some_and(|c| (lo..=hi).contains(&c))
        {
            s.gate.target_precision = options.target_precision;
        }
    }
    if let Some(sources) = &options.confidence_from {
        for s in pipeline.stages.iter_mut().filter(|s| s.local.is_none()) {
            s.gate.confidence_from = sources.clone();
        }
    }
    let confidence_from = pipeline
        .stages
        .iter()
        .find(|s| s.local.is_none())
        .map(|s| s.gate.confidence_from.clone())
        .unwrap_or_default();
    let mut labelled = read_labelled(&options.data)?;
    if let Some(n) = options.limit {
        labelled.truncate(n);
    }
    let oracle = !options.real_providers;
    let sim = if oracle {
        Some(
            oracle_sim(
                &mut pipeline,
                options.latency_scale,
                Some(options.seed),
                options.overconfidence,
                options.oos_confusion,
            )
            .await?,
        )
    } else {
        None
    };

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let jobs: Vec<Intake> = labelled
        .iter()
        .enumerate()
        .map(|(i, (payload, label))| {
            let mut metadata = BTreeMap::new();
            if oracle {
                metadata.insert(
                    ORACLE.to_string(),
                    serde_json::json!({ options.label_field.as_str(): label }).to_string(),
                );
            }
            Intake {
                job_id: format!("eval-{}-{i:06}", &run_id[..8]).into(),
                tenant: "eval".into(),
                pipeline: pipeline.name.clone(),
                payload: payload.clone(),
                created_at: now(),
                metadata,
                redrive_count: 0,
            }
        })
        .collect();
    let gold: Vec<(String, String)> = jobs
        .iter()
        .zip(&labelled)
        .map(|(j, (_, l))| (j.job_id.to_string(), l.clone()))
        .collect();

    let bar = if options.progress {
        ProgressBar::with_draw_target(Some(3 * jobs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} jobs (3 variants)  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let texts: Vec<Option<String>> = labelled
        .iter()
        .map(|(p, _)| p.get("text").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut rows = Vec::new();
    let mut local = None;
    let (mut oos, mut calibration, mut audits) = (None, Vec::new(), Vec::new());
    for (name, variant) in ["pipeline", "cheap-only", "strong-only"]
        .into_iter()
        .zip(variants(&pipeline)?)
    {
        bar.set_message(name);
        let started = Instant::now();
        let (tally, ledger) = run_variant(variant.clone(), &jobs, &bar).await?;
        tracing::info!(variant = name, elapsed = ?started.elapsed(), "evaluated");
        let (mut row, _) = score(&tally, &gold, &options.label_field);
        if name == "pipeline" {
            audits = audit_summaries(&variant, &ledger);
            // Audits are paid calls too: the pipeline's cost includes them.
            let audit_cost: u64 = audits.iter().map(|a| a.cost_micro_usd).sum();
            row.cost_micro_usd += audit_cost;
            row.cost_usd += audit_cost as f64 / 1e6 / row.jobs.max(1) as f64;
            local = local_tier(
                &variant,
                &tally,
                &gold,
                &texts,
                &options.label_field,
                &options.oos_label,
            );
            (oos, calibration) = oos_and_calibration(
                &variant,
                &tally,
                &gold,
                &options.label_field,
                &options.oos_label,
            );
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    if let Some(sim) = sim {
        sim.stop().await;
    }
    let [pipeline_row, cheap, strong]: [Row; 3] = rows
        .try_into()
        .map_err(|_| anyhow!("expected three variants"))?;
    Ok(EvalReport {
        cost_share_of_strong: ratio(pipeline_row.cost_usd, strong.cost_usd),
        quality_share_of_strong: ratio(pipeline_row.accuracy, strong.accuracy),
        pipeline: pipeline_row,
        cheap_only: cheap,
        strong_only: strong,
        local_tier: local,
        oracle,
        jobs: jobs.len(),
        oos,
        calibration,
        simulator: oracle.then(|| SimulatorVariant {
            name: match (options.overconfidence > 0.0, options.oos_confusion > 0.0) {
                (false, false) => "calibrated".into(),
                (true, false) => "overconfident".into(),
                (false, true) => "oos-confused".into(),
                (true, true) => "overconfident,oos-confused".into(),
            },
            overconfidence: options.overconfidence,
            oos_confusion: options.oos_confusion,
        }),
        confidence_from,
        audits,
    })
}

/// Each audited stage's audits, as the pipeline run's ledger recorded them.
fn audit_summaries(pipeline: &Pipeline, ledger: &MemoryLedger) -> Vec<AuditSummary> {
    let audits = ledger.audits();
    let moves = ledger.threshold_moves();
    let attempts = ledger.attempts();
    pipeline
        .stages
        .iter()
        .filter(|s| s.gate.audit.is_some())
        .map(|s| {
            let mine: Vec<_> = audits.iter().filter(|a| a.stage == s.name).collect();
            let audited = mine.iter().filter(|a| a.agreed.is_some()).count() as u64;
            let agreed = mine.iter().filter(|a| a.agreed == Some(true)).count() as u64;
            let audited_jobs: HashSet<(&str, &str)> = mine
                .iter()
                .map(|a| (a.job_id.as_str(), a.auditor.as_str()))
                .collect();
            let mut my_moves: Vec<_> = moves
                .iter()
                .filter(|m| m.change.stage == s.name.as_str())
                .collect();
            // Ledger messages of different jobs arrive in no particular order.
            my_moves.sort_by_key(|m| m.at);
            let mut figures =
                AuditedStage::new(pipeline.name.clone(), s.name.to_string(), audited, agreed);
            figures.threshold = my_moves
                .last()
                .map(|m| m.change.to)
                .or(s.gate.min_confidence);
            figures.threshold_moves = my_moves.len() as u64;
            AuditSummary {
                figures,
                threshold_start: s.gate.min_confidence,
                cost_micro_usd: attempts
                    .iter()
                    .filter(|a| {
                        audited_jobs.contains(&(a.job_id.as_str(), a.attempt.stage.as_str()))
                    })
                    .map(|a| a.attempt.cost_micro_usd.0)
                    .sum(),
            }
        })
        .collect()
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::envelope::JobResult;

    fn result(id: &str, category: &str, cost: u64, escalated: bool) -> Vec<u8> {
        let esc = if escalated {
            serde_json::json!([{"from_stage": "triage", "to_stage": "resolve", "reason": "low_confidence", "detail": "", "output": {}}])
        } else {
            serde_json::json!([])
        };
        let v = serde_json::json!({
            "job_id": id, "tenant": "t", "pipeline": "p", "stage": "triage",
            "output": {"category": category}, "confidence": 0.9, "needs_review": false,
            "cost_micro_usd": cost, "escalations": esc, "attempts": [],
            "created_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:01Z",
            "latency_ms": 1000, "metadata": {}
        });
        let _: JobResult = serde_json::from_value(v.clone()).unwrap();
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn accuracy_cost_and_escalation_are_counted_per_job() {
        let mut tally = Tally::default();
        tally.add(false, &result("a", "x", 100, false));
        tally.add(false, &result("b", "y", 300, true));
        tally.add(false, &result("c", "z", 200, false));
        let gold = vec![
            ("a".to_string(), "x".to_string()),
            ("b".to_string(), "y".to_string()),
            ("c".to_string(), "x".to_string()),
            ("d".to_string(), "x".to_string()),
        ];
        let (row, _) = score(&tally, &gold, "category");
        assert_eq!(row.accuracy, 0.5, "a and b right, c wrong, d missing");
        assert_eq!(row.escalation_rate, 0.25);
        assert_eq!(row.cost_micro_usd, 600);
        assert!((row.cost_usd - 600.0 / 1e6 / 4.0).abs() < 1e-12);
        assert_eq!(row.p95_ms, 1000);
    }

    #[test]
    fn labelled_lines_are_read_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        std::fs::write(
            &p,
            "{\"payload\": {\"text\": \"a\"}, \"label\": \"x\"}\n{\"text\": 1}\n",
        )
        .unwrap();
        let err = read_labelled(&p).unwrap_err().to_string();
        assert!(err.contains("l.jsonl:2:"), "{err}");
    }
}
