#!/usr/bin/env bash
# Project CI, after the test suite: a real `hwcompress check` of the demo artifact in reference
# mode against the committed baseline (tools/ci/demo-baseline.json, recorded on a 2-core AMD EPYC
# dev machine).  The reference (built-in resnet-20) is measured interleaved with the artifact, so a
# faster or slower CI machine does not by itself fail the check.
# Exit status is check's: 0 pass, 1 latency/memory regression, 2 usage error.
# Rebuild the artifact and baseline with: .venv/bin/python tools/ci/make_demo_artifact.py
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${HWCOMPRESS_CI_OUT:-out/ci}"
mkdir -p "$out_dir"
echo "[ci_check] load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)" >&2
exec .venv/bin/hwcompress check tools/ci/demo-artifact \
    --target x86-cpu \
    --baseline tools/ci/demo-baseline.json \
    --reference resnet-20 \
    --tolerance 10% \
    --junit "$out_dir/latency-check.xml"
