#!/usr/bin/env bash
# Every GPU figure vedit needs, in one call: bench/gpu/check.sh [--device cpu|cuda] [--out DIR] [--wheels DIR]
#
# Installs the carried wheels (bench/gpu/wheels.sh) into a temporary folder, puts vedit's packages from this
# checkout beside them, then runs each part under its own time limit, so one slow part cannot take the others with
# it and a part after a failure still runs: the CUDA-only tests; `vedit bench edit` of 40 frames eager and
# compiled; vedit's plain pass against a plain diffusers UNet call; the nearest-neighbour search; the UNet passes
# per engine; the edit at 120 frames with its device memory; a long clip's memory. Writes OUT/check.json (every
# part's status, time and results document), OUT/summary.md (their tables) and OUT/log.txt (all output), rewritten
# after each part. --device cpu runs the same parts with the tiny model at tiny sizes, in a few minutes on 2 cores.
#
# The limits (seconds) on CUDA add up to 525, inside the 9 minutes one call may take with the machine's start
# left out. They are estimates for one H200 (none has run this yet), from the work each part does:
#   tests       45  tiny models; the compile test's inductor build of one small pass is most of it
#   edit-40     90  SD 2.1 at 512x512 fp16: 2000 inversion + 6750 denoising UNet forwards of 0.8 TFLOP each, about
#                   7 PFLOP, 15-30 s per edit at 250-450 TFLOP/s; one warm-up and one timed edit, the model drawn on
#                   the GPU in seconds, FLOPs counted on fake tensors
#   calls       35  two processes, each loading the model and making 2 + 5 calls of each path at batch 8
#   nn          25  one search per backend and level, 5 rounds (faiss-cpu's on the host, up to 0.1 s at seq 4096),
#                   after the imports of torch, vedit and faiss
#   edit-40-compile
#              130  inductor builds three passes of SD 2.1 (a minute or more for the three on 16 cores, in the
#                   warm-up), then one timed edit
#   unet        40  the passes once more at batch 8, eager and compiled (the plain and propagation passes at the
#                   compiled edit's shapes, which inductor's on-disk cache may spare a second build)
#   edit-120   100  the same edit at 120 frames: 21 PFLOP, 50-85 s, one timed edit and no warm-up
#   memory      60  1000 frames of 512x512 with one step: 1000 PNG frames drawn, read and written (10-20 ms each),
#                   the VAE over each twice, 4375 UNet forwards (3.5 PFLOP)
set -uo pipefail

device=cuda
out=${OUT:-}
wheels=""
usage() { echo "usage: bench/gpu/check.sh [--device cpu|cuda] [--out DIR] [--wheels DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:-}; shift 2 || usage ;;
    --out) out=${2:-}; shift 2 || usage ;;
    --wheels) wheels=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
case "$device" in cpu | cuda) ;; *) echo "check.sh: --device takes cpu or cuda, not '$device'" >&2; exit 2 ;; esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
[ -n "$out" ] || out=$repo/gpu-check  # ignored by git, so it never travels with the checkout
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/vedit-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/site" "$work/parts"
rm -f "$out/check.json" "$out/summary.md" "$out/log.txt"
exec > >(tee -a "$out/log.txt") 2>&1

if [ "$device" = cuda ]; then
  model=random:sd21 size=512x512 frames=40 long=120 steps=50 dtype=fp16 warmup=1
  memory_frames=1000 seqs=4096,1024,256,64 calls_batch=8 calls_repeats=5 unet_batch=8 nn_repeats=5
  limits=(45 90 35 25 130 40 100 60)
else
  model=tiny size=64x64 frames=4 long=6 steps=1 dtype=fp32 warmup=0
  memory_frames=8 seqs=64 calls_batch=2 calls_repeats=1 unet_batch=2 nn_repeats=1
  limits=(120 120 120 60 120 120 120 120)
  # Here the parts are checked, not inductor (tests/engines and tests/e2e compile on the CPU): torch.compile runs
  # the passes as they are, so the compile parts take seconds on 2 cores instead of many minutes of C++ builds.
  export TORCHDYNAMO_DISABLE=1
fi

