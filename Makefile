# Two commands for a fresh machine with Python 3.11+ and make:
#   make run    set up and run maildesk on its embedded defaults
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test setup clean

setup: $(VENV)/.installed $(VENV)/.compiled

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The package's bytecode and the compiled notification templates, written now: under systemd
# (ProtectSystem=strict, a dynamic user) nothing may write into the checkout, and every start,
# every `maildesk ingest` from an MTA would compile maildesk's modules again (0.2 s), and a new
# data folder every template (0.4-0.6 s before the daemon is ready).
$(VENV)/.compiled: $(VENV)/.installed $(shell find maildesk -name '*.py') $(shell find templates -name '*.j2')
	$(BIN)/python -m compileall -q maildesk
	$(BIN)/python -m maildesk.render
	touch $@

run: setup
	$(BIN)/maildesk db upgrade
	$(BIN)/maildesk demo-users
	$(BIN)/maildesk run

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache templates/.compiled
