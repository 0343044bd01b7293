# Quick start: `make run` (the server on port 9998) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the package metadata changes; the code itself is
# installed in editable (compat) mode, so edits need no re-install.
STAMP := $(VENV)/.installed

.PHONY: run test typecheck setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

run: setup
	$(BIN)/twistd -n --pidfile= chatd --port 9998 --web tcp:8080 --irc tcp:6667

test: setup
	$(BIN)/python -m pytest -q tests

# mypy --strict over the package ([tool.mypy] in pyproject.toml).
typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache .hypothesis .mypy_cache
