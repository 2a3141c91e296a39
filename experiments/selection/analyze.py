"""Transferability estimates vs fine-tuned results for the selection study (config.py).

  python experiments/selection/analyze.py runs/selection

For every target of the study (the cells' overrides other than the candidate's encoder and size:
the synthetic shift and the seed, or a real-data scenario's seed), each candidate's pretraining stage is estimated on
that target without fine-tuning (xrec.select.estimate) and compared with its fine-tuned
validation NDCG@10 (the cell's chosen learning rate): Kendall's tau-b and whether the estimator's
top candidate is the fine-tuned best, per target, then averaged over targets (seeds folded into
targets). Writes WORKDIR/selection/{selection.md, selection.json, estimate_vs_finetuned.png}.

A study run in parts (run directories that do not outlive a session) is estimated part by part
while each part's checkpoints exist (one row per done cell), and the parts' selection.json are then
summarised together (a target's candidates may come from several parts):

  python experiments/selection/analyze.py --merge OUT_DIR PART1/selection/selection.json ...
"""

from __future__ import annotations

import json
import os
import sys
import time

import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xrec import runindex, select  # noqa: E402
from xrec.evaluate.transferability import kendall_tau  # noqa: E402
from xrec.data import pipeline  # noqa: E402

# the proxy is a short fine-tune; the baseline every estimator must beat: the checkpoint's own
# validation metric on its source (the zoo records it: free)
BASELINE = "source_valid_ndcg@10"
ESTIMATORS = tuple(e for e in select.ESTIMATORS if e != "proxy_ndcg@10") + (BASELINE,)
# what names a candidate (its architecture and, in sources.py, the data it was pretrained on);
# the rest of a cell's overrides name its target
SOURCE_FIELDS = ("experiment.source_domain", "experiment.pretrain.data.synthetic.shift")
CANDIDATE_FIELDS = ("model.name", "model.embed_dim") + SOURCE_FIELDS


def main(workdir: str) -> dict:
  """Estimates every done cell of WORKDIR and writes WORKDIR/selection/."""
  out_dir = os.path.join(workdir, "selection")
  os.makedirs(out_dir, exist_ok=True)
  return write(estimate_rows(workdir, out_dir), out_dir)


def merge(out_dir: str, paths: list[str]) -> dict:
  """Summarises the rows of several parts' selection.json together (a part may hold some of a
  target's candidates, another the rest; one (target, candidate) pair is estimated once)."""
  rows, seen = [], {}
  for path in paths:
    with open(path) as f:
      for row in json.load(f)["rows"]:
        key = json.dumps([row["target"], row["name"]], sort_keys=True)
        if key in seen:
          raise ValueError(f"candidate {row['name']} on target {row['target']} is in both {seen[key]} and {path}; "
                           "each pair must be estimated in one part only")
        seen[key] = path
        rows.append(row)
  os.makedirs(out_dir, exist_ok=True)
  return write(rows, out_dir)


