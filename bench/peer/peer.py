#!/usr/bin/env python3
"""The Python peer of Switchyard's support-triage pipeline, for the benchmark (issue 7).

The same job as `switchyard run --pipeline pipelines/support-triage`, written the way a Python
team would: confluent-kafka for the topics, the LiteLLM Router for model calls, fallbacks and
cost, jinja2 for the prompts and jsonschema for validation.

  python peer.py --brokers HOST:PORT --intake TOPIC --results TOPIC --dlq TOPIC \
      --sim-url http://127.0.0.1:PORT --pipeline pipelines/support-triage \
      --catalog pipelines/catalog.yaml --concurrency 200 [--group peer] [--provider-suffix -slow]

It runs until SIGTERM or SIGINT, then stops consuming, finishes the jobs in flight, flushes the
producer, commits and prints one JSON line of counters to stdout.

Delivery is at least once: a job's offset is stored only once its result or dead letter has
been acknowledged by the broker, and only as part of a contiguous run of finished offsets per
partition, so a crash never skips an unfinished job.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# LiteLLM fetches its model price map from the network at import unless told not to; the
# catalog's prices are declared on every deployment below, so the bundled map is enough.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"

import jinja2  # noqa: E402
import jsonschema  # noqa: E402
import litellm  # noqa: E402
import yaml  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from litellm import Router  # noqa: E402

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.set_verbose = False
litellm.drop_params = True
litellm.success_callback = []
litellm.failure_callback = []
litellm.callbacks = []
# The Router logs every failed fallback chain at ERROR; those jobs are dead-lettered with the
# error, so the log would only repeat it once per job.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

log = logging.getLogger("peer")

MAX_POLL_BATCH = 500


# --------------------------------------------------------------------------------------------
# Configuration: the pipeline folder and the model catalog
# --------------------------------------------------------------------------------------------


def parse_duration(text: str | int | float) -> float:
    """'20s', '1500ms', '2m' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass
class Rule:
    field: str
    equals: Any = None
    one_of: list[Any] | None = None

    def matches(self, output: dict[str, Any]) -> bool:
        value = lookup(output, self.field)
        if value is None:
            return False
        return (self.equals is not None and value == self.equals) or (
            self.one_of is not None and value in self.one_of
        )


@dataclass
class Stage:
    name: str
    system: jinja2.Template | None
    user: jinja2.Template
    schema: dict[str, Any]
    schema_text: str
    validator: jsonschema.protocols.Validator
    models: list[str]
    timeout: float
    max_tokens: int
    temperature: float
    min_confidence: float | None
    confidence_field: str
    rules: list[Rule]
    at_last_stage: str  # "review" or "dead_letter"

    def response_format(self) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": self.schema, "strict": True},
        }


