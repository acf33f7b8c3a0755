//! The attempt loop: a job's calls to its route's candidates, in plan order, one call per
//! endpoint, each failure's class deciding the next move from [`NextMove`]'s table — never a
//! blanket retry. A candidate skipped only for want of rate-limit capacity or behind an open
//! breaker is tried again when it can be; everything else moves on.

use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::Instrument;

use super::{Attempts, Outcome, StageRunner, parse_json, repair_prompt};
use crate::config::{Endpoint, RouteModel};
use crate::envelope::{AttemptClass, DeadLetterReason};
use crate::limit::{Capacity, KeyChoice, KeyId, Permit};
use crate::provider::{ChatRequest, Completion, Message, ProviderError, Role};
use crate::route::Needs;

/// What the attempt loop does after an attempt of a class: the design's failure table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextMove {
    /// An answer came back: validate it (one repair re-ask at the same endpoint if invalid).
    Validate,
    /// Next candidate; the endpoint's breaker counts the failure.
    NextCandidate,
    /// Rest the key for Retry-After (1 s when not given), then the next candidate.
    CoolKeyThenNext,
    /// Take the key out of rotation and call the same endpoint with another key, if any.
    SameEndpointNextKey,
    /// Next candidate with a larger context window than this one.
    LargerContext,
    /// Stop: the route's content-fallback models, else a dead letter.
    ContentFallback,
    /// Next candidate once; a second refusal as invalid dead-letters the job.
    NextCandidateOnce,
}

/// The failure table as data: every class and its next move (row by row in DESIGN.md).
pub const NEXT_MOVES: [(AttemptClass, NextMove); 11] = [
    (AttemptClass::Ok, NextMove::Validate),
    (AttemptClass::Transient, NextMove::NextCandidate),
    (AttemptClass::ProviderBadOutput, NextMove::NextCandidate),
    (AttemptClass::Catalog, NextMove::NextCandidate),
    (AttemptClass::SchemaInvalid, NextMove::NextCandidate),
    (AttemptClass::RateLimited, NextMove::CoolKeyThenNext),
    (AttemptClass::Auth, NextMove::SameEndpointNextKey),
    (AttemptClass::OutOfCredit, NextMove::SameEndpointNextKey),
    (AttemptClass::ContextWindow, NextMove::LargerContext),
    (AttemptClass::ContentPolicy, NextMove::ContentFallback),
    (AttemptClass::InvalidRequest, NextMove::NextCandidateOnce),
];

impl NextMove {
    /// The move for `class`, read from [`NEXT_MOVES`].
    pub fn after(class: AttemptClass) -> NextMove {
        NEXT_MOVES
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(NextMove::NextCandidate, |(_, m)| *m)
    }
}

/// What every attempt of one job in one stage shares.
#[derive(Clone, Copy)]
pub(super) struct JobRequest<'a> {
    pub history: &'a [crate::envelope::EscalationStep],
    pub metadata: &'a std::collections::BTreeMap<String, String>,
    pub messages: &'a [Message],
    pub needs: &'a Needs,
    pub seed: u64,
    pub tokens: u32,
    pub choice: KeyChoice<'a>,
}

/// How trying a list of models ended.
pub(super) enum Attempted {
    /// With a decision.
    Done(Outcome),
    /// A provider refused the content.
    ContentRefused(String),
    /// Every candidate failed or was skipped; notes say why.
    Exhausted(Vec<String>),
    /// Larger than every model's context window (why).
    TooLarge(String),
}

/// What the loop learnt across rounds of one model list.
#[derive(Default)]
struct Learnt {
    /// Endpoints already called (one call per candidate), as (provider, model).
    called: Vec<(String, String)>,
    /// Endpoints refused as invalid requests so far.
    invalid_requests: u32,
    /// Only endpoints with a larger context window than this are worth calling.
    smaller_than: Option<u32>,
    /// Why candidates were left out or skipped.
    notes: Vec<String>,
    /// The soonest a skipped candidate may have capacity again.
    soonest_capacity: Option<Duration>,
}

