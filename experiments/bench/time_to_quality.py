"""Time to quality on real MovieLens-1M: xrec's training run against a plain Flax loop, same data,
same machine, alternating; wall time (training, evaluations excluded) until validation NDCG@10
first reaches each level.

  python experiments/bench/time_to_quality.py --data ../shared/data --steps 4700 \\
      --levels 0.10,0.14,0.16 --out experiments/bench/results/ttq_<commit>.json

xrec's side is the reproduction's ml1m_sasrec row (experiments/reproduce/config.py: SASRec d 64,
2 blocks, 1 head, max_len 200, dropout 0.2, full softmax, Adam 1e-3, batch 128) run through
`train_and_evaluate` for --steps steps with an evaluation every --eval_every, its time read from the
run's metrics.jsonl (each row's wall-clock stamp, less the evaluations' own seconds: the input
pipeline, steps, logging and checkpoints count). The plain side is bench.py's plain Flax SASRec
of the same shape with the same dropout (flax.linen attention, fp32 logits, optax AdamW 1e-3, full
softmax CE), numpy batches of each user's last 201 training items, one jitted step; it is
evaluated by the same protocol (the same evaluation batches, xrec's rank and metric functions:
full ranking over all items, history masked, pessimistic ties), untimed. Quality is read on
validation; both curves (NDCG@10 against seconds) go to --plot. `--row` picks another reproduction
row for both sides: for `ml1m_sasrec_refcode` (SASRec's reference-code model) the plain loop writes
that model too (bench.NaiveBlock "reference": the same function as xrec's block, tested), so a
faster-learning recipe shows on both sides and the ratio stays the loops' own.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (puts the repo root on the path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xrec.config import with_overrides  # noqa: E402
from xrec.data import pipeline  # noqa: E402
from xrec.evaluate import metrics  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def ml1m_config(data: str, steps: int, eval_every: int, row: str = "ml1m_sasrec", overrides=()):
  """The reproduction row's config, with a budget of `steps` and no early stopping; then
  `overrides` ("field=value", value a Python literal) for xrec's side (--xrec_set)."""
  spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "experiments", "reproduce", "config.py"))
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  c = with_overrides(study.get_config(), {**study.ROWS[row], "data.movielens.manual_dir": data})
  c.train.update(dict(num_steps=steps, eval_every_steps=eval_every, checkpoint_every_steps=eval_every,
                      early_stopping_patience=0, eval_at_start=False))
  fields = {}
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--xrec_set takes field=value, got {item!r}")
    fields[key.strip()] = ast.literal_eval(value.strip())
  return with_overrides(c, fields, what="--xrec_set field")


def run_xrec(config, workdir: str) -> list[dict]:
  """[{step, seconds, ndcg@10}] per evaluation: seconds since the call, less every evaluation so far."""
  from xrec.train.loop import train_and_evaluate
  start = time.time()
  train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if r["split"] == "valid"]
  out, evals = [], 0.0
  for r in rows:
    evals += r["eval_seconds"]
    out.append({"step": r["step"], "seconds": r["time"] - start - evals, "ndcg@10": r["ndcg@10"]})
  return out


def curve_from_run(run_dir: str, start: float | None = None) -> list[dict]:
  """xrec's curve from a run made elsewhere (e.g. a reproduction row's stage folder, launched on
  its own core): [{step, seconds, ndcg@10}] per validation row of RUN_DIR/metrics.jsonl, seconds
  since `start` (epoch seconds; default: when the step-0 evaluation ended, so neither the data
  loading nor that evaluation is counted) less every evaluation after it."""
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if r["split"] == "valid"]
  if start is None:
    first = next((r for r in rows if r["step"] == 0), None)
    if first is None:
      raise ValueError(f"{run_dir}/metrics.jsonl has no step-0 evaluation to start the clock from; pass --start")
    start = first["time"]  # the row is written when that evaluation ends
  out, evals = [], 0.0
  for r in rows:
    if r["time"] > start:  # evaluations after the clock started are not training time
      evals += r["eval_seconds"]
      out.append({"step": r["step"], "seconds": r["time"] - start - evals, "ndcg@10": r["ndcg@10"]})
  return out