def lookup(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def load_stages(pipeline_dir: Path) -> tuple[str, list[Stage]]:
    spec = yaml.safe_load((pipeline_dir / "pipeline.yaml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    stages = []
    for s in spec["stages"]:
        schema = json.loads((pipeline_dir / s["output_schema"]).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        route, gate = s["route"], s.get("gate") or {}
        rules = []
        for r in gate.get("escalate_if") or []:
            rules.append(Rule(field=r["field"], equals=r.get("equals"), one_of=r.get("in") or r.get("one_of")))
        stages.append(
            Stage(
                name=s["name"],
                system=env.from_string((pipeline_dir / s["system_prompt"]).read_text()) if s.get("system_prompt") else None,
                user=env.from_string((pipeline_dir / s["prompt"]).read_text()),
                schema=schema,
                schema_text=json.dumps(schema, separators=(",", ":"), ensure_ascii=False),
                validator=jsonschema.Draft202012Validator(schema),
                models=list(route["models"]),
                timeout=parse_duration(route.get("timeout", "30s")),
                max_tokens=int(route.get("max_tokens", 1024)),
                temperature=float(route.get("temperature", 0)),
                min_confidence=gate.get("min_confidence"),
                confidence_field=gate.get("confidence_field", "confidence"),
                rules=rules,
                at_last_stage=gate.get("at_last_stage", "review"),
            )
        )
    return spec["name"], stages


def build_router(catalog_path: Path, sim_url: str, stages: list[Stage], provider_suffix: str = "") -> Router:
    catalog = yaml.safe_load(catalog_path.read_text())
    model_list = []
    for model, spec in catalog["models"].items():
        for endpoint in spec["endpoints"]:
            provider, price = endpoint["provider"], endpoint["price"]
            model_list.append(
                {
                    "model_name": model,
                    "litellm_params": {
                        "model": f"openai/{model}",
                        "api_base": f"{sim_url.rstrip('/')}/{provider}{provider_suffix}/v1",
                        "api_key": "sk-peer",
                    },
                    "model_info": {
                        "id": f"{provider}:{model}",
                        "input_cost_per_token": price["input"] / 1e6,
                        "output_cost_per_token": price["output"] / 1e6,
                        "max_input_tokens": spec.get("context_length"),
                        "mode": "chat",
                    },
                }
            )
    # Each stage's route: the first model, then the others in order.
    fallbacks = [{st.models[0]: st.models[1:]} for st in stages if len(st.models) > 1]
    return Router(
        model_list=model_list,
        fallbacks=fallbacks,
        num_retries=0,  # one call per candidate, as Switchyard does
        timeout=max(st.timeout for st in stages),
        routing_strategy="simple-shuffle",
    )


# --------------------------------------------------------------------------------------------
# Kafka offsets: a contiguous watermark per partition
# --------------------------------------------------------------------------------------------


class PartitionTracker:
    """Offsets of one assigned partition, in the order they were consumed. An offset becomes
    committable once it and every offset before it are finished."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self.pending: deque[int] = deque()
        self.finished: set[int] = set()
        self.revoked = False

    def started(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> int | None:
        """Marks one offset finished; returns the next offset to commit when the watermark moved."""
        self.finished.add(offset)
        advanced = None
        while self.pending and self.pending[0] in self.finished:
            done = self.pending.popleft()
            self.finished.discard(done)
            advanced = done + 1
        return advanced


# --------------------------------------------------------------------------------------------
# The peer
# --------------------------------------------------------------------------------------------


class StageFailed(Exception):
    """Every candidate model of a stage failed."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(detail)
        self.stage, self.detail = stage, detail


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_answer(text: str) -> Any:
    m = FENCE.match(text)
    if m:
        text = m.group(1)
    return json.loads(text)


@dataclass
class Counters:
    consumed: int = 0
    results: int = 0
    dead_lettered: int = 0
    escalated: int = 0
    calls: int = 0
    delivery_errors: int = 0


@dataclass
class Call:
    """The outcome of one Router call (which may have gone through fallbacks)."""

    text: str | None
    model: str
    calls: int
    cost: float
    error: str | None = None
    exhausted: bool = False  # the Router raised: every model from `model` on failed


@dataclass
class JobState:
    attempts: int = 0
    cost: float = 0.0
    escalations: list[dict[str, Any]] = field(default_factory=list)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pipeline_name, self.stages = load_stages(Path(args.pipeline))
        self.router = build_router(Path(args.catalog), args.sim_url, self.stages, args.provider_suffix)
        intake_schema = json.loads((Path(args.schemas) / "intake.schema.json").read_text())
        self.intake_validator = jsonschema.Draft202012Validator(intake_schema)
        self.counters = Counters()
        self.trackers: dict[tuple[str, int], PartitionTracker] = {}
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

        common = {"bootstrap.servers": args.brokers, "client.id": "switchyard-peer"}
        self.consumer = Consumer(
            {
                **common,
                "group.id": args.group,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 250,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "fetch.wait.max.ms": 100,
                "queued.max.messages.kbytes": 8192,
                "enable.partition.eof": False,
            }
        )
        self.producer = Producer(
            {
                **common,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 1000,
                "message.timeout.ms": 60000,
                "compression.type": "lz4",
            }
        )

    # ---- Kafka plumbing ----------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            old = self.trackers.get((tp.topic, tp.partition))
            if old is not None:
                old.revoked = True
            self.trackers[(tp.topic, tp.partition)] = PartitionTracker(tp.topic, tp.partition)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Jobs still running for these partitions will be redone by the next owner; their
        # offsets must not be stored any more.
        for tp in partitions:
            tracker = self.trackers.pop((tp.topic, tp.partition), None)
            if tracker is not None:
                tracker.revoked = True

    def finished(self, tracker: PartitionTracker, offset: int) -> None:
        if tracker.revoked:
            return
        commit = tracker.finish(offset)
        if commit is not None:
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(tracker.topic, tracker.partition, commit)])
            except KafkaException as e:  # partition lost meanwhile
                log.warning("cannot store offset %s:%d@%d: %s", tracker.topic, tracker.partition, commit, e)

    async def publish(self, topic: str, key: str | None, value: dict[str, Any], tracker: PartitionTracker, offset: int) -> None:
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                # Leave the offset unstored: the watermark stops here and the job is redone
                # after a restart.
                self.counters.delivery_errors += 1
                log.error("delivery to %s failed: %s", topic, err)
                return
            self.finished(tracker, offset)

        while True:
            try:
                self.producer.produce(topic, value=data, key=key.encode() if key else None, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0)
                await asyncio.sleep(0.01)

    # ---- LLM calls ----------------------------------------------------------------------------

    async def complete(self, stage: Stage, model: str, messages: list[dict[str, str]], fallbacks: bool = True) -> Call:
        kwargs: dict[str, Any] = {}
        if not fallbacks:
            kwargs["disable_fallbacks"] = True
        try:
            resp = await self.router.acompletion(
                model=model,
                messages=messages,
                response_format=stage.response_format(),
                max_tokens=stage.max_tokens,
                temperature=stage.temperature,
                timeout=stage.timeout,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - every candidate failed
            n = 1 + (len(stage.models) - 1 - stage.models.index(model) if fallbacks and model in stage.models else 0)
            return Call(text=None, model=model, calls=n, cost=0.0, error=f"{type(e).__name__}: {str(e)[:500]}", exhausted=True)
        hidden = getattr(resp, "_hidden_params", {}) or {}
        headers = hidden.get("additional_headers") or {}
        answered_by = headers.get("x-litellm-model-group") or model
        calls = 1 + int(headers.get("x-litellm-attempted-fallbacks") or 0) + int(headers.get("x-litellm-attempted-retries") or 0)
        cost = hidden.get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=resp)
            except Exception:  # noqa: BLE001
                cost = 0.0
        text = None
        if resp.choices:
            text = resp.choices[0].message.content
        err = None if text else f"no answer from {answered_by} (finish_reason={resp.choices[0].finish_reason if resp.choices else 'none'})"
        return Call(text=text, model=answered_by, calls=calls, cost=float(cost or 0.0), error=err)

    async def run_stage(self, stage: Stage, job: dict[str, Any], state: JobState) -> tuple[dict[str, Any] | None, str]:
        """Runs one stage: returns (output, "") when an answer validated, or (None, errors) when
        the answer stayed invalid after the repair re-ask. Raises StageFailed when no model answered."""
        ctx = {
            "job": job,
            "escalations": state.escalations,
            "last_escalation": state.escalations[-1] if state.escalations else None,
            "output_schema": stage.schema_text,
        }
        messages = []
        if stage.system is not None:
            messages.append({"role": "system", "content": stage.system.render(ctx)})
        messages.append({"role": "user", "content": stage.user.render(ctx)})

        # First answer: the Router walks the stage's models. An answer without content (an
        # in-band error or a content filter) moves on to the next model by hand.
        call = await self.complete(stage, stage.models[0], messages)
        self.account(state, call)
        while call.text is None:
            idx = stage.models.index(call.model) if call.model in stage.models else len(stage.models)
            if call.exhausted or idx + 1 >= len(stage.models):
                raise StageFailed(stage.name, call.error or "no answer")
            call = await self.complete(stage, stage.models[idx + 1], messages)
            self.account(state, call)

        output, errors = self.check(stage, call.text)
        if output is not None:
            return output, ""
        # One repair re-ask to the model that answered, carrying the validator's errors.
        repair = messages + [
            {"role": "assistant", "content": call.text},
            {
                "role": "user",
                "content": "Your answer does not validate against the JSON Schema:\n"
                + errors
                + "\nAnswer again with only the corrected JSON object.",
            },
        ]
        again = await self.complete(stage, call.model, repair, fallbacks=False)
        self.account(state, again)
        if again.text is None:
            return None, errors
        return self.check(stage, again.text)

    def account(self, state: JobState, call: Call) -> None:
        state.attempts += call.calls
        state.cost += call.cost
        self.counters.calls += call.calls

    @staticmethod
    def check(stage: Stage, text: str) -> tuple[dict[str, Any] | None, str]:
        try:
            value = parse_answer(text)
        except ValueError as e:
            return None, f"- the answer is not JSON: {e}"
        if not isinstance(value, dict):
            return None, "- the answer is not a JSON object"
        errs = sorted(stage.validator.iter_errors(value), key=lambda e: list(e.path))
        if not errs:
            return value, ""
        lines = []
        for e in errs[:8]:
            where = "/" + "/".join(str(p) for p in e.absolute_path)
            lines.append(f"- {where}: {e.message[:300]}")
        return None, "\n".join(lines)

    @staticmethod
    def judge(stage: Stage, output: dict[str, Any]) -> tuple[str, str] | None:
        """None when the gate accepts, else (reason, detail)."""
        if stage.min_confidence is not None:
            c = lookup(output, stage.confidence_field)
            if not isinstance(c, (int, float)) or isinstance(c, bool):
                return "low_confidence", f"output has no numeric `{stage.confidence_field}`"
            if c < stage.min_confidence:
                return "low_confidence", f"confidence {c:.2f} is below {stage.min_confidence:.2f}"
        for rule in stage.rules:
            if rule.matches(output):
                value = json.dumps(lookup(output, rule.field))
                if rule.equals is not None and lookup(output, rule.field) == rule.equals:
                    return "rule", f"rule: {rule.field} == {value}"
                return "rule", f"rule: {rule.field} = {value} is in the escalation list"
        return None

    # ---- One job ------------------------------------------------------------------------------

    async def handle(self, msg: Any, tracker: PartitionTracker) -> None:
        offset, raw = msg.offset(), msg.value() or b""
        key = msg.key().decode("utf-8", "replace") if msg.key() else None
        started = time.monotonic()
        source = {"topic": msg.topic(), "partition": msg.partition(), "offset": offset, "key": key}
        try:
            job = json.loads(raw)
        except ValueError as e:
            await self.dead_letter(None, "invalid_intake", "intake", f"not JSON: {e}", raw, source, tracker, offset)
            return
        problems = sorted(self.intake_validator.iter_errors(job), key=lambda e: list(e.path)) if isinstance(job, dict) else []
        if not isinstance(job, dict) or problems:
            detail = "; ".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in problems[:5]) or "not an object"
            await self.dead_letter(job if isinstance(job, dict) else None, "invalid_intake", "intake", detail, raw, source, tracker, offset)
            return
        if job["pipeline"] != self.pipeline_name:
            await self.dead_letter(job, "invalid_intake", "intake", f"job is for pipeline {job['pipeline']!r}", raw, source, tracker, offset)
            return

        state = JobState()
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            try:
                output, errors = await self.run_stage(stage, job, state)
            except StageFailed as e:
                await self.dead_letter(job, "provider_exhausted", stage.name, e.detail, raw, source, tracker, offset, state)
                return
            except jinja2.TemplateError as e:
                await self.dead_letter(job, "invalid_request", stage.name, f"prompt: {e}", raw, source, tracker, offset, state)
                return
            if output is None:
                if last:
                    await self.dead_letter(job, "schema_invalid", stage.name, errors, raw, source, tracker, offset, state)
                    return
                self.escalate(state, stage, self.stages[i + 1], "schema_invalid", errors, None, None)
                continue
            verdict = self.judge(stage, output)
            confidence = lookup(output, stage.confidence_field)
            if verdict is not None and not last:
                self.escalate(state, stage, self.stages[i + 1], verdict[0], verdict[1], output, confidence)
                continue
            if verdict is not None and stage.at_last_stage != "review":
                await self.dead_letter(job, "gate_rejected", stage.name, verdict[1], raw, source, tracker, offset, state)
                return
            result = {
                "job_id": job["job_id"],
                "tenant": job["tenant"],
                "pipeline": job["pipeline"],
                "stage": stage.name,
                "output": output,
                "confidence": confidence if isinstance(confidence, (int, float)) else None,
                "needs_review": verdict is not None,
                "review_reason": verdict[1] if verdict is not None else None,
                "escalated": bool(state.escalations),
                "escalations": state.escalations,
                "attempts": state.attempts,
                "cost_usd": round(state.cost, 10),
                "created_at": job["created_at"],
                "finished_at": now_rfc3339(),
                "latency_ms": int((time.monotonic() - started) * 1000),
            }
            if state.escalations:
                self.counters.escalated += 1
            self.counters.results += 1
            await self.publish(self.args.results, job["job_id"], result, tracker, offset)
            return

    def escalate(self, state: JobState, stage: Stage, to: Stage, reason: str, detail: str, output: Any, confidence: Any) -> None:
        state.escalations.append(
            {
                "from_stage": stage.name,
                "to_stage": to.name,
                "reason": reason,
                "detail": detail,
                "output": output,
                "confidence": confidence if isinstance(confidence, (int, float)) else None,
            }
        )

    async def dead_letter(
        self,
        job: dict[str, Any] | None,
        reason: str,
        stage: str,
        detail: str,
        raw: bytes,
        source: dict[str, Any],
        tracker: PartitionTracker,
        offset: int,
        state: JobState | None = None,
    ) -> None:
        try:
            original = {"encoding": "json", "data": json.loads(raw)}
        except ValueError:
            try:
                original = {"encoding": "utf8", "data": raw.decode("utf-8")}
            except UnicodeDecodeError:
                original = {"encoding": "base64", "data": base64.b64encode(raw).decode()}
        job_id = job.get("job_id") if isinstance(job, dict) and isinstance(job.get("job_id"), str) else None
        letter = {
            "job_id": job_id,
            "tenant": job.get("tenant") if isinstance(job, dict) else None,
            "pipeline": self.pipeline_name,
            "stage": stage,
            "reason": reason,
            "detail": detail,
            "error": detail,
            "original": original,
            "source": source,
            "attempts": state.attempts if state else 0,
            "cost_usd": round(state.cost, 10) if state else 0.0,
            "escalations": state.escalations if state else [],
            "failed_at": now_rfc3339(),
        }
        self.counters.dead_lettered += 1
        await self.publish(self.args.dlq, job_id or source["key"], letter, tracker, offset)

    async def run_job(self, msg: Any, tracker: PartitionTracker) -> None:
        try:
            await self.handle(msg, tracker)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the worker; the job is dead-lettered
            log.exception("job at %s:%d@%d failed", msg.topic(), msg.partition(), msg.offset())
            source = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "key": None}
            await self.dead_letter(None, "invalid_request", "peer", f"{type(e).__name__}: {e}", msg.value() or b"", source, tracker, msg.offset())

    # ---- Main loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.consumer.subscribe([self.args.intake], on_assign=self.on_assign, on_revoke=self.on_revoke)
        limit = self.args.concurrency
        while not self.stopping.is_set():
            self.producer.poll(0)
            free = limit - len(self.tasks)
            if free <= 0:
                # Backpressure: nothing new is pulled until a job finishes.
                await asyncio.wait(self.tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                continue
            msgs = self.consumer.consume(num_messages=min(free, MAX_POLL_BATCH), timeout=0)
            if not msgs:
                await asyncio.sleep(0.005)
                continue
            for msg in msgs:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer: %s", msg.error())
                    continue
                tracker = self.trackers.get((msg.topic(), msg.partition()))
                if tracker is None:  # assignment changed between fetch and now
                    tracker = self.trackers[(msg.topic(), msg.partition())] = PartitionTracker(msg.topic(), msg.partition())
                tracker.started(msg.offset())
                self.counters.consumed += 1
                task = asyncio.create_task(self.run_job(msg, tracker))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(0)

        # Drain: no new messages; finish what is in flight, flush, store and commit.
        deadline = loop.time() + self.args.shutdown_timeout
        while self.tasks and loop.time() < deadline:
            self.producer.poll(0)
            await asyncio.wait(self.tasks, timeout=0.05)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        remaining = self.producer.flush(30)
        if remaining:
            log.error("%d messages were not delivered", remaining)
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                log.error("final commit failed: %s", e)
        self.consumer.close()


def main() -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--intake", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--dlq", required=True)
    p.add_argument("--sim-url", required=True, help="llm-sim root, e.g. http://127.0.0.1:8089")
    p.add_argument(
        "--provider-suffix",
        default="",
        help="appended to each provider's path on the simulator (switchyard bench's slow providers: -slow)",
    )
    p.add_argument("--pipeline", required=True, help="pipeline folder (with pipeline.yaml)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--schemas", default=str(here.parent.parent / "schemas"), help="folder with intake.schema.json")
    p.add_argument("--concurrency", type=int, default=200, help="jobs in flight at most")
    p.add_argument("--group", default="peer")
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    argv = sys.argv[1:]
    # argparse takes "-slow" for an option; accept `--provider-suffix -slow` as well as `=-slow`.
    if "--provider-suffix" in argv[:-1]:
        i = argv.index("--provider-suffix")
        argv[i : i + 2] = [f"--provider-suffix={argv[i + 1]}"]
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    peer = Peer(args)
    asyncio.run(peer.run())
    c = peer.counters
    print(
        json.dumps(
            {
                "consumed": c.consumed,
                "results": c.results,
                "dead_lettered": c.dead_lettered,
                "escalated": c.escalated,
                "calls": c.calls,
                "delivery_errors": c.delivery_errors,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
