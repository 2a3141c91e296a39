"""Evaluation speed of the distill_prune study's served models, timed side by side.

Each cell's record has the evaluation users/s of its served model, but that is one timing of a
fraction of a second taken while other cells ran on the same cores, so it varies by a factor of 3
between seeds of one row. This script times the served models of one seed's cells again in one
process, in alternating rounds (the median of the rounds; load from other processes falls on every
model alike): full-ranking test evaluation of the whole population with the study's evaluation
settings. Each model is built from its transfer stage's results.json: the run's model config and,
for structured pruning, the smaller dense model its pruning report records (`xrec.train.hooks.prune.served_model`).
Weights are random of the served shapes: evaluation cost depends on the shapes only.

  python experiments/distill_prune/speed.py runs/distill_prune [--seed 4] [--rounds 7]

Writes WORKDIR/speed.json and prints a Markdown table: params and users/s of each served model,
and the ratio to the fine-tuned teacher-width model (full_finetune); and WORKDIR/speed_quality.png,
quality against the timed users/s and against params (`--plot_only` redraws it from speed.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xrec import runindex  # noqa: E402
from xrec.data import pipeline  # noqa: E402
from xrec.evaluate import evaluator  # noqa: E402
from xrec import sharding  # noqa: E402
from xrec.models import common  # noqa: E402
from xrec.train import optimizer  # noqa: E402
from xrec.train.step import create_state  # noqa: E402
from xrec.train.hooks.prune import served_model  # noqa: E402


def row_name(overrides: dict) -> str:
  kind = overrides.get("transfer.prune.kind")
  return f"{overrides['transfer.strategy']}{':' + kind if kind else ''} d={overrides['model.embed_dim']}"


def served(stage_results: dict, domain: pipeline.DomainSequences):
  """(module, items it scores, the domain as it reads it) of one cell's served model."""
  config = ml_collections.ConfigDict(stage_results["config"])
  pruning = stage_results.get("pruning") or {}
  kind = pruning.get("kind") if "dense" in pruning else None  # magnitude pruning serves the model as trained
  fields = dict(pruning["dense"]["model_fields"]) if kind else {}
  if kind == "dims" and isinstance(fields.get("item_columns"), int):  # the report records how many dims
    fields["item_columns"] = tuple(range(fields["item_columns"]))
  module = served_model(config.model, kind, fields, domain.num_items)
  if kind == "items":  # histories in the kept items' ids (which items they are does not change the cost)
    kept = int(fields["num_items"])
    id_map = np.concatenate([[0], (np.arange(domain.num_items) % kept) + 1])
    return config, module, kept, dataclasses.replace(domain, id_map=id_map)
  return config, module, domain.num_items, domain


def main(workdir: str, seed: int, rounds: int) -> dict:
  runs = [r for r in runindex.latest_runs(workdir).values()
          if r.get("status") == "done" and r["overrides"].get("seed") == seed]
  if not runs:
    raise SystemExit(f"no done cell of seed {seed} in {workdir}/runs.jsonl")
  evals, domain = {}, None
  for r in sorted(runs, key=lambda r: r["index"]):
    with open(os.path.join(workdir, "stages", r["stages"]["transfer"], "results.json")) as f:
      stage = json.load(f)
    if domain is None:
      domain = pipeline.load_domain(ml_collections.ConfigDict(stage["config"]).data)
    config, module, num_items, dom = served(stage, domain)
    mesh = sharding.make_mesh(config.mesh)
    tx, _ = optimizer.make_optimizer(config.optim, 1000)
    state, state_sh = create_state(module, tx, config.model.max_len, 0, mesh,
                                        sharding.logical_rules(config.sharding.rules))
    ev = evaluator.Evaluator(module, num_items, config.model.max_len, config.eval, mesh, state_sh["params"])
    ev.warm_up(state["params"], dom)
    evals[row_name(r["overrides"])] = {
        "run": (lambda ev, p, d: lambda: ev(p, d, "test")["users_per_second"])(ev, state["params"], dom),
        "params": common.param_count(state["params"]), "items_scored": num_items}
  speeds = {name: [] for name in evals}
  for _ in range(rounds):
    for name, e in evals.items():
      speeds[name].append(e["run"]())
  base = next((n for n in evals if n.startswith("full_finetune")), None)
  out = {"seed": seed, "rounds": rounds, "users": int(len(domain.eval_users)), "models": {}}
  lines = ["| served model | params | items scored | users/s (median) | vs full_finetune |", "|---|---:|---:|---:|---:|"]
  for name, e in evals.items():
    ups = float(np.median(speeds[name]))
    ratio = ups / float(np.median(speeds[base])) if base else None
    out["models"][name] = {"params": e["params"], "items_scored": e["items_scored"], "users_per_second": ups,
                           "rounds_users_per_second": speeds[name], "vs_full_finetune": ratio}
    lines.append(f"| {name} | {e['params']:,} | {e['items_scored']} | {ups:,.0f} | "
                 f"{'' if ratio is None else f'{ratio:.2f}x'} |")
  with open(os.path.join(workdir, "speed.json"), "w") as f:
    json.dump(out, f, indent=2)
  print("\n".join(lines))
  plot(workdir)
  return out


def plot(workdir: str) -> str:
  """WORKDIR/speed_quality.png: each served model's mean test NDCG@10 over the study's seeds
  against its timed users/s (speed.json) and its params."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  with open(os.path.join(workdir, "speed.json")) as f:
    speed = json.load(f)["models"]
  quality: dict = {}
  for r in runindex.latest_runs(workdir).values():
    if r.get("status") == "done":
      quality.setdefault(row_name(r["overrides"]), []).append(r["test"]["ndcg@10"])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, field, label in ((axes[0], "users_per_second", "evaluation users/s (timed side by side)"),
                           (axes[1], "params", "params of the served model")):
    for name, m in speed.items():
      if name in quality:
        ax.scatter(m[field], np.mean(quality[name]), s=18)
        ax.annotate(name, (m[field], np.mean(quality[name])), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(label)
    ax.set_ylabel(f"test ndcg@10 (mean of {max(len(v) for v in quality.values())} seeds)")
  fig.tight_layout()
  path = os.path.join(workdir, "speed_quality.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdir")
  ap.add_argument("--seed", type=int, default=4)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--plot_only", action="store_true", help="redraw speed_quality.png from speed.json")
  a = ap.parse_args()
  if a.plot_only:
    plot(a.workdir)
  else:
    main(a.workdir, a.seed, a.rounds)
