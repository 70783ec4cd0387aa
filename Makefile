# Two commands for a newcomer: `make demo` (set up, then the main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test lint fuzz clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m tvm_tiny.cli demo

test: setup
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf build .pytest_cache .hypothesis
