# make run: set up .venv (if needed) and run the whole pipeline (dvc repro).
# make loop: set up .venv (if needed) and run the self-consuming loops (loop/dvc.yaml).
# make photos: set up .venv (if needed) and run the photo pipeline (examples/imagenette/dvc.yaml).
# make test: set up .venv (if needed) and run the test suite.
# make browser: install Debian's Chromium (/usr/bin/chromium) for the report's browser test, if missing.
# make screenshot: after make run, docs/report.png: reports/index.html as headless Chromium draws it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# torch's OpenMP threads spin-wait by default; on a small shared machine that steals the other core
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run loop photos test browser screenshot bench readme clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dvc --wait-for-lock repro   # --wait-for-lock: another dvc in this repo (make photos) waits, not fails

# the self-consuming loops (loop/dvc.yaml): after make run, or alone (it makes the main generator first)
loop: $(STAMP)
	$(BIN)/factory loop stages --check
	$(BIN)/factory loop run --jobs 2   # runs' chains two at a time (see factory loop run --help)

# the photo pipeline (examples/imagenette): imagenette-mini from ../shared, random-weight stand-in models
photos: $(STAMP)
	@test -d ../shared/data/imagenette-mini/train || { echo "make photos: ../shared/data/imagenette-mini not found (the photos it ingests)"; exit 2; }
	$(BIN)/dvc --wait-for-lock repro examples/imagenette/dvc.yaml

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS)

# Debian's Chromium, which the report's browser test drives (Playwright, no browser download); apt-get
# update only when the package is not found. Without apt-get: a message, and the test skips (fails under CI).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
browser:
	@if test -x $(CHROMIUM); then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make browser: no apt-get: install Chromium as $(CHROMIUM) (without it the browser test skips, under CI fails)"; \
	  test -z "$$CI"; exit; \
	fi; \
	echo "make browser: installing Debian's chromium"; \
	$(APT_INSTALL) || { $(SUDO) apt-get update -q && $(APT_INSTALL); }

# the README's picture of the report (after make run): its first 2000 px at 1280 px wide
screenshot: $(STAMP) browser
	$(BIN)/python scripts/screenshot.py reports/index.html docs/report.png --width 1280 --height 2000

bench: $(STAMP)
	$(BIN)/python bench/shards.py
	$(BIN)/python bench/loader.py

# the README quotes reports/results.md and reports/loop.md of the committed runs (tests/test_results.py checks)
readme: $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from factory.measure.report import readme_with_results as r; \
	p = Path('README.md'); t = r(p.read_text(), Path('reports/results.md').read_text()); \
	p.write_text(r(t, Path('reports/loop.md').read_text(), 'reports/loop.md'))"

clean:
	rm -rf $(VENV)
