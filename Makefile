# crawl2model: `make demo` runs the whole pipeline on the bundled sample, `make test` runs the tests.
# Both create the virtual environment first when it is missing (Python 3.11+).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (pip takes this one from the local wheel cache here; elsewhere add
# TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu). For CUDA: TORCH=torch==2.13.0 TORCH_INDEX=
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# llama.cpp's Python binding (the `gguf` extra): k-quants and running the GGUF exports. It builds
# from source (~7 min on 2 cores), once, into $(VENV)/wheels. LLAMACPP=0 goes without it.
LLAMACPP ?= 1
LLAMACPP_SPEC := llama-cpp-python>=0.3.16
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: demo test install clean-data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/wheels/.built: | $(VENV)/.installed
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(PY) -m pip wheel -q --no-deps -w $(VENV)/wheels "$(LLAMACPP_SPEC)"
	touch $@

$(VENV)/.llamacpp: $(VENV)/wheels/.built
	$(PY) -m pip install -q $(VENV)/wheels/llama_cpp_python-*.whl
	touch $@

install: $(VENV)/.installed $(if $(filter 1,$(LLAMACPP)),$(VENV)/.llamacpp)

demo: install
	$(VENV)/bin/crawl2model run

# llama.cpp builds in the background while the tests that do not need it run (it is installed
# only after they finish, so none of them sees a half-installed package); then the `llamacpp`
# group runs. pytest exits 5 when it collects no test; that is not a failure of the code.
test: $(VENV)/.installed
	@if [ "$(LLAMACPP)" = 1 ]; then $(MAKE) -s $(VENV)/wheels/.built > $(VENV)/llamacpp-build.log 2>&1 & fi; \
	build=$$!; \
	$(PY) -m pytest -m "not llamacpp" $(PYTEST_ARGS); first=$$?; [ $$first -eq 5 ] && first=0; \
	if [ "$(LLAMACPP)" = 1 ]; then \
	  echo "waiting for the llama.cpp build ($(VENV)/llamacpp-build.log)"; \
	  wait $$build && $(MAKE) -s $(VENV)/.llamacpp || { tail -30 $(VENV)/llamacpp-build.log; exit 1; }; \
	fi; \
	$(PY) -m pytest -m llamacpp $(PYTEST_ARGS); second=$$?; [ $$second -eq 5 ] && second=0; \
	exit $$(( first || second ))

clean-data:
	rm -rf c2m-data
