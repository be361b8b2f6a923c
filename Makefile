# crawl2model: `make demo` runs the whole pipeline on the bundled sample, `make test` runs the tests.
# Both create the virtual environment first when it is missing (Python 3.11+).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (pip takes this one from the local wheel cache here; elsewhere add
# TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu). For CUDA: TORCH=torch==2.13.0 TORCH_INDEX=
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: demo test install clean-data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/crawl2model run

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean-data:
	rm -rf c2m-data
