# Two commands from a clean clone (see README):
#   make demo   set up .venv and run the main job (LD3 on the embedded digits model)
#   make test   set up .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint clean

setup: $(VENV)/.ld3-installed

$(VENV)/.ld3-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) main.py

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check ld3 tests scripts benchmarks *.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
