# failoverd developer entry points. `make test` is the one command CI runs (.ci/run).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run lint typecheck unit scenarios schema bench clean

test: $(STAMP) lint typecheck scenarios unit ## everything CI checks (pytest last: its summary closes the run)

run: $(STAMP) ## the product in its sandbox: emulated AWS on loopback, the daemon, two agents
	$(VENV)/bin/failoverd sandbox

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check orchestrator tests bench
	$(VENV)/bin/ruff format --check orchestrator tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q --durations=15

scenarios: $(STAMP)
	$(VENV)/bin/failoverd validate policies
	$(VENV)/bin/failoverd test policies

schema: $(STAMP) ## regenerate policies/schema.json and the policy/settings/metrics references from the models
	$(VENV)/bin/failoverd schema -o policies/schema.json
	$(VENV)/bin/failoverd schema --markdown -o docs/policy-reference.md
	$(PY) -c 'from orchestrator.settings import settings_reference as r; print(r(), end="")' > docs/settings-reference.md
	$(PY) -m orchestrator.daemon.metrics_export > docs/metrics.md

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
