# m2fdist: `make demo` and `make test` work on a fresh machine that has python3 and the package registries.
SHELL := /bin/bash
PY := .venv/bin/python
UV := .tools/bin/uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
# Bytecode written once at install: uv writes none by default, and where PYTHONDONTWRITEBYTECODE is set (as on
# the machines this suite was timed on) every process compiled torch, deepspeed and transformers from source. One
# deepspeed launch of the tiny fusion stage (runner, launcher, 2 ranks) took 85 s and 55 s of CPU without, 42 s
# and 22 s with.
export UV_COMPILE_BYTECODE := 1
DEMO := demo

.PHONY: install test test-fast lint docs demo demo-shards bench clean

install: .venv/.installed

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# deepspeed is an sdist that builds against the venv's torch, so torch goes in first.
.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --no-install-package deepspeed
	$(UV) sync --frozen
	touch $@

# A venv installed before UV_COMPILE_BYTECODE was set has no bytecode: compile it once (the package's own files too).
.venv/.compiled: .venv/.installed
	$(PY) -m compileall -q -j 0 .venv/lib m2fdist > /dev/null
	touch $@

# Two pytest workers (pytest-xdist): the modules that share the trained tiny stages run in one (tests/scheduling.py),
# everything else in the other, so the launches' single-threaded start and exit (the deepspeed runner, its
# launch.py, each rank's imports) overlap with other work. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install .venv/.compiled
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

# The unit tests only (no deepspeed launch, no training): seconds to a few minutes.
test-fast: install .venv/.compiled
	$(PY) -m pytest -q -m unit

lint: install
	$(PY) -m ruff check m2fdist tests bench launch docs

# The reference pages (docs/reference/, generated from the config dataclasses and the CLI parser), then the site
# (mkdocs.yml; strict: a broken link or a page left out of the nav is an error) into site/.
docs: install
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The whole pipeline on a synthetic MELD-layout corpus, on CPU: synthesise → pack → text → audio → visual →
# extract → fusion (+ the four ablations) → report, every stage a deepspeed launch of 2 processes.
demo: install $(DEMO)/MELD.Raw/synth_manifest.json
	$(PY) -m m2fdist pipeline --config configs/tiny/pipeline.yaml
	@echo "demo: raw tree in $(DEMO)/MELD.Raw, shards in $(DEMO)/shards, runs, W&B offline logs and report in $(DEMO)/runs"

# Only synthesise, pack and load a batch (a minute): a check of the data path.
demo-shards: install $(DEMO)/MELD.Raw/synth_manifest.json
	$(PY) -m m2fdist pack meld --root $(DEMO)/MELD.Raw --out $(DEMO)/shards/meld
	$(PY) -m m2fdist peek $(DEMO)/shards/meld --split train

$(DEMO)/MELD.Raw/synth_manifest.json: | install
	$(PY) -m m2fdist synth --layout meld --out $(DEMO)/MELD.Raw --dialogs 80 --dev-dialogs 20 --test-dialogs 60 --seed 0 --bad-files

bench: install
	$(PY) bench/data_bench.py
	$(PY) bench/loader_bench.py
	$(PY) bench/model_bench.py
	$(PY) bench/train_bench.py

clean:
	rm -rf $(DEMO) .pytest_cache site
