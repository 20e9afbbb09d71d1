"""gpu_check.sh's figures: appends rows (step,name,value,unit,detail) to the one CSV, prints the summary.

    python experiments/gpu_check_figures.py COMMAND ARGS...   (init, row, env, tests, kernels, step, train, summary)
"""
import csv
import json
import math
import pathlib
import re
import statistics
import sys

FIELDS = ("step", "name", "value", "unit", "detail")


def _rows_out(path: str, rows: list[dict]) -> None:
  with open(path, "a", newline="") as f:
    csv.DictWriter(f, fieldnames=FIELDS).writerows(rows)


def init(out: str) -> None:
  with open(out, "w", newline="") as f:
    csv.DictWriter(f, fieldnames=FIELDS).writeheader()


def row(out: str, step: str, name: str, value: str, unit: str, detail: str = "") -> None:
  _rows_out(out, [dict(step=step, name=name, value=value, unit=unit, detail=detail)])


def env(out: str, step_log: str) -> None:
  """The key=value lines the env step printed."""
  info = dict(line.split("=", 1) for line in pathlib.Path(step_log).read_text().splitlines()
              if re.match(r"^[a-z_]+=", line))
  rows = [dict(step="env", name="devices", value=info.get("device_count", ""), unit="devices",
               detail=f"{info.get('device_kind', '?')} ({info.get('backend', '?')}), "
                      f"jax {info.get('jax', '?')}, python {info.get('python', '?')}")]
  for key, value in info.items():
    if key.startswith("module_"):
      rows.append(dict(step="env", name=key.removeprefix("module_"), value=int(value != "missing"),
                       unit="importable", detail=value))
  _rows_out(out, rows)


def tests(out: str, step_log: str) -> None:
  """Counts from pytest's final line, else (stopped early) from its -v progress lines."""
  text = pathlib.Path(step_log).read_text(errors="replace")
  counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
  final = [l for l in text.splitlines() if re.match(r"^=+ .*\bin [\d.]+s", l)]
  if final:
    detail = final[-1].strip("= ")
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", detail):
      key = {"errors": "error", "xfailed": "skipped", "xpassed": "passed"}.get(word, word)
      counts[key] += int(number)
  else:
    detail = "stopped before pytest's summary: counted from its progress lines"
    progress = text.split("short test summary info")[0]
    for word in re.findall(r"\b(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b(?=.*::|\s+\[)", progress):
      key = {"xfail": "skipped", "xpass": "passed"}.get(word.lower(), word.lower())
      counts[key] += 1
  _rows_out(out, [dict(step="kernel_tests", name=k, value=v, unit="tests", detail=detail)
                  for k, v in counts.items()])


def kernels(out: str, path: str) -> None:
  """bench_kernels.py's kernels.csv: time, bytes/s, fraction of copy, ratios to xla and the GEMM."""
  if not pathlib.Path(path).exists():
    return
  rows = []
  for r in csv.DictReader(open(path)):
    detail = f"{r['shape']} {r['dtype']} on {r['device']}"
    if r["op"] == "copy a+1":
      rows.append(dict(step="bench_kernels", name="copy_bandwidth", value=r["GBps"], unit="GB/s",
                       detail=f"a+1 over {r['shape']} fp32 on {r['device']}"))
      continue
    name = "vphi_gemm" if r["op"] == "v@phi GEMM" else f"{r['op']}.{r['impl']}.{r['mode']}"
    rows.append(dict(step="bench_kernels", name=name, value=r["ms"], unit="ms", detail=detail))
    rows.append(dict(step="bench_kernels", name=name, value=r["of_copy"], unit="of_copy", detail=detail))
    for key, unit in (("x_xla", "x_xla"), ("x_gemm", "x_gemm")):
      if r[key] != "":
        rows.append(dict(step="bench_kernels", name=name, value=r[key], unit=unit, detail=detail))
  _rows_out(out, rows)


