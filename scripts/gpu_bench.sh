#!/usr/bin/env bash
# Benchmarks on the GPU machine, run from the repository root after scripts/gpu_suite.sh installed .whl/:
#   bash scripts/gpu_bench.sh        (results under $OUT/bench, packed into $OUT/bench.tar.gz)
# Each `trtflow bench` compares its configurations side by side in one run and measures the link alongside.
set -uo pipefail
OUT=${OUT:-out}
R="${BENCH_DIR:-/tmp/trtflow-bench}/bench"   # packed into $OUT/bench.tar.gz at the end
rm -rf "$R"; mkdir -p "$R"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
T="python3 -m trtflow.cli"
ITER=${ITER:-30}
step() { echo; echo "== $*"; }

step doctor;                $T doctor --json > "$R/doctor.json"; $T doctor
step build;                 $T build recipes/ 2>&1
step validate;              for r in seg cls tiny; do $T validate recipes/$r.yaml --device cuda --json > "$R/validate_$r.json"; echo "$r rc=$?"; done
step "seed scenario: memory x topology sweep (uint8 in, uint8 mask out)"
$T bench recipes/seg_hd.yaml --sweep memory --warmup 5 --iterations "$ITER" --json --plot "$R/seg_hd.png" > "$R/seg_hd_sweep.json"
$T bench recipes/seg_hd.yaml --sweep memory --warmup 3 --iterations 10 --no-link 2>&1 | tail -n 25
step "naive contract (fp32 in, fp32 scores out)"
$T bench recipes/seg_hd_naive.yaml --sweep memory --warmup 3 --iterations "$ITER" --json --plot "$R/seg_hd_naive.png" > "$R/seg_hd_naive_sweep.json"
step "precision sweep";     $T bench recipes/seg_hd.yaml --sweep precision --warmup 3 --iterations 20 --json > "$R/seg_hd_precision.json"
step "host overhead, tiny model"
$T bench recipes/tiny.yaml --sweep memory --warmup 200 --iterations 2000 --json > "$R/tiny_sweep.json"
step "batch sweep";         $T bench recipes/cls.yaml --sweep batch --warmup 5 --iterations 50 --json --plot "$R/cls_batch.png" > "$R/cls_batch.json"
step "budget gate";         $T bench recipes/seg_hd.yaml --check --iterations 20 --json > "$R/seg_hd_check.json"; echo "check rc=$?"
step soak;                  timeout "${SOAK_TIMEOUT:-300}" python3 scripts/soak.py artifacts/tiny --inferences "${SOAK_N:-100000}" --cycles "${SOAK_CYCLES:-1000}" > "$R/soak.json"; echo "soak rc=$?"; tail -n 5 "$R/soak.json"
python3 scripts/bench_summary.py "$R" | tee "$R/summary.md"
mkdir -p "$OUT"; tar -czf "$OUT/bench.tar.gz" -C "$(dirname "$R")" bench