impl Learnt {
    fn wait_at_most(&mut self, d: Duration) {
        self.soonest_capacity = Some(self.soonest_capacity.map_or(d, |s| s.min(d)));
    }
}

/// How one endpoint's turn ended.
enum Turn {
    /// The loop is over.
    Finished(Attempted),
    /// On to the next candidate.
    Next,
}

impl StageRunner {
    /// Tries `models`' endpoints in route order, each failure class deciding the next move.
    pub(super) async fn attempt_models(
        &self,
        models: &[RouteModel],
        request: &JobRequest<'_>,
        run: &mut Attempts,
    ) -> Attempted {
        let mut learnt = Learnt::default();
        loop {
            let now = Instant::now();
            let health = |e: &Endpoint| self.deps.health.view(&e.provider, &e.model, now);
            let plan = crate::route::plan(
                models,
                &self.stage.route.provider,
                request.needs,
                &health,
                Some(request.seed),
            );
            learnt.notes = plan
                .excluded
                .iter()
                .map(|x| format!("{}:{} left out ({})", x.provider, x.model, x.rule))
                .collect();
            if plan.candidates.is_empty() {
                // Larger than every model's window: no replay can help.
                if let Some(tokens) = request.needs.prompt_tokens
                    && models
                        .iter()
                        .flat_map(|m| &m.endpoints)
                        .all(|e| u64::from(e.context_length) < tokens)
                {
                    let largest = models
                        .iter()
                        .flat_map(|m| &m.endpoints)
                        .map(|e| e.context_length)
                        .max()
                        .unwrap_or(0);
                    return Attempted::TooLarge(format!(
                        "the prompt of ~{tokens} tokens is larger than the context window of every model the stage routes to (the largest: {largest}); no call was made. Split or shorten the job, or route the stage to a model with a larger window"
                    ));
                }
                learnt
                    .notes
                    .push("no endpoint is eligible under the route's rules".into());
                return Attempted::Exhausted(learnt.notes);
            }
            learnt.soonest_capacity = None;
            for candidate in &plan.candidates {
                match self
                    .endpoint_turn(candidate.endpoint, request, run, &mut learnt)
                    .await
                {
                    Turn::Finished(a) => return a,
                    Turn::Next => {}
                }
            }
            match learnt.soonest_capacity {
                // Candidates left untried only for want of rate-limit capacity or behind an open
                // breaker: hold the job (its in-flight slot makes the partitions pause) until they
                // can be tried. A rate limit or an open breaker never dead-letters a job.
                Some(wait) => {
                    tracing::debug!(?wait, "candidates at their rate limit; waiting");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
                None => return Attempted::Exhausted(learnt.notes),
            }
        }
    }

    /// One candidate's turn: skip it, or call it (with another key after an auth failure) and
    /// follow the failure class's next move.
    async fn endpoint_turn(
        &self,
        endpoint: &Endpoint,
        request: &JobRequest<'_>,
        run: &mut Attempts,
        learnt: &mut Learnt,
    ) -> Turn {
        if learnt
            .called
            .iter()
            .any(|(p, m)| *p == endpoint.provider && *m == endpoint.model)
        {
            return Turn::Next;
        }
        if learnt
            .smaller_than
            .is_some_and(|c| endpoint.context_length <= c)
        {
            learnt.notes.push(format!(
                "{} skipped: its context window is not larger",
                endpoint.id()
            ));
            return Turn::Next;
        }
        loop {
            if !self
                .deps
                .health
                .allow(&endpoint.provider, &endpoint.model, Instant::now())
            {
                // Like a rate limit: wait for the breaker's probe rather than give the job up.
                learnt
                    .notes
                    .push(format!("{} skipped: circuit breaker open", endpoint.id()));
                learnt.wait_at_most(Duration::from_millis(500));
                return Turn::Next;
            }
            let permit = match self
                .capacity(endpoint, request.tokens, request.choice)
                .await
            {
                Ok(p) => p,
                Err(Some(wait)) => {
                    learnt.wait_at_most(wait);
                    learnt.notes.push(format!(
                        "{} skipped: no rate-limit capacity within max_wait",
                        endpoint.id()
                    ));
                    return Turn::Next;
                }
                Err(None) => {
                    learnt.notes.push(format!(
                        "{} skipped: every key is out of rotation",
                        endpoint.id()
                    ));
                    return Turn::Next;
                }
            };
            let result = self
                .call(
                    endpoint,
                    request.messages,
                    request.metadata,
                    false,
                    permit,
                    run,
                )
                .await;
            let (e, key) = match result {
                Ok(completion) => {
                    learnt.called.push(endpoint_key(endpoint));
                    return self
                        .validate(endpoint, request, completion, run)
                        .await
                        .map_or(Turn::Next, Turn::Finished);
                }
                Err(failure) => failure,
            };
            let next = NextMove::after(e.class);
            if next != NextMove::SameEndpointNextKey {
                learnt.called.push(endpoint_key(endpoint));
            }
            match next {
                NextMove::Validate | NextMove::NextCandidate => return Turn::Next,
                NextMove::CoolKeyThenNext => {
                    let rest = e.retry_after.unwrap_or(Duration::from_secs(1));
                    self.deps
                        .limits
                        .cool_down(&endpoint.provider, &key, rest, Instant::now());
                    return Turn::Next;
                }
                NextMove::SameEndpointNextKey => {
                    let why = format!("HTTP {}", e.status.unwrap_or(0));
                    self.deps
                        .limits
                        .disable(&endpoint.provider, &key, &why, Instant::now());
                    // The same endpoint again: another key may serve it.
                }
                NextMove::LargerContext => {
                    learnt.smaller_than = Some(endpoint.context_length);
                    return Turn::Next;
                }
                NextMove::ContentFallback => {
                    return Turn::Finished(Attempted::ContentRefused(e.message));
                }
                NextMove::NextCandidateOnce => {
                    learnt.invalid_requests += 1;
                    if learnt.invalid_requests >= 2 {
                        return Turn::Finished(Attempted::Done(Outcome::DeadLetter {
                            reason: DeadLetterReason::InvalidRequest,
                            detail: format!(
                                "two endpoints refused the request as invalid; last: {}",
                                e.message
                            ),
                        }));
                    }
                    return Turn::Next;
                }
            }
        }
    }

    /// Validates an answer; an invalid one gets one repair re-ask at the same endpoint,
    /// carrying the validator's errors. `None`: the repair call itself failed, so the next
    /// candidate is tried afresh.
    async fn validate(
        &self,
        endpoint: &Endpoint,
        request: &JobRequest<'_>,
        completion: Completion,
        run: &mut Attempts,
    ) -> Option<Attempted> {
        let errors = match self.check(&completion.content) {
            Ok(output) => {
                let evidence = self.evidence(&output, &completion, request);
                return Some(Attempted::Done(self.judge(output, &evidence)));
            }
            Err(errors) => errors,
        };
        run.mark_last_schema_invalid(&errors);
        let mut repair = request.messages.to_vec();
        repair.push(Message {
            role: Role::Assistant,
            content: completion.content,
        });
        repair.push(Message {
            role: Role::User,
            content: repair_prompt(&errors),
        });
        let permit = self
            .capacity(endpoint, request.tokens, request.choice)
            .await
            .ok()?;
        let second = self
            .call(endpoint, &repair, request.metadata, true, permit, run)
            .await
            .ok()?;
        Some(Attempted::Done(match self.check(&second.content) {
            Ok(output) => {
                let evidence = self.evidence(&output, &second, request);
                self.judge(output, &evidence)
            }
            Err(errors) => {
                run.mark_last_schema_invalid(&errors);
                let output = parse_json(&second.content).unwrap_or(Value::Null);
                self.schema_invalid(errors, output)
            }
        }))
    }

    /// What the call showed besides the output: the decision's probability from logprobs, and
    /// agreement with the local tier.
    fn evidence(
        &self,
        output: &Value,
        completion: &Completion,
        request: &JobRequest<'_>,
    ) -> crate::gate::Evidence {
        let gate = &self.stage.gate;
        let Some(field) = gate.decision_field().filter(|_| gate.uses_evidence()) else {
            return crate::gate::Evidence::default();
        };
        crate::gate::Evidence {
            logprob: completion
                .logprobs
                .as_deref()
                .and_then(|t| super::evidence::decision_probability(output, field, t)),
            agreement: super::evidence::agreement(
                output,
                field,
                self.local_stage.as_deref(),
                request.history,
            ),
        }
    }

    /// Waits for capacity at `endpoint` up to the route's max_wait. Err(Some(wait)): none
    /// within max_wait, some after `wait`; Err(None): every key is out of rotation.
    async fn capacity(
        &self,
        endpoint: &Endpoint,
        tokens: u32,
        choice: KeyChoice<'_>,
    ) -> Result<Permit, Option<Duration>> {
        let max_wait = self.stage.route.max_wait;
        let mut waited = Duration::ZERO;
        loop {
            match self
                .deps
                .limits
                .try_acquire(&endpoint.provider, tokens, Instant::now(), choice)
            {
                Capacity::Ready(p) => return Ok(p),
                Capacity::Wait(d) if waited + d <= max_wait => {
                    tokio::time::sleep(d).await;
                    crate::telemetry::LimiterWaited {
                        provider: &endpoint.provider,
                        waited: d,
                    }
                    .emit(&self.deps.telemetry);
                    waited += d;
                }
                Capacity::Wait(d) => return Err(Some(d)),
                Capacity::NoKey(_) => return Err(None),
            }
        }
    }

    /// One call: records health, spend, telemetry and the attempt.
    async fn call(
        &self,
        endpoint: &Endpoint,
        messages: &[Message],
        metadata: &std::collections::BTreeMap<String, String>,
        repair: bool,
        permit: Permit,
        run: &mut Attempts,
    ) -> Result<Completion, (ProviderError, KeyId)> {
        let request = ChatRequest {
            model: &endpoint.model_id,
            messages,
            json_schema: Some((&self.schema_name, &self.schema_raw)),
            native_schema: endpoint.json_schema,
            max_tokens: self.stage.route.max_tokens,
            temperature: self.stage.route.temperature,
            timeout: self.stage.route.timeout,
            key: permit.secret.as_ref(),
            metadata: Some(metadata),
            logprobs: self.stage.gate.wants_logprobs(),
            extra: self.stage.extra_body.get(&endpoint.provider),
        };
        let started = Instant::now();
        // One span per attempt, with OpenTelemetry's GenAI attribute names.
        let span = tracing::info_span!(
            "chat",
            gen_ai.operation.name = "chat",
            gen_ai.system = %endpoint.provider,
            gen_ai.request.model = %endpoint.model_id,
            gen_ai.request.max_tokens = self.stage.route.max_tokens,
            gen_ai.response.finish = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            switchyard.repair = repair,
        );
        let result = self
            .deps
            .providers
            .call(&endpoint.provider, &request)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(c) => {
                span.record("gen_ai.usage.input_tokens", c.usage.prompt_tokens);
                span.record("gen_ai.usage.output_tokens", c.usage.completion_tokens);
                span.record("gen_ai.response.finish", "stop");
            }
            Err(e) => {
                span.record("gen_ai.response.finish", e.class.as_str());
            }
        }
        tracing::debug!(parent: &span, ok = result.is_ok(), "attempt ended");
        let elapsed = started.elapsed();
        let (status, class, error, usage) = match &result {
            Ok(c) => {
                self.deps.health.success(
                    &endpoint.provider,
                    &endpoint.model,
                    elapsed,
                    c.usage.completion_tokens,
                );
                self.deps.limits.succeeded(&endpoint.provider, &permit.key);
                (Some(c.status), AttemptClass::Ok, None, c.usage)
            }
            Err(e) => {
                self.deps.health.failure(
                    &endpoint.provider,
                    &endpoint.model,
                    e.class,
                    Instant::now(),
                );
                (e.status, e.class, Some(e.message.clone()), e.usage)
            }
        };
        let cost = super::cost(endpoint, usage);
        crate::telemetry::AttemptEnded {
            pipeline: &self.pipeline,
            stage: &self.stage.name,
            provider: &endpoint.provider,
            model: &endpoint.model,
            class,
            duration: elapsed,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micro_usd: cost.0,
            tenant: run.tenant.as_deref().unwrap_or(""),
        }
        .emit(&self.deps.telemetry);
        if let Some(t) = &run.tenant {
            self.deps.spend.add(t, cost, crate::envelope::now());
        }
        run.push(super::Call {
            endpoint,
            status,
            class,
            error,
            latency_ms: elapsed.as_millis() as u64,
            usage,
            repair,
            key: permit.secret.is_some().then(|| permit.key_label.clone()),
            tenant_key: permit.tenant_key,
        });
        let key = permit.key.clone();
        drop(permit);
        result.map_err(|e| (e, key))
    }
}

