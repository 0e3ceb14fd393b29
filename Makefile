# Every target that needs Python creates .venv from pyproject.toml first, so a fresh clone
# works with nothing else run before.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODEL   ?= resnet50
WEIGHTS ?= DEFAULT
OUT     ?= artifacts/$(MODEL)
CALIB   ?=

# x86 GPU machines get the set built for their driver's CUDA major (onnxruntime-gpu, torch,
# TensorRT, cuda-python: pyproject's cuda12 and cuda13); Jetsons keep JetPack's own TensorRT,
# which the venv sees through the system site-packages.
ARCH      := $(shell uname -m)
IS_JETSON := $(shell test -f /etc/nv_tegra_release && echo yes)
# the driver probed with a bound: nvidia-smi hangs on a wedged driver, and every target (make -n
# and clean too) would hang with it; the driver's CUDA major picks the set (12 unless 13+)
NVIDIA_SMI := timeout -k 2 $(or $(NVIDIA_SMI_TIMEOUT),10) nvidia-smi
HAS_GPU    := $(shell $(NVIDIA_SMI) >/dev/null 2>&1 && echo yes)
CUDA_MAJOR := $(if $(HAS_GPU),$(shell $(NVIDIA_SMI) 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1))
CUDA_SET   := $(shell test "$(CUDA_MAJOR)" -ge 13 2>/dev/null && echo cuda13 || echo cuda12)
ifeq ($(IS_JETSON),yes)
  EXTRAS    ?= cpu,dev
  VENV_ARGS ?= --system-site-packages
  # JetPack's own torch and torchvision (NVIDIA's wheels, for the board's CUDA) stay: pip may not
  # replace them with PyPI's CUDA 13 builds (tools/jetson_constraints.py says why)
  KEEP_JETPACK = $(BIN)/python tools/jetson_constraints.py > $(VENV)/jetson-constraints.txt
  KEEP_ARGS    = -c $(VENV)/jetson-constraints.txt
else ifeq ($(HAS_GPU)$(ARCH),yesx86_64)
  EXTRAS    ?= $(CUDA_SET),dev
else
  EXTRAS    ?= cpu,dev
endif

.PHONY: venv test test-all test-releases test-examples test-deploy test-gpu test-browser test-avx2 test-data demo export calibrate engines clean

# PIP_ARGS reach pip: a CPU machine takes torch's CPU wheels (about 1.5 GB instead of the
# default wheel's 6 GB with CUDA 13's libraries) with
#   make venv PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# and a mirror of NVIDIA's TensorRT wheels with PIP_ARGS="--extra-index-url https://pypi.nvidia.com"
PIP_ARGS ?=
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(KEEP_JETPACK)
	$(BIN)/python -m pip install --disable-pip-version-check -q $(strip $(PIP_ARGS) $(KEEP_ARGS)) -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

# on up to 4 processes (pytest-xdist), each with its share of the cores: on 2 cores the suite
# takes about 2 min instead of 3
XDIST := -n auto --maxprocesses 4
test: venv
	$(BIN)/python -m pytest -q $(XDIST)

test-all: venv
	$(BIN)/python -m pytest -q $(XDIST) -m ""

# On an NVIDIA GPU: the gpu-marked tests (default parity gates with every GPU row, tf32, CUDA
# graphs, NVML energy, the TensorRT-provider probe, the pytest plugin), each time-limited like
# every test. A machine without a registry runs them with its own Python: make -o venv test-gpu PY=python3
PY ?= $(BIN)/python
test-gpu: venv
	$(PY) -m pytest -q -m gpu

# The cpu int8 recipe on an AVX2-only CPU (no AVX-512, no VNNI), whatever this machine is: ONNX
# Runtime under QEMU's user-mode Haswell picks its saturating VPMADDUBSW kernels (Debian's
# qemu-user; needs root for apt; about a minute).
test-avx2: venv
	command -v qemu-x86_64 >/dev/null || { apt-get update -q && apt-get install -y -q qemu-user; }
	$(BIN)/python -m pytest -q -m slow -k avx2

