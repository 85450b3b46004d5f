#!/usr/bin/env bash
# The wheels the GPU machine lacks, for bench/gpu/check.sh: bench/gpu/wheels.sh DIR
#
# That machine (one H200, CPython 3.12, x86-64, no network) has PyTorch, transformers, accelerate, safetensors,
# huggingface-hub, onnx/onnxruntime, pluggy, typer, rich, Pillow and OpenCV, but not diffusers, PyAV,
# imageio-ffmpeg, ffmpeg-python or faiss. What a call carries is at most 64 MiB with the repository, so this takes
# only what the check needs: diffusers (pure Python; its own needs are all there), and faiss-cpu where it still
# fits. Not carried: PyAV (35.8 MB) and imageio-ffmpeg (68.0 MB; the check reads and writes folders of PNG frames
# and needs neither), ffmpeg-python (the same), faiss-gpu-cu12 (48.4 MB and CUDA 12's libraries) and onnxruntime-gpu
# (255.6 MB). Versions are the development environment's, which the check's code is tested with.
set -euo pipefail

DIFFUSERS=diffusers==0.42.1
FAISS=faiss-cpu==1.15.1
LIMIT_BYTES=$((64 * 1024 * 1024))  # all that travels with one call: the working tree and the carried paths
MARGIN_BYTES=$((1024 * 1024))      # for files the checkout gains before the call (results, notes)

usage() { echo "usage: bench/gpu/wheels.sh DIR   (DIR inside the repository, e.g. .whl)" >&2; exit 2; }
[ $# -eq 1 ] || usage
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
[ -x "$repo/.venv/bin/python" ] && python=${PYTHON:-$repo/.venv/bin/python}

mkdir -p "$1"
dir=$(cd "$1" && pwd)
case "$dir/" in
  "$repo"/*) relative=${dir#"$repo"/} ;;
  *) echo "wheels.sh: $1 is outside the repository $repo; a call carries only paths inside it" >&2; exit 2 ;;
esac
# A carried path must be ignored by git, or it would travel twice (once as an untracked file).
if ! git -C "$repo" check-ignore -q "$relative/"; then
  echo "/$relative/" >> "$(git -C "$repo" rev-parse --git-path info/exclude)"
  echo "wheels.sh: added /$relative/ to .git/info/exclude" >&2
fi
rm -f "$dir"/*.whl

download() {  # download NAME==VERSION into $2 as a CPython 3.12 manylinux x86-64 wheel (or a pure-Python one)
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$2" "$1"
}

bytes_of() { find "$@" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }

# What travels besides the wheels: tracked files and untracked ones git does not ignore.
repo_bytes=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
budget=$((LIMIT_BYTES - repo_bytes - MARGIN_BYTES))

download "$DIFFUSERS" "$dir"
used=$(bytes_of "$dir")
if [ "$used" -gt "$budget" ]; then
  echo "wheels.sh: error: the wheels take $used bytes and the repository $repo_bytes; together over the" \
    "$((LIMIT_BYTES / 1024 / 1024)) MiB a call carries (budget $budget bytes for wheels)" >&2
  exit 1
fi

spare=$(mktemp -d)
trap 'rm -rf "$spare"' EXIT
download "$FAISS" "$spare"
faiss_bytes=$(bytes_of "$spare")
if [ $((used + faiss_bytes)) -le "$budget" ]; then
  mv "$spare"/*.whl "$dir"/
  used=$((used + faiss_bytes))
else
  echo "wheels.sh: $FAISS left out: $faiss_bytes bytes more than the $((budget - used)) left" >&2
fi

echo "wheels in $relative/ ($used bytes; the repository $repo_bytes; limit $LIMIT_BYTES):"
for wheel in "$dir"/*.whl; do printf '  %10d  %s\n' "$(stat -c %s "$wheel")" "$(basename "$wheel")"; done
echo "carry: [\"$relative\"]"
echo "run (timeout_s 600): bash bench/gpu/check.sh --device cuda --wheels $relative --out \"\$OUT\""
