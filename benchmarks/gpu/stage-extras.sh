#!/usr/bin/env bash
# Stage, for the GPU machine (Python 3.12, x86-64, no registry), the wheels it lacks into .gpuwhl/extra
# (git ignores .gpuwhl/): nvImageCodec and nvJPEG (JPEG decode on the GPU), and grpc/protobuf at this
# project's versions (the generated stubs refuse older runtimes). Run from the project's root, after
# ../shared/gpu/stage-ort-gpu.sh; about 40 MB, one device call (README.md here).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
pin() { v=$(version "$1"); if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi; }
dir=.gpuwhl/extra
mkdir -p "$dir"
rm -f "$dir"/*.whl
pkgs=("$(pin nvidia-nvimgcodec-cu13)" nvidia-nvjpeg)
for p in grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf googleapis-common-protos; do
  pkgs+=("$(pin "$p")")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dir" "${pkgs[@]}"
ls -1 "$dir"
du -ch "$dir"/*.whl | tail -1