def estimate_rows(workdir: str, out_dir: str) -> list[dict]:
  """One row per done cell: its candidate's estimates on its target next to its fine-tuned result
  (a target: every override but the candidate's encoder and size, e.g. the shift and the seed).
  Rows already in OUT_DIR/selection.json for the same cell result are kept, not estimated again."""
  runs = [r for r in runindex.latest_runs(workdir).values() if r.get("status") == "done"]
  done = {}  # rows an earlier pass wrote (the analysis runs beside the study and picks up where it was)
  if os.path.exists(os.path.join(out_dir, "selection.json")):
    with open(os.path.join(out_dir, "selection.json")) as f:
      done = {(json.dumps(r["target"], sort_keys=True), r["name"], r["finetuned_valid_ndcg@10"]): r
              for r in json.load(f)["rows"]}
  targets: dict = {}
  for r in runs:
    target = tuple(sorted((k, v) for k, v in r["overrides"].items() if k not in CANDIDATE_FIELDS))
    targets.setdefault(target, []).append(r)
  rows = []
  for target, cells in sorted(targets.items(), key=lambda t: str(t[0])):
    key = json.dumps(dict(target), sort_keys=True)
    domain = examples = config = None
    for cell in cells:
      path = os.path.join(workdir, "stages", cell["stages"]["pretrain"])
      with open(os.path.join(path, "results.json")) as f:
        pre = json.load(f)
      name = _name(cell)
      row = done.get((key, name, cell["valid"]["ndcg@10"]))
      if row is None:
        if domain is None:  # the target's data, read once per target that has cells to estimate
          stage = os.path.join(workdir, "stages", cell["stages"]["transfer"])
          with open(os.path.join(stage, "results.json")) as f:
            config = ml_collections.ConfigDict(json.load(f)["config"])
          domain = pipeline.load_domain(config.data)
          examples = select._examples(domain, int(config.model.max_len))
        entry = {"path": path, "encoder": pre["config"]["model"]["name"], "params": pre["param_count"],
                 "stored_bytes": 0, "eval_users_per_second": None}
        t = time.time()
        row = select.estimate(name, entry, config, domain, examples, out_dir)
        row["estimate_seconds"] = time.time() - t
      row["target"] = dict(target)
      row["finetuned_valid_ndcg@10"] = cell["valid"]["ndcg@10"]
      row["finetuned_test_ndcg@10"] = cell["test"]["ndcg@10"]
      # what the estimates stand in for: fine-tuning at every learning rate of the grid (the
      # candidate's pretraining is the zoo's, paid before any choice: not counted)
      row[BASELINE] = pre["valid"]["ndcg@10"]
      row["seconds"][BASELINE] = 0.0
      row["pretrain_seconds"] = pre["wall_seconds"]["total"]
      row["finetune_seconds"] = cell["stage_wall_seconds"] - row["pretrain_seconds"]
      rows.append(row)
  return rows


def _name(cell: dict) -> str:
  o = cell["overrides"]
  source = "".join(f"{o[f]}" if f == SOURCE_FIELDS[0] else f"@{o[f]}" for f in SOURCE_FIELDS if f in o)
  return f"{o['model.name']}-d{o['model.embed_dim']}" + (f" from {source}" if source else "")


def summarize(rows: list[dict]) -> tuple[list[dict], dict]:
  """Per target (its candidates' rows): each estimator's Kendall tau-b against the fine-tuned
  validation NDCG@10 and whether its top candidate is the fine-tuned best; then the mean over
  targets. Targets with fewer candidates than the most complete one are left out of the means
  (a tau over a subset of the zoo answers a different question) and listed as incomplete."""
  targets: dict = {}
  for row in rows:
    targets.setdefault(json.dumps(row["target"], sort_keys=True), []).append(row)
  full = max((len(v) for v in targets.values()), default=0)
  per_target = []
  for key, cands in sorted(targets.items()):
    truth = [r["finetuned_valid_ndcg@10"] for r in cands]
    best = int(np.argmax(truth))
    result = {"target": json.loads(key), "candidates": len(cands), "complete": len(cands) == full,
              "names": [r["name"] for r in cands], "tau": {}, "top1": {}, "regret": {}}
    for est in ESTIMATORS:
      have = [i for i, r in enumerate(cands) if r.get(est) is not None]
      result["tau"][est] = kendall_tau([cands[i][est] for i in have], [truth[i] for i in have]) if len(have) > 1 else None
      pick = _pick(cands, est)
      result["top1"][est] = (pick == best) if have else None
      # what choosing the estimator's top candidate costs: the fine-tuned metric lost against the best
      result["regret"][est] = truth[best] - truth[pick] if have else None
    per_target.append(result)
  summary = {}
  for est in ESTIMATORS:
    taus = [t["tau"][est] for t in per_target if t["complete"] and t["tau"][est] is not None]
    hits = [t["top1"][est] for t in per_target if t["complete"] and t["top1"][est] is not None]
    regrets = [t["regret"][est] for t in per_target if t["complete"] and t["regret"][est] is not None]
    summary[est] = {"mean_tau": float(np.mean(taus)) if taus else None, "targets": len(taus),
                    "top1_hit_rate": float(np.mean(hits)) if hits else None,
                    "mean_regret": float(np.mean(regrets)) if regrets else None,
                    "max_regret": float(np.max(regrets)) if regrets else None}
  return per_target, summary


