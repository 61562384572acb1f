# One command runs the offline demo, one runs the tests; each installs what it needs into .venv.
.PHONY: demo test test-fast install bench-harvest clean

install:
	bash scripts/bootstrap.sh test

demo: install
	.venv/bin/saeq demo

test: install
	.venv/bin/python -m pytest -q

test-fast: install
	.venv/bin/python -m pytest -q -m "not integration and not smollm2"

bench-harvest: install
	.venv/bin/python bench/harvest.py

clean:
	rm -rf .venv .pytest_cache
