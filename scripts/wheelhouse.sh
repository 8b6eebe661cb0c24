#!/usr/bin/env bash
# Download every wheel needed to install trtflow[EXTRAS] on an offline Linux x86_64 host.
#
#   scripts/wheelhouse.sh [--extras trt,cuda,ort] [--python 3.11] [--glibc 2.28] [--dest wheelhouse]
#                         [--nvidia-index URL | --no-nvidia-index] [--resolve-only]
#
# Run it on a machine with internet access (any OS that has pip), copy the folder to the air-gapped
# server, then:   pip install --no-index --find-links wheelhouse 'trtflow[EXTRAS]'
#
# How: trtflow itself is built into a wheel; then `pip download --only-binary=:all:` resolves
# trtflow[EXTRAS] for the target interpreter and platform (not this machine's). NVIDIA publishes some
# packages on PyPI as source-only shims (tensorrt, tensorrt-cu13, tensorrt-rtx, ...) whose real wheels
# live on NVIDIA's index: with trt or rtx among the extras that index (https://pypi.nvidia.com) is
# searched too, and each shim the resolver still finds no wheel for is built here into a wheel and the
# resolution retried. A built wheel that does not fit the target (CPython version, Linux x86_64) stops
# the script with its name. Run it on Linux x86_64 when trt or rtx is among the extras.
set -euo pipefail

EXTRAS="trt,cuda,ort"
PYVER="3.11"
GLIBC="2.28"
DEST="wheelhouse"
RESOLVE_ONLY=0
NVIDIA_INDEX="https://pypi.nvidia.com"
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) EXTRAS="$2"; shift 2 ;;
    --python) PYVER="$2"; shift 2 ;;
    --glibc) GLIBC="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --resolve-only) RESOLVE_ONLY=1; shift ;;
    --nvidia-index) NVIDIA_INDEX="$2"; shift 2 ;;
    --no-nvidia-index) NVIDIA_INDEX=""; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done

[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "--python wants a version like 3.11, got '$PYVER'" >&2; exit 2; }
[[ "$GLIBC" =~ ^2\.[0-9]+$ ]] || { echo "--glibc wants a version like 2.28, got '$GLIBC'" >&2; exit 2; }
[[ "$EXTRAS" =~ ^[a-z0-9,_-]*$ ]] || { echo "--extras wants a comma list like trt,cuda,ort" >&2; exit 2; }
glibc_minor="${GLIBC#2.}"
[ "$glibc_minor" -ge 17 ] || { echo "--glibc must be 2.17 or newer (manylinux2014)" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Every manylinux tag a host with glibc $GLIBC accepts, newest first.
platforms=()
for ((m = glibc_minor; m >= 17; m--)); do platforms+=(--platform "manylinux_2_${m}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
nodot="${PYVER/./}"
target=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp$nodot"
        "${platforms[@]}" --find-links "$DEST")
if [ -n "$NVIDIA_INDEX" ] && [[ ",$EXTRAS," =~ ,(trt|rtx), ]]; then
  target+=(--extra-index-url "$NVIDIA_INDEX")
fi

echo "== trtflow wheel"
# Built from a copy of the sources: setuptools writes build/ in the tree it builds, where artifacts live.
mkdir -p "$WORK/src"
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md trtflow) | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" "$WORK/src"
version="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$ROOT/pyproject.toml" 2>/dev/null || true)"
wheel="$(ls -t "$DEST"/trtflow-"${version:-}"*-py3-none-any.whl 2>/dev/null | head -n1)"
[ -n "$wheel" ] || { echo "no trtflow wheel was built in $DEST" >&2; exit 1; }
spec="trtflow${EXTRAS:+[$EXTRAS]}"
req="$spec @ file://$wheel"

for round in 1 2 3 4 5 6 7 8; do
  if [ "$RESOLVE_ONLY" = 1 ]; then
    echo "== resolving $spec for CPython $PYVER, manylinux glibc $GLIBC (round $round, nothing downloaded)"
    cmd=("$PYTHON" -m pip install --dry-run --ignore-installed --target "$WORK/target" --report "$DEST/resolution.json"
         "${target[@]}" "$req")
  else
    echo "== downloading $spec for CPython $PYVER, manylinux glibc $GLIBC (round $round)"
    cmd=("$PYTHON" -m pip download --dest "$DEST" "${target[@]}" "$req")
  fi
  set +e
  "${cmd[@]}" 2>&1 | tee "$WORK/log"
  status="${PIPESTATUS[0]}"
  set -e
  [ "$status" = 0 ] && break
  missing="$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$WORK/log" | head -n1)"
  if [ -z "$missing" ]; then
    echo "pip failed (see above). If an NVIDIA package (tensorrt*) is involved, its wheels are on" \
         "${NVIDIA_INDEX:-https://pypi.nvidia.com}, which must be reachable from here." >&2
    exit "$status"
  fi
  if [[ " ${built_already:-} " == *" $missing "* ]]; then
    echo "$missing was built here but still does not fit CPython $PYVER on manylinux glibc $GLIBC" >&2; exit 1
  fi
  built_already="${built_already:-} $missing"
  echo "== $missing has no wheel for the target: building it here from its source distribution"
  rm -rf "$WORK/build"
  "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/build" "$missing"
  for built in "$WORK/build"/*.whl; do
    case "$(basename "$built")" in
      *-none-any.whl|*-py3-none-manylinux*_x86_64.whl|*-cp"$nodot"-*-manylinux*_x86_64.whl) mv "$built" "$DEST/" ;;
      *) echo "$missing builds to $(basename "$built") here, which does not fit CPython $PYVER on Linux x86_64;" \
              "download its wheel for the target by hand into $DEST and run again." >&2
         exit 1 ;;
    esac
  done
  [ "$round" = 8 ] && { echo "gave up after 8 rounds" >&2; exit 1; }
done

if [ "$RESOLVE_ONLY" = 1 ]; then
  "$PYTHON" - "$DEST/resolution.json" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(f"  {item['metadata']['name']}=={item['metadata']['version']}  {item['download_info']['url'].rsplit('/', 1)[-1]}")
EOF
  echo "resolved (written to $DEST/resolution.json); run without --resolve-only to download"
  exit 0
fi

cat > "$DEST/INSTALL.txt" <<EOF
trtflow wheelhouse: $spec for CPython $PYVER on Linux x86_64 (glibc >= $GLIBC), made $(date -u +%Y-%m-%dT%H:%MZ).
On the offline host:
  python$PYVER -m venv .venv && . .venv/bin/activate
  pip install --no-index --find-links $(basename "$DEST") '$spec'
  trtflow doctor
EOF
count="$(ls "$DEST"/*.whl | wc -l)"
size="$(du -sh "$DEST" | cut -f1)"
echo "== $count wheels, $size in $DEST; install offline with:"
echo "   pip install --no-index --find-links $DEST '$spec'"
