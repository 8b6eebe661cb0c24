#!/usr/bin/env bash
# The GPU suite: run on the GPU machine from the repository root.
#   bash scripts/gpu_suite.sh            (logs and timing.json go to $OUT, default ./out)
#   PARTS="serving corpus" bash scripts/gpu_suite.sh    (only those parts; default: all five)
# Installs the wheels the GPU image lacks (.whl/, from ../shared/device/fetch-wheels.sh), runs the GPU
# tests (pytest -m gpu tests/gpu), then the per-strategy timing script, the serving measurements
# (scripts/gpu_serving.py), the encoding sweep and the model corpus on torch (scripts/gpu_corpus.py), and
# prints short tables last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
PARTS=" ${PARTS:-tests timing serving encoding corpus} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
tests_rc=0; timing_rc=0; serving_rc=0; encoding_rc=0; corpus_rc=0
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# nvImageCodec's nvJPEG runtime (wheel from ../shared/device/fetch-nvimgcodec.sh) is found through this path
if [ -d /tmp/site/nvidia/cu13/lib ]; then export LD_LIBRARY_PATH="/tmp/site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

if part tests; then
timeout "${TEST_TIMEOUT:-1800}" python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rs -s ${PYTEST_ARGS:-} 2>&1 \
  | tee "$OUT/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}
fi

if part timing; then
timeout "${TIMING_TIMEOUT:-1200}" python3 scripts/gpu_timing.py --out "$OUT/timing.json" ${TIMING_ARGS:-} 2>&1 \
  | tee "$OUT/timing.txt"
timing_rc=${PIPESTATUS[0]}
fi

# serving: asyncio overhead, instances/devices sweeps, the HTTP example on the seed scenario, raw and JPEG (~4-5 min);
# needs starlette + uvicorn in .whl/ (bash ../shared/device/fetch-wheels.sh starlette uvicorn anyio)
if part serving; then
timeout "${SERVING_TIMEOUT:-480}" python3 scripts/gpu_serving.py --out "$OUT/serving.json" ${SERVING_ARGS:-} 2>&1 \
  | tee "$OUT/serving.txt"
serving_rc=${PIPESTATUS[0]}
# cut short: the tables of the sections it finished (serving.json is saved after each one)
if [ "$serving_rc" -ne 0 ] && [ -s "$OUT/serving.json" ]; then python3 scripts/gpu_serving.py --render "$OUT/serving.json" >> "$OUT/serving.txt"; fi
fi

# encoded inputs (#13): JPEG bytes -> mask on the seed scenario, configurations (a)-(h) side by side, ~70 s.
# Bounded at ENCODING_TIMEOUT (120 s): each configuration stops after 5 s of requests, none starts after 90 s;
# the rows measured so far are saved after each one, so a sweep cut short still leaves its table here.
if part encoding; then
enc_art="${ENCODING_ART:-/tmp/trtflow-encoding}"
rm -f "$enc_art/.variants/encoding.json"
timeout -k 5 "${ENCODING_TIMEOUT:-120}" python3 -m trtflow.cli bench recipes/seg_hd_jpeg.yaml --sweep encoding \
  --warmup "${ENCODING_WARMUP:-5}" --iterations "${ENCODING_ITER:-30}" --out "$enc_art" --allow-outside \
  --json > "$OUT/encoding.json" 2> "$OUT/encoding.log"
encoding_rc=$?
if ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))["rows"]' "$OUT/encoding.json" 2> /dev/null; then
  if cp "$enc_art/.variants/encoding.json" "$OUT/encoding.json" 2> /dev/null; then
    echo "encoding sweep cut short (exit $encoding_rc): encoding.json holds the rows measured before" | tee -a "$OUT/encoding.log"
  fi
fi
python3 -m trtflow.bench.encoding "$OUT/encoding.json" > "$OUT/encoding.md" 2>> "$OUT/encoding.log" || tail -n 20 "$OUT/encoding.log"
fi

# the model corpus through the torch engine on CUDA (#10): init -> build -> validate at min, max, non-square,
# fp32 and fp16 (~1-3 min); needs `python scripts/corpus.py fetch --gpu --dest .corpus-gpu` carried along
if part corpus; then
timeout "${CORPUS_TIMEOUT:-240}" python3 scripts/gpu_corpus.py --out "$OUT/corpus_gpu.json" ${CORPUS_ARGS:-} 2>&1 \
  | tee "$OUT/corpus_gpu.txt"
corpus_rc=${PIPESTATUS[0]}
fi

echo
echo "parts run: $PARTS"
echo "GPU tests: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/pytest_gpu.txt" 2>/dev/null | tail -n 1) (exit $tests_rc)"
sed -n '/^.* | torch /,$p' "$OUT/timing.txt" 2>/dev/null
sed -n '/^## Serving/,$p' "$OUT/serving.txt" 2>/dev/null
cat "$OUT/encoding.md" 2>/dev/null; echo "(encoding sweep exit $encoding_rc)"
sed -n '/^## Corpus/,$p' "$OUT/corpus_gpu.txt" 2>/dev/null; echo "(corpus exit $corpus_rc: 1 = some model fails on torch, see corpus_gpu.json)"
[ "$tests_rc" -eq 0 ] && [ "$timing_rc" -eq 0 ] && [ "$serving_rc" -eq 0 ] && [ "$encoding_rc" -eq 0 ]