def _pick(rows: list[dict], est: str):
  """The index of the row an estimator ranks first (None when it is n/a for every row)."""
  have = [i for i, r in enumerate(rows) if r.get(est) is not None]
  return max(have, key=lambda i: rows[i][est]) if have else None


def source_choice(rows: list[dict]) -> dict:
  """Picking the source for a fixed architecture: per target and architecture with candidates
  pretrained on several sources (sources.py), whether each estimator's top source is the one that
  fine-tunes best, and the fine-tuned validation NDCG@10 lost if not (regret). Also counts which
  source fine-tunes best. Empty when no architecture has more than one source."""
  groups: dict = {}
  for row in rows:
    arch, _, source = row["name"].partition(" from ")
    key = json.dumps([row["target"], arch], sort_keys=True)
    groups.setdefault(key, []).append((source or "source", row))
  groups = {k: v for k, v in groups.items() if len(v) > 1}
  full = max((len(v) for v in groups.values()), default=0)
  complete = [v for v in groups.values() if len(v) == full]
  if not complete:
    return {}
  out = {"groups": len(complete), "sources": full, "best_source": {}, "estimators": {}}
  for cands in complete:
    truth = [r["finetuned_valid_ndcg@10"] for _, r in cands]
    best = int(np.argmax(truth))
    out["best_source"][cands[best][0]] = out["best_source"].get(cands[best][0], 0) + 1
  for est in ESTIMATORS:
    hits, regrets = [], []
    for cands in complete:
      rs = [r for _, r in cands]
      if any(r.get(est) is None for r in rs):  # an estimator defined for some sources only does not pick among all
        continue
      truth = [r["finetuned_valid_ndcg@10"] for r in rs]
      pick = _pick(rs, est)
      hits.append(truth[pick] == max(truth))
      regrets.append(max(truth) - truth[pick])
    out["estimators"][est] = {"groups": len(hits), "top1_hit_rate": float(np.mean(hits)) if hits else None,
                              "mean_regret": float(np.mean(regrets)) if regrets else None,
                              "max_regret": float(np.max(regrets)) if regrets else None}
  return out


