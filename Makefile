# m2fdist: `make demo` and `make test` work on a fresh machine that has python3 and the package registries.
SHELL := /bin/bash
PY := .venv/bin/python
UV := .tools/bin/uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
DEMO := demo

.PHONY: install test lint demo bench clean

install: .venv/.installed

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# deepspeed is an sdist that builds against the venv's torch, so torch goes in first.
.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --no-install-package deepspeed
	$(UV) sync --frozen
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check m2fdist tests bench launch

# The whole pipeline on a synthetic MELD-layout corpus, on CPU with 2 processes per stage (DESIGN §2).
demo: install $(DEMO)/MELD.Raw/synth_manifest.json
	$(PY) -m m2fdist.cli pipeline --config configs/tiny/pipeline.yaml
	$(PY) -m m2fdist.cli report $(DEMO)/runs
	@echo "demo: shards in $(DEMO)/shards, runs and W&B offline logs in $(DEMO)/runs, report in $(DEMO)/runs/report.md"

$(DEMO)/MELD.Raw/synth_manifest.json: | install
	$(PY) -m m2fdist.cli synth --layout meld --out $(DEMO)/MELD.Raw --dialogs 20 --seed 0 --bad-files

bench: install
	$(PY) bench/data_bench.py
	$(PY) bench/model_bench.py
	$(PY) bench/train_bench.py

clean:
	rm -rf $(DEMO) .pytest_cache
