# The two commands of the quick start: `make demo` (the main job) and `make test`.
# Both set up their own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-cluster lint install clean browser

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

# The dashboard's browser test (tests/e2e/test_dashboard.py) drives Debian's chromium, never a
# browser download of Playwright's own. Installed here when missing and we are root; where it
# cannot be, the test fails saying how to install it (MMOPS_SKIP_BROWSER=1 skips it instead).
CHROMIUM := /usr/bin/chromium

browser:
	@if [ -x $(CHROMIUM) ] || [ "$$MMOPS_SKIP_BROWSER" = 1 ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the dashboard's browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null; } || echo "could not install chromium: the browser test will fail"; \
	else \
	  echo "$(CHROMIUM) is missing and this is not root: install it (apt-get install chromium)"; \
	fi

# mmops compiled to bytecode first, as a regular install would: the suite starts a few hundred
# `mmops` processes, and where PYTHONDONTWRITEBYTECODE is set each would compile it again.
test: lint browser
	$(BIN)/python -m compileall -q mmops
	$(BIN)/pytest -n 2 --dist loadfile

# The integration, contract and reliability suites again, every test's Redis a local 3-master
# cluster the tests start themselves (MMOPS_TEST_REDIS_CLUSTER=1). `make test` runs the cluster
# cases of the store contract, the reliability scenarios and tests/e2e/test_cluster.py; this
# runs everything (about 2.5 more minutes on 2 cores).
test-cluster: install
	MMOPS_TEST_REDIS_CLUSTER=1 $(BIN)/pytest -n 2 --dist loadfile tests/integration tests/contract tests/reliability

clean:
	rm -rf $(VENV) .mmops .pytest_cache .mypy_cache .ruff_cache .hypothesis
