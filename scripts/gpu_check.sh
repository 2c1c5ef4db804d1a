#!/usr/bin/env bash
# Every GPU check of san in one run, each step guarded, results as JSON in one folder.
#
#   scripts/gpu_check.sh --fetch .gpu_wheels                       # here (internet): the wheels the GPU image lacks
#   git --git-dir /path/to/MendelXu-SAN.git archive HEAD | tar -x -C .official   # the official code, a work tree
#   scripts/gpu_check.sh --wheels .gpu_wheels --official .official --out "$OUT"   # on the GPU machine (~8 min)
#   scripts/gpu_check.sh --dry-run --wheels .gpu_wheels --official .official --out /tmp/rehearsal   # CPU, tiny sizes
#
# Steps (a failed or timed-out step is recorded and the next one runs):
#   env       GPU, driver, torch/CUDA versions                        -> env.json
#   install   open_clip, fvcore, detectron2 0.6 (Python) from --wheels, san itself (no network)
#   exact     pytest -m gpu (tests/test_cuda.py: golden v2 stages, fast paths vs references on the device)
#   profile   per stage and per kernel: ViT-B/16 and ViT-L/14, batch 1 and 32, fp32/bf16/fp16 inference
#             (scripts/profile_gpu.py)                                                       -> profile.json
#   fastpaths scripts/benchmark.py: exact/reference/bf16/fp16 paths, images/s, peak memory, and the training
#             step (4 crops of 640, as the official recipe per GPU)                          -> benchmark.json
#   official  scripts/bench_official.py beside MendelXu/SAN, 150 and 847 names              -> official_*.json
# summary.json lists every step with its exit code and seconds. --dry-run runs every step on the CPU at tiny
# sizes, so that the one GPU run does not die on a typo.
set -u
DRY=0; OUT=gpu_check_out; WHEELS=""; OFFICIAL=""; FETCH=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --wheels) WHEELS=$2; shift ;;
        --official) OFFICIAL=$2; shift ;;
        --fetch) FETCH=$2; shift ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NEEDED="open_clip_torch fvcore ftfy regex iopath yacs tabulate termcolor portalocker pytest safetensors huggingface_hub"

if [ -n "$FETCH" ]; then  # run where the package index is reachable; carry the folder to the GPU machine
    mkdir -p "$FETCH"
    $PY -m pip download -q --no-deps -d "$FETCH" $NEEDED &&
        $PY -m pip download -q --no-deps --no-build-isolation -d "$FETCH" "pb1-detectron2==0.6" &&
        $PY -m pip download -q --no-deps -d "$FETCH/official" open_clip_torch==2.16.0 timm==0.9.16 && ls -R "$FETCH"
    exit $?
fi

mkdir -p "$OUT"
: > "$OUT/steps.jsonl"
if [ "$DRY" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, record; never stops the script
    local name=$1 limit=$2; shift 2
    local t0 rc
    t0=$(date +%s.%N)
    echo "gpu_check: $name ..." >&2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %.1f}\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/steps.jsonl"
    echo "gpu_check: $name rc=$rc" >&2
}

gpu_install() {
    if [ -n "$WHEELS" ]; then
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELS
        $PY -c "import open_clip, fvcore" 2>/dev/null || $PY -m pip install -q --no-deps $NEEDED || return 1
    fi
    $PY -m pip install -q --no-deps --no-build-isolation -e . || return 1
    $PY -c "import detectron2" 2>/dev/null || $PY scripts/install_detectron2.py || return 1
    if [ -n "$OFFICIAL" ]; then  # the official code runs on the library versions it was written for
        $PY -m venv --system-site-packages "$OUT/official-env" &&
            "$OUT/official-env/bin/python" -m pip install -q --no-deps --no-index --find-links "$WHEELS/official" \
                open_clip_torch==2.16.0 timm==0.9.16
    fi
}

gpu_env() {
    $PY - "$OUT/env.json" <<'EOF'
import json, subprocess, sys
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
else:
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
EOF
}

export PY OUT WHEELS NEEDED OFFICIAL
export -f gpu_env gpu_install
step env 60 bash -c gpu_env
step install 240 bash -c gpu_install
if [ "$DRY" = 1 ]; then
    step exact 300 env SAN_TEST_DEVICE=cpu TRITON_INTERPRET=1 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py
    step profile 300 $PY scripts/profile_gpu.py --device cpu --models vitb --batches 1 2 --precisions fp32 bf16 \
        --size 64 --repeat 1 --json "$OUT/profile.json"
    step fastpaths 300 $PY scripts/benchmark.py --device cpu --models vitb --sizes 64 --vocab 5 --modes exact reference \
        --batch 2 --sections infer train --train-modes exact bf16 --train-batch 1 --crop 64 --warmup 0 --repeat 1 \
        --json "$OUT/benchmark.json"
else
    step exact 300 env SAN_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py
    step profile 420 $PY scripts/profile_gpu.py --device cuda --models vitb vitl --batches 1 32 \
        --precisions fp32 bf16 fp16 --size 640 --repeat 5 --json "$OUT/profile.json"
    step fastpaths 420 $PY scripts/benchmark.py --device cuda --models vitb vitl --sizes 640 --vocab 150 847 \
        --modes reference exact fused bf16 fp16 --batch 32 --sections infer train --train-modes reference exact bf16 fp16 \
        --train-batch 4 --crop 640 --json "$OUT/benchmark.json"
fi
if [ -n "$OFFICIAL" ] && [ -d "$OFFICIAL" ]; then
    # the rehearsal: 20 names (847 names through the official text tower take minutes on a CPU)
    if [ "$DRY" = 1 ]; then SIZES="64x80"; ROUNDS=1; VOCS="voc_20"; else SIZES="640x852"; ROUNDS=5; VOCS="ade20k_150 ade20k_847"; fi
    for voc in $VOCS; do
        step "official_$voc" 420 $PY scripts/bench_official.py --official "$OFFICIAL" --device "$DEVICE" \
            --official-python "$OUT/official-env/bin/python" \
            --sizes $SIZES --rounds $ROUNDS --vocabulary $voc --json "$OUT/official_$voc.json"
    done
else
    echo '{"step": "official", "rc": -1, "seconds": 0, "note": "no --official checkout given"}' >> "$OUT/steps.jsonl"
fi
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
json.dump({"steps": steps, "failed": [s["step"] for s in steps if s["rc"] != 0]}, open(out / "summary.json", "w"), indent=1)
print(json.dumps(steps))
EOF
