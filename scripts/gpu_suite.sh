#!/usr/bin/env bash
# The GPU suite: run on the GPU machine from the repository root.
#   bash scripts/gpu_suite.sh            (logs and timing.json go to $OUT, default ./out)
# Installs the wheels the GPU image lacks (.whl/, from ../shared/device/fetch-wheels.sh), runs the GPU
# tests (pytest -m gpu tests/gpu), then the per-strategy timing script, and prints a short table last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

timeout "${TEST_TIMEOUT:-1800}" python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rs -s ${PYTEST_ARGS:-} 2>&1 \
  | tee "$OUT/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}

timeout "${TIMING_TIMEOUT:-1200}" python3 scripts/gpu_timing.py --out "$OUT/timing.json" ${TIMING_ARGS:-} 2>&1 \
  | tee "$OUT/timing.txt"
timing_rc=${PIPESTATUS[0]}

echo
echo "GPU tests: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/pytest_gpu.txt" | tail -n 1) (exit $tests_rc)"
sed -n '/^.* | torch /,$p' "$OUT/timing.txt"
[ "$tests_rc" -eq 0 ] && [ "$timing_rc" -eq 0 ]
