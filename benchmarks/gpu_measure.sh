#!/usr/bin/env bash
# Time GPU kernels and write a points file the GPU calibration fits (under 8 minutes on
# an H100 or H200): GEMMs in bf16 and fp8, SDPA prefill and decode, a streaming copy,
# kernel launch gaps, and a small Llama decode step with and without CUDA graphs.
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
