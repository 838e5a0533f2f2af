#!/usr/bin/env bash
# Stage everything `make gpu-check` needs on the GPU machine (Python 3.12, x86-64, no registry), here,
# from the project's root, then print the device calls to make, ready to paste (README.md here):
#   .gpuwhl/part.NN, NAME, SHA256  onnxruntime-gpu (255 MB, CUDA 13) cut into parts that, with this
#                                  working tree, fit one device call each (64 MiB)
#   .gpuwhl/extra/*.whl            nvImageCodec + nvJPEG (JPEG decode on the GPU), and the project's
#                                  dependencies the machine lacks (grpc and protobuf at this project's
#                                  versions: the generated stubs refuse older runtimes; simplejpeg)
# Usage: bash benchmarks/gpu/stage.sh [ORT_VERSION]     (default 1.31.1)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:-1.31.1}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
dir=.gpuwhl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
download() { "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" "$@"; }
mkdir -p "$dir/extra"

# 1. onnxruntime-gpu, as ../shared/gpu/stage-ort-gpu.sh fetches it.
if ! ls "$dir"/onnxruntime_gpu-"$version"-*.whl >/dev/null 2>&1; then
  download -d "$dir" "onnxruntime-gpu==$version"
fi
whl=$(ls "$dir"/onnxruntime_gpu-"$version"-*.whl | head -1)

# 2. The extra wheels, pinned to what this project runs with where it is installed here: nvImageCodec
#    and nvJPEG, and every runtime dependency in pyproject.toml that the machine's image lacks or has
#    too old (its list: /work/.library/device/KINDS.md; the big ones it has are left out).
pin() { v=$("$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)
        if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi; }
rm -f "$dir"/extra/*.whl
needed=$("$py" - <<'PY'
import re
import tomllib

deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
there = {"numpy", "opencv-python-headless", "onnx", "matplotlib", "pillow", "prometheus-client"}
names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].strip().lower() for d in deps}
# grpcio-status needs googleapis-common-protos; codec decodes JPEG with simplejpeg
print(" ".join(sorted((names - there) | {"googleapis-common-protos", "simplejpeg"})))
PY
)
pkgs=("$(pin nvidia-nvimgcodec-cu13)" nvidia-nvjpeg)
for p in $needed; do
  pkgs+=("$(pin "$p")")
done
download -d "$dir/extra" "${pkgs[@]}"

# 3. Parts sized so that part + NAME + SHA256 + the working tree stay under 64 MiB per call.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null \
        | awk '{s += $1} END {print s + 0}')
mib=$(( (62 * 1048576 - tree) / 1048576 ))
extra=$(du -cb "$dir"/extra/*.whl | tail -1 | cut -f1)
if [ "$mib" -lt 8 ] || [ $(( tree + extra )) -gt $(( 63 * 1048576 )) ]; then
  echo "the working tree is $(( tree / 1048576 )) MiB: too big to carry the parts; make it smaller" >&2
  exit 1
fi
rm -f "$dir"/part.*
split -b "${mib}M" -d -a 2 "$whl" "$dir/part."
sha256sum "$whl" | awk '{print $1}' > "$dir/SHA256"
basename "$whl" > "$dir/NAME"
parts=$(ls -1 "$dir"/part.* | wc -l)
echo "staged: $(basename "$whl") in $parts parts of ${mib} MiB (tree $(( tree / 1048576 )) MiB);" \
     "extras $(( extra / 1048576 )) MiB: $(ls "$dir"/extra | tr '\n' ' ')"
echo
echo "Device calls, one right after the other (the machine goes back 30 s after a call):"
for part in "$dir"/part.*; do
  n=$(basename "$part")
  echo "run  timeout_s=120  carry=[\"$dir/$n\", \"$dir/NAME\", \"$dir/SHA256\"]"
  echo "     command: mkdir -p .gpustage && cp $dir/$n $dir/NAME $dir/SHA256 .gpustage/ && ls -l .gpustage"
done
echo "run  timeout_s=480  carry=[\"$dir/extra\"]"
echo "     command: set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu/check.py 2>&1 | tee \$OUT/gpu-check.log"
