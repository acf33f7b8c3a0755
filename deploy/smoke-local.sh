#!/usr/bin/env bash
# A local smoke check of what the deployment relies on, without Docker: the embedded broker,
# llm-sim and `switchyard run --metrics-addr --admin-addr` on loopback ports, the sample tickets
# produced, then: /healthz and /readyz answer 200, the admin page answers, and /metrics carries
# the metrics the dashboard and the alerts query. Uses the release binaries (cargo build --release).
#
#   deploy/smoke-local.sh            # BIN=target/release, ports 29092 29089 29464 29080
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
BROKER_PORT="${BROKER_PORT:-29092}"
SIM_PORT="${SIM_PORT:-29089}"
METRICS_PORT="${METRICS_PORT:-29464}"
ADMIN_PORT="${ADMIN_PORT:-29080}"
PIPELINE=pipelines/support-triage
work="$(mktemp -d)"
pids=()
cleanup() {
  # Newest first: the worker drains and commits while the broker is still there.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p="${pids[$i]}"
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

get() { curl -s -o "$work/body" -w '%{http_code}' "$1" || true; }
wait_for() { # URL CODE SECONDS
  for _ in $(seq 1 "$3"); do [ "$(get "$1")" = "$2" ] && return 0; sleep 1; done
  echo "FAIL: $1 did not answer $2 within $3 s" >&2; return 1
}

"$BIN/switchyard" dev-broker --port "$BROKER_PORT" --pipeline "$PIPELINE" >"$work/broker.log" 2>&1 &
pids+=($!)
"$BIN/llm-sim" --port "$SIM_PORT" --latency-scale 0.05 >"$work/sim.log" 2>&1 &
pids+=($!)
sleep 2
export SWITCHYARD_ADMIN_TOKEN="smoke-$(date +%s%N)-admin-token"
SWITCHYARD_PROVIDER_SIMCLOUD_URL="http://127.0.0.1:$SIM_PORT/simcloud/v1" \
SWITCHYARD_PROVIDER_SIMEDGE_URL="http://127.0.0.1:$SIM_PORT/simedge/v1" \
  "$BIN/switchyard" run --pipeline "$PIPELINE" --brokers "127.0.0.1:$BROKER_PORT" \
    --metrics-addr "127.0.0.1:$METRICS_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --log-format json >"$work/run.log" 2>&1 &
pids+=($!)

wait_for "http://127.0.0.1:$METRICS_PORT/healthz" 200 30
wait_for "http://127.0.0.1:$METRICS_PORT/readyz" 200 60
# The admin page refuses anyone without the token, and answers with it.
wait_for "http://127.0.0.1:$ADMIN_PORT/" 401 10
code="$(curl -s -o "$work/body" -w '%{http_code}' -H "Authorization: Bearer $SWITCHYARD_ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/" || true)"
[ "$code" = 200 ] || { echo "FAIL: the admin page with its token answered $code" >&2; exit 1; }
echo "ok: /healthz, /readyz answer 200; the admin page 401 without its token, 200 with it"

"$BIN/switchyard" produce --pipeline "$PIPELINE" --brokers "127.0.0.1:$BROKER_PORT" \
  --file "$PIPELINE/samples/tickets.jsonl" >/dev/null
# Wait until every sample left a stage (sum of switchyard_jobs_total at least the sample count).
want="$(grep -c . "$PIPELINE/samples/tickets.jsonl")"
done_jobs=0
for _ in $(seq 1 90); do
  get "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null
  done_jobs="$(awk '/^switchyard_jobs_total[{ ]/ && /stage="local"/ {s += $NF} END {print s + 0}' "$work/body")"
  [ "${done_jobs%.*}" -ge "$want" ] && break
  sleep 1
done
echo "jobs that left triage according to /metrics: $done_jobs of $want"

# Series every scrape must have after a run (the dashboard's panels); the breaker and limiter
# series appear once a breaker changes state or a job waits for quota.
status=0
for m in switchyard_jobs_total switchyard_stage_duration_seconds_bucket \
         switchyard_provider_request_duration_seconds_bucket switchyard_attempts_total \
         switchyard_in_flight_jobs switchyard_consumer_lag switchyard_tokens_total \
         switchyard_cost_micro_usd_total; do
  if grep -q "^$m[{ ]" "$work/body"; then echo "ok: $m"; else echo "FAIL: /metrics has no $m"; status=1; fi
done
for m in switchyard_breaker_state switchyard_limiter_wait_milliseconds_total; do
  grep -q "^$m[{ ]" "$work/body" && echo "ok: $m" || echo "note: no $m series yet (no event)"
done
[ "${done_jobs%.*}" -ge "$want" ] || { echo "FAIL: not every job was counted"; status=1; }
exit "$status"
