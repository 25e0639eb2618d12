# One command per job. The virtual environment is made once and reused; it is
# rebuilt only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   ?= .venv
MODEL  ?= simple_nn
# With MODEL=hf:PATH (a save_pretrained folder): the task, where config.json's architectures do not say it.
TASK   ?=
MODEL_FLAGS := --model $(MODEL)$(if $(TASK), --task $(TASK))
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every install, pinned by constraints.txt, then byte-compiled: where PYTHONDONTWRITEBYTECODE is set, Python would
# otherwise compile every module it imports, every time. pip compiles one file at a time (about 70 s here); compileall
# writes the same .pyc files on every core. Like pip, it skips a file that does not compile (a test file of a package
# written for a newer Python), so its exit status is not the install's.
PIP_INSTALL := -m pip install -qq --disable-pip-version-check --no-compile -c constraints.txt
byte_compile = $(1) -m compileall -qq -j 0 "$$($(1) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
FORCE_FLAG := $(if $(filter 1 yes true,$(FORCE)),--force,)
# Every target's needs: the core, the benchmark, the fault harness, the examples, the tools.
EXTRAS := bench,reliability,examples,transformers,dev
# Ray Serve, for the targets that serve on Ray (and the tests and reports that cover it).
RAY_STAMP := $(VENV)/.installed-ray
# Extras the first install adds in the same pip run (WITH=ray,docs: what make test and make docs add later).
WITH ?=
# MkDocs Material, for make docs.
DOCS_STAMP := $(VENV)/.installed-docs
# The onnxruntime-genai peer of the generation benchmark, in a venv of its own: it pulls the CPU
# onnxruntime, which would shadow onnxruntime-gpu in $(VENV). Its model builder needs torch,
# transformers and onnx-ir (not declared).
GENAI_VENV  ?= .venv-genai
GENAI_STAMP := $(GENAI_VENV)/.installed
REPLICAS ?= 1
REPLICA_FLAGS := --replicas $(REPLICAS)
# Smaller variants: VARIANTS=int8 (or int8,fp16) for make export; VARIANT=int8 serves one.
VARIANTS ?=
VARIANT  ?=
comma := ,
VARIANT_FLAGS := $(foreach v,$(subst $(comma), ,$(VARIANTS)),--$(v))

.PHONY: help setup setup-ray export generate test test-fast lint fmt typecheck serve stop update rollback serve-ray stop-ray bench genai-peer tune reliability real-models docs docs-serve clean distclean

help:
	@echo "make setup      the virtual environment ($(VENV)), made once; WITH=ray,docs adds those extras in the same pip run,"
	@echo "                make setup-ray adds Ray Serve later (the targets that need an extra install it themselves)"
	@echo "make export     train -> TorchScript -> ONNX -> AOTInductor .pt2 -> parity gate -> .mar  (MODEL=$(MODEL), FORCE=1 to redo, EXPORT_ARGS=...)"
	@echo "                EXPORT_ARGS=--engine aotinductor serves the .pt2; --no-torchscript / --no-pt2 skip those artifacts"
	@echo "                VARIANTS=int8 (or int8,fp16) also builds, gates and packages the smaller variants"
	@echo "make generate   text from a decoder (MODEL=hf:PATH PROMPT='Once upon a time'), built and verified first (GENERATE_ARGS=--json ...)"
	@echo "make test       the whole test suite (TorchServe end-to-end included)"
	@echo "make test-fast  the fast tier (pytest -m \"not slow\"): no server, Ray or zoo; each chain built once and copied"
	@echo "make lint       ruff (lint and format check); make fmt formats; make typecheck runs mypy"
	@echo "make serve      start TorchServe with model_store/$(MODEL).mar, wait for READY workers (VARIANT=int8 serves <model>-int8.mar); make stop stops it"
	@echo "make update     rebuild, then move the running server to the new version with no request failing (UPDATE_ARGS='--on ray'); make rollback goes back"
	@echo "make serve-ray  the same archive on Ray Serve: a local cluster on 127.0.0.1 (RAY_ADDRESS=... joins one); REPLICAS=2 or REPLICAS=auto"
	@echo "make stop-ray   stop it (the local cluster too)"
	@echo "make bench      latency report: eager vs TorchScript vs ONNX Runtime vs the .pt2 vs torch.compile in process, and the served endpoint (BENCH_ARGS=...)"
	@echo "                a text-generation model: tokens/s, time to first token, inter-token latency per engine"
	@echo "make genai-peer the onnxruntime-genai venv ($(GENAI_VENV)) the generation benchmark compares against"
	@echo "make tune       the serving config (batch, delay, workers, threads) that meets P99_MS=5 on a real TorchServe,"
	@echo "                packaged into the archive -> reports/<model>/tune.{json,md,png} (VARIANT=int8, TUNE_ARGS=...)"
	@echo "make reliability  faults, hostile input and load against the pipeline and a real server -> reports/reliability.md"
	@echo "make real-models  resnet50, vit_b16, bert_base, gpt2 (and the 2.4 GB MLP) at full size through the chain, one after another"
	@echo "                -> reports/real-models.md (REAL_MODELS_ARGS='--models resnet50 --serve --timeout 3600')"
	@echo "make docs       the documentation site: mkdocs build --strict from docs/ into site/; open site/index.html from disk"
	@echo "make docs-serve the same site on http://127.0.0.1:8000, rebuilt as docs/ changes"
	@echo "make clean      remove generated artifacts, reports and archives"

setup: $(STAMP)

