# crawl2model: `make demo` runs the whole pipeline on the bundled sample, `make test` runs the tests.
# Both create the virtual environment first when it is missing (Python 3.11+).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (pip takes this one from the local wheel cache here; elsewhere add
# TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu). For CUDA: TORCH=torch==2.13.0 TORCH_INDEX=
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Two pytest workers (pytest-xdist): the end-to-end tests mostly wait on one core each.
PYTEST_ARGS ?= -n 2
# llama.cpp's Python binding (the `gguf` extra): k-quants and running the GGUF exports. It builds
# from source (~7 min on 2 cores), once, into $(VENV)/wheels; `make install`/`make demo` do it.
# LLAMACPP=0 goes without it (no k-quants, GGUF variants written but not scored).
LLAMACPP ?= 1
LLAMACPP_SPEC := llama-cpp-python>=0.3.16
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: demo test install clean-data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m crawl2model.runtime
	touch $@

$(VENV)/wheels/.built: | $(VENV)/.installed
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(PY) -m pip wheel -q --no-deps -w $(VENV)/wheels "$(LLAMACPP_SPEC)"
	touch $@

$(VENV)/.llamacpp: $(VENV)/wheels/.built
	$(PY) -m pip install -q "$$(ls $(VENV)/wheels/llama_cpp_python-*.whl)[server]"
	touch $@

install: $(VENV)/.installed $(if $(filter 1,$(LLAMACPP)),$(VENV)/.llamacpp)

demo: install
	$(VENV)/bin/crawl2model run

# The tests that run GGUF files in llama.cpp (marker `llamacpp`) skip, saying why, when
# llama-cpp-python is not installed: building it takes 7-13 min here, which would push a fresh
# machine's test run past 20 min. `make test LLAMACPP_TEST=1` builds it first and runs them all
# (so does any `make test` after `make demo` / `make install`).
# pytest exits 5 when it collects no test; that is not a failure of the code.
LLAMACPP_TEST ?= 0
test: $(VENV)/.installed $(if $(filter 1,$(LLAMACPP_TEST)),$(VENV)/.llamacpp)
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean-data:
	rm -rf c2m-data
