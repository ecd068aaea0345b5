# Two commands from a clean clone (see README):
#   make demo   set up .venv (lean: the core dependencies, CPU-only torch where there is no NVIDIA GPU)
#               and run the main job (LD3 on the embedded digits model)
#   make test   set up .venv with every extra the tests need and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch for the tests: the PyPI build (CUDA on Linux, about 5.5 GB with its nvidia-* wheels) and the
# torchvision of the `fid` extra (LPIPS). PyPI's torchvision does not import beside a CPU-only torch.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# torch for the demo on a machine without an NVIDIA GPU: PyTorch's CPU-only build (about 190 MB, a
# 0.9 GB venv). It is not on PyPI; pip finds it in TORCH_CPU_INDEX (or in a local find-links directory)
# and falls back to TORCH_PINS when it cannot.
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup setup-dev demo test lint clean

setup: $(VENV)/.ld3-core

$(VENV)/.ld3-core: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory torch-for-demo
	$(PIP) install -q -e .
	touch $@

.PHONY: torch-for-demo
torch-for-demo:
ifeq ($(HAS_NVIDIA_GPU),yes)
	$(PIP) install -q $(TORCH_PINS)
else
	$(PIP) install -q --retries 0 --timeout 15 --extra-index-url $(TORCH_CPU_INDEX) '$(TORCH_CPU)' \
	  || { echo "CPU-only torch not available from $(TORCH_CPU_INDEX); installing the PyPI build"; \
	       $(PIP) install -q $(TORCH_PINS); }
endif

setup-dev: $(VENV)/.ld3-dev

$(VENV)/.ld3-dev: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,all]'
	touch $(VENV)/.ld3-core $@

demo: setup
	$(PY) main.py

test: setup-dev
	$(PY) -m pytest -q -ra

lint: setup-dev
	$(VENV)/bin/ruff check ld3 tests scripts benchmarks *.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
