#!/usr/bin/env bash
# Time GPU kernels and write a points file the GPU calibration fits (under 8 minutes on
# an H100 or H200; 17 to 27 s on an H100 on 2026-12-06, before the profiler and
# elementwise timings were added): GEMMs in bf16 and fp8 (small ones also in F.linear's
# layout), SDPA prefill (forward and backward) and decode, a grouped-query decode three
# ways, a streaming copy, kernel launch gaps, elementwise kernels on contiguous tensors
# and on views, and a small
# Llama decode step (eager, as a CUDA graph, and its kernels from the profiler) and
# prefill; and the memory CUDA gives the process. Kernels are replayed from CUDA graphs
# over rotated operands.
#
#   benchmarks/gpu_measure.sh OUT.points.json [--quick] [--catalog-device NAME]
#   benchmarks/gpu_measure.sh OUT.points.json --device cpu --catalog-device h100-sxm  # dry run
#
# Then fit and use it:
#   xpusim calibrate --backend gpu --points OUT.points.json --out calibration.json
#   (systems[].options.calibration: calibration.json)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python="python3"
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT.points.json [--quick] [--device cuda|cpu] [--catalog-device NAME]" >&2
    exit 2
fi
out="$1"
shift
# the whole run is bounded: a hung kernel must not hold the machine
exec timeout 480 "$python" -m xpusim.plugins.gpu.microbench --out "$out" "$@"