setup-ray: $(RAY_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), f"Python 3.10+ needed, {sys.executable} is {sys.version.split()[0]}"' \
		|| { echo "error: set PYTHON=python3.11 (or another Python 3.10+)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (once; again only when pyproject.toml or constraints.txt change): torch $$(sed -n 's/^torch==//p' constraints.txt) (CPU),"
	@echo "  ONNX Runtime, transformers, TorchServe and the rest, about 2.3 GB; a few minutes on a first run, mostly downloading"
	$(PY) $(PIP_INSTALL) -e '.[$(EXTRAS)$(if $(WITH),$(comma)$(WITH))]'
	@$(call byte_compile,$(PY))
	@touch $@ $(foreach extra,$(subst $(comma), ,$(WITH)),$(VENV)/.installed-$(extra))

$(RAY_STAMP): $(STAMP)
	$(PY) $(PIP_INSTALL) -e '.[$(EXTRAS),ray]'
	@$(call byte_compile,$(PY))
	@touch $@

genai-peer: $(GENAI_STAMP)

$(GENAI_STAMP): constraints.txt
	@test -x $(GENAI_VENV)/bin/python || $(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/python $(PIP_INSTALL) \
		onnxruntime-genai==0.18.0 onnx-ir torch transformers onnx numpy
	@$(call byte_compile,$(GENAI_VENV)/bin/python)
	@touch $@

$(DOCS_STAMP): $(STAMP)
	$(PY) $(PIP_INSTALL) -e '.[$(EXTRAS),docs]'
	@$(call byte_compile,$(PY))
	@touch $@

export: $(STAMP)
	$(PY) -m pipeline all $(MODEL_FLAGS) $(FORCE_FLAG) $(EXPORT_ARGS)
	$(if $(VARIANTS),$(PY) -m pipeline variants $(MODEL_FLAGS) $(VARIANT_FLAGS) $(FORCE_FLAG))

# The prompt reaches the command through the environment, so no quote in it can break the shell line.
export PROMPT
generate: $(STAMP)
	@test -n "$$PROMPT" || { echo "error: say what to generate from: make generate MODEL=hf:PATH PROMPT='Once upon a time'"; exit 2; }
	$(PY) -m pipeline all $(MODEL_FLAGS)
	$(PY) -m pipeline generate $(MODEL_FLAGS) --prompt "$$PROMPT" $(GENERATE_ARGS)

test: $(RAY_STAMP)
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

# NO_MKDOCS_2_WARNING: Material for MkDocs' own switch for the end-of-life banner it prints on every
# run (the date is kept in docs/index.md, with what to move to).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# 127.0.0.1 only: the site is for this machine's browser, not the network.
docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf artifacts/*/ reports/*/ model_store/*.mar

distclean: clean
	rm -rf $(VENV) $(GENAI_VENV) *.egg-info

serve: $(STAMP)
	$(PY) -m pipeline all $(MODEL_FLAGS)
	@test -z "$(VARIANT)" || $(PY) -m pipeline variants $(MODEL_FLAGS) --$(VARIANT)
	$(PY) -m pipeline serve $(MODEL_FLAGS) $(if $(VARIANT),--variant $(VARIANT)) $(SERVE_ARGS)

stop: $(STAMP)
	$(PY) -m pipeline stop $(MODEL_FLAGS)

# The running server (TorchServe; UPDATE_ARGS='--on ray' for Ray Serve) moved to the rebuilt model, no request failing.
update: $(STAMP)
	$(PY) -m pipeline all $(MODEL_FLAGS)
	@test -z "$(VARIANT)" || $(PY) -m pipeline variants $(MODEL_FLAGS) --$(VARIANT)
	$(PY) -m pipeline update $(MODEL_FLAGS) $(if $(VARIANT),--variant $(VARIANT)) $(UPDATE_ARGS)

rollback: $(STAMP)
	$(PY) -m pipeline rollback $(MODEL_FLAGS) $(if $(VARIANT),--variant $(VARIANT)) $(UPDATE_ARGS)

serve-ray: $(RAY_STAMP)
	$(PY) -m pipeline all $(MODEL_FLAGS)
	@test -z "$(VARIANT)" || $(PY) -m pipeline variants $(MODEL_FLAGS) --$(VARIANT)
	$(PY) -m pipeline serve --on ray $(MODEL_FLAGS) $(REPLICA_FLAGS) $(if $(VARIANT),--variant $(VARIANT)) $(SERVE_ARGS)

stop-ray: $(STAMP)
	$(PY) -m pipeline stop --on ray $(MODEL_FLAGS)

bench: $(RAY_STAMP)
	$(PY) -m pipeline all $(MODEL_FLAGS)
	$(PY) -m pipeline bench $(MODEL_FLAGS) $(BENCH_ARGS)

tune: $(STAMP)
	$(if $(P99_MS),,$(error make tune needs the goal: make tune MODEL=$(MODEL) P99_MS=5))
	$(PY) -m pipeline all $(MODEL_FLAGS)
	@test -z "$(VARIANT)" || $(PY) -m pipeline variants $(MODEL_FLAGS) --$(VARIANT)
	$(PY) -m pipeline tune $(MODEL_FLAGS) --p99-ms $(P99_MS) $(if $(VARIANT),--variant $(VARIANT)) $(TUNE_ARGS)

reliability: $(RAY_STAMP)
	$(PY) -m pipeline reliability $(RELIABILITY_ARGS)

real-models: $(STAMP)
	$(PY) scripts/real_models.py $(REAL_MODELS_ARGS)