def plain_eval(model, params, domain, config, split: str = "valid") -> float:
  """NDCG@10 of the plain model by xrec's protocol (same batches, ranks and sums)."""
  num_items = domain.num_items

  @jax.jit
  def sums(params, batch):
    scores = model.apply({"params": params}, batch["inputs"])[:, -1]
    rank = metrics.target_rank(scores, batch["target"], num_items, batch["history"])
    return metrics.metric_sums(rank, batch["weight"], (10,))

  total = {}
  for batch in pipeline.eval_batches(domain, split, config.eval.batch_size, config.model.max_len):
    for k, v in jax.device_get(sums(params, {k: jnp.asarray(v) for k, v in batch.items()})).items():
      total[k] = total.get(k, 0.0) + float(v)
  return metrics.finalize(total)["ndcg@10"]


def run_plain(config, domain, steps: int, eval_every: int, seed: int = 0) -> list[dict]:
  """The plain loop: numpy batches, one jitted step, an untimed evaluation every `eval_every`."""
  p = dict(num_items=domain.num_items, embed_dim=config.model.embed_dim, max_len=config.model.max_len,
           num_layers=config.model.sasrec.num_layers, num_heads=config.model.sasrec.num_heads,
           mlp_dim=config.model.sasrec.mlp_dim, compute_dtype="float32",
           # the row's recipe: SASRec's reference-code model when the row uses that block
           block=config.model.sasrec.get("block", "pre_ln"))
  batch = bench.plain_batches(domain, config.train.batch_size, p["max_len"], steps, seed)
  start, evals = time.time(), 0.0
  params, opt, step = bench.plain_model_and_step(p, batch(0)["inputs"], seed, config.model.dropout)
  model, key, out = bench.plain_model(p), jax.random.key(seed + 1), []  # (dropout off: evaluation)
  for i in range(steps):
    params, opt, loss = step(params, opt, batch(i), jax.random.fold_in(key, i))
    if (i + 1) % eval_every == 0:
      float(loss)  # waits for the step
      t0 = time.time()
      ndcg = plain_eval(model, params, domain, config)
      evals += time.time() - t0
      out.append({"step": i + 1, "seconds": time.time() - start - evals, "ndcg@10": ndcg})
      print(f"plain step {i + 1}: valid ndcg@10 {ndcg:.4f} at {out[-1]['seconds']:.0f} s", flush=True)
  return out


def first_reach(curve: list[dict], level: float, key: str = "seconds"):
  return next((r[key] for r in curve if r["ndcg@10"] >= level), None)


def steps_to(curves: dict, levels) -> dict:
  """{level: {loop: [first step at or above it, per run]}}: load-independent (a curve's steps do not
  depend on what else shares the machine; its seconds do)."""
  return {f"{level:g}": {name: [first_reach(c, level, "step") for c in runs] for name, runs in curves.items()}
          for level in levels}


def summarise(curves: dict, levels) -> dict:
  out = {}
  for level in levels:
    row = {name: [first_reach(c, level) for c in runs] for name, runs in curves.items()}
    med = {name: (float(np.median(v)) if v and all(x is not None for x in v) else None) for name, v in row.items()}
    med.setdefault("xrec", None)
    med.setdefault("plain", None)
    out[f"{level:g}"] = {"seconds": row, "median": med,
                         "plain_over_xrec": (med["plain"] / med["xrec"] if med.get("xrec") and med.get("plain") else None)}
  return out


