#!/usr/bin/env bash
# One prepared GPU check: kernel tests, kernel and train-step benchmarks, a short training run and
# the TransformerEngine probe, each under its own time limit, every figure in one CSV.
set -euo pipefail

PROG=gpu_check.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STEPS=(env kernel_tests bench_kernels bench_step train transformer_engine)

usage() {
  cat <<EOF
usage: bash experiments/$PROG [--out DIR] [--wheels DIR] [--python PY] [--only STEP,...] [--dry-run]
       bash experiments/$PROG --fetch-wheels [--wheels DIR] [--python PY]

Runs on a bare, offline GPU machine (Python 3.12, jax with the CUDA plugin, flax, optax, orbax,
triton, pytest) in under 8 minutes, with the repository as a plain working tree. The steps:

  env                 jax, the device and the optional modules
  kernel_tests        JAX_PLATFORMS=cuda pytest tests/ops/test_kernels.py (Pallas, Triton, XLA)
  bench_kernels       experiments/bench_kernels.py at 16384x4x4096 bf16: each op fwd and fwd+bwd,
                      xla vs pallas vs triton, as a fraction of the measured copy bandwidth, and
                      the coefficient kernel against the bare v@phi GEMM
  bench_step          experiments/bench_step.py: the train step of residual / HC / mHC at
                      configs/gpu_125m.py (width 768, 18 blocks, 12 heads, bf16), x residual
  train               200 steps of configs/gpu_125m.py on the corpus: tokens/s, loss, val bits/byte
  transformer_engine  whether transformer_engine.jax imports (the comparison is not implemented)

A step that fails or runs past its limit is recorded and the next one runs; the exit status is 1
when any step failed. Every figure goes to DIR/gpu_check.csv (columns step,name,value,unit,detail),
all output to DIR/gpu_check.log; the tools' own files (CSVs, plots, metrics.jsonl) stay in
DIR/gpu_check_work (the training checkpoints are deleted).

options:
  --out DIR        output folder (default: \$OUT if set, else runs/gpu_check)
  --wheels DIR     wheels the GPU machine lacks (grain, array-record, portpicker, jax-triton) and the
                   corpus in DIR/corpus, from --fetch-wheels (default: .whl in the repository); only
                   modules that do not import already are installed, into a temporary folder
  --python PY      the interpreter (default: \$PYTHON if set, else python3)
  --only STEP,...  run only these steps (e.g. to rerun the ones that failed)
  --dry-run        the same steps at tiny shapes on the CPU (JAX_PLATFORMS=cpu), to check the
                   script itself in a minute or two; needs no wheels
  --fetch-wheels   where there is network: download the wheels into the --wheels folder and copy
                   the corpus into its corpus/ (this is \`make gpu-wheels\`)
  -h, --help       this message

environment: GPU_CHECK_TIMEOUT_<STEP> overrides a step's limit in seconds (e.g.
GPU_CHECK_TIMEOUT_TRAIN=150); GPU_CHECK_TEST_WORKERS the pytest-xdist workers of kernel_tests
(default 4 on the GPU, 0 in a dry run); MHC_JAX_DATA a corpus folder to use instead of DIR/corpus.
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 2
}

# ------------------------------------------------------------------------------ options

OUT_DIR=${OUT:-runs/gpu_check}
WHEELS=$REPO/.whl
PY=${PYTHON:-python3}
ONLY=""
DRY=0
FETCH=0
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY=1; shift ;;
    --fetch-wheels) FETCH=1; shift ;;
    --out | --wheels | --python | --only)
      (($# >= 2)) && [[ -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"
      case $1 in --out) OUT_DIR=$2 ;; --wheels) WHEELS=$2 ;; --python) PY=$2 ;; --only) ONLY=$2 ;; esac
      shift 2 ;;
    --out=* | --wheels=* | --python=* | --only=*)
      value=${1#*=}
      [[ -n $value ]] || die "${1%%=*} needs a value (see --help)"
      case $1 in
        --out=*) OUT_DIR=$value ;; --wheels=*) WHEELS=$value ;; --python=*) PY=$value ;; --only=*) ONLY=$value ;;
      esac
      shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
"$PY" -c 'import sys' 2>/dev/null || die "--python '$PY' does not run (set --python or PYTHON)"
((DRY && FETCH)) && die "--dry-run and --fetch-wheels do not go together"
IFS=, read -r -a only_steps <<<"$ONLY"
for step in "${only_steps[@]}"; do
  [[ " ${STEPS[*]} " == *" $step "* ]] || die "--only: unknown step '$step'; the steps are ${STEPS[*]}"
done

wanted() {  # wanted STEP: true when --only is not given or names STEP
  [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]
}

timeout_for() {  # timeout_for STEP DEFAULT: GPU_CHECK_TIMEOUT_<STEP> overrides
  local var=GPU_CHECK_TIMEOUT_${1^^}
  local value=${!var:-$2}
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "$var='$value': expected a whole number of seconds"
  echo "$value"
}

# Each step's limit in seconds (step, on the GPU, in a dry run). On the GPU they add up to 460 s,
# under the 8-minute window; on a loaded 2-core CPU compiles are slow and the limits only catch hangs.
while read -r step gpu_limit dry_limit; do
  limit=$(timeout_for "$step" "$( ((DRY)) && echo "$dry_limit" || echo "$gpu_limit")")
  printf -v "T_${step^^}" %s "$limit"
done <<'EOF'
env 40 120
kernel_tests 105 300
bench_kernels 95 300
bench_step 95 300
train 110 300
transformer_engine 15 60
EOF
WORKERS=${GPU_CHECK_TEST_WORKERS:-$( ((DRY)) && echo 0 || echo 4)}
[[ $WORKERS =~ ^[0-9]+$ ]] || die "GPU_CHECK_TEST_WORKERS='$WORKERS': expected a whole number"

# The wheels: distribution==version, and the module each one installs. Pinned: jax-triton 0.4 needs
# triton >= 3.7 and the GPU machine has 3.6; grain needs array-record and portpicker (portpicker's
# psutil is not imported).
WHEEL_PINS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 jax-triton==0.3.1)
WHEEL_MODULES=(grain array_record portpicker jax_triton)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64)
CARRY_LIMIT_MIB=64

# ------------------------------------------------------------------------------ --fetch-wheels

if ((FETCH)); then
  mkdir -p "$WHEELS"
  WHEELS=$(cd "$WHEELS" && pwd)
  fresh=$(mktemp -d)
  trap 'rm -rf "$fresh"' EXIT
  echo "$PROG: downloading ${WHEEL_PINS[*]} (CPython 3.12, x86_64 Linux) into $WHEELS"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$fresh" "${WHEEL_PINS[@]}" ||
    die "pip download of ${WHEEL_PINS[*]} failed (no network? a pin without a cp312 manylinux wheel?)"
  rm -f "$WHEELS"/*.whl  # no stale versions beside the pinned ones
  mv "$fresh"/*.whl "$WHEELS"/
  echo "$PROG: copying the corpus into $WHEELS/corpus"
  PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$PY" - "$WHEELS/corpus" <<'EOF' || die "copying the corpus failed"
"""Copies the default corpus (the shared folder, $MHC_JAX_DATA or the fetched cache) to argv[1]."""
import pathlib
import shutil
import sys

from mhc_jax.train import corpus

src = (corpus.default_corpus_dir() or corpus.ensure_cached_corpus()).resolve()
dst = pathlib.Path(sys.argv[1]).resolve()
if dst == src or dst in src.parents or src in dst.parents:
  sys.exit(f"the corpus is {src}: it cannot be copied to {dst} (set MHC_JAX_DATA to another copy)")
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.name.endswith(corpus.TEXT_SUFFIXES)
         and not any(part.startswith(".") for part in p.relative_to(src).parts)]
for p in files:
  target = tmp / p.relative_to(src)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(p.read_bytes())  # plain writable copies (the shared folder is read-only)
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
print(f"copied {len(files)} documents from {src}")
EOF
  ls -l "$WHEELS"/*.whl
  total_kib=$(du -sk "$WHEELS" | cut -f1)
  echo "$PROG: $WHEELS holds $((total_kib / 1024)) MiB ($total_kib KiB) in all"
  ((total_kib < CARRY_LIMIT_MIB * 1024)) ||
    die "$WHEELS holds $((total_kib / 1024)) MiB, over the ${CARRY_LIMIT_MIB} MiB a device run can carry"
  exit 0
fi

# ------------------------------------------------------------------------------ setup

mkdir -p "$OUT_DIR" || die "--out '$OUT_DIR': cannot create the folder"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
[[ $WHEELS == /* ]] || WHEELS=$PWD/$WHEELS  # before the cd to the repository
WORK=$OUT_DIR/gpu_check_work
CSV=$OUT_DIR/gpu_check.csv
LOG=$OUT_DIR/gpu_check.log
if [[ -e $WORK ]]; then  # an earlier run's: only a folder this script made is deleted
  [[ -f $WORK/.made_by_gpu_check ]] || die "'$WORK' exists and was not made by $PROG: move it away"
  rm -rf "$WORK"
fi
mkdir -p "$WORK"
touch "$WORK/.made_by_gpu_check"
: >"$LOG"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP" "$WORK"/train/checkpoints*' EXIT
cd "$REPO"

export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if ((DRY)); then
  export JAX_PLATFORMS=cpu
else
  export JAX_PLATFORMS=cuda  # fail fast: never time a GPU shape on the CPU
fi

log() {
  echo "$*" | tee -a "$LOG"
}

# The CSV and the summary: a small Python helper (no jax), one call per step.

helper() {
  "$PY" "$REPO/experiments/gpu_check_figures.py" "$@" 2>&1 | tee -a "$LOG" || log "helper '$1' failed (the step's figures may be missing)"
}
helper init "$CSV"

FAILED=()
HAVE_TIMEOUT=1
command -v timeout >/dev/null || { HAVE_TIMEOUT=0; log "warning: no 'timeout' command: the steps run without limits"; }

# run_step NAME LIMIT CMD...: runs CMD with its output in the log and in $TMP/NAME.txt, records its
# exit status and wall time, and never stops the script.
run_step() {
  local name=$1 limit=$2 rc=0 status start end
  shift 2
  log ""
  log "=== $name (limit ${limit}s): $*"
  start=$(date +%s.%N)
  if ((HAVE_TIMEOUT)); then
    { timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" >"$TMP/$name.txt"; } || rc=$?
  else
    { "$@" 2>&1 | tee -a "$LOG" >"$TMP/$name.txt"; } || rc=$?
  fi
  end=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${limit}s" ;;
    *) status="failed (exit status $rc)" ;;
  esac
  ((rc == 0)) || FAILED+=("$name")
  log "=== $name: $status"
  helper row "$CSV" "$name" exit_status "$rc" rc "$status"
  helper row "$CSV" "$name" wall_time "$(awk "BEGIN {printf \"%.1f\", $end - $start}")" s "limit ${limit}s"
}

log "$PROG$( ((DRY)) && echo ' --dry-run') in $REPO, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), python: $PY"
log "output: $CSV, $LOG, $WORK"
T0=$(date +%s)

# The wheels: only for the modules that do not import already (in a dry run, only when present).
missing=$("$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "${WHEEL_MODULES[@]}")
if [[ -z $missing ]]; then
  log "wheels: ${WHEEL_MODULES[*]} all import; nothing to install"
else
  SITE=$TMP/site
  wheels=()
  for module in $missing; do
    found=("$WHEELS/$module"-*.whl)
    if [[ -f ${found[0]} ]]; then
      wheels+=("${found[@]}")
    elif ((DRY)); then
      log "wheels: no $module-*.whl in '$WHEELS' (a dry run goes on without it)"
    else
      log "wheels: no $module-*.whl in '$WHEELS': run 'make gpu-wheels' where there is network, carry .whl"
    fi
  done
  if ((${#wheels[@]})); then
    log "wheels: installing ${wheels[*]##*/} into $SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" >>"$LOG" 2>&1; then
      log "wheels: pip install failed or there is no pip; unpacking the wheels instead"
      "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" "${wheels[@]}" 2>&1 | tee -a "$LOG" ||
        log "wheels: unpacking failed too; the steps that need them will fail"
    fi
    export PYTHONPATH=$PYTHONPATH:$SITE
  fi
fi

# The corpus: $MHC_JAX_DATA, else the copy in the wheels folder, else the library's own lookup
# (a shared/data/text folder above the repository); empty when there is none.
if [[ -z ${MHC_JAX_DATA:-} && -d $WHEELS/corpus ]]; then
  export MHC_JAX_DATA=$WHEELS/corpus
fi
CORPUS=$("$PY" -c 'from mhc_jax.train import corpus; print(corpus.default_corpus_dir() or "")' 2>>"$LOG") ||
  { CORPUS=""; log "corpus: the lookup failed (see above)"; }
log "corpus: ${CORPUS:-none found}"
helper row "$CSV" env corpus "$([[ -n $CORPUS ]] && echo 1 || echo 0)" found "${CORPUS:-none}"

# ------------------------------------------------------------------------------ steps

if wanted env; then
  cat >"$TMP/env.py" <<'EOF'
import importlib, platform
import jax
d = jax.devices()
print(f"python={platform.python_version()}\njax={jax.__version__}\nbackend={jax.default_backend()}")
print(f"device_count={len(d)}\ndevice_kind={d[0].device_kind}")
for m in ("jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "triton", "jax_triton"):
  try:
    mod = importlib.import_module(m)
    print(f"module_{m.replace('.', '_')}={getattr(mod, '__version__', 'present')}")
  except Exception as e:
    print(f"module_{m.replace('.', '_')}=missing")
    print(f"  {m}: {type(e).__name__}: {e}")
EOF
  run_step env "$T_ENV" "$PY" "$TMP/env.py"
  helper env "$CSV" "$TMP/env.txt"
fi

# 1. The kernel tests: on a GPU the Pallas, Triton and XLA classes run for real. The workers share
#    the GPU, so each allocates on demand instead of taking 75% of its memory.
if wanted kernel_tests; then
  test_args=()
  # A dry run checks the step, not the kernels: one XLA test, seconds (not Pallas interpret).
  ((DRY)) && test_args+=(-k "TestXla and test_pre_forward and float32-4-300")
  ((WORKERS > 0)) && test_args+=(-n "$WORKERS")
  run_step kernel_tests "$T_KERNEL_TESTS" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
    "$PY" -m pytest -v -p no:cacheprovider --durations=5 tests/ops/test_kernels.py "${test_args[@]}"
  helper tests "$CSV" "$TMP/kernel_tests.txt"
fi

# 2. The kernels at the paper's shape: xla, pallas, and triton when jax-triton imports.
if wanted bench_kernels; then
  if ((DRY)); then
    bench_args=(--shapes 256x4x64 --impls xla --repeats 2)
  else
    bench_args=(--shapes 16384x4x4096 --repeats 10)
  fi
  run_step bench_kernels "$T_BENCH_KERNELS" \
    "$PY" experiments/bench_kernels.py --dtype bfloat16 --out "$WORK/bench_kernels" "${bench_args[@]}"
  helper kernels "$CSV" "$WORK/bench_kernels/kernels.csv"
fi

# 3. The train step of residual / HC / mHC at the ~125M GPU config (bf16, scanned blocks, remat),
#    at the training step's batch.
if wanted bench_step; then
  if ((DRY)); then
    # One unrolled fp32 block at batch 2 x 16: a dry run's time here is the three models' init and
    # compile, a third less than for a scanned bf16 block on a CPU.
    step_args=(--config configs/tiny_cpu.py --dtype float32 --no-scan_layers --num_layers 1 --seq_len 16
               --batch_size 2 --repeats 2 --no-forward_ratio)
  else
    step_args=(--config configs/gpu_125m.py --batch_size 32 --repeats 6 --no-forward_ratio)
  fi
  run_step bench_step "$T_BENCH_STEP" "$PY" experiments/bench_step.py --out "$WORK/bench_step" "${step_args[@]}"
  helper step "$CSV" "$WORK/bench_step/step.csv"
fi

# 4. A short training run on the corpus, in a fresh workdir (no resume).
if wanted train; then
  if ((DRY)); then
    train_what="configs/tiny_cpu.py with one unrolled block, 10 steps"
    train_args=(--config configs/tiny_cpu.py --config.model.num_layers=1 --config.model.scan_layers=False
                --config.train_steps=10 --config.warmup_steps=2
                --config.log_every=2 --config.eval_every=10 --config.eval_batches=1 --config.checkpoint_every=10)
    [[ -n $CORPUS ]] || train_args+=("--config.data_source=$REPO/README.md")  # no corpus here (CI)
  else
    # Batch 32 x 1024 (the config's is 64): the compile and 200 steps fit the step's limit.
    train_what="configs/gpu_125m.py, batch 32 x 1024, 200 steps"
    train_args=(--config configs/gpu_125m.py --config.train_steps=200 --config.batch_size=32
                --config.warmup_steps=20 --config.log_every=10 --config.eval_every=200
                --config.eval_batches=4 --config.checkpoint_every=200)
  fi
  if [[ -z $CORPUS && $DRY == 0 ]]; then
    log ""
    log "=== train: no corpus (no \$MHC_JAX_DATA, no '$WHEELS/corpus', no shared/data/text) on this"
    log "    offline machine: run 'make gpu-wheels' where the corpus is, and carry .whl"
    FAILED+=(train)
    helper row "$CSV" train exit_status 1 rc "no corpus"
  else
    run_step train "$T_TRAIN" "$PY" experiments/train.py --workdir "$WORK/train" --no-progress "${train_args[@]}"
    helper train "$CSV" "$WORK/train/metrics.jsonl" "$train_what"
    rm -rf "$WORK"/train/checkpoints*  # ~1.5 GB for the 125M model: not worth bringing back
  fi
fi

# 5. The GPU peer, NVIDIA TransformerEngine's JAX mHC: only whether it imports, for now.
if wanted transformer_engine; then
  cat >"$TMP/te.py" <<'EOF'
try:
  import transformer_engine
  import transformer_engine.jax  # noqa: F401
except Exception as e:
  print(f"TransformerEngine skipped: transformer_engine.jax does not import ({type(e).__name__}: {e})")
else:
  version = getattr(transformer_engine, "__version__", "unknown version")
  print(f"TransformerEngine present: {version}, comparison not implemented")
EOF
  run_step transformer_engine "$T_TRANSFORMER_ENGINE" "$PY" "$TMP/te.py"
  te_line=$(grep -m1 '^TransformerEngine' "$TMP/transformer_engine.txt" || echo "TransformerEngine: no answer")
  helper row "$CSV" transformer_engine present "$([[ $te_line == *present* ]] && echo 1 || echo 0)" bool "$te_line"
fi

# ------------------------------------------------------------------------------ summary

helper row "$CSV" total wall_time "$(($(date +%s) - T0))" s "${ONLY:-all steps}"
helper summary "$CSV"
if ((${#FAILED[@]})); then
  log ""
  log "$PROG: FAILED: ${FAILED[*]} (see $LOG)"
  exit 1
fi
log ""
log "$PROG: every step passed; figures in $CSV"
