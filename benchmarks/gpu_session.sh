#!/usr/bin/env bash
# The issue-12 GPU measurements as one command for a short GPU lease: each part in its own process
# with its own time limit, most important first, its JSON rewritten after every measured part, so
# a lease that ends early keeps what was measured. Run from the repository root:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# Optional, for a bare machine: wheels of the missing packages in .whl/ (installed to /tmp/site, not
# into the machine's Python), and the demo's trained components in .fmrcache/ (else trained there
# first, about a minute). Budget: about 8.7 minutes in all (the limits below). DEVICE (default cuda)
# and BENCH_ARGS (appended to every part) let the script itself be tried on a CPU first, e.g.
# DEVICE=cpu BENCH_ARGS="--preset cpu --real-images 1 --real-batch-size 1 --real-budget 1 ...".
set -u
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
fi
[ -d .fmrcache ] && export FMR_BUILDER_CACHE="$PWD/.fmrcache"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c 'import torch, timm, open_clip; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__, "open_clip", open_clip.__version__)'
    nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

part() {  # part NAME SECONDS ARGS...: one bench_build.py run, its log and JSON under $OUT
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" python3 benchmarks/bench_build.py --device "${DEVICE:-cuda}" "$@" ${BENCH_ARGS:-} \
        --json "$OUT/bench_build_gpu_$name.json" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $?"
    tail -n 25 "$OUT/$name.log"
}

# real-size components (VQGAN f16-16384 at 256 px, CLIP ViT-B/32, ConvNeXt-T), 64 images at the
# paper's budget of 50: fp32 eager against the per-image loop and the floor, then the modes, the
# fastest first; memory for N = 8 and 4N = 32 at budget 5 (a step's peak is the same at any budget)
part real 300 --only real --modes bf16+compile bf16 fp32+compile --real-per-image 8 --real-rss-n 8 --real-rss-budget 5
# the digits demo: 450 images at budget 50, the engine against the per-image loop, float64 equality, bf16
part demo 170 --only demo --modes bf16 --demo-per-image 16 --demo-rss-budget 10
# a whole demo build (450 images, 5 units x 2 configs) against the engine's time alone
part build 50 --only build