# The trained checkpoint the tests build on, committed so every machine tests the same model
# (training differs with thread count and instruction set); remake it after changing training.
test-data: venv
	$(BIN)/resnet-edge train resnet20 --data digits --epochs 10 --seed 0 --out runs/test-data
	cp runs/test-data/model.pt tests/data/resnet20-digits.pt

# The real onnxruntime-gpu wheels of the oldest and newest release the extras allow, on this
# machine's CPU: the tool's sessions, ONNX Runtime's own fallback, and the provider-option oracle
# read back from each wheel (about 250 MB each, downloaded once per machine into ~/.cache).
test-releases: venv
	$(BIN)/python -m pytest -q -m slow tests/test_ort_releases.py

# the CI workflows in examples/ run as written (export, calibrate, the plugin's gates, twice):
# about 40 s of four processes that each load torch, so not in `make test`'s five minutes
test-examples: venv
	$(BIN)/python -m pytest -q -m slow tests/test_examples.py

# `resnet-edge deploy` against real sshd "devices" on loopback (tests/fleet_devices.py): Debian's
# openssh-server (needs root for apt) and the deploy extra (ansible-core); about 3 minutes.
test-deploy: venv
	test -x /usr/sbin/sshd || { apt-get update -q && apt-get install -y -q openssh-server; }
	$(BIN)/python -m pip install --disable-pip-version-check -q $(strip $(PIP_ARGS) $(KEEP_ARGS)) -e ".[$(EXTRAS),deploy]"
	$(BIN)/python -m pytest -q $(XDIST) -m deploy

# The HTML report in a real browser: Debian's chromium package, headless (needs root for apt;
# the default `make test` skips these, with the reason, where chromium is missing).
test-browser: venv
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	$(BIN)/python -m pytest -q -m browser

# The whole flow offline on the embedded digits data: train -> export -> calibrate -> (build) ->
# parity -> bench -> bundle, then check the bundle as a Jetson would (ONNX Runtime here), and
# the serving bundles: a Triton model repository, and DeepStream configs for a folded export.
DEMO_RUN  := runs/demo-resnet20
DEMO_WORK := artifacts/demo-resnet20
demo: venv $(DEMO_RUN)/model.pt
	$(BIN)/resnet-edge pipeline $(DEMO_RUN)/model.pt --data-calib digits:train --data-eval digits:test \
		--target jetpack6 --out $(DEMO_WORK)
	$(BIN)/resnet-edge verify $(DEMO_WORK)/demo-resnet20-jetpack6.tar.gz --iterations 5 --allow-unsigned
	$(BIN)/resnet-edge bundle $(DEMO_WORK) --target triton --out $(DEMO_WORK)
	$(BIN)/resnet-edge export $(DEMO_RUN)/model.pt --fold-normalization --softmax --out $(DEMO_WORK)-folded
	$(BIN)/resnet-edge calibrate $(DEMO_WORK)-folded
	$(BIN)/resnet-edge bundle $(DEMO_WORK)-folded --target deepstream --out $(DEMO_WORK)

# a finished training run is reused: `make clean` (or deleting it) trains again
$(DEMO_RUN)/model.pt: | venv
	$(BIN)/resnet-edge train resnet20 --data digits --out $(DEMO_RUN) --plot

export: venv
	$(BIN)/resnet-edge export $(MODEL) --weights $(WEIGHTS) --out $(OUT)

# CALIB=<data spec>: required unless the model was trained here on digits or cifar10
calibrate: venv
	$(BIN)/resnet-edge calibrate $(OUT) $(if $(CALIB),--data $(CALIB),|| { echo "make: give the calibration data as CALIB=<spec>, e.g. make calibrate MODEL=$(MODEL) CALIB=images:/data/calib" >&2; exit 2; })

# fp16 and int8 engines for this machine's GPU; int8 needs `make calibrate` (or
# `resnet-edge calibrate`) with real data for the model first.
engines: venv
	@test -f $(OUT)/model.int8.onnx || { echo "$(OUT)/model.int8.onnx is missing: run make calibrate MODEL=$(MODEL) CALIB=imagefolder:/path/to/calibration/images first" >&2; exit 2; }
	$(BIN)/resnet-edge build $(OUT) --precision fp16
	$(BIN)/resnet-edge build $(OUT) --precision int8

clean:
	rm -rf artifacts runs
