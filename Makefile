# The two commands of the quick start: `make demo` (the main job) and `make test`.
# Both set up their own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/mmops demo

lint: install
	$(BIN)/ruff check mmops tests bench
	$(BIN)/ruff format --check mmops tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .mmops .pytest_cache .mypy_cache .ruff_cache .hypothesis
