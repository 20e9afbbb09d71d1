# The README's commands live here. Each target bootstraps its own virtual environment.
# Python: the first interpreter >= 3.12 that runs, from python3.13, python3.12, pyenv's installed
# versions (newest first) and python3; or the one given as PYTHON=/path/to/python3.12.
PY_OK  := import sys; sys.exit(sys.version_info < (3, 12))
ifndef PYTHON
PYTHON := $(shell for p in python3.13 python3.12 \
            $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.*/bin/python3 2>/dev/null | sort -rV) python3; do \
            $$p -c '$(PY_OK)' 2>/dev/null && { command -v $$p; break; }; done)
endif
NO_PYTHON := mhc_jax needs Python >= 3.12 and found none (tried python3.13, python3.12, pyenv's \
  versions, python3). Install one (Debian/Ubuntu: apt-get install python3.12-venv; pyenv: \
  pyenv install 3.12; uv: uv python install 3.12), then rerun, or pass PYTHON=/path/to/python3.12
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Triton, jax-triton and the CUDA plugin's lowering library, kept out of the main environment
# (the plugin makes every `import jax` look for CUDA): only the Triton tests' subprocesses see it.
TRITON := $(VENV)/triton-tooling

.PHONY: install kernels train test bench bench-step bench-kernels trio notebooks clean gpu-wheels gpu-check

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@$(BIN)/python -c '$(PY_OK)' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
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

# Jupyter, with jupytext: the notebooks are percent-format .py files (notebooks/*.py, the only form in
# git). JupyterLab's app settings in the venv (overrides.json) make a double click open a .py as a
# notebook; jupytext's contents manager saves it back to the .py and to a paired .ipynb (git-ignored).
NOTEBOOKS_STAMP := $(VENV)/.notebooks-installed
LAB_OVERRIDES   := $(VENV)/share/jupyter/lab/settings/overrides.json

$(NOTEBOOKS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,notebooks]'
	$(BIN)/jupytext-config --settings-file $(LAB_OVERRIDES) set-default-viewer python
	touch $@

notebooks: kernels $(NOTEBOOKS_STAMP)  ## open notebooks/ in JupyterLab (02 and 03 read the runs of `make trio`)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

$(TRITON)/.installed: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(TRITON) 'jax-triton>=0.4,<0.5' 'triton>=3.7,<4' \
	  "jax-cuda13-plugin==$$($(BIN)/python -c 'import jax; print(jax.__version__)')"
	touch $@

test: kernels $(TRITON)/.installed  ## run the test suite on the CPU (8 fake devices)
	MHC_TRITON_PATH=$(abspath $(TRITON)) $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

bench: $(STAMP)  ## Sinkhorn gradient-mode benchmark (time and memory, ratios vs autodiff)
	$(BIN)/python experiments/bench_sinkhorn.py

bench-step: kernels  ## train-step time of residual / HC / mHC, interleaved, ratios to residual
	$(BIN)/python experiments/bench_step.py

bench-kernels: kernels  ## xla vs Pallas kernels vs the memory-traffic floor (meaningful on a GPU only)
	$(BIN)/python experiments/bench_kernels.py

clean:
	rm -rf $(VENV) .pytest_cache

# The GPU check (experiments/gpu_check.sh): `make gpu-wheels` here, then carry .whl to the GPU
# machine and run `make gpu-check` there (offline: Python 3.12, jax with CUDA, no grain/jax-triton).
WHEELS := .whl

gpu-wheels: | $(STAMP)  ## download the wheels the GPU machine lacks, and the corpus, into .whl/
	bash experiments/gpu_check.sh --fetch-wheels --wheels $(WHEELS) --python $(BIN)/python

gpu-check:  ## the GPU check: tests, kernel and step benchmarks, 200 training steps (~8 min, one CSV)
	bash experiments/gpu_check.sh --wheels $(WHEELS) $(GPU_CHECK_ARGS)
