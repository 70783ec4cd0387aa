# Two commands for a newcomer: `make demo` (set up, then the main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test lint fuzz clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m tvm_tiny.cli demo

test: setup
	.venv/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-cache

# Random MHSA models through the whole compiler (tests/test_fuzz.py, profile `fuzz`): 500
# examples with a fresh seed each run (TVM_TINY_FUZZ_EXAMPLES=N for more; replay one seed with
# `make fuzz FUZZ_ARGS=--hypothesis-seed=N`). CI runs the same test with 100 fixed examples.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:warnings tests/test_fuzz.py \
		--hypothesis-show-statistics $(FUZZ_ARGS)

clean:
	rm -rf build .pytest_cache .hypothesis
