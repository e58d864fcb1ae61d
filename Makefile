# Two entry points that work on a fresh machine: `make compare` (the main job) and `make test`.
.PHONY: setup compare example test test-all bench
setup:
	bash scripts/setup.sh

compare: setup
	.venv/bin/tiltedsam compare

example: setup
	.venv/bin/tiltedsam example

test: setup
	.venv/bin/python -m pytest -q -m "not slow"

test-all: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/step_cost.py
