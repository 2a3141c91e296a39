"""L2-SP against full fine-tuning, paired by seed: per penalty weight, the mean difference in test
NDCG@10 and HR@10 (l2sp - full_finetune) with its 95% t interval, the paired t-test's p and the
Holm-corrected p over the three weights (per metric). Reads a study's run index.

  python experiments/l2sp/paired.py runs/l2sp [--out experiments/l2sp/paired.json]
"""

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xrec import runindex  # noqa: E402

METRICS = ("ndcg@10", "hr@10")


def by_row(workdir: str) -> dict:
  """(row label, seed) -> test metrics of the done cells; row = strategy or l2sp:<alpha>."""
  out = {}
  for r in runindex.latest_runs(workdir).values():
    if r.get("status") not in ("done", "cached"):
      continue
    o = r["overrides"]
    row = o["transfer.strategy"] + (f":{o['transfer.l2sp.alpha']:g}" if "transfer.l2sp.alpha" in o else "")
    out[(row, o["seed"])] = r["test"]
  return out


def holm(p: list[float]) -> list[float]:
  order = np.argsort(p)
  adjusted, running = [0.0] * len(p), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(p) - rank) * p[i]))
    adjusted[i] = running
  return adjusted


def compare(workdir: str, baseline: str = "full_finetune") -> dict:
  cells = by_row(workdir)
  rows = sorted({r for r, _ in cells if r.startswith("l2sp:")}, key=lambda r: float(r.split(":")[1]))
  result = {"baseline": baseline, "rows": {}}
  for metric in METRICS:
    tests = []
    for row in rows:
      seeds = sorted(s for r, s in cells if r == row and (baseline, s) in cells)
      d = np.array([cells[(row, s)][metric] - cells[(baseline, s)][metric] for s in seeds])
      half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
      p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and d.std() > 0 else float("nan")
      tests.append(p)
      result["rows"].setdefault(row, {})[metric] = {"seeds": seeds, "mean_diff": float(d.mean()), "ci95": float(half),
                                                    "p": p, "wins": int((d > 0).sum())}
    for row, p in zip(rows, holm([p if p == p else 1.0 for p in tests])):
      result["rows"][row][metric]["p_holm"] = p
  return result


def markdown(result: dict) -> str:
  lines = [f"| l2sp alpha | seeds | NDCG@10 - {result['baseline']} (95% CI) | p (Holm) | wins | "
           f"HR@10 - {result['baseline']} (95% CI) | p (Holm) | wins |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for row, m in result["rows"].items():
    n, h = m["ndcg@10"], m["hr@10"]
    lines.append(f"| {row.split(':')[1]} | {len(n['seeds'])} | {n['mean_diff']:+.4f} ± {n['ci95']:.4f} | "
                 f"{n['p_holm']:.3f} | {n['wins']}/{len(n['seeds'])} | {h['mean_diff']:+.4f} ± {h['ci95']:.4f} | "
                 f"{h['p_holm']:.3f} | {h['wins']}/{len(h['seeds'])} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir")
  p.add_argument("--out", default="")
  args = p.parse_args()
  result = compare(args.workdir)
  print(markdown(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
