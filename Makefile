# The README's commands live here. Each target bootstraps its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install mhc_jax with its test extras

test: $(STAMP)  ## run the test suite on the CPU (8 fake devices)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)  ## Sinkhorn gradient-mode benchmark (time and memory, ratios vs autodiff)
	$(BIN)/python experiments/bench_sinkhorn.py

clean:
	rm -rf $(VENV) .pytest_cache
