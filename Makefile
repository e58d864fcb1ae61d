# Two entry points that work on a fresh machine: `make compare` (the main job) and `make test`.
.PHONY: setup compare example test test-fast bench mutation
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

# mutation testing of tilt.py and optim/ (mutmut, pinned in the `mutation` extra): ~20 min at one worker,
# prints the kill rate. Not in CI. A sample: make mutation MUTANTS='tiltedsam.optim.sam.*'
mutation: setup
	.venv/bin/mutmut --version 2>/dev/null | grep -q "3.8.1" || .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mutation]"
	.venv/bin/python scripts/mutation.py $(MUTANTS)
