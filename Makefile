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

demo: install
	$(PY) -m m2fdist.cli synth --layout meld --out $(DEMO)/MELD.Raw --dialogs 12 --seed 0 --bad-files
	$(PY) -m m2fdist.cli pack meld --root $(DEMO)/MELD.Raw --out $(DEMO)/shards/meld
	$(PY) -m m2fdist.cli peek $(DEMO)/shards/meld --split train
	@echo "demo: raw tree in $(DEMO)/MELD.Raw, shards and index.json in $(DEMO)/shards/meld"

bench: install
	$(PY) bench/data_bench.py

clean:
	rm -rf $(DEMO) .pytest_cache
