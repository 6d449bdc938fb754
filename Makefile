# Berth: `make run` starts the registry on its embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
BERTH := $(VENV)/bin/berth

.PHONY: run test lint bench install install-dev test-deps clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "uv==0.13.9"

# --inexact: keep what is installed already (the dev tools of install-dev): `make run` only
# needs the server's packages.
install: $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --frozen --no-dev --inexact

install-dev: $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --frozen

run: install
	$(BERTH) serve

test-deps:
	bash scripts/test-deps.sh

lint: install-dev
	$(VENV)/bin/ruff check berth tests $(wildcard bench)
	$(VENV)/bin/ruff format --check berth tests $(wildcard bench)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE): the
# suite starts hundreds of `berth` processes, each compiling Berth from source without it.
test: install-dev test-deps lint
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest -q -rfEs -n 2 --dist loadgroup; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# `make bench BENCH_ARGS=--quick`: a smoke test of the bench itself (figures not kept).
bench: install-dev test-deps
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) berth-data .pytest_cache .mypy_cache .ruff_cache
