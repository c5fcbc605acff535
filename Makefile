# pgdts.migration — every target does its own set-up (scripts/setup.sh is quick when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
SANITY_ROOT := .tmp/sanity/ansible_collections/pgdts/migration
PYTEST_ARGS ?=

.PHONY: setup pg-majors test sanity lint unit integration matrix molecule reliability bench demo build clean

# Server builds of other majors, fetched into a cache (tests/harness/pg_majors.py; quick when present).
# `make integration` needs the two majors of its upgrade pairs, `make matrix` all of them.
PG_MAJORS_INTEGRATION := 11 12 17 18 clients:16
PG_MAJORS_ALL := 11 12 13 14 15 16 17 18 clients:16

setup:
	@bash scripts/setup.sh

test: setup sanity lint unit integration molecule
	@echo "make test: all layers passed"

build: setup
	@mkdir -p build && ansible-galaxy collection build --force --output-path build .

sanity: setup
	@rm -rf .tmp/sanity && mkdir -p $(SANITY_ROOT)
	@rsync -a --exclude .venv --exclude .tmp --exclude .git --exclude build --exclude tests/output ./ $(SANITY_ROOT)/
	@cd $(SANITY_ROOT) && git init -q && git add -A && ansible-test sanity --python 3.11 --color no 2>&1 | grep -v "is ignored: it is neither a file" ; exit $${PIPESTATUS[0]}

COLLECTION_ROOT := .tmp/collection_root

$(COLLECTION_ROOT)/ansible_collections/pgdts/migration:
	@mkdir -p $(COLLECTION_ROOT)/ansible_collections/pgdts && ln -sfn $(CURDIR) $@

lint: setup $(COLLECTION_ROOT)/ansible_collections/pgdts/migration
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_ROOT) ansible-lint --profile production --offline

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

pg-majors: setup
	$(PY) -m tests.harness.pg_majors $(PG_MAJORS_INTEGRATION)

integration: setup pg-majors
	$(PY) -m pytest tests/integration tests/matrix -m "not slow and not matrix_only" $(PYTEST_ARGS)

matrix: setup
	$(PY) -m tests.harness.pg_majors $(PG_MAJORS_ALL)
	$(PY) -m pytest tests/matrix $(PYTEST_ARGS)

molecule: setup
	@if [ -d extensions/molecule ]; then cd extensions && molecule test --all; else echo "molecule: no scenarios yet"; fi

reliability: setup
	$(PY) -m pytest tests/integration tests/reliability $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench.py

demo: setup
	@bash scripts/demo.sh

clean:
	rm -rf .tmp build tests/output