def write(rows: list[dict], out_dir: str) -> dict:
  """The summary over targets: selection.{md,json} (with every row, so parts can be merged) and
  the plot in OUT_DIR."""
  per_target, summary = summarize(rows)
  complete = [t for t in per_target if t["complete"]]
  estimate_seconds = sum(r["estimate_seconds"] for r in rows)
  finetune_seconds = sum(r["finetune_seconds"] or 0 for r in rows)
  finetune_each = finetune_seconds / max(len(rows), 1)
  lines = ["| estimator | mean Kendall tau | top-1 hit rate | regret: mean (max) | targets | seconds per candidate "
           "| vs fine-tuning it |", "|---|---:|---:|---:|---:|---:|---:|"]
  for est, s in summary.items():
    # its own wall time per (target, candidate), including the representations it reads
    secs = [r["seconds"].get(est, r["seconds"].get(est.replace("neg_", ""))) for r in rows if r.get(est) is not None]
    secs = [x for x in secs if x is not None]
    s["seconds_per_candidate"] = float(np.mean(secs)) if secs else None
    tau = "n/a" if s["mean_tau"] is None else f"{s['mean_tau']:.3f}"
    hit = "n/a" if s["top1_hit_rate"] is None else f"{s['top1_hit_rate']:.2f}"
    cost = "n/a" if not secs else f"{np.mean(secs):.1f}"
    share = "n/a" if not secs else f"{np.mean(secs) / finetune_each:.1%}"
    regret = "n/a" if s["mean_regret"] is None else f"{s['mean_regret']:.4f} ({s['max_regret']:.4f})"
    lines.append(f"| {est} | {tau} | {hit} | {regret} | {s['targets']} | {cost} | {share} |")
  # the same means per setting (the target's fields but its seeds), where there are several
  groups: dict = {}
  for t in complete:
    setting = {k: v for k, v in t["target"].items() if k not in ("seed", "data.fraction_seed")}
    groups.setdefault(json.dumps(setting, sort_keys=True), []).append(t)
  if len(groups) > 1:
    lines += ["", "Mean Kendall tau per setting (its seeds' targets):", "",
              "| setting | targets | " + " | ".join(ESTIMATORS) + " |", "|---|---:|" + "---:|" * len(ESTIMATORS)]
    for setting, ts in sorted(groups.items()):
      cells = []
      for est in ESTIMATORS:
        taus = [t["tau"][est] for t in ts if t["tau"][est] is not None]
        cells.append(f"{np.mean(taus):.3f}" if taus else "n/a")
      label = ", ".join(f"{k}={v}" for k, v in json.loads(setting).items())
      lines.append(f"| {label} | {len(ts)} | " + " | ".join(cells) + " |")
  sources = source_choice(rows)
  if sources:
    lines += ["", f"Picking the source for a fixed architecture ({sources['groups']} (target, architecture) pairs with "
              f"{sources['sources']} sources each; the source that fine-tuned best: "
              + ", ".join(f"{k} {v}" for k, v in sorted(sources["best_source"].items())) + "):", "",
              "| estimator | best source picked | regret: mean (max) | pairs |", "|---|---:|---:|---:|"]
    for est, s in sources["estimators"].items():
      if s["groups"]:
        lines.append(f"| {est} | {s['top1_hit_rate']:.2f} | {s['mean_regret']:.4f} ({s['max_regret']:.4f}) | {s['groups']} |")
      else:
        lines.append(f"| {est} | n/a | n/a | 0 |")
  lines.append("")
  lines.append(f"{len(rows)} (target, candidate) pairs, {len(complete)} of {len(per_target)} targets with every "
               f"candidate ({max((t['candidates'] for t in per_target), default=0)}). All estimators together took "
               f"{estimate_seconds:.0f} s; the fine-tuning they stand in for (every candidate at every learning "
               f"rate of the grid, pretraining not counted) took {finetune_seconds:.0f} s.")
  text = "\n".join(lines)
  report = {"summary": summary, "source_choice": sources, "targets": per_target, "rows": rows, "estimate_seconds": estimate_seconds,
            "finetune_seconds": finetune_seconds}
  with open(os.path.join(out_dir, "selection.json"), "w") as f:
    json.dump(report, f, indent=2, default=float)
  with open(os.path.join(out_dir, "selection.md"), "w") as f:
    f.write(text + "\n")
  points = [{**{k: r.get(k) for k in ESTIMATORS}, "finetuned": r["finetuned_valid_ndcg@10"]} for r in rows]
  _plot(points, os.path.join(out_dir, "estimate_vs_finetuned.png"))
  print(text)
  return report


def _plot(points, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(ESTIMATORS), figsize=(4 * len(ESTIMATORS), 3.5))
  for ax, est in zip(axes, ESTIMATORS):
    xs = [(p[est], p["finetuned"]) for p in points if p[est] is not None]
    if xs:
      ax.scatter(*zip(*xs), s=14)
    ax.set_xlabel(est)
    ax.set_ylabel("fine-tuned valid ndcg@10")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  if len(sys.argv) >= 4 and sys.argv[1] == "--merge":
    merge(sys.argv[2], sys.argv[3:])
  elif len(sys.argv) == 2:
    main(sys.argv[1])
  else:
    sys.exit(__doc__)
