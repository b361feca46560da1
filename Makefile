# `make train` and `make test` each set up .venv (pinned by constraints.txt) on first use, then run.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

.PHONY: setup train test
setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/python scripts/train.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)
