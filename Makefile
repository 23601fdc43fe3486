# The two set-up commands of the README. Both (re)use .venv/ via scripts/install.sh (idempotent).
VENV := .venv
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast doctor

setup:
	bash scripts/install.sh

demo: setup
	$(VENV)/bin/domainmona doctor
	$(VENV)/bin/domainmona demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

doctor:
	$(VENV)/bin/domainmona doctor
