# The two set-up commands of the README. Both (re)use .venv/ via scripts/install.sh (idempotent).
VENV := .venv
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast doctor constraints

setup:
	bash scripts/install.sh

demo: setup
	$(VENV)/bin/domainmona doctor --brief
	$(VENV)/bin/domainmona demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

doctor:
	$(VENV)/bin/domainmona doctor

# scripts/install.sh installs exactly these versions. Regenerate from a .venv the tests passed in: every
# package at its installed version, but domainmona itself; onedl-mmcv (built from a patched sdist) as its
# plain version, which install.sh reads.
constraints:
	{ echo "# Written by \`make constraints\` from a .venv that passed the tests ($$($(VENV)/bin/python -V), $$(uname -m))."; \
	  $(VENV)/bin/python -m pip freeze --all --exclude-editable \
	  | sed -E 's|^onedl-mmcv @ .*/onedl_mmcv-([^/]+)\.tar\.gz.*|onedl-mmcv==\1|' | grep -v '^domainmona\b'; \
	} > scripts/constraints.txt.tmp && mv scripts/constraints.txt.tmp scripts/constraints.txt