# The wheels the machine lacks, then vedit's own packages from this checkout, by pyproject.toml's package-dir
# (vedit_plugins is plugins/, ...): links, so what runs is the checkout as it is, with nothing built.
if [ -n "$wheels" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
    "$wheels"/*.whl || echo "check.sh: the wheels in $wheels did not install; the parts that need them will fail"
fi
"$python" - "$repo" "$work/site" <<'PY'
import pathlib, sys, tomllib

repo, site = (pathlib.Path(p) for p in sys.argv[1:])
folders = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in folders.items():
    (site / package).symlink_to(repo / folder, target_is_directory=True)
PY
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 VEDIT_CACHE_DIR="$work/cache"
cd "$repo" || exit 1

cat > "$work/settings.json" <<JSON
{"device": "$device", "model": "$model", "size": "$size", "frames": $frames, "steps": $steps, "dtype": "$dtype",
 "budget_s": $(IFS=+; echo $((${limits[*]}))), "started": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
JSON

"$python" - "$device" > "$work/parts/environment.json" <<'PY' || echo '{}' > "$work/parts/environment.json"
import json, sys
from importlib import metadata

import torch

found = {"device": sys.argv[1], "torch": torch.__version__, "cuda": torch.version.cuda,
         "python": sys.version.split()[0]}
if torch.cuda.is_available():
    found["gpu"] = torch.cuda.get_device_name(0)
    found["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
for name in ("diffusers", "transformers", "onnxruntime", "faiss-cpu", "triton"):
    try:
        found[name.removesuffix("-cpu")] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found[name.removesuffix("-cpu")] = None
try:
    import onnxruntime

    found["onnxruntime_providers"] = onnxruntime.get_available_providers()
except ImportError:
    found["onnxruntime_providers"] = []
print(json.dumps(found))
PY
cat "$work/parts/environment.json"
engines=compile
if grep -q CUDAExecutionProvider "$work/parts/environment.json" && [ "$device" = cuda ]; then
  engines=compile,onnxruntime
fi

part() {  # part NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds, note how it ended, gather the results
  local name=$1 limit=$2 start rc ms
  shift 2
  echo "== $name (at most $limit s): $*"
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/parts/$name.log"
  rc=${PIPESTATUS[0]}
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$limit" $((ms / 1000)) $((ms % 1000)) "$rc" >> "$work/status.tsv"
  echo "== $name: exit $rc"
  "$python" "$repo/bench/gpu/summary.py" "$work" "$out"
}
vedit=("$python" -m vedit.cli)
edit=("${vedit[@]}" bench edit --model "$model" --size "$size" --steps "$steps" --inversion-steps "$steps" --dtype "$dtype"
      --device "$device" --clip-format png)

part tests "${limits[0]}" "$python" -m pytest tests/e2e/test_cuda.py -q -p no:cacheprovider \
  --junitxml="$work/parts/tests.xml"
part edit-40 "${limits[1]}" "${edit[@]}" --frames "$frames" --engine eager --warmup "$warmup" --repeats 1 \
  --save "$work/parts/edit-40.json"
part calls "${limits[2]}" "${vedit[@]}" bench calls --model "$model" --size "$size" --batch "$calls_batch" \
  --repeats "$calls_repeats" --device "$device" --dtype "$dtype" --save "$work/parts/calls.json"
part nn "${limits[3]}" "${vedit[@]}" bench nn --seqs "$seqs" --device "$device" --dtype "$dtype" --repeats "$nn_repeats" \
  --save "$work/parts/nn.json"
part edit-40-compile "${limits[4]}" "${edit[@]}" --frames "$frames" --engine compile --warmup 1 --repeats 1 \
  --save "$work/parts/edit-40-compile.json"
part unet "${limits[5]}" "${vedit[@]}" bench unet --model "$model" --size "$size" --batches "$unet_batch" --dtype "$dtype" \
  --device "$device" --engines "$engines" --repeats 3 --warmup 1 --save "$work/parts/unet.json"
part edit-120 "${limits[6]}" "${edit[@]}" --frames "$long" --engine eager --warmup 0 --repeats 1 \
  --save "$work/parts/edit-120.json"
part memory "${limits[7]}" "${vedit[@]}" bench memory --frames "$memory_frames" --model "$model" --size "$size" --steps 1 \
  --device "$device" --dtype "$dtype" --clip-format png --save "$work/parts/memory.json"

echo
cat "$out/summary.md"
