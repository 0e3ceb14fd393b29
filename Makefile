# Every target that needs Python creates .venv from pyproject.toml first, so a fresh clone
# works with nothing else run before.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODEL   ?= resnet50
WEIGHTS ?= DEFAULT
OUT     ?= artifacts/$(MODEL)

# GPU machines get onnxruntime-gpu (and TensorRT from PyPI on x86); Jetsons keep JetPack's
# own TensorRT, which the venv sees through the system site-packages.
ARCH      := $(shell uname -m)
HAS_GPU   := $(shell nvidia-smi >/dev/null 2>&1 && echo yes)
IS_JETSON := $(shell test -f /etc/nv_tegra_release && echo yes)
ifeq ($(IS_JETSON),yes)
  EXTRAS    ?= cpu,dev
  VENV_ARGS ?= --system-site-packages
else ifeq ($(HAS_GPU)$(ARCH),yesx86_64)
  EXTRAS    ?= gpu,tensorrt,dev
else
  EXTRAS    ?= cpu,dev
endif

.PHONY: venv test test-all export clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

export: venv
	$(BIN)/resnet-edge export $(MODEL) --weights $(WEIGHTS) --out $(OUT)

clean:
	rm -rf artifacts runs
