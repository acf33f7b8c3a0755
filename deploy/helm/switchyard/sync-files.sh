#!/usr/bin/env bash
# Copies the pipeline the chart ships (pipelines/support-triage with the catalog and providers
# it references) into files/pipelines/, where the ConfigMap template reads it (Helm cannot read
# files outside the chart folder). tests/tests/deploy.rs fails when the copies drift.
#
#   deploy/helm/switchyard/sync-files.sh [PIPELINE]      # default: support-triage
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
pipeline="${1:-support-triage}"
dest="$here/files/pipelines"
rm -rf "$dest"
mkdir -p "$dest/$pipeline"
cp "$root/pipelines/catalog.yaml" "$root/pipelines/providers.yaml" "$dest/"
(
  cd "$root/pipelines/$pipeline"
  # Everything the pipeline loads; eval/ data stays out (a ConfigMap holds at most 1 MiB)
  # except the local tier's training CSVs, which go in a ConfigMap of their own
  # (templates/configmap-training.yaml).
  { find . -path ./eval -prune -o -type f -print; find ./eval -name '*.csv' 2>/dev/null; } | while read -r f; do
    mkdir -p "$dest/$pipeline/$(dirname "$f")"
    cp "$f" "$dest/$pipeline/$f"
  done
)
du -sh "$dest"
