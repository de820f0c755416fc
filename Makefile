# genbench — `make help` lists the targets. `make bench` and `make test` install everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genbench-installed

MODEL ?= ddpm
DATA ?= mnist
PROFILE ?= quick
SEED ?= 0
COND ?=
DEVICES ?= auto
PRECISION ?=
BENCH_ARGS ?=
TASK ?= all
RESTORE_ARGS ?=
SWEEP ?= configs/sweeps/families.yaml
SLURM ?=
RESTORE_CKPT = runs/$(DATA)/$(PROFILE)/$(MODEL)/seed$(SEED)/checkpoints/last.ckpt
COND_FLAG = $(if $(filter-out 0,$(COND)),--class-conditional)

export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install test test-all bench bench-all sweep restore leaderboard perf lint clean

help: ## List the targets and the variables they take
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: MODEL=$(MODEL) DATA=$(DATA) PROFILE=$(PROFILE) SEED=$(SEED) COND=$(COND) DEVICES=$(DEVICES) PRECISION=$(PRECISION)"

install: $(STAMP) ## Create .venv and install the pinned dependencies (near-instant when nothing changed)

$(STAMP): requirements.lock requirements-offline.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-offline.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: install ## Run the test suite (fast; under ~15 minutes on 2 CPU cores)
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

test-all: install ## Run every test, the slow ones included
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

bench: install ## Fit + evaluate MODEL on DATA with PROFILE (COND=1: the class-conditional variant), write the record and refresh the leaderboard
	$(if $(filter file,$(origin PROFILE)),@echo "genbench: PROFILE=$(PROFILE) (the default) trains about 10-20 minutes per model on a CPU; for a first try (the whole pipeline in about a minute): make bench MODEL=$(MODEL) PROFILE=smoke")
	$(PY) -m genbench bench --model $(MODEL) --data $(DATA) --profile $(PROFILE) --seed $(SEED) \
		--devices $(DEVICES) $(if $(PRECISION),--precision $(PRECISION)) $(COND_FLAG) $(BENCH_ARGS)

bench-all: install ## Bench every family on DATA/PROFILE/SEED one after another (configs/sweeps/families.yaml)
	$(PY) -m genbench sweep configs/sweeps/families.yaml --profile $(PROFILE) --data $(DATA) --seeds $(SEED) \
		--bench-args "--devices $(DEVICES) $(if $(PRECISION),--precision $(PRECISION)) $(BENCH_ARGS)"

sweep: install ## Run the sweep file SWEEP (models x datasets x seeds) one after another; SLURM=1 submits a job array
	$(PY) -m genbench sweep $(SWEEP) $(if $(SLURM),--slurm)

restore: install ## Zero-shot restoration (TASK=inpaint_box|inpaint_50|inpaint_80|sr2|sr4|denoise|blur|all) with the DDPM of DATA/PROFILE, trained by `make bench` if absent
	@test "$(MODEL)" = ddpm || { echo "make restore: MODEL=$(MODEL) has no diffusion prior; restoration needs MODEL=ddpm" >&2; exit 2; }
	test -f $(RESTORE_CKPT) || $(MAKE) --no-print-directory bench MODEL=$(MODEL) DATA=$(DATA) PROFILE=$(PROFILE) SEED=$(SEED)
	$(PY) -m genbench restore --checkpoint $(RESTORE_CKPT) --task $(TASK) $(RESTORE_ARGS)

leaderboard: install ## Rebuild benchmarks/leaderboard.md and leaderboard.html from the result records
	$(PY) -m genbench leaderboard

perf: install ## Measure framework overhead and throughput into benchmarks/perf.json
	$(PY) benchmarks/perf.py

lint: install ## Lint with ruff
	$(PY) -m ruff check genbench tests benchmarks

clean: ## Remove run directories (checkpoints, W&B files); results and the leaderboard are kept
	rm -rf runs wandb lightning_logs
