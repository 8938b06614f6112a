# Suanli Exchange. `make run` and `make test` each bootstrap .venv on their own.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format messages venv clean-var

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev,docker]"
	@touch $(STAMP)

venv: $(STAMP)

## The whole exchange (web, worker, beat, simulated agents) on embedded PostgreSQL + Redis.
run: venv
	$(BIN)/python manage.py runexchange

## The test suite against real PostgreSQL + Redis (DATABASE_URL / REDIS_URL, or embedded).
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy config core providers billing marketplace cli

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Refresh locale/*/django.po from the code and templates, then compile the .mo files.
## Translate any new msgid in the .po, run this again, and commit both files (make run and
## make test use the committed .mo; tests/core/test_translations.py checks they are current).
messages: venv
	$(BIN)/python manage.py makemessages -l zh_Hans
	$(BIN)/python manage.py compilemessages -l zh_Hans --ignore .venv --ignore var

## Remove local data (embedded databases, logs, agent state).
clean-var:
	rm -rf var
