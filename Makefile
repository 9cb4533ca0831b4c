# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
WORKDIR ?= demo_out

.PHONY: demo test bench format lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# Stamp files re-run the install whenever setup.py changes.
$(VENV)/.installed: setup.py | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(VENV)/bin/python
	$(PIP) install -q -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(PY) -m w2s_jax.main --config=configs/study.py$(if $(STUDY_ARG),:$(STUDY_ARG)) --workdir=$(WORKDIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

format: $(VENV)/.installed-test
	$(PY) -m pyink w2s_jax tests configs launch

lint: $(VENV)/.installed-test
	$(PY) -m ruff check w2s_jax tests configs launch

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
