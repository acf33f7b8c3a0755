#!/usr/bin/env bash
# Backpressure: with a slow provider and 10,000 jobs queued, a `switchyard run` worker's
# resident memory stays bounded by its in-flight caps, not by the backlog.
# Usage: bench/backpressure.sh [JOBS] [SECONDS]   (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-10000}
seconds=${2:-40}
bin=target/release
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

"$bin/switchyard" dev-broker --port 0 --partitions 8 --pipeline pipelines/support-triage > "$tmp/broker.out" 2>/dev/null &
until grep -q bootstrap= "$tmp/broker.out" 2>/dev/null; do sleep 0.1; done
bootstrap=$(sed -n 's/^bootstrap=//p' "$tmp/broker.out")
# A slow provider: latencies five times those of hosted models (cheap p50 ≈ 1.3 s).
"$bin/llm-sim" --port 0 --latency-scale 5 > "$tmp/sim.out" 2>/dev/null &
until grep -q listening= "$tmp/sim.out" 2>/dev/null; do sleep 0.1; done
sim=$(sed -n 's/^listening=//p' "$tmp/sim.out")

python3 - "$jobs" > "$tmp/jobs.jsonl" <<'PY'
import json, sys
tickets = [json.loads(l) for l in open("pipelines/support-triage/samples/tickets.jsonl")]
for i in range(int(sys.argv[1])):
    print(json.dumps(tickets[i % len(tickets)]))
PY
"$bin/switchyard" produce --pipeline pipelines/support-triage --brokers "$bootstrap" --file "$tmp/jobs.jsonl" >/dev/null

SWITCHYARD_PROVIDER_SIMCLOUD_URL="$sim/simcloud/v1" SWITCHYARD_PROVIDER_SIMEDGE_URL="$sim/simedge/v1" SWITCHYARD_LOG=error \
  "$bin/switchyard" run --pipeline pipelines/support-triage --brokers "$bootstrap" &
pid=$!
peak=0
for _ in $(seq 1 $((seconds * 2))); do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 0.5
done
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
stats=$(curl -s "$sim/sim/stats"); done_calls=$(echo "$stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"requests\"])"); peak_conc=$(echo "$stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"peak_concurrency\"])")
kill -TERM $pid; wait $pid || true
printf '{"queued_jobs": %d, "seconds": %d, "sim_requests": %d, "sim_peak_concurrency": %d, "peak_rss_mb": %.1f, "max_in_flight_per_stage": 512}\n' \
  "$jobs" "$seconds" "$done_calls" "$peak_conc" "$(echo "$hwm / 1024" | bc -l)"
