# Two entry points: `make demo` (tiny pretraining run on the embedded corpus) and `make test`.
# Both create or reuse .venv, install the CPU torch wheel and this package (C++ helpers built at
# install time), then run.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: install test demo bench clean gpu-check

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(STAMP): $(VPY) Makefile pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e ".[dev,hf,wandb,data]"
	# the reference we are byte-compatible with (read by tests/test_megatron_compat.py), not a dependency
	$(VPY) -m pip install -q --no-deps --ignore-requires-python megatron-core==0.19.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest tests -q -p no:cacheprovider

demo: $(STAMP)
	$(VPY) tools/demo.py

# on a fresh GPU node: every GPU/NCCL step under a timeout (docs/cluster.md); installs nothing
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info megatron_th/_C*.so
