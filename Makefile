# The README's commands live here. Each target bootstraps its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train test bench bench-step bench-kernels trio clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install mhc_jax with its test extras

train: $(STAMP)  ## train the small mHC LM on real text (CPU), with checkpoints and plots in runs/
	$(BIN)/python experiments/train.py --config configs/small_mhc_cpu.py --workdir runs/small_mhc_cpu

trio: $(STAMP)  ## the matched residual / HC / mHC runs behind the README's results table
	for c in residual hc mhc; do \
	  $(BIN)/python experiments/train.py --config configs/small_$${c}_cpu.py --workdir runs/small_$${c}_cpu || exit 1; \
	done

test: $(STAMP)  ## run the test suite on the CPU (8 fake devices)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)  ## Sinkhorn gradient-mode benchmark (time and memory, ratios vs autodiff)
	$(BIN)/python experiments/bench_sinkhorn.py

bench-step: $(STAMP)  ## train-step time of residual / HC / mHC, interleaved, ratios to residual
	$(BIN)/python experiments/bench_step.py

bench-kernels: $(STAMP)  ## xla vs Pallas kernels vs the memory-traffic floor (meaningful on a GPU only)
	$(BIN)/python experiments/bench_kernels.py

clean:
	rm -rf $(VENV) .pytest_cache
