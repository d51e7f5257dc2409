#!/usr/bin/env bash
# Issue #14's one device command: install the carried wheels, run benchmarks/gpu.py at the paper's scale, and leave
# its results under $OUT (what the device tool brings back). benchmarks/README.md (`gpu.py`) gives the exact call.
#
#   bash benchmarks/gpu.sh wheels     here, on a machine that reaches PyPI: fill .whl/ (git-ignored) with what the
#                                     GPU machine lacks, for CPython 3.12 on manylinux x86_64
#   bash benchmarks/gpu.sh [ARGS...]  on the GPU machine (its python3: 3.12 with torch, transformers, tiktoken,
#                                     numba ...): install .whl/ into /tmp/site, then gpu.py --size full --device cuda
#                                     ARGS (e.g. --deadline-s 300 or --parts asr)
set -uo pipefail
cd "$(dirname "$0")/.."

# What `import medusa...`, benchmarks/extract.py, benchmarks/train.py and openai-whisper need beyond the GPU
# machine's image (/work/.library/device/KINDS.md lists it): openai-whisper (an sdist: built here into a pure
# wheel) and more-itertools; pydantic and its parts (medusa.config.params); soundfile with cffi and pycparser (it bundles
# libsndfile); soxr (medusa.data.audio resamples with it); typing_extensions new enough for this pydantic.
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing_extensions==4.16.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 more-itertools==11.2.1)
WHISPER=openai-whisper==20250625

if [ "${1:-}" = wheels ]; then
    PY=${PYTHON:-python3}
    [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
    rm -rf .whl && mkdir -p .whl
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${WHEELS[@]}" || exit 1
    "$PY" -m pip wheel -q --no-deps -w .whl "$WHISPER" || exit 1
    ls -l .whl
    du -sh .whl
    exit 0
fi

OUT=${OUT:-}
LOG=${OUT:-/tmp}/gpu.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: run 'bash benchmarks/gpu.sh wheels' first and carry .whl"; exit 2; }
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "pip install of .whl/ failed"; exit 3; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
echo "wheels installed in $(( $(date +%s) - start )) s" | tee "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
python3 benchmarks/gpu.py --size full --device cuda ${OUT:+--results "$OUT"} "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ -n "$OUT" ] && cp reports/benchmarks.md "$OUT/benchmarks.md"
echo "gpu.sh: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
exit "$rc"
