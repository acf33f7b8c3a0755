#!/usr/bin/env bash
# Switchyard against the Python peer (confluent-kafka + LiteLLM Router), in one run on one
# embedded broker and one llm-sim: overhead mode (simulator latency 0) and latency mode
# (p50 800 ms lognormal, 2,000 jobs in flight). Prints a table and, last, one JSON line.
#
# Usage: bench/run.sh [--quick] [more `switchyard bench` options]
#   --quick   20,000 Switchyard jobs per mode and 2,000 peer jobs (about 3 minutes here);
#             without it 100,000 / 60,000 and 6,000.
# The peer is installed from PyPI into bench/.venv on first use (pinned in
# bench/peer/requirements.txt); nothing is downloaded while the benchmark runs.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import litellm, confluent_kafka, jsonschema, jinja2, yaml" 2>/dev/null; then
  echo "bench: installing the Python peer into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/peer/requirements.txt
fi

cargo build --release --locked -p switchyard-cli -p llm-sim >&2
# Many connections in flight in latency mode (2,000 per side).
ulimit -n 65536 2>/dev/null || true
exec target/release/switchyard bench --peer "$venv/bin/python bench/peer/peer.py" "$@"
