# Two commands for a fresh machine with Python 3.11+ and make:
#   make run    set up and run maildesk on its embedded defaults
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/maildesk db upgrade
	$(BIN)/maildesk demo-users
	$(BIN)/maildesk run

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache
