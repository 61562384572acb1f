# One command runs the offline demo, one runs the tests, one the linters; each installs what it needs
# into .venv.
.PHONY: demo test test-fast lint install bench-harvest clean

install:
	bash scripts/bootstrap.sh test

demo: install
	.venv/bin/saeq demo

test: install
	.venv/bin/python -m pytest -q

test-fast: install
	.venv/bin/python -m pytest -q -m "not integration and not smollm2"

# The same checks as .pre-commit-config.yaml: lint, format, types (pyright basic on shared/,
# services/, workers/: [tool.pyright]) and the layer contract ([tool.importlinter]). pyright runs the
# copy its wheel bundles on the system's node or the nodejs wheel: no download, no version lookup.
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 .venv/bin/pyright
	.venv/bin/lint-imports --no-cache --no-logo

bench-harvest: install
	.venv/bin/python bench/harvest.py

clean:
	rm -rf .venv .pytest_cache
