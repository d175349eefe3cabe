#!/usr/bin/env bash
# The GPU measurements as one command for a short GPU lease: each part in its own process with
# its own time limit, most important first, bench_build's JSON rewritten after every measured part,
# so a lease that ends early keeps what was measured. Run from the repository root:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh                 # determinism, real, demo
#   OUT=/tmp/gpu PARTS="real build" bash benchmarks/gpu_session.sh
#
# Optional, for a bare machine: wheels of the missing packages in .whl/ (installed to /tmp/site, not
# into the machine's Python), and the demo's trained components in .fmrcache/ (else trained there
# first, about a minute). Budget: the limits below. DEVICE (default cuda), BENCH_ARGS (appended to
# the bench_build.py parts) and DETERMINISM_ARGS (to bench_determinism.py) let the script itself be
# tried on a CPU first, e.g. DEVICE=cpu DETERMINISM_ARGS="--images 16 --budget 5 --real-images 0 --runs 2"
# BENCH_ARGS="--preset cpu --real-images 1 --real-batch-size 1 --real-budget 1 ...". Exit 1 if a part
# failed or ran out of time, 2 for an unknown part.
set -u
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"

# the parts to run, in this order (default: all but build, about 9.5 minutes: fits one 10-minute
# command); every name is checked before any runs
PARTS=${PARTS:-determinism real demo}
for which in $PARTS; do
    case $which in
        determinism | real | demo | build) ;;
        *) echo "unknown part '$which' in PARTS (determinism, real, demo, build)"; exit 2 ;;
    esac
done

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

failed=""
part() {  # part NAME SECONDS SCRIPT ARGS...: one benchmark run, its log and JSON under $OUT
    local name=$1 limit=$2 script=$3 status
    shift 3
    echo "== $name (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" python3 "benchmarks/$script" --device "${DEVICE:-cuda}" "$@" \
        --json "$OUT/bench_gpu_$name.json" > "$OUT/$name.log" 2>&1
    status=$?
    echo "== $name: exit $status"
    tail -n 25 "$OUT/$name.log"
    [ "$status" -eq 0 ] || failed="$failed $name"
}

for which in $PARTS; do
    case $which in
        # whether two identical engine runs give the same bytes, with torch's defaults and as
        # run --deterministic (about 90 s on an H200)
        determinism) part determinism 120 bench_determinism.py ${DETERMINISM_ARGS:-} ;;
        # real-size components (VQGAN f16-16384 at 256 px, CLIP ViT-B/32, ConvNeXt-T), one batch of
        # 32 at the paper's budget of 50: fp32 eager against the per-image loop and the floor, then
        # the modes, the fastest first; memory for N = 8 and 4N = 32 at budget 5 (a step's peak is
        # the same at any budget). 2026-11-27's run took 64 images: 280 s before every_shape_once
        real) part real 280 bench_build.py --only real --modes bf16+compile bf16 fp32+compile --real-images 32 --real-per-image 8 \
                 --real-rss-n 8 --real-rss-budget 5 ${BENCH_ARGS:-} ;;
        # the digits demo: 450 images at budget 50, the engine against the per-image loop, float64 equality, bf16
        demo) part demo 170 bench_build.py --only demo --modes bf16 --demo-per-image 16 --demo-rss-budget 10 ${BENCH_ARGS:-} ;;
        # a whole demo build (450 images, 5 units x 2 configs) against the engine's time alone
        build) part build 50 bench_build.py --only build ${BENCH_ARGS:-} ;;
    esac
done
if [ -n "$failed" ]; then
    echo "failed or cut short:$failed (each wrote what it measured before it stopped)"
    exit 1
fi
