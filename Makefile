# Two entry points that work on a fresh machine: `make compare` (the main job) and `make test`.
.PHONY: setup compare example test test-fast bench
setup:
	bash scripts/setup.sh

compare: setup
	.venv/bin/tiltedsam compare

example: setup
	.venv/bin/tiltedsam example

test: setup
	.venv/bin/python -m pytest -q

# the same without the few end-to-end tests marked slow (compare --quick, long HMC chains)
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python benchmarks/step_cost.py