def plot(curves: dict, levels, path: str, x: str = "seconds") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for (name, runs), color in zip(sorted(curves.items()), ("tab:orange", "tab:blue")):
    for r, c in enumerate(runs):
      ax.plot([p[x] for p in c], [p["ndcg@10"] for p in c], color=color, marker=".",
              label=name if r == 0 else None, alpha=1.0 if r == 0 else 0.5)
  for level in levels:
    ax.axhline(level, color="grey", lw=0.6, ls=":")
  ax.set_xlabel("training seconds (evaluations excluded)" if x == "seconds" else "training steps (batches of 128)")
  ax.set_ylabel("valid NDCG@10 (full ranking)")
  ax.set_title("MovieLens-1M, SASRec d64: time to quality")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def merge(paths: list[str], levels) -> dict:
  """One result from the outputs of runs of the loops in separate processes (e.g. one per core):
  their curves side by side, summarised again; each input's own fields kept under `parts`."""
  parts = []
  for path in paths:
    with open(path) as f:
      parts.append(json.load(f))
  curves = {}
  for part in parts:
    for name, runs in part["curves"].items():
      curves.setdefault(name, []).extend(runs)
  if not curves.get("xrec") or not curves.get("plain"):
    raise ValueError(f"--merge needs an xrec and a plain curve among {paths}; found {sorted(curves)}")
  return {"merged_from": paths, "levels": levels, "curves": curves, "time_to": summarise(curves, levels),
          "steps_to": steps_to(curves, levels),
          "best": {n: [max(x["ndcg@10"] for x in c) for c in runs] for n, runs in curves.items()},
          "parts": [{k: v for k, v in part.items() if k not in ("curves", "time_to", "best")} for part in parts]}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--merge", nargs="+", default=[], help="instead of running: merge these outputs (xrec's and "
                                                         "plain's, run in separate processes) into --out")
  ap.add_argument("--from_run", default="", help="instead of running: xrec's curve from this run folder's "
                  "metrics.jsonl (a launch's stage, e.g. a reproduction row on its own core) into --out")
  ap.add_argument("--start", type=float, default=None, help="with --from_run: epoch seconds the clock starts "
                  "at (default: the run's step-0 evaluation)")
  ap.add_argument("--data", default="", help="the folder holding ml-1m/ (e.g. ../shared/data)")
  ap.add_argument("--steps", type=int, default=4700, help="budget of each run (47 steps = one epoch)")
  ap.add_argument("--eval_every", type=int, default=235)
  ap.add_argument("--levels", default="0.10,0.14,0.16")
  ap.add_argument("--rounds", type=int, default=1, help="xrec then plain, this many times")
  ap.add_argument("--loops", default="xrec,plain")
  ap.add_argument("--row", default="ml1m_sasrec", help="the reproduction row both sides follow (its model; "
                  "the plain loop writes SASRec's reference-code model for a row with model.sasrec.block=reference)")
  ap.add_argument("--xrec_set", action="append", default=[],
                  help="field=value on xrec's side only (repeatable), e.g. "
                       "'objective.terms=((\"sampled_softmax\", 1.0),)'; recorded in the output")
  ap.add_argument("--out", required=True)
  ap.add_argument("--plot", default="")
  ap.add_argument("--plot_x", default="seconds", choices=("seconds", "step"), help="the plot's x axis")
  ap.add_argument("--workdir", default="", help="keep xrec's runs here (metrics.jsonl: its curve so far, even "
                                              "if this is cut); default a temporary folder")
  args = ap.parse_args()
  levels = [float(x) for x in args.levels.split(",")]
  if args.from_run:
    curve = curve_from_run(args.from_run, args.start)
    bench._write({"from_run": os.path.abspath(args.from_run), "row": args.row, "levels": levels,
                  "curves": {"xrec": [curve]}, "time_to": summarise({"xrec": [curve]}, levels)}, args.out)
    return
  if args.merge:
    result = merge(args.merge, levels)
    bench._write(result, args.out)
    if args.plot:
      plot(result["curves"], levels, args.plot, args.plot_x)
    return
  if not args.data:
    ap.error("--data is required (unless --merge)")
  config = ml1m_config(args.data, args.steps, args.eval_every, args.row, overrides=args.xrec_set)
  plain_config = ml1m_config(args.data, args.steps, args.eval_every, args.row)  # the plain loop ignores --xrec_set
  domain = pipeline.load_domain(plain_config.data)
  curves = {name: [] for name in args.loops.split(",")}
  dev = jax.devices()[0]
  result = {"data": "movielens-1m (real)", "row": args.row, "steps": args.steps, "eval_every": args.eval_every, "levels": levels,
            "xrec_set": args.xrec_set,
            "device_kind": dev.device_kind, "platform": dev.platform, "jax_version": jax.__version__,
            "config": config.to_dict(), "curves": curves}
  with tempfile.TemporaryDirectory() as scratch:
    tmp = args.workdir or scratch
    for r in range(args.rounds):
      for name in curves:
        curves[name].append(run_xrec(config, os.path.join(tmp, f"xrec{r}")) if name == "xrec" else
                            run_plain(plain_config, domain, args.steps, args.eval_every, seed=r))
        result["time_to"] = summarise(curves, levels)
        result["best"] = {n: [max(x["ndcg@10"] for x in c) for c in runs] for n, runs in curves.items() if runs}
        bench._write(result, args.out)  # after every run: a cut session keeps what finished
  if args.plot:
    plot(curves, levels, args.plot)


if __name__ == "__main__":
  main()
