#!/usr/bin/env bash
# Build this bundle's TensorRT engine on the device it will run on (engines are not portable).
#   ./build_engine.sh [fp32|fp16|int8] [--dla-core N --gpu-fallback] [--int8-source cache] [--typing weak] [--reuse]
# Uses trtexec (JetPack: /usr/src/tensorrt/bin) with the flags the installed TensorRT needs, as
# printed by lib/trt_engine.py (the same build plan resnet-edge uses); without trtexec it builds
# with TensorRT's Python API. Engines, caches and their records go to <bundle>.device/ beside
# the bundle (or $RESNET_EDGE_DEVICE_DIR), never into the bundle itself; a Triton or DeepStream
# bundle's engine is also copied to where that server's config looks for it.
# TRT_VERSION (and ENGINE or GPU_NAME) override what is detected, for dry runs without a GPU.
# `sh build_engine.sh` (the exec bit lost on a FAT stick) runs dash on Ubuntu: go on in bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
cd "$(dirname "$0")"
# -B: Python caches no lib/__pycache__ into the bundle, whose manifest lists every file
python3() { command python3 -B "$@"; }
precision="${1:-fp16}"
shift || true
# --reuse: keep an engine whose record says it was built here, by this TensorRT, from this
# bundle's file (a re-deploy builds nothing)
reuse=
kept=()
for arg in "$@"; do
  if [ "$arg" = --reuse ]; then reuse=1; else kept+=("$arg"); fi
done
set -- ${kept[@]+"${kept[@]}"}

if [ -z "${TRT_VERSION:-}" ]; then
  # one line and exit 3 when TensorRT, a GPU or a cuda-python matching this device is missing
  python3 lib/trt_engine.py check --bundle . "$@" >&2 || exit $?
  TRT_VERSION="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')"
  if [ -n "$reuse" ] && engine="$(python3 lib/trt_engine.py reusable "$precision" --bundle . "$@")"; then
    echo "reused $engine"
    exit 0
  fi
fi

trtexec_bin="$(command -v trtexec || true)"
if [ -z "$trtexec_bin" ] && [ -x /usr/src/tensorrt/bin/trtexec ]; then
  trtexec_bin=/usr/src/tensorrt/bin/trtexec
fi

if [ -z "$trtexec_bin" ]; then
  echo "trtexec not found; building with TensorRT's Python API" >&2
  engine="$(python3 lib/trt_engine.py build "$precision" --bundle . "$@")"
else
  plan="$(python3 lib/trt_engine.py plan "$precision" --bundle . --tensorrt-version "$TRT_VERSION" \
          ${ENGINE:+--engine "$ENGINE"} ${GPU_NAME:+--gpu "$GPU_NAME"} "$@")" || exit $?
  mapfile -t cmd <<< "$plan"
  engine="$(printf '%s\n' "${cmd[@]}" | sed -n 's/^--saveEngine=//p')"
  mkdir -p "$(dirname "$engine")"
  cmd[0]="$trtexec_bin"
  echo "+ ${cmd[*]}" >&2
  "${cmd[@]}"
  # Record what the engine was built for, so verify.py can refuse it elsewhere with "rebuild".
  if python3 -c 'import tensorrt' 2>/dev/null; then
    python3 lib/trt_engine.py record "$precision" --bundle . --engine "$engine" "$@"
  fi
fi
echo "built $engine"
# Triton and DeepStream bundles: the engine goes where the server's config looks for it.
if [ -d triton-plan ] || [ -d deepstream ]; then
  python3 lib/serving.py --bundle . --engine "$engine" --precision "$precision"
fi