fn endpoint_key(e: &Endpoint) -> (String, String) {
    (e.provider.clone(), e.model.clone())
}

#[cfg(test)]
mod tests {
    //! The failure table, row by row, against a scripted fake provider (no network): each
    //! class is returned once by the first endpoint called, and the test checks where the loop
    //! went next and how the job ended.

    use super::*;
    use crate::stage::StageRun;
    use crate::stage::testing::{GOOD, answer, failure, fixture};

    fn accepted(run: &StageRun) -> bool {
        matches!(run.outcome, Outcome::Accept { .. })
    }

    fn dead_letter(run: &StageRun) -> Option<DeadLetterReason> {
        match &run.outcome {
            Outcome::DeadLetter { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn every_class_has_exactly_one_row() {
        for (i, (class, _)) in NEXT_MOVES.iter().enumerate() {
            assert!(
                NEXT_MOVES[i + 1..].iter().all(|(c, _)| c != class),
                "{class:?} twice"
            );
        }
        assert_eq!(NEXT_MOVES.len(), 11, "a new class needs its row");
    }

    #[tokio::test]
    async fn failures_that_move_to_the_next_candidate() {
        let rows = [
            (AttemptClass::Transient, 503),
            (AttemptClass::ProviderBadOutput, 200),
            (AttemptClass::Catalog, 404),
            (AttemptClass::RateLimited, 429),
            (AttemptClass::InvalidRequest, 400),
        ];
        for (class, status) in rows {
            let f = fixture(false);
            let first = f.first_model().await;
            let first_provider = {
                f.run().await;
                let s = f.seen()[0].provider.clone();
                f.seen.lock().unwrap().clear();
                s
            };
            f.script(&first, vec![Err(failure(class, status))]);
            let run = f.run().await;
            let seen = f.seen();
            assert_eq!(NextMove::after(class), row_move(class));
            assert!(accepted(&run), "{class:?}: {:?}", run.outcome);
            assert_eq!(
                seen.len(),
                2,
                "{class:?}: one failure, one success: {seen:?}"
            );
            assert!(
                (seen[1].provider.as_str(), seen[1].model.as_str())
                    != (first_provider.as_str(), first.as_str()),
                "{class:?}: the next call goes to another endpoint: {seen:?}"
            );
            assert_eq!(run.attempts[0].class, class);
            assert_eq!(run.attempts[1].class, AttemptClass::Ok);
        }
    }

    fn row_move(class: AttemptClass) -> NextMove {
        NEXT_MOVES.iter().find(|(c, _)| *c == class).unwrap().1
    }

    #[tokio::test]
    async fn auth_and_credit_failures_retry_the_same_endpoint_with_the_next_key() {
        for (class, status) in [(AttemptClass::Auth, 401), (AttemptClass::OutOfCredit, 402)] {
            let f = fixture(false);
            let first = f.first_model().await;
            f.script(&first, vec![Err(failure(class, status))]);
            let run = f.run().await;
            let seen = f.seen();
            assert!(accepted(&run), "{class:?}: {:?}", run.outcome);
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert_eq!(
                (&seen[0].provider, &seen[0].model),
                (&seen[1].provider, &seen[1].model),
                "{class:?}: same endpoint"
            );
            assert_ne!(seen[0].key, seen[1].key, "{class:?}: another key");
        }
    }

    #[tokio::test]
    async fn a_context_window_failure_skips_to_a_larger_window() {
        let f = fixture(true);
        let first = f.first_model().await;
        f.script(&first, vec![Err(failure(AttemptClass::ContextWindow, 413))]);
        let run = f.run().await;
        let seen = f.seen();
        assert!(accepted(&run), "{:?}", run.outcome);
        assert!(
            f.contexts[&seen[1].model] > f.contexts[&first],
            "the next model has a larger window: {seen:?}"
        );
        // From the largest window, nothing larger is left: the job is exhausted.
        let f = fixture(false);
        let first = f.first_model().await;
        let largest = f.contexts.values().max().copied().unwrap();
        assert_eq!(f.contexts[&first], largest);
        f.script(&first, vec![Err(failure(AttemptClass::ContextWindow, 413))]);
        let run = f.run().await;
        assert_eq!(dead_letter(&run), Some(DeadLetterReason::ProviderExhausted));
        assert!(
            f.seen()
                .iter()
                .all(|s| f.contexts[&s.model] == largest && s.model == first),
            "no smaller window is called: {:?}",
            f.seen()
        );
    }

    #[tokio::test]
    async fn a_content_refusal_without_fallback_dead_letters_after_one_call() {
        let f = fixture(false);
        let first = f.first_model().await;
        f.script(&first, vec![Err(failure(AttemptClass::ContentPolicy, 400))]);
        let run = f.run().await;
        assert_eq!(dead_letter(&run), Some(DeadLetterReason::ContentPolicy));
        assert_eq!(f.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_second_invalid_request_dead_letters() {
        let f = fixture(false);
        let models: Vec<String> = f.contexts.keys().cloned().collect();
        for m in &models {
            f.script(m, vec![Err(failure(AttemptClass::InvalidRequest, 400)); 2]);
        }
        let run = f.run().await;
        assert_eq!(dead_letter(&run), Some(DeadLetterReason::InvalidRequest));
        assert_eq!(f.seen().len(), 2, "{:?}", f.seen());
    }

    #[tokio::test]
    async fn an_invalid_answer_is_repaired_once_at_the_same_endpoint() {
        let f = fixture(false);
        let first = f.first_model().await;
        f.script(&first, vec![Ok(answer("not json")), Ok(answer(GOOD))]);
        let run = f.run().await;
        let seen = f.seen();
        assert!(accepted(&run), "{:?}", run.outcome);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].model, seen[1].model);
        assert_eq!(seen[0].provider, seen[1].provider);
        assert!(!seen[0].repair && seen[1].repair, "{seen:?}");
        assert_eq!(run.attempts[0].class, AttemptClass::SchemaInvalid);
        // Still invalid after the repair: the last stage dead-letters it as schema_invalid.
        let f = fixture(false);
        let first = f.first_model().await;
        f.script(&first, vec![Ok(answer("not json")), Ok(answer("{}"))]);
        let run = f.run().await;
        assert_eq!(dead_letter(&run), Some(DeadLetterReason::SchemaInvalid));
        assert_eq!(f.seen().len(), 2);
    }
}
