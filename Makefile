# The README's commands live here. Each target bootstraps its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Triton, jax-triton and the CUDA plugin's lowering library, kept out of the main environment
# (the plugin makes every `import jax` look for CUDA): only the Triton tests' subprocesses see it.
TRITON := $(VENV)/triton-tooling

.PHONY: install kernels train test bench bench-step bench-kernels trio clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install mhc_jax with its test extras

kernels: $(STAMP)  ## build the C++ CPU kernels into the cache (once per machine; a no-op when built)
	$(BIN)/python -m mhc_jax.ops.cpu build

train: kernels  ## train the small mHC LM on real text (CPU), with checkpoints and plots in runs/
	$(BIN)/python experiments/train.py --config configs/small_mhc_cpu.py --workdir runs/small_mhc_cpu

trio: kernels  ## the matched residual / HC / mHC runs behind the README's results table
	for c in residual hc mhc; do \
	  $(BIN)/python experiments/train.py --config configs/small_$${c}_cpu.py --workdir runs/small_$${c}_cpu || exit 1; \
	done

$(TRITON)/.installed: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(TRITON) 'jax-triton>=0.3.1,<0.4' 'triton>=3.6,<4' \
	  "jax-cuda12-plugin==$$($(BIN)/python -c 'import jax; print(jax.__version__)')"
	touch $@

test: kernels $(TRITON)/.installed  ## run the test suite on the CPU (8 fake devices)
	MHC_TRITON_PATH=$(abspath $(TRITON)) $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)  ## Sinkhorn gradient-mode benchmark (time and memory, ratios vs autodiff)
	$(BIN)/python experiments/bench_sinkhorn.py

bench-step: kernels  ## train-step time of residual / HC / mHC, interleaved, ratios to residual
	$(BIN)/python experiments/bench_step.py

bench-kernels: kernels  ## xla vs Pallas kernels vs the memory-traffic floor (meaningful on a GPU only)
	$(BIN)/python experiments/bench_kernels.py

clean:
	rm -rf $(VENV) .pytest_cache
