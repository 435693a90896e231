# The two commands of README.md. Each creates .venv (and installs the project) if needed.
#   make demo   run the pipeline on the default config (the synthetic demo cohort)
#   make test   lint, format checks (ruff; snakefmt for the rules) and the test suite

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test lint venv

venv: $(STAMP)

# pip byte-compiles one file at a time (34 s here, timed by hand); compileall uses every core
# (22 s on 2).
# Like pip, it skips files it cannot compile (torch ships a few in Python 3.12 syntax).
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --no-compile -e '.[test]'
	$(VENV)/bin/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

demo: $(STAMP)
	snakemake --cores $(CORES)

lint: $(STAMP)
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow/rules

test: lint
	pytest -n 2 --dist loadfile --durations=15