def step(out: str, path: str) -> None:
  """bench_step.py's step.csv: per connection ms/step, tokens/s, ratio to residual, scratch."""
  if not pathlib.Path(path).exists():
    return
  _rows_out(out, [dict(step="bench_step", name=f"{r['connection']}.{r['metric']}", value=r["value"],
                       unit=r["unit"], detail=f"{r['setting']} on {r['device']}")
                  for r in csv.DictReader(open(path))])


def train(out: str, metrics: str, what: str) -> None:
  """metrics.jsonl: median tokens/s over the second half of the logged intervals (past the compile)."""
  if not pathlib.Path(metrics).exists():
    return
  logged = [json.loads(l) for l in open(metrics) if l.strip()]
  timed = [r for r in logged if "tokens_per_sec" in r]
  rows = []
  if timed:
    steady = timed[len(timed) // 2:]
    rows.append(dict(step="train", name="tokens_per_s", value=round(statistics.median(
        r["tokens_per_sec"] for r in steady), 1), unit="tokens/s",
        detail=f"{what}: median of {len(steady)} logged intervals, steps {steady[0]['step']}-{steady[-1]['step']}"))
  if logged:
    last = logged[-1]
    rows.append(dict(step="train", name="steps", value=last["step"], unit="steps", detail=what))
    rows.append(dict(step="train", name="train_loss", value=round(last["train_loss"], 4), unit="nats/byte",
                     detail=f"{what}, step {last['step']}"))
  evals = [r for r in logged if "val_bpb" in r]
  if evals:
    rows.append(dict(step="train", name="val_bpb", value=round(evals[-1]["val_bpb"], 4), unit="bits/byte",
                     detail=f"{what}, step {evals[-1]['step']}"))
  _rows_out(out, rows)


def summary(out: str) -> None:
  rows = list(csv.DictReader(open(out)))
  get = lambda step, name, unit: next((r["value"] for r in rows if (r["step"], r["name"], r["unit"]) ==
                                       (step, name, unit)), None)
  print("\nsummary")
  for r in rows:
    if r["name"] == "exit_status":
      secs = get(r["step"], "wall_time", "s")
      print(f"  {r['step']:<19} {r['detail']:<28} {float(secs or 0):6.1f} s")
  env_rows = {r["name"]: r for r in rows if r["step"] == "env"}
  if "devices" in env_rows:
    print(f"  device: {env_rows['devices']['detail']}")
  t = {k: get("kernel_tests", k, "tests") for k in ("passed", "failed", "skipped", "error")}
  if t["passed"] is not None:
    print(f"  kernel tests: {t['passed']} passed, {t['failed']} failed, {t['error']} errors, {t['skipped']} skipped")
  bw = get("bench_kernels", "copy_bandwidth", "GB/s")
  if bw:
    print(f"  copy bandwidth {bw} GB/s; fraction of it (x GEMM for the coefficients):")
    for r in rows:
      if r["step"] == "bench_kernels" and r["unit"] == "of_copy" and r["name"] != "vphi_gemm":
        gemm = get("bench_kernels", r["name"], "x_gemm")
        print(f"    {r['name']:<28} {float(r['value']):6.3f}" + (f"   x GEMM {gemm}" if gemm else ""))
  for r in rows:
    if r["step"] == "bench_step" and r["name"].endswith(".x_residual"):
      tps = get("bench_step", r["name"].replace("x_residual", "tokens_per_s"), "tokens/s")
      print(f"  step {r['name'].split('.')[0]:<8} x residual {float(r['value']):.3f}  ({float(tps):,.0f} tokens/s)")
  tps = get("train", "tokens_per_s", "tokens/s")
  if tps:
    print(f"  train: {float(tps):,.0f} tokens/s, {get('train', 'steps', 'steps')} steps, "
          f"val bits/byte {get('train', 'val_bpb', 'bits/byte')}")
  te = next((r for r in rows if (r["step"], r["name"]) == ("transformer_engine", "present")), None)
  if te:
    print(f"  {te['detail']}")


if __name__ == "__main__":
  globals()[sys.argv[1]](*sys.argv[2:])
