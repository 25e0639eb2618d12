# One command per job. The virtual environment is made once and reused; it is
# rebuilt only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   ?= .venv
MODEL  ?= simple_nn
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FORCE_FLAG := $(if $(filter 1 yes true,$(FORCE)),--force,)
# Every target's needs: the core, the benchmark, the fault harness, the examples, the tools.
EXTRAS := bench,reliability,examples,dev

.PHONY: help setup export test test-fast lint fmt typecheck serve stop bench reliability clean distclean

help:
	@echo "make export     train -> TorchScript -> ONNX -> parity gate -> .mar  (MODEL=$(MODEL), FORCE=1 to redo)"
	@echo "make test       the whole test suite (TorchServe end-to-end included)"
	@echo "make test-fast  the tests that need no server and no whole-chain run"
	@echo "make lint       ruff (lint and format check); make fmt formats; make typecheck runs mypy"
	@echo "make serve      start TorchServe with model_store/$(MODEL).mar, wait for READY workers; make stop stops it"
	@echo "make bench      latency report: eager vs TorchScript vs ONNX Runtime in process, and the served endpoint (BENCH_ARGS=...)"
	@echo "make reliability  faults, hostile input and load against the pipeline and a real server -> reports/reliability.md"
	@echo "make clean      remove generated artifacts, reports and archives"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), f"Python 3.10+ needed, {sys.executable} is {sys.version.split()[0]}"' \
		|| { echo "error: set PYTHON=python3.11 (or another Python 3.10+)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

export: $(STAMP)
	$(PY) -m pipeline all --model $(MODEL) $(FORCE_FLAG)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf artifacts/*/ reports/*/ model_store/*.mar

distclean: clean
	rm -rf $(VENV) *.egg-info

serve: $(STAMP)
	@test -f model_store/$(notdir $(basename $(MODEL))).mar || $(PY) -m pipeline all --model $(MODEL)
	$(PY) -m pipeline serve --model $(MODEL) $(SERVE_ARGS)

stop: $(STAMP)
	$(PY) -m pipeline stop --model $(MODEL)

bench: $(STAMP)
	@test -f model_store/$(notdir $(basename $(MODEL))).mar || $(PY) -m pipeline all --model $(MODEL)
	$(PY) -m pipeline bench --model $(MODEL) $(BENCH_ARGS)

reliability: $(STAMP)
	$(PY) -m pipeline reliability $(RELIABILITY_ARGS)
