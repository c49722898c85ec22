# The two entry points the README promises: `make demo` and `make test`.
# Both create .venv on first use, so a machine with only python3 and make
# is enough.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	cd examples/demo && ../../$(BIN)/python app.py

test: $(STAMP_TEST) browser
	$(BIN)/python -m pytest

# The browser tests drive Debian's Chromium headless. Install it when this
# machine can (root with apt-get); without it those tests skip themselves.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests bench examples

bench:
	$(MAKE) -C bench

clean:
	rm -rf $(VENV) build src/*.egg-info
